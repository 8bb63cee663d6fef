"""Segment the object a text query refers to in any video, with a trained MTTR checkpoint.

    python inference.py -c configs/refer_youtube_vos.yaml -ckpt CHECKPOINT --video clip.mp4 \
        --text "a person riding a skateboard" --text "a dog running" -o outputs/ [--cpu]

The input is a video file PyAV can decode (mp4, avi, webm, ...) or a folder of jpg/png frames sorted by name. Frames
are resized as in evaluation and the video is cut into windows of `-ws` frames (12 by default, the Refer-YouTube-VOS
window). Each window is one forward pass; the last window is taken from the end of the video (it overlaps the one
before it, whose results are kept for the shared frames). One object query is chosen for the whole video: the one
with the highest probability of "referred" averaged over all frames, which is the Refer-YouTube-VOS post-processing
applied to the whole video at once, as its evaluation does. The segmented object therefore does not switch between
queries at window borders, and the result of a frame depends only on its window and on that choice.

Per text query, OUT_DIR/<nn>_<query>/ receives overlay.mp4 (the mask in colour and the query as a caption),
preview.png (the overlay of the middle frame), masks/<frame>.png (0/255, at the input's resolution), scores.json
(per-frame scores, the chosen object query, the window layout) and object_query_probabilities.npy
([frames, object queries] probability of "referred").
"""
import argparse
import contextlib
import json
import re
import sys
import tempfile
from collections import deque
from pathlib import Path
from typing import List, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from config import load_config
from datasets.transforms import transforms_from_config
from datasets.video import OVERLAY_COLOURS, Mp4Writer, Window, draw_overlay, open_input, window_layout
from models import build_trained_network
from models.postprocessing import ReferYoutubeVOSPostProcess
from utils import UsageError, autocast, error_message, keep_freed_memory_in_process, nested_tensor_from_videos_list

# ---------------------------------------------------------------------------------------------------------------
# Windows and the choice of the object query


def choose_object_query(referred_probabilities: np.ndarray) -> int:
    """The object query whose probability of "referred" averaged over every frame of the video is highest
    (what the Refer-YouTube-VOS post-processing does within one window). referred_probabilities: [T, N]."""
    return int(referred_probabilities.mean(axis=0).argmax())


class Segmenter:
    """Runs MTTR window by window over a video for a set of text queries and keeps, per query, the referred
    probabilities of every object query and their mask logits (in a scratch folder: they are needed once the
    object query is chosen, after the last window)."""

    def __init__(self, model, transforms, queries: Sequence[str], device, scratch_dir: Path, amp=None):
        self.model, self.transforms, self.queries, self.device = model, transforms, list(queries), device
        self.amp = amp or contextlib.nullcontext  # the autocast context to run the model in
        self.scratch_dir = scratch_dir
        self.postprocessor = ReferYoutubeVOSPostProcess()
        self.is_referred_logits = [[] for _ in self.queries]  # per query, per window: [T_out, N, 2]
        self.window_sizes = []  # per window: (resized (h, w), padded (h, w))

    @torch.inference_mode()
    def run_window(self, window: Window, images: List[Image.Image]):
        video, _, _ = self.transforms(images, [None] * len(images), '')  # [T, 3, h, w]
        samples = nested_tensor_from_videos_list([video]).to(self.device)  # tensors [T, 1, 3, h, w]
        valid_indices = torch.arange(len(images), device=self.device)
        first = window.first_output - window.start
        for query_index, query in enumerate(self.queries):
            with self.amp():
                outputs = self.model(samples, valid_indices, [query])
            self.is_referred_logits[query_index].append(outputs['pred_is_referred'][first:, 0].float().cpu())
            np.save(self._masks_path(query_index, len(self.window_sizes)),
                    outputs['pred_masks'][first:, 0].float().cpu().numpy())  # [T_out, N, h/4, w/4]
        self.window_sizes.append((tuple(video.shape[-2:]), tuple(samples.tensors.shape[-2:])))

    def referred_probabilities(self, query_index: int) -> np.ndarray:
        """[T, N]: per frame, each object query's probability of "referred"."""
        logits = torch.cat(self.is_referred_logits[query_index])
        return logits.softmax(dim=-1)[..., 0].numpy()

    def masks(self, query_index: int, window_index: int, object_query: int, original_size) -> np.ndarray:
        """[T_out, H0, W0] uint8 0/1 masks of one object query in one window's output frames, through the
        Refer-YouTube-VOS post-processing restricted to that object query."""
        mask_logits = np.load(self._masks_path(query_index, window_index), mmap_mode='r')
        mask_logits = torch.from_numpy(np.array(mask_logits[:, object_query:object_query + 1]))
        is_referred = self.is_referred_logits[query_index][window_index][:, object_query:object_query + 1]
        resized_size, padded_size = self.window_sizes[window_index]
        outputs = {'pred_masks': mask_logits[:, None], 'pred_is_referred': is_referred[:, None]}  # B = N = 1
        metadata = {'resized_frame_size': resized_size, 'original_frame_size': original_size}
        (prediction,) = self.postprocessor(outputs, [metadata], padded_size)
        return prediction['pred_masks'][:, 0].numpy()

    def _masks_path(self, query_index, window_index):
        return self.scratch_dir / f'query{query_index}_window{window_index}.npy'


def segment(segmenter: Segmenter, frames, windows: List[Window]):
    """One pass over the frames, running each window as soon as its last frame is read. Only the frames of the
    last window are held in memory."""
    recent = deque(maxlen=max(window.end - window.start for window in windows))
    window_iter = iter(windows)
    window = next(window_iter)
    with tqdm(total=len(windows), desc='windows', unit='window', dynamic_ncols=True) as bar:
        for position, (_, image) in enumerate(frames):
            recent.append(image)
            if position + 1 == window.end:
                segmenter.run_window(window, list(recent)[-(window.end - window.start):])
                bar.update()
                window = next(window_iter, None)
                if window is None:
                    return


# ---------------------------------------------------------------------------------------------------------------
# Writing the results


def query_folder_name(index: int, query: str) -> str:
    slug = re.sub(r'[^a-z0-9]+', '-', query.lower()).strip('-')[:60].rstrip('-')
    return f'{index:02d}_{slug or "query"}'


def write_results(segmenter: Segmenter, frames, windows: List[Window], out_dir: Path, object_queries: List[int],
                  metadata: dict) -> List[Path]:
    """Second pass over the frames: overlay video, preview picture (the middle frame's overlay), mask PNGs and
    scores of every text query."""
    query_dirs, writers, frame_records = [], [], []
    for query_index, query in enumerate(segmenter.queries):
        query_dir = out_dir / query_folder_name(query_index, query)
        (query_dir / 'masks').mkdir(parents=True, exist_ok=True)
        for stale in (query_dir / 'masks').glob('*.png'):  # from an earlier run on other frames
            stale.unlink()
        query_dirs.append(query_dir)
        writers.append(Mp4Writer(query_dir / 'overlay.mp4', frames.frame_rate, frames.size))
        frame_records.append([])
    window_of_frame = [w for w, window in enumerate(windows) for _ in range(window.first_output, window.end)]
    probabilities = [segmenter.referred_probabilities(q) for q in range(len(segmenter.queries))]
    window_masks, loaded_window = None, None
    preview_position = len(frames.frames) // 2
    try:
        for position, (frame, image) in enumerate(frames):
            window_index = window_of_frame[position]
            if window_index != loaded_window:
                window_masks = [segmenter.masks(q, window_index, object_queries[q], frames.size)
                                for q in range(len(segmenter.queries))]
                loaded_window = window_index
            for query_index, query in enumerate(segmenter.queries):
                mask = window_masks[query_index][position - windows[window_index].first_output]  # [H0, W0]
                mask_path = Path('masks') / f'{frame.name}.png'
                Image.fromarray(mask * 255).save(query_dirs[query_index] / mask_path)
                colour = OVERLAY_COLOURS[query_index % len(OVERLAY_COLOURS)]
                overlay = draw_overlay(image, mask, query, colour)  # [H0, W0, 3] uint8
                writers[query_index].write(overlay)
                if position == preview_position:
                    Image.fromarray(overlay).save(query_dirs[query_index] / 'preview.png')
                frame_records[query_index].append({
                    'frame': position, 'source_index': frame.source_index, 'time': round(frame.time, 6),
                    'mask': str(mask_path), 'mask_pixels': int(mask.sum()), 'window': window_index,
                    'referred_probability': float(probabilities[query_index][position, object_queries[query_index]])})
    finally:
        for writer in writers:
            writer.close()
    for query_index, query in enumerate(segmenter.queries):
        trajectory_scores = probabilities[query_index].mean(axis=0)
        np.save(query_dirs[query_index] / 'object_query_probabilities.npy', probabilities[query_index])
        scores = {
            'query': query, **metadata,
            'num_frames': len(frame_records[query_index]), 'frame_rate': frames.frame_rate,
            'object_query': object_queries[query_index],
            'object_query_score': float(trajectory_scores[object_queries[query_index]]),
            'object_query_scores': [round(float(s), 6) for s in trajectory_scores],
            'windows': [window.to_dict() for window in windows],
            'frames': frame_records[query_index],
        }
        (query_dirs[query_index] / 'scores.json').write_text(json.dumps(scores, indent=1))
    return query_dirs


# ---------------------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Segment the object each text query refers to in a video, with an MTTR checkpoint.',
        epilog='Config values are merged as: YAML file < the flags above < --set. The text encoder\'s pretrained '
               'weights are not loaded (the checkpoint holds them) unless --set text_encoder_pretrained=true.')
    parser.add_argument('-c', '--config_path', required=True, help='YAML config, e.g. configs/refer_youtube_vos.yaml')
    parser.add_argument('-ckpt', '--checkpoint_path', required=True,
                        help='MTTR checkpoint (official ones load as they are)')
    parser.add_argument('--video', required=True,
                        help='a video file (mp4, avi, webm, ...) or a folder of jpg/png frames')
    parser.add_argument('--text', dest='queries', action='append', required=True, metavar='QUERY',
                        help='the text query (repeatable: each query is segmented separately)')
    parser.add_argument('-o', '--output_dir', required=True, help='where the results go (one folder per query)')
    parser.add_argument('-ws', '--window_size', type=int, default=12,
                        help='frames per forward pass (default 12, the Refer-YouTube-VOS checkpoint\'s window)')
    parser.add_argument('--start', type=float, default=0.0, help='first second to segment (inclusive, default 0)')
    parser.add_argument('--end', type=float, help='last second to segment (exclusive, default: the end)')
    parser.add_argument('--fps', type=float, help='subsample to this many frames a second (default: every frame)')
    parser.add_argument('--folder-fps', type=float, default=30.0,
                        help='frame rate of a frames folder, for --start/--end/--fps and the overlay video '
                             '(default 30)')
    parser.add_argument('--object-query', type=int, metavar='INDEX',
                        help='segment this object query instead of the best one (scores.json lists them all)')
    parser.add_argument('--cpu', action='store_true', help='run on the CPU (default: CUDA)')
    parser.add_argument('--set', dest='overrides', action='append', default=[], metavar='KEY=VALUE',
                        help='override any config key, e.g. --set text_encoder_type=roberta-base-local')
    return parser.parse_args(argv)


def check_args(args):
    """Values argparse cannot check by itself, reported like the other usage errors: in one line."""
    if args.window_size < 1:
        raise UsageError(f'-ws must be at least 1, got {args.window_size}')
    if args.start < 0:
        raise UsageError(f'--start must be 0 or more seconds, got {args.start:g}')
    if args.end is not None and args.end <= args.start:
        raise UsageError(f'--end ({args.end:g} s) must come after --start ({args.start:g} s)')
    for name, value in (('--fps', args.fps), ('--folder-fps', args.folder_fps)):
        if value is not None and not value > 0:
            raise UsageError(f'{name} must be a positive number of frames a second, got {value:g}')
    for query in args.queries:
        if not query.strip():
            raise UsageError(f'--text {query!r}: the text query is empty; give the words that describe the object')
    if args.object_query is not None and args.object_query < 0:
        raise UsageError(f'--object-query must be an object query index (0 or more), got {args.object_query}')
    if Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        raise UsageError(f'-o {args.output_dir}: exists and is not a folder')


def load_run_config(args):
    """The config of the run, checked before any frame is decoded or any weight is read."""
    try:
        config = load_config(args.config_path, args.overrides, running_mode='eval', window_size=args.window_size,
                             checkpoint_path=args.checkpoint_path, text_encoder_pretrained=False,
                             backbone_pretrained=False, device='cpu' if args.cpu else 'cuda')
    except (FileNotFoundError, KeyError, TypeError, ValueError) as error:
        raise UsageError(error_message(error)) from error
    if config.device.startswith('cuda') and not torch.cuda.is_available():
        raise UsageError('CUDA is not available on this machine; run on the CPU with --cpu')
    if config.synthetic_dataset and not config.text_encoder_type:  # the tokenizer written with the synthetic data
        from datasets.synthetic import ensure_synthetic_dataset
        try:
            ensure_synthetic_dataset(config)
        except (FileNotFoundError, ValueError) as error:
            raise UsageError(error_message(error)) from error
    if args.object_query is not None and args.object_query >= config.num_queries:
        raise UsageError(f'--object-query {args.object_query}: the model has object queries 0 to '
                         f'{config.num_queries - 1}')
    if not Path(args.checkpoint_path).is_file():
        raise UsageError(f'checkpoint not found: {args.checkpoint_path}')
    return config


def load_model(config, checkpoint_path):
    """The network in eval mode with the checkpoint's weights (read with weights_only=True)."""
    try:
        return build_trained_network(config, checkpoint_path)
    except (OSError, KeyError, ValueError, RuntimeError) as error:  # text encoder files, checkpoint contents
        raise UsageError(error_message(error)) from error


def run(args) -> List[Path]:
    config = load_run_config(args)
    if config.device == 'cpu' and config.cpu_keep_freed_memory:  # process-wide: this is the entry point
        keep_freed_memory_in_process()
    frames = open_input(args.video, args.start, args.end, args.fps, args.folder_fps)
    model = load_model(config, args.checkpoint_path)
    transforms = transforms_from_config('test', config)
    windows = window_layout(len(frames.frames), args.window_size)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f'{args.video}: {len(frames.frames)} frames of {frames.size[1]}x{frames.size[0]} in {len(windows)} '
          f'window(s) of up to {args.window_size} frames', file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix='.scratch-') as scratch_dir:
        segmenter = Segmenter(model, transforms, args.queries, config.device, Path(scratch_dir),
                              amp=lambda: autocast(config, torch.device(config.device), training=False))
        segment(segmenter, frames, windows)
        object_queries = [args.object_query if args.object_query is not None
                          else choose_object_query(segmenter.referred_probabilities(q))
                          for q in range(len(args.queries))]
        metadata = {'input': str(args.video), 'checkpoint': str(args.checkpoint_path), 'window_size': args.window_size,
                    'object_query_rule': 'given by --object-query' if args.object_query is not None else
                    'highest probability of "referred" averaged over all frames'}
        return write_results(segmenter, frames, windows, out_dir, object_queries, metadata)


def main(argv=None):
    args = parse_args(argv)
    try:
        check_args(args)
        query_dirs = run(args)
    except UsageError as error:
        print(f'inference.py: error: {" ".join(str(error).split())}', file=sys.stderr)
        sys.exit(2)
    for query, query_dir in zip(args.queries, query_dirs):
        print(f'"{query}": {query_dir}/overlay.mp4, {query_dir}/preview.png, {query_dir}/masks/*.png, '
              f'{query_dir}/scores.json')


if __name__ == '__main__':
    main()

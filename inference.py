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
import math
import re
import sys
import tempfile
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import av
import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from config import load_config
from datasets.transforms import build_transforms
from models import build_network, load_model_weights
from models.postprocessing import ReferYoutubeVOSPostProcess
from utils import autocast, keep_freed_memory_in_process, nested_tensor_from_videos_list

FRAME_SUFFIXES = ('.jpg', '.jpeg', '.png')
TIME_TOLERANCE = 1e-6  # seconds; frame times are exact fractions turned into floats
OVERLAY_ALPHA = 0.5
OVERLAY_COLOURS = [(255, 64, 64), (64, 160, 255), (64, 220, 96), (255, 200, 0), (200, 64, 255), (0, 220, 220)]


class UsageError(Exception):
    """A problem with what the user asked for: reported in one line, without a stack trace."""


# ---------------------------------------------------------------------------------------------------------------
# Reading the input


@dataclass
class Frame:
    source_index: int  # position in the video file or in the sorted folder
    time: float  # seconds from the first frame
    name: str  # stem of the mask PNG


def select_frames(times: Sequence[float], start: float = 0.0, end: Optional[float] = None,
                  fps: Optional[float] = None) -> List[int]:
    """Positions of the frames with `start <= time < end`; with `fps`, only the first frame at or after each tick
    `start + k / fps` (a video at a lower rate than `fps` keeps all its frames)."""
    selected, next_tick = [], start
    for i, t in enumerate(times):
        if t < start - TIME_TOLERANCE or (end is not None and t >= end - TIME_TOLERANCE):
            continue
        if fps is not None:
            if t < next_tick - TIME_TOLERANCE:
                continue
            next_tick = start + (math.floor((t - start) * fps + TIME_TOLERANCE) + 1) / fps
        selected.append(i)
    return selected


class VideoFileFrames:
    """The selected frames of a video file. Decoded anew on each pass, so the video never sits in memory whole."""

    def __init__(self, path: Path, start: float, end: Optional[float], fps: Optional[float]):
        self.path = path
        times = []
        with self._open() as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            for index, frame in enumerate(self._decode(container)):
                times.append(frame.time if frame.time is not None else index / float(rate or 25))
            self.size = (stream.codec_context.height, stream.codec_context.width)  # (H0, W0)
        if not times:
            raise UsageError(f'{path} holds no decodable video frames')
        times = [t - times[0] for t in times]  # seconds from the first frame
        source_rate = float(rate) if rate else 25.0
        self.frame_rate = min(fps, source_rate) if fps else source_rate
        self.frames = [Frame(i, times[i], f'{i:06d}') for i in select_frames(times, start, end, fps)]
        self.source_description = f'{len(times)} frames spanning {times[0]:.2f}-{times[-1]:.2f} s'

    def _open(self):
        try:
            container = av.open(str(self.path))
        except (av.error.FFmpegError, OSError) as error:
            raise UsageError(f'cannot read the video {self.path} ({error}); expected a video file PyAV can decode '
                             '(mp4, avi, webm, ...) or a folder of jpg/png frames') from error
        if not container.streams.video:
            container.close()
            raise UsageError(f'{self.path} has no video stream; expected a video file (mp4, avi, webm, ...) or a '
                             'folder of jpg/png frames')
        return container

    def _decode(self, container):
        stream = container.streams.video[0]
        stream.thread_type = 'AUTO'
        try:
            yield from container.decode(stream)
        except av.error.FFmpegError as error:
            raise UsageError(f'cannot decode the video {self.path}: {error}') from error

    def __iter__(self) -> Iterator[Tuple[Frame, Image.Image]]:
        wanted = iter(self.frames)
        frame_info = next(wanted)
        with self._open() as container:
            for index, frame in enumerate(self._decode(container)):
                if index == frame_info.source_index:
                    yield frame_info, frame.to_image()
                    frame_info = next(wanted, None)
                    if frame_info is None:
                        return


class FolderFrames:
    """The selected frames of a folder of jpg/png images sorted by name, shown at `folder_fps` frames a second."""

    def __init__(self, path: Path, start: float, end: Optional[float], fps: Optional[float], folder_fps: float):
        self.path = path
        self.files = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES and p.is_file())
        if not self.files:
            raise UsageError(f'no frames in the folder {path}: expected jpg or png images')
        times = [i / folder_fps for i in range(len(self.files))]
        self.frame_rate = min(fps, folder_fps) if fps else folder_fps
        self.frames = [Frame(i, times[i], self.files[i].stem) for i in select_frames(times, start, end, fps)]
        self.source_description = (f'{len(times)} frames spanning {times[0]:.2f}-{times[-1]:.2f} s '
                                   f'at --folder-fps {folder_fps:g}')
        self.size = None
        for frame in self.frames:  # reads only the image headers
            width, height = self._open(frame.source_index, load=False).size
            if self.size not in (None, (height, width)):
                raise UsageError(f'{self.files[frame.source_index]} is {width}x{height} but '
                                 f'{self.files[self.frames[0].source_index]} is {self.size[1]}x{self.size[0]}: '
                                 'all frames of a folder must have the same size')
            self.size = (height, width)  # (H0, W0)

    def _open(self, index: int, load: bool = True) -> Image.Image:
        """The frame as RGB, or only its header when `load` is false."""
        try:
            with Image.open(self.files[index]) as image:
                return image.convert('RGB') if load else image
        except (OSError, UnidentifiedImageError) as error:
            raise UsageError(f'cannot read the frame {self.files[index]}: {error}') from error

    def __iter__(self) -> Iterator[Tuple[Frame, Image.Image]]:
        for frame in self.frames:
            yield frame, self._open(frame.source_index)


def open_input(path: str, start: float, end: Optional[float], fps: Optional[float], folder_fps: float):
    source = Path(path)
    if source.is_dir():
        frames = FolderFrames(source, start, end, fps, folder_fps)
    elif source.is_file():
        frames = VideoFileFrames(source, start, end, fps)
    else:
        raise UsageError(f'--video {path}: no such file or folder')
    if not frames.frames:
        wanted = f'between {start:g} s and {end:g} s' if end is not None else f'from {start:g} s on'
        raise UsageError(f'no frames {wanted} in {path} (it has {frames.source_description})')
    return frames


# ---------------------------------------------------------------------------------------------------------------
# Windows and the choice of the object query


@dataclass
class Window:
    start: int  # the window's frames are [start, end) of the selected frames
    end: int
    first_output: int  # frames [first_output, end) take their results from this window

    def to_dict(self):
        return {'frames': [self.start, self.end], 'output_frames': [self.first_output, self.end]}


def window_layout(num_frames: int, window_size: int) -> List[Window]:
    """Consecutive windows of `window_size` frames. The last window is taken from the end of the video when fewer
    frames remain (frames it shares with the window before keep that window's results); a video shorter than one
    window is a single shorter window."""
    windows = [Window(s, min(s + window_size, num_frames), s) for s in range(0, num_frames, window_size)]
    last = windows[-1]
    if last.end - last.start < window_size and num_frames >= window_size:
        windows[-1] = Window(num_frames - window_size, num_frames, last.first_output)
    return windows


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


class OverlayVideoWriter:
    """An H.264 mp4 at the input's size (yuv420p; yuv444p when a side is odd, which 4:2:0 cannot hold)."""

    def __init__(self, path: Path, frame_rate: float, size):
        height, width = size
        self.container = av.open(str(path), 'w')
        codec = 'libx264' if 'libx264' in av.codecs_available else 'mpeg4'
        self.stream = self.container.add_stream(codec, rate=Fraction(frame_rate).limit_denominator(10000))
        self.stream.width, self.stream.height = width, height
        self.stream.pix_fmt = 'yuv420p' if height % 2 == 0 and width % 2 == 0 else 'yuv444p'

    def write(self, rgb: np.ndarray):
        for packet in self.stream.encode(av.VideoFrame.from_ndarray(rgb, format='rgb24')):
            self.container.mux(packet)

    def close(self):
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()


def draw_overlay(image: Image.Image, mask: np.ndarray, caption: str, colour) -> np.ndarray:
    """The frame with the mask blended in `colour`, its outline, and the caption on a dark band at the top."""
    rgb = np.array(image.convert('RGB'))
    on = mask.astype(bool)
    rgb[on] = (rgb[on] * (1 - OVERLAY_ALPHA) + np.array(colour) * OVERLAY_ALPHA).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(rgb, contours, -1, colour, thickness=max(1, rgb.shape[0] // 240))
    scale = max(0.35, rgb.shape[0] / 720)
    thickness = max(1, round(scale * 1.5))
    lines, line = [], ''
    for word in caption.split():  # wrap the caption to the frame's width
        candidate = f'{line} {word}'.strip()
        if line and cv2.getTextSize(candidate, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][0] > rgb.shape[1] - 10:
            lines.append(line)
            candidate = word
        line = candidate
    lines.append(line)
    line_height = cv2.getTextSize('Ag', cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][1] * 2
    band = rgb[:line_height * len(lines) + line_height // 3]
    band[:] = (band * 0.4).astype(np.uint8)
    for i, text in enumerate(lines):
        cv2.putText(rgb, text, (5, line_height * (i + 1) - line_height // 4), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (255, 255, 255), thickness, cv2.LINE_AA)
    return rgb


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
        writers.append(OverlayVideoWriter(query_dir / 'overlay.mp4', frames.frame_rate, frames.size))
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


def error_message(error: Exception) -> str:
    """The message an error was raised with (str() of a KeyError would wrap it in quotes)."""
    return str(error.args[0]) if len(error.args) == 1 else str(error)


def load_run_config(args):
    """The config of the run, checked before any frame is decoded or any weight is read."""
    try:
        config = load_config(args.config_path, args.overrides, running_mode='eval', window_size=args.window_size,
                             checkpoint_path=args.checkpoint_path, text_encoder_pretrained=False,
                             device='cpu' if args.cpu else 'cuda')
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


def build_model(config, checkpoint_path):
    """The network in eval mode with the checkpoint's weights (read with weights_only=True)."""
    try:
        model = build_network(config)
    except OSError as error:  # the text encoder's config or tokenizer
        raise UsageError(error_message(error)) from error
    try:
        load_model_weights(model, checkpoint_path)
    except (KeyError, ValueError, RuntimeError, FileNotFoundError) as error:
        raise UsageError(error_message(error)) from error
    return model.to(config.device).eval()


def run(args) -> List[Path]:
    config = load_run_config(args)
    if config.device == 'cpu' and config.cpu_keep_freed_memory:
        keep_freed_memory_in_process()
    frames = open_input(args.video, args.start, args.end, args.fps, args.folder_fps)
    model = build_model(config, args.checkpoint_path)
    transforms = build_transforms('test', config.resize_and_crop_augmentations, False, config.train_short_size,
                                  config.train_max_size, config.eval_short_size, config.eval_max_size)
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

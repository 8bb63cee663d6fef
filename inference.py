"""Segment the object each text query refers to in any video, with a trained MTTR checkpoint.

    python inference.py -c configs/refer_youtube_vos.yaml -ckpt CHECKPOINT --video clip.mp4 \
        --text "a person riding a skateboard" --text "a dog running" [--texts-file queries.txt] -o outputs/ [--cpu]

The input is a video file PyAV can decode (mp4, avi, webm, ...) or a folder of jpg/png frames sorted by name. Frames
are resized as in evaluation and the video is cut into windows of `-ws` frames (12 by default, the Refer-YouTube-VOS
window). Each window is encoded once and every text query decoded against that encoding (`--query-batch` at a
time); models/video_segmenter.py describes the windows and the choice of one object query per text query for the
whole video.

Per text query, OUT_DIR/<nn>_<query>/ receives overlay.mp4 (the mask in colour and the query as a caption),
preview.png (the overlay of the middle frame), masks/<frame>.png (0/255, at the input's resolution), scores.json
(per-frame scores, the chosen object query, the window layout) and object_query_probabilities.npy
([frames, object queries] probability of "referred").
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import List, Tuple

import numpy as np
from PIL import Image

from datasets.video import (OVERLAY_COLOURS, Mp4Writer, draw_overlay, open_input, query_folder_name,
                            write_mask_png)
from models.video_segmenter import VideoSegmentation, VideoSegmenter, load_inference_config
from utils import (UsageError, WriteError, check_directory_path, error_message, keep_freed_memory_in_process,
                   writing)

# ---------------------------------------------------------------------------------------------------------------
# Writing the results


def write_results(result: VideoSegmentation, frames, out_dir: Path, metadata: dict) -> List[Path]:
    """Second pass over the frames: overlay video, preview picture (the middle frame's overlay), mask PNGs and
    scores of every text query."""
    query_dirs, writers, frame_records = [], [], []
    for query_index, query in enumerate(result.queries):
        query_dir = out_dir / query_folder_name(query_index, query)
        with writing(query_dir, 'results folder'):
            (query_dir / 'masks').mkdir(parents=True, exist_ok=True)
            for stale in (query_dir / 'masks').glob('*.png'):  # from an earlier run on other frames
                stale.unlink()
        query_dirs.append(query_dir)
        writers.append(Mp4Writer(query_dir / 'overlay.mp4', frames.frame_rate, frames.size))
        frame_records.append([])
    probabilities = [result.referred_probabilities(q) for q in range(len(result.queries))]
    preview_position = len(frames.frames) // 2
    try:
        for position, frame, image, window_index, masks in result.frame_masks(frames, frames.size):
            for query_index, (query, mask) in enumerate(zip(result.queries, masks)):
                mask_path = Path('masks') / f'{frame.name}.png'  # (a file's stem or a frame number: one name)
                write_mask_png(query_dirs[query_index] / mask_path, mask)
                colour = OVERLAY_COLOURS[query_index % len(OVERLAY_COLOURS)]
                overlay = draw_overlay(image, mask, query, colour)  # [H0, W0, 3] uint8
                writers[query_index].write(overlay)
                if position == preview_position:
                    with writing(query_dirs[query_index] / 'preview.png', 'preview'):
                        Image.fromarray(overlay).save(query_dirs[query_index] / 'preview.png')
                frame_records[query_index].append({
                    'frame': position, 'source_index': frame.source_index, 'time': round(frame.time, 6),
                    'mask': str(mask_path), 'mask_pixels': int(mask.sum()), 'window': window_index,
                    'referred_probability': float(probabilities[query_index][position,
                                                                             result.object_queries[query_index]])})
    finally:
        for writer in writers:
            writer.close()
    for query_index, query in enumerate(result.queries):
        trajectory_scores = probabilities[query_index].mean(axis=0)
        object_query = result.object_queries[query_index]
        scores = {
            'query': query, **metadata,
            'num_frames': len(frame_records[query_index]), 'frame_rate': frames.frame_rate,
            'object_query': object_query,
            'object_query_score': float(trajectory_scores[object_query]),
            'object_query_scores': [round(float(s), 6) for s in trajectory_scores],
            'windows': [window.to_dict() for window in result.windows],
            'frames': frame_records[query_index],
        }
        with writing(query_dirs[query_index], 'results folder'):
            np.save(query_dirs[query_index] / 'object_query_probabilities.npy', probabilities[query_index])
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
    parser.add_argument('--text', dest='queries', action='append', default=[], metavar='QUERY',
                        help='a text query (repeatable: each query is segmented on its own, all of them on one '
                             'encoding of each window)')
    parser.add_argument('--texts-file', metavar='FILE',
                        help='a text file with one query per line (empty lines are skipped), after the --text ones')
    parser.add_argument('--query-batch', type=int, default=4, metavar='N',
                        help='queries decoded at once against a window\'s encoding (default 4: with 4 queries at '
                             '360x640 and windows of 12 the memory stays within 1.3x that of one query; lower it '
                             'to save memory, raise it for speed)')
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
    if not args.queries and not args.texts_file:
        raise UsageError('no text query: give --text QUERY (repeatable) or --texts-file FILE')
    if args.query_batch < 1:
        raise UsageError(f'--query-batch must be at least 1, got {args.query_batch}')
    if args.object_query is not None and args.object_query < 0:
        raise UsageError(f'--object-query must be an object query index (0 or more), got {args.object_query}')
    check_directory_path(args.output_dir, '-o')


def read_queries(args) -> List[str]:
    """The --text queries, then those of --texts-file (one a line)."""
    queries = list(args.queries)
    if args.texts_file:
        try:
            lines = Path(args.texts_file).read_text(encoding='utf-8').splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise UsageError(f'--texts-file {args.texts_file}: cannot read it ({error_message(error)}); expected a '
                             'UTF-8 text file with one query per line') from error
        queries += [line.strip() for line in lines if line.strip()]
        if len(queries) == len(args.queries):
            raise UsageError(f'--texts-file {args.texts_file} holds no query: expected one query per line')
    return queries


def load_run_config(args):
    """The config of the run, checked before any frame is decoded or any weight is read."""
    config = load_inference_config(args.config_path, args.checkpoint_path, args.overrides, args.cpu,
                                   window_size=args.window_size)
    if args.object_query is not None and args.object_query >= config.num_queries:
        raise UsageError(f'--object-query {args.object_query}: the model has object queries 0 to '
                         f'{config.num_queries - 1}')
    return config


def run(args) -> List[Tuple[str, Path]]:
    """Segments the video for every query; returns `(query, its results folder)` pairs."""
    config = load_run_config(args)
    queries = read_queries(args)
    if config.device == 'cpu' and config.cpu_keep_freed_memory:  # process-wide: this is the entry point
        keep_freed_memory_in_process()
    frames = open_input(args.video, args.start, args.end, args.fps, args.folder_fps)
    segmenter = VideoSegmenter.from_checkpoint(config, args.checkpoint_path, args.query_batch)
    out_dir = Path(args.output_dir)
    with writing(out_dir, 'output folder'):
        out_dir.mkdir(parents=True, exist_ok=True)
    print(f'{args.video}: {len(frames.frames)} frames of {frames.size[1]}x{frames.size[0]}, {len(queries)} '
          f'quer{"y" if len(queries) == 1 else "ies"}, windows of up to {args.window_size} frames', file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix='.scratch-') as scratch_dir:
        result = segmenter.segment(frames, queries, args.window_size, Path(scratch_dir), args.object_query)
        metadata = {'input': str(args.video), 'checkpoint': str(args.checkpoint_path), 'window_size': args.window_size,
                    'object_query_rule': 'given by --object-query' if args.object_query is not None else
                    'highest probability of "referred" averaged over all frames'}
        return list(zip(queries, write_results(result, frames, out_dir, metadata)))


def main(argv=None):
    args = parse_args(argv)
    try:
        check_args(args)
        results = run(args)
    except (UsageError, WriteError) as error:
        print(f'inference.py: error: {error_message(error)}', file=sys.stderr)
        sys.exit(2)
    for query, query_dir in results:
        print(f'"{query}": {query_dir}/overlay.mp4, {query_dir}/preview.png, {query_dir}/masks/*.png, '
              f'{query_dir}/scores.json')


if __name__ == '__main__':
    main()

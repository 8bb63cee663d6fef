"""Segment the object each text query refers to in any video, a live source or a whole collection of videos, with a
trained MTTR checkpoint.

    python inference.py -c configs/refer_youtube_vos.yaml -ckpt CHECKPOINT --video clip.mp4 \
        --text "a person riding a skateboard" --text "a dog running" [--texts-file queries.txt] -o outputs/ [--cpu]
    python inference.py ... --video rtsp://camera/stream --online --text "the dog" -o live/
    python inference.py ... --videos videos.jsonl -o collection/ [-ng 4 | torchrun --nproc-per-node 4 ...]

`--video` is a video file PyAV can decode (mp4, avi, webm, ...) or a folder of jpg/png frames sorted by name; with
`--online`, anything PyAV opens as a stream (a URL, a device with --input-format, a named pipe, - for standard
input), segmented as its frames arrive. Frames are resized as in evaluation and cut into windows of `-ws` frames
(12 by default, the Refer-YouTube-VOS window); each window is encoded once and every text query decoded against
that encoding. video_inference/choice.py describes the object query rules (`--rule`).

OUT/<nn>_<query>/ receives per text query overlay.mp4, preview.png, masks/<frame>.png, scores.json and
object_query_probabilities.npy (video_inference/results.py); OUT/summary.json what was segmented, and
OUT/config.yaml and OUT/log.txt the run's config and log. With --videos, each video's results go into
OUT/<name>/, laid out so, and OUT/summary.json gives every video's status (video_inference/collection.py).
"""
import argparse
import contextlib
import sys
from pathlib import Path
from typing import List, Optional

from config import Config, save_config
from engine.arguments import add_run_arguments
from engine.launch import Failed, Process, launch, plan_processes, set_up_process
from engine.logs import log_to_file, logger, setup_logging
from engine.run_config import load_run_config
from engine.run_directory import DirectoryLock, LockHeld, describe_holder
from engine.stopping import interrupting_stops, stopped_by
from utils import RunError, UsageError, WriteError, check_directory_path, error_message, replacing, writing
from video_inference.choice import CAUSAL_RULES, FILE_RULE, ONLINE_RULE, RULES
from video_inference.collection import SUMMARY, read_video_list, segment_collection
from video_inference.one_video import SegmentationOptions, open_source, read_summary, segment_into_folder
from video_inference.segmenter import SECOND_PASSES, VideoSegmenter

TERMINATED_EXIT_CODE, FAILED_VIDEOS_EXIT_CODE, STOPPED_EARLY_EXIT_CODE = 143, 1, 3


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Segment the object each text query refers to in a video, a live source or a collection of '
                    'videos, with an MTTR checkpoint.',
        epilog='Config values are merged as: YAML file < the flags above < --set. The text encoder\'s pretrained '
               'weights are not loaded (the checkpoint holds them) unless --set text_encoder_pretrained=true.')
    add_run_arguments(parser, checkpoint_required=True, window_size_default=12,
                      window_size_help='frames per forward pass (default 12, the Refer-YouTube-VOS checkpoint\'s '
                                       'window)')
    inputs = parser.add_mutually_exclusive_group(required=True)
    inputs.add_argument('--video', help='a video file (mp4, avi, webm, ...) or a folder of jpg/png frames; with '
                                        '--online, also a URL, a device, a named pipe or - (standard input)')
    inputs.add_argument('--videos', metavar='LIST',
                        help='a JSON-lines file, a video a line: {"video": "path/or/url", "queries": ["...", ...]} '
                             '(optional "name": its results folder under -o)')
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
    parser.add_argument('--rule', choices=RULES,
                        help=f'how the object query is chosen across windows (default: {FILE_RULE}, with --online '
                             f'{ONLINE_RULE}); see the README\'s table')
    parser.add_argument('--window-overlap', type=int, metavar='N',
                        help='frames shared by consecutive windows (default: 0 for the video rule, a quarter of the '
                             'window for the others)')
    parser.add_argument('--second-pass', choices=SECOND_PASSES,
                        help='the whole-video rules choose after the last window: the masks then come from running '
                             'the network again (network, the default: nothing on disk) or from every object '
                             'query\'s outputs kept in a scratch folder under -o (scratch: half the compute, about '
                             '0.5 MB of scratch per frame at 360p)')
    parser.add_argument('--online', action='store_true',
                        help='segment a live source as its frames arrive: each window\'s masks are written as soon '
                             'as it has run (needs a causal rule: window or causal)')
    parser.add_argument('--input-format', help='the source\'s format for PyAV (ffmpeg -f), e.g. v4l2 for a camera')
    parser.add_argument('--input-option', dest='input_options', action='append', default=[], metavar='KEY=VALUE',
                        help='an option for opening the source (ffmpeg\'s), e.g. rtsp_transport=tcp')
    parser.add_argument('--stall-timeout', type=float, default=10.0, metavar='S',
                        help='--online: stop when the source sends no frame for this many seconds (default 10)')
    parser.add_argument('--start', type=float, default=0.0, help='first second to segment (inclusive, default 0)')
    parser.add_argument('--end', type=float, help='last second to segment (exclusive, default: the end)')
    parser.add_argument('--fps', type=float, help='subsample to this many frames a second (default: every frame)')
    parser.add_argument('--folder-fps', type=float, default=30.0,
                        help='frame rate of a frames folder, for --start/--end/--fps and the overlay video '
                             '(default 30)')
    parser.add_argument('--object-query', type=int, metavar='INDEX',
                        help='segment this object query in every window instead of choosing (scores.json lists '
                             'their scores)')
    devices = parser.add_mutually_exclusive_group()
    devices.add_argument('-ng', '--num_gpus', type=int,
                         help='--videos: number of GPUs, one process each (with --cpu: number of CPU processes)')
    devices.add_argument('-gids', '--gpu_ids', type=int, nargs='+', help='--videos: ids of the GPUs to use')
    return parser.parse_args(argv)


def check_args(args):
    """Values argparse cannot check by itself, reported like the other usage errors: in one line."""
    if args.window_size < 1:
        raise UsageError(f'-ws must be at least 1, got {args.window_size}')
    if args.window_overlap is not None and not 0 <= args.window_overlap < args.window_size:
        raise UsageError(f'--window-overlap must be 0 to {args.window_size - 1} (less than -ws), got '
                         f'{args.window_overlap}')
    if args.start < 0:
        raise UsageError(f'--start must be 0 or more seconds, got {args.start:g}')
    if args.end is not None and args.end <= args.start:
        raise UsageError(f'--end ({args.end:g} s) must come after --start ({args.start:g} s)')
    for name, value in (('--fps', args.fps), ('--folder-fps', args.folder_fps)):
        if value is not None and not value > 0:
            raise UsageError(f'{name} must be a positive number of frames a second, got {value:g}')
    if not args.stall_timeout > 0:
        raise UsageError(f'--stall-timeout must be a positive number of seconds, got {args.stall_timeout:g}')
    for query in args.queries:
        if not query.strip():
            raise UsageError(f'--text {query!r}: the text query is empty; give the words that describe the object')
    if args.videos and (args.queries or args.texts_file):
        raise UsageError('--videos gives each video its queries: leave out --text and --texts-file')
    if args.video and not args.queries and not args.texts_file:
        raise UsageError('no text query: give --text QUERY (repeatable) or --texts-file FILE')
    if args.video and (args.num_gpus or args.gpu_ids):
        raise UsageError('-ng and -gids spread a collection (--videos) over processes; one --video runs in one')
    if args.num_gpus is not None and args.num_gpus < 1:
        raise UsageError(f'-ng must be at least 1, got {args.num_gpus}')
    if args.query_batch < 1:
        raise UsageError(f'--query-batch must be at least 1, got {args.query_batch}')
    if args.object_query is not None and args.object_query < 0:
        raise UsageError(f'--object-query must be an object query index (0 or more), got {args.object_query}')
    if args.online and args.videos:
        raise UsageError('--online segments one live source (--video), not a collection')
    rule = args.rule or (ONLINE_RULE if args.online else FILE_RULE)
    if args.second_pass is not None and (rule in CAUSAL_RULES or args.object_query is not None):
        raise UsageError(f'--second-pass is for the whole-video rules (video, linked); --rule {rule} decides each '
                         'window as it runs, in one pass')
    if args.online and args.rule is not None and args.rule not in CAUSAL_RULES:
        raise UsageError(f'--online decides each window as it comes: --rule {args.rule} needs the whole video; use '
                         f'{" or ".join(CAUSAL_RULES)}')
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


def read_run_config(args) -> Config:
    """The config of the run, checked before any frame is decoded or any weight is read."""
    config = load_run_config(args.config_path, args.overrides, running_mode='eval',
                             checkpoint_path=args.checkpoint_path, needs_dataset=False, window_size=args.window_size,
                             device='cpu' if args.cpu else 'cuda')
    plan_processes(cpu=config.device == 'cpu')  # (a GPU that is not there)
    if args.object_query is not None and args.object_query >= config.num_queries:
        raise UsageError(f'--object-query {args.object_query}: the model has object queries 0 to '
                         f'{config.num_queries - 1}')
    return config


def segmentation_options(args) -> SegmentationOptions:
    options = {}
    for item in args.input_options:
        if '=' not in item:
            raise UsageError(f'--input-option expects KEY=VALUE, got {item!r}')
        key, value = item.split('=', 1)
        options[key] = value
    return SegmentationOptions(
        window_size=args.window_size, rule=args.rule or (ONLINE_RULE if args.online else FILE_RULE),
        overlap=args.window_overlap, object_query=args.object_query, second_pass=args.second_pass or 'network',
        start=args.start, end=args.end, fps=args.fps, folder_fps=args.folder_fps, online=args.online,
        input_format=args.input_format, input_options=options, stall_timeout=args.stall_timeout)


def open_output(out_dir: Path, config: Config) -> DirectoryLock:
    """-o, created and locked for this run (a second run into it stops naming the first), with the run's config
    and log."""
    with writing(out_dir, 'output folder'):
        out_dir.mkdir(parents=True, exist_ok=True)
    lock = DirectoryLock(out_dir)
    try:
        lock.acquire()
    except LockHeld as error:
        raise UsageError(f'-o {out_dir} is in use by another run ({describe_holder(error.holder)}); wait for it to '
                         'end or choose another -o') from None
    except OSError as error:
        raise UsageError(f'cannot write into -o {out_dir}: {error.strerror or error_message(error)}') from error
    with writing(out_dir / 'config.yaml', 'config'), replacing(out_dir / 'config.yaml') as temporary:
        save_config(config, temporary)
    setup_logging()
    log_to_file(out_dir / 'log.txt')
    return lock


def segment_one(args, config: Config, options: SegmentationOptions, locks: list):
    queries = read_queries(args)
    set_up_process(config.device, config.cpu_keep_freed_memory)  # (process-wide: this is the entry point)
    frames = open_source(args.video, options)  # (a video that cannot be read is told before the model loads)
    segmenter = VideoSegmenter.from_checkpoint(config, args.checkpoint_path, args.query_batch)
    locks.append(open_output(Path(args.output_dir), config))  # (the inputs are checked: from here on it writes)
    logger.info(f'{args.video}: {len(queries)} quer{"y" if len(queries) == 1 else "ies"}, windows of '
                f'{args.window_size} frames overlapping by {options.window_overlap}, rule {options.rule}'
                + (', online' if options.online else ''))
    summary = segment_into_folder(segmenter, args.video, queries, Path(args.output_dir), options,
                                  {'checkpoint': str(args.checkpoint_path)}, frames=frames)
    for query, folder in zip(queries, summary['folders']):
        folder = Path(args.output_dir) / folder
        logger.info(f'"{query}": {folder}/overlay.mp4, {folder}/preview.png, {folder}/masks/*.png, '
                    f'{folder}/scores.json')
    logger.info(f'{summary["num_frames"]} frames in {summary["windows"]} windows, {summary["seconds"]:.1f} s; '
                f'latency per window (frames in to masks out) {summary["latency_seconds"]["mean"]:.2f} s on '
                f'average, {summary["latency_seconds"]["max"]:.2f} s at most')
    if summary['stop_reason']:
        print(f'inference.py: stopped early: {summary["stop_reason"]}; the {summary["num_frames"]} frames before are '
              f'segmented in {args.output_dir}', file=sys.stderr)
        return STOPPED_EARLY_EXIT_CODE
    return 0


def collection_process(process: Process, config: Config, checkpoint: str, query_batch: int, entries,
                       out_dir: Path, options: SegmentationOptions) -> str:
    """One process of a collection run (engine.launch's target)."""
    config.device = str(process.device)
    segmenter = VideoSegmenter.from_checkpoint(config, checkpoint, query_batch)
    segment_collection(process, segmenter, entries, out_dir, options, {'checkpoint': str(checkpoint)})
    return 'interrupted' if process.stop.signum is not None else 'done'


def segment_many(args, config: Config, options: SegmentationOptions, locks: list) -> int:
    entries = read_video_list(args.videos)
    plan = plan_processes(args.cpu, args.num_gpus, args.gpu_ids)
    out_dir = Path(args.output_dir)
    if plan.rank == 0:  # (under torchrun the others write into the folder rank 0 holds)
        locks.append(open_output(out_dir, config))
    logger.info(f'{len(entries)} videos from {args.videos}, {plan.world_size if plan.torchrun else len(plan.devices)}'
                f' process(es)')
    status = launch(collection_process, plan, config, args.checkpoint_path, args.query_batch, entries, out_dir,
                    options, keep_freed_memory=config.cpu_keep_freed_memory, exiting=True)
    if plan.rank != 0:
        return 0
    summary = read_summary(out_dir) if (out_dir / SUMMARY).is_file() else None
    if summary is None:
        return TERMINATED_EXIT_CODE if status in ('interrupted', 'stopped') else FAILED_VIDEOS_EXIT_CODE
    logger.info(f'{out_dir / SUMMARY}: ' + ', '.join(f'{count} {name}' for name, count in summary['counts'].items()))
    if status in ('interrupted', 'stopped'):
        return TERMINATED_EXIT_CODE
    return FAILED_VIDEOS_EXIT_CODE if summary['counts'].get('failed') else 0


def main(argv: Optional[List[str]] = None):
    args = parse_args(argv)
    locks = []  # (-o, once the run writes there)
    try:
        with interrupting_stops() if args.video else contextlib.nullcontext():
            check_args(args)
            config = read_run_config(args)
            options = segmentation_options(args)
            segment = segment_one if args.video else segment_many
            code = segment(args, config, options, locks)
    except (UsageError, WriteError, RunError) as error:
        if getattr(error, 'details', None):
            print(error.details, file=sys.stderr)
        print(f'inference.py: error: {error_message(error)}', file=sys.stderr)
        code = 2
    except Failed as failed:
        code = failed.exit_code
    except KeyboardInterrupt as interrupt:
        signum = stopped_by(interrupt)
        print(f'inference.py: stopped by {signum.name}: the results folders of this run are incomplete (no '
              'summary.json); temporary files were removed', file=sys.stderr)
        code = 128 + signum
    finally:
        for lock in locks:
            lock.release()
    if code:
        sys.exit(code)


if __name__ == '__main__':
    main()

"""Try a trained MTTR in the browser: a Gradio page to drop a video on, type what to segment, and watch the result.

    pip install -r requirements-demo.txt
    python demo.py -c configs/synthetic.yaml -ckpt runs/<run>/checkpoints/best.pth.tar --cpu
    python demo.py -c configs/refer_youtube_vos.yaml -ckpt refer-youtube-vos_window-12.pth.tar [--host 0.0.0.0]

The page runs the segmentation of inference.py (video_inference/segmenter.py: each window encoded once for all the
text queries, the object query chosen by inference.py's default rule for files) window by window, writing each
window's masks and overlay frames as it comes, so a long upload within the limits keeps memory and disk flat. It
shows the overlay video with every query's mask in its own colour, a legend and the input's sound, a plot of each
query's probability of "referred" per frame, and a zip of the masks, `<nn>_<query>/<frame>.png`: the files
inference.py writes into `OUT_DIR/<nn>_<query>/masks/` for the same video, checkpoint, queries and window size.

For a server: the page listens on 127.0.0.1 unless --host says otherwise; the size of an upload, the length of a
video, and the frames and queries of a request are limited (flags); the model serves one request at a time while
the others wait in a queue that shows their position. Uploads and results live in a temporary folder: a page's
files are deleted when it is closed, everything when the server stops. With the synthetic config, the page
offers clips of the synthetic generator with their referring expressions as examples.
"""
import argparse
import math
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Set

import av
import cv2
import numpy as np
from PIL import Image

from datasets.video_files import write_mp4
from engine.arguments import add_run_arguments
from engine.launch import plan_processes, set_up_process
from engine.run_config import load_run_config
from engine.stopping import interrupting_stops, stopped_by
from video_inference.overlays import OVERLAY_COLOURS, OverlayVideoWriter, draw_overlays
from video_inference.results import query_folder_name, write_mask_png
from video_inference.audio import AudioTrack
from video_inference.choice import FILE_RULE
from video_inference.segmenter import VideoSegmenter
from video_inference.sources import open_input, video_duration
from utils import UsageError, error_message

try:  # the optional requirements (requirements-demo.txt): main() says how to install them when they are missing
    import gradio as gr
    from matplotlib.figure import Figure
except ImportError as error:
    MISSING_DEPENDENCY: Optional[ImportError] = error
else:
    MISSING_DEPENDENCY = None

MAX_WINDOW_SIZE = 36  # a window is one forward pass: its memory grows with its frames
DISPLAY_MIN_HEIGHT = 240  # smaller videos are enlarged in the overlay video, so that the legend stays readable
EXAMPLE_FRAMES = 24
EXAMPLE_SCALE = 3  # example clips are drawn at the synthetic training size (64x64) and shown 3 times larger


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server."""
    max_upload_mb: float = 50
    max_video_seconds: float = 120
    max_frames: int = 300
    max_queries: int = 6


@dataclass
class DemoResult:
    overlay: Path  # mp4: the frames with every query's mask and a legend
    plot: Path  # png: each query's probability of "referred" per frame
    masks_zip: Path  # <nn>_<query>/<frame>.png, as inference.py's <nn>_<query>/masks/<frame>.png
    summary: str  # markdown


# ---------------------------------------------------------------------------------------------------------------
# One request


def read_queries(text: Optional[str], max_queries: int) -> List[str]:
    """One query per line; empty lines are skipped."""
    queries = [line.strip() for line in (text or '').splitlines() if line.strip()]
    if not queries:
        raise UsageError('no text query: type the words that describe the object, one query per line')
    if len(queries) > max_queries:
        raise UsageError(f'{len(queries)} queries: this server segments at most {max_queries} per request')
    return queries


def read_time_range(start: Optional[float], end: Optional[float]):
    """(start, end) in seconds; an empty start is 0, an empty or 0 end the end of the video (the page's number
    boxes cannot be empty)."""
    start = float(start or 0)
    end = float(end) if end else None
    if start < 0:
        raise UsageError(f'start must be 0 or more seconds, got {start:g}')
    if end is not None and end <= start:
        raise UsageError(f'end ({end:g} s) must come after start ({start:g} s)')
    return start, end


def segment_video(segmenter: VideoSegmenter, video: Optional[str], queries_text: Optional[str], window_size,
                  start: Optional[float], end: Optional[float], limits: Limits, run_dir: Path,
                  progress: Optional[Callable[[float, str], None]] = None) -> DemoResult:
    """Segments the video for every query and writes the results into `run_dir` (new). What the user can fix
    raises a UsageError. `progress(fraction done, what runs)` follows the windows, then the writing."""
    def report(fraction, description):
        if progress is not None:
            progress(fraction, description)

    if not video:
        raise UsageError('no video: upload one (or pick an example)')
    queries = read_queries(queries_text, limits.max_queries)
    window_size = int(window_size)
    if not 1 <= window_size <= MAX_WINDOW_SIZE:
        raise UsageError(f'the window size must be 1 to {MAX_WINDOW_SIZE} frames, got {window_size}')
    start, end = read_time_range(start, end)
    report(0, 'reading the video')
    duration = video_duration(video)
    if duration > limits.max_video_seconds:
        raise UsageError(f'the video is {duration:.1f} s long; this server takes videos of at most '
                         f'{limits.max_video_seconds:g} s')
    frames = open_input(video, start, end, None, 30.0)
    if len(frames.frames) > limits.max_frames:
        span = f'from {start:g} s to {end:g} s' if end is not None else f'from {start:g} s to the end'
        raise UsageError(f'{len(frames.frames)} frames {span}; this server segments at most {limits.max_frames} '
                         'frames per request: choose a shorter part with start and end')
    began = time.perf_counter()
    run_dir.mkdir(parents=True)
    windows = segmenter.segment(frames, queries, window_size, FILE_RULE, scratch_dir=run_dir,
                                num_frames=len(frames.frames),
                                progress=lambda done, total: report(done / total, f'window {done} of {total}'))
    video_writer = OverlayVideo(run_dir, Path(video).stem, queries, frames, AudioTrack.of(video, start, end))
    try:
        for result in windows:
            video_writer.add(result)
    finally:
        video_writer.close()
    segment_seconds = time.perf_counter() - began
    masks_zip = zip_masks(run_dir / 'masks', run_dir / f'{Path(video).stem}_masks.zip')
    plot_path = plot_referred_probabilities(run_dir / 'referred.png', frames, queries, video_writer)
    height, width = frames.size
    rows = [f'| {query_folder_name(q, query)} | {", ".join(map(str, sorted(set(video_writer.object_queries[q]))))} | '
            f'{np.mean(video_writer.probabilities[q]):.3f} |' for q, query in enumerate(queries)]
    windows_count = len(video_writer.windows)
    summary = '\n'.join([
        f'{len(frames.frames)} frames of {width}x{height} at {frames.frame_rate:g} fps, {windows_count} '
        f'window{"s" if windows_count > 1 else ""} of up to {window_size} frames, segmented in '
        f'{segment_seconds:.1f} s.', '',
        '| query (folder in the zip) | object query | mean probability of "referred" |', '| --- | --- | --- |', *rows])
    return DemoResult(video_writer.path, plot_path, masks_zip, summary)


class OverlayVideo:
    """What a request writes as its windows come: the masks `masks/<nn>_<query>/<frame>.png`, one overlay video of
    every query's mask in its colour above a legend (with the input's sound), and per query the chosen object
    query's probability of "referred" per frame, for the plot (a request's frames are limited)."""

    def __init__(self, run_dir: Path, name: str, queries, frames, audio: Optional[AudioTrack]):
        self.queries, self.frames = queries, frames
        self.colours = [OVERLAY_COLOURS[q % len(OVERLAY_COLOURS)] for q in range(len(queries))]
        self.folders = [run_dir / 'masks' / query_folder_name(q, query) for q, query in enumerate(queries)]
        for folder in self.folders:
            folder.mkdir(parents=True)
        height, width = frames.size
        self.scale = math.ceil(DISPLAY_MIN_HEIGHT / height) if height < DISPLAY_MIN_HEIGHT else 1
        self.path = run_dir / f'{name}_overlay.mp4'
        self.video = OverlayVideoWriter(self.path, frames.frame_rate, audio)
        self.probabilities = [[] for _ in queries]
        self.object_queries = [[] for _ in queries]
        self.windows = []

    def add(self, result):
        self.windows.append(result.window)
        height, width = self.frames.size
        for q, slot in enumerate(result.object_queries):
            self.object_queries[q].append(slot)
            self.probabilities[q] += result.probabilities[q][:, slot].tolist()
        for position, (frame, image) in enumerate(result.frames):
            masks = [query_masks[position] for query_masks in result.masks]
            for folder, mask in zip(self.folders, masks):
                write_mask_png(folder / f'{frame.name}.png', mask)
            if self.scale > 1:
                size = (width * self.scale, height * self.scale)
                image = image.resize(size, Image.BILINEAR)
                masks = [cv2.resize(m, size, interpolation=cv2.INTER_NEAREST) for m in masks]
            overlay = draw_overlays(image, masks, self.queries, self.colours)
            overlay = np.pad(overlay, ((0, 0), (0, overlay.shape[1] % 2), (0, 0)))  # browsers play 4:2:0 only
            self.video.write(overlay)

    def close(self):
        self.video.close()


# what a browser's <video> plays: the codecs, and the containers as PyAV names them (mp4/mov, webm/mkv, ogg)
BROWSER_CODECS = {'mov,mp4,m4a,3gp,3g2,mj2': ('h264', 'vp9', 'av1'), 'matroska,webm': ('vp8', 'vp9', 'av1', 'h264'),
                  'ogg': ('theora', 'vp8')}


def preview_note(video: Optional[str]) -> str:
    """A word for the page when the browser cannot play the upload (an MPEG-4 Part 2 AVI, say), whose preview
    then stays blank: it is segmented all the same, and the overlay plays everywhere. '' otherwise (a video PyAV
    cannot read either is reported when it is segmented)."""
    if not video:
        return ''
    try:
        with av.open(str(video)) as container:
            container_name, container_long_name = container.format.name, container.format.long_name
            codec = container.streams.video[0].codec_context.name
    except (av.error.FFmpegError, OSError, IndexError):
        return ''
    if codec in BROWSER_CODECS.get(container_name, ()):
        return ''
    return (f'Browsers cannot play this video ({codec} in {container_long_name}), so it shows no preview here; '
            'it is segmented all the same, and the overlay on the right plays in any browser.')


def zip_masks(masks_dir: Path, zip_path: Path) -> Path:
    with zipfile.ZipFile(zip_path, 'w', zipfile.ZIP_STORED) as archive:  # PNGs are compressed already
        for path in sorted(masks_dir.rglob('*.png')):
            archive.write(path, path.relative_to(masks_dir).as_posix())
    return zip_path


def plot_referred_probabilities(path: Path, frames, queries, video: OverlayVideo) -> Path:
    """Each query's probability of "referred" (its chosen object query's) per frame, window borders dotted."""
    figure = Figure(figsize=(8, 2.8), dpi=100)
    axes = figure.add_subplot()
    frame_numbers = [frame.source_index for frame in frames.frames]
    for window in video.windows[1:]:
        axes.axvline(frame_numbers[window.first_output] - 0.5, color='0.8', linestyle=':', linewidth=1)
    for q, query in enumerate(queries):
        colour = np.array(OVERLAY_COLOURS[q % len(OVERLAY_COLOURS)]) / 255
        slots = sorted(set(video.object_queries[q]))
        label = f'object quer{"y" if len(slots) == 1 else "ies"} {", ".join(map(str, slots))}'
        axes.plot(frame_numbers, video.probabilities[q], color=colour, marker='.', linewidth=1.5,
                  label=f'{query} ({label})')
    axes.set_ylim(0, 1)
    axes.set_xlabel('frame')
    axes.set_ylabel('probability of "referred"')
    axes.grid(alpha=0.3)
    axes.legend(fontsize='small', loc='best')
    figure.tight_layout()
    figure.savefig(path)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Examples


def write_example_clips(directory: Path, count: int = 3) -> List[list]:
    """Clips of the synthetic generator (test-split videos of 24 frames, drawn at the training size and enlarged
    three times, which the evaluation resize undoes) with their referring expressions: gr.Examples rows."""
    from datasets.synthetic import SyntheticSpec, generate_video
    spec = SyntheticSpec(num_frames=EXAMPLE_FRAMES, annotated_frames=tuple(range(1, EXAMPLE_FRAMES + 1)))
    directory.mkdir(parents=True, exist_ok=True)
    examples = []
    for index in range(count):
        frames, _, _, expressions = generate_video(spec, 'test', index)
        frames = np.repeat(np.repeat(frames, EXAMPLE_SCALE, axis=1), EXAMPLE_SCALE, axis=2)  # [T, 3H, 3W, 3]
        path = write_mp4(directory / f'synthetic_{index}.mp4', frames, rate=8, options={'crf': '10'})
        examples.append([str(path), '\n'.join(expressions)])
    return examples


# ---------------------------------------------------------------------------------------------------------------
# The page


class SessionFiles:
    """The files of each page session (its results folder and the videos it sent), deleted when the page is
    closed. Gradio stores an upload under a hash of its contents, so two sessions may share one."""

    def __init__(self, sessions_dir: Path):
        self.sessions_dir = Path(sessions_dir)
        self.uploads: Dict[str, Set[str]] = {}  # upload path -> the sessions that sent it
        self.lock = threading.Lock()

    def run_dir(self, session: str) -> Path:
        return self.sessions_dir / session / f'run-{time.time_ns()}'

    def add_upload(self, session: str, path: str):
        with self.lock:
            self.uploads.setdefault(path, set()).add(session)

    def end(self, session: str):
        shutil.rmtree(self.sessions_dir / session, ignore_errors=True)
        with self.lock:
            for path, sessions in list(self.uploads.items()):
                sessions.discard(session)
                if not sessions:
                    Path(path).unlink(missing_ok=True)
                    del self.uploads[path]


def build_app(segmenter: VideoSegmenter, limits: Limits, work_dir: Path, default_window_size: int = 12,
              examples: Optional[List[list]] = None, description: str = '') -> 'gr.Blocks':
    """The page, its files in `work_dir` (uploads, examples, results). Launch it with `launch_app`."""
    # Gradio takes its cache folder from the environment when a component or the server is made
    os.environ['GRADIO_TEMP_DIR'] = str(work_dir)
    session_files = SessionFiles(work_dir / 'sessions')
    examples_dir = (work_dir / 'examples').resolve()

    def remember_upload(video, request: gr.Request):
        if video and not Path(video).resolve().is_relative_to(examples_dir):  # examples stay for every page
            session_files.add_upload(request.session_hash or 'no-session', video)

    def uploaded(video, request: gr.Request):
        remember_upload(video, request)
        return preview_note(video)

    def run(video, queries_text, window_size, start, end, request: gr.Request, progress=gr.Progress()):
        remember_upload(video, request)  # again: API clients send their video with the request
        run_dir = session_files.run_dir(request.session_hash or 'no-session')
        try:
            result = segment_video(segmenter, video, queries_text, window_size, start, end, limits, run_dir,
                                   lambda fraction, text: progress(fraction, desc=text))
        except UsageError as error:
            shutil.rmtree(run_dir, ignore_errors=True)
            # the page shows the upload's name, not where the server keeps it
            message = error_message(error).replace(str(video), Path(video).name) if video else error_message(error)
            raise gr.Error(message, print_exception=False) from error
        except Exception as error:  # nothing a request sends may stop the server: the page says what went wrong
            traceback.print_exc()
            shutil.rmtree(run_dir, ignore_errors=True)
            raise gr.Error(f'the segmentation failed: {type(error).__name__}: {error_message(error)}',
                           print_exception=False) from error
        return str(result.overlay), str(result.plot), str(result.masks_zip), result.summary

    def end_session(request: gr.Request):
        if request.session_hash:
            session_files.end(request.session_hash)

    with gr.Blocks(title='MTTR: referring video object segmentation', analytics_enabled=False) as app:
        gr.Markdown('# MTTR: segment what your words refer to in a video\nUpload a video (or pick an example), '
                    'type what to segment, one query per line, and click Segment. ' + description)
        with gr.Row():
            with gr.Column():
                video = gr.Video(label='video', sources=['upload'], include_audio=True, elem_id='video-input')
                note = gr.Markdown(elem_id='preview-note')
                queries = gr.Textbox(label='text queries, one per line', lines=3, elem_id='queries',
                                     placeholder='a person riding a skateboard\nthe dog on the left')
                with gr.Row():
                    window_size = gr.Slider(1, MAX_WINDOW_SIZE, value=default_window_size, step=1,
                                            label='window size (frames per forward pass)', elem_id='window-size')
                    start = gr.Number(value=0, minimum=0, label='start (seconds)', elem_id='start')
                    end = gr.Number(value=0, minimum=0, label='end (seconds; 0: the end)', elem_id='end')
                button = gr.Button('Segment', variant='primary', elem_id='segment')
                if examples:
                    gr.Examples(examples, inputs=[video, queries], label='examples from the synthetic generator',
                                elem_id='examples', cache_examples=False)
            with gr.Column():
                overlay = gr.Video(label='overlay (every query in its colour)', interactive=False, autoplay=True,
                                   loop=True, elem_id='overlay')
                plot = gr.Image(label='probability of "referred" per frame', type='filepath', format='png',
                                interactive=False, height=300, elem_id='plot')
                masks_zip = gr.File(label='masks: <nn>_<query>/<frame>.png (0/255, at the video\'s size)',
                                    interactive=False, elem_id='masks')
                summary = gr.Markdown(elem_id='summary')
        video.upload(uploaded, video, note, api_visibility='private')
        video.clear(lambda: '', None, note, api_visibility='private')
        button.click(run, [video, queries, window_size, start, end], [overlay, plot, masks_zip, summary],
                     api_name='segment', concurrency_limit=1)
        app.unload(end_session)
    return app


def launch_app(app: 'gr.Blocks', limits: Limits, host: str = '127.0.0.1', port: Optional[int] = 7860) -> str:
    """Serve the page in the background, one request at a time on the model; returns its address."""
    app.queue(default_concurrency_limit=1)
    _, url, _ = app.launch(server_name=host, server_port=port, max_file_size=int(limits.max_upload_mb * 1024 ** 2),
                           prevent_thread_lock=True, footer_links=['api'])
    return url


# ---------------------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='A web page to segment the object each text query refers to in a video, with an MTTR '
                    'checkpoint (the segmentation of inference.py).',
        epilog='Needs the optional requirements: pip install -r requirements-demo.txt. Config values are merged as: '
               'YAML file < --set. The text encoder\'s pretrained weights are not loaded (the checkpoint holds them).')
    add_run_arguments(parser, checkpoint_required=True, window_size_default=12,
                      window_size_help='the page\'s window size (frames per forward pass) until the user changes it '
                                       '(default %(default)s)')
    parser.add_argument('--host', default='127.0.0.1',
                        help='address to listen on (default %(default)s: this machine only; 0.0.0.0: every network '
                             'the machine is on)')
    parser.add_argument('--port', type=int, default=7860, help='port to listen on (default %(default)s)')
    parser.add_argument('--max-upload-mb', type=float, default=Limits.max_upload_mb, metavar='MB',
                        help='largest video upload (default %(default)g MB)')
    parser.add_argument('--max-video-seconds', type=float, default=Limits.max_video_seconds, metavar='S',
                        help='longest video accepted (default %(default)g s)')
    parser.add_argument('--max-frames', type=int, default=Limits.max_frames, metavar='N',
                        help='most frames segmented per request, those between start and end (default %(default)s)')
    parser.add_argument('--max-queries', type=int, default=Limits.max_queries, metavar='N',
                        help='most text queries per request (default %(default)s)')
    parser.add_argument('--query-batch', type=int, default=4, metavar='N',
                        help='queries decoded at once against a window\'s encoding, as in inference.py (default '
                             '%(default)s)')
    return parser.parse_args(argv)


def check_args(args):
    if not 1 <= args.window_size <= MAX_WINDOW_SIZE:
        raise UsageError(f'-ws must be 1 to {MAX_WINDOW_SIZE}, got {args.window_size}')
    for name, value in (('--max-upload-mb', args.max_upload_mb), ('--max-video-seconds', args.max_video_seconds),
                        ('--max-frames', args.max_frames), ('--max-queries', args.max_queries),
                        ('--query-batch', args.query_batch)):
        if not value > 0:
            raise UsageError(f'{name} must be positive, got {value:g}')
    if not 0 < args.port < 65536:
        raise UsageError(f'--port must be 1 to 65535, got {args.port}')


def main(argv=None):
    args = parse_args(argv)
    work_dir, app = None, None
    try:
        with interrupting_stops():  # (`kill` stops the server as Ctrl-C does)
            if MISSING_DEPENDENCY is not None:
                raise UsageError(f'the demo needs Gradio and matplotlib ({MISSING_DEPENDENCY}): '
                                 'pip install -r requirements-demo.txt')
            check_args(args)
            config = load_run_config(args.config_path, args.overrides, running_mode='eval',
                                     checkpoint_path=args.checkpoint_path, needs_dataset=False,
                                     window_size=args.window_size, device='cpu' if args.cpu else 'cuda')
            plan_processes(cpu=config.device == 'cpu')  # (a GPU that is not there)
            set_up_process(config.device, config.cpu_keep_freed_memory)  # (process-wide: this is the entry point)
            segmenter = VideoSegmenter.from_checkpoint(config, args.checkpoint_path, args.query_batch)
            limits = Limits(args.max_upload_mb, args.max_video_seconds, args.max_frames, args.max_queries)
            work_dir = Path(tempfile.mkdtemp(prefix='mttr-demo-'))
            examples = write_example_clips(work_dir / 'examples') if config.synthetic_dataset else None
            description = (f'Model: `{args.config_path}` with `{Path(args.checkpoint_path).name}` on the '
                           f'{"CPU" if config.device == "cpu" else "GPU"}. At most {limits.max_frames} frames and '
                           f'{limits.max_queries} queries per request, videos of up to {limits.max_video_seconds:g} s '
                           f'and {limits.max_upload_mb:g} MB. One request runs at a time; others wait in line.')
            app = build_app(segmenter, limits, work_dir, args.window_size, examples, description)
            try:
                launch_app(app, limits, args.host, args.port)
            except OSError as error:
                raise UsageError(f'cannot listen on {args.host}:{args.port} ({error_message(error)}); choose another '
                                 '--port, or a --host address of this machine') from error
            while True:
                time.sleep(3600)
    except KeyboardInterrupt as interrupt:
        stopped = stopped_by(interrupt)
    except UsageError as error:
        print(f'demo.py: error: {error_message(error)}', file=sys.stderr)
        sys.exit(2)
    finally:
        if app is not None:
            app.close()
        if work_dir is not None:
            shutil.rmtree(work_dir, ignore_errors=True)
    removed = f' and its temporary files ({work_dir}) removed' if work_dir is not None else ''
    print(f'demo.py: stopped by {stopped.name}: the server is closed{removed}', file=sys.stderr)
    sys.exit(128 + stopped)


if __name__ == '__main__':
    main()

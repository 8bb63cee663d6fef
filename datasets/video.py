"""Video files in and out: the frames of a video file or a folder of images (with a time selection), the window
rule that cuts a video into network inputs, H.264 mp4 writing and the mask overlays drawn on frames.

Used by video inference (inference.py, demo.py), by the evaluation pictures and by the dataset generators.
"""
import itertools
import math
import re
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

import av
import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from utils import UsageError, writing

FRAME_SUFFIXES = ('.jpg', '.jpeg', '.png')
MISSING_FRAMES_TOLERATED = 2  # a file may announce a frame or two more than it holds at its end: a warning
TIME_TOLERANCE = 1e-6  # seconds; frame times are exact fractions turned into floats
OVERLAY_ALPHA = 0.5
OVERLAY_COLOURS = [(255, 64, 64), (64, 160, 255), (64, 220, 96), (255, 200, 0), (200, 64, 255), (0, 220, 220)]


# ---------------------------------------------------------------------------------------------------------------
# Reading


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


def announced_frame_count(stream, container=None) -> Optional[int]:
    """The number of frames a video file announces for `stream` (its index's frame count, else its duration times
    its frame rate), or None when it announces neither."""
    if stream.frames:
        return int(stream.frames)
    rate = stream.average_rate or stream.guessed_rate
    if stream.duration is not None and stream.time_base is not None and rate:
        duration = float(stream.duration * stream.time_base)
    elif container is not None and container.duration is not None and rate:
        duration = container.duration / av.time_base
    else:
        return None
    return int(round(duration * float(rate)))


def check_frame_count(path, announced: Optional[int], found: int, error=UsageError, how: str = 'decoded'):
    """Stop with `error` when a video yields fewer frames than its file announces, naming both counts (a file cut
    short after its index, as an mp4 written with its index first, decodes without an error: the frames just
    stop); only warn within MISSING_FRAMES_TOLERATED frames."""
    if announced is None or found >= announced:
        return
    message = (f'the video {path} is truncated or damaged: the file announces {announced} frames, {found} could be '
               f'{how}')
    if announced - found > MISSING_FRAMES_TOLERATED:
        raise error(message)
    warnings.warn(f'{message}; going on with them', stacklevel=2)


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
            announced = announced_frame_count(stream, container)
        if not times:
            raise UsageError(f'{path} holds no decodable video frames')
        check_frame_count(path, announced, len(times))
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
        decoded = 0
        try:
            for frame in container.decode(stream):
                yield frame
                decoded += 1
        except av.error.FFmpegError as error:
            check_frame_count(self.path, announced_frame_count(stream, container), decoded)
            raise UsageError(f'cannot decode the video {self.path} after {decoded} frames: {error}') from error

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


def video_duration(path) -> float:
    """The length of a video file in seconds, from its container's header, or else from the number of its packets
    (read without decoding a frame): cheap enough to check a length limit before decoding."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UsageError(f'{path} has no video stream; expected a video file (mp4, avi, webm, ...)')
            stream = container.streams.video[0]
            if container.duration is not None:
                return container.duration / av.time_base
            # no length in the header (a raw H.264 stream, say): one packet a frame
            rate = stream.average_rate or stream.guessed_rate or 25
            return sum(1 for packet in container.demux(stream) if packet.size) / float(rate)
    except (av.error.FFmpegError, OSError) as error:
        raise UsageError(f'cannot read the video {path} ({error}); expected a video file PyAV can decode '
                         '(mp4, avi, webm, ...)') from error


# ---------------------------------------------------------------------------------------------------------------
# Windows


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


# ---------------------------------------------------------------------------------------------------------------
# Writing


class Mp4Writer:
    """An H.264 mp4 (MPEG-4 Part 2 where FFmpeg has no libx264) of RGB frames `[H, W, 3]` uint8.

    `pix_fmt`: None picks yuv420p, or yuv444p when a side is odd (4:2:0 cannot hold it); `gop`: key-frame
    interval (None: the encoder's default); `options`: encoder options such as `{'crf': '4'}`.
    """

    def __init__(self, path, frame_rate: float, size: Tuple[int, int], pix_fmt: Optional[str] = None,
                 gop: Optional[int] = None, options: Optional[dict] = None):
        height, width = size
        self.path = path
        with writing(path, 'video'):  # (a full disk or a read-only folder: a WriteError naming the file)
            self.container = av.open(str(path), 'w')
        codec = 'libx264' if 'libx264' in av.codecs_available else 'mpeg4'
        self.stream = self.container.add_stream(codec, rate=Fraction(frame_rate).limit_denominator(10000),
                                                options=options or {})
        self.stream.width, self.stream.height = width, height
        self.stream.pix_fmt = pix_fmt or ('yuv420p' if height % 2 == 0 and width % 2 == 0 else 'yuv444p')
        if gop is not None:
            self.stream.codec_context.gop_size = gop

    def write(self, rgb: np.ndarray):
        with writing(self.path, 'video'):
            self.container.mux(self.stream.encode(av.VideoFrame.from_ndarray(rgb, format='rgb24')))

    def close(self):
        with writing(self.path, 'video'):
            try:
                self.container.mux(self.stream.encode())
            finally:
                self.container.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_mp4(path, frames: Iterable[np.ndarray], rate: float, pix_fmt: Optional[str] = None,
              gop: Optional[int] = None, options: Optional[dict] = None):
    """Encode RGB frames (`[H, W, 3]` uint8, any iterable) into `path` (see `Mp4Writer`). Returns `path`."""
    frames = iter(frames)
    first = next(frames)
    with Mp4Writer(path, rate, first.shape[:2], pix_fmt, gop, options) as writer:
        for frame in itertools.chain([first], frames):
            writer.write(frame)
    return path


def query_folder_name(index: int, query: str) -> str:
    """The folder of a text query's results: `<nn>_<the-query-s-words>` (a safe name whatever the query)."""
    slug = re.sub(r'[^a-z0-9]+', '-', query.lower()).strip('-')[:60].rstrip('-')
    return f'{index:02d}_{slug or "query"}'


def write_mask_png(path, mask: np.ndarray):
    """A binary mask `[H, W]` (0/1 or bool) as a single-channel 0/255 PNG (a WriteError naming it when it cannot
    be written)."""
    with writing(path, 'mask'):
        Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def blend_mask(rgb: np.ndarray, mask: np.ndarray, colour):
    """Blend `mask` ([H, W], 0/1 or bool) into `rgb` ([H, W, 3] uint8, changed in place) in `colour`, and outline it."""
    on = mask.astype(bool)
    rgb[on] = (rgb[on] * (1 - OVERLAY_ALPHA) + np.array(colour) * OVERLAY_ALPHA).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(rgb, contours, -1, colour, thickness=max(1, rgb.shape[0] // 240))


def draw_overlay(image: Image.Image, mask: np.ndarray, caption: str, colour) -> np.ndarray:
    """The frame with the mask blended in `colour`, its outline, and the caption on a dark band at the top."""
    rgb = np.array(image.convert('RGB'))
    blend_mask(rgb, mask, colour)
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


def draw_overlays(image: Image.Image, masks: Sequence[np.ndarray], captions: Sequence[str],
                  colours: Sequence) -> np.ndarray:
    """The frame with every mask blended in its colour and outlined, above a legend: one line per mask, a swatch
    of its colour and its caption (cut with '...' to the frame's width). Returns `[H0 + legend, W0, 3]` uint8, the
    legend's height even, so that an even frame stays even."""
    rgb = np.array(image.convert('RGB'))
    for mask, colour in zip(masks, colours):
        blend_mask(rgb, mask, colour)
    width = rgb.shape[1]
    scale = max(0.4, width / 900)
    thickness = max(1, round(scale * 1.5))
    text_height = cv2.getTextSize('Ag', cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][1]
    line_height = text_height * 2
    legend_height = line_height * len(captions) + line_height // 2
    legend = np.full((legend_height + legend_height % 2, width, 3), 24, dtype=np.uint8)
    for i, (caption, colour) in enumerate(zip(captions, colours)):
        baseline = line_height * (i + 1)
        cv2.rectangle(legend, (5, baseline - text_height), (5 + text_height, baseline), colour, thickness=-1)
        text_left = 10 + text_height
        text = caption
        for length in range(len(caption) - 1, -1, -1):  # cut the caption to the frame's width
            if cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][0] <= width - text_left - 5:
                break
            text = caption[:length].rstrip() + '...'
        cv2.putText(legend, text, (text_left, baseline), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness,
                    cv2.LINE_AA)
    return np.concatenate([rgb, legend])

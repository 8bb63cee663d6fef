"""The frames of a user's video: a video file or a folder of images, with a time selection (start, end, frame
rate), or a live source (`StreamFrames`: a URL, a device, a named pipe, standard input), read one frame at a time,
so that a video never sits in memory whole.
"""
import math
import queue
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import av
from PIL import Image, UnidentifiedImageError

from datasets.video_files import announced_frame_count, check_frame_count
from utils import UsageError

FRAME_SUFFIXES = ('.jpg', '.jpeg', '.png')
TIME_TOLERANCE = 1e-6  # seconds; frame times are exact fractions turned into floats


@dataclass
class Frame:
    source_index: int  # position in the video file or in the sorted folder
    time: float  # seconds from the first frame
    name: str  # stem of the mask PNG


class FrameSelector:
    """Decides, frame by frame as their times come, which frames are selected: those with `start <= time < end`;
    with `fps`, only the first frame at or after each tick `start + k / fps` (a video at a lower rate than `fps`
    keeps all its frames)."""

    def __init__(self, start: float = 0.0, end: Optional[float] = None, fps: Optional[float] = None):
        self.start, self.end, self.fps = start, end, fps
        self.next_tick = start

    def past_end(self, time: float) -> bool:
        return self.end is not None and time >= self.end - TIME_TOLERANCE

    def accept(self, time: float) -> bool:
        if time < self.start - TIME_TOLERANCE or self.past_end(time):
            return False
        if self.fps is not None:
            if time < self.next_tick - TIME_TOLERANCE:
                return False
            self.next_tick = self.start + (math.floor((time - self.start) * self.fps + TIME_TOLERANCE) + 1) / self.fps
        return True


def select_frames(times: Sequence[float], start: float = 0.0, end: Optional[float] = None,
                  fps: Optional[float] = None) -> List[int]:
    """Positions of the frames `FrameSelector(start, end, fps)` selects among frames at `times`."""
    selector = FrameSelector(start, end, fps)
    return [i for i, t in enumerate(times) if selector.accept(t)]


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
            announced = announced_frame_count(stream)
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
            check_frame_count(self.path, announced_frame_count(stream), decoded)
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
        raise UsageError(f'no such file or folder: {path} (expected a video file or a folder of frames)')
    if not frames.frames:
        wanted = f'between {start:g} s and {end:g} s' if end is not None else f'from {start:g} s on'
        raise UsageError(f'no frames {wanted} in {path} (it has {frames.source_description})')
    return frames


class StreamFrames:
    """The selected frames of a live source as they arrive: whatever PyAV opens as a stream (a URL such as rtsp://
    or http://, a device with `input_format` such as 'v4l2', a named pipe, a file, or '-' for standard input).

    Iterating yields `(Frame, PIL image)` once: a background thread reads the source, at most `buffer` frames
    ahead (the memory stays flat; a source faster than the network waits, or drops frames where it cannot wait,
    as a camera does). The iteration ends when the source ends, when it sends no frame for `stall_timeout`
    seconds, when it fails to decode, or when `end` is passed; `stop_reason` then says which, in one line (None
    for a source that simply ended). `size` and `frame_rate` are known once the first frame has arrived.
    """

    def __init__(self, source: str, start: float = 0.0, end: Optional[float] = None, fps: Optional[float] = None,
                 input_format: Optional[str] = None, options: Optional[dict] = None, stall_timeout: float = 10.0,
                 buffer: int = 64):
        self.source, self.input_format, self.options = source, input_format, dict(options or {})
        self.selector, self.fps, self.stall_timeout = FrameSelector(start, end, fps), fps, stall_timeout
        self.size: Optional[Tuple[int, int]] = None
        self.frame_rate: Optional[float] = None
        self.frames_read, self.stop_reason = 0, None
        self._queue: 'queue.Queue' = queue.Queue(maxsize=buffer)
        self._stopped = threading.Event()

    def _open(self):
        target = sys.stdin.buffer if self.source == '-' else self.source
        try:
            return av.open(target, format=self.input_format, options=self.options, timeout=self.stall_timeout)
        except (av.error.FFmpegError, OSError, ValueError) as error:
            raise UsageError(f'cannot open the source {self.source} ({error}); expected a video file, URL, device '
                             '(with --input-format) or named pipe PyAV can read, or - for standard input') from error

    def _put(self, item) -> bool:
        while not self._stopped.is_set():
            try:
                self._queue.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def _read(self):
        """The reader thread: ('frame', Frame, image, rate, size) items, then ('end', reason or None)."""
        try:
            container = self._open()
        except UsageError as error:
            self._put(('error', error))
            return
        with container:
            if not container.streams.video:
                self._put(('error', UsageError(f'{self.source} has no video stream')))
                return
            stream = container.streams.video[0]
            stream.thread_type = 'SLICE'  # (frame threads would hold decoded frames back until more data came)
            rate = float(stream.average_rate or stream.guessed_rate or 25)
            first_time, index = None, 0
            try:
                for frame in container.decode(stream):
                    time_ = frame.time if frame.time is not None else index / rate
                    first_time = time_ if first_time is None else first_time
                    time_ -= first_time
                    if self.selector.past_end(time_):
                        self._put(('end', None))
                        return
                    if self.selector.accept(time_):
                        item = ('frame', Frame(index, time_, f'{index:06d}'), frame.to_image(), rate,
                                (frame.height, frame.width))
                        if not self._put(item):
                            return
                    index += 1
            except (av.error.FFmpegError, OSError) as error:
                self._put(('end', f'the source failed after {index} frames ({error})'))
                return
        self._put(('end', None))

    def __iter__(self) -> Iterator[Tuple[Frame, Image.Image]]:
        thread = threading.Thread(target=self._read, name='video source', daemon=True)
        thread.start()
        try:
            while True:
                try:
                    item = self._queue.get(timeout=self.stall_timeout)
                except queue.Empty:
                    self.stop_reason = (f'the source {self.source} sent no frame for {self.stall_timeout:g} s '
                                        f'(after {self.frames_read} frames)')
                    return
                if item[0] == 'error':
                    raise item[1]
                if item[0] == 'end':
                    self.stop_reason = item[1]
                    return
                _, frame, image, rate, size = item
                if self.size is None:
                    self.size, self.frame_rate = size, min(self.fps, rate) if self.fps else rate
                elif size != self.size:
                    self.stop_reason = (f'the source changed its frame size from {self.size[1]}x{self.size[0]} to '
                                        f'{size[1]}x{size[0]} after {self.frames_read} frames')
                    return
                self.frames_read += 1
                yield frame, image
        finally:
            self._stopped.set()  # (a reader blocked on a silent source stays so: it is a daemon thread)


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

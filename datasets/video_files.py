"""Video files of the datasets: the frame count a file announces (and the check that it holds them), and H.264
mp4 writing (the synthetic generator, the overlay videos of the front ends).
"""
import functools
import io
import itertools
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Optional, Tuple

import av
import av.logging
import numpy as np

from utils import UsageError, writing

MISSING_FRAMES_TOLERATED = 2  # a file may announce a frame or two more than it holds at its end: a warning


def announced_frame_count(stream) -> Optional[int]:
    """The number of frames the container states for `stream` (mp4 and mov index every frame, AVI counts them), or
    None where it states none (webm, mkv, raw streams: a duration times a frame rate is no count a variable-rate
    video can be held to)."""
    return int(stream.frames) or None


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


@functools.lru_cache(maxsize=None)
def x264_repeatable_params() -> str:
    """x264's parameters that make the same frames encode to the same bytes in every process: the CPU capabilities
    x264 detects, without AVX-512. On a CPU with AVX-512 (this project's test machine), x264's AVX-512 code made
    the same 37 frames encode to other bytes in 2 of 6 processes that had run a forward pass of the network before
    (0 of 6 with x264 kept to AVX2, 0 of 12 in fresh processes), which a multi-process run compared with a
    one-process run cannot have. '' where x264 uses no AVX-512."""
    previous = av.logging.get_level()
    av.logging.set_level(av.logging.INFO)
    try:
        with av.logging.Capture(True) as logs, av.open(io.BytesIO(), 'w', format='mp4') as container:
            stream = container.add_stream('libx264', rate=25)
            stream.width, stream.height, stream.pix_fmt = 16, 16, 'yuv420p'
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format='rgb24')))
            container.mux(stream.encode(None))
    finally:
        av.logging.set_level(previous)
    for _, name, message in logs:
        if name == 'libx264' and message.startswith('using cpu capabilities:'):
            capabilities = message.split(':', 1)[1].split()
            if 'AVX512' in capabilities:
                return 'asm=' + ','.join(c for c in capabilities if c != 'AVX512')
    return ''


class Mp4Writer:
    """An H.264 mp4 (MPEG-4 Part 2 where FFmpeg has no libx264) of RGB frames `[H, W, 3]` uint8.

    `pix_fmt`: None picks yuv420p, or yuv444p when a side is odd (4:2:0 cannot hold it); `gop`: key-frame
    interval (None: the encoder's default); `options`: encoder options such as `{'crf': '4'}`;
    `container_options`: the muxer's, e.g. `{'movflags': 'frag_keyframe+empty_moov'}` for an mp4 that plays while it
    is written.
    """

    def __init__(self, path, frame_rate: float, size: Tuple[int, int], pix_fmt: Optional[str] = None,
                 gop: Optional[int] = None, options: Optional[dict] = None, container_options: Optional[dict] = None):
        height, width = size
        self.path = path
        with writing(path, 'video'):  # (a full disk or a read-only folder: a WriteError naming the file)
            if Path(path).is_symlink():  # (it would be written through)
                Path(path).unlink()
            self.container = av.open(str(path), 'w', options=container_options or {})
        codec = 'libx264' if 'libx264' in av.codecs_available else 'mpeg4'
        options = dict(options or {})
        if codec == 'libx264':
            options['x264-params'] = ':'.join(filter(None, [x264_repeatable_params(), options.get('x264-params')]))
        self.stream = self.container.add_stream(codec, rate=Fraction(frame_rate).limit_denominator(10000),
                                                options={k: v for k, v in options.items() if v})
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

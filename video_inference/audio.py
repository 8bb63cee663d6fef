"""The input's sound in an overlay video: the audio of the segmented time range, encoded as AAC beside the video.

    audio = AudioTrack.of(path, start, end)       # None when the input has no audio (or is no file)
    audio.add_stream(writer.container)            # before the overlay's first frame
    ... the overlay's frames ...
    audio.write(writer.container)                 # before the writer is closed
"""
from fractions import Fraction
from pathlib import Path
from typing import Optional

import av

from utils import writing

AUDIO_CODEC, AUDIO_LAYOUT, AUDIO_FORMAT = 'aac', 'stereo', 'fltp'


class AudioTrack:
    def __init__(self, path: Path, start: float, end: Optional[float], sample_rate: int):
        self.path, self.start, self.end, self.sample_rate = Path(path), start, end, sample_rate
        self.stream = None

    @classmethod
    def of(cls, path, start: float = 0.0, end: Optional[float] = None) -> Optional['AudioTrack']:
        """The audio of the file `path` from `start` to `end` seconds (of its video's first frame), if it has any
        PyAV can decode."""
        path = Path(path)
        if not path.is_file():
            return None
        try:
            with av.open(str(path)) as container:
                if not container.streams.audio:
                    return None
                rate = container.streams.audio[0].rate or 44100
        except (av.error.FFmpegError, OSError):
            return None
        return cls(path, start, end, rate)

    def add_stream(self, container):
        self.stream = container.add_stream(AUDIO_CODEC, rate=self.sample_rate, layout=AUDIO_LAYOUT)

    def write(self, container, path_written):
        """Decode the range, resample and encode it into the stream (its clock starts at the range's start, as the
        overlay's frames do)."""
        resampler = av.AudioResampler(format=AUDIO_FORMAT, layout=AUDIO_LAYOUT, rate=self.sample_rate)
        written = 0
        with av.open(str(self.path)) as source, writing(path_written, 'video'):
            video_start = _first_video_time(source)
            stream = source.streams.audio[0]
            for frame in source.decode(stream):
                if frame.time is None:
                    continue
                time = frame.time - video_start
                if self.end is not None and time >= self.end:
                    break
                if time + frame.samples / frame.sample_rate <= self.start:
                    continue
                for resampled in resampler.resample(frame):
                    written = self._encode(container, resampled, written)
            for resampled in resampler.resample(None):
                written = self._encode(container, resampled, written)
            container.mux(self.stream.encode(None))

    def _encode(self, container, frame, written: int) -> int:
        frame.pts, frame.time_base = written, Fraction(1, self.sample_rate)
        container.mux(self.stream.encode(frame))
        return written + frame.samples


def _first_video_time(container) -> float:
    """The time of the video's first frame: the frames' clock, which the time selection counts from."""
    if not container.streams.video:
        return 0.0
    for frame in container.decode(container.streams.video[0]):
        if frame.time is not None:
            container.seek(0)
            return frame.time
    container.seek(0)
    return 0.0

"""The window rule: how a video longer than the network's window is cut into forward passes.

Windows of `window_size` frames start every `window_size - overlap` frames, as long as they fit in the video; when
the last one ends before the video does, one more window is taken from the end of the video. A frame's results come
from the first window that holds it (`first_output`), so frames two windows share keep the earlier window's results
and are, for the later window, what links it to the earlier one. A video shorter than a window is a single shorter
window. With `overlap` 0 this is the layout of non-overlapping windows the whole-video evaluation
(trainer.py's `eval_window_size`), the Refer-YouTube-VOS training windows and video inference have always used.

`WindowCutter` applies the same rule to frames as they arrive, without knowing the video's length: for a video of
T frames it gives the windows of `window_layout(T, ...)`, each as soon as its last frame has arrived.
"""
from collections import deque
from dataclasses import dataclass
from typing import Generic, List, Optional, Tuple, TypeVar

Item = TypeVar('Item')


@dataclass
class Window:
    start: int  # the window's frames are [start, end) of the selected frames
    end: int
    first_output: int  # frames [first_output, end) take their results from this window

    def to_dict(self):
        return {'frames': [self.start, self.end], 'output_frames': [self.first_output, self.end]}


def check_overlap(window_size: int, overlap: int):
    if not 0 <= overlap < window_size:
        raise ValueError(f'the window overlap must be 0 to {window_size - 1} frames (less than the window size '
                         f'{window_size}), got {overlap}')


def window_layout(num_frames: int, window_size: int, overlap: int = 0) -> List[Window]:
    """The windows of a video of `num_frames` frames (see the module's docstring)."""
    check_overlap(window_size, overlap)
    cutter, windows = WindowCutter(window_size, overlap), []
    for position in range(num_frames):
        window = cutter.add(position)
        if window is not None:
            windows.append(window[0])
    last = cutter.finish()
    return windows + ([last[0]] if last is not None else [])


class WindowCutter(Generic[Item]):
    """Cuts a stream of items (frames) into windows: `add(item)` returns `(window, its items)` when the item
    completes a window, `finish()` the last window, if any frames are still without results. Keeps the items of one
    window only."""

    def __init__(self, window_size: int, overlap: int = 0):
        check_overlap(window_size, overlap)
        self.window_size, self.stride = window_size, window_size - overlap
        self.recent: deque = deque(maxlen=window_size)
        self.count = 0  # items seen
        self.next_start = 0
        self.output_end = 0  # frames before this have their window

    def add(self, item: Item) -> Optional[Tuple[Window, List[Item]]]:
        self.recent.append(item)
        self.count += 1
        if self.count == self.next_start + self.window_size:
            window = Window(self.next_start, self.count, self.output_end)
            self.next_start += self.stride
            self.output_end = self.count
            return window, list(self.recent)
        return None

    def finish(self) -> Optional[Tuple[Window, List[Item]]]:
        if self.output_end == self.count:
            return None
        start = max(0, self.count - self.window_size)
        window = Window(start, self.count, self.output_end)
        self.output_end = self.count
        return window, list(self.recent)  # (the last window_size items, or all of them)

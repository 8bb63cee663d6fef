"""Which object query segments a text query, window by window, in a video longer than one window.

MTTR answers a text query with 50 object queries ("slots") per frame and a probability that each is the referred
object; within a window, the slots are tied to objects across frames (the network decodes them jointly), but slot
k of one window need not be the object of slot k of the next. The rules (`RULES`):

- `video`: one slot for the whole video, the one whose probability of "referred" averaged over every frame is
  highest (the Refer-YouTube-VOS post-processing applied to the whole video, as its evaluation does). Needs the
  whole video before the first mask: a second pass, or the mask factors kept on disk (`VideoSegmenter`).
- `window`: per window, the slot with the highest probability averaged over the window's frames (what the
  original's notebook did).
- `linked`: per window, linked by mask overlap: the chain of slots, one per window, that maximises the sum over
  windows of the slot's mean probability plus the sum over consecutive windows of the IoU of the two slots' masks
  on the frames the windows share (a Viterbi pass over the windows, kept to one step: `LinkedChoice`); the whole
  video decides, as for `video`.
- `causal`: the same score, decided window by window as frames arrive: the slot of the previous window is fixed,
  so a window's slot maximises its mean probability plus the IoU with the previous window's chosen masks on the
  shared frames (`CausalChoice`). What `--online` can do.

Masks overlap by their binary form at the network's mask resolution (logit > 0); two empty masks share nothing.
"""
from typing import List, Optional

import numpy as np
import torch

RULES = ('video', 'window', 'linked', 'causal')
CAUSAL_RULES = ('window', 'causal')  # they decide a window's slot when the window has run
# the defaults, for video files and for live sources: `window` had the highest J&F on long synthetic videos whose
# objects enter and leave (tools/compare_object_query_rules.py; the README's table), of all rules and of the causal
# ones; `video` keeps the results of this repository's inference before it
FILE_RULE, ONLINE_RULE = 'window', 'window'
LINK_WEIGHT = 1.0  # an IoU of 1 with the previous window counts as much as a probability of 1


class RunningMean:
    """The mean over frames of [T, N] float32 rows given a window at a time, to the bit what numpy's
    `rows.mean(axis=0)` gives for all rows at once (it adds the rows one after the other in float32, then divides
    by their number; tests/test_object_query_rules.py holds numpy to that), in N numbers of memory."""

    def __init__(self):
        self.sums: Optional[np.ndarray] = None
        self.count = 0

    def add(self, rows: np.ndarray):
        for row in np.asarray(rows, dtype=np.float32):
            self.sums = row.copy() if self.sums is None else np.add(self.sums, row, dtype=np.float32)
            self.count += 1

    def mean(self) -> np.ndarray:
        return self.sums / np.float32(self.count)


def mean_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """[N]: each slot's probability of "referred" averaged over the frames of `probabilities` [T, N]."""
    return probabilities.mean(axis=0)


def overlaps(previous: torch.Tensor, current: torch.Tensor) -> np.ndarray:
    """IoU of the masks of every previous slot with every current slot, over the frames two windows share:
    previous [T, P, h, w] and current [T, N, h, w] bool -> [P, N] (0 where both are empty)."""
    previous = previous.permute(1, 0, 2, 3).reshape(previous.shape[1], -1).float()  # [P, T*h*w]
    current = current.permute(1, 0, 2, 3).reshape(current.shape[1], -1).float()  # [N, T*h*w]
    intersection = previous @ current.T
    union = previous.sum(1, keepdim=True) + current.sum(1)[None] - intersection
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.zeros_like(union)).numpy()


class WholeVideoChoice:
    """`video`: the mean probability of every object query over every output frame, gathered as windows run
    (`RunningMean`: the choice falls as it always has, ties within float rounding included); `choose()` once all
    have."""

    def __init__(self):
        self.running = RunningMean()

    def add(self, probabilities: np.ndarray):
        """probabilities [T, N] of the frames a window outputs."""
        self.running.add(probabilities)

    def choose(self) -> int:
        return int(self.running.mean().argmax())


class CausalChoice:
    """`causal` (and, with no linking, `window`): decides each window's slot as soon as the window has run."""

    def __init__(self, link: bool = True):
        self.link = link
        self.previous_masks: Optional[torch.Tensor] = None  # the chosen slot's masks, [T_shared_next, 1, h, w]

    def choose(self, probabilities: np.ndarray, shared_masks: Optional[torch.Tensor]) -> int:
        """probabilities [T, N] over the window's frames; shared_masks [T_s, N, h, w] bool, every slot's masks on
        the frames the window shares with the previous one (None for the first window)."""
        scores = mean_probabilities(probabilities)
        if self.link and self.previous_masks is not None and shared_masks is not None:
            scores = scores + LINK_WEIGHT * overlaps(self.previous_masks[-len(shared_masks):], shared_masks)[0]
        return int(scores.argmax())

    def remember(self, chosen_masks_at_end: Optional[torch.Tensor]):
        """The chosen slot's masks [T_tail, 1, h, w] on the window's last frames, which the next window may share."""
        self.previous_masks = chosen_masks_at_end


class LinkedChoice:
    """`linked`: the Viterbi pass, one window at a time: `add` takes a window's mean probabilities [N] and the
    overlaps [N_prev, N] with the previous window; `choose()` traces the best chain back. Keeps per window only
    the best predecessor of each slot ([N] small integers)."""

    def __init__(self):
        self.best: Optional[np.ndarray] = None  # [N]: the best chain score ending in each slot
        self.back: List[np.ndarray] = []  # per window after the first: [N] the previous slot of each best chain

    def add(self, scores: np.ndarray, overlaps_with_previous: Optional[np.ndarray]):
        """`overlaps_with_previous` None: the window shares no frame with the previous one (nothing links them)."""
        if self.best is None:
            self.best = scores.astype(np.float64)
            return
        total = np.repeat(self.best[:, None], len(scores), axis=1)  # [N_prev, N]
        if overlaps_with_previous is not None:
            total = total + LINK_WEIGHT * overlaps_with_previous
        self.back.append(total.argmax(axis=0).astype(np.int16))
        self.best = total.max(axis=0) + scores

    def choose(self) -> List[int]:
        """The slot of each window, in order."""
        chain = [int(self.best.argmax())]
        for back in reversed(self.back):
            chain.append(int(back[chain[-1]]))
        return chain[::-1]

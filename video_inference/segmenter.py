"""MTTR on a whole video of any length, for any number of text queries, window by window: what inference.py,
demo.py and the Python API run.

The video is cut into windows (`models.windows`) and each window is one pass of the network: its frames are
encoded once (`MTTR.encode_video`) and the text queries decoded against that encoding, `query_batch` at a time
(`MTTR.decode_in_chunks`). `VideoSegmenter.segment` is a generator of `WindowResult`s: each window's output frames
with, per text query, their masks at the input's size, every object query's probability of "referred" and the
object query chosen (video_inference/choice.py). The memory and the disk it uses do not grow with the video's
length: only one window's frames and outputs are held at a time, and nothing is written to disk unless asked for.

- The causal rules (`window`, `causal`) and a forced object query decide a window as soon as it has run: one pass,
  and each window's masks come out as soon as its last frame is read (the online mode for live sources).
- The whole-video rules (`video`, `linked`) need every window before the first mask: a first pass gathers what
  the choice needs (per window a few numbers per object query), then a second pass gives the masks, by running
  the network again (`second_pass='network'`: twice the compute, nothing on disk) or by reading every object
  query's mask logits that the first pass kept in a scratch folder (`second_pass='scratch'`: one pass of the
  network, and a scratch folder of about 0.5 MB per frame and text query at 360p, the logits kept as their two
  factors). Both give the same masks.
"""
import contextlib
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from config import Config
from datasets.transforms import transforms_from_config
from models import build_trained_network
from models.postprocessing import ReferYoutubeVOSPostProcess
from models.windows import Window, WindowCutter, window_layout
from utils import UsageError, autocast, error_message, nested_tensor_from_videos_list, save_checkpoint
from video_inference.choice import (CAUSAL_RULES, RULES, CausalChoice, LinkedChoice, WholeVideoChoice,
                                    mean_probabilities, overlaps)

SECOND_PASSES = ('network', 'scratch')


def default_overlap(rule: str, window_size: int) -> int:
    """Frames shared by consecutive windows: none for `video` (the layout the whole-video evaluation uses), a
    quarter of the window for the rules that look at windows one by one (as the original's notebook: 6 of 24)."""
    return 0 if rule == 'video' else (window_size + 3) // 4 if window_size > 1 else 0


@dataclass
class WindowResult:
    """One window's results: its output frames (`window.first_output` to `window.end`) with their images, and per
    text query their masks, every object query's probability of "referred" and the object query chosen."""
    index: int
    window: Window
    frames: List[Tuple[object, Image.Image]]  # (frame description, image) of the output frames
    masks: List[np.ndarray]  # per text query: [T_out, H0, W0] uint8 0/1, at the input's size
    probabilities: List[np.ndarray]  # per text query: [T_out, N]
    object_queries: List[int]  # per text query
    frames_in: float  # time.monotonic() when the window's last frame had been read


class WindowOutputs:
    """One window's network outputs on the CPU, per text query: the probabilities of "referred" [T, N] and every
    object query's mask logits as their two factors, kernels [T, N, C] and features [T, C, h, w] (`MTTR.segment`:
    a sixth of the memory of 50 masks)."""

    def __init__(self, window: Window, probabilities, factors, resized_size, padded_size):
        self.window, self.probabilities, self.factors = window, probabilities, factors
        self.resized_size, self.padded_size = resized_size, padded_size

    def logits(self, query: int, frames: slice = slice(None), slots=slice(None)) -> torch.Tensor:
        """[T', n, h, w]: the mask logits of the text query's object queries `slots` in the window's `frames`.
        (Multiplied out for all object queries, then selected: the network's own `pred_masks`, to the bit.)"""
        kernels, features = self.factors[query]
        return torch.einsum('tnc,tchw->tnhw', kernels[frames], features[frames])[:, slots]

    def binary(self, query: int, frames: slice = slice(None), slots=slice(None)) -> torch.Tensor:
        return self.logits(query, frames, slots) > 0

    @property
    def shared(self) -> slice:
        """The frames the window shares with the windows before it."""
        return slice(0, self.window.first_output - self.window.start)

    @property
    def output(self) -> slice:
        return slice(self.window.first_output - self.window.start, None)


class VideoSegmenter:
    """A trained MTTR ready to segment videos. transform: frames -> `(video [T, 3, h, w], targets, query)` (the
    evaluation transforms); amp: a function returning the autocast context to run the network in."""

    def __init__(self, model, transform, device, query_batch: Optional[int] = None,
                 amp: Callable = contextlib.nullcontext):
        self.model, self.transform, self.device, self.query_batch, self.amp = model, transform, device, query_batch, amp
        self.postprocessor = ReferYoutubeVOSPostProcess()

    @classmethod
    def from_checkpoint(cls, config: Config, checkpoint_path, query_batch: Optional[int] = None) -> 'VideoSegmenter':
        """The network of `config` with the checkpoint's weights (read with weights_only=True), the evaluation
        transforms and the run's autocast; a checkpoint that does not fit raises a UsageError of one line."""
        try:
            model = build_trained_network(config, checkpoint_path)
        except (OSError, KeyError, ValueError, RuntimeError) as error:  # text encoder files, checkpoint contents
            raise UsageError(error_message(error)) from error
        device = torch.device(config.device)
        return cls(model, transforms_from_config('test', config), device, query_batch,
                   amp=lambda: autocast(config, device, training=False))

    def segment(self, frames: Iterable, queries: Sequence[str], window_size: int, rule: str = 'video',
                overlap: Optional[int] = None, object_query: Optional[int] = None, second_pass: str = 'network',
                scratch_dir: Optional[Path] = None, num_frames: Optional[int] = None,
                progress: Optional[Callable[[int, Optional[int]], None]] = None,
                progress_bar: bool = True) -> Iterator[WindowResult]:
        """Yields the results of every window in order. `frames` iterates `(frame description, PIL image)`; the
        whole-video rules iterate it twice (a file, not a live stream). `object_query` forces that object query
        for every text query and window. `second_pass`: see the module's docstring (the scratch folder is made in
        `scratch_dir` and deleted afterwards). `num_frames`, when known, gives the progress bar its length;
        `progress(windows done, windows in all or None)` follows the windows (the second pass's included), as does
        a tqdm bar unless `progress_bar` is false."""
        if rule not in RULES:
            raise ValueError(f'object query rule {rule!r}: expected one of {", ".join(RULES)}')
        if second_pass not in SECOND_PASSES:
            raise ValueError(f'second pass {second_pass!r}: expected one of {", ".join(SECOND_PASSES)}')
        overlap = default_overlap(rule, window_size) if overlap is None else overlap
        one_pass = object_query is not None or rule in CAUSAL_RULES
        total = None if num_frames is None else len(window_layout(num_frames, window_size, overlap)) * \
            (1 if one_pass else 2)
        with tqdm(total=total, desc='windows', unit='window', dynamic_ncols=True, disable=not progress_bar) as bar:
            def done():
                bar.update()
                if progress is not None:
                    progress(bar.n, total)

            if one_pass:
                yield from self._decide_as_windows_run(frames, queries, window_size, overlap, rule, object_query,
                                                       done)
                return
            if second_pass == 'network':
                chosen = self._first_pass(frames, queries, window_size, overlap, rule, None, done)
                yield from self._decided(frames, queries, window_size, overlap, chosen, done)
                return
            scratch = Path(tempfile.mkdtemp(prefix='.scratch-', dir=scratch_dir))  # (None: the system's)
            try:
                chosen = self._first_pass(frames, queries, window_size, overlap, rule, scratch, done)
                yield from self._from_scratch(frames, window_size, overlap, chosen, scratch, done)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)

    # --- the passes --------------------------------------------------------------------------------------------

    def _windows(self, frames, window_size, overlap):
        """(window, its (frame, image) items, when its last frame was read)."""
        cutter = WindowCutter(window_size, overlap)
        for item in frames:
            cut = cutter.add(item)
            if cut is not None:
                yield (*cut, time.monotonic())
        last = cutter.finish()
        if last is not None:
            yield (*last, time.monotonic())

    def _decide_as_windows_run(self, frames, queries, window_size, overlap, rule, object_query, done):
        choices = [CausalChoice(link=rule == 'causal') for _ in queries]
        for index, (window, items, frames_in) in enumerate(self._windows(frames, window_size, overlap)):
            outputs = self.run_window(window, [image for _, image in items], queries)
            chosen = []
            for q, choice in enumerate(choices):
                if object_query is not None:
                    chosen.append(object_query)
                    continue
                shared = outputs.binary(q, outputs.shared) if rule == 'causal' and outputs.shared.stop else None
                chosen.append(choice.choose(outputs.probabilities[q], shared))
                if rule == 'causal':
                    choice.remember(outputs.binary(q, slots=slice(chosen[-1], chosen[-1] + 1)))
            yield self._result(index, outputs, items, chosen, frames_in)
            done()

    def _first_pass(self, frames, queries, window_size, overlap, rule, scratch: Optional[Path],
                    done) -> List[List[int]]:
        """Per text query, the object query of each window, by a whole-video rule. `scratch`: a folder to keep
        every window's outputs in, for a second pass that does not run the network."""
        choices = [WholeVideoChoice() if rule == 'video' else LinkedChoice() for _ in queries]
        previous = [None] * len(queries)  # linked: every object query's masks of the previous window
        count = 0
        for index, (window, items, _) in enumerate(self._windows(frames, window_size, overlap)):
            outputs = self.run_window(window, [image for _, image in items], queries)
            if scratch is not None:
                save_checkpoint({'probabilities': [torch.from_numpy(p) for p in outputs.probabilities],
                                 'factors': outputs.factors, 'resized_size': list(outputs.resized_size),
                                 'padded_size': list(outputs.padded_size)}, scratch / f'window{index}.pt',
                                'scratch file')
            for q, choice in enumerate(choices):
                if rule == 'video':
                    choice.add(outputs.probabilities[q][outputs.output])
                else:
                    links = overlaps(previous[q][-outputs.shared.stop:], outputs.binary(q, outputs.shared)) \
                        if outputs.shared.stop else None
                    choice.add(mean_probabilities(outputs.probabilities[q]), links)
                    previous[q] = outputs.binary(q)
            count = index + 1
            done()
        return [[choice.choose()] * count if rule == 'video' else choice.choose() for choice in choices]

    def _decided(self, frames, queries, window_size, overlap, chosen, done):
        for index, (window, items, frames_in) in enumerate(self._windows(frames, window_size, overlap)):
            outputs = self.run_window(window, [image for _, image in items], queries)
            yield self._result(index, outputs, items, [slots[index] for slots in chosen], frames_in)
            done()

    def _from_scratch(self, frames, window_size, overlap, chosen, scratch, done):
        """The second pass over the frames alone: the network's outputs come from the scratch folder."""
        for index, (window, items, frames_in) in enumerate(self._windows(frames, window_size, overlap)):
            saved = torch.load(scratch / f'window{index}.pt', weights_only=True)
            outputs = WindowOutputs(window, [p.numpy() for p in saved['probabilities']], saved['factors'],
                                    tuple(saved['resized_size']), tuple(saved['padded_size']))
            yield self._result(index, outputs, items, [slots[index] for slots in chosen], frames_in)
            done()

    # --- one window --------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def run_window(self, window: Window, images: List[Image.Image], queries: Sequence[str]) -> WindowOutputs:
        video, _, _ = self.transform(images, [None] * len(images), '')  # [T, 3, h, w]
        samples = nested_tensor_from_videos_list([video]).to(self.device)  # tensors [T, 1, 3, h, w]
        probabilities, factors = [None] * len(queries), [None] * len(queries)
        with self.amp():
            features = self.model.encode_video(samples, torch.arange(len(images), device=self.device))
            chunks = self.model.decode_in_chunks(features, queries, query_batch=self.query_batch, factored_masks=True)
            for chunk, outputs in chunks:
                for position, q in enumerate(range(len(queries))[chunk]):
                    probabilities[q] = outputs['pred_is_referred'][:, position].cpu().softmax(dim=-1)[..., 0].numpy()
                    factors[q] = (outputs['mask_kernels'][:, position].cpu(),  # [T, N, C]
                                  outputs['mask_features'][:, position].cpu())  # [T, C, h/4, w/4]
        return WindowOutputs(window, probabilities, factors, tuple(video.shape[-2:]),
                             tuple(samples.tensors.shape[-2:]))

    def _result(self, index, outputs: WindowOutputs, items, chosen, frames_in) -> WindowResult:
        """The chosen object queries' masks of the window's output frames, at the input's size."""
        output_items = items[outputs.output]
        metadata = {'resized_frame_size': outputs.resized_size,
                    'original_frame_size': (output_items[0][1].height, output_items[0][1].width)}
        masks = []
        for q, slot in enumerate(chosen):
            logits = outputs.logits(q, outputs.output, slice(slot, slot + 1))  # [T_out, 1, h, w]
            # the Refer-YouTube-VOS post-processing restricted to the chosen object query (B = N = 1)
            alone = {'pred_masks': logits[:, None], 'pred_is_referred': torch.zeros((len(logits), 1, 1, 2))}
            (prediction,) = self.postprocessor(alone, [metadata], outputs.padded_size)
            masks.append(prediction['pred_masks'][:, 0].numpy())
        probabilities = [p[outputs.output] for p in outputs.probabilities]
        return WindowResult(index, outputs.window, output_items, masks, probabilities, list(chosen), frames_in)

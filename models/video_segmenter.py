"""MTTR on a whole video of any length, for any number of text queries: what inference.py and demo.py run.

The video is cut into windows (`datasets.video.window_layout`) and each window is one pass of the network: its
frames are encoded once (`MTTR.encode_video`) and the text queries decoded against that encoding, `query_batch`
at a time (`MTTR.decode_in_chunks`), so a second query costs the decoder only, and the memory stays that of one
window and `query_batch` queries, whatever their number.

One object query is chosen per text query for the whole video: the one whose probability of "referred", averaged
over every frame of every window, is highest (the Refer-YouTube-VOS post-processing applied to the whole video,
as its evaluation does). The segmented object therefore does not switch between object queries at window
borders. The choice is made after the last window, so until then the mask logits of every object query wait in a
scratch folder on disk.

`load_inference_config` and `VideoSegmenter.from_checkpoint` load a trained checkpoint as both front ends do.
"""
import contextlib
from collections import deque
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from config import Config, load_config
from datasets.transforms import transforms_from_config
from datasets.video import Window, window_layout
from models import build_trained_network
from models.postprocessing import ReferYoutubeVOSPostProcess
from utils import UsageError, autocast, error_message, nested_tensor_from_videos_list


def choose_object_query(referred_probabilities: np.ndarray) -> int:
    """The object query whose probability of "referred" averaged over every frame of the video is highest
    (what the Refer-YouTube-VOS post-processing does within one window). referred_probabilities: [T, N]."""
    return int(referred_probabilities.mean(axis=0).argmax())


class VideoSegmentation:
    """The results of one video: per text query, the probabilities of "referred" of every object query in every
    frame, the chosen object query, and (from the scratch folder) the masks of any window."""

    def __init__(self, queries: Sequence[str], windows: List[Window], scratch_dir: Path):
        self.queries, self.windows, self.scratch_dir = list(queries), windows, Path(scratch_dir)
        self.is_referred_logits = [[] for _ in self.queries]  # per query, per window: [T_out, N, 2]
        self.window_sizes = []  # per window: (resized (h, w), padded (h, w))
        self.object_queries: List[int] = []  # per query, once every window has run
        self.postprocessor = ReferYoutubeVOSPostProcess()

    def referred_probabilities(self, query_index: int) -> np.ndarray:
        """[T, N]: per frame, each object query's probability of "referred"."""
        logits = torch.cat(self.is_referred_logits[query_index])
        return logits.softmax(dim=-1)[..., 0].numpy()

    def masks(self, query_index: int, window_index: int, original_size) -> np.ndarray:
        """[T_out, H0, W0] uint8 0/1 masks of the query's chosen object query in one window's output frames,
        through the Refer-YouTube-VOS post-processing restricted to that object query."""
        object_query = self.object_queries[query_index]
        mask_logits = np.load(self.masks_path(query_index, window_index), mmap_mode='r')
        mask_logits = torch.from_numpy(np.array(mask_logits[:, object_query:object_query + 1]))
        is_referred = self.is_referred_logits[query_index][window_index][:, object_query:object_query + 1]
        resized_size, padded_size = self.window_sizes[window_index]
        outputs = {'pred_masks': mask_logits[:, None], 'pred_is_referred': is_referred[:, None]}  # B = N = 1
        metadata = {'resized_frame_size': resized_size, 'original_frame_size': original_size}
        (prediction,) = self.postprocessor(outputs, [metadata], padded_size)
        return prediction['pred_masks'][:, 0].numpy()

    def frame_masks(self, frames, original_size) -> Iterator[Tuple[int, object, Image.Image, int, List[np.ndarray]]]:
        """A second pass over the frames: yields `(position, frame, image, window index, [mask [H0, W0] uint8 0/1
        per text query])` for every frame, in order."""
        window_of_frame = [w for w, window in enumerate(self.windows) for _ in range(window.first_output, window.end)]
        window_masks, loaded_window = None, None
        for position, (frame, image) in enumerate(frames):
            window_index = window_of_frame[position]
            if window_index != loaded_window:
                window_masks = [self.masks(q, window_index, original_size) for q in range(len(self.queries))]
                loaded_window = window_index
            offset = position - self.windows[window_index].first_output
            yield position, frame, image, window_index, [masks[offset] for masks in window_masks]

    def masks_path(self, query_index: int, window_index: int) -> Path:
        return self.scratch_dir / f'query{query_index}_window{window_index}.npy'


class VideoSegmenter:
    """A trained MTTR ready to segment videos. transform: frames -> `(video [T, 3, h, w], targets, query)` (the
    evaluation transforms); amp: a function returning the autocast context to run the network in."""

    def __init__(self, model, transform, device, query_batch: Optional[int] = None,
                 amp: Callable = contextlib.nullcontext):
        self.model, self.transform, self.device, self.query_batch, self.amp = model, transform, device, query_batch, amp

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

    def segment(self, frames, queries: Sequence[str], window_size: int, scratch_dir: Path,
                object_query: Optional[int] = None,
                progress: Optional[Callable[[int, int], None]] = None) -> VideoSegmentation:
        """One pass over `frames` (`.frames`: the list of selected frames; iterating gives `(frame, PIL image)`),
        running each window as soon as its last frame is read, so only the frames of one window are in memory.
        `object_query` forces that object query for every text query. A tqdm bar counts the windows, and
        `progress(done, total)` is called after each one (e.g. a web page's progress bar)."""
        windows = window_layout(len(frames.frames), window_size)
        result = VideoSegmentation(queries, windows, scratch_dir)
        recent = deque(maxlen=max(window.end - window.start for window in windows))
        window_iter = iter(windows)
        window = next(window_iter)
        with tqdm(total=len(windows), desc='windows', unit='window', dynamic_ncols=True) as bar:
            for position, (_, image) in enumerate(frames):
                recent.append(image)
                if position + 1 == window.end:
                    self._run_window(result, window, list(recent)[-(window.end - window.start):])
                    bar.update()
                    if progress is not None:
                        progress(bar.n, len(windows))
                    window = next(window_iter, None)
                    if window is None:
                        break
        result.object_queries = [object_query if object_query is not None
                                 else choose_object_query(result.referred_probabilities(q))
                                 for q in range(len(result.queries))]
        return result

    @torch.inference_mode()
    def _run_window(self, result: VideoSegmentation, window: Window, images: List[Image.Image]):
        video, _, _ = self.transform(images, [None] * len(images), '')  # [T, 3, h, w]
        samples = nested_tensor_from_videos_list([video]).to(self.device)  # tensors [T, 1, 3, h, w]
        first = window.first_output - window.start
        window_index = len(result.window_sizes)
        with self.amp():
            features = self.model.encode_video(samples, torch.arange(len(images), device=self.device))
            chunks = self.model.decode_in_chunks(features, result.queries, query_batch=self.query_batch)
            for chunk, outputs in chunks:
                for position, query_index in enumerate(range(len(result.queries))[chunk]):
                    result.is_referred_logits[query_index].append(outputs['pred_is_referred'][first:, position].cpu())
                    np.save(result.masks_path(query_index, window_index),
                            outputs['pred_masks'][first:, position].cpu().numpy())  # [T_out, N, h/4, w/4]
        result.window_sizes.append((tuple(video.shape[-2:]), tuple(samples.tensors.shape[-2:])))


def load_inference_config(config_path, checkpoint_path, overrides: Sequence[str] = (), cpu: bool = False,
                          **flags) -> Config:
    """The config of video inference with a trained checkpoint (inference.py, demo.py): the YAML file < `flags`
    < `overrides` ('KEY=VALUE'), in eval mode, without reading pretrained backbone or text-encoder weights (the
    checkpoint holds them). Checked before any frame is decoded or any weight is read: a problem raises a
    UsageError of one line. The synthetic config's tokenizer is written with the synthetic data, generated here
    on first use."""
    try:
        config = load_config(config_path, list(overrides), running_mode='eval', checkpoint_path=str(checkpoint_path),
                             text_encoder_pretrained=False, backbone_pretrained=False,
                             device='cpu' if cpu else 'cuda', **flags)
    except (FileNotFoundError, KeyError, TypeError, ValueError) as error:
        raise UsageError(error_message(error)) from error
    if config.device.startswith('cuda') and not torch.cuda.is_available():
        raise UsageError('CUDA is not available on this machine; run on the CPU with --cpu')
    if config.synthetic_dataset and not config.text_encoder_type:
        from datasets.synthetic import ensure_synthetic_dataset
        try:
            ensure_synthetic_dataset(config)
        except (FileNotFoundError, ValueError) as error:
            raise UsageError(error_message(error)) from error
    if not Path(checkpoint_path).is_file():
        raise UsageError(f'checkpoint not found: {checkpoint_path}')
    return config


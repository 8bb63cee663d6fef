"""Transforms shared by the datasets (of frames, masks and text queries), and the collator that batches their
samples.

A sample is `(frames, targets, text_query)`: `frames` a list of T PIL images, `targets` a list of T entries
(a dict for an annotated frame, None otherwise). Target dicts carry `masks` `[N, H, W]`, `size` and optionally
`area`; the transforms keep them in step with the frames.
"""
import random
import re
from itertools import zip_longest
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image

from utils import nested_tensor_from_videos_list

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# `left`/`right` at the start of a word: swaps "leftmost" too, but not "bright" or "upright".
_LEFT_RIGHT = re.compile(r'\b(left|right)')


def normalize_query(text_query: str) -> str:
    """Lower case, single spaces: the form every dataset gives its text queries."""
    return ' '.join(text_query.lower().split())


def swap_left_right(text_query: str) -> str:
    return _LEFT_RIGHT.sub(lambda m: 'right' if m.group(1) == 'left' else 'left', text_query)


def resized_size(image_size: Tuple[int, int], size: int, max_size: Optional[int]) -> Tuple[int, int]:
    """DETR's rule: `(h, w)` with the short side `size` and the long side at most `max_size`; image_size is (w, h)."""
    w, h = image_size
    if max_size is not None:
        min_original_size, max_original_size = float(min(w, h)), float(max(w, h))
        if max_original_size / min_original_size * size > max_size:
            size = int(round(max_size * min_original_size / max_original_size))
    if (w <= h and w == size) or (h <= w and h == size):
        return h, w
    if w < h:
        return int(size * h / w), size
    return size, int(size * w / h)


def hflip(frames: List[Image.Image], targets: list, text_query: str):
    frames = [TF.hflip(frame) for frame in frames]
    for target in targets:
        if target is not None:
            target['masks'] = target['masks'].flip(-1)
    return frames, targets, swap_left_right(text_query)


def resize(frames: List[Image.Image], targets: list, size: int, max_size: Optional[int]):
    new_h, new_w = resized_size(frames[0].size, size, max_size)
    old_w, old_h = frames[0].size
    frames = [TF.resize(frame, [new_h, new_w]) for frame in frames]
    for target in targets:
        if target is None:
            continue
        target['size'] = torch.tensor([new_h, new_w])
        if 'area' in target:
            target['area'] = target['area'] * (new_w / old_w * new_h / old_h)
        masks = F.interpolate(target['masks'][:, None].float(), (new_h, new_w), mode='nearest')[:, 0]  # [N, h, w]
        target['masks'] = masks > 0.5
    return frames, targets


class VideoTransforms:
    """Random horizontal flip (with left/right swapped in the query), resize, to tensor, ImageNet normalisation.

    Returns `(frames [T, 3, H, W] float, targets, text_query)`.
    """

    def __init__(self, short_size: Optional[int], max_size: Optional[int], horizontal_flip: bool):
        self.short_size = short_size  # None: keep the original size
        self.max_size = max_size
        self.horizontal_flip = horizontal_flip

    def __call__(self, frames: List[Image.Image], targets: list, text_query: str):
        if self.horizontal_flip and random.random() < 0.5:
            frames, targets, text_query = hflip(frames, targets, text_query)
        if self.short_size is not None:
            frames, targets = resize(frames, targets, self.short_size, self.max_size)
        return to_normalized_video(frames), targets, text_query


def to_normalized_video(frames: List[Image.Image]) -> torch.Tensor:
    """RGB frames -> `[T, 3, H, W]` float: the numbers of torchvision's to_tensor + normalize per frame, at once."""
    video = torch.from_numpy(np.stack([np.asarray(frame) for frame in frames]))  # [T, H, W, 3] uint8
    video = video.permute(0, 3, 1, 2).contiguous().float().div_(255)
    return video.sub_(torch.tensor(IMAGENET_MEAN)[:, None, None]).div_(torch.tensor(IMAGENET_STD)[:, None, None])


def build_transforms(image_set: str, *, resize_frames: bool, horizontal_flip: bool, train_short_size: int,
                     train_max_size: int, eval_short_size: int, eval_max_size: int) -> VideoTransforms:
    """Training: flip (when enabled) + resize to the train sizes; evaluation: resize to the eval sizes. Without
    `resize_frames` frames keep their size (as the original's resize_and_crop_augmentations: false, which
    never cropped)."""
    train = image_set == 'train'
    short_size, max_size = (train_short_size, train_max_size) if train else (eval_short_size, eval_max_size)
    if not resize_frames:
        short_size = max_size = None
    return VideoTransforms(short_size, max_size, horizontal_flip=train and horizontal_flip)


def transforms_from_config(image_set: str, config) -> VideoTransforms:
    """`build_transforms` with the run config's values."""
    return build_transforms(image_set, resize_frames=config.resize_frames,
                            horizontal_flip=config.horizontal_flip_augmentations,
                            train_short_size=config.train_short_size, train_max_size=config.train_max_size,
                            eval_short_size=config.eval_short_size, eval_max_size=config.eval_max_size)


def collate_videos(batch, all_frames: bool = False):
    """Batch samples `(video [T, 3, H, W], targets, text_query[, metadata])`, or samples that carry several
    queries of one video, `(video, [targets per query], [text queries], [metadata per query])`, whose video is
    then encoded once for all of them.

    Returns a dict:
      'samples':         NestedTensor, tensors `[T, B, 3, H, W]` padded with zeros to the largest T, H and W,
                         mask `[T, B, H, W]` True on padding;
      'text_queries':    a tuple of the Q queries of the batch (Q = B with one query per sample);
      'query_videos':    LongTensor `[Q]`, the video (0..B-1) of each query;
      'targets':         a list over the T frames of tuples over the Q queries (None where a frame has no
                         annotation, or where a shorter video was padded in time);
      'valid_indices':   LongTensor of the frames the network's outputs are wanted for: those annotated for
                         every query, or, with `all_frames`, every frame;
      'videos_metadata': (when the samples carry metadata) a tuple of Q dicts.
    """
    videos, text_queries, query_videos, targets, metadata = [], [], [], [], []
    for b, (video, item_targets, item_queries, *item_metadata) in enumerate(batch):
        if isinstance(item_queries, str):  # one query
            item_targets, item_queries, item_metadata = [item_targets], [item_queries], item_metadata
        else:
            item_metadata = item_metadata[0] if item_metadata else []
        videos.append(video)
        text_queries += item_queries
        query_videos += [b] * len(item_queries)
        targets += item_targets
        metadata += item_metadata
    targets = list(zip_longest(*targets))
    num_frames = len(targets)
    valid = range(num_frames) if all_frames else [i for i, frame in enumerate(targets) if None not in frame]
    batch_dict = {'samples': nested_tensor_from_videos_list(videos),
                  'text_queries': tuple(text_queries),
                  'query_videos': torch.tensor(query_videos, dtype=torch.long),
                  'targets': targets,
                  'valid_indices': torch.tensor(list(valid), dtype=torch.long)}
    if metadata:
        batch_dict['videos_metadata'] = tuple(metadata)
    return batch_dict


def collate_whole_videos(batch):
    """`collate_videos` with every frame wanted (evaluation on whole videos without targets)."""
    return collate_videos(batch, all_frames=True)

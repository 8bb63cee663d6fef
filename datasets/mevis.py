"""MeViS: videos with motion expressions, each referring to one or more objects (or, in version 2, to none).

Ground truth (train and valid_u; valid is scored by the server) is `mask_dict.json`: one COCO RLE per frame and
annotated object (`anno_id`), `null` where the object is absent. An expression's target in a frame is the union of
its `anno_id`s' masks (`target_masks`). Training samples are windows of `window_size` frames per expression, as
for Refer-YouTube-VOS (`expression_windows`). Scores are kept per expression under `<video>_<exp_id>`
(`metrics.mevis_expression_scores`), never under the text: texts repeat.
"""
import json
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from pycocotools import mask as coco_mask

from .a2d_sentences import normalize_query
from .files import check_row_count
from .refer_youtube_vos import read_meta_expressions as read_expressions_json
from .refer_youtube_vos import windows_of

LAYOUT = """<dataset_path>/
├── train/
│   ├── JPEGImages/<video>/<frame>.jpg
│   ├── meta_expressions.json      ({"videos": {video: {"frames": [frame names],
│   │                                 "expressions": {exp_id: {"exp", "obj_id": [..], "anno_id": [..]}}}}})
│   └── mask_dict.json             ({anno_id: [COCO RLE {"size": [h, w], "counts"} or null, one per frame]})
├── valid_u/                       (as train)
└── valid/
    ├── JPEGImages/<video>/<frame>.jpg
    └── meta_expressions.json      (no obj_id / anno_id: scored by the server)"""

SPLITS = ('train', 'valid_u', 'valid')
SPLITS_WITH_MASKS = ('train', 'valid_u')
# (videos, expressions) of the full splits, version 1 (2023) and version 2 (2025, which adds no-target
# expressions); other counts only trigger a warning.
FULL_COUNTS = {'train': (1662, 23051), 'valid_u': (50, 793), 'valid': (140, 2236)}
FULL_EXPRESSIONS_V2 = {'train': 27502, 'valid_u': 907, 'valid': 2523}


def read_meta_expressions(path: Path, split: str) -> Dict[str, dict]:
    """video -> {"frames": [frame names], "expressions": {exp_id: {"exp", "obj_id", "anno_id"}}} of one split.

    Texts are normalised (lower case, single spaces). In train and valid_u `anno_id` (and `obj_id`, when given)
    must be lists; `anno_id` becomes a list of strings (the keys of mask_dict.json) and may be empty (a
    version-2 no-target expression). The valid split has neither.
    """
    if split not in SPLITS:
        raise ValueError(f'mevis: split must be one of {SPLITS}, got {split!r}')
    videos = read_expressions_json(path)
    normalised = {}
    for video_id, video in videos.items():
        expressions = {}
        for exp_id, expression in video['expressions'].items():
            if 'exp' not in expression:
                raise ValueError(f'{path}: expression {exp_id} of video {video_id} has no "exp"')
            entry = {'exp': normalize_query(expression['exp'])}
            if split in SPLITS_WITH_MASKS:
                anno_ids = expression.get('anno_id')
                obj_ids = expression.get('obj_id', [])
                if not isinstance(anno_ids, list) or not isinstance(obj_ids, list):
                    raise ValueError(f'{path}: expression {exp_id} of video {video_id} needs "anno_id" (and '
                                     f'"obj_id") lists, got anno_id={anno_ids!r}, obj_id={obj_ids!r}')
                entry['obj_id'] = [int(x) for x in obj_ids]
                entry['anno_id'] = [str(x) for x in anno_ids]
            expressions[exp_id] = entry
        normalised[video_id] = {'frames': list(video['frames']), 'expressions': expressions}
    num_expressions = sum(len(video['expressions']) for video in normalised.values())
    full_videos, full_expressions = FULL_COUNTS[split]
    check_row_count(path, len(normalised), full_videos, 'videos')
    if num_expressions != FULL_EXPRESSIONS_V2[split]:
        check_row_count(path, num_expressions, full_expressions, 'expressions')
    return normalised


def read_mask_dict(path: Path) -> Dict[str, list]:
    """anno_id -> [COCO RLE or None per frame], from `mask_dict.json`."""
    try:
        with open(path) as f:
            mask_dict = json.load(f)
    except ValueError as e:
        raise ValueError(f'{path}: expected JSON {{anno_id: [RLE or null per frame]}}: {e!r}') from e
    if not isinstance(mask_dict, dict):
        raise ValueError(f'{path}: expected JSON {{anno_id: [RLE or null per frame]}}, got {type(mask_dict).__name__}')
    return mask_dict


def _object_rles(mask_dict: Mapping[str, list], anno_id: str, num_frames: int) -> list:
    if anno_id not in mask_dict:
        raise ValueError(f'anno_id {anno_id} is not in mask_dict.json')
    rles = mask_dict[anno_id]
    if len(rles) != num_frames:
        raise ValueError(f'anno_id {anno_id} has {len(rles)} masks in mask_dict.json, its video {num_frames} frames')
    return rles


def target_masks(mask_dict: Mapping[str, list], anno_ids: Sequence[str], num_frames: int,
                 frame_size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """`[T, H, W]` bool: an expression's target per frame, the union of its `anno_ids`' masks (`null` = absent).

    The frame size comes from the RLEs' `size`; `frame_size` (h, w) is needed only when every entry is null (or
    there are no anno_ids), and must agree with the RLEs when given.
    """
    sizes = {tuple(rle['size']) for anno_id in anno_ids
             for rle in _object_rles(mask_dict, str(anno_id), num_frames) if rle is not None}
    if frame_size is not None:
        sizes.add(tuple(frame_size))
    if len(sizes) != 1:
        raise ValueError(f'anno_ids {list(anno_ids)}: ' + (f'masks of different sizes {sorted(sizes)}' if sizes else
                         'no mask in any frame; give the frame size (frame_size)'))
    height, width = sizes.pop()
    masks = np.zeros((num_frames, height, width), dtype=bool)
    for anno_id in anno_ids:
        for t, rle in enumerate(_object_rles(mask_dict, str(anno_id), num_frames)):
            if rle is not None:
                masks[t] |= coco_mask.decode(rle).astype(bool)
    return masks


def expression_windows(frames: List[str], anno_ids: Sequence[str], mask_dict: Mapping[str, list],
                       window_size: int) -> Tuple[List[List[str]], int]:
    """The training windows of one expression and the number of windows left out: `windows_of` the sorted frames
    (`mask_dict` entries are aligned with `frames` as listed), without the windows in which the target is empty
    in every frame."""
    present = np.zeros(len(frames), dtype=bool)
    for anno_id in anno_ids:
        for t, rle in enumerate(_object_rles(mask_dict, str(anno_id), len(frames))):
            present[t] |= rle is not None and coco_mask.area(rle) > 0
    position = {frame: t for t, frame in enumerate(frames)}
    windows, skipped = [], 0
    for window in windows_of(sorted(frames), window_size):
        if present[[position[frame] for frame in window]].any():
            windows.append(window)
        else:
            skipped += 1
    return windows, skipped


def train_samples(videos: Mapping[str, dict], mask_dict: Mapping[str, list],
                  window_size: int) -> Tuple[List[list], int]:
    """`[video, window, exp_id, anno_ids, text]` for every kept window of every expression (`expression_windows`),
    and the number of windows left out."""
    samples, skipped = [], 0
    for video_id, video in videos.items():
        for exp_id, expression in video['expressions'].items():
            windows, expression_skipped = expression_windows(video['frames'], expression['anno_id'], mask_dict,
                                                             window_size)
            skipped += expression_skipped
            samples.extend([video_id, window, exp_id, expression['anno_id'], expression['exp']] for window in windows)
    return samples, skipped

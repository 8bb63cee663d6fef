"""MeViS: videos with motion expressions, each referring to one or more objects (or, in version 2, to none).

Ground truth (train and valid_u; valid is scored by the server) is `mask_dict.json`: one COCO RLE per frame and
annotated object (`anno_id`), `null` where the object is absent. An expression's target in a frame is the union of
its `anno_id`s' masks (`target_masks`). Training samples are windows of `window_size` frames per expression, as
for Refer-YouTube-VOS (`expression_windows`). Scores are kept per expression under `<video>_<exp_id>`
(`metrics.mevis_expression_scores`), never under the text: texts repeat.

`MeViSDataset` trains on `train` and evaluates the split of the config key `mevis_eval_split`: `valid_u`, scored
here (`MeViSEvaluator`), or `valid`, whose predictions go to the server as a zip with the video folders at its
root (`MeViSSubmissionEvaluator`, `check_submission_zip`). `mask_dict.json` is read once and split into one small
file per video under `cache_dir`, so a training item reads only its video's masks.
"""
import io
import warnings
import zipfile
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as coco_mask
from tqdm import tqdm

from metrics import mevis_expression_scores, mevis_summary
from models.postprocessing import ReferYoutubeVOSPostProcess
from utils import all_gather_lists, is_main_process, write_json, writing
from .evaluator import Evaluator
from .files import (SubsetWarning, cache_path, check_row_count, file_digest, load_or_build_json, read_json,
                    require_dataset_root, require_path, stat_fingerprint)
from .submission import SubmissionCheck, expected_mask_names, mask_problem, write_submission_zip
from .transforms import VideoTransforms, collate_videos, collate_whole_videos, normalize_query
from .video_expressions import VideoExpressionsDataset, predicted_masks, read_frame, windows_of, write_expression_masks
from .video_expressions import read_meta_expressions as read_expressions_json

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
MASK_DICT_FORM = 'JSON {anno_id: [RLE or null per frame]}'


def read_meta_expressions(path: Path, split: str) -> Dict[str, dict]:
    """video -> {"frames": [frame names], "expressions": {exp_id: {"exp", "obj_id", "anno_id"}}} of one split.

    Texts are normalised (lower case, single spaces). In train and valid_u `anno_id` (and `obj_id`, when given)
    must be lists of integers (anno_ids may be their strings); `anno_id` becomes a list of strings (the keys of
    mask_dict.json) and may be empty (a version-2 no-target expression). The valid split has neither. What does
    not have this form is an error naming the file, the video and the expression.
    """
    if split not in SPLITS:
        raise ValueError(f'mevis: split must be one of {SPLITS}, got {split!r}')
    videos = read_expressions_json(path)
    normalised = {}
    for video_id, video in videos.items():
        expressions = {}
        for exp_id, expression in video['expressions'].items():
            entry = {'exp': normalize_query(expression['exp'])}
            if split in SPLITS_WITH_MASKS:
                entry.update(_object_lists(expression, path, video_id, exp_id))
            expressions[exp_id] = entry
        normalised[video_id] = {'frames': list(video['frames']), 'expressions': expressions}
    num_expressions = sum(len(video['expressions']) for video in normalised.values())
    full_videos, full_expressions = FULL_COUNTS[split]
    check_row_count(path, len(normalised), full_videos, 'videos')
    if num_expressions != FULL_EXPRESSIONS_V2[split]:
        check_row_count(path, num_expressions, full_expressions, 'expressions')
    return normalised


def _object_lists(expression: dict, path: Path, video_id: str, exp_id: str) -> dict:
    """`{'obj_id': [int], 'anno_id': [str]}` of a train or valid_u expression (anno_ids are the keys of
    mask_dict.json), or an error naming the file, the video and the expression."""
    anno_ids = expression.get('anno_id')
    obj_ids = expression.get('obj_id', [])
    if not isinstance(anno_ids, list) or not isinstance(obj_ids, list):
        raise ValueError(f'{path}: expression {exp_id} of video {video_id} needs "anno_id" (and "obj_id") lists, '
                         f'got anno_id={anno_ids!r}, obj_id={obj_ids!r}')
    for key, values, kinds, expected in (('obj_id', obj_ids, (int,), 'integers'),
                                         ('anno_id', anno_ids, (int, str), 'integers (or their strings)')):
        wrong = [value for value in values if isinstance(value, bool) or not isinstance(value, kinds)]
        if wrong:
            raise ValueError(f'{path}: expression {exp_id} of video {video_id}: "{key}" holds {wrong[0]!r}; '
                             f'expected a list of {expected}')
    return {'obj_id': list(obj_ids), 'anno_id': [str(x) for x in anno_ids]}


def read_mask_dict(path: Path) -> Dict[str, list]:
    """anno_id -> [COCO RLE or None per frame], from `mask_dict.json`."""
    mask_dict = read_json(path, MASK_DICT_FORM)
    if not isinstance(mask_dict, dict):
        raise ValueError(f'{path}: expected {MASK_DICT_FORM}, got {type(mask_dict).__name__}')
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


def expression_target(video_masks: Mapping[str, list], video_frames: Sequence[str], anno_ids: Sequence[str],
                      frame_names: Sequence[str], frame_size: Tuple[int, int]) -> np.ndarray:
    """`[T, H, W]` bool: `target_masks` of the frames `frame_names` (in that order) of a video whose mask_dict
    entries `video_masks` are aligned with `video_frames`."""
    anno_ids = [str(anno_id) for anno_id in anno_ids]
    missing = [anno_id for anno_id in anno_ids if anno_id not in video_masks]
    if missing:
        raise ValueError(f'anno_id {missing[0]} is not in mask_dict.json')
    position = {frame: t for t, frame in enumerate(video_frames)}
    selected = {anno_id: [video_masks[anno_id][position[frame]] for frame in frame_names] for anno_id in anno_ids}
    return target_masks(selected, anno_ids, len(frame_names), frame_size)


def split_mask_dict(mask_dict_path: Path, videos: Mapping[str, dict], out_dir: Path) -> List[str]:
    """Write `<out_dir>/<video>.json`, `{anno_id: [RLE or null per frame]}` with the anno_ids of the video's
    expressions, for every video of `videos` (`read_meta_expressions`); returns the video ids."""
    mask_dict = read_mask_dict(mask_dict_path)
    with writing(out_dir, 'MeViS mask folder'):
        out_dir.mkdir(parents=True, exist_ok=True)
    for video_id, video in tqdm(videos.items(), desc='MeViS masks per video', disable=not is_main_process()):
        anno_ids = sorted({anno_id for expression in video['expressions'].values()
                           for anno_id in expression['anno_id']})
        try:
            video_masks = {anno_id: _object_rles(mask_dict, anno_id, len(video['frames'])) for anno_id in anno_ids}
        except ValueError as e:
            raise ValueError(f'{mask_dict_path}: video {video_id}: {e}') from e
        # (a full disk leaves the files written before whole and the index unwritten: the next run splits again)
        video_path = out_dir / f'{video_id}.json'
        write_json(video_path, video_masks, 'MeViS mask file')
    return list(videos)


# --------------------------------------------------------------------------------------------------------------
# loader

class MeViSDataset(VideoExpressionsDataset):
    """Training items: `(frames [T, 3, H, W], targets, text_query)`, a target dict per frame whose instances are
    the expression's target (the union of its objects, `referred_instance_idx` 0) and each other annotated object
    of the video that is visible in the window. Evaluation items: a whole video with all its expressions,
    `(frames, [[None] * T per expression], [text queries], [metadata per expression])` (see
    `transforms.collate_videos`), so the video is encoded once."""

    def __init__(self, image_set: str, dataset_path: str, window_size: int, transforms: VideoTransforms,
                 cache_dir: str, eval_split: str = 'valid_u'):
        if image_set not in ('train', 'test'):
            raise ValueError(f"mevis: image_set must be 'train' or 'test', got {image_set!r}")
        if eval_split not in ('valid_u', 'valid'):
            raise ValueError(f"mevis: the evaluated split (config key mevis_eval_split) must be 'valid_u' or 'valid', "
                             f"got {eval_split!r}")
        self.root = require_dataset_root(Path(dataset_path).expanduser(), 'mevis', LAYOUT)
        self.image_set = image_set
        self.split = 'train' if image_set == 'train' else eval_split
        self.transforms = transforms
        self.collator = collate_videos if image_set == 'train' else collate_whole_videos
        split_dir = require_path(self.root / self.split, f'{self.split} folder', LAYOUT)
        self.frames_dir = require_path(split_dir / 'JPEGImages', f'{self.split} frame folder', LAYOUT)
        self.meta_path = require_path(split_dir / 'meta_expressions.json', f'{self.split} expressions file', LAYOUT)
        self.videos = read_meta_expressions(self.meta_path, self.split)
        self.masks_dir = None
        if self.split in SPLITS_WITH_MASKS:
            self.masks_dir = self._split_masks(split_dir, cache_dir)
        if image_set == 'train':
            samples_cache = cache_path(cache_dir, 'mevis', f'samples_train_ws{window_size}', masks=self.masks_dir.name,
                                       window_size=window_size)
            built = load_or_build_json(samples_cache, lambda: self._build_train_samples(window_size),
                                       f'the MeViS train sample list (window {window_size})')
            self.samples = [tuple(sample) for sample in built['samples']]
            if is_main_process():
                print(f'MeViS train: {len(self.samples)} windows; {built["skipped"]} windows in which the referred '
                      f'objects are absent from every frame are left out')
        else:
            self.samples = [(video_id, sorted(video['frames']),
                             [(exp_id, expression['exp']) for exp_id, expression in video['expressions'].items()])
                            for video_id, video in self.videos.items() if video['expressions']]

    def _split_masks(self, split_dir: Path, cache_dir: str) -> Path:
        """The folder of the split's per-video mask files (`split_mask_dict`), built once."""
        mask_dict_path = require_path(split_dir / 'mask_dict.json', f'{self.split} masks file', LAYOUT)
        index = cache_path(cache_dir, 'mevis', f'masks_{self.split}', dataset_path=str(self.root.resolve()),
                           meta=file_digest(self.meta_path), masks=stat_fingerprint([mask_dict_path], self.root))
        masks_dir = index.with_suffix('')
        load_or_build_json(index, lambda: split_mask_dict(mask_dict_path, self.videos, masks_dir),
                           f'the MeViS {self.split} masks, one file per video')
        return masks_dir

    def _build_train_samples(self, window_size: int) -> dict:
        samples, skipped = [], 0
        for video_id, video in tqdm(self.videos.items(), desc='MeViS train samples', disable=not is_main_process()):
            video_samples, video_skipped = train_samples({video_id: video}, self.video_masks(video_id), window_size)
            samples += video_samples
            skipped += video_skipped
        return {'samples': samples, 'skipped': skipped}

    def video_masks(self, video_id: str) -> Dict[str, list]:
        """`{anno_id: [RLE or None per frame]}` of the objects the video's expressions refer to."""
        return read_json(self.masks_dir / f'{video_id}.json', MASK_DICT_FORM)

    def target(self, video_id: str, exp_id: str, frame_names: Sequence[str], frame_size: Tuple[int, int]) -> np.ndarray:
        """`[T, H, W]` bool: the expression's target in the frames `frame_names` (train and valid_u)."""
        return expression_target(self.video_masks(video_id), self.videos[video_id]['frames'],
                                 self.videos[video_id]['expressions'][exp_id]['anno_id'], frame_names, frame_size)

    def _train_item(self, video_id, window, exp_id, anno_ids, text_query):
        frames = [read_frame(self.frames_dir / video_id / f'{frame}.jpg') for frame in window]
        frame_size = (frames[0].height, frames[0].width)
        video_masks = self.video_masks(video_id)
        video_frames = self.videos[video_id]['frames']
        referred = expression_target(video_masks, video_frames, anno_ids, window, frame_size)  # [T, H, W]
        others = [masks for masks in (expression_target(video_masks, video_frames, [anno_id], window, frame_size)
                                      for anno_id in video_masks if anno_id not in anno_ids) if masks.any()]
        masks = torch.from_numpy(np.stack([referred, *others], axis=1)).to(torch.uint8)  # [T, N, H, W]
        targets = []
        for frame, frame_masks in zip(window, masks):
            targets.append({'masks': frame_masks,
                            'referred_instance_idx': torch.tensor(0),
                            'is_ref_inst_visible': frame_masks[0].any(),
                            'orig_size': frame_size,
                            'size': torch.tensor(frame_size),
                            'iscrowd': torch.zeros(len(frame_masks)),
                            'image_id': f'v_{video_id}_f_{frame}'})
        return self.transforms(frames, targets, text_query)

# --------------------------------------------------------------------------------------------------------------
# evaluators

class MeViSEvaluator(Evaluator):
    """valid_u: writes each expression's masks as `<out_dir>/<video>/<exp_id>/<frame>.png` and scores them against
    the ground truth as its batch is evaluated; summarize gives J, F and J&F over the expressions of all
    processes (`metrics.mevis_summary`)."""
    best_metric = 'J&F'
    higher_is_better = True

    def __init__(self, dataset: MeViSDataset, out_dir: Path):
        self.dataset, self.out_dir = dataset, Path(out_dir)
        self.postprocessor = ReferYoutubeVOSPostProcess()
        self.scores: List[Tuple[str, Tuple[float, float]]] = []

    def update(self, batch, outputs):
        for metadata, masks in predicted_masks(batch, outputs, self.postprocessor):
            video_id, exp_id, frame_names = metadata['video_id'], metadata['exp_id'], metadata['frame_indices']
            write_expression_masks(self.out_dir, video_id, exp_id, frame_names, masks)
            target = self.dataset.target(video_id, exp_id, frame_names, masks.shape[1:])
            self.scores += mevis_expression_scores([(video_id, exp_id, target, masks)]).items()

    def summarize(self):
        scores = all_gather_lists(self.scores)
        if not is_main_process():
            return None
        expression_scores = dict(scores)
        if len(expression_scores) != len(scores):
            raise ValueError('an expression was evaluated twice')
        summary = mevis_summary(expression_scores)
        print(f'MeViS {self.dataset.split}: {len(expression_scores)} expressions of '
              f'{len({key.rsplit("_", 1)[0] for key in expression_scores})} videos\n'
              f'  J&F {100 * summary["J&F"]:.2f}   J {100 * summary["J"]:.2f}   F {100 * summary["F"]:.2f}')
        return {**summary, 'expressions': len(expression_scores), 'predictions': str(self.out_dir)}


class MeViSSubmissionEvaluator(Evaluator):
    """valid: writes each expression's masks as `<out_dir>/<video>/<exp_id>/<frame>.png`, then the server's zip
    (video folders at its root), checked against the split's expressions. There is no local score, so
    `best.pth.tar` follows the lowest mean training loss (as for Refer-YouTube-VOS)."""
    best_metric = 'training loss'
    higher_is_better = False
    checkpoint_key = 'best_loss'

    def __init__(self, dataset: MeViSDataset, out_dir: Path, zip_path: Path):
        self.dataset, self.out_dir, self.zip_path = dataset, Path(out_dir), Path(zip_path)
        self.postprocessor = ReferYoutubeVOSPostProcess()
        self.expressions = 0

    def update(self, batch, outputs):
        for metadata, masks in predicted_masks(batch, outputs, self.postprocessor):
            write_expression_masks(self.out_dir, metadata['video_id'], metadata['exp_id'], metadata['frame_indices'],
                                   masks)
            self.expressions += 1

    def summarize(self):
        expressions = sum(all_gather_lists([self.expressions]))  # also waits for every process's masks
        if not is_main_process():
            return None
        write_submission_zip(self.out_dir, self.zip_path, archive_dir=None)
        # the masks were written here: the names are what can go wrong (a video or an expression left out)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', SubsetWarning)  # (the dataset warned about its row counts)
            check = check_submission_zip(self.zip_path, self.dataset.meta_path, check_masks=False)
        print(check.summary())
        return {'submission_zip': str(self.zip_path), 'expressions': expressions,
                'submission_check': 'OK' if check.ok else f'NOT READY: {len(check.missing)} masks missing'}

    def best_score(self, metrics, train_losses):
        return train_losses['loss']

    def describe(self, metrics):
        return f'submission zip {metrics["submission_zip"]} ({metrics["submission_check"]})'


def check_submission_zip(zip_path, meta_path, dataset_root=None, check_masks: bool = True,
                         show_progress: bool = True) -> SubmissionCheck:
    """Check a MeViS valid zip against the split's `meta_expressions.json`: a mask `<video>/<exp_id>/<frame>.png`
    at the zip's root for every expression and frame, nothing else; with `check_masks`, each mask single-channel
    with values 0 and 255 and, when `dataset_root` is given, the size of `<root>/valid/JPEGImages/<video>/
    <frame>.jpg`. Raises only for missing inputs; what is wrong inside the zip is reported in the result."""
    videos = read_meta_expressions(meta_path, 'valid')
    expected = expected_mask_names(videos)
    frames_dir = None
    if dataset_root is not None:
        frames_dir = require_path(Path(dataset_root) / 'valid' / 'JPEGImages', 'valid frame folder', LAYOUT)
    zip_path = Path(zip_path)
    if not zipfile.is_zipfile(zip_path):
        raise FileNotFoundError(f'submission zip not found or not a zip: {zip_path}')
    result = SubmissionCheck(str(zip_path), len(expected))
    with zipfile.ZipFile(zip_path) as archive:
        names = set()
        for entry in archive.namelist():
            if entry.endswith('/'):
                continue
            if entry.endswith('.png') and entry.count('/') == 2 and not entry.startswith('Annotations/'):
                names.add(entry)
            else:
                result.problems.append(f'unexpected zip entry {entry!r} (the server expects '
                                       f'<video>/<exp_id>/<frame>.png at the zip\'s root)')
        result.missing = [name for name in expected if name not in names]
        result.unexpected = sorted(names - set(expected))
        if check_masks:
            present = [name for name in expected if name in names]
            for name in tqdm(present, desc='checking masks', disable=not show_progress):
                image = Image.open(io.BytesIO(archive.read(name)))
                problem = mask_problem(image, name, frames_dir)
                if problem:
                    result.problems.append(f'{name}: {problem}')
    return result


def build(image_set: str, config, transforms: VideoTransforms) -> MeViSDataset:
    return MeViSDataset(image_set, config.dataset_path, config.window_size, transforms, config.cache_dir,
                        eval_split=config.mevis_eval_split)


def build_evaluator(config, dataset: MeViSDataset, run_dir: Path, epoch: int) -> Evaluator:
    out_dir = run_dir / 'mevis' / dataset.split
    if dataset.split == 'valid':
        return MeViSSubmissionEvaluator(dataset, out_dir / f'epoch_{epoch}', out_dir / f'submission_epoch_{epoch}.zip')
    return MeViSEvaluator(dataset, out_dir / f'epoch_{epoch}')

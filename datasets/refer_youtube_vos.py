"""Refer-YouTube-VOS: YouTube-VOS videos with referring expressions; masks of every object on every 5th frame.

Training samples are windows of `window_size` annotated frames per expression. Evaluation (the 'valid' split,
scored by the competition server) takes each (video, expression) whole, and returns with each sample the
metadata the post-processing and the submission need; `ReferYouTubeVOSEvaluator` writes the predicted masks and
the submission zip.
"""
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from tqdm import tqdm

from models.postprocessing import ReferYoutubeVOSPostProcess
from utils import all_gather_lists, is_main_process
from .evaluator import Evaluator
from .files import (DatasetLayoutError, cache_path, check_row_count, file_digest, load_or_build_json, read_text,
                    require_dataset_root, require_file, require_path, stat_fingerprint)
from .submission import write_submission_zip
from .transforms import VideoTransforms, collate_videos, collate_whole_videos, normalize_query
from .video_expressions import (VideoExpressionsDataset, predicted_masks, read_frame, read_mask, read_meta_expressions,
                                windows_of, write_expression_masks)

LAYOUT = """<dataset_path>/
├── train/
│   ├── JPEGImages/<video>/<frame>.jpg
│   └── Annotations/<video>/<frame>.png     (palette PNG: pixel value = object id, 0 = background)
├── valid/
│   └── JPEGImages/<video>/<frame>.jpg
└── meta_expressions/
    ├── train/meta_expressions.json         ({"videos": {video: {"expressions": {exp_id: {"exp", "obj_id"}},
    ├── valid/meta_expressions.json                                  "frames": [frame names]}}})
    └── test/meta_expressions.json          (only to tell the valid videos from the test ones)"""

# The image sets of the config and the dataset's folders.
SPLITS = {'train': 'train', 'test': 'valid'}
FULL_TRAIN_VIDEOS = 3471
FULL_VALID_PLUS_TEST_VIDEOS = 507
FULL_VALID_VIDEOS = 202
VALID_IDS_FORM = 'a text file with one valid video id a line'


def object_ids(mask: np.ndarray) -> set:
    return set(np.flatnonzero(np.bincount(mask.ravel())).tolist()) - {0}


def referred_object_id(expression: dict, meta_path, video_id: str, exp_id: str) -> int:
    """The `obj_id` of a train expression: the object's pixel value in the video's masks, an integer or a string
    of digits (as the distributed file writes it); anything else is an error naming the file, the video and the
    expression."""
    if 'obj_id' not in expression:
        raise ValueError(f'{meta_path}: expression {exp_id} of video {video_id} has no obj_id; only the train meta '
                         'file names the referred objects (valid/test have no public ground truth)')
    value = expression['obj_id']
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.isascii()
                                                                   and value.isdigit())):
        raise ValueError(f'{meta_path}: expression {exp_id} of video {video_id}: obj_id {value!r} is not an object '
                         'id; expected an integer, e.g. 1 or "1"')
    return int(value)


class ReferYouTubeVOSDataset(VideoExpressionsDataset):
    """Training items: `(frames [T, 3, H, W], targets, text_query)` with a target dict for every frame.
    Evaluation items: a whole video with all its expressions, `(frames [T, 3, H, W], [[None] * T per expression],
    [text queries], [metadata per expression])` (see `transforms.collate_videos`)."""

    def __init__(self, image_set: str, dataset_path: str, window_size: int, transforms: VideoTransforms,
                 cache_dir: str, valid_video_ids_path: Optional[str] = None):
        if image_set not in SPLITS:
            raise ValueError(f"ref_youtube_vos: image_set must be 'train' or 'test', got {image_set!r}")
        self.root = require_dataset_root(Path(dataset_path).expanduser(), 'ref_youtube_vos', LAYOUT)
        self.image_set = image_set
        self.split = SPLITS[image_set]
        self.window_size = window_size
        self.transforms = transforms
        self.collator = collate_videos if image_set == 'train' else collate_whole_videos
        self.frames_dir = require_path(self.root / self.split / 'JPEGImages', f'{self.split} frame folder', LAYOUT)
        meta_path = require_path(self.root / 'meta_expressions' / self.split / 'meta_expressions.json',
                                 f'{self.split} expressions file', LAYOUT)
        videos = read_meta_expressions(meta_path)

        if image_set == 'train':
            check_row_count(meta_path, len(videos), FULL_TRAIN_VIDEOS, 'videos')
            self.masks_dir = require_path(self.root / 'train' / 'Annotations', 'train mask folder', LAYOUT)
            mask_paths = [self.masks_dir / video_id / f'{frame}.png'
                          for video_id, video in videos.items() for frame in video['frames']]
            try:
                masks_fingerprint = stat_fingerprint(mask_paths, self.root)
            except FileNotFoundError as e:
                raise DatasetLayoutError(f'mask {e.filename} not found (a frame listed in {meta_path})', LAYOUT) from e
            referred = {(video_id, exp_id): referred_object_id(expression, meta_path, video_id, exp_id)
                        for video_id, video in videos.items() for exp_id, expression in video['expressions'].items()}
            samples_cache = cache_path(cache_dir, 'ref_youtube_vos', f'samples_train_ws{window_size}',
                                       dataset_path=str(self.root.resolve()), window_size=window_size,
                                       meta=file_digest(meta_path), masks=masks_fingerprint)
            self.samples = [tuple(s) for s in load_or_build_json(
                samples_cache, lambda: self._build_train_samples(videos, referred),
                f'the Refer-YouTube-VOS train sample list (window {window_size})')]
        else:
            check_row_count(meta_path, len(videos), FULL_VALID_PLUS_TEST_VIDEOS, 'videos')
            valid_ids = self._valid_video_ids(videos, meta_path, valid_video_ids_path)
            # one sample per video with all its expressions: the video is encoded once for all of them
            self.samples = [(video_id, sorted(videos[video_id]['frames']),
                             [(exp_id, normalize_query(exp['exp'])) for exp_id, exp in
                              videos[video_id]['expressions'].items()])
                            for video_id in valid_ids if videos[video_id]['expressions']]

    def _valid_video_ids(self, videos: Dict[str, dict], meta_path: Path, valid_video_ids_path) -> List[str]:
        """The distributed valid expressions file lists the valid and the test videos; keep the valid ones."""
        test_meta_path = self.root / 'meta_expressions' / 'test' / 'meta_expressions.json'
        if valid_video_ids_path:
            ids_path = require_file(Path(valid_video_ids_path).expanduser(), 'valid video ids (valid_video_ids_path)',
                                    VALID_IDS_FORM)
            valid_ids = set(read_text(ids_path, VALID_IDS_FORM).split())
            unknown = sorted(valid_ids - set(videos))
            if unknown:
                raise ValueError(f'{ids_path}: {len(unknown)} video ids are not in {meta_path}, e.g. {unknown[:5]}')
            source = ids_path
        elif test_meta_path.is_file():
            valid_ids = set(videos) - set(read_meta_expressions(test_meta_path))
            source = test_meta_path
        else:
            raise FileNotFoundError(
                f'{test_meta_path} not found. {meta_path} lists the valid and the test videos together '
                f'({len(videos)} videos) and only the test expressions file tells them apart; it is no longer '
                f'distributed. Either put it at that path, or set the config key valid_video_ids_path to a text '
                f'file with the {FULL_VALID_VIDEOS} valid video ids, one a line.')
        check_row_count(source, len(valid_ids), FULL_VALID_VIDEOS, 'valid videos')
        return [video_id for video_id in videos if video_id in valid_ids]

    def _build_train_samples(self, videos: Dict[str, dict], referred: Dict[Tuple[str, str], int]) -> List[list]:
        samples, absent = [], 0
        for video_id, video in tqdm(videos.items(), desc='Refer-YouTube-VOS train samples',
                                    disable=not is_main_process()):
            ids_per_frame = {frame: object_ids(read_mask(self.masks_dir / video_id / f'{frame}.png'))
                             for frame in video['frames']}
            windows = windows_of(sorted(video['frames']), self.window_size)
            window_ids = [set().union(*(ids_per_frame[frame] for frame in window)) for window in windows]
            for exp_id, exp in video['expressions'].items():
                obj_id = referred[video_id, exp_id]
                for window, ids in zip(windows, window_ids):
                    if obj_id in ids:
                        samples.append([video_id, window, exp_id, obj_id, normalize_query(exp['exp'])])
                    else:
                        absent += 1
        print(f'Refer-YouTube-VOS train: {len(samples)} windows; {absent} windows without the referred object '
              f'are left out')
        return samples

    def _train_item(self, video_id, window, exp_id, obj_id, text_query):
        frames = [read_frame(self.frames_dir / video_id / f'{frame}.jpg') for frame in window]
        masks = torch.from_numpy(np.stack([read_mask(self.masks_dir / video_id / f'{frame}.png')
                                           for frame in window]))  # [T, H, W] object ids
        # the objects of the window, in id order
        window_object_ids = sorted(set(masks.unique().tolist()) - {0})
        if obj_id not in window_object_ids:
            raise ValueError(f'object {obj_id} of video {video_id} is not in the masks of frames {window}; the cached '
                             f'sample list does not match the masks')
        referred_idx = torch.tensor(window_object_ids.index(obj_id))
        targets = []
        for frame, frame_ids in zip(window, masks):
            frame_masks = torch.stack([frame_ids == i for i in window_object_ids]).to(torch.uint8)  # [N, H, W]
            targets.append({'masks': frame_masks,
                            'referred_instance_idx': referred_idx,
                            'is_ref_inst_visible': frame_masks[referred_idx].any(),  # uint8, as in the original
                            'orig_size': tuple(frame_masks.shape[-2:]),
                            'size': torch.tensor(frame_masks.shape[-2:]),
                            'iscrowd': torch.zeros(len(frame_masks)),
                            'image_id': f'v_{video_id}_f_{frame}'})
        return self.transforms(frames, targets, text_query)


class ReferYouTubeVOSEvaluator(Evaluator):
    """Writes each expression's masks as `<out_dir>/Annotations/<video>/<exp_id>/<frame>.png` (0/255) as its
    batch is evaluated, then zips them for the competition server (`zip_path`). There is no local score, so
    `best.pth.tar` follows the lowest mean training loss, as in the original."""
    best_metric = 'training loss'
    higher_is_better = False
    checkpoint_key = 'best_loss'

    def __init__(self, out_dir: Path, zip_path: Path):
        self.out_dir, self.zip_path = out_dir, zip_path
        self.postprocessor = ReferYoutubeVOSPostProcess()
        self.expressions = 0

    def update(self, batch, outputs):
        for metadata, masks in predicted_masks(batch, outputs, self.postprocessor):
            write_expression_masks(self.out_dir / 'Annotations', metadata['video_id'], metadata['exp_id'],
                                   metadata['frame_indices'], masks)
            self.expressions += 1

    def summarize(self):
        expressions = sum(all_gather_lists([self.expressions]))  # also waits for every process's masks
        if not is_main_process():
            return None
        write_submission_zip(self.out_dir, self.zip_path)
        return {'submission_zip': str(self.zip_path), 'expressions': expressions}

    def best_score(self, metrics, train_losses):
        return train_losses['loss']

    def describe(self, metrics):
        return f'submission zip {metrics["submission_zip"]}'


def build(image_set: str, config, transforms: VideoTransforms) -> ReferYouTubeVOSDataset:
    return ReferYouTubeVOSDataset(image_set, config.dataset_path, config.window_size, transforms, config.cache_dir,
                                  valid_video_ids_path=config.valid_video_ids_path)


def build_evaluator(config, dataset, run_dir: Path, epoch: int) -> ReferYouTubeVOSEvaluator:
    return ReferYouTubeVOSEvaluator(run_dir / 'validation_outputs' / f'epoch_{epoch}',
                                    run_dir / 'validation_outputs' / f'submission_epoch_{epoch}.zip')

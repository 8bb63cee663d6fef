"""JHMDB-Sentences (evaluation only): one actor per video, referred to by one query, with a mask per frame.

Three frames per video are evaluated. Their list (the "samples metadata") is either read from a JSON file, the
paper's being `../shared/data/jhmdb_sentences_samples_metadata.json`, or drawn anew with the config's seed and
written into the run's output directory. Each entry is `[video_id, frame_path, mask_path, total_frames, query]`
with paths written as `./jhmdb_sentences/Rename_Images/...` and `./jhmdb_sentences/puppet_mask/...`; they are
resolved against the configured dataset path.
"""
import csv
import hashlib
import io
import json
import random
from pathlib import Path
from typing import List, Optional

import numpy as np
import scipy.io
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from utils import is_main_process, safe_name, write_json
from .files import (DatasetLayoutError, cache_path, check_row_count, coco_ground_truth, load_or_build_json,
                    raise_if_missing, read_json, read_text, require_dataset_root, require_file, require_path,
                    stat_fingerprint)
from .transforms import VideoTransforms, collate_videos, normalize_query

LAYOUT = """<dataset_path>/
├── jhmdb_annotation.txt             (header: video_id,query)
├── Rename_Images/
│   └── <action>/<video>/<frame:05d>.png        (frame numbers from 1)
└── puppet_mask/
    └── <action>/<video>/puppet_mask.mat        (key 'part_mask', [H, W, T])"""

FULL_ANNOTATION_ROWS = 928
PAPER_SAMPLES = 2784
FRAMES_PER_VIDEO = 3
SAMPLES_METADATA_NAME = 'jhmdb_sentences_samples_metadata.json'
SAMPLES_METADATA_FORM = 'a JSON list of entries [video_id, frame_path, mask_path, total_frames, query]'
# How paths are written in a samples-metadata file (the paper's file uses this prefix).
METADATA_PATH_PREFIX = './jhmdb_sentences'
DATA_FOLDERS = ('Rename_Images', 'puppet_mask')


def image_id(video_id: str, frame: int) -> str:
    return f'v_{video_id}_f_{frame}'


def read_video_masks(path: Path) -> np.ndarray:
    """All masks of a video, `[T, H, W]` uint8, from a puppet_mask.mat file holding `part_mask` `[H, W, T]`."""
    try:
        masks = scipy.io.loadmat(str(path))['part_mask']
    except (OSError, ValueError, KeyError, scipy.io.matlab.MatReadError) as e:
        raise RuntimeError(f"cannot read the JHMDB mask file {path} (expected a .mat file with 'part_mask' "
                           f'[H, W, T]): {e}') from e
    if masks.ndim != 3:
        raise ValueError(f"{path}: 'part_mask' has shape {masks.shape}, expected [H, W, T]")
    return masks.transpose(2, 0, 1)


def frame_number(frame_path) -> int:
    return int(Path(frame_path).stem)


def generate_samples_metadata(root: Path, seed: int) -> List[list]:
    """Draw FRAMES_PER_VIDEO frames of every annotated video with `random.Random(seed)`.

    Frames beyond the last mask are not drawn. With seed 42 this reproduces the paper's list.
    """
    annotations_path = require_path(root / 'jhmdb_annotation.txt', 'JHMDB-Sentences text annotations', LAYOUT)
    rows = list(csv.reader(io.StringIO(read_text(annotations_path, 'CSV rows video_id,query'), newline='')))
    if not rows or rows[0] != ['video_id', 'query']:
        raise ValueError(f'{annotations_path}: expected the header video_id,query, got {rows[:1]}')
    check_row_count(annotations_path, len(rows) - 1, FULL_ANNOTATION_ROWS)
    rng = random.Random(seed)
    samples = []
    for line_number, row in enumerate(tqdm(rows[1:], desc='JHMDB samples', disable=not is_main_process()), start=2):
        if len(row) != 2:
            raise ValueError(f'{annotations_path}, line {line_number}: expected 2 columns (video_id,query), got {row}')
        video_id, query = row
        safe_name(video_id, 'video id', f'{annotations_path}, line {line_number}')
        frame_dirs = sorted((root / 'Rename_Images').glob(f'*/{video_id}'))
        mask_paths = sorted((root / 'puppet_mask').glob(f'*/{video_id}/puppet_mask.mat'))
        if not frame_dirs or not mask_paths:
            missing = root / ('Rename_Images' if not frame_dirs else 'puppet_mask')
            raise DatasetLayoutError(f'{missing}/<action>/{video_id} not found (video of {annotations_path}, line '
                                     f'{line_number})', LAYOUT)
        frame_paths = sorted(frame_dirs[0].glob('*.png'))[:len(read_video_masks(mask_paths[0]))]
        if len(frame_paths) < FRAMES_PER_VIDEO:
            raise ValueError(f'{frame_dirs[0]}: {len(frame_paths)} frames with a mask, at least {FRAMES_PER_VIDEO} '
                             f'are needed')
        for frame_path in sorted(rng.sample(frame_paths, FRAMES_PER_VIDEO)):
            samples.append([video_id, _metadata_path(frame_path, root), _metadata_path(mask_paths[0], root),
                            len(frame_paths), query])
    return samples


def _metadata_path(path: Path, root: Path) -> str:
    return f'{METADATA_PATH_PREFIX}/{path.relative_to(root).as_posix()}'


def resolve_metadata_path(path: str, root: Path, metadata_file) -> Path:
    """`<anything>/Rename_Images/...` or `<anything>/puppet_mask/...` -> the same under the dataset root."""
    parts = Path(path).parts
    for folder in DATA_FOLDERS:
        if folder in parts:
            below = parts[parts.index(folder):]
            for part in below[1:]:
                safe_name(part, f'a component of path {path!r}:', metadata_file)
            return root.joinpath(*below)
    raise ValueError(f'{metadata_file}: path {path!r} contains neither {DATA_FOLDERS[0]} nor {DATA_FOLDERS[1]}')


class JHMDBSentencesDataset(Dataset):
    """Items are `(frames [T, 3, H, W], targets, text_query)`; `targets[window_size // 2]` is the sampled
    frame's dict, the other entries are None."""

    def __init__(self, dataset_path: str, window_size: int, transforms: VideoTransforms, cache_dir: str,
                 samples_metadata_path: Optional[str] = None, generate_new_samples_metadata: bool = False,
                 seed: int = 42, output_dir: str = '', coco_gt_path: Optional[str] = None):
        self.root = require_dataset_root(Path(dataset_path).expanduser(), 'jhmdb_sentences', LAYOUT)
        for folder in DATA_FOLDERS:
            require_path(self.root / folder, f'JHMDB-Sentences folder {folder}', LAYOUT)
        self.window_size = window_size
        self.transforms = transforms
        self.collator = collate_videos

        if generate_new_samples_metadata or samples_metadata_path is None:
            # every process draws the same list, so none has to wait for another
            entries = generate_samples_metadata(self.root, seed)
            self.samples_metadata_path = self._write_samples_metadata(entries, seed, output_dir, cache_dir)
        else:
            self.samples_metadata_path = require_file(Path(samples_metadata_path).expanduser(),
                                                      'JHMDB-Sentences samples metadata (samples_metadata_path)',
                                                      SAMPLES_METADATA_FORM)
            entries = read_json(self.samples_metadata_path, SAMPLES_METADATA_FORM)
            if not isinstance(entries, list):
                raise ValueError(f'{self.samples_metadata_path}: expected {SAMPLES_METADATA_FORM}, got '
                                 f'{type(entries).__name__}')
        self.samples = self._resolve_samples(entries, self.samples_metadata_path)

        mask_paths = sorted({s[2] for s in self.samples})
        samples_digest = hashlib.sha1(json.dumps(entries).encode()).hexdigest()
        self.coco_gt_path = Path(coco_gt_path) if coco_gt_path else cache_path(
            cache_dir, 'jhmdb_sentences', 'coco_gt', dataset_path=str(self.root.resolve()), samples=samples_digest,
            masks=stat_fingerprint(mask_paths, self.root))
        load_or_build_json(self.coco_gt_path, self._build_coco_gt, 'the JHMDB-Sentences ground truth')

    def _write_samples_metadata(self, entries: List[list], seed: int, output_dir: str,
                                configured_cache_dir: str) -> Path:
        """Into the run's output directory (or, without one, the cache directory), for the record."""
        if output_dir:
            path = Path(output_dir) / SAMPLES_METADATA_NAME
        else:
            path = cache_path(configured_cache_dir, 'jhmdb_sentences', f'samples_metadata_seed{seed}',
                              dataset_path=str(self.root.resolve()))
        if is_main_process():
            write_json(path, entries, 'samples metadata file')
            print(f'JHMDB-Sentences: drew {len(entries)} samples with seed {seed}, written to {path}')
        return path

    def _resolve_samples(self, entries: list, path: Path) -> List[tuple]:
        check_row_count(path, len(entries), PAPER_SAMPLES, 'samples')
        samples = []
        for entry in entries:
            if not (isinstance(entry, list) and len(entry) == 5 and isinstance(entry[3], int)
                    and all(isinstance(entry[i], str) for i in (0, 1, 2, 4))):
                raise ValueError(f'{path}: expected {SAMPLES_METADATA_FORM} (texts and an integer), got the entry '
                                 f'{entry!r}')
            video_id, frame_path, mask_path, total_frames, query = entry
            safe_name(video_id, 'video id', path)
            samples.append((video_id, resolve_metadata_path(frame_path, self.root, path),
                            resolve_metadata_path(mask_path, self.root, path), int(total_frames),
                            normalize_query(query)))
        raise_if_missing(sorted({s[1].parent for s in samples if not s[1].parent.is_dir()}),
                         f'JHMDB frame folders listed in {path}', LAYOUT)
        raise_if_missing(sorted({s[2] for s in samples if not s[2].is_file()}),
                         f'JHMDB mask files listed in {path}', LAYOUT)
        return samples

    def _build_coco_gt(self) -> dict:
        def images():
            loaded_path, masks = None, None
            for video_id, frame_path, mask_path, _, _ in tqdm(self.samples, desc='JHMDB ground truth',
                                                               disable=not is_main_process()):
                if mask_path != loaded_path:  # the samples of a video follow each other
                    loaded_path, masks = mask_path, read_video_masks(mask_path)
                yield image_id(video_id, frame_number(frame_path)), masks[frame_number(frame_path) - 1]
        return coco_ground_truth(images())

    def __len__(self):
        return len(self.samples)

    def describe(self, idx) -> str:
        """Which sample item `idx` is, for error messages."""
        video_id, frame_path = self.samples[idx][:2]
        return f'video {video_id}, frame {frame_number(frame_path)}'

    def __getitem__(self, idx):
        video_id, frame_path, mask_path, total_frames, text_query = self.samples[idx]
        frame = frame_number(frame_path)
        # frame numbers count from 1; out-of-range ones are clamped to the first/last frame with a mask
        window = [min(max(i, 1), total_frames)
                  for i in range(frame - self.window_size // 2, frame + (self.window_size + 1) // 2)]
        frames = []
        for i in window:
            path = frame_path.parent / f'{i:05d}.png'
            try:
                frames.append(Image.open(path).convert('RGB'))
            except OSError as e:
                raise RuntimeError(f'cannot read the JHMDB frame {path}: {e}') from e

        masks = read_video_masks(mask_path)
        if frame > len(masks):
            raise ValueError(f'{mask_path}: {len(masks)} masks, but frame {frame} was sampled')
        mask = torch.from_numpy(masks[frame - 1] != 0)[None]  # [1, H, W]
        target = {'masks': mask,
                  'orig_size': tuple(mask.shape[-2:]),
                  'size': torch.tensor(mask.shape[-2:]),
                  'referred_instance_idx': torch.tensor(0),
                  'iscrowd': torch.zeros(1),
                  'image_id': image_id(video_id, frame)}
        targets = [None] * self.window_size
        targets[self.window_size // 2] = target
        return self.transforms(frames, targets, text_query)


def build(image_set: str, config, transforms: VideoTransforms) -> JHMDBSentencesDataset:
    """The test split (JHMDB-Sentences is used for evaluation only)."""
    return JHMDBSentencesDataset(config.dataset_path, config.window_size, transforms, config.cache_dir,
                                 samples_metadata_path=config.samples_metadata_path,
                                 generate_new_samples_metadata=config.generate_new_samples_metadata,
                                 seed=config.seed, output_dir=config.output_dir,
                                 coco_gt_path=config.dataset_coco_gt_format_path)

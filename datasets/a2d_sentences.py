"""A2D-Sentences: actor/action videos with referring expressions and per-instance masks on a few frames.

One sample is (query, video, annotated frame, instance) for every annotated frame in which the referred
instance has a mask; its input is a window of `window_size` frames centred on that frame.

With `absent_samples` (config key `absent_referred_samples`, which only the synthetic dataset's config sets) every
other annotated frame of the referred instance's video gives a sample too: its target lists the instance with an
empty mask and `is_ref_inst_visible` false, so training moves its probability of "referred" toward "not referred"
(as the original's Refer-YouTube-VOS training does for frames without the referred object), and the evaluation
scores it for that probability only, outside the COCO ground truth and mAP.
"""
import csv
import io
import os
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import av
import h5py
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from utils import is_main_process, safe_name
from .files import (DatasetLayoutError, cache_path, check_row_count, coco_ground_truth, file_digest,
                    load_or_build_json, raise_if_missing, read_text, require_dataset_root, require_path,
                    stat_fingerprint)
from .transforms import VideoTransforms, collate_videos, normalize_query
from .video_files import announced_frame_count, check_frame_count

LAYOUT = """<dataset_path>/
├── Release/
│   ├── videoset.csv                 (no header; 9 columns, the last is 0 = train / 1 = test)
│   └── clips320H/ (or CLIPS320/)
│       └── <video>.mp4
└── text_annotations/
    ├── a2d_annotation.txt           (header: video_id,instance_id,query)
    ├── a2d_missed_videos.txt        (one video id a line)
    └── a2d_annotation_with_instances/
        └── <video>/<frame:05d>.h5   (datasets 'instance' and 'reMask'; frame numbers from 1)"""

# Row counts of the full dataset's files; other counts only trigger a warning.
FULL_VIDEOSET_ROWS = 3782
FULL_ANNOTATION_ROWS = 6655
FULL_MISSED_VIDEOS = 28
SUBSET_CODES = {'train': '0', 'test': '1'}
VIDEOSET_FORM = '9 comma-separated columns without a header, the last being the subset (0 train, 1 test)'
# One row of a2d_annotation.txt is a known annotation mistake (video T6bNPuKV-wY).
BROKEN_INSTANCE_ID = '1 (copy)'
VIDEO_FOLDERS = ('clips320H', 'CLIPS320')  # the official code uses the first, its README the second
# A clip that yields up to this many frames fewer than its container lists is read with a warning (windows near
# its end may be off by as many frames); more is an error: the file is truncated or damaged.


def image_id(video_id: str, frame: int, instance_id: int) -> str:
    return f'v_{video_id}_f_{frame}_i_{instance_id}'


def read_videoset(path: Path) -> Dict[str, str]:
    """video id -> subset code ('0' train, '1' test), from the headerless 9-column videoset.csv."""
    subsets = {}
    text = read_text(path, VIDEOSET_FORM)
    for line_number, row in enumerate(csv.reader(io.StringIO(text, newline='')), start=1):
        if len(row) != 9 or row[8] not in ('0', '1'):
            raise ValueError(f'{path}, line {line_number}: expected {VIDEOSET_FORM}; got {row}')
        subsets[safe_name(row[0], 'video id', f'{path}, line {line_number}')] = row[8]
    check_row_count(path, len(subsets), FULL_VIDEOSET_ROWS)
    return subsets


def read_text_annotations(path: Path) -> List[Tuple[str, int, str]]:
    """(video id, instance id, normalised query) per row of a2d_annotation.txt, in file order."""
    rows = list(csv.reader(io.StringIO(read_text(path, 'CSV rows video_id,instance_id,query'), newline='')))
    if not rows or rows[0] != ['video_id', 'instance_id', 'query']:
        raise ValueError(f'{path}: expected the header video_id,instance_id,query, got {rows[:1]}')
    check_row_count(path, len(rows) - 1, FULL_ANNOTATION_ROWS)
    annotations = []
    for line_number, row in enumerate(rows[1:], start=2):
        if len(row) != 3:
            raise ValueError(f'{path}, line {line_number}: expected 3 columns (video_id,instance_id,query), got {row}')
        video_id, instance_id, query = row
        safe_name(video_id, 'video id', f'{path}, line {line_number}')
        if instance_id == BROKEN_INSTANCE_ID:
            continue
        if not instance_id.isdigit():
            raise ValueError(f'{path}, line {line_number}: instance id {instance_id!r} is not a number')
        annotations.append((video_id, int(instance_id), normalize_query(query)))
    return annotations


def read_missed_videos(path: Path) -> set:
    missed = {line.strip() for line in read_text(path, 'one video id a line').splitlines() if line.strip()}
    check_row_count(path, len(missed), FULL_MISSED_VIDEOS, 'video ids')
    return missed


def read_instance_ids(path: Path) -> List[int]:
    try:
        with h5py.File(path, 'r') as f:
            return [int(i) for i in np.asarray(f['instance']).ravel()]
    except (OSError, KeyError) as e:
        raise RuntimeError(f'cannot read the A2D mask file {path} (expected an HDF5 file with a dataset '
                           f"'instance'): {e}") from e


def read_frame_masks(path: Path) -> Tuple[List[int], np.ndarray]:
    """Instance ids and their masks `[N, H, W]` bool of one annotated frame.

    'reMask' is stored transposed: `[W, H]` for a single instance, `[N, W, H]` for several.
    """
    try:
        with h5py.File(path, 'r') as f:
            instance_ids = [int(i) for i in np.asarray(f['instance']).ravel()]
            masks = np.asarray(f['reMask'])
    except (OSError, KeyError) as e:
        raise RuntimeError(f"cannot read the A2D mask file {path} (expected an HDF5 file with datasets 'instance' "
                           f"and 'reMask'): {e}") from e
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3 or len(masks) != len(instance_ids):
        raise ValueError(f"{path}: 'reMask' of shape {masks.shape} does not hold one [W, H] mask per instance "
                         f'of {instance_ids}')
    return instance_ids, masks.transpose(0, 2, 1) != 0


def _clamped(start: int, stop: int, num_frames: int) -> List[int]:
    return [min(max(i, 0), num_frames - 1) for i in range(start, stop)]


class ClipReader:
    """Reads windows of frames from mp4 clips, decoding only the frames a window needs.

    Frame i is the i-th frame in presentation order, as decoding the whole clip gives it. The presentation
    timestamps of a clip's frames are read once from its packets (no decoding) and kept. A window is read by
    seeking to the key frame before its first frame and decoding up to its last one, skipping the
    non-reference frames before the window (nothing refers to them). Every decoded frame is identified by
    its timestamp; if a clip does not deliver the requested timestamps that way, it is decoded whole (with a
    warning) from then on.
    """

    OPEN_CLIPS = 4  # containers kept open between reads (samples of one clip often follow each other)

    def __init__(self):
        self._timestamps: Dict[str, List[int]] = {}
        self._decode_whole = set()
        self._open: 'OrderedDict[str, av.container.InputContainer]' = OrderedDict()
        self._open_pid = os.getpid()

    def __getstate__(self):  # data-loader workers get the reader without open files
        return {**self.__dict__, '_open': OrderedDict()}

    def _container(self, path: str):
        if self._open_pid != os.getpid():  # a forked worker must not share its parent's file offsets
            self._open, self._open_pid = OrderedDict(), os.getpid()
        container = self._open.pop(path, None) or av.open(path)
        self._open[path] = container
        while len(self._open) > self.OPEN_CLIPS:
            self._open.popitem(last=False)[1].close()
        return container

    def _forget(self, path: str):
        container = self._open.pop(path, None)
        if container is not None:
            container.close()

    def read_window(self, path, start: int, stop: int) -> List[Image.Image]:
        """Frames `start .. stop-1` (0-based), indices out of the clip clamped to its first/last frame."""
        path = str(path)
        try:
            if path not in self._decode_whole:
                timestamps = self._frame_timestamps(path)
                wanted = [timestamps[i] for i in _clamped(start, stop, len(timestamps))]
                frames = self._decode_timestamps(path, wanted)
                if frames is not None:
                    return frames
                warnings.warn(f'{path}: seeking did not deliver the requested frames; decoding this clip whole')
                self._decode_whole.add(path)
            frames = self._decode_all(path)
            return [frames[i].to_image() for i in _clamped(start, stop, len(frames))]
        except av.FFmpegError as e:
            self._forget(path)
            raise RuntimeError(f'cannot read the video {path}: {e}') from e

    def _frame_timestamps(self, path: str) -> List[int]:
        if path not in self._timestamps:
            with av.open(path) as container:
                stream = self._video_stream(container, path)
                announced = announced_frame_count(stream)
                packets = [packet for packet in container.demux(stream) if packet.size > 0]
                timestamps = sorted({packet.pts for packet in packets
                                     if packet.pts is not None and packet.pts >= 0 and not packet.is_discard})
            if not timestamps:
                raise RuntimeError(f'the video {path} has no frames')
            # a clip cut short after its index (an mp4 written with its index first) demuxes without an error
            check_frame_count(path, announced, len(packets), RuntimeError, 'read')
            self._timestamps[path] = timestamps
        return self._timestamps[path]

    @staticmethod
    def _video_stream(container, path):
        if not container.streams.video:
            raise RuntimeError(f'the video {path} has no video stream')
        return container.streams.video[0]

    def _decode_timestamps(self, path: str, wanted: List[int]) -> Optional[List[Image.Image]]:
        """The frames with presentation timestamps `wanted` (in that order), or None if not all were delivered."""
        first, remaining = min(wanted), set(wanted)
        found = {}
        container = self._container(path)
        stream = self._video_stream(container, path)
        codec = stream.codec_context
        container.seek(first, stream=stream, backward=True, any_frame=False)  # also empties the decoder
        for packet in container.demux(stream):
            codec.skip_frame = 'NONREF' if packet.pts is not None and packet.pts < first else 'DEFAULT'
            for frame in packet.decode():
                if frame.pts in remaining:
                    found[frame.pts] = frame.to_image()
                    remaining.discard(frame.pts)
            if not remaining:
                break
        return None if remaining else [found[pts] for pts in wanted]

    def _decode_all(self, path: str) -> list:
        """All frames in presentation order (those with a timestamp >= 0, one per timestamp)."""
        with av.open(path) as container:
            stream = self._video_stream(container, path)
            frames = {frame.pts: frame for frame in container.decode(stream)
                      if frame.pts is not None and frame.pts >= 0}
        if not frames:
            raise RuntimeError(f'the video {path} has no frames')
        check_frame_count(path, len(self._frame_timestamps(path)), len(frames), RuntimeError)
        return [frames[pts] for pts in sorted(frames)]


class A2DSentencesDataset(Dataset):
    """Training items are `(frames [T, 3, H, W], targets, text_query)`; `targets[window_size // 2]` is the
    annotated centre frame's dict, the other entries are None. Test items are an annotated frame's window with
    the queries of all its samples: `(frames, [targets per query], [text queries])`."""

    def __init__(self, image_set: str, dataset_path: str, window_size: int, transforms: VideoTransforms,
                 cache_dir: str, coco_gt_path: Optional[str] = None, absent_samples: bool = False):
        if image_set not in SUBSET_CODES:
            raise ValueError(f"a2d_sentences: image_set must be 'train' or 'test', got {image_set!r}")
        self.root = require_dataset_root(Path(dataset_path).expanduser(), 'a2d_sentences', LAYOUT)
        self.image_set = image_set
        self.window_size = window_size
        self.absent_samples = absent_samples
        self.transforms = transforms
        self.collator = collate_videos
        self.clip_reader = ClipReader()
        self.masks_dir = require_path(self.root / 'text_annotations' / 'a2d_annotation_with_instances',
                                      'A2D-Sentences mask folder', LAYOUT)
        self.videos_dir = self._find_videos_dir()

        source_files = [require_path(self.root / 'Release' / 'videoset.csv', 'A2D videoset file', LAYOUT),
                        require_path(self.root / 'text_annotations' / 'a2d_annotation.txt',
                                     'A2D-Sentences text annotations', LAYOUT),
                        require_path(self.root / 'text_annotations' / 'a2d_missed_videos.txt',
                                     'A2D-Sentences missed-videos list', LAYOUT)]
        annotations = self._split_annotations(*source_files)
        mask_files = self._list_mask_files(sorted({video_id for video_id, _, _ in annotations}))
        fingerprint = {'text_files': [file_digest(p) for p in source_files],
                       'mask_files': stat_fingerprint((p for files in mask_files.values() for p in files), self.root)}
        samples_cache = cache_path(cache_dir, 'a2d_sentences', f'samples_{image_set}',
                                   dataset_path=str(self.root.resolve()), split=image_set, **fingerprint,
                                   **({'absent_samples': True} if absent_samples else {}))
        self.samples = [tuple(s) for s in load_or_build_json(
            samples_cache, lambda: self._build_samples(annotations, mask_files),
            f'the A2D-Sentences {image_set} sample list')]
        # Training: an item per sample. Test: an item per annotated frame with the queries of all its samples, so
        # that its window is read and encoded once for all of them.
        if image_set == 'train':
            self.items = [[i] for i in range(len(self.samples))]
        else:
            groups = {}
            for i, (_, video_id, frame, _) in enumerate(self.samples):
                groups.setdefault((video_id, frame), []).append(i)
            self.items = list(groups.values())

        self.coco_gt_path = None
        if image_set == 'test':
            self.coco_gt_path = Path(coco_gt_path) if coco_gt_path else cache_path(
                cache_dir, 'a2d_sentences', 'coco_gt_test', dataset_path=str(self.root.resolve()), **fingerprint)
            load_or_build_json(self.coco_gt_path, self._build_coco_gt, 'the A2D-Sentences test ground truth')

    def _find_videos_dir(self) -> Path:
        for name in VIDEO_FOLDERS:
            if (self.root / 'Release' / name).is_dir():
                return self.root / 'Release' / name
        raise DatasetLayoutError(f'A2D video folder not found: neither {self.root / "Release" / VIDEO_FOLDERS[0]} '
                                 f'nor {self.root / "Release" / VIDEO_FOLDERS[1]} exists', LAYOUT)

    def _split_annotations(self, videoset_path, annotations_path, missed_path) -> List[Tuple[str, int, str]]:
        """The annotation rows of this split's videos, in file order, without the missed videos."""
        subsets = read_videoset(videoset_path)
        missed = read_missed_videos(missed_path)
        code = SUBSET_CODES[self.image_set]
        used = {video_id for video_id, subset in subsets.items() if subset == code and video_id not in missed}
        annotations = [a for a in read_text_annotations(annotations_path) if a[0] in used]
        if not annotations:
            raise ValueError(f'{annotations_path}: no text annotation refers to a {self.image_set} video of '
                             f'{videoset_path}')
        raise_if_missing([self.videos_dir / f'{v}.mp4' for v in sorted({a[0] for a in annotations})
                          if not (self.videos_dir / f'{v}.mp4').is_file()], 'A2D videos', LAYOUT)
        return annotations

    def _list_mask_files(self, video_ids: List[str]) -> Dict[str, List[Path]]:
        raise_if_missing([self.masks_dir / v for v in video_ids if not (self.masks_dir / v).is_dir()],
                         'A2D-Sentences mask folders', LAYOUT)
        mask_files = {}
        for video_id in video_ids:
            files = sorted((self.masks_dir / video_id).glob('*.h5'))
            bad_names = [p for p in files if not p.stem.isdigit()]
            if bad_names:
                raise ValueError(f'{bad_names[0]}: mask files must be named by their 1-based frame number, '
                                 f'e.g. 00012.h5')
            mask_files[video_id] = files
        return mask_files

    def _build_samples(self, annotations, mask_files) -> List[list]:
        instance_ids = {}
        samples, unmatched, absent = [], 0, 0
        for video_id, instance_id, query in tqdm(annotations, desc=f'A2D {self.image_set} samples',
                                                 disable=not is_main_process()):
            before = len(samples)
            for path in mask_files[video_id]:
                if path not in instance_ids:
                    instance_ids[path] = read_instance_ids(path)
                # a frame in which the instance has no mask gives no sample (and is not evaluated), unless
                # absent_samples asks for those too
                present = instance_id in instance_ids[path]
                if present or self.absent_samples:
                    samples.append([query, video_id, int(path.stem), instance_id])
                    absent += not present
            unmatched += len(samples) == before
        if absent:
            print(f'A2D-Sentences {self.image_set}: {absent} of {len(samples)} samples are of frames without the '
                  'referred instance (absent_referred_samples)')
        if unmatched:
            print(f'A2D-Sentences {self.image_set}: {unmatched} queries refer to an instance without a mask in any '
                  f'annotated frame and give no sample')
        return samples

    def _mask_path(self, video_id: str, frame: int) -> Path:
        return self.masks_dir / video_id / f'{frame:05d}.h5'

    def _build_coco_gt(self) -> dict:
        def images():
            for _, video_id, frame, instance_id in tqdm(self.samples, desc='A2D test ground truth',
                                                         disable=not is_main_process()):
                instance_ids, masks = read_frame_masks(self._mask_path(video_id, frame))
                if instance_id in instance_ids or not self.absent_samples:  # absent: scored outside COCO
                    yield image_id(video_id, frame, instance_id), masks[instance_ids.index(instance_id)]
        return coco_ground_truth(images())

    def __len__(self):
        return len(self.items)

    def describe(self, idx) -> str:
        """Which sample item `idx` is, for error messages."""
        _, video_id, frame, _ = self.samples[self.items[idx][0]]
        return f'video {video_id}, frame {frame}'

    def __getitem__(self, idx):
        samples = [self.samples[i] for i in self.items[idx]]
        _, video_id, frame, _ = samples[0]
        # h5 frame numbers count from 1, video frames from 0
        start = frame - 1 - self.window_size // 2
        frames = self.clip_reader.read_window(self.videos_dir / f'{video_id}.mp4',
                                              start, start + self.window_size)
        mask_path = self._mask_path(video_id, frame)
        instance_ids, masks = read_frame_masks(mask_path)
        masks = torch.from_numpy(np.ascontiguousarray(masks))  # [N, H, W] bool
        items = []
        for text_query, _, _, instance_id in samples:
            present = instance_id in instance_ids
            if not present and not self.absent_samples:
                raise ValueError(f'{mask_path}: instance {instance_id} is not among {instance_ids}; the cached '
                                 f'sample list does not match the mask files')
            # an absent referred instance is one more object with an empty mask
            frame_masks = masks if present else torch.cat([masks, masks.new_zeros((1, *masks.shape[-2:]))])
            target = {'masks': frame_masks,
                      'orig_size': tuple(masks.shape[-2:]),
                      'size': torch.tensor(masks.shape[-2:]),
                      'referred_instance_idx': torch.tensor(instance_ids.index(instance_id) if present
                                                            else len(instance_ids)),
                      'area': frame_masks.sum((1, 2)).double(),
                      'iscrowd': torch.zeros(len(frame_masks)),
                      'image_id': image_id(video_id, frame, instance_id)}
            if self.absent_samples:  # (the matcher reads it from every target or from none)
                target['is_ref_inst_visible'] = torch.tensor(present)
            targets = [None] * self.window_size
            targets[self.window_size // 2] = target
            items.append(self.transforms(frames, targets, text_query))
        if self.image_set == 'train':
            return items[0]
        video = items[0][0]  # (the same frames for every query)
        return video, [targets for _, targets, _ in items], [text_query for _, _, text_query in items]


def build(image_set: str, config, transforms: VideoTransforms) -> A2DSentencesDataset:
    return A2DSentencesDataset(image_set, config.dataset_path, config.window_size, transforms, config.cache_dir,
                               coco_gt_path=config.dataset_coco_gt_format_path,
                               absent_samples=config.absent_referred_samples)

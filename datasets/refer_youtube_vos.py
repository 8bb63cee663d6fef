"""Refer-YouTube-VOS: YouTube-VOS videos with referring expressions; masks of every object on every 5th frame.

Training samples are windows of `window_size` annotated frames per expression. Evaluation (the 'valid' split,
scored by the competition server) takes each (video, expression) whole, and returns with each sample the
metadata the post-processing and the submission need; `ReferYouTubeVOSEvaluator` writes the predicted masks and
the submission zip.
"""
import json
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from models.postprocessing import ReferYoutubeVOSPostProcess, referred_query_outputs
from utils import all_gather_lists, is_main_process, safe_name, writing
from .a2d_sentences import normalize_query
from .evaluator import Evaluator
from .files import (cache_path, check_row_count, file_digest, load_or_build_json, require_dataset_root,
                    require_path, stat_fingerprint)
from .transforms import VideoTransforms, collate_videos, collate_whole_videos
from .video import window_layout

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


META_LAYOUT = ('{"videos": {<video>: {"expressions": {<exp_id>: {"exp": <text>, ...}}, "frames": [<frame>, ...]}}}, '
               'normally at <root>/meta_expressions/<split>/meta_expressions.json')


def read_meta_expressions(path) -> Dict[str, dict]:
    """The `videos` mapping of a meta_expressions.json, with an error naming the file and the video when it does
    not have that form, or when a video id, expression id or frame name (they become folder and file names) is not
    a plain name."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'meta expressions file not found: {path} (expected a JSON file {META_LAYOUT})')
    try:
        with open(path) as f:
            meta = json.load(f)
    except ValueError as e:
        raise ValueError(f'{path}: not valid JSON ({e}); expected {META_LAYOUT}') from e
    videos = meta.get('videos') if isinstance(meta, dict) else None
    if not isinstance(videos, dict):
        raise ValueError(f'{path}: no "videos" mapping at the top level (expected {META_LAYOUT})')
    for video_id, video in videos.items():
        if not isinstance(video, dict) or not isinstance(video.get('expressions'), dict) \
                or not isinstance(video.get('frames'), list) or not video['frames']:
            raise ValueError(f'{path}: video {video_id!r} needs an "expressions" mapping and a non-empty "frames" '
                             f'list (expected {META_LAYOUT})')
        safe_name(video_id, 'video id', path)
        for exp_id in video['expressions']:
            safe_name(exp_id, f'expression id of video {video_id}', path)
        for frame in video['frames']:
            safe_name(frame, f'frame name of video {video_id}', path)
    return videos


def windows_of(frames: List[str], window_size: int) -> List[List[str]]:
    """Non-overlapping windows (`datasets.video.window_layout`: the last one taken from the end); a video
    shorter than a window is padded with its last frame."""
    windows = [frames[w.start:w.end] for w in window_layout(len(frames), window_size)]
    if len(frames) < window_size:
        windows[0] = windows[0] + [frames[-1]] * (window_size - len(frames))
    return windows


def read_mask(path: Path) -> np.ndarray:
    """`[H, W]` object ids of a palette (or grayscale) annotation PNG."""
    try:
        image = Image.open(path)
        image.load()
    except OSError as e:
        raise RuntimeError(f'cannot read the mask {path}: {e}') from e
    if image.mode not in ('P', 'L'):
        raise ValueError(f'{path}: expected a palette PNG whose pixel values are object ids, got mode {image.mode}')
    return np.array(image)


def object_ids(mask: np.ndarray) -> set:
    return set(np.flatnonzero(np.bincount(mask.ravel())).tolist()) - {0}


def read_frame(path: Path) -> Image.Image:
    try:
        return Image.open(path).convert('RGB')
    except OSError as e:
        raise RuntimeError(f'cannot read the frame {path}: {e}') from e


def whole_video_item(frames_dir: Path, video_id: str, frame_names: List[str], expressions, transforms):
    """An evaluation item: a whole video with all its expressions `[(exp_id, text query, {more metadata}), ...]`,
    as `(frames [T, 3, H, W], [[None] * T per expression], [text queries], [metadata per expression])`; the
    metadata holds what the post-processing and the prediction files need."""
    frames = [read_frame(frames_dir / video_id / f'{frame}.jpg') for frame in frame_names]
    original_size = (frames[0].height, frames[0].width)
    video, _, _ = transforms(frames, [None] * len(frames), '')
    metadata = [{'video_id': video_id, 'exp_id': exp_id, **more, 'frame_indices': frame_names,
                 'original_frame_size': original_size, 'resized_frame_size': tuple(video.shape[-2:])}
                for exp_id, _, more in expressions]
    return video, [[None] * len(frames) for _ in expressions], [text for _, text, _ in expressions], metadata


class VideoExpressionsDataset(Dataset):
    """Videos with referring expressions (Refer-YouTube-VOS, MeViS): training samples are windows of one
    expression, `(video, [frames], exp_id, ...)`, made into items by `_train_item`; evaluation samples are whole
    videos with all their expressions, `(video, [frames], [(exp_id, text query)])`."""
    image_set: str
    samples: list
    frames_dir: Path
    transforms: VideoTransforms

    def __len__(self):
        return len(self.samples)

    def describe(self, idx) -> str:
        """Which sample item `idx` is, for error messages."""
        if self.image_set == 'train':
            video_id, window, exp_id = self.samples[idx][:3]
            return f'video {video_id}, expression {exp_id}, frames {window[0]}-{window[-1]}'
        return f'video {self.samples[idx][0]}'

    def __getitem__(self, idx):
        if self.image_set == 'train':
            return self._train_item(*self.samples[idx])
        video_id, frame_names, expressions = self.samples[idx]
        return whole_video_item(self.frames_dir, video_id, frame_names,
                                [(exp_id, text, {}) for exp_id, text in expressions], self.transforms)

    def _train_item(self, *sample):
        raise NotImplementedError


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
                raise FileNotFoundError(f'mask {e.filename} not found (a frame listed in {meta_path})\n'
                                        f'Expected layout:\n{LAYOUT}') from e
            samples_cache = cache_path(cache_dir, 'ref_youtube_vos', f'samples_train_ws{window_size}',
                                       dataset_path=str(self.root.resolve()), window_size=window_size,
                                       meta=file_digest(meta_path), masks=masks_fingerprint)
            self.samples = [tuple(s) for s in load_or_build_json(
                samples_cache, lambda: self._build_train_samples(videos, meta_path),
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
            ids_path = require_path(Path(valid_video_ids_path).expanduser(), 'valid video ids (valid_video_ids_path)',
                                    'a text file with one valid video id a line')
            valid_ids = set(ids_path.read_text().split())
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

    def _build_train_samples(self, videos: Dict[str, dict], meta_path: Path) -> List[list]:
        samples, absent = [], 0
        for video_id, video in tqdm(videos.items(), desc='Refer-YouTube-VOS train samples',
                                    disable=not is_main_process()):
            ids_per_frame = {frame: object_ids(read_mask(self.masks_dir / video_id / f'{frame}.png'))
                             for frame in video['frames']}
            windows = windows_of(sorted(video['frames']), self.window_size)
            window_ids = [set().union(*(ids_per_frame[frame] for frame in window)) for window in windows]
            for exp_id, exp in video['expressions'].items():
                if 'obj_id' not in exp:
                    raise ValueError(f'{meta_path}: expression {exp_id} of video {video_id} has no obj_id')
                for window, ids in zip(windows, window_ids):
                    if int(exp['obj_id']) in ids:
                        samples.append([video_id, window, exp_id, int(exp['obj_id']), normalize_query(exp['exp'])])
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
    `best.pth.tar` follows the lowest mean training loss, as in the original.

    The object query is chosen on the mean over the expression's own frames. The original averaged over the
    batch's padded length, which differs only with `-ebs` above 1 and videos of different lengths (the paper
    evaluated with 1)."""
    best_metric = 'training loss'
    higher_is_better = False
    checkpoint_key = 'best_loss'

    def __init__(self, out_dir: Path, zip_path: Path):
        self.out_dir, self.zip_path = out_dir, zip_path
        self.postprocessor = ReferYoutubeVOSPostProcess()
        self.expressions = 0

    def update(self, batch, outputs):
        padded_size = batch['samples'].tensors.shape[-2:]
        for q, metadata in enumerate(batch['videos_metadata']):
            # the query's own frames: a shorter video of the batch was padded in time
            num_frames = len(metadata['frame_indices'])
            (prediction,) = self.postprocessor(referred_query_outputs(outputs, q, num_frames), [metadata], padded_size)
            masks = prediction['pred_masks'][:, 0].numpy() * 255  # [T, H0, W0] uint8
            # (the dataset checked these names; an evaluator may be handed other metadata)
            video_id, exp_id = (safe_name(str(metadata[key]), key, 'the sample metadata')
                                for key in ('video_id', 'exp_id'))
            expression_dir = self.out_dir / 'Annotations' / video_id / exp_id
            with writing(expression_dir, 'predictions folder'):
                expression_dir.mkdir(parents=True, exist_ok=True)
            for frame_name, mask in zip(metadata['frame_indices'], masks):
                path = expression_dir / f'{safe_name(frame_name, "frame name", "the sample metadata")}.png'
                with writing(path, 'predicted mask'):
                    try:
                        Image.fromarray(mask).save(path)
                    except BaseException:
                        path.unlink(missing_ok=True)  # no half-written mask (the folder is this evaluation's)
                        raise
            self.expressions += 1

    def summarize(self):
        expressions = sum(all_gather_lists([self.expressions]))  # also waits for every process's masks
        if not is_main_process():
            return None
        from .submission import write_submission_zip  # (which reads meta files with this module's reader)
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

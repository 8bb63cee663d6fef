"""Small fake datasets in the exact on-disk layouts of A2D-Sentences, JHMDB-Sentences and Refer-YouTube-VOS.

Every frame shows its own index as 8 black/white stripes in its top quarter (`index_frame`), which survive
video compression, JPEG and resizing, so a test can tell which frame a loader read (`frame_index`). Masks are
non-square rectangles that move with the frame, so a transposed or flipped mask does not go unnoticed.

    info = make_a2d_dataset(tmp_path / 'a2d')       # info.root, info.samples['train'], info.mask(...)
    info = make_jhmdb_dataset(tmp_path / 'jhmdb')
    info = make_ref_youtube_vos_dataset(tmp_path / 'ytvos')
"""
import csv
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import h5py
import numpy as np
import scipy.io
import torch
from PIL import Image

from config import Config
from datasets.video_files import write_mp4
from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD

FRAME_WIDTH, FRAME_HEIGHT = 96, 64
# resize sizes that keep the fake frames as they are
SMALL_FRAME_SIZES = dict(train_short_size=64, train_max_size=96, eval_short_size=64, eval_max_size=96)
CODE_BITS = 8


# --- frames that show their index ---------------------------------------------------------------------------

def dataset_config(dataset_name: str, root, cache_dir, **overrides) -> dict:
    """The config of a run on a fake dataset, as `build_dataset` takes it: small frames, no random flip."""
    values = dict(dataset_name=dataset_name, dataset_path=str(root), cache_dir=str(cache_dir),
                  horizontal_flip_augmentations=False, **SMALL_FRAME_SIZES)
    values.update(overrides)
    return Config(**values).to_dict()


def index_frame(index: int, width: int = FRAME_WIDTH, height: int = FRAME_HEIGHT) -> np.ndarray:
    """`[H, W, 3]` uint8: a colour gradient, with bit k of `index` as stripe k (white = 1) of the top quarter."""
    assert 0 <= index < 2 ** CODE_BITS
    ys, xs = np.mgrid[0:height, 0:width]
    frame = np.stack([xs * 255 // width, ys * 255 // height, np.full_like(xs, 96)], -1).astype(np.uint8)
    band = height // 4
    for k in range(CODE_BITS):
        frame[:band, k * width // CODE_BITS:(k + 1) * width // CODE_BITS] = 255 if (index >> k) & 1 else 0
    return frame


def frame_index(frame) -> int:
    """The index shown by a frame: a PIL image, an `[H, W, 3]` uint8 array or a normalised `[3, H, W]` tensor."""
    if isinstance(frame, torch.Tensor):
        mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
        frame = ((frame * std + mean).clamp(0, 1) * 255).permute(1, 2, 0).numpy()
    frame = np.asarray(frame, dtype=np.float64)
    height, width = frame.shape[:2]
    band = frame[1:max(height // 4 - 1, 2)]
    index = 0
    for k in range(CODE_BITS):
        centre = int((k + 0.5) * width / CODE_BITS)
        if band[:, centre - 1:centre + 2].mean() > 128:
            index |= 1 << k
    return index


def write_index_clip(path, num_frames: int, width: int = FRAME_WIDTH, height: int = FRAME_HEIGHT,
                     gop: Optional[int] = None, rate: int = 24):
    """An H.264 mp4 (with B-frames) whose frame i shows i. `gop`: key frame interval (None: x264's default)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(path, (index_frame(i, width, height) for i in range(num_frames)), rate=rate, gop=gop)


def rectangle_mask(frame: int, slot: int, width: int = FRAME_WIDTH, height: int = FRAME_HEIGHT) -> np.ndarray:
    """`[H, W]` bool: an 8x20 rectangle whose row depends on `slot` and column on `frame`."""
    mask = np.zeros((height, width), dtype=bool)
    top = (height // 4 + 2 + 9 * slot) % (height - 8)
    left = (3 * frame) % (width - 20)
    mask[top:top + 8, left:left + 20] = True
    return mask


@dataclass
class FakeDataset:
    root: Path
    samples: Dict[str, list] = field(default_factory=dict)  # image set -> the samples the loader should list
    num_frames: Dict[str, int] = field(default_factory=dict)  # video id -> frames
    mask: Optional[Callable] = None  # the mask written for a (video, frame, instance)


# --- A2D-Sentences ------------------------------------------------------------------------------------------

A2D_VIDEOS = {
    # video id: (subset, frames, {annotated frame (1-based): instance ids})
    'trainvid001': (0, 20, {1: [0, 1], 10: [0], 20: [0, 1]}),
    'trainvid002': (0, 12, {6: [3]}),
    'testvid0001': (1, 16, {4: [2, 5], 12: [5]}),
    'missedvid01': (1, 10, {5: [0]}),
}
A2D_ANNOTATIONS = [  # rows of a2d_annotation.txt
    ('trainvid001', '0', '  The Man on the LEFT  running'),
    ('trainvid001', '1', 'dog on the right'),
    ('trainvid002', '1 (copy)', 'bird standing in the beach'),
    ('trainvid002', '3', 'a bird flying'),
    ('testvid0001', '2', 'red car'),
    ('testvid0001', '5', 'blue car on the left'),
    ('missedvid01', '0', 'a missed video'),
]
A2D_MISSED = ['missedvid01']


def a2d_mask(video_id: str, frame: int, instance_id: int, width: int = FRAME_WIDTH,
             height: int = FRAME_HEIGHT) -> np.ndarray:
    return rectangle_mask(frame, instance_id % 4, width, height)


def write_a2d_h5(path, instance_ids: List[int], masks: np.ndarray):
    """An A2D frame annotation: `masks` `[N, H, W]` are stored transposed, `[W, H]` when N == 1."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stored = masks.astype(np.uint8).transpose(0, 2, 1)
    with h5py.File(path, 'w') as f:
        f['instance'] = np.asarray(instance_ids, dtype=np.float64)
        f['reMask'] = stored[0] if len(instance_ids) == 1 else stored
        f['reBBox'] = np.zeros((4, len(instance_ids)))


def make_a2d_dataset(root, video_folder: str = 'clips320H', gop: Optional[int] = 5, videos=None,
                     annotations=None, missed=None, write_clips: bool = True, width: int = FRAME_WIDTH,
                     height: int = FRAME_HEIGHT) -> FakeDataset:
    """A2D-Sentences layout under `root`. By default: 6 train samples (frames 1 and 20 of a 20-frame clip, to
    clamp windows at both ends), 3 test samples, a missed video, the '1 (copy)' row and queries to clean up."""
    root = Path(root)
    videos = A2D_VIDEOS if videos is None else videos
    annotations = A2D_ANNOTATIONS if annotations is None else annotations
    missed = A2D_MISSED if missed is None else missed
    release = root / 'Release'
    release.mkdir(parents=True, exist_ok=True)
    with open(release / 'videoset.csv', 'w', newline='') as f:
        for video_id, (subset, num_frames, annotated) in videos.items():
            csv.writer(f).writerow([video_id, 0, '00:00:00', '00:00:05', height, width, num_frames,
                                    len(annotated), subset])
    text_dir = root / 'text_annotations'
    text_dir.mkdir(exist_ok=True)
    with open(text_dir / 'a2d_annotation.txt', 'w', newline='') as f:
        writer = csv.writer(f, lineterminator='\n')
        writer.writerow(['video_id', 'instance_id', 'query'])
        writer.writerows(annotations)
    (text_dir / 'a2d_missed_videos.txt').write_text('\n'.join(missed))
    for video_id, (subset, num_frames, annotated) in videos.items():
        if write_clips:
            write_index_clip(release / video_folder / f'{video_id}.mp4', num_frames, width, height, gop=gop)
        for frame, instance_ids in annotated.items():
            write_a2d_h5(text_dir / 'a2d_annotation_with_instances' / video_id / f'{frame:05d}.h5', instance_ids,
                         np.stack([a2d_mask(video_id, frame, i, width, height) for i in instance_ids]))

    samples = {'train': [], 'test': []}
    for video_id, instance_id, query in annotations:
        if video_id in missed or instance_id == '1 (copy)' or video_id not in videos:
            continue
        subset, _, annotated = videos[video_id]
        for frame in sorted(annotated):
            if int(instance_id) in annotated[frame]:
                samples[['train', 'test'][subset]].append((' '.join(query.lower().split()), video_id, frame,
                                                           int(instance_id)))
    return FakeDataset(root, samples, {v: spec[1] for v, spec in videos.items()},
                       functools.partial(a2d_mask, width=width, height=height))


# --- JHMDB-Sentences ----------------------------------------------------------------------------------------

JHMDB_VIDEOS = {
    # video id: (action, frames on disk, masks, query)
    'brush_vid_1': ('brush_hair', 12, 10, 'Woman on the left brushing her hair'),
    'pullup_vid_2': ('pullup', 8, 8, '  man  pulling up'),
}


def jhmdb_mask(video_id: str, frame: int) -> np.ndarray:
    return rectangle_mask(frame, sorted(JHMDB_VIDEOS).index(video_id))


def make_jhmdb_dataset(root, videos=None) -> FakeDataset:
    """JHMDB-Sentences layout under `root`; a video may have more frames than masks (as in the real data)."""
    root = Path(root)
    videos = JHMDB_VIDEOS if videos is None else videos
    root.mkdir(parents=True, exist_ok=True)
    with open(root / 'jhmdb_annotation.txt', 'w', newline='') as f:
        writer = csv.writer(f, lineterminator='\n')
        writer.writerow(['video_id', 'query'])
        writer.writerows([(video_id, spec[3]) for video_id, spec in videos.items()])
    for video_id, (action, num_frames, num_masks, _) in videos.items():
        frames_dir = root / 'Rename_Images' / action / video_id
        frames_dir.mkdir(parents=True)
        for i in range(1, num_frames + 1):
            Image.fromarray(index_frame(i)).save(frames_dir / f'{i:05d}.png')
        masks_dir = root / 'puppet_mask' / action / video_id
        masks_dir.mkdir(parents=True)
        part_mask = np.stack([jhmdb_mask(video_id, i) for i in range(1, num_masks + 1)], -1).astype(np.uint8)
        scipy.io.savemat(masks_dir / 'puppet_mask.mat', {'part_mask': part_mask})
    return FakeDataset(root, num_frames={v: min(spec[1], spec[2]) for v, spec in videos.items()}, mask=jhmdb_mask)


def jhmdb_metadata_entry(video_id: str, frame: int, total_frames: int, query: str, videos=None) -> list:
    """One samples-metadata entry, paths written as in the paper's file."""
    action = (JHMDB_VIDEOS if videos is None else videos)[video_id][0]
    return [video_id, f'./jhmdb_sentences/Rename_Images/{action}/{video_id}/{frame:05d}.png',
            f'./jhmdb_sentences/puppet_mask/{action}/{video_id}/puppet_mask.mat', total_frames, query]


# --- Refer-YouTube-VOS --------------------------------------------------------------------------------------

YTVOS_TRAIN_VIDEOS = {
    # video id: (frames, {object id: frames (positions) where it is visible}, {exp id: (object id, text)})
    'trainvidA': (10, {1: range(10), 2: range(3), 3: [9]},
                  {'0': (1, 'the cat on the left'), '1': (2, 'a dog'), '2': (3, 'a ball')}),
    'trainvidB': (2, {1: range(2)}, {'0': (1, 'a person')}),
}
YTVOS_VALID_VIDEOS = {'validvidA': 5, 'validvidB': 3, 'testvidC': 4}  # video id: frames
YTVOS_TEST_VIDEOS = ['testvidC']


def ytvos_frame_names(num_frames: int) -> List[str]:
    return [f'{5 * i:05d}' for i in range(num_frames)]


def ytvos_mask(video_id: str, position: int, object_id: int) -> np.ndarray:
    return rectangle_mask(position, object_id)


def write_palette_png(path, object_ids: np.ndarray):
    image = Image.fromarray(object_ids.astype(np.uint8), mode='P')
    image.putpalette([0, 0, 0, 236, 95, 103, 249, 145, 87, 250, 200, 99] + [128] * (256 - 4) * 3)
    image.save(path)


def _write_frames(frames_dir: Path, num_frames: int):
    frames_dir.mkdir(parents=True)
    for position, name in enumerate(ytvos_frame_names(num_frames)):
        Image.fromarray(index_frame(position)).save(frames_dir / f'{name}.jpg', quality=95)


def make_ref_youtube_vos_dataset(root, train_videos=None, valid_videos=None, test_videos=None,
                                 write_test_meta: bool = True) -> FakeDataset:
    """Refer-YouTube-VOS layout under `root`: train (frames, palette masks, expressions with obj_id) and the
    valid split, whose expressions file also lists the test videos (as distributed)."""
    root = Path(root)
    train_videos = YTVOS_TRAIN_VIDEOS if train_videos is None else train_videos
    valid_videos = YTVOS_VALID_VIDEOS if valid_videos is None else valid_videos
    test_videos = YTVOS_TEST_VIDEOS if test_videos is None else test_videos
    train_meta = {}
    for video_id, (num_frames, visible, expressions) in train_videos.items():
        _write_frames(root / 'train' / 'JPEGImages' / video_id, num_frames)
        masks_dir = root / 'train' / 'Annotations' / video_id
        masks_dir.mkdir(parents=True)
        for position, name in enumerate(ytvos_frame_names(num_frames)):
            object_ids = np.zeros((FRAME_HEIGHT, FRAME_WIDTH), dtype=np.uint8)
            for object_id, positions in visible.items():
                if position in positions:
                    object_ids[ytvos_mask(video_id, position, object_id)] = object_id
            write_palette_png(masks_dir / f'{name}.png', object_ids)
        train_meta[video_id] = {'expressions': {e: {'exp': text, 'obj_id': str(o)}
                                                for e, (o, text) in expressions.items()},
                                'frames': ytvos_frame_names(num_frames)}
    valid_meta = {}
    for video_id, num_frames in valid_videos.items():
        _write_frames(root / 'valid' / 'JPEGImages' / video_id, num_frames)
        valid_meta[video_id] = {'expressions': {'0': {'exp': f'the thing in {video_id}'},
                                                '1': {'exp': 'a Second  expression'}},
                                'frames': ytvos_frame_names(num_frames)}
    splits = {'train': train_meta, 'valid': valid_meta}
    if write_test_meta:
        splits['test'] = {v: valid_meta[v] for v in test_videos}
    for split, meta in splits.items():
        (root / 'meta_expressions' / split).mkdir(parents=True)
        (root / 'meta_expressions' / split / 'meta_expressions.json').write_text(json.dumps({'videos': meta}))
    return FakeDataset(root, num_frames={**{v: s[0] for v, s in train_videos.items()}, **valid_videos},
                       mask=ytvos_mask)


def square_video_item(index: int, image_set: str, size: int = 32):
    """A made-up dataset's item: 4 frames with a white square whose place depends on `index`, query 'the square',
    the middle frame annotated (tests registering their own dataset: test_extending, test_resume_and_workers)."""
    mask = torch.zeros(size, size, dtype=torch.bool)
    top = 4 + 3 * (index % 5)
    mask[top:top + 10, 8:20] = True
    video = mask.float()[None, None].expand(4, 3, size, size).clone()  # [T, 3, H, W]
    target = {'masks': mask[None], 'referred_instance_idx': torch.tensor(0), 'size': torch.tensor([size, size]),
              'orig_size': (size, size), 'image_id': f'{image_set}_{index}'}
    return video, [None, None, target, None], 'the square'

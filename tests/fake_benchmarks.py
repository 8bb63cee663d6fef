"""Small fake Ref-DAVIS17 and MeViS datasets in the real layouts, with real video ids, frame names and expressions
(from `../shared/data/real`), and frames and masks made here.

Frames show their index (`fake_datasets.index_frame`); objects are the moving rectangles of
`fake_datasets.rectangle_mask`, one row (slot) per object, so the expected masks are known by construction.

    info = make_ref_davis17_dataset(tmp_path / 'ref_davis17', shared_dir)
    info = make_mevis_dataset(tmp_path / 'mevis', shared_dir)
    split_dir = write_mevis_split(tmp_path / 'mevis', 'valid_u', videos)   # hand-made, no real data needed
"""
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as coco_mask

from datasets.ref_davis17 import DAVIS_PALETTE, EXPRESSION_SETS
from tests.fake_datasets import FRAME_HEIGHT, FRAME_WIDTH, index_frame, rectangle_mask

DAVIS_RECORDS = 'data/real/ref_davis17/valid_samples_metadata.json'
MEVIS_VALID_CHUNKS = 'data/real/mevis/valid_samples_metadata.json'
# Train videos of the text files, under the misspelt names the real files use.
DAVIS_TRAIN_LINES = [('clasic-car', 1, 'a grey classic car'), ('dog-scale', 2, 'a small dog on the scale')]


@dataclass
class FakeBenchmark:
    root: Path
    videos: Dict[str, dict] = field(default_factory=dict)  # split -> video -> what was written


def write_frames(video_dir: Path, frame_names: List[str]):
    video_dir.mkdir(parents=True, exist_ok=True)
    for position, name in enumerate(frame_names):
        Image.fromarray(index_frame(position)).save(video_dir / f'{name}.jpg', quality=95)


def aligned_mask(position: int, slot: int, width: int = FRAME_WIDTH, height: int = FRAME_HEIGHT) -> np.ndarray:
    """`[H, W]` bool: a mask the network's quarter-resolution output can draw exactly: a 2x5 box of quarter-
    resolution cells (row by `slot`, column by `position`), upsampled bilinearly as the post-processing does and
    thresholded (an 8x20 rectangle with its corner pixels cut). `outputs_drawing` recovers the cells."""
    cells = torch.full((height // 4, width // 4), -20.0)
    top, left = 2 + 4 * slot, position % (width // 4 - 5)
    cells[top:top + 2, left:left + 5] = 20.0
    upsampled = torch.nn.functional.interpolate(cells[None, None], size=(height, width), mode='bilinear',
                                                align_corners=False)
    return (upsampled[0, 0] > 0).numpy()


def read_davis_records(shared_dir) -> List[list]:
    return json.loads((Path(shared_dir) / DAVIS_RECORDS).read_text())


def make_ref_davis17_dataset(root, shared_dir, videos=('dogs-jump', 'judo'), num_frames: int = 4,
                             void_ring: bool = True, mask=rectangle_mask) -> FakeBenchmark:
    """DAVIS/ and davis_text_annotations/ under `root`: the four text files hold every real val expression (the
    annotator-2 files in Latin-1) plus train lines under misspelt names; val.txt lists `videos`, each with its real
    first `num_frames` frame names. Ground truth (`Annotations_unsupervised/480p`): object k of a video, in id
    order, is `mask(position, k - 1)` (a rectangle), with a void (255) ring around object 1 when `void_ring`."""
    root = Path(root)
    records = read_davis_records(shared_dir)
    text_dir = root / 'davis_text_annotations'
    text_dir.mkdir(parents=True)
    lines = [[f'{video} {object_id} "{text}"' for video, object_id, text in DAVIS_TRAIN_LINES] for _ in EXPRESSION_SETS]
    for video, _, meta in records:
        lines[int(meta['exp_id']) % 4].append(f'{video} {meta["obj_id"]} "{meta["exp"]}"')
    for (name, encoding), set_lines in zip(EXPRESSION_SETS, lines):
        (text_dir / name).write_bytes(''.join(f'{line}\n' for line in set_lines).encode(encoding))
    image_sets = root / 'DAVIS' / 'ImageSets' / '2017'
    image_sets.mkdir(parents=True)
    (image_sets / 'val.txt').write_text(''.join(f'{video}\n' for video in videos))
    info = FakeBenchmark(root, {'val': OrderedDict()})
    for video in videos:
        frame_names = next(frames for name, frames, _ in records if name == video)[:num_frames]
        object_ids = sorted({int(meta['obj_id']) for name, _, meta in records if name == video})
        write_frames(root / 'DAVIS' / 'JPEGImages' / '480p' / video, frame_names)
        gt_dir = root / 'DAVIS' / 'Annotations_unsupervised' / '480p' / video
        gt_dir.mkdir(parents=True)
        for position, frame in enumerate(frame_names):
            labels = np.zeros((FRAME_HEIGHT, FRAME_WIDTH), dtype=np.uint8)
            for label in range(1, len(object_ids) + 1):
                labels[mask(position, label - 1)] = label
            if void_ring:
                inner = mask(position, 0)
                ring = np.zeros_like(inner)
                ring[1:-1, 1:-1] = inner[:-2, 1:-1] | inner[2:, 1:-1] | inner[1:-1, :-2] | inner[1:-1, 2:]
                labels[ring & ~inner] = 255
            image = Image.fromarray(labels)
            image.putpalette(DAVIS_PALETTE)
            image.save(gt_dir / f'{frame}.png')
        info.videos['val'][video] = {'frames': frame_names, 'objects': len(object_ids)}
    return info


# --- MeViS -------------------------------------------------------------------------------------------------------

def read_mevis_valid(shared_dir) -> 'OrderedDict[str, dict]':
    """The real valid split: video -> {'frames', 'expressions': {exp_id: {'exp'}}}, from the chunk records."""
    videos = OrderedDict()
    for video, frames, meta in json.loads((Path(shared_dir) / MEVIS_VALID_CHUNKS).read_text()):
        entry = videos.setdefault(video, {'frames': [], 'expressions': OrderedDict()})
        expression = entry['expressions'].setdefault(meta['exp_id'], {'exp': meta['exp'], 'frames': []})
        expression['frames'] += frames
    for entry in videos.values():
        entry['frames'] = next(iter(entry['expressions'].values()))['frames']
        for expression in entry['expressions'].values():
            del expression['frames']
    return videos


def rle(mask: np.ndarray) -> dict:
    encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    encoded['counts'] = encoded['counts'].decode('ascii')
    return encoded


# Annotated splits: per video, objects (anno_id -> slot and the frame positions where it is visible) and
# expressions (their objects). Video ids and texts are real valid ones (the real train/valid_u files are not here).
MEVIS_ANNOTATED = {
    'train': {'objects': {0: (0, range(6)), 1: (1, range(3)), 2: (2, [5])},
              'expressions': [[0], [0, 1], [2]]},
    'valid_u': {'objects': {0: (0, range(4)), 1: (1, [0, 1])},
                'expressions': [[0], [1], [0, 1]]},
}


def make_mevis_dataset(root, shared_dir, num_videos: int = 2, expressions_per_video: int = 3,
                       frames: Dict[str, int] = None, mask=rectangle_mask) -> FakeBenchmark:
    """train/, valid_u/ and valid/ under `root`. valid: the first `num_videos` real valid videos with their first
    `expressions_per_video` real expressions (texts and ids) and first frames. train and valid_u: the same videos
    and texts, with the objects of `MEVIS_ANNOTATED` as mask_dict.json RLEs (null where an object is absent);
    anno_ids are distinct across videos; object masks are `mask(position, slot)`."""
    root = Path(root)
    frames = frames or {'train': 6, 'valid_u': 4, 'valid': 3}
    real = list(read_mevis_valid(shared_dir).items())[:num_videos]
    info = FakeBenchmark(root, {split: OrderedDict() for split in frames})
    for split, num_frames in frames.items():
        meta, mask_dict = {}, {}
        for v, (video, entry) in enumerate(real):
            frame_names = entry['frames'][:num_frames]
            write_frames(root / split / 'JPEGImages' / video, frame_names)
            texts = list(entry['expressions'].items())[:expressions_per_video]
            if split == 'valid':
                expressions = {exp_id: {'exp': expression['exp']} for exp_id, expression in texts}
                masks = {}
            else:
                spec = MEVIS_ANNOTATED[split]
                anno_id = {obj: 100 * (v + 1) + obj for obj in spec['objects']}
                masks = {anno_id[obj]: [mask(position, slot) if position in visible else None
                                        for position in range(num_frames)]
                         for obj, (slot, visible) in spec['objects'].items()}
                mask_dict.update({str(a): [None if m is None else rle(m) for m in per_frame]
                                  for a, per_frame in masks.items()})
                expressions = {exp_id: {'exp': expression['exp'], 'obj_id': objects,
                                        'anno_id': [anno_id[obj] for obj in objects]}
                               for (exp_id, expression), objects in zip(texts, spec['expressions'])}
            meta[video] = {'frames': frame_names, 'expressions': expressions}
            info.videos[split][video] = {'frames': frame_names, 'expressions': expressions, 'masks': masks}
        (root / split / 'meta_expressions.json').write_text(json.dumps({'videos': meta}))
        if split != 'valid':
            (root / split / 'mask_dict.json').write_text(json.dumps(mask_dict))
    return info


def write_mevis_split(root, split: str, videos: Dict[str, dict]) -> Path:
    """One MeViS split, `<root>/<split>/`, from a hand-made description, for cases whose scores are worked out by
    hand: `videos[video] = {'frames': [frame names], 'objects': {anno_id: [[H, W] bool mask or None per frame]},
    'expressions': {exp_id: (text, [anno_ids])}}`. Frames are index frames of the masks' size (FRAME_HEIGHT x
    FRAME_WIDTH without objects); mask_dict.json holds the objects as RLEs (the valid split has none, and its
    expressions no ids). Returns the split's folder."""
    split_dir = Path(root) / split
    meta, mask_dict = {}, {}
    for video, entry in videos.items():
        objects = entry.get('objects', {})
        masks = [mask for per_frame in objects.values() for mask in per_frame if mask is not None]
        height, width = masks[0].shape if masks else (FRAME_HEIGHT, FRAME_WIDTH)
        video_dir = split_dir / 'JPEGImages' / video
        video_dir.mkdir(parents=True)
        for position, name in enumerate(entry['frames']):
            Image.fromarray(index_frame(position, width, height)).save(video_dir / f'{name}.jpg', quality=95)
        mask_dict.update({str(anno_id): [None if mask is None else rle(mask) for mask in per_frame]
                          for anno_id, per_frame in objects.items()})
        meta[video] = {'frames': list(entry['frames']), 'expressions': {
            exp_id: {'exp': text} if split == 'valid' else
            {'exp': text, 'obj_id': list(range(len(anno_ids))), 'anno_id': list(anno_ids)}
            for exp_id, (text, anno_ids) in entry['expressions'].items()}}
    (split_dir / 'meta_expressions.json').write_text(json.dumps({'videos': meta}))
    if split != 'valid':
        (split_dir / 'mask_dict.json').write_text(json.dumps(mask_dict))
    return split_dir


def mevis_target(info: FakeBenchmark, split: str, video: str, exp_id: str) -> np.ndarray:
    """`[T, H, W]` bool: the union of the expression's objects, by construction."""
    entry = info.videos[split][video]
    target = np.zeros((len(entry['frames']), FRAME_HEIGHT, FRAME_WIDTH), dtype=bool)
    for anno_id in entry['expressions'][exp_id]['anno_id']:
        for t, mask in enumerate(entry['masks'][anno_id]):
            if mask is not None:
                target[t] |= mask
    return target


# --- network outputs ----------------------------------------------------------------------------------------------

def outputs_drawing(batch, masks_of_query, num_object_queries: int = 4, chosen: int = 2):
    """Network outputs for an evaluation batch (see `transforms.collate_videos`) in which, for text query q, object
    query `chosen` is the referred one and draws `masks_of_query(q, metadata)` (`[T, H, W]` bool at the padded
    input size, on the 4-pixel grid; None: nothing), every other object query draws nothing.

    Returns {'pred_masks' [T, Q, N, H/4, W/4], 'pred_is_referred' [T, Q, N, 2]} as `model.segment` does. A cell
    is on where the pixel at offset (1, 1) of its 4x4 block is (which, for `aligned_mask`'s shapes, gives back the
    cells they were drawn from)."""
    num_frames, _, _, height, width = batch['samples'].tensors.shape
    num_queries = len(batch['text_queries'])
    pred_masks = torch.full((num_frames, num_queries, num_object_queries, height // 4, width // 4), -20.0)
    pred_is_referred = torch.zeros(num_frames, num_queries, num_object_queries, 2)
    pred_is_referred[:, :, chosen, 0] = 5.0
    for q, metadata in enumerate(batch['videos_metadata']):
        masks = masks_of_query(q, metadata)
        if masks is not None:
            masks = torch.as_tensor(np.asarray(masks))
            pred_masks[:len(masks), q, chosen] = torch.where(masks[:, 1::4, 1::4], 20.0, -20.0)
    return {'pred_masks': pred_masks, 'pred_is_referred': pred_is_referred}

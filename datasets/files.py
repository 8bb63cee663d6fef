"""The datasets' files on disk: expected-path checks, row-count warnings and the cache of derived files.

Derived files (sample lists, COCO-format ground truth) are built once and kept under the configured cache
directory, never inside the source tree. A cache file's name carries a key made of the dataset path, the
split and a fingerprint of every source file it was built from, so a cache built from other data is never
found, let alone reused.
"""
import hashlib
import json
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, List, Tuple

import numpy as np
import torch.distributed as dist
from pycocotools import mask as coco_mask

from utils import atomic_write, cache_dir, is_dist_avail_and_initialized, is_main_process

# Bump when the content of a cached file changes, so older caches are not picked up.
CACHE_FORMAT_VERSION = 1


class SubsetWarning(UserWarning):
    """A dataset file holds another number of rows than the full dataset (fine when working on a subset)."""


def require_dataset_root(root: Path, dataset_name: str, layout: str) -> Path:
    if not root.is_dir():
        raise FileNotFoundError(f'{dataset_name}: dataset root not found: {root} (config key dataset_path). '
                                f'Expected layout:\n{layout}')
    return root


def require_path(path: Path, what: str, layout: str) -> Path:
    """Raise a FileNotFoundError naming `path` and showing the expected layout when `path` does not exist."""
    if not path.exists():
        raise FileNotFoundError(f'{what} not found: {path}\nExpected layout:\n{layout}')
    return path


def raise_if_missing(missing: List[Path], what: str, layout: str):
    """One error for all missing files of a kind: how many, and the first few paths."""
    if missing:
        shown = '\n  '.join(str(p) for p in missing[:5])
        more = f'\n  ... and {len(missing) - 5} more' if len(missing) > 5 else ''
        raise FileNotFoundError(f'{len(missing)} {what} not found:\n  {shown}{more}\nExpected layout:\n{layout}')


def check_row_count(path: Path, found: int, expected: int, what: str = 'rows'):
    if found != expected:
        warnings.warn(f'{path}: found {found} {what}, the full dataset has {expected}; continuing with what '
                      f'was found (a subset of the dataset?)', SubsetWarning, stacklevel=2)


def file_digest(path: Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def stat_fingerprint(paths: Iterable[Path], root: Path) -> str:
    """A digest of the names, sizes and modification times of many (large or numerous) files."""
    digest = hashlib.sha1()
    for p in paths:
        st = os.stat(p)
        digest.update(f'{Path(p).relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n'.encode())
    return digest.hexdigest()


def cache_path(configured_cache_dir: str, dataset_name: str, kind: str, **key_parts) -> Path:
    """`<cache_dir>/<dataset_name>/<kind>_<key>.json`, the key hashing `key_parts` (paths, split, fingerprints)."""
    key_parts['format_version'] = CACHE_FORMAT_VERSION
    key = hashlib.sha1(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir(configured_cache_dir) / dataset_name / f'{kind}_{key}.json'


def load_or_build_json(path: Path, build: Callable[[], object], description: str):
    """Read the JSON file `path`, building it first with `build()` when it does not exist.

    Under torch.distributed only rank 0 builds; the other ranks wait at a barrier and then read it.
    """
    path = Path(path)
    if is_main_process() and not path.exists():
        print(f'building {description} (cached in {path})')
        data = build()
        atomic_write(path, lambda f: json.dump(data, f), mode='w')
    if is_dist_avail_and_initialized():
        dist.barrier()
    with open(path) as f:
        return json.load(f)


def coco_ground_truth(images: Iterable[Tuple[str, np.ndarray]]) -> dict:
    """COCO-format ground truth with one image and one annotation per `(image_id, [H, W] mask)`.

    pycocotools expects annotation and category ids counted from 1; the single category is a dummy one, as
    referring segmentation predicts no categories.
    """
    coco_images, annotations = [], []
    for ann_id, (image_id, mask) in enumerate(images, start=1):
        rle = coco_mask.encode(np.asfortranarray(mask != 0, dtype=np.uint8))
        rle['counts'] = rle['counts'].decode('ascii')
        coco_images.append({'id': image_id, 'height': int(mask.shape[0]), 'width': int(mask.shape[1])})
        annotations.append({'id': ann_id, 'image_id': image_id, 'category_id': 1, 'segmentation': rle,
                            'area': float(coco_mask.area(rle)), 'bbox': coco_mask.toBbox(rle).tolist(),
                            'iscrowd': 0})
    duplicates = [i for i, n in Counter(im['id'] for im in coco_images).items() if n > 1]
    if duplicates:
        raise ValueError(f'{len(duplicates)} image ids appear more than once in the ground truth, '
                         f'e.g. {duplicates[:5]}')
    return {'images': coco_images, 'annotations': annotations, 'categories': [{'id': 1, 'name': 'dummy_class'}]}

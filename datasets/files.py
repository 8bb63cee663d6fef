"""The datasets' files on disk: expected-path checks, reading text and JSON inputs, row-count warnings and the
cache of derived files.

A missing file or folder is a `DatasetLayoutError`, whose message is one line and whose `layout` is the tree the
dataset expects. Text inputs are UTF-8 and JSON inputs hold each key of an object once; anything else is an error
naming the file (`read_text`, `read_json`).

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

from utils import (WriteError, cache_dir, file_in_the_way, is_dist_avail_and_initialized, is_main_process,
                   write_json)

# Bump when the content of a cached file changes, so older caches are not picked up.
CACHE_FORMAT_VERSION = 1


class SubsetWarning(UserWarning):
    """A dataset file holds another number of rows than the full dataset (fine when working on a subset)."""


class DatasetLayoutError(FileNotFoundError):
    """A file or folder a dataset needs is missing. `str()` is one line naming it; `layout` holds the tree of the
    dataset's expected layout, which the command-line programs print before that line."""

    def __init__(self, message: str, layout: str):
        super().__init__(f'{message} (the expected layout is printed above)')
        self.message, self.layout = message, layout

    def __reduce__(self):  # (the default would call __init__ with the one line only)
        return type(self), (self.message, self.layout)


def require_dataset_root(root: Path, dataset_name: str, layout: str) -> Path:
    if not root.is_dir():
        raise DatasetLayoutError(f'{dataset_name}: dataset root not found: {root} (config key dataset_path)', layout)
    return root


def require_path(path: Path, what: str, layout: str) -> Path:
    """`path`, or a DatasetLayoutError naming it when it does not exist."""
    if not path.exists():
        raise DatasetLayoutError(f'{what} not found: {path}', layout)
    return path


def require_file(path: Path, what: str, expected: str) -> Path:
    """`path`, or a FileNotFoundError naming it and the `expected` content when it is not a file (for files that
    sit outside a dataset's layout, such as those a config key names)."""
    if not path.is_file():
        raise FileNotFoundError(f'{what} not found: {path} (expected {expected})')
    return path


def raise_if_missing(missing: List[Path], what: str, layout: str):
    """One error for all missing files of a kind: how many, and the first few paths."""
    if missing:
        shown = ', '.join(str(p) for p in missing[:3])
        more = f' and {len(missing) - 3} more' if len(missing) > 3 else ''
        raise DatasetLayoutError(f'{len(missing)} {what} not found: {shown}{more}', layout)


def read_text(path: Path, expected: str) -> str:
    """The UTF-8 text of `path`; a ValueError naming the file, the line and the byte when it is not UTF-8."""
    data = Path(path).read_bytes()
    try:
        return data.decode('utf-8')
    except UnicodeDecodeError as error:
        line = data.count(b'\n', 0, error.start) + 1
        raise ValueError(f'{path}, line {line}: not UTF-8 text ({error.reason}: byte 0x{data[error.start]:02x} at '
                         f'offset {error.start}); expected {expected}') from None


class DuplicateKeyError(ValueError):
    """A JSON object of `path` holds `key` twice; `location` lists the keys (and list indices) leading to it."""

    def __init__(self, path, key: str, location: list):
        where = ' > '.join(f'[{part}]' if isinstance(part, int) else part for part in location) \
            or 'the top-level object'
        super().__init__(f'{path}: key {key!r} appears twice in {where} (each key may appear once: the second '
                         'value would silently replace the first)')
        self.path, self.key, self.location = path, key, location

    def __reduce__(self):  # (the default would call __init__ with the message only)
        return type(self), (self.path, self.key, self.location)


def read_json(path: Path, expected: str):
    """The JSON content of `path`, read as UTF-8 (`read_text`); malformed JSON is a ValueError naming the file and
    `expected`, and a key repeated within an object a DuplicateKeyError (where `json.load` would keep the last
    value without a word)."""
    text = read_text(path, expected)
    repeated = []  # (the object, its first repeated key); located only when there is one

    def object_noting_repeats(pairs):
        obj = dict(pairs)
        if len(obj) != len(pairs):
            keys = [key for key, _ in pairs]
            repeated.append((obj, next(key for i, key in enumerate(keys) if key in keys[:i])))
        return obj
    try:
        content = json.loads(text, object_pairs_hook=object_noting_repeats)
    except ValueError as error:
        raise ValueError(f'{path}: not valid JSON ({error}); expected {expected}') from None
    if repeated:
        obj, key = repeated[0]
        raise DuplicateKeyError(path, key, _location(content, obj))
    return content


def _location(content, target) -> list:
    """The keys and indices leading from `content` to the object `target` (found by identity)."""
    stack = [(content, [])]
    while stack:
        node, location = stack.pop()
        if node is target:
            return location
        children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        stack += [(child, location + [key]) for key, child in children if isinstance(child, (dict, list))]
    return []


def check_output_file(path, what: str) -> Path:
    """`path`, or a WriteError naming it when no file can be created there: it is a folder or lies below a file
    (checked before the work whose result it is to receive)."""
    path = Path(path)
    if path.is_dir():
        raise WriteError(f'cannot write the {what} {path}: it is a folder; expected a file name')
    blocking = file_in_the_way(path)
    if blocking is not None:
        raise WriteError(f'cannot write the {what} {path}: {blocking} is a file, not a folder')
    return path


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
        # (a full disk leaves no half-written file: the next run builds it again)
        write_json(path, data, 'cache file')
    if is_dist_avail_and_initialized():
        dist.barrier()
    return read_json(path, f'{description} in JSON')


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

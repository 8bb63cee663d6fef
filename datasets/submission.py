"""Refer-YouTube-VOS submissions: writing the zip the competition server expects and checking one before upload.

The server expects `Annotations/<video>/<exp_id>/<frame>.png`, one single-channel 0/255 mask per frame listed in
`meta_expressions/valid/meta_expressions.json`, at the size of the frame. `PredictionMasks` reads masks in that
layout from a folder or a zip (also for local scoring, tools/evaluate_jf.py); `mask_problem` is the check of one
mask, which MeViS's zip check uses too.
"""
import io
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from utils import atomic_write, error_message, safe_name, writing
from .video_expressions import read_meta_expressions

ANNOTATIONS_DIR = 'Annotations'


def expected_mask_names(videos: Dict[str, dict]) -> List[str]:
    """`<video>/<exp_id>/<frame>.png` for every video, expression and frame of a meta `videos` mapping."""
    return [f'{video}/{exp_id}/{frame}.png'
            for video, entry in videos.items() for exp_id in entry['expressions'] for frame in entry['frames']]


class PredictionMasks:
    """Read access to predicted masks named `<video>/<exp_id>/<frame>.png`, stored in a folder (either the
    `Annotations` folder itself or a folder holding it) or in a submission zip (entries under `Annotations/`).

    `names` holds every mask found; `layout_problems` lists what does not fit the layout (a zip without the
    `Annotations/` prefix, files at another depth, names such as `..`). A missing path, or a file that is not a
    zip, raises an error naming it.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.layout_problems: List[str] = []
        self._zip: Optional[zipfile.ZipFile] = None
        self.is_zip = False
        if self.path.is_dir():
            nested = self.path / ANNOTATIONS_DIR
            self._root = nested if nested.is_dir() else self.path
            self.names: Set[str] = {p.relative_to(self._root).as_posix() for p in self._root.glob('*/*/*.png')
                                    if p.is_file()}
        elif self.path.is_file():
            try:
                self._zip = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError) as error:
                raise ValueError(f'{self.path} is not a readable zip file ({error_message(error)}); expected a folder '
                                 f'or a zip holding {ANNOTATIONS_DIR}/<video>/<exp_id>/<frame>.png') from error
            self.is_zip = True
            self._prefix, self.names = self._zip_names(self._zip.namelist())
            self._zip_videos = {entry[len(self._prefix):].split('/', 1)[0] for entry in self._zip.namelist()
                                if entry.startswith(self._prefix) and '/' in entry[len(self._prefix):]}
        else:
            raise FileNotFoundError(f'predictions not found: {self.path} (expected a folder or a zip holding '
                                    f'{ANNOTATIONS_DIR}/<video>/<exp_id>/<frame>.png)')

    def _zip_names(self, entries):
        files = [e for e in entries if not e.endswith('/')]
        prefix = f'{ANNOTATIONS_DIR}/'
        if not any(e.startswith(prefix) for e in files):
            if files:
                self.layout_problems.append(f'no entry lies under {prefix} (first entry: {files[0]!r}); the server '
                                            f'expects {prefix}<video>/<exp_id>/<frame>.png')
            prefix = ''
        names = set()
        for entry in files:
            relative = entry[len(prefix):] if entry.startswith(prefix) else None
            if relative is not None and relative.endswith('.png') and relative.count('/') == 2:
                try:
                    for part in relative.split('/'):
                        safe_name(part, 'name part', f'zip entry {entry!r}')
                except ValueError as error:
                    self.layout_problems.append(str(error))
                    continue
                names.add(relative)
            else:
                self.layout_problems.append(f'unexpected zip entry {entry!r}')
        return prefix, names

    def has_video(self, video: str) -> bool:
        """Whether the predictions hold the video's folder (in a zip: any entry below `<video>/`), even without
        a mask in it."""
        if self._zip is not None:
            return video in self._zip_videos
        return (self._root / video).exists()

    def open(self, name: str) -> Image.Image:
        """The PNG `<video>/<exp_id>/<frame>.png`, loaded; a ValueError names the file (or zip member) that
        cannot be read as an image."""
        if self._zip is not None:
            where = f'{self.path}, member {self._prefix + name}'
        else:
            where = str(self._root / name)
        try:
            if self._zip is not None:
                image = Image.open(io.BytesIO(self._zip.read(self._prefix + name)))
            else:
                image = Image.open(self._root / name)
            image.load()
        except UnidentifiedImageError as error:  # (its message names the in-memory file, not the member)
            raise ValueError(f'{where}: not a readable PNG (UnidentifiedImageError: not an image format PIL '
                             'knows)') from error
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
            raise ValueError(f'{where}: not a readable PNG ({type(error).__name__}: {error_message(error)})') from error
        return image

    def close(self):
        if self._zip is not None:
            self._zip.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_submission_zip(predictions_dir, zip_path, archive_dir: Optional[str] = ANNOTATIONS_DIR) -> Path:
    """Zip the masks `<predictions_dir>[/Annotations]/<video>/<exp_id>/<frame>.png` as
    `<archive_dir>/<video>/<exp_id>/<frame>.png` (Refer-YouTube-VOS's server expects `Annotations/`; None puts the
    video folders at the zip's root, as MeViS's server expects). Returns the zip path.

    The zip is written beside its final path and renamed into place, so an interrupted run leaves no
    half-written submission behind.
    """
    predictions_dir = Path(predictions_dir)
    if not predictions_dir.is_dir():
        raise FileNotFoundError(f'predictions folder not found: {predictions_dir}')
    nested = predictions_dir / ANNOTATIONS_DIR
    root = nested if nested.is_dir() else predictions_dir
    masks = sorted(p for p in root.glob('*/*/*.png') if p.is_file())
    if not masks:
        raise FileNotFoundError(f'no masks in {root} (expected {predictions_dir}/[{ANNOTATIONS_DIR}/]'
                                '<video>/<exp_id>/<frame>.png)')
    prefix = f'{archive_dir}/' if archive_dir else ''

    def write(f):
        with zipfile.ZipFile(f, 'w', zipfile.ZIP_DEFLATED) as archive:
            for mask in masks:
                archive.write(mask, f'{prefix}{mask.relative_to(root).as_posix()}')

    with writing(zip_path, 'submission zip'):
        atomic_write(zip_path, write)
    return Path(zip_path)


@dataclass
class SubmissionCheck:
    """What `check_submission_zip` found. The zip is fit for upload when `ok`."""
    zip_path: str
    num_expected: int
    num_excluded_videos: int = 0
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.problems

    def summary(self, max_names: int = 10) -> str:
        lines = [f'{self.zip_path}: {"OK" if self.ok else "NOT READY"} '
                 f'({self.num_expected} masks expected, {self.num_excluded_videos} test videos left out)']
        for title, names in (('missing masks', self.missing), ('problems', self.problems),
                             ('entries not in the meta file (ignored by the check)', self.unexpected)):
            if names:
                lines.append(f'{len(names)} {title}:')
                lines += [f'  {name}' for name in names[:max_names]]
                if len(names) > max_names:
                    lines.append(f'  ... and {len(names) - max_names} more')
        return '\n'.join(lines)


def check_submission_zip(zip_path, meta_path, dataset_root=None, exclude_videos: Iterable[str] = (),
                         show_progress: bool = True) -> SubmissionCheck:
    """Check a submission zip against a meta file: every video/expression/frame present under `Annotations/`,
    masks single-channel with values 0 and 255 only, and, when `dataset_root` is given, each mask the size of
    `<dataset_root>/valid/JPEGImages/<video>/<frame>.jpg`. Videos in `exclude_videos` (the test split) are not
    expected. Raises only for missing inputs; everything wrong inside the zip is reported in the result.
    """
    videos = read_meta_expressions(meta_path)
    excluded = set(exclude_videos) & set(videos)
    expected = expected_mask_names({v: e for v, e in videos.items() if v not in excluded})
    frames_dir = None
    if dataset_root is not None:
        frames_dir = Path(dataset_root) / 'valid' / 'JPEGImages'
        if not frames_dir.is_dir():
            raise FileNotFoundError(f'frames folder not found: {frames_dir} '
                                    '(expected <root>/valid/JPEGImages/<video>/<frame>.jpg)')
    result = SubmissionCheck(str(zip_path), len(expected), len(excluded))
    with PredictionMasks(zip_path) as masks:
        if not masks.is_zip:
            raise ValueError(f'{zip_path} is a folder, not a zip; write the zip first (write_submission_zip)')
        result.problems += masks.layout_problems
        expected_set = set(expected)
        result.missing = [name for name in expected if name not in masks.names]
        result.unexpected = sorted(masks.names - expected_set)
        present = [name for name in expected if name in masks.names]
        for name in tqdm(present, desc='checking masks', disable=not show_progress):
            try:
                image = masks.open(name)
            except ValueError as error:  # (its message names the zip and the member)
                result.problems.append(str(error))
                continue
            problem = mask_problem(image, name, frames_dir)
            if problem:
                result.problems.append(f'{name}: {problem}')
    return result


def mask_problem(image: Image.Image, name: str, frames_dir: Optional[Path]) -> Optional[str]:
    """What is wrong with the submitted mask `name` (`<video>/<exp_id>/<frame>.png`): not single-channel, values
    other than 0 and 255, or (with `frames_dir`) not the size of its frame `<frames_dir>/<video>/<frame>.jpg`; None
    when it is fit for upload."""
    if len(image.getbands()) != 1:
        return f'{len(image.getbands())} channels (mode {image.mode}); expected a single-channel mask'
    values = np.asarray(image)
    if values.dtype == bool:
        return 'a 1-bit image; expected 8-bit values 0 and 255'
    invalid = (values != 0) & (values != 255)
    if invalid.any():
        return f'values {np.unique(values[invalid])[:5].tolist()}; expected only 0 and 255'
    if frames_dir is not None:
        video, _, frame = name.split('/')
        frame_path = frames_dir / video / (Path(frame).stem + '.jpg')
        if not frame_path.is_file():
            return f'no frame {frame_path} to compare its size with'
        try:
            with Image.open(frame_path) as frame_image:
                frame_size = frame_image.size
        except OSError as error:
            return f'the frame {frame_path} to compare its size with cannot be read ({error_message(error)})'
        if frame_size != image.size:
            return f'size {image.size[0]}x{image.size[1]} (WxH), but the frame is {frame_size[0]}x{frame_size[1]}'
    return None


def excluded_test_videos(test_meta: Optional[str], dataset_root: Optional[str]) -> Set[str]:
    """The videos of the test meta file: given explicitly, or found under the dataset root."""
    if test_meta is not None:
        return set(read_meta_expressions(test_meta))
    if dataset_root is not None:
        default = Path(dataset_root) / 'meta_expressions' / 'test' / 'meta_expressions.json'
        if default.is_file():
            return set(read_meta_expressions(default))
    return set()

"""Ref-DAVIS17: the DAVIS-2017 videos with referring expressions written by two annotators (Khoreva et al.).

Evaluation only (a model trained on Refer-YouTube-VOS, on the 30 val videos). Every object has four expressions,
one per expression set: `exp_id = 4 * (k - 1) + a` for the k-th object of a video (objects in id order) and set
`a` (`EXPRESSION_SETS`), so that set `a` is the expressions with `exp_id % 4 == a`. For each set, every video is
run once per object; the per-object probabilities become one label map per frame (`label_maps`), written as
DAVIS palette PNGs (`write_label_maps`) and scored with the DAVIS-2017 unsupervised protocol
(`metrics.davis_unsupervised_scores`).

The text files and the DAVIS folder are read in place (the usual conversion script moves them around).
"""
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from .files import check_row_count, require_dataset_root, require_path
from .refer_youtube_vos import read_mask

LAYOUT = """<dataset_path>/
├── DAVIS/                                (DAVIS-2017 trainval 480p, the unsupervised release)
│   ├── JPEGImages/480p/<video>/<frame:05d>.jpg
│   ├── Annotations_unsupervised/480p/<video>/<frame:05d>.png   (palette PNG: object id, 0 background, 255 void)
│   └── ImageSets/2017/val.txt            (one video name a line; also train.txt)
└── davis_text_annotations/               (lines: <video> <object id> "<expression>")
    ├── Davis17_annot1.txt                (UTF-8)
    ├── Davis17_annot1_full_video.txt     (UTF-8)
    ├── Davis17_annot2.txt                (Latin-1)
    └── Davis17_annot2_full_video.txt     (Latin-1)"""

# The four text files in expression-set order (set a = exp_id % 4 == a), with the encodings they are read with.
EXPRESSION_SETS = (('Davis17_annot1.txt', 'utf-8'),             # annotator 1, written on the first frame
                   ('Davis17_annot1_full_video.txt', 'utf-8'),  # annotator 1, written on the whole video
                   ('Davis17_annot2.txt', 'latin-1'),           # annotator 2, first frame
                   ('Davis17_annot2_full_video.txt', 'latin-1'))  # annotator 2, whole video
# Video names misspelt in the text files -> the DAVIS folder names.
MISSPELT_VIDEO_NAMES = {'clasic-car': 'classic-car', 'dog-scale': 'dogs-scale', 'motor-bike': 'motorbike'}
FULL_VAL_VIDEOS = 30
FULL_VAL_EXPRESSIONS = 244  # 61 objects x 4 sets
BACKGROUND_SCORE = 0.1
MASK_THRESHOLD = 0.5


def _voc_palette() -> bytes:
    """The PASCAL VOC colour map the DAVIS annotation PNGs carry: the bits of the index, three at a time, spread
    from the most significant bit of red, green and blue (1 = (128, 0, 0), 2 = (0, 128, 0), 255 = (224, 224, 192))."""
    palette = bytearray()
    for index in range(256):
        red = green = blue = 0
        for shift in range(7, -1, -1):
            red |= (index & 1) << shift
            green |= ((index >> 1) & 1) << shift
            blue |= ((index >> 2) & 1) << shift
            index >>= 3
        palette += bytes((red, green, blue))
    return bytes(palette)


DAVIS_PALETTE = _voc_palette()


def read_text_annotations(path: Path, encoding: str) -> Dict[str, Dict[int, str]]:
    """video -> object id -> expression, from one Khoreva text file.

    A line is `<video> <object id> "<expression>"`: the first two whitespace-separated tokens, then the other
    tokens joined by single spaces with the enclosing quotes removed (so a space before the closing quote is
    kept). Misspelt video names are mapped (`MISSPELT_VIDEO_NAMES`); blank lines are skipped.
    """
    expressions: Dict[str, Dict[int, str]] = {}
    first_line: Dict[Tuple[str, int], int] = {}
    for line_number, raw_line in enumerate(Path(path).read_bytes().splitlines(), start=1):
        try:
            line = raw_line.decode(encoding)
        except UnicodeDecodeError as e:
            raise ValueError(f'{path}, line {line_number}: not {encoding} text ({e.reason} at byte {e.start})') from e
        tokens = line.split()
        if not tokens:
            continue
        text = ' '.join(tokens[2:])
        object_id = int(tokens[1]) if len(tokens) > 1 and tokens[1].isascii() and tokens[1].isdigit() else None
        if object_id is None or len(text) < 2 or text[0] != '"' or text[-1] != '"':
            raise ValueError(f'{path}, line {line_number}: expected <video> <object id> "<expression>", '
                             f'got {line.strip()!r}')
        video_id = MISSPELT_VIDEO_NAMES.get(tokens[0], tokens[0])
        if (video_id, object_id) in first_line:
            raise ValueError(f'{path}, line {line_number}: object {object_id} of video {video_id} already has an '
                             f'expression (line {first_line[video_id, object_id]})')
        first_line[video_id, object_id] = line_number
        expressions.setdefault(video_id, {})[object_id] = text[1:-1]
    return expressions


def read_expressions(text_dir: Path) -> Dict[str, Dict[int, Tuple[Optional[str], ...]]]:
    """video -> object id -> its four expressions in expression-set order (None where a file has no line for the
    object), from the four text files of `text_dir`."""
    per_set = [read_text_annotations(require_path(Path(text_dir) / name, 'Ref-DAVIS17 text annotations', LAYOUT),
                                     encoding)
               for name, encoding in EXPRESSION_SETS]
    expressions: Dict[str, Dict[int, Tuple[Optional[str], ...]]] = {}
    for video_id in sorted(set().union(*per_set)):
        object_ids = sorted(set().union(*(annotations.get(video_id, {}) for annotations in per_set)))
        expressions[video_id] = {object_id: tuple(annotations.get(video_id, {}).get(object_id)
                                                  for annotations in per_set)
                                 for object_id in object_ids}
    return expressions


def read_video_list(path: Path) -> List[str]:
    """The video names of an `ImageSets/2017/<split>.txt` file, in file order."""
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def list_frames(video_dir: Path) -> List[str]:
    """The sorted frame names (file stems) of the `.jpg` files in `video_dir`."""
    require_path(video_dir, 'DAVIS frame folder', LAYOUT)
    frames = sorted(p.stem for p in Path(video_dir).glob('*.jpg'))
    if not frames:
        raise ValueError(f'{video_dir}: no .jpg frames\nExpected layout:\n{LAYOUT}')
    return frames


def expression_records(expressions: Mapping[str, Mapping[int, Sequence[Optional[str]]]], video_ids: Sequence[str],
                       frames: Mapping[str, List[str]]) -> List[list]:
    """One record `[video, frames, {"exp", "obj_id", "exp_id"}]` per expression of the videos `video_ids` (in that
    order, then by exp_id), ids as strings: the usual conversion, flattened.

    `expressions` is `read_expressions`'s result; a video without expressions, or an object without an expression
    in every set, is an error (the text files do not match the videos).
    """
    records = []
    for video_id in video_ids:
        if video_id not in expressions:
            raise ValueError(f'video {video_id} has no expressions in the Ref-DAVIS17 text files')
        for k, (object_id, object_expressions) in enumerate(sorted(expressions[video_id].items())):
            missing = [name for (name, _), text in zip(EXPRESSION_SETS, object_expressions) if text is None]
            if missing:
                raise ValueError(f'object {object_id} of video {video_id} has no expression in {", ".join(missing)}; '
                                 f'every object needs one in each of the four text files')
            for expression_set, text in enumerate(object_expressions):
                records.append([video_id, frames[video_id],
                                {'exp': text, 'obj_id': str(object_id),
                                 'exp_id': str(len(EXPRESSION_SETS) * k + expression_set)}])
    return records


def read_expression_records(dataset_path, split: str = 'val') -> List[list]:
    """The expression records (`expression_records`) of the videos of `ImageSets/2017/<split>.txt`, with their
    frames listed from `DAVIS/JPEGImages/480p/<video>/`."""
    root = require_dataset_root(Path(dataset_path).expanduser(), 'ref_davis17', LAYOUT)
    video_list_path = require_path(root / 'DAVIS' / 'ImageSets' / '2017' / f'{split}.txt', f'{split} video list',
                                   LAYOUT)
    video_ids = read_video_list(video_list_path)
    expressions = read_expressions(require_path(root / 'davis_text_annotations', 'text annotation folder', LAYOUT))
    frames = {video_id: list_frames(root / 'DAVIS' / 'JPEGImages' / '480p' / video_id) for video_id in video_ids}
    records = expression_records(expressions, video_ids, frames)
    if split == 'val':
        check_row_count(video_list_path, len(video_ids), FULL_VAL_VIDEOS, 'videos')
        check_row_count(video_list_path, len(records), FULL_VAL_EXPRESSIONS, 'expressions')
    return records


def label_maps(probabilities) -> np.ndarray:
    """`[T, H, W]` uint8 label maps (0 background, k = object k) from the mask probabilities `[K, T, H, W]` of
    one video's K objects (in id order) for one expression set.

    Probabilities below `MASK_THRESHOLD` are set to 0 and a constant background channel of `BACKGROUND_SCORE`
    is stacked first; the label is the argmax, so where objects overlap the higher probability wins (the lower
    id on a tie) and a pixel no object reaches 0.5 on is background.
    """
    probabilities = torch.as_tensor(probabilities, dtype=torch.float32)
    if probabilities.ndim != 4 or probabilities.shape[0] > 255:
        raise ValueError(f'expected object mask probabilities [K, T, H, W] with K <= 255, '
                         f'got shape {tuple(probabilities.shape)}')
    scores = probabilities.masked_fill(probabilities < MASK_THRESHOLD, 0.0)
    background = torch.full_like(scores[:1], BACKGROUND_SCORE)
    # torch.argmax returns the first maximal index: ties go to the lower object id.
    return torch.cat([background, scores]).argmax(dim=0).to(torch.uint8).cpu().numpy()


def write_label_maps(out_dir, expression_set: int, video_id: str, maps: np.ndarray) -> Path:
    """Write `maps` (`[T, H, W]` uint8) as `<out_dir>/anno_<expression_set>/<video_id>/<t:05d>.png`, palette PNGs
    with the DAVIS palette (`DAVIS_PALETTE`, the PASCAL VOC colour map of the DAVIS annotations). Returns the
    video's folder."""
    maps = np.asarray(maps)
    if maps.ndim != 3 or maps.dtype != np.uint8:
        raise ValueError(f'expected uint8 label maps [T, H, W], got {maps.dtype} {maps.shape}')
    video_dir = Path(out_dir) / f'anno_{expression_set}' / video_id
    video_dir.mkdir(parents=True, exist_ok=True)
    for t, frame_labels in enumerate(maps):
        image = Image.fromarray(frame_labels)
        image.putpalette(DAVIS_PALETTE)  # makes it a palette ('P') image
        image.save(video_dir / f'{t:05d}.png')
    return video_dir


def read_label_maps(video_dir: Path) -> Tuple[List[str], np.ndarray]:
    """The frame names and `[T, H, W]` label maps of the palette PNGs of `video_dir` (sorted by name), e.g. a
    video of `Annotations_unsupervised/480p` or of a written prediction."""
    paths = sorted(Path(require_path(video_dir, 'label map folder', LAYOUT)).glob('*.png'))
    if not paths:
        raise ValueError(f'{video_dir}: no .png label maps')
    return [p.stem for p in paths], np.stack([read_mask(p) for p in paths])

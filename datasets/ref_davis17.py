"""Ref-DAVIS17: the DAVIS-2017 videos with referring expressions written by two annotators (Khoreva et al.).

Evaluation only (a model trained on Refer-YouTube-VOS, on the 30 val videos). Every object has four expressions,
one per expression set: `exp_id = 4 * (k - 1) + a` for the k-th object of a video (objects in id order) and set
`a` (`EXPRESSION_SETS`), so that set `a` is the expressions with `exp_id % 4 == a`. For each set, every video is
run once per object; the per-object probabilities become one label map per frame (`label_maps`), written as
DAVIS palette PNGs (`write_label_maps`) and scored with the DAVIS-2017 unsupervised protocol
(`metrics.davis_unsupervised_scores`).

The text files and the DAVIS folder are read in place (the usual conversion script moves them around); the
converted expression list is cached under `cache_dir`. `RefDavis17Dataset` gives one item per val video with all
its objects' expressions of the four sets, so the video is encoded once; `RefDavis17Evaluator` writes the label
maps and scores them.
"""
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm import tqdm

from metrics import (REF_DAVIS17_EXPRESSION_SETS, DavisVideoScores, davis_unsupervised_scores_many,
                     ref_davis17_scores)
from models.postprocessing import referred_query_outputs
from utils import all_gather_lists, get_rank, get_world_size, is_main_process, safe_name
from .evaluator import Evaluator
from .files import (DatasetLayoutError, cache_path, check_row_count, file_digest, load_or_build_json, read_text,
                    require_dataset_root, require_path, stat_fingerprint)
from .transforms import VideoTransforms, collate_whole_videos, normalize_query
from .video_expressions import read_mask, whole_video_item, write_mask_pngs

LAYOUT = """<dataset_path>/
├── DAVIS/                                (DAVIS-2017 trainval 480p, the unsupervised release)
│   ├── JPEGImages/480p/<video>/<frame:05d>.jpg
│   ├── Annotations_unsupervised/480p/<video>/<frame:05d>.png   (palette PNG: object id, 0 background, 255 void)
│   └── ImageSets/2017/val.txt            (one video name a line; also train.txt)
└── davis_text_annotations/               (lines: <video> <object id> "<expression>"; or the folder of the
                                           config key davis_text_annotations_path)
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
# Frames turned into label maps at a time: bounds the memory of the full-resolution probabilities.
LABEL_MAP_CHUNK = 8
SET_NAMES = ('annotator 1, first frame', 'annotator 1, full video', 'annotator 2, first frame',
             'annotator 2, full video')


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
    """The video names of an `ImageSets/2017/<split>.txt` file, in file order (each a plain folder name)."""
    return [safe_name(line.strip(), 'video name', path)
            for line in read_text(path, 'one DAVIS video name a line').splitlines() if line.strip()]


def list_frames(video_dir: Path) -> List[str]:
    """The sorted frame names (file stems) of the `.jpg` files in `video_dir`."""
    require_path(video_dir, 'DAVIS frame folder', LAYOUT)
    frames = sorted(p.stem for p in Path(video_dir).glob('*.jpg'))
    if not frames:
        raise DatasetLayoutError(f'DAVIS frames not found: no .jpg file in {video_dir}', LAYOUT)
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


def read_expression_records(dataset_path, split: str = 'val', text_dir=None) -> List[list]:
    """The expression records (`expression_records`) of the videos of `ImageSets/2017/<split>.txt`, with their
    frames listed from `DAVIS/JPEGImages/480p/<video>/`; the text files are read from `text_dir` (default:
    `<dataset_path>/davis_text_annotations`)."""
    root = require_dataset_root(Path(dataset_path).expanduser(), 'ref_davis17', LAYOUT)
    video_list_path = require_path(root / 'DAVIS' / 'ImageSets' / '2017' / f'{split}.txt', f'{split} video list',
                                   LAYOUT)
    video_ids = read_video_list(video_list_path)
    text_dir = Path(text_dir).expanduser() if text_dir else root / 'davis_text_annotations'
    expressions = read_expressions(require_path(text_dir, 'text annotation folder', LAYOUT))
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


def write_label_maps(out_dir, expression_set: int, video_id: str, maps: np.ndarray,
                     frame_names: Optional[Sequence[str]] = None) -> Path:
    """Write `maps` (`[T, H, W]` uint8) as `<out_dir>/anno_<expression_set>/<video_id>/<frame>.png`, palette PNGs
    with the DAVIS palette (`DAVIS_PALETTE`, the PASCAL VOC colour map of the DAVIS annotations); the frames are
    named `frame_names`, by default `<t:05d>`. Returns the video's folder."""
    maps = np.asarray(maps)
    if maps.ndim != 3 or maps.dtype != np.uint8:
        raise ValueError(f'expected uint8 label maps [T, H, W], got {maps.dtype} {maps.shape}')
    frame_names = [f'{t:05d}' for t in range(len(maps))] if frame_names is None else list(frame_names)
    if len(frame_names) != len(maps):
        raise ValueError(f'{len(frame_names)} frame names for {len(maps)} label maps')
    video_dir = Path(out_dir) / f'anno_{int(expression_set)}' / safe_name(video_id, 'video id', 'the label maps')
    return write_mask_pngs(video_dir, frame_names, maps, 'label map', palette=DAVIS_PALETTE)


def read_label_maps(video_dir: Path) -> Tuple[List[str], np.ndarray]:
    """The frame names and `[T, H, W]` label maps of the palette PNGs of `video_dir` (sorted by name), e.g. a
    video of `Annotations_unsupervised/480p` or of a written prediction."""
    paths = sorted(Path(require_path(video_dir, 'label map folder', LAYOUT)).glob('*.png'))
    if not paths:
        raise ValueError(f'{video_dir}: no .png label maps')
    return [p.stem for p in paths], np.stack([read_mask(p) for p in paths])


def read_predicted_label_maps(video_dir: Path, frame_names: Sequence[str], frame_size: Tuple[int, int]) -> np.ndarray:
    """`[T, H, W]` predicted label maps of `video_dir` for the ground truth's frames, each a single-channel
    (palette or grayscale) PNG of the ground truth's size; what is missing or malformed is an error naming the
    file."""
    maps = []
    for frame_name in frame_names:
        path = Path(video_dir) / f'{frame_name}.png'
        if not path.is_file():
            raise FileNotFoundError(f'predicted label map not found: {path} (expected one PNG per ground-truth frame, '
                                    f'<predictions>/anno_<set>/<video>/<frame>.png)')
        labels = read_mask(path)
        if labels.shape != tuple(frame_size):
            raise ValueError(f'{path}: {labels.shape[0]}x{labels.shape[1]} (HxW), but the ground-truth frame is '
                             f'{frame_size[0]}x{frame_size[1]}')
        maps.append(labels)
    return np.stack(maps)


def score_video(predictions_dir, annotations_dir, video_id: str,
                expression_sets: Sequence[int] = range(REF_DAVIS17_EXPRESSION_SETS)) -> List[DavisVideoScores]:
    """The DAVIS-2017 unsupervised scores of one video's label maps `<predictions_dir>/anno_<a>/<video>/` for each
    expression set `a`, against `<annotations_dir>/<video>/` (`Annotations_unsupervised/480p`); the ground truth
    is read once for all sets."""
    frame_names, ground_truth = read_label_maps(Path(annotations_dir) / video_id)
    predictions = [read_predicted_label_maps(Path(predictions_dir) / f'anno_{a}' / video_id, frame_names,
                                             ground_truth.shape[1:]) for a in expression_sets]
    return davis_unsupervised_scores_many(ground_truth, predictions)


def format_scores(results: Mapping[str, Mapping[str, float]], num_videos: int, num_objects: int) -> str:
    """`metrics.ref_davis17_scores` as a table in percent: one row per expression set, then their mean."""
    lines = [f'Ref-DAVIS17, DAVIS-2017 unsupervised protocol: {num_videos} videos, {num_objects} objects',
             f'  {"expression set":<36} {"J&F":>6} {"J":>6} {"F":>6}']
    for name, scores in results.items():
        label = f'{name} ({SET_NAMES[int(name[5:])]})' if name.startswith('anno_') else 'mean (the reported number)'
        lines.append(f'  {label:<36} {100 * scores["J&F"]:6.2f} {100 * scores["J"]:6.2f} {100 * scores["F"]:6.2f}')
    return '\n'.join(lines)


def flat_metrics(results: Mapping[str, Mapping[str, float]]) -> Dict[str, float]:
    """`{'J&F', 'J', 'F'}` of the mean over the sets, then `'anno_<a> J&F'`, ... of each set."""
    metrics = dict(results['mean'])
    for name, scores in results.items():
        if name != 'mean':
            metrics.update({f'{name} {key}': value for key, value in scores.items()})
    return metrics


# --------------------------------------------------------------------------------------------------------------
# loader and evaluator

class RefDavis17Dataset(Dataset):
    """Evaluation items (the val split; there is no training split): one video with the expressions of all its
    objects in the four sets, `(frames [T, 3, H, W], [[None] * T per expression], [text queries], [metadata per
    expression])` (see `transforms.collate_videos`), so the video is encoded once for its 4 x objects queries.

    The metadata of an expression gives its video, `exp_id`, `obj_id`, `expression_set` (`exp_id % 4`), `label`
    (k for the k-th object of the video, the value it gets in the label maps), the frame names and sizes.
    """

    def __init__(self, image_set: str, dataset_path: str, transforms: VideoTransforms, cache_dir: str,
                 text_annotations_path: Optional[str] = None):
        if image_set != 'test':
            raise ValueError(f"ref_davis17: image_set must be 'test' (evaluation only), got {image_set!r}")
        self.root = require_dataset_root(Path(dataset_path).expanduser(), 'ref_davis17', LAYOUT)
        self.transforms = transforms
        self.collator = collate_whole_videos
        self.frames_dir = require_path(self.root / 'DAVIS' / 'JPEGImages' / '480p', 'DAVIS frame folder', LAYOUT)
        self.annotations_dir = require_path(self.root / 'DAVIS' / 'Annotations_unsupervised' / '480p',
                                            'DAVIS unsupervised annotations folder', LAYOUT)
        text_dir = Path(text_annotations_path).expanduser() if text_annotations_path \
            else self.root / 'davis_text_annotations'
        video_list_path = require_path(self.root / 'DAVIS' / 'ImageSets' / '2017' / 'val.txt', 'val video list',
                                       LAYOUT)
        text_paths = [require_path(text_dir / name, 'Ref-DAVIS17 text annotations', LAYOUT)
                      for name, _ in EXPRESSION_SETS]
        video_dirs = [self.frames_dir / video_id for video_id in read_video_list(video_list_path)]
        try:
            frames_fingerprint = stat_fingerprint(video_dirs, self.root)  # a folder's mtime follows its files
        except FileNotFoundError as e:
            raise DatasetLayoutError(f'DAVIS frame folder not found: {e.filename} (a video of {video_list_path})',
                                     LAYOUT) from e
        records_cache = cache_path(cache_dir, 'ref_davis17', 'val_expressions',
                                   dataset_path=str(self.root.resolve()), text_dir=str(text_dir.resolve()),
                                   video_list=file_digest(video_list_path),
                                   texts=[file_digest(path) for path in text_paths], frames=frames_fingerprint)
        records = load_or_build_json(records_cache, lambda: read_expression_records(self.root, 'val', text_dir),
                                     'the Ref-DAVIS17 val expressions')
        samples: Dict[str, list] = {}
        for video_id, frames, meta in records:
            samples.setdefault(video_id, [video_id, frames, []])[2].append(
                (meta['exp_id'], meta['obj_id'], normalize_query(meta['exp'])))
        self.samples = list(samples.values())

    @property
    def video_ids(self) -> List[str]:
        return [video_id for video_id, _, _ in self.samples]

    def describe(self, index) -> str:
        """Which video item `index` is, for error messages."""
        return f'video {self.samples[index][0]}'

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        video_id, frame_names, expressions = self.samples[index]
        expressions = [(exp_id, text, {'obj_id': obj_id,
                                       'expression_set': int(exp_id) % REF_DAVIS17_EXPRESSION_SETS,
                                       'label': int(exp_id) // REF_DAVIS17_EXPRESSION_SETS + 1})
                       for exp_id, obj_id, text in expressions]
        return whole_video_item(self.frames_dir, video_id, frame_names, expressions, self.transforms)


def referred_mask_logits(outputs: Dict[str, torch.Tensor], query: int, num_frames: int) -> torch.Tensor:
    """`[T, h, w]` mask logits of the object query chosen for text query `query` over its `num_frames` frames
    (`models.postprocessing.referred_query_outputs`: as Refer-YouTube-VOS's post-processing chooses it)."""
    return referred_query_outputs(outputs, query, num_frames)['pred_masks'][:, 0, 0]


def video_label_maps(object_logits: torch.Tensor, padded_size, resized_size, original_size):
    """Label maps `[t, H0, W0]` (uint8 numpy) from the chosen queries' mask logits `[K, t, h, w]` of the K objects
    of a video, as Refer-YouTube-VOS's post-processing treats one mask: bilinear upsampling to the padded input
    size, padding cropped, nearest resize to the original frame size; the per-object probabilities (sigmoid)
    become labels before the last resize (`label_maps`), which picks pixels and so commutes with it."""
    logits = F.interpolate(object_logits.float(), size=[int(x) for x in padded_size], mode='bilinear',
                           align_corners=False)  # [K, t, H, W]
    height, width = (int(x) for x in resized_size)
    maps = torch.from_numpy(label_maps(logits[..., :height, :width].sigmoid()))  # [t, h', w']
    maps = F.interpolate(maps[None].float(), size=[int(x) for x in original_size], mode='nearest')[0]
    return maps.to(torch.uint8).numpy()


class RefDavis17Evaluator(Evaluator):
    """Label maps of every (video, expression set) as each batch is evaluated, written as
    `<out_dir>/anno_<a>/<video>/<frame>.png`; then the DAVIS-2017 unsupervised scores of each set and their mean
    (`metrics.ref_davis17_scores`), the processes scoring a share of the videos each."""
    best_metric = 'J&F'
    higher_is_better = True

    def __init__(self, out_dir: Path, annotations_dir: Path, video_ids: Sequence[str]):
        self.out_dir, self.annotations_dir, self.video_ids = Path(out_dir), Path(annotations_dir), list(video_ids)
        self.written = set()  # the videos whose label maps this process wrote

    def update(self, batch, outputs):
        padded_size = batch['samples'].tensors.shape[-2:]
        groups: Dict[Tuple[str, int], list] = {}  # (video, expression set) -> [(label, query, metadata)]
        for query, metadata in enumerate(batch['videos_metadata']):
            groups.setdefault((metadata['video_id'], metadata['expression_set']), []).append(
                (metadata['label'], query, metadata))
        for (video_id, expression_set), queries in groups.items():
            queries.sort(key=lambda item: item[0])
            labels = [label for label, _, _ in queries]
            if labels != list(range(1, len(labels) + 1)):
                raise ValueError(f'video {video_id}, expression set {expression_set}: expected one expression per '
                                 f'object, labels 1..{len(labels)}, got {labels}')
            metadata = queries[0][2]
            frame_names = metadata['frame_indices']
            object_logits = torch.stack([referred_mask_logits(outputs, query, len(frame_names))
                                         for _, query, _ in queries])  # [K, T, h, w]
            for start in range(0, len(frame_names), LABEL_MAP_CHUNK):
                chunk = slice(start, start + LABEL_MAP_CHUNK)
                maps = video_label_maps(object_logits[:, chunk], padded_size, metadata['resized_frame_size'],
                                        metadata['original_frame_size'])
                write_label_maps(self.out_dir, expression_set, video_id, maps, frame_names[chunk])
            self.written.add(video_id)

    def summarize(self):
        written = set(all_gather_lists(sorted(self.written)))  # also waits for every process's label maps
        videos = [video_id for video_id in self.video_ids if video_id in written]
        share = videos[get_rank()::get_world_size()]
        scores = [(video_id, score_video(self.out_dir, self.annotations_dir, video_id))
                  for video_id in tqdm(share, desc='Ref-DAVIS17 J&F', unit='video', disable=not is_main_process())]
        scores = dict(all_gather_lists(scores))
        if not is_main_process():
            return None
        results = ref_davis17_scores({a: [scores[video_id][a] for video_id in videos]
                                      for a in range(REF_DAVIS17_EXPRESSION_SETS)})
        num_objects = sum(len(scores[video_id][0].j_mean) for video_id in videos)
        print(format_scores(results, len(videos), num_objects))
        return {**flat_metrics(results), 'videos': len(videos), 'objects': num_objects,
                'label_maps': str(self.out_dir)}

    def describe(self, metrics):
        return f'J&F {metrics["J&F"]:.4f} (mean of the four expression sets)'


def build(image_set: str, config, transforms: VideoTransforms) -> RefDavis17Dataset:
    return RefDavis17Dataset(image_set, config.dataset_path, transforms, config.cache_dir,
                             text_annotations_path=config.davis_text_annotations_path)


def build_evaluator(config, dataset: RefDavis17Dataset, run_dir: Path, epoch: int) -> RefDavis17Evaluator:
    return RefDavis17Evaluator(run_dir / 'ref_davis17' / f'epoch_{epoch}', dataset.annotations_dir, dataset.video_ids)

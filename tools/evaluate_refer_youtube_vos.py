"""Local J&F of Refer-YouTube-VOS predictions against ground truth in the train layout.

    python tools/evaluate_refer_youtube_vos.py PREDICTIONS --dataset-root ROOT [--videos v1 v2 | --videos-file F]
    python tools/evaluate_refer_youtube_vos.py PREDICTIONS --annotations-dir DIR --meta META_JSON

PREDICTIONS is a folder or a submission zip holding `Annotations/<video>/<exp_id>/<frame>.png` (nonzero pixels =
object). The ground truth is `<root>/train/Annotations/<video>/<frame>.png` (palette PNGs, pixel value = object
id) with `<root>/meta_expressions/train/meta_expressions.json`, whose expressions carry an `obj_id`.

J and F follow DAVIS 2017 (`metrics.db_eval_iou`, `metrics.db_eval_boundary`); as on the benchmark, each
expression averages them over its frames, then the expressions are averaged; J&F = (J + F) / 2. A missing
prediction file is scored as an empty mask and reported. Results go to `--output` (JSON; default:
`<PREDICTIONS without .zip>_jf.json` beside the predictions).
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

if __package__ in (None, ''):
    # Run as a script (`python tools/evaluate_refer_youtube_vos.py`): make the repository root importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from metrics import db_eval_boundary, db_eval_iou  # noqa: E402
from datasets.refer_youtube_vos import read_meta_expressions  # noqa: E402
from datasets.submission import PredictionMasks  # noqa: E402
from utils import atomic_write  # noqa: E402

GT_LAYOUT = ('the Refer-YouTube-VOS train layout: <root>/train/Annotations/<video>/<frame>.png, palette PNGs '
             'whose pixel value is the object id (0 = background)')
MAX_NAMES_PRINTED = 10


def evaluate_refer_youtube_vos(predictions, annotations_dir, meta_path, videos: Optional[Sequence[str]] = None,
                               show_progress: bool = True) -> dict:
    """J, F and J&F (fractions in [0, 1]) of the predictions (folder or zip) on the videos of `meta_path`,
    restricted to `videos` when given.

    Returns `{'J', 'F', 'J&F', 'num_videos', 'num_expressions', 'num_frames', 'missing_predictions' (names
    '<video>/<exp_id>/<frame>.png'), 'per_expression' ({'<video>/<exp_id>': {'J', 'F'}}), and the input paths}`.
    """
    annotations_dir = Path(annotations_dir)
    if not annotations_dir.is_dir():
        raise FileNotFoundError(f'ground-truth annotations folder not found: {annotations_dir} (expected {GT_LAYOUT})')
    meta = _select_videos(read_meta_expressions(meta_path), videos, meta_path)
    num_expressions = sum(len(entry['expressions']) for entry in meta.values())

    per_expression: Dict[str, Dict[str, float]] = {}
    missing: List[str] = []
    num_frames = 0
    with PredictionMasks(predictions) as masks, \
            tqdm(total=num_expressions, desc='J&F', unit='expr', disable=not show_progress) as progress:
        for video, entry in meta.items():
            object_ids = _load_gt_video(annotations_dir, video, entry['frames'])  # [T, H, W] object ids
            for exp_id, expression in entry['expressions'].items():
                gt_masks = object_ids == _object_id(expression, video, exp_id, meta_path)  # [T, H, W]
                names = [f'{video}/{exp_id}/{frame}.png' for frame in entry['frames']]
                pred_masks = np.stack([_read_prediction(masks, name, gt_masks.shape[1:], missing) for name in names])
                per_expression[f'{video}/{exp_id}'] = {'J': float(np.mean(db_eval_iou(gt_masks, pred_masks))),
                                                       'F': float(np.mean(db_eval_boundary(gt_masks, pred_masks)))}
                num_frames += len(names)
                progress.update()

    j = float(np.mean([scores['J'] for scores in per_expression.values()]))
    f = float(np.mean([scores['F'] for scores in per_expression.values()]))
    return {'J&F': (j + f) / 2, 'J': j, 'F': f,
            'num_videos': len(meta), 'num_expressions': num_expressions, 'num_frames': num_frames,
            'missing_predictions': missing, 'per_expression': per_expression,
            'predictions': str(predictions), 'annotations_dir': str(annotations_dir), 'meta': str(meta_path)}


def _select_videos(meta: Dict[str, dict], videos: Optional[Sequence[str]], meta_path) -> Dict[str, dict]:
    if videos is None:
        selected = meta
    else:
        unknown = [video for video in videos if video not in meta]
        if unknown:
            raise ValueError(f'{len(unknown)} requested videos are not in {meta_path}: {unknown[:MAX_NAMES_PRINTED]}')
        selected = {video: meta[video] for video in dict.fromkeys(videos)}
    if not any(entry['expressions'] for entry in selected.values()):
        raise ValueError(f'no expressions to evaluate in {meta_path}' + (f' for videos {list(videos)}' if videos else ''))
    return selected


def _object_id(expression: dict, video: str, exp_id: str, meta_path) -> int:
    if 'obj_id' not in expression:
        raise ValueError(f'{meta_path}: expression {video}/{exp_id} has no "obj_id"; only the train meta file '
                         'names the referred objects (valid/test have no public ground truth)')
    return int(expression['obj_id'])


def _load_gt_video(annotations_dir: Path, video: str, frames: Sequence[str]) -> np.ndarray:
    """The object-id maps `[T, H, W]` of a video's listed frames."""
    maps = []
    for frame in frames:
        path = annotations_dir / video / f'{frame}.png'
        if not path.is_file():
            raise FileNotFoundError(f'ground-truth mask not found: {path} (expected {GT_LAYOUT})')
        with Image.open(path) as image:
            if image.mode not in ('P', 'L'):
                raise ValueError(f'{path}: mode {image.mode}; expected a palette (P) or grayscale (L) PNG of object ids')
            maps.append(np.asarray(image))
    return np.stack(maps)


def _read_prediction(masks: PredictionMasks, name: str, shape, missing: List[str]) -> np.ndarray:
    """The predicted mask `[H, W]` (bool); an all-False mask, recorded in `missing`, when the file is absent."""
    if name not in masks.names:
        missing.append(name)
        return np.zeros(shape, dtype=bool)
    values = np.asarray(masks.open(name))
    if values.ndim != 2:
        raise ValueError(f'{masks.path}: {name} has shape {values.shape}; expected a single-channel mask')
    if values.shape != tuple(shape):
        raise ValueError(f'{masks.path}: {name} is {values.shape[0]}x{values.shape[1]} (HxW) but its ground-truth '
                         f'frame is {shape[0]}x{shape[1]}')
    return values > 0


def format_results(results: dict) -> str:
    """The summary printed by the command line: scores in percent and the missing prediction files."""
    lines = [f'Refer-YouTube-VOS, DAVIS-2017 measures: {results["num_videos"]} videos, '
             f'{results["num_expressions"]} expressions, {results["num_frames"]} frames',
             f'J&F {100 * results["J&F"]:.2f}   J {100 * results["J"]:.2f}   F {100 * results["F"]:.2f}']
    missing = results['missing_predictions']
    if missing:
        lines.append(f'{len(missing)} prediction files missing (scored as empty masks), first ones:')
        lines += [f'  {name}' for name in missing[:MAX_NAMES_PRINTED]]
    return '\n'.join(lines)


def _default_output(predictions: Path) -> Path:
    name = predictions.stem if predictions.suffix == '.zip' else predictions.name
    return predictions.with_name(f'{name}_jf.json')


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('predictions', help='predictions folder or submission zip')
    parser.add_argument('--dataset-root', help='Refer-YouTube-VOS root: train/Annotations and meta_expressions/train')
    parser.add_argument('--annotations-dir', help='ground-truth masks (default: <dataset-root>/train/Annotations)')
    parser.add_argument('--meta', help='meta file with obj_id per expression '
                                       '(default: <dataset-root>/meta_expressions/train/meta_expressions.json)')
    videos = parser.add_mutually_exclusive_group()
    videos.add_argument('--videos', nargs='+', help='evaluate only these videos')
    videos.add_argument('--videos-file', help='evaluate only the videos listed in this file, one a line')
    parser.add_argument('--output', help='results JSON (default: <predictions>_jf.json beside the predictions)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    args = parser.parse_args(argv)

    root = Path(args.dataset_root) if args.dataset_root else None
    if root is None and (args.annotations_dir is None or args.meta is None):
        parser.error('give --dataset-root, or both --annotations-dir and --meta')
    annotations_dir = Path(args.annotations_dir) if args.annotations_dir else root / 'train' / 'Annotations'
    meta = Path(args.meta) if args.meta else root / 'meta_expressions' / 'train' / 'meta_expressions.json'
    selected = args.videos
    if args.videos_file:
        selected = [line.strip() for line in Path(args.videos_file).read_text().splitlines() if line.strip()]

    results = evaluate_refer_youtube_vos(args.predictions, annotations_dir, meta, selected,
                                         show_progress=not args.no_progress)
    print(format_results(results))
    output = Path(args.output) if args.output else _default_output(Path(args.predictions))
    atomic_write(output, lambda f: json.dump(results, f, indent=2), mode='w')
    print(f'results saved to {output}')
    return 0


if __name__ == '__main__':
    sys.exit(main())

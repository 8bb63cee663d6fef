"""Local J&F of Refer-YouTube-VOS, MeViS and Ref-DAVIS17 predictions against ground truth.

    python tools/evaluate_jf.py PREDICTIONS --dataset-root ROOT [--videos v1 v2 | --videos-file F]
    python tools/evaluate_jf.py PREDICTIONS --annotations-dir DIR --meta META_JSON
    python tools/evaluate_jf.py PREDICTIONS --benchmark mevis --dataset-root MEVIS_ROOT [--split valid_u]
    python tools/evaluate_jf.py PREDICTIONS --benchmark mevis --meta META_JSON --mask-dict MASK_DICT
    python tools/evaluate_jf.py PREDICTIONS --benchmark ref_davis17 --dataset-root REF_DAVIS17_ROOT
    python tools/evaluate_jf.py PREDICTIONS --benchmark ref_davis17 --annotations-dir DIR

refer_youtube_vos (default): PREDICTIONS is a folder or a submission zip holding
`Annotations/<video>/<exp_id>/<frame>.png` (nonzero pixels = object). The ground truth is
`<root>/train/Annotations/<video>/<frame>.png` (palette PNGs, pixel value = object id) with
`<root>/meta_expressions/train/meta_expressions.json`, whose expressions carry an `obj_id`.

mevis: PREDICTIONS is a folder or zip holding `<video>/<exp_id>/<frame>.png` (as the server takes them; an
`Annotations/` level is accepted too). The ground truth is `<root>/<split>/meta_expressions.json` with
`<root>/<split>/mask_dict.json` (split valid_u or train): an expression's target is the union of its objects.

J and F follow DAVIS 2017 (`metrics.db_eval_iou`, `metrics.db_eval_boundary`); for both of these benchmarks each
expression averages them over its frames, then the expressions are averaged; J&F = (J + F) / 2. Missing predictions
are scored as the official scorer scores them and reported. MeViS (`eval_mevis.py`): a video whose folder is
missing gives each of its expressions J = F = 0; a missing expression folder or frame, on which `eval_mevis.py`
fails, is an error naming it. Refer-YouTube-VOS (scored by its server only): a missing file is scored as an empty
mask.

ref_davis17: PREDICTIONS is the folder holding `anno_<a>/<video>/<frame>.png` label maps (what
`main.py -rm eval -c configs/ref_davis17.yaml` writes under `<run>/ref_davis17/epoch_<n>`), for one to four
expression sets. They are scored with the DAVIS-2017 unsupervised protocol against
`<root>/DAVIS/Annotations_unsupervised/480p` (`--annotations-dir`), on the videos of
`<root>/DAVIS/ImageSets/2017/val.txt` (or of the predictions, or `--videos`); every ground-truth frame needs a
label map (as in the davis2017-evaluation package, which stops at a missing one). With the four sets, J&F is their
mean (the reported number).

Results go to `--output` (JSON; default: `<PREDICTIONS without .zip>_jf.json` beside the predictions). Missing or
unreadable inputs (a corrupt PNG, an RGB or wrong-size PNG, a missing file, a text file that is not UTF-8) and an
output that cannot be written stop the tool with a one-line error naming the file, exit status 2; a missing part
of a dataset's layout prints the expected layout before that line.
"""
import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

if __package__ in (None, ''):
    # Run as a script (`python tools/evaluate_jf.py`): make the repository root importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from metrics import (REF_DAVIS17_EXPRESSION_SETS, davis_global_scores, mevis_expression_scores,  # noqa: E402
                     mevis_summary, ref_davis17_scores)
from datasets import mevis, ref_davis17, refer_youtube_vos  # noqa: E402
from datasets.files import DatasetLayoutError, check_output_file, read_text  # noqa: E402
from datasets.submission import PredictionMasks  # noqa: E402
from datasets.video_expressions import read_meta_expressions  # noqa: E402
from utils import WriteError, error_message, write_json  # noqa: E402

GT_LAYOUT = ('the Refer-YouTube-VOS train layout: <root>/train/Annotations/<video>/<frame>.png, palette PNGs '
             'whose pixel value is the object id (0 = background)')
MAX_NAMES_PRINTED = 10
BENCHMARKS = ('refer_youtube_vos', 'mevis', 'ref_davis17')


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
    referred = {(video, exp_id): refer_youtube_vos.referred_object_id(expression, meta_path, video, exp_id)
                for video, entry in meta.items() for exp_id, expression in entry['expressions'].items()}

    def expressions():
        for video, entry in meta.items():
            object_ids = _load_gt_video(annotations_dir, video, entry['frames'])  # [T, H, W] object ids
            for exp_id in entry['expressions']:
                yield f'{video}/{exp_id}', video, exp_id, object_ids == referred[video, exp_id], entry['frames']

    missing: List[str] = []
    with PredictionMasks(predictions) as masks:
        per_expression = _score_expressions(masks, expressions(), num_expressions, missing, show_progress)
    return {**_results(per_expression, missing, meta), 'predictions': str(predictions),
            'annotations_dir': str(annotations_dir), 'meta': str(meta_path)}


def _score_expressions(masks: PredictionMasks, expressions, num_expressions: int, missing: List[str],
                       show_progress: bool) -> Dict[str, Dict[str, float]]:
    """`{key: {'J', 'F'}}` of `(key, video, exp_id, gt_masks [T, H, W], frames)` items: the predictions
    `<video>/<exp_id>/<frame>.png` (a missing one counts as an empty mask and is added to `missing`) scored frame by
    frame with DAVIS's J and F (`metrics.mevis_expression_scores`: both 1 when both masks are empty) and averaged
    over the frames."""
    per_expression: Dict[str, Dict[str, float]] = {}
    with tqdm(total=num_expressions, desc='J&F', unit='expr', disable=not show_progress) as progress:
        for key, video, exp_id, gt_masks, frames in expressions:
            names = [f'{video}/{exp_id}/{frame}.png' for frame in frames]
            pred_masks = np.stack([_read_prediction(masks, name, gt_masks.shape[1:], missing) for name in names])
            ((_, (j, f)),) = mevis_expression_scores([(video, exp_id, gt_masks, pred_masks)]).items()
            per_expression[key] = {'J': j, 'F': f}
            progress.update()
    return per_expression


def _results(per_expression: Dict[str, Dict[str, float]], missing: List[str], meta: Dict[str, dict]) -> dict:
    """J, F and J&F (the means over the expressions), with the per-expression scores, the missing prediction files
    and the counts."""
    summary = mevis_summary({key: (scores['J'], scores['F']) for key, scores in per_expression.items()})
    return {**summary, 'num_videos': len(meta), 'num_expressions': len(per_expression),
            'num_frames': sum(len(entry['frames']) * len(entry['expressions']) for entry in meta.values()),
            'missing_predictions': missing, 'per_expression': per_expression}


def _expected_names(video: str, entry: dict) -> List[str]:
    return [f'{video}/{exp_id}/{frame}.png' for exp_id in entry['expressions'] for frame in entry['frames']]


def evaluate_mevis(predictions, meta_path, mask_dict_path, split: str = 'valid_u',
                   videos: Optional[Sequence[str]] = None, show_progress: bool = True) -> dict:
    """J, F and J&F of MeViS predictions (folder or zip of `<video>/<exp_id>/<frame>.png`) on the expressions of
    `meta_path` (a train or valid_u `meta_expressions.json`), with the targets of `mask_dict_path`; restricted to
    `videos` when given. Same result keys as `evaluate_refer_youtube_vos`, expressions keyed `<video>_<exp_id>`
    as in MeViS's own evaluation, and 'missing_videos'.

    Incomplete predictions are scored as MeViS's `eval_mevis.py` scores them: each expression of a video whose
    folder is missing gets J = F = 0 (its files are listed in 'missing_predictions'); a missing expression folder
    or frame of a video that is there makes `eval_mevis.py` fail on that expression, so here it is a ValueError
    naming the missing files."""
    if split not in mevis.SPLITS_WITH_MASKS:
        raise ValueError(f'MeViS split {split!r} has no public ground truth; expected one of {mevis.SPLITS_WITH_MASKS}')
    meta = _select_videos(mevis.read_meta_expressions(meta_path, split), videos, meta_path)
    if not Path(mask_dict_path).is_file():
        raise FileNotFoundError(f'MeViS masks file not found: {mask_dict_path} '
                                f'(expected <root>/{split}/mask_dict.json)')
    mask_dict = mevis.read_mask_dict(mask_dict_path)

    def expressions(present, masks):
        for video, entry in present.items():
            if not entry['expressions']:  # (nothing to score, nor a prediction to take its frame size from)
                continue
            frame_size = _mevis_frame_size(mask_dict, masks, video, entry, mask_dict_path)
            for exp_id, expression in entry['expressions'].items():
                try:
                    gt_masks = mevis.target_masks(mask_dict, expression['anno_id'], len(entry['frames']), frame_size)
                except ValueError as error:
                    raise ValueError(f'{mask_dict_path}: expression {video}/{exp_id}: {error}') from error
                yield f'{video}_{exp_id}', video, exp_id, gt_masks, entry['frames']

    with PredictionMasks(predictions) as masks:
        present = {video: entry for video, entry in meta.items() if masks.has_video(video)}
        incomplete = [name for video, entry in present.items() for name in _expected_names(video, entry)
                      if name not in masks.names]
        if incomplete:
            raise ValueError(f'{predictions}: {len(incomplete)} prediction files missing from video folders that are '
                             f'there, e.g. {", ".join(incomplete[:3])}; MeViS\'s eval_mevis.py cannot score such an '
                             'expression (only a video whose whole folder is missing scores, J = F = 0): write every '
                             'frame of every expression')
        scored = _score_expressions(masks, expressions(present, masks),
                                    sum(len(entry['expressions']) for entry in present.values()), [], show_progress)
    missing_videos = [video for video in meta if video not in present]
    per_expression = {f'{video}_{exp_id}': scored.get(f'{video}_{exp_id}', {'J': 0.0, 'F': 0.0})
                      for video, entry in meta.items() for exp_id in entry['expressions']}
    missing = [name for video in missing_videos for name in _expected_names(video, meta[video])]
    return {**_results(per_expression, missing, meta), 'missing_videos': missing_videos,
            'predictions': str(predictions), 'meta': str(meta_path), 'mask_dict': str(mask_dict_path)}


def _mevis_frame_size(mask_dict, masks: PredictionMasks, video: str, entry: dict, mask_dict_path):
    """(H, W) of a video's frames: from its masks' RLEs, or (no object visible anywhere) from its first
    prediction, as MeViS's evaluation takes it."""
    for expression in entry['expressions'].values():
        for anno_id in expression['anno_id']:
            for rle in mask_dict.get(anno_id) or []:
                if rle is not None:
                    return tuple(rle['size'])
    for exp_id in entry['expressions']:
        for frame in entry['frames']:
            name = f'{video}/{exp_id}/{frame}.png'
            if name in masks.names:
                return masks.open(name).size[::-1]
    raise ValueError(f'video {video}: no mask in {mask_dict_path} and no prediction to take the frame size from')


def evaluate_ref_davis17(predictions, annotations_dir, videos: Optional[Sequence[str]] = None,
                         show_progress: bool = True) -> dict:
    """DAVIS-2017 unsupervised J, F and J&F of Ref-DAVIS17 label maps `<predictions>/anno_<a>/<video>/<frame>.png`
    against `annotations_dir` (`Annotations_unsupervised/480p`), per expression set found and, with all four, their
    mean; on `videos`, by default those of the predictions.

    Returns `{'J', 'F', 'J&F'` (the mean over the sets), `'per_set'` (`{'anno_<a>': {'J', 'F', 'J&F'}}`),
    `'per_video'` (`{video: {'anno_<a>': {'J', 'F'}}}`, lists over the ground-truth objects), `'num_videos'`,
    `'num_objects'`, and the input paths`}`."""
    predictions, annotations_dir = Path(predictions), Path(annotations_dir)
    if not predictions.is_dir():
        raise FileNotFoundError(f'predictions folder not found: {predictions} (expected '
                                '<predictions>/anno_<a>/<video>/<frame>.png)')
    if not annotations_dir.is_dir():
        raise FileNotFoundError(f'ground-truth folder not found: {annotations_dir} (expected '
                                'DAVIS/Annotations_unsupervised/480p/<video>/<frame>.png)')
    sets = [a for a in range(REF_DAVIS17_EXPRESSION_SETS) if (predictions / f'anno_{a}').is_dir()]
    if not sets:
        raise FileNotFoundError(f'{predictions}: no anno_0 .. anno_3 folder of label maps')
    if videos is None:
        videos = sorted({p.name for a in sets for p in (predictions / f'anno_{a}').iterdir() if p.is_dir()})
    if not videos:
        raise ValueError(f'{predictions}: no video folder of label maps')
    per_set: Dict[int, list] = {a: [] for a in sets}
    per_video = {}
    for video in tqdm(videos, desc='J&F', unit='video', disable=not show_progress):
        scores = ref_davis17.score_video(predictions, annotations_dir, video, sets)
        per_video[video] = {f'anno_{a}': {'J': s.j_mean.tolist(), 'F': s.f_mean.tolist()} for a, s in zip(sets, scores)}
        for a, video_scores in zip(sets, scores):
            per_set[a].append(video_scores)
    if sets == list(range(REF_DAVIS17_EXPRESSION_SETS)):
        results = ref_davis17_scores(per_set)
        mean = results.pop('mean')
    else:
        results = {f'anno_{a}': davis_global_scores(per_set[a]) for a in sets}
        mean = {key: float(np.mean([scores[key] for scores in results.values()])) for key in ('J', 'F', 'J&F')}
    return {**mean, 'per_set': results, 'num_videos': len(videos),
            'num_objects': sum(len(scores.j_mean) for scores in per_set[sets[0]]), 'per_video': per_video,
            'predictions': str(predictions), 'annotations_dir': str(annotations_dir)}


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


def format_results(results: dict, benchmark: str = 'refer_youtube_vos') -> str:
    """The summary printed by the command line: scores in percent and the missing prediction files."""
    if benchmark == 'ref_davis17':
        lines = [f'Ref-DAVIS17, DAVIS-2017 unsupervised protocol: {results["num_videos"]} videos, '
                 f'{results["num_objects"]} objects',
                 f'  {"expression set":<36} {"J&F":>6} {"J":>6} {"F":>6}']
        for name, scores in results['per_set'].items():
            label = f'{name} ({ref_davis17.SET_NAMES[int(name[5:])]})'
            lines.append(f'  {label:<36} {100 * scores["J&F"]:6.2f} {100 * scores["J"]:6.2f} {100 * scores["F"]:6.2f}')
        label = 'mean (the reported number)' if len(results['per_set']) == REF_DAVIS17_EXPRESSION_SETS \
            else f'mean of {len(results["per_set"])} sets (not the reported number)'
        lines.append(f'  {label:<36} {100 * results["J&F"]:6.2f} {100 * results["J"]:6.2f} {100 * results["F"]:6.2f}')
        return '\n'.join(lines)
    name = {'refer_youtube_vos': 'Refer-YouTube-VOS', 'mevis': 'MeViS'}[benchmark]
    lines = [f'{name}, DAVIS-2017 measures: {results["num_videos"]} videos, '
             f'{results["num_expressions"]} expressions, {results["num_frames"]} frames',
             f'J&F {100 * results["J&F"]:.2f}   J {100 * results["J"]:.2f}   F {100 * results["F"]:.2f}']
    missing = results['missing_predictions']
    if benchmark == 'mevis' and results['missing_videos']:
        videos = results['missing_videos']
        lines.append(f'{len(videos)} video(s) missing from the predictions ({len(missing)} files): each of their '
                     'expressions scores J = F = 0, as in MeViS\'s eval_mevis.py; first ones:')
        lines += [f'  {video}' for video in videos[:MAX_NAMES_PRINTED]]
    elif missing:
        lines.append(f'{len(missing)} prediction files missing (scored as empty masks), first ones:')
        lines += [f'  {name}' for name in missing[:MAX_NAMES_PRINTED]]
    return '\n'.join(lines)


def _default_output(predictions: Path) -> Path:
    name = predictions.stem if predictions.suffix == '.zip' else predictions.name
    return predictions.with_name(f'{name}_jf.json')


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('predictions', help='predictions folder or submission zip (ref_davis17: the folder holding '
                                            'anno_<a>/)')
    parser.add_argument('--benchmark', choices=BENCHMARKS, default='refer_youtube_vos',
                        help='the ground truth and protocol (default: refer_youtube_vos)')
    parser.add_argument('--dataset-root', help='the dataset root (refer_youtube_vos: holding train/ and '
                                               'meta_expressions/; mevis: holding valid_u/; '
                                               'ref_davis17: holding DAVIS/)')
    parser.add_argument('--annotations-dir', help='ground-truth masks (default: <dataset-root>/train/Annotations; '
                                                  'ref_davis17: <dataset-root>/DAVIS/Annotations_unsupervised/480p)')
    parser.add_argument('--meta', help='meta file with the referred objects of each expression (default: '
                                       '<dataset-root>/meta_expressions/train/meta_expressions.json; mevis: '
                                       '<dataset-root>/<split>/meta_expressions.json)')
    parser.add_argument('--mask-dict', help='mevis: the masks (default: <dataset-root>/<split>/mask_dict.json)')
    parser.add_argument('--split', default='valid_u', choices=mevis.SPLITS_WITH_MASKS,
                        help='mevis: the split with ground truth (default: valid_u)')
    videos = parser.add_mutually_exclusive_group()
    videos.add_argument('--videos', nargs='+', help='evaluate only these videos')
    videos.add_argument('--videos-file', help='evaluate only the videos listed in this file, one a line')
    parser.add_argument('--output', help='results JSON (default: <predictions>_jf.json beside the predictions)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    args = parser.parse_args(argv)
    root = Path(args.dataset_root) if args.dataset_root else None
    output = Path(args.output) if args.output else _default_output(Path(args.predictions))
    try:
        check_output_file(output, 'results file')  # (before the scoring, which may take a while)
        selected = args.videos
        if args.videos_file:
            selected = [line.strip() for line in read_text(Path(args.videos_file), 'one video id a line').splitlines()
                        if line.strip()]
        if args.benchmark == 'ref_davis17':
            if root is None and args.annotations_dir is None:
                parser.error('give --dataset-root or --annotations-dir')
            annotations_dir = Path(args.annotations_dir) if args.annotations_dir \
                else root / 'DAVIS' / 'Annotations_unsupervised' / '480p'
            if selected is None and root is not None:
                selected = ref_davis17.read_video_list(
                    ref_davis17.require_path(root / 'DAVIS' / 'ImageSets' / '2017' / 'val.txt', 'val video list',
                                             ref_davis17.LAYOUT))
            results = evaluate_ref_davis17(args.predictions, annotations_dir, selected,
                                           show_progress=not args.no_progress)
        elif args.benchmark == 'mevis':
            if root is None and (args.meta is None or args.mask_dict is None):
                parser.error('give --dataset-root, or both --meta and --mask-dict')
            meta = Path(args.meta) if args.meta else root / args.split / 'meta_expressions.json'
            mask_dict = Path(args.mask_dict) if args.mask_dict else root / args.split / 'mask_dict.json'
            results = evaluate_mevis(args.predictions, meta, mask_dict, args.split, selected,
                                     show_progress=not args.no_progress)
        else:
            if root is None and (args.annotations_dir is None or args.meta is None):
                parser.error('give --dataset-root, or both --annotations-dir and --meta')
            annotations_dir = Path(args.annotations_dir) if args.annotations_dir else root / 'train' / 'Annotations'
            meta = Path(args.meta) if args.meta else root / 'meta_expressions' / 'train' / 'meta_expressions.json'
            results = evaluate_refer_youtube_vos(args.predictions, annotations_dir, meta, selected,
                                                 show_progress=not args.no_progress)
        print(format_results(results, args.benchmark))
        write_json(output, results, 'results file', indent=2)
    except (OSError, ValueError, RuntimeError, WriteError) as error:  # bad inputs or output: one line naming the file
        if isinstance(error, DatasetLayoutError):
            print(f'expected layout:\n{error.layout}', file=sys.stderr)
        print(f'error: {error_message(error)}', file=sys.stderr)
        return 2
    print(f'results saved to {output}')
    return 0


if __name__ == '__main__':
    sys.exit(main())

"""Evaluation metrics.

A2D-Sentences / JHMDB-Sentences: COCO mask mAP (pycocotools, categories ignored) over every object query's mask
(the paper's protocol) and over each image's top-scored mask (`... top-1`), and on each image's highest-scored
prediction precision@K, overall IoU and mean IoU (`compute_referring_metrics`).

Refer-YouTube-VOS: the DAVIS-2017 region similarity J (`db_eval_iou`) and boundary F-measure
(`db_eval_boundary`); `tools/evaluate_jf.py` averages them over expressions.

Ref-DAVIS17: the DAVIS-2017 unsupervised protocol per video (`davis_unsupervised_scores`), averaged over objects
per expression set and over the four sets (`ref_davis17_scores`). MeViS: J and F per expression
(`mevis_expression_scores`), averaged over expressions (`mevis_summary`).
"""
import contextlib
import copy
import io
import math
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import cv2
import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy.optimize import linear_sum_assignment
from skimage.morphology import disk

AP_NAMES = ('mAP 0.5:0.95', 'AP 0.5', 'AP 0.75', 'AP 0.5:0.95 S', 'AP 0.5:0.95 M', 'AP 0.5:0.95 L')
PRECISION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
PREDICTION_KEYS = ('image_id', 'category_id', 'segmentation', 'score')


# --------------------------------------------------------------------------------------------------------------
# A2D-Sentences / JHMDB-Sentences
# --------------------------------------------------------------------------------------------------------------

def compute_referring_metrics(coco_gt: COCO, predictions: List[dict], verbose: bool = True,
                              precision_and_iou: bool = True) -> Dict[str, float]:
    """All A2D/JHMDB metrics by name.

    - The six COCO numbers (`AP_NAMES`: `mAP 0.5:0.95`, `AP 0.5`, ...) over every prediction: the paper's
      protocol, where every object query's mask of a frame is a scored prediction.
    - The same six on each frame's top-scored prediction only, named with ` top-1` (`mAP 0.5:0.95 top-1`, ...):
      the protocol of papers that score one mask per frame. The extra masks of the paper's protocol give a
      frame whose top mask misses a second chance, so its numbers usually come out higher (ReferFormer's users
      report 55.0 against about 51.9): compare like with like.
    - With `precision_and_iou`, on each frame's top-scored prediction too: `P@0.5` ... `P@0.9`, `overall_iou`
      and `mean_iou`.

    `predictions` is a list of `{image_id, category_id, segmentation (RLE, counts as bytes or str), score}`;
    every image id must exist in `coco_gt`. An empty list is valid (every number is then 0, except the size
    buckets that hold no ground truth object, which COCO reports as -1). `verbose` prints the COCO table.
    """
    coco_pred = load_predictions(coco_gt, predictions)
    metrics = _coco_mask_ap(coco_gt, coco_pred, verbose)
    top1 = _coco_mask_ap(coco_gt, load_predictions(coco_gt, top_scored_predictions(predictions)), verbose=False)
    metrics.update({f'{name} top-1': value for name, value in top1.items()})
    if precision_and_iou:
        precision_at_k, overall_iou, mean_iou = calculate_precision_at_k_and_iou_metrics(coco_gt, coco_pred)
        metrics.update({f'P@{k}': float(p) for k, p in zip(PRECISION_THRESHOLDS, precision_at_k)})
        metrics.update({'overall_iou': overall_iou, 'mean_iou': mean_iou})
    return metrics


def top_scored_predictions(predictions: List[dict]) -> List[dict]:
    """Each image's highest-scored prediction (the first of equal scores), in the order of the images."""
    best = {}
    for prediction in predictions:
        kept = best.get(prediction['image_id'])
        if kept is None or prediction['score'] > kept['score']:
            best[prediction['image_id']] = prediction
    return list(best.values())


def _coco_mask_ap(coco_gt: COCO, coco_pred: COCO, verbose: bool) -> Dict[str, float]:
    """The six COCO segmentation numbers of `AP_NAMES`, categories ignored."""
    coco_eval = COCOeval(coco_gt, coco_pred, iouType='segm')
    # One dummy category: a prediction may match the image's ground truth whatever its category id.
    coco_eval.params.useCats = 0
    with _quiet():
        coco_eval.evaluate()
        coco_eval.accumulate()
    with contextlib.nullcontext() if verbose else _quiet():
        coco_eval.summarize()
    return {name: float(value) for name, value in zip(AP_NAMES, coco_eval.stats[:6])}


def read_coco_ground_truth(path) -> COCO:
    """A COCO-format ground-truth file, read without pycocotools' progress prints."""
    if not Path(path).is_file():
        raise FileNotFoundError(f'COCO-format ground truth not found: {path}')
    with _quiet():
        return COCO(str(path))


def load_predictions(coco_gt: COCO, predictions: List[dict]) -> COCO:
    """The predictions as a pycocotools results object over the images of `coco_gt`.

    Unlike `COCO.loadRes` it accepts an empty list, names the offending prediction when one is malformed,
    and leaves the caller's dicts untouched (loadRes writes `area`, `bbox` and `id` into them).
    """
    _check_ground_truth(coco_gt)
    _check_predictions(coco_gt, predictions)
    with _quiet():
        if predictions:
            # Only the four fields: with a `bbox` present, loadRes would take the box area as the mask area.
            return coco_gt.loadRes([{key: p[key] for key in PREDICTION_KEYS} for p in predictions])
        coco_pred = COCO()
        coco_pred.dataset = {'images': list(coco_gt.dataset['images']),
                             'categories': copy.deepcopy(coco_gt.dataset.get('categories', [])),
                             'annotations': []}
        coco_pred.createIndex()
    return coco_pred


def calculate_precision_at_k_and_iou_metrics(coco_gt: COCO, coco_pred: COCO) -> Tuple[np.ndarray, float, float]:
    """Precision@K for K in `PRECISION_THRESHOLDS`, overall IoU and mean IoU, on each image's top prediction.

    Every ground-truth image holds exactly one annotation. Its prediction is the one with the highest score
    (the first of them on a tie); an image without any prediction counts as an empty predicted mask.
    Precision@K is the fraction of images whose IoU is strictly above K; overall IoU is the summed
    intersection over the summed union; IoU is exact (I / U, and 1.0 when both masks are empty).
    Returns `(precision_at_k [len(PRECISION_THRESHOLDS)], overall_iou, mean_iou)`.
    """
    image_ids = coco_gt.getImgIds()
    if not image_ids:
        raise ValueError('the ground truth holds no images: nothing to evaluate')
    ious = []
    total_intersection = total_union = 0
    for image_id in image_ids:
        gt_annotations = coco_gt.imgToAnns[image_id]
        if len(gt_annotations) != 1:
            raise ValueError(f'ground-truth image {image_id!r} has {len(gt_annotations)} annotations; '
                             'referring evaluation expects exactly one (the referred instance)')
        gt_mask = coco_gt.annToMask(gt_annotations[0]).astype(bool)
        pred_annotations = coco_pred.imgToAnns[image_id]
        if pred_annotations:
            # max() keeps the first of equal maxima, so ties go to the earliest prediction.
            best = max(pred_annotations, key=lambda annotation: annotation['score'])
            pred_mask = coco_pred.annToMask(best).astype(bool)
            if pred_mask.shape != gt_mask.shape:
                raise ValueError(f'image {image_id!r}: the predicted mask is {pred_mask.shape[0]}x{pred_mask.shape[1]} '
                                 f'but the ground-truth mask is {gt_mask.shape[0]}x{gt_mask.shape[1]}')
        else:
            pred_mask = np.zeros_like(gt_mask)
        intersection = int(np.count_nonzero(gt_mask & pred_mask))
        union = int(np.count_nonzero(gt_mask | pred_mask))
        ious.append(intersection / union if union else 1.0)
        total_intersection += intersection
        total_union += union
    ious = np.array(ious)
    precision_at_k = np.array([np.mean(ious > k) for k in PRECISION_THRESHOLDS])
    overall_iou = total_intersection / total_union if total_union else 1.0
    return precision_at_k, overall_iou, float(ious.mean())


def _check_ground_truth(coco_gt: COCO):
    if not coco_gt.getImgIds():
        raise ValueError('the ground truth holds no images: nothing to evaluate')
    for annotation in coco_gt.dataset.get('annotations', []):
        # COCOeval reads these without a default; a GT file written without them fails deep inside it.
        for key in ('image_id', 'segmentation', 'area', 'iscrowd'):
            if key not in annotation:
                raise ValueError(f'ground-truth annotation {annotation.get("id", "?")} has no {key!r} '
                                 f'(expected keys: id, image_id, category_id, segmentation, area, iscrowd)')


def _check_predictions(coco_gt: COCO, predictions: Sequence[dict]):
    if not isinstance(predictions, (list, tuple)):
        raise TypeError(f'predictions must be a list of dicts, got {type(predictions).__name__}')
    for index, prediction in enumerate(predictions):
        missing = [key for key in PREDICTION_KEYS if key not in prediction]
        if missing:
            raise ValueError(f'prediction {index} has no {missing} (expected keys: {", ".join(PREDICTION_KEYS)})')
        if prediction['image_id'] not in coco_gt.imgs:
            raise ValueError(f'prediction {index} has image_id {prediction["image_id"]!r}, which is not in the '
                             f'ground truth ({len(coco_gt.imgs)} images)')
        segmentation = prediction['segmentation']
        if not isinstance(segmentation, dict) or 'counts' not in segmentation or 'size' not in segmentation:
            raise ValueError(f'prediction {index}: segmentation must be an RLE dict {{"size": [h, w], "counts": ...}}')


@contextlib.contextmanager
def _quiet():
    """Silence pycocotools' progress prints."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


# --------------------------------------------------------------------------------------------------------------
# DAVIS-2017 J and F (Refer-YouTube-VOS)
# --------------------------------------------------------------------------------------------------------------

def db_eval_iou(annotation: np.ndarray, segmentation: np.ndarray):
    """Region similarity J per frame: |A & S| / |A | S|, 1.0 when both masks are empty.

    `annotation`, `segmentation`: masks `[H, W]` or `[T, H, W]` (nonzero = object). Returns a float for one
    frame, an array `[T]` for a video.
    """
    annotation, segmentation = _as_bool_masks(annotation, segmentation)
    intersection = np.count_nonzero(annotation & segmentation, axis=(-2, -1))
    union = np.count_nonzero(annotation | segmentation, axis=(-2, -1))
    j = np.where(union == 0, 1.0, intersection / np.maximum(union, 1))
    return float(j) if j.ndim == 0 else j


def db_eval_boundary(annotation: np.ndarray, segmentation: np.ndarray, bound_th: float = 0.008):
    """Boundary F-measure per frame (DAVIS 2017).

    Boundaries are 1-pixel maps (`seg2bmap`); a boundary pixel counts as matched when it lies within a disk of
    radius `bound_th` pixels (when >= 1) or `ceil(bound_th * image diagonal)` of the other mask's boundary.
    Both boundaries empty: F = 1; only one empty: F = 0. Shapes and return type as in `db_eval_iou`.
    """
    annotation, segmentation = _as_bool_masks(annotation, segmentation)
    if annotation.ndim == 2:
        return _f_measure(segmentation, annotation, bound_th)
    return np.array([_f_measure(s, a, bound_th) for s, a in zip(segmentation, annotation)])


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """The 1-pixel boundary map of a mask `[H, W]` (bool): pixels whose east, south or south-east neighbour
    differs, as in the DAVIS 2017 code (the image border itself is not a boundary)."""
    seg = np.asarray(seg).astype(bool)
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    south_east = np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    boundary = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    boundary[-1, :] = seg[-1, :] ^ east[-1, :]
    boundary[:, -1] = seg[:, -1] ^ south[:, -1]
    boundary[-1, -1] = False
    return boundary


def _f_measure(foreground_mask: np.ndarray, gt_mask: np.ndarray, bound_th: float) -> float:
    bound_pix = bound_th if bound_th >= 1 else math.ceil(bound_th * np.linalg.norm(foreground_mask.shape))
    kernel = disk(int(bound_pix)).astype(np.uint8)
    fg_boundary = seg2bmap(foreground_mask)
    gt_boundary = seg2bmap(gt_mask)
    fg_dilated = cv2.dilate(fg_boundary.astype(np.uint8), kernel).astype(bool)
    gt_dilated = cv2.dilate(gt_boundary.astype(np.uint8), kernel).astype(bool)
    n_fg = int(np.count_nonzero(fg_boundary))
    n_gt = int(np.count_nonzero(gt_boundary))
    if n_fg == 0 and n_gt == 0:
        return 1.0
    if n_fg == 0:
        precision, recall = 1.0, 0.0
    elif n_gt == 0:
        precision, recall = 0.0, 1.0
    else:
        precision = np.count_nonzero(fg_boundary & gt_dilated) / n_fg
        recall = np.count_nonzero(gt_boundary & fg_dilated) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def _as_bool_masks(annotation, segmentation):
    annotation = np.asarray(annotation)
    segmentation = np.asarray(segmentation)
    if annotation.shape != segmentation.shape or annotation.ndim not in (2, 3):
        raise ValueError(f'expected annotation and segmentation of the same shape [H, W] or [T, H, W], '
                         f'got {annotation.shape} and {segmentation.shape}')
    return annotation.astype(bool), segmentation.astype(bool)


# --------------------------------------------------------------------------------------------------------------
# DAVIS-2017 unsupervised protocol (Ref-DAVIS17) and MeViS J&F
# --------------------------------------------------------------------------------------------------------------

DAVIS_VOID_LABEL = 255
DAVIS_MAX_PROPOSALS = 20
DAVIS_BOUNDARY_THRESHOLD = 0.008  # db_eval_boundary's bound_th: the tolerance is this fraction of the diagonal
REF_DAVIS17_EXPRESSION_SETS = 4


class DavisVideoScores(NamedTuple):
    """One video under the DAVIS-2017 unsupervised protocol, per ground-truth object (object k at index k - 1)."""
    j_mean: np.ndarray  # [M] J-Mean over the video's frames
    f_mean: np.ndarray  # [M] F-Mean over the video's frames
    predicted_ids: np.ndarray  # [M] the predicted id matched to the object; 0: none (it got an empty mask)


def davis_unsupervised_scores(gt_labels: np.ndarray, pred_labels: np.ndarray,
                              max_proposals: int = DAVIS_MAX_PROPOSALS) -> DavisVideoScores:
    """J-Mean and F-Mean of each ground-truth object of one video after matching predicted ids to objects, as
    the davis2017-evaluation package scores the 'unsupervised' task.

    `gt_labels`: `[T, H, W]` ground-truth label maps (0 background, 1..M objects, `DAVIS_VOID_LABEL` void);
    `pred_labels`: `[T, H, W]` predicted label maps (0 background, ids 1..P), every frame of the video.
    - The objects are 1..M with M the largest id of the first ground-truth frame.
    - The predicted masks are ids 1..P with P the largest id of any frame (an id absent everywhere is an empty
      mask); P > `max_proposals` is an error; with P < M the missing ones are empty masks.
    - Void pixels are left out of both masks of every pair: J counts intersection and union over the other
      pixels, F takes the boundaries of the masks with void pixels cleared.
    - J and F of every (predicted id, object) pair per frame (the numbers of `db_eval_iou` and
      `db_eval_boundary`); predicted ids are assigned to objects by the Hungarian method on the pairs' mean of
      (J + F) / 2 over frames, maximising the sum. Unassigned predicted ids cost nothing.
    """
    (scores,) = davis_unsupervised_scores_many(gt_labels, [pred_labels], max_proposals)
    return scores


def davis_unsupervised_scores_many(gt_labels: np.ndarray, predictions: Sequence[np.ndarray],
                                   max_proposals: int = DAVIS_MAX_PROPOSALS) -> List[DavisVideoScores]:
    """`davis_unsupervised_scores` of several predictions of one video (e.g. the four Ref-DAVIS17 expression
    sets), computing the ground truth's boundaries once.

    Per frame, each mask's area, boundary and dilated boundary are computed once rather than once per pair, and
    a pair where either mask is empty needs no pixel count; the numbers are those of `db_eval_iou` and
    `db_eval_boundary` on each pair.
    """
    gt_labels = np.asarray(gt_labels)
    predictions = [np.asarray(pred_labels) for pred_labels in predictions]
    for pred_labels in predictions:
        if gt_labels.ndim != 3 or gt_labels.shape != pred_labels.shape or not len(gt_labels):
            raise ValueError(f'expected ground-truth and predicted label maps of the same shape [T, H, W] with '
                             f'T >= 1, got {gt_labels.shape} and {pred_labels.shape}')
        if pred_labels.min() < 0 or pred_labels.max() > max_proposals:
            raise ValueError(f'predicted ids must lie in 0..{max_proposals}, '
                             f'got {pred_labels.min()}..{pred_labels.max()}')
    num_frames, height, width = gt_labels.shape
    num_objects = int(np.where(gt_labels[0] == DAVIS_VOID_LABEL, 0, gt_labels[0]).max())
    bound_pix = math.ceil(DAVIS_BOUNDARY_THRESHOLD * np.linalg.norm((height, width)))
    kernel = disk(bound_pix).astype(np.uint8)
    num_predicted = [int(pred_labels.max()) for pred_labels in predictions]
    num_rows = [max(p, num_objects) for p in num_predicted]
    j = [np.zeros((rows, num_objects, num_frames)) for rows in num_rows]  # [P, M, T]
    f = [np.zeros_like(scores) for scores in j]
    for t in range(num_frames):
        scored = gt_labels[t] != DAVIS_VOID_LABEL
        # (objects that first appear after the first frame, ids above M, are not scored)
        gt_masks = [gt_labels[t] == k for k in range(1, num_objects + 1)]
        gt_areas = [np.count_nonzero(mask) for mask in gt_masks]
        gt_boundaries = [_boundary_maps(mask, kernel) if area else None for mask, area in zip(gt_masks, gt_areas)]
        for i, pred_labels in enumerate(predictions):
            for row in range(num_rows[i]):
                pred_mask = (pred_labels[t] == row + 1) & scored
                pred_area = np.count_nonzero(pred_mask)
                pred_boundary = _boundary_maps(pred_mask, kernel) if pred_area else None
                for column, (gt_mask, gt_area) in enumerate(zip(gt_masks, gt_areas)):
                    intersection = np.count_nonzero(pred_mask & gt_mask) if pred_area and gt_area else 0
                    union = pred_area + gt_area - intersection
                    # as db_eval_iou and db_eval_boundary
                    j[i][row, column, t] = intersection / union if union else 1.0
                    f[i][row, column, t] = _pair_f_measure(pred_boundary, gt_boundaries[column])
    results = []
    for i in range(len(predictions)):
        rows, columns = linear_sum_assignment(-(j[i].mean(axis=2) + f[i].mean(axis=2)) / 2)
        row_of_object = np.empty(num_objects, dtype=int)
        row_of_object[columns] = rows
        objects_range = np.arange(num_objects)
        predicted_ids = np.where(row_of_object < num_predicted[i], row_of_object + 1, 0)
        results.append(DavisVideoScores(j_mean=j[i][row_of_object, objects_range].mean(axis=1),
                                        f_mean=f[i][row_of_object, objects_range].mean(axis=1),
                                        predicted_ids=predicted_ids))
    return results


def _boundary_maps(mask: np.ndarray, kernel: np.ndarray) -> Optional[Tuple[np.ndarray, np.ndarray, int]]:
    """(boundary, dilated boundary, boundary pixels) of a mask `[H, W]`, as `db_eval_boundary` makes them; None
    for an empty boundary."""
    boundary = seg2bmap(mask)
    count = int(np.count_nonzero(boundary))
    if not count:
        return None
    # dilated within the boundary's bounding box grown by the kernel radius: nothing outside it is reached
    radius = kernel.shape[0] // 2
    rows, columns = np.flatnonzero(boundary.any(axis=1)), np.flatnonzero(boundary.any(axis=0))
    window = (slice(max(rows[0] - radius, 0), rows[-1] + radius + 1),
              slice(max(columns[0] - radius, 0), columns[-1] + radius + 1))
    dilated = np.zeros_like(boundary)
    dilated[window] = cv2.dilate(np.ascontiguousarray(boundary[window]).view(np.uint8), kernel).view(bool)
    return boundary, dilated, count


def _pair_f_measure(pred_boundary, gt_boundary) -> float:
    """`db_eval_boundary` of one pair from `_boundary_maps` of both masks (the same arithmetic)."""
    if pred_boundary is None or gt_boundary is None:
        return 1.0 if pred_boundary is None and gt_boundary is None else 0.0
    pred_map, pred_dilated, n_pred = pred_boundary
    gt_map, gt_dilated, n_gt = gt_boundary
    precision = np.count_nonzero(pred_map & gt_dilated) / n_pred
    recall = np.count_nonzero(gt_map & pred_dilated) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def davis_global_scores(videos: Iterable[DavisVideoScores]) -> Dict[str, float]:
    """`{'J', 'F', 'J&F'}`: the means of J-Mean and F-Mean over all objects of all videos, and their mean (the
    davis2017-evaluation global results)."""
    videos = list(videos)
    j_means = np.concatenate([video.j_mean for video in videos]) if videos else np.zeros(0)
    f_means = np.concatenate([video.f_mean for video in videos]) if videos else np.zeros(0)
    if not len(j_means):
        raise ValueError('no ground-truth object to average over')
    j, f = float(j_means.mean()), float(f_means.mean())
    return {'J': j, 'F': f, 'J&F': (j + f) / 2}


def ref_davis17_scores(videos_per_set: Mapping[int, Iterable[DavisVideoScores]]) -> Dict[str, Dict[str, float]]:
    """Ref-DAVIS17 results: `davis_global_scores` of each expression set a (0..3, keys 'anno_<a>'), and under
    'mean' their means over the four sets (the reported number)."""
    if sorted(videos_per_set) != list(range(REF_DAVIS17_EXPRESSION_SETS)):
        raise ValueError(f'expected the scores of expression sets 0..{REF_DAVIS17_EXPRESSION_SETS - 1}, '
                         f'got sets {sorted(videos_per_set)}')
    results = {f'anno_{a}': davis_global_scores(videos_per_set[a]) for a in range(REF_DAVIS17_EXPRESSION_SETS)}
    results['mean'] = {name: float(np.mean([scores[name] for scores in results.values()]))
                       for name in ('J', 'F', 'J&F')}
    return results


def mevis_expression_scores(expressions: Iterable[Tuple[str, str, np.ndarray, np.ndarray]]
                            ) -> Dict[str, Tuple[float, float]]:
    """`{'<video>_<exp_id>': (J, F)}` from `(video_id, exp_id, gt_masks, pred_masks)` items, masks `[T, H, W]`
    (nonzero = foreground) over every frame of the video: per frame `db_eval_iou` and `db_eval_boundary`
    (both 1 when both masks are empty; F 0 when exactly one is), averaged over the frames.

    Expressions are kept by id, never by text (texts repeat within a video); a key seen twice is an error.
    """
    scores = {}
    for video_id, exp_id, gt_masks, pred_masks in expressions:
        key = f'{video_id}_{exp_id}'
        if key in scores:
            raise ValueError(f'expression {key} appears twice')
        if np.ndim(gt_masks) != 3:
            raise ValueError(f'expression {key}: expected masks [T, H, W], got shape {np.shape(gt_masks)}')
        scores[key] = (float(np.mean(db_eval_iou(gt_masks, pred_masks))),
                       float(np.mean(_boundary_f_measures(gt_masks, pred_masks))))
    return scores


def _boundary_f_measures(gt_masks: np.ndarray, pred_masks: np.ndarray) -> List[float]:
    """`db_eval_boundary(gt_masks, pred_masks)` per frame, with the dilation restricted to each boundary's
    surroundings (`_boundary_maps`): the same numbers, faster on large frames."""
    gt_masks, pred_masks = _as_bool_masks(gt_masks, pred_masks)
    bound_pix = math.ceil(DAVIS_BOUNDARY_THRESHOLD * np.linalg.norm(gt_masks.shape[-2:]))
    kernel = disk(bound_pix).astype(np.uint8)
    return [_pair_f_measure(_boundary_maps(pred, kernel), _boundary_maps(gt, kernel))
            for gt, pred in zip(gt_masks, pred_masks)]


def mevis_summary(expression_scores: Mapping[str, Tuple[float, float]]) -> Dict[str, float]:
    """`{'J', 'F', 'J&F'}`: the means of the expressions' J and F, and their mean."""
    if not expression_scores:
        raise ValueError('no expression scores to average')
    j = float(np.mean([j for j, _ in expression_scores.values()]))
    f = float(np.mean([f for _, f in expression_scores.values()]))
    return {'J': j, 'F': f, 'J&F': (j + f) / 2}

"""Evaluation metrics.

A2D-Sentences / JHMDB-Sentences: COCO mask mAP (pycocotools, categories ignored), and on each image's
highest-scored prediction precision@K, overall IoU and mean IoU (`compute_referring_metrics`).

Refer-YouTube-VOS: the DAVIS-2017 region similarity J (`db_eval_iou`) and boundary F-measure
(`db_eval_boundary`); `tools/evaluate_refer_youtube_vos.py` averages them over expressions.
"""
import contextlib
import copy
import io
import math
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from skimage.morphology import disk

AP_NAMES = ('mAP 0.5:0.95', 'AP 0.5', 'AP 0.75', 'AP 0.5:0.95 S', 'AP 0.5:0.95 M', 'AP 0.5:0.95 L')
PRECISION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
PREDICTION_KEYS = ('image_id', 'category_id', 'segmentation', 'score')


# --------------------------------------------------------------------------------------------------------------
# A2D-Sentences / JHMDB-Sentences
# --------------------------------------------------------------------------------------------------------------

def compute_referring_metrics(coco_gt: COCO, predictions: List[dict], verbose: bool = True) -> Dict[str, float]:
    """All A2D/JHMDB metrics by name: the six COCO numbers (`AP_NAMES`), `P@0.5` ... `P@0.9`, `overall_iou`
    and `mean_iou`.

    `predictions` is a list of `{image_id, category_id, segmentation (RLE, counts as bytes or str), score}`;
    every image id must exist in `coco_gt`. An empty list is valid (every number is then 0, except the size
    buckets that hold no ground truth object, which COCO reports as -1). `verbose` prints the COCO table.
    """
    coco_pred = load_predictions(coco_gt, predictions)
    coco_eval = COCOeval(coco_gt, coco_pred, iouType='segm')
    # One dummy category: a prediction may match the image's ground truth whatever its category id.
    coco_eval.params.useCats = 0
    with _quiet():
        coco_eval.evaluate()
        coco_eval.accumulate()
    with contextlib.nullcontext() if verbose else _quiet():
        coco_eval.summarize()
    metrics = {name: float(value) for name, value in zip(AP_NAMES, coco_eval.stats[:6])}

    precision_at_k, overall_iou, mean_iou = calculate_precision_at_k_and_iou_metrics(coco_gt, coco_pred)
    metrics.update({f'P@{k}': float(p) for k, p in zip(PRECISION_THRESHOLDS, precision_at_k)})
    metrics.update({'overall_iou': overall_iou, 'mean_iou': mean_iou})
    return metrics


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

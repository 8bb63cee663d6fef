"""metrics.py: COCO mAP / precision@K / IoU on tiny ground truths, DAVIS J and F on hand-computed masks.

Every expected value is derived by hand in the comments next to it.
"""
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from metrics import (AP_NAMES, calculate_precision_at_k_and_iou_metrics, compute_referring_metrics, db_eval_boundary,
                     db_eval_iou, load_predictions, seg2bmap)

H, W = 20, 20


def box(top, left, height, width, shape=(H, W)):
    mask = np.zeros(shape, dtype=bool)
    mask[top:top + height, left:left + width] = True
    return mask


def rle(mask, counts_as_str=False):
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    if counts_as_str:
        encoded['counts'] = encoded['counts'].decode()
    return encoded


def make_coco_gt(masks):
    """A referring ground truth: one image per mask, ids 'v_vid_f_<i>_i_1', one annotation each, category 1."""
    images, annotations = [], []
    for index, mask in enumerate(masks):
        image_id = f'v_vid_f_{index + 1}_i_1'
        images.append({'id': image_id, 'height': mask.shape[0], 'width': mask.shape[1]})
        encoded = rle(mask, counts_as_str=True)  # as a JSON file stores it
        annotations.append({'id': index + 1, 'image_id': image_id, 'category_id': 1, 'segmentation': encoded,
                            'area': int(mask.sum()), 'bbox': mask_utils.toBbox(encoded).tolist(), 'iscrowd': 0})
    coco = COCO()
    coco.dataset = {'images': images, 'annotations': annotations, 'categories': [{'id': 1, 'name': 'dummy'}]}
    coco.createIndex()
    return coco


def prediction(image_index, mask, score, counts_as_str=False):
    return {'image_id': f'v_vid_f_{image_index + 1}_i_1', 'category_id': 1, 'segmentation': rle(mask, counts_as_str),
            'score': score}


def precision_metrics(coco_gt, predictions):
    return calculate_precision_at_k_and_iou_metrics(coco_gt, load_predictions(coco_gt, predictions))


# ---------------------------------------------------------------- COCO numbers

@pytest.mark.parametrize('counts_as_str', [False, True])
def test_perfect_predictions_give_ap_one(counts_as_str):
    gt_masks = [box(2, 3, 8, 6), box(5, 5, 10, 10)]
    predictions = [prediction(i, m, 0.9, counts_as_str) for i, m in enumerate(gt_masks)]
    metrics = compute_referring_metrics(make_coco_gt(gt_masks), predictions, verbose=False)
    for name in ('mAP 0.5:0.95', 'AP 0.5', 'AP 0.75', 'AP 0.5:0.95 S'):
        assert metrics[name] == pytest.approx(1.0)
    # Every object is smaller than 32x32 pixels: COCO reports -1 for the empty medium and large buckets.
    assert metrics['AP 0.5:0.95 M'] == -1 and metrics['AP 0.5:0.95 L'] == -1
    assert [metrics[f'P@{k}'] for k in (0.5, 0.6, 0.7, 0.8, 0.9)] == [1.0] * 5
    assert metrics['overall_iou'] == 1.0 and metrics['mean_iou'] == 1.0


def test_result_names_are_the_published_ones():
    metrics = compute_referring_metrics(make_coco_gt([box(0, 0, 5, 5)]), [], verbose=False)
    ap_names = ['mAP 0.5:0.95', 'AP 0.5', 'AP 0.75', 'AP 0.5:0.95 S', 'AP 0.5:0.95 M', 'AP 0.5:0.95 L']
    assert list(metrics) == ap_names + [f'{name} top-1' for name in ap_names] + [
        'P@0.5', 'P@0.6', 'P@0.7', 'P@0.8', 'P@0.9', 'overall_iou', 'mean_iou']
    assert tuple(metrics)[:6] == AP_NAMES
    without = compute_referring_metrics(make_coco_gt([box(0, 0, 5, 5)]), [], verbose=False, precision_and_iou=False)
    assert list(without) == ap_names + [f'{name} top-1' for name in ap_names]


def test_top1_protocol_scores_only_each_frames_top_mask():
    # Image 1: its only mask is right (score 0.9). Image 2: a wrong mask scored 0.7 above the right one (0.6).
    # Every mask (the paper's protocol), ranked: TP 0.9, FP 0.7, TP 0.6 -> (precision, recall) (1, 1/2),
    # (1/2, 1/2), (2/3, 1). COCO interpolates at 101 recalls: 1 up to recall 0.50 (51 points), 2/3 above
    # (50 points): AP = (51 + 50 * 2/3) / 101 at every IoU threshold.
    # Top-1: TP 0.9, FP 0.7 -> recall at most 1/2: AP = 51 / 101.
    gt_masks = [box(0, 0, 6, 6), box(8, 8, 6, 6)]
    predictions = [prediction(0, gt_masks[0], 0.9), prediction(1, box(0, 12, 6, 6), 0.7),
                   prediction(1, gt_masks[1], 0.6)]
    metrics = compute_referring_metrics(make_coco_gt(gt_masks), predictions, verbose=False)
    assert metrics['mAP 0.5:0.95'] == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert metrics['AP 0.5'] == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert metrics['mAP 0.5:0.95 top-1'] == pytest.approx(51 / 101)
    assert metrics['AP 0.75 top-1'] == pytest.approx(51 / 101)
    # precision@K and IoU were top-1 already: image 1 IoU 1, image 2 IoU 0
    assert metrics['P@0.5'] == 0.5 and metrics['mean_iou'] == 0.5


def test_wrong_predictions_give_zero():
    gt_masks = [box(0, 0, 5, 5)]
    metrics = compute_referring_metrics(make_coco_gt(gt_masks), [prediction(0, box(10, 10, 5, 5), 0.9)], verbose=False)
    assert metrics['mAP 0.5:0.95'] == 0 and metrics['AP 0.5'] == 0 and metrics['AP 0.5:0.95 S'] == 0
    assert metrics['P@0.5'] == 0 and metrics['overall_iou'] == 0 and metrics['mean_iou'] == 0


def test_empty_predictions_give_zero_instead_of_failing():
    metrics = compute_referring_metrics(make_coco_gt([box(0, 0, 5, 5), box(3, 3, 4, 4)]), [], verbose=False)
    assert metrics['mAP 0.5:0.95'] == 0 and metrics['AP 0.5'] == 0 and metrics['AP 0.75'] == 0
    assert all(metrics[f'P@{k}'] == 0 for k in (0.5, 0.6, 0.7, 0.8, 0.9))
    # No prediction = an empty mask: intersection 0 over union 25 + 16.
    assert metrics['overall_iou'] == 0 and metrics['mean_iou'] == 0


def test_ap_at_iou_0625_counts_only_the_three_lowest_thresholds():
    # GT 8x10 = 80 pixels, prediction its top 5 rows = 50 pixels inside it: IoU = 50/80 = 0.625, which passes the
    # COCO thresholds 0.50, 0.55, 0.60 (AP 1 each) and fails the other seven: mAP = 3/10.
    gt = box(0, 0, 8, 10)
    metrics = compute_referring_metrics(make_coco_gt([gt]), [prediction(0, box(0, 0, 5, 10), 1.0)], verbose=False)
    assert metrics['AP 0.5'] == pytest.approx(1.0)
    assert metrics['AP 0.75'] == 0
    assert metrics['mAP 0.5:0.95'] == pytest.approx(0.3)
    assert metrics['mean_iou'] == 0.625


def test_ap_ranks_predictions_by_score_while_precision_uses_the_top_one():
    # One image, a wrong prediction scored above the right one. Ranked detections: FP then TP, so
    # precision/recall go (0, 0) -> (1/2, 1); the interpolated precision is 1/2 at every recall: AP = 0.5 at
    # every threshold. Precision@K only looks at the top-scored (wrong) mask: IoU 0.
    gt = box(0, 0, 6, 6)
    predictions = [prediction(0, box(12, 12, 6, 6), 0.9), prediction(0, gt, 0.8)]
    metrics = compute_referring_metrics(make_coco_gt([gt]), predictions, verbose=False)
    assert metrics['mAP 0.5:0.95'] == pytest.approx(0.5)
    assert metrics['AP 0.5'] == pytest.approx(0.5)
    assert metrics['P@0.5'] == 0 and metrics['mean_iou'] == 0
    assert metrics['mAP 0.5:0.95 top-1'] == 0  # only the wrong, top-scored mask counts


def test_predictions_are_not_modified():
    predictions = [prediction(0, box(0, 0, 5, 5), 0.5)]
    keys_before = set(predictions[0])
    compute_referring_metrics(make_coco_gt([box(0, 0, 5, 5)]), predictions, verbose=False)
    assert set(predictions[0]) == keys_before


def test_unknown_image_id_is_named():
    bad = {'image_id': 'v_other_f_1_i_1', 'category_id': 1, 'segmentation': rle(box(0, 0, 2, 2)), 'score': 1.0}
    with pytest.raises(ValueError, match="v_other_f_1_i_1"):
        compute_referring_metrics(make_coco_gt([box(0, 0, 5, 5)]), [bad], verbose=False)


# ---------------------------------------------------------------- precision@K, overall and mean IoU

def test_precision_at_k_is_strict():
    # GT 10x10 = 100 pixels; prediction its top 6 rows = 60 pixels inside it: IoU = 60/100 = 0.6 exactly,
    # which is > 0.5 but not > 0.6.
    gt = box(0, 0, 10, 10)
    precision_at_k, overall_iou, mean_iou = precision_metrics(make_coco_gt([gt]), [prediction(0, box(0, 0, 6, 10), 1.)])
    assert precision_at_k.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert mean_iou == 0.6 and overall_iou == 0.6  # exact, no epsilon smoothing


def test_iou_exactly_one_half_fails_precision_at_one_half():
    gt = box(0, 0, 10, 10)
    precision_at_k, _, mean_iou = precision_metrics(make_coco_gt([gt]), [prediction(0, box(0, 0, 5, 10), 1.)])
    assert mean_iou == 0.5
    assert precision_at_k[0] == 0.0


def test_overall_iou_pools_pixels_and_mean_iou_averages_images():
    # Image 1: GT 100 px, prediction 60 px inside it (I 60, U 100, IoU 0.6).
    # Image 2: GT 4x10 = 40 px, prediction its first row = 10 px (I 10, U 40, IoU 0.25).
    # overall = (60 + 10) / (100 + 40) = 0.5; mean = (0.6 + 0.25) / 2 = 0.425.
    coco_gt = make_coco_gt([box(0, 0, 10, 10), box(0, 0, 4, 10)])
    precision_at_k, overall_iou, mean_iou = precision_metrics(
        coco_gt, [prediction(0, box(0, 0, 6, 10), 1.), prediction(1, box(0, 0, 1, 10), 1.)])
    assert overall_iou == pytest.approx(0.5, abs=1e-12)
    assert mean_iou == pytest.approx(0.425, abs=1e-12)
    assert precision_at_k.tolist() == [0.5, 0.0, 0.0, 0.0, 0.0]


def test_highest_score_wins_and_ties_go_to_the_first_prediction():
    gt = box(0, 0, 10, 10)
    coco_gt = make_coco_gt([gt])
    empty = np.zeros_like(gt)
    # The exact mask scored highest is used, wherever it sits in the list.
    assert precision_metrics(coco_gt, [prediction(0, empty, 0.3), prediction(0, gt, 0.7)])[2] == 1.0
    # Equal scores: the first prediction decides.
    assert precision_metrics(coco_gt, [prediction(0, gt, 0.5), prediction(0, empty, 0.5)])[2] == 1.0
    assert precision_metrics(coco_gt, [prediction(0, empty, 0.5), prediction(0, gt, 0.5)])[2] == 0.0


def test_both_masks_empty_is_iou_one():
    empty = np.zeros((H, W), dtype=bool)
    precision_at_k, overall_iou, mean_iou = precision_metrics(make_coco_gt([empty]), [prediction(0, empty, 1.0)])
    assert mean_iou == 1.0 and overall_iou == 1.0
    assert precision_at_k.tolist() == [1.0] * 5


def test_image_without_prediction_counts_as_empty_mask():
    # Image 1 predicted exactly (I 25, U 25), image 2 (16 px) not predicted (I 0, U 16).
    coco_gt = make_coco_gt([box(0, 0, 5, 5), box(0, 0, 4, 4)])
    precision_at_k, overall_iou, mean_iou = precision_metrics(coco_gt, [prediction(0, box(0, 0, 5, 5), 1.0)])
    assert overall_iou == pytest.approx(25 / 41, abs=1e-12)
    assert mean_iou == 0.5
    assert precision_at_k.tolist() == [0.5] * 5


# ---------------------------------------------------------------- DAVIS J

def test_j_of_shifted_squares():
    # 10x10 squares shifted by 3 columns: I = 10*7 = 70, U = 100 + 100 - 70 = 130.
    assert db_eval_iou(box(5, 5, 10, 10, (30, 30)), box(5, 8, 10, 10, (30, 30))) == pytest.approx(7 / 13, abs=1e-15)


def test_j_empty_conventions_and_per_frame_values():
    empty = np.zeros((H, W), dtype=bool)
    square = box(2, 2, 4, 4)
    assert db_eval_iou(empty, empty) == 1.0
    assert db_eval_iou(square, empty) == 0.0
    assert db_eval_iou(empty, square) == 0.0
    per_frame = db_eval_iou(np.stack([square, empty, square]), np.stack([square, empty, empty]))
    assert per_frame.shape == (3,)
    assert per_frame.tolist() == [1.0, 1.0, 0.0]


def test_shape_mismatch_is_reported():
    with pytest.raises(ValueError, match=r'\(20, 20\) and \(20, 21\)'):
        db_eval_iou(np.zeros((20, 20)), np.zeros((20, 21)))


# ---------------------------------------------------------------- DAVIS F

def test_seg2bmap_of_a_square_is_the_ring_around_its_top_left():
    # A pixel is on the boundary when its east, south or south-east neighbour differs: for the 5x5 square at
    # rows/cols 5..9 that is the bottom row and right column inside it plus the row above and column left of it,
    # i.e. the outline of rows/cols 4..9 (6x6 ring, 20 pixels).
    expected = box(4, 4, 6, 6) & ~box(5, 5, 4, 4)
    boundary = seg2bmap(box(5, 5, 5, 5))
    assert boundary.sum() == 20
    np.testing.assert_array_equal(boundary, expected)


def test_seg2bmap_ignores_the_image_border():
    # The last row/column compare only along the border and the corner is cleared: a full mask has no boundary.
    assert not seg2bmap(np.ones((6, 7), dtype=bool)).any()


def test_f_of_squares_shifted_by_two_with_a_one_pixel_tolerance():
    # 20x20 image: diagonal 28.3, 0.008 * 28.3 = 0.23 -> radius ceil(0.23) = 1, the 4-neighbour cross.
    # GT ring: outline of rows 4..9 x cols 4..9; predicted ring: rows 4..9 x cols 6..11 (20 pixels each).
    # Predicted pixels within one step of the GT ring: top and bottom rows at cols 6..10 (5 + 5), the left
    # column at rows 5 and 8 (2), none of the right column (2 columns away) or at col 11: 12 / 20 = 0.6.
    # The mirror image gives the same recall, so F = 0.6.
    gt, pred = box(5, 5, 5, 5), box(5, 7, 5, 5)
    assert db_eval_boundary(gt, pred) == pytest.approx(0.6, abs=1e-12)
    # bound_th >= 1 is a radius in pixels.
    assert db_eval_boundary(gt, pred, bound_th=1) == pytest.approx(0.6, abs=1e-12)


def test_f_tolerance_grows_with_the_image_diagonal():
    # Same squares in a 200x200 image: 0.008 * 282.8 = 2.26 -> radius 3, and every pixel of one ring lies within
    # 2 pixels (straight left/right) of the other: P = R = 1.
    gt, pred = box(5, 5, 5, 5, (200, 200)), box(5, 7, 5, 5, (200, 200))
    assert db_eval_boundary(gt, pred) == 1.0


def test_f_with_different_precision_and_recall():
    # GT: 5x5 square at rows/cols 5..9 (ring of 20, outline of rows/cols 4..9). Prediction: the same square
    # plus a far 1x1 blob at (15, 15), whose ring is the 2x2 block rows/cols 14..15 (4 pixels, all unmatched).
    # Precision = 20 / 24, recall = 20 / 20: F = 2 * (5/6) / (5/6 + 1) = 10/11.
    gt = box(5, 5, 5, 5)
    pred = gt | box(15, 15, 1, 1)
    assert db_eval_boundary(gt, pred) == pytest.approx(10 / 11, abs=1e-12)
    # Swapped roles: precision 1, recall 5/6, same F.
    assert db_eval_boundary(pred, gt) == pytest.approx(10 / 11, abs=1e-12)


def test_f_empty_conventions_and_per_frame_values():
    empty = np.zeros((H, W), dtype=bool)
    square = box(5, 5, 5, 5)
    assert db_eval_boundary(empty, empty) == 1.0  # both empty
    assert db_eval_boundary(square, empty) == 0.0  # nothing predicted: P = 1, R = 0
    assert db_eval_boundary(empty, square) == 0.0  # nothing to find: P = 0, R = 1
    per_frame = db_eval_boundary(np.stack([square, square, empty]), np.stack([square, box(5, 7, 5, 5), empty]))
    assert per_frame.shape == (3,)
    assert per_frame == pytest.approx([1.0, 0.6, 1.0], abs=1e-12)

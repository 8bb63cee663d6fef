"""metrics.py: the DAVIS-2017 unsupervised protocol of one video (void pixels, matching of predicted ids to
objects) and the Ref-DAVIS17 summary over objects, videos and expression sets.

Masks are boxes placed at least three pixels apart in 30x40 frames, where the boundary tolerance is one pixel
(0.008 * diagonal 50 = 0.4 -> 1): a pair of masks then has J = F = 1 when equal or both empty, and J = F = 0
when exactly one is empty or they are disjoint. Every expected value follows from that.
"""
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from metrics import (DAVIS_VOID_LABEL, DavisVideoScores, davis_global_scores, davis_unsupervised_scores,
                     davis_unsupervised_scores_many, db_eval_boundary, db_eval_iou, ref_davis17_scores)

T, H, W = 3, 30, 40


def box(top, left, height, width):
    mask = np.zeros((H, W), dtype=bool)
    mask[top:top + height, left:left + width] = True
    return mask


def two_objects():
    """`[T, H, W]` ground truth: object 1 a 10x10 square moving right, object 2 an 8x16 bar, in every frame."""
    gt = np.zeros((T, H, W), dtype=np.uint8)
    for t in range(T):
        gt[t][box(5, 5 + t, 10, 10)] = 1
        gt[t][box(19, 20, 8, 16)] = 2
    return gt


def assert_scores(scores, j_mean, f_mean, predicted_ids):
    assert scores.j_mean == pytest.approx(j_mean, abs=1e-12)
    assert scores.f_mean == pytest.approx(f_mean, abs=1e-12)
    assert scores.predicted_ids.tolist() == predicted_ids


def test_perfect_prediction_scores_one():
    gt = two_objects()
    assert_scores(davis_unsupervised_scores(gt, gt.copy()), [1, 1], [1, 1], [1, 2])


def test_swapped_ids_score_one_under_the_matching():
    gt = two_objects()
    swapped = np.choose(gt, [0, 2, 1]).astype(np.uint8)
    assert_scores(davis_unsupervised_scores(gt, swapped), [1, 1], [1, 1], [2, 1])


def test_a_missing_object_scores_zero():
    # Only one predicted id: the prediction is padded with an empty mask, which object 2 (present in every frame)
    # gets: J = F = 0 in every frame.
    gt = two_objects()
    only_first = np.where(gt == 1, 1, 0).astype(np.uint8)
    assert_scores(davis_unsupervised_scores(gt, only_first), [1, 0], [1, 0], [1, 0])
    # Predicted id 1 drawn on object 2: it is matched to object 2, and object 1 gets the empty mask.
    on_second = np.where(gt == 2, 1, 0).astype(np.uint8)
    assert_scores(davis_unsupervised_scores(gt, on_second), [0, 1], [0, 1], [0, 1])
    # Nothing predicted at all.
    assert_scores(davis_unsupervised_scores(gt, np.zeros_like(gt)), [0, 0], [0, 0], [0, 0])


def test_frames_where_object_and_prediction_are_both_empty_count_as_one():
    # Object 2 is absent from the last frame and never predicted: J = F = [0, 0, 1] over the frames.
    gt = two_objects()
    gt[2][gt[2] == 2] = 0
    only_first = np.where(gt == 1, 1, 0).astype(np.uint8)
    assert_scores(davis_unsupervised_scores(gt, only_first), [1, 1 / 3], [1, 1 / 3], [1, 0])


def test_void_pixels_are_ignored():
    # Void: a one-pixel ring around object 1 and the top three rows. The prediction is right everywhere except on
    # void pixels: object 1 covers its ring (a 12x12 square), id 2 also covers the top rows.
    gt = two_objects()
    prediction = gt.copy()
    for t in range(T):
        ring = box(4, 4 + t, 12, 12) & ~box(5, 5 + t, 10, 10)
        gt[t][ring] = DAVIS_VOID_LABEL
        gt[t][:3] = DAVIS_VOID_LABEL
        prediction[t][ring] = 1
        prediction[t][:3] = 2
    assert_scores(davis_unsupervised_scores(gt, prediction), [1, 1], [1, 1], [1, 2])
    # The same prediction with void read as background: J of object 1 = 100 / 144, of object 2 = 128 / (128 + 120).
    as_background = np.where(gt == DAVIS_VOID_LABEL, 0, gt).astype(np.uint8)
    scores = davis_unsupervised_scores(as_background, prediction)
    assert scores.j_mean == pytest.approx([100 / 144, 128 / 248], abs=1e-12)
    assert (scores.f_mean < 1).all()


def test_matching_maximises_the_total_not_the_best_pair():
    # Objects A (1) and B (2); predicted ids p1, p2; X a blob far from both. Per frame (GT | p1, p2):
    #   0: A, B     | -, A      1: A, B | A, B      2: B only | -, -      3: nothing | X, -
    # Mean (J + F) / 2 over frames: p1-A 2/4, p1-B 0, p2-A 3/4, p2-B 2/4. Taking the best pair first (p2-A) would
    # total 3/4; the Hungarian method takes p1-A + p2-B = 4/4.
    a, b, x = box(3, 3, 7, 7), box(18, 22, 9, 13), box(3, 30, 5, 7)
    gt = np.zeros((4, H, W), dtype=np.uint8)
    prediction = np.zeros_like(gt)
    gt[0][a], gt[0][b], prediction[0][a] = 1, 2, 2
    gt[1][a], gt[1][b], prediction[1][a], prediction[1][b] = 1, 2, 1, 2
    gt[2][b] = 2
    prediction[3][x] = 1
    assert_scores(davis_unsupervised_scores(gt, prediction), [0.5, 0.5], [0.5, 0.5], [1, 2])


def test_extra_predicted_ids_cost_nothing():
    gt = np.where(two_objects() == 1, 1, 0).astype(np.uint8)  # object 1 only
    prediction = gt * 3  # id 3 is exact; ids 1 and 2 are elsewhere
    prediction[:, 0:2, 0:2] = 1
    prediction[:, 26:28, 36:38] = 2
    assert_scores(davis_unsupervised_scores(gt, prediction), [1], [1], [3])


def test_objects_are_those_of_the_first_frame():
    # As the official package: M is the largest id of the first ground-truth frame.
    gt = two_objects()
    gt[0][gt[0] == 2] = 0
    scores = davis_unsupervised_scores(gt, gt.copy())
    assert_scores(scores, [1], [1], [1])


def test_at_most_20_predicted_ids():
    gt = two_objects()
    prediction = gt.copy()
    prediction[0, 0, 0] = 20
    assert_scores(davis_unsupervised_scores(gt, prediction), [1, 1], [1, 1], [1, 2])
    prediction[0, 0, 0] = 21
    with pytest.raises(ValueError, match=r'0\.\.20'):
        davis_unsupervised_scores(gt, prediction)


def test_shapes_must_match():
    with pytest.raises(ValueError, match=r'\[T, H, W\]'):
        davis_unsupervised_scores(np.zeros((2, 4, 4)), np.zeros((3, 4, 4)))


# ---------------------------------------------------------------- summaries

def video(j_mean, f_mean):
    return DavisVideoScores(np.array(j_mean, dtype=float), np.array(f_mean, dtype=float),
                            np.arange(1, len(j_mean) + 1))


def test_global_scores_average_objects_not_videos():
    # Objects of all videos pooled: J = (1 + 0.5 + 0) / 3 = 0.5 (the mean of video means would be 0.375),
    # F = (1 + 1 + 0.25) / 3 = 0.75, J&F = 0.625.
    scores = davis_global_scores([video([1.0, 0.5], [1.0, 1.0]), video([0.0], [0.25])])
    assert scores == pytest.approx({'J': 0.5, 'F': 0.75, 'J&F': 0.625}, abs=1e-12)


def test_ref_davis17_scores_per_set_and_their_mean():
    videos_per_set = {0: [video([1.0], [1.0])], 1: [video([0.5], [0.75])], 2: [video([0.0, 1.0], [0.5, 0.5])],
                      3: [video([0.25], [0.25])]}
    scores = ref_davis17_scores(videos_per_set)
    assert scores['anno_0'] == pytest.approx({'J': 1.0, 'F': 1.0, 'J&F': 1.0})
    assert scores['anno_1'] == pytest.approx({'J': 0.5, 'F': 0.75, 'J&F': 0.625})
    assert scores['anno_2'] == pytest.approx({'J': 0.5, 'F': 0.5, 'J&F': 0.5})
    assert scores['anno_3'] == pytest.approx({'J': 0.25, 'F': 0.25, 'J&F': 0.25})
    # Means over the four sets: J (1 + 0.5 + 0.5 + 0.25) / 4, F (1 + 0.75 + 0.5 + 0.25) / 4.
    assert scores['mean'] == pytest.approx({'J': 0.5625, 'F': 0.625, 'J&F': 0.59375}, abs=1e-12)
    with pytest.raises(ValueError, match='expression sets 0..3'):
        ref_davis17_scores({a: videos_per_set[a] for a in range(3)})
    with pytest.raises(ValueError, match='no ground-truth object'):
        davis_global_scores([])


# ---------------------------------------------------------------- the fast computation

def reference_scores(gt, prediction):
    """The protocol computed pair by pair with `db_eval_iou` / `db_eval_boundary`, as the official package does."""
    void = gt == DAVIS_VOID_LABEL
    num_objects = int(np.where(void[0], 0, gt[0]).max())
    num_rows = max(int(prediction.max()), num_objects)
    j = np.zeros((num_rows, num_objects, len(gt)))
    f = np.zeros_like(j)
    for row in range(num_rows):
        pred_mask = (prediction == row + 1) & ~void
        for column in range(num_objects):
            gt_mask = (gt == column + 1) & ~void
            j[row, column] = db_eval_iou(gt_mask, pred_mask)
            f[row, column] = db_eval_boundary(gt_mask, pred_mask)
    rows, columns = linear_sum_assignment(-(j.mean(axis=2) + f.mean(axis=2)) / 2)
    row_of_object = np.empty(num_objects, dtype=int)
    row_of_object[columns] = rows
    return j[row_of_object, np.arange(num_objects)].mean(1), f[row_of_object, np.arange(num_objects)].mean(1)


def random_label_maps(rng, num_frames, height, width, num_labels, void=False):
    """Label maps of random boxes (some touching the frame's border), later ones painted over earlier ones."""
    labels = np.zeros((num_frames, height, width), dtype=np.uint8)
    for t in range(num_frames):
        for label in list(range(1, num_labels + 1)) + ([DAVIS_VOID_LABEL] * 2 if void else []):
            if rng.random() < 0.15:
                continue  # absent from this frame
            top, left = rng.integers(0, height - 2), rng.integers(0, width - 2)
            bottom, right = rng.integers(top + 1, height + 1), rng.integers(left + 1, width + 1)
            labels[t, top:bottom, left:right] = label
    return labels


@pytest.mark.parametrize('seed, size', [(0, (30, 40)), (1, (30, 40)), (2, (120, 213)), (3, (200, 360))])
def test_scores_equal_the_pair_by_pair_computation(seed, size):
    # Random boxes with void, objects that first appear after the first frame (ids above M), predicted ids beyond
    # the objects; the boundary tolerance is 1 pixel in 30x40 frames, 2 in 120x213, 4 in 200x360.
    rng = np.random.default_rng(seed)
    gt = random_label_maps(rng, 5, *size, num_labels=4, void=True)
    predictions = [random_label_maps(rng, 5, *size, num_labels=k) for k in (1, 3, 6)]
    for prediction, scores in zip(predictions, davis_unsupervised_scores_many(gt, predictions)):
        j_mean, f_mean = reference_scores(gt, prediction)
        np.testing.assert_array_equal(scores.j_mean, j_mean)  # the same arithmetic: equal, not close
        np.testing.assert_array_equal(scores.f_mean, f_mean)
        single = davis_unsupervised_scores(gt, prediction)
        np.testing.assert_array_equal(single.j_mean, scores.j_mean)
        np.testing.assert_array_equal(single.predicted_ids, scores.predicted_ids)
        assert 0 < scores.j_mean.max() < 1 and 0 < scores.f_mean.max() < 1  # not a trivial case

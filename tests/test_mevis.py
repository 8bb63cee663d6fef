"""datasets/mevis.py and the MeViS J&F of metrics.py: meta_expressions.json of the three splits (the real valid
split rebuilt from its chunk records), targets as unions of COCO RLEs with null frames, training windows, and
scores kept per expression id.

RLEs are encoded here with pycocotools from hand-made masks and go through a JSON file as in mask_dict.json.
"""
import json
import warnings
from collections import OrderedDict

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from datasets.files import SubsetWarning
from datasets.mevis import (expression_windows, read_mask_dict, read_meta_expressions, target_masks,
                            train_samples)
from metrics import mevis_expression_scores, mevis_summary

REAL_VALID_CHUNKS = 'data/real/mevis/valid_samples_metadata.json'
H, W = 6, 9  # not square, so a transposed mask would not fit


def box(top, left, height, width, shape=(H, W)):
    mask = np.zeros(shape, dtype=bool)
    mask[top:top + height, left:left + width] = True
    return mask


def rle(mask):
    encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    encoded['counts'] = encoded['counts'].decode('ascii')
    return encoded


def write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def frames_of(count):
    return [f'{t:05d}' for t in range(count)]


# ---------------------------------------------------------------- meta_expressions.json

def test_real_valid_split_from_its_chunk_records(shared_dir, tmp_path):
    chunks = json.loads((shared_dir / REAL_VALID_CHUNKS).read_text())
    assert len(chunks) == 2805
    # Join the chunks of each expression (at most 80 frames each) back into the split's meta_expressions.json.
    expressions = OrderedDict()  # video -> exp_id -> {'exp', 'frames'}
    for video_id, frames, meta in chunks:
        expression = expressions.setdefault(video_id, {}).setdefault(meta['exp_id'], {'exp': meta['exp'], 'frames': []})
        expression['frames'] += frames
    meta = {'videos': {}}
    for video_id, video_expressions in expressions.items():
        frame_lists = [expression.pop('frames') for expression in video_expressions.values()]
        assert all(frames == frame_lists[0] for frames in frame_lists)  # every expression spans the whole video
        meta['videos'][video_id] = {'frames': frame_lists[0], 'expressions': video_expressions}
    path = write_json(tmp_path / 'valid' / 'meta_expressions.json', meta)

    with warnings.catch_warnings():
        warnings.simplefilter('error', SubsetWarning)  # 140 videos, 2,236 expressions: the full version-1 split
        read = read_meta_expressions(path, 'valid')
    assert len(read) == 140
    keys = [f'{video_id}_{exp_id}' for video_id, video in read.items() for exp_id in video['expressions']]
    assert len(keys) == len(set(keys)) == 2236
    for video_id, video in read.items():
        assert video['frames'] == meta['videos'][video_id]['frames']
        for exp_id, expression in video['expressions'].items():
            raw = meta['videos'][video_id]['expressions'][exp_id]['exp']
            assert expression == {'exp': ' '.join(raw.lower().split())}  # no obj_id / anno_id in valid
    first = read['6200271d2d86']['expressions']['0']['exp']
    assert first == 'car driving forward from left to right'


def test_train_expressions_are_normalised_with_id_lists(tmp_path):
    path = write_json(tmp_path / 'train' / 'meta_expressions.json', {'videos': {'0a1b2c3d4e5f': {
        'frames': frames_of(3),
        'expressions': {'0': {'exp': '  The Dog\tRunning  AWAY ', 'obj_id': [0, 2], 'anno_id': [500, 502]},
                        '1': {'exp': 'nothing here', 'obj_id': [], 'anno_id': []}}}}})  # version 2: no target
    with pytest.warns(SubsetWarning):
        videos = read_meta_expressions(path, 'train')
    assert videos == {'0a1b2c3d4e5f': {'frames': frames_of(3), 'expressions': {
        '0': {'exp': 'the dog running away', 'obj_id': [0, 2], 'anno_id': ['500', '502']},
        '1': {'exp': 'nothing here', 'obj_id': [], 'anno_id': []}}}}


@pytest.mark.parametrize('expression', [{'exp': 'a cat', 'obj_id': [1]}, {'exp': 'a cat', 'obj_id': 1, 'anno_id': 7},
                                        {'exp': 'a cat', 'obj_id': [1], 'anno_id': 7}])
def test_train_expressions_need_anno_id_lists(tmp_path, expression):
    path = write_json(tmp_path / 'valid_u' / 'meta_expressions.json',
                      {'videos': {'vid': {'frames': ['00000'], 'expressions': {'3': expression}}}})
    with pytest.raises(ValueError, match=r'expression 3 of video vid needs "anno_id"'):
        read_meta_expressions(path, 'valid_u')


def test_unknown_split_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="split must be one of"):
        read_meta_expressions(tmp_path / 'meta_expressions.json', 'test')


# ---------------------------------------------------------------- mask_dict.json

@pytest.fixture
def mask_dict(tmp_path):
    """Object 500 in frames 0 and 2, object 502 in frames 0 and 1 (null where absent); 504 never visible."""
    masks = {'500': [box(0, 0, 3, 4), None, box(3, 5, 2, 3)],
             '502': [box(2, 2, 3, 5), box(1, 6, 4, 2), None],
             '504': [None, None, None]}
    encoded = {anno_id: [None if m is None else rle(m) for m in per_frame] for anno_id, per_frame in masks.items()}
    path = write_json(tmp_path / 'train' / 'mask_dict.json', encoded)
    return read_mask_dict(path)


def test_target_is_the_union_of_its_objects(mask_dict):
    target = target_masks(mask_dict, ['500', '502'], 3)
    assert target.dtype == bool and target.shape == (3, H, W)
    np.testing.assert_array_equal(target[0], box(0, 0, 3, 4) | box(2, 2, 3, 5))
    np.testing.assert_array_equal(target[1], box(1, 6, 4, 2))  # object 500 absent
    np.testing.assert_array_equal(target[2], box(3, 5, 2, 3))  # object 502 absent
    np.testing.assert_array_equal(target_masks(mask_dict, ['500'], 3, frame_size=(H, W))[1], np.zeros((H, W)))


def test_target_without_any_mask_needs_the_frame_size(mask_dict):
    with pytest.raises(ValueError, match='give the frame size'):
        target_masks(mask_dict, ['504'], 3)
    np.testing.assert_array_equal(target_masks(mask_dict, ['504'], 3, frame_size=(4, 7)), np.zeros((3, 4, 7)))
    # A version-2 no-target expression (no anno_id): every frame empty.
    np.testing.assert_array_equal(target_masks(mask_dict, [], 3, frame_size=(H, W)), np.zeros((3, H, W)))


def test_target_size_comes_from_the_rles(mask_dict):
    with pytest.raises(ValueError, match=r'different sizes \[\(4, 7\), \(6, 9\)\]'):
        target_masks(mask_dict, ['500'], 3, frame_size=(4, 7))
    with pytest.raises(ValueError, match='anno_id 500 has 3 masks in mask_dict.json, its video 4 frames'):
        target_masks(mask_dict, ['500'], 4)
    with pytest.raises(ValueError, match='anno_id 9 is not in mask_dict.json'):
        target_masks(mask_dict, ['9'], 3)


# ---------------------------------------------------------------- training windows

def test_windows_without_the_target_are_skipped_and_counted():
    # 10 frames, windows of 4: [0..3], [4..7], [6..9] (the last one from the end).
    frames = frames_of(10)
    only_frame_1 = {'7': [rle(box(0, 0, 2, 2)) if t == 1 else None for t in range(10)]}
    assert expression_windows(frames, ['7'], only_frame_1, 4) == ([frames[0:4]], 2)
    # Frame 7 lies in the second and the last window.
    only_frame_7 = {'7': [rle(box(0, 0, 2, 2)) if t == 7 else None for t in range(10)]}
    assert expression_windows(frames, ['7'], only_frame_7, 4) == ([frames[4:8], frames[6:10]], 1)
    # A non-null RLE of an empty mask is empty too; the union of two objects counts.
    union = {'7': [rle(np.zeros((H, W))) if t == 1 else None for t in range(10)],
             '8': [rle(box(0, 0, 1, 1)) if t == 9 else None for t in range(10)]}
    assert expression_windows(frames, ['7', '8'], union, 4) == ([frames[6:10]], 2)


def test_train_samples_of_a_split():
    videos = {'vid': {'frames': frames_of(6), 'expressions': {
        '0': {'exp': 'the bird', 'obj_id': [0], 'anno_id': ['1']},
        '1': {'exp': 'nothing', 'obj_id': [], 'anno_id': []}}}}
    mask_dict = {'1': [rle(box(0, 0, 2, 2))] + [None] * 5}
    samples, skipped = train_samples(videos, mask_dict, 3)
    # Windows [0..2] and [3..5]: the bird is in the first only; the no-target expression has none.
    assert samples == [['vid', frames_of(3), '0', ['1'], 'the bird']]
    assert skipped == 3


# ---------------------------------------------------------------- J&F

def test_empty_frames_rule():
    # Frame 0 both empty: J = F = 1. Frame 1 nothing predicted, frame 2 nothing to find: J = F = 0. Frame 3
    # exact: 1. Means over the 4 frames: J = F = 0.5.
    square = box(1, 1, 3, 3)
    empty = np.zeros((H, W), dtype=bool)
    gt = np.stack([empty, square, empty, square])
    prediction = np.stack([empty, empty, square, square])
    assert mevis_expression_scores([('vid', '0', gt, prediction)]) == {'vid_0': (0.5, 0.5)}


def test_perfect_prediction_scores_one(mask_dict):
    target = target_masks(mask_dict, ['500', '502'], 3)
    scores = mevis_expression_scores([('vid', '4', target, target.astype(np.uint8) * 255)])
    assert scores == {'vid_4': (1.0, 1.0)}
    assert mevis_summary(scores) == {'J': 1.0, 'F': 1.0, 'J&F': 1.0}


def test_expressions_are_kept_by_id_not_text(tmp_path, mask_dict):
    # Two expressions of one video with the same text (once normalised) and different targets, both predicted
    # as the first one's target: each keeps its own score.
    path = write_json(tmp_path / 'valid_u' / 'meta_expressions.json', {'videos': {'vid': {
        'frames': frames_of(3),
        'expressions': {'0': {'exp': 'the moving one', 'obj_id': [0], 'anno_id': [500]},
                        '1': {'exp': 'The moving  one', 'obj_id': [1], 'anno_id': [502]}}}}})
    with pytest.warns(SubsetWarning):
        videos = read_meta_expressions(path, 'valid_u')
    expressions = videos['vid']['expressions']
    assert expressions['0']['exp'] == expressions['1']['exp']
    target_500 = target_masks(mask_dict, expressions['0']['anno_id'], 3)
    items = [('vid', exp_id, target_masks(mask_dict, expression['anno_id'], 3), target_500)
             for exp_id, expression in expressions.items()]
    scores = mevis_expression_scores(items)
    # Expression 0: exact. Expression 1 (object 502, frames 0 and 1) against object 500 (frames 0 and 2): frame 0
    # overlap 2 pixels of 12 + 15 - 2 = 25 -> J 2/25; frame 1 and frame 2: exactly one empty -> 0.
    assert list(scores) == ['vid_0', 'vid_1']
    assert scores['vid_0'] == (1.0, 1.0)
    assert scores['vid_1'][0] == pytest.approx(2 / 75, abs=1e-12)
    assert mevis_summary(scores)['J'] == pytest.approx((1 + 2 / 75) / 2, abs=1e-12)
    with pytest.raises(ValueError, match='expression vid_0 appears twice'):
        mevis_expression_scores(items + items[:1])


def test_summary_averages_expressions():
    scores = {'a_0': (1.0, 0.5), 'a_1': (0.0, 0.5), 'b_0': (0.5, 0.2)}
    assert mevis_summary(scores) == pytest.approx({'J': 0.5, 'F': 0.4, 'J&F': 0.45}, abs=1e-12)
    with pytest.raises(ValueError, match='no expression scores'):
        mevis_summary({})

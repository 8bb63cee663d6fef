"""datasets/mevis.py and the MeViS J&F of metrics.py: meta_expressions.json of the three splits (the real valid
split rebuilt from its chunk records), targets as unions of COCO RLEs with null frames, training windows, and
scores kept per expression id.

RLEs are encoded here with pycocotools from hand-made masks and go through a JSON file as in mask_dict.json.
"""
import io
import json
import warnings
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from datasets.files import SubsetWarning
from datasets.mevis import (expression_windows, read_mask_dict, read_meta_expressions, target_masks,
                            train_samples)
from metrics import mevis_expression_scores, mevis_summary
from tests.helpers import write_json

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


@pytest.mark.parametrize('seed, size', [(0, (6, 9)), (1, (72, 128)), (2, (360, 640))])
def test_f_equals_db_eval_boundary(seed, size):
    # The per-frame F of mevis_expression_scores (dilation around each boundary only) on random boxes, some
    # frames empty, some touching the border; 360x640 frames have a 6-pixel tolerance.
    from metrics import db_eval_boundary, db_eval_iou
    rng = np.random.default_rng(seed)

    def random_masks():
        masks = np.zeros((6,) + size, dtype=bool)
        for t in range(1, 6):
            top, left = rng.integers(0, size[0] - 1), rng.integers(0, size[1] - 1)
            masks[t, top:rng.integers(top + 1, size[0] + 1), left:rng.integers(left + 1, size[1] + 1)] = True
        return masks
    gt, prediction = random_masks(), random_masks()
    prediction[2] = False
    ((_, (j, f)),) = mevis_expression_scores([('vid', '0', gt, prediction)]).items()
    assert j == float(np.mean(db_eval_iou(gt, prediction)))
    assert f == float(np.mean(db_eval_boundary(gt, prediction)))  # the same arithmetic: equal, not close


# ---------------------------------------------------------------- loader and evaluators

def build(info, cache_dir, image_set='train', **config_values):
    import datasets
    from config import Config
    from tests.fake_datasets import SMALL_FRAME_SIZES
    config = Config(dataset_name='mevis', dataset_path=str(info.root), cache_dir=str(cache_dir), window_size=3,
                    horizontal_flip_augmentations=False, **SMALL_FRAME_SIZES, **config_values)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', SubsetWarning)
        return config, datasets.build_dataset(image_set, config)


@pytest.fixture
def fake_mevis(shared_dir, tmp_path):
    from tests.fake_benchmarks import aligned_mask, make_mevis_dataset
    return make_mevis_dataset(tmp_path / 'mevis', shared_dir, mask=aligned_mask)


def test_training_windows_and_targets(fake_mevis, tmp_path, capsys):
    # Per video: 6 frames, windows [0..2] and [3..5]; expression 0 (object 0, always visible) and 1 (objects 0
    # and 1) keep both windows; expression 2 (object 2, frame 5 only) keeps the second one.
    from tests.fake_benchmarks import mevis_target
    from tests.fake_datasets import frame_index
    _, dataset = build(fake_mevis, tmp_path / 'cache')
    videos = list(fake_mevis.videos['train'])
    assert 'MeViS train: 10 windows; 2 windows in which the referred objects are absent' in capsys.readouterr().out
    frames = fake_mevis.videos['train'][videos[0]]['frames']
    assert [sample[:4] for sample in dataset.samples[:5]] == [
        (videos[0], frames[:3], '0', ['100']), (videos[0], frames[3:], '0', ['100']),
        (videos[0], frames[:3], '1', ['100', '101']), (videos[0], frames[3:], '1', ['100', '101']),
        (videos[0], frames[3:], '2', ['102'])]
    text = fake_mevis.videos['train'][videos[0]]['expressions']['1']['exp']
    assert dataset.samples[2][4] == ' '.join(text.lower().split())

    video, targets, query = dataset[2]  # objects 0 and 1 in frames 0..2: one instance, their union
    assert video.shape == (3, 3, 64, 96) and [frame_index(frame) for frame in video] == [0, 1, 2]
    union = mevis_target(fake_mevis, 'train', videos[0], '1')
    for t, target in enumerate(targets):
        assert target['masks'].shape == (1, 64, 96)  # object 2 is not in this window
        np.testing.assert_array_equal(target['masks'][0].numpy(), union[t])
        assert target['referred_instance_idx'] == 0 and target['is_ref_inst_visible']
        assert target['image_id'] == f'v_{videos[0]}_f_{frames[t]}'
    video, targets, _ = dataset[4]  # object 2 (frame 5 only) in frames 3..5; object 0 is another instance
    target_2 = mevis_target(fake_mevis, 'train', videos[0], '2')
    target_0 = mevis_target(fake_mevis, 'train', videos[0], '0')
    assert [bool(target['is_ref_inst_visible']) for target in targets] == [False, False, True]
    for t, target in enumerate(targets, start=3):
        assert target['masks'].shape == (2, 64, 96)
        np.testing.assert_array_equal(target['masks'][0].numpy(), target_2[t])
        np.testing.assert_array_equal(target['masks'][1].numpy(), target_0[t])


def test_mask_dict_is_split_once_per_video_into_the_cache(fake_mevis, tmp_path, monkeypatch):
    import datasets.mevis as mevis_module
    before = sorted(p.relative_to(fake_mevis.root) for p in fake_mevis.root.rglob('*'))
    _, dataset = build(fake_mevis, tmp_path / 'cache')
    per_video = sorted(p.name for p in dataset.masks_dir.glob('*.json'))
    assert per_video == sorted(f'{video}.json' for video in fake_mevis.videos['train'])
    assert dataset.masks_dir.parent == tmp_path / 'cache' / 'mevis'
    assert sorted(p.relative_to(fake_mevis.root) for p in fake_mevis.root.rglob('*')) == before

    def fail(path):
        raise AssertionError(f'{path} read again')
    monkeypatch.setattr(mevis_module, 'read_mask_dict', fail)
    _, again = build(fake_mevis, tmp_path / 'cache')
    assert again.samples == dataset.samples


def test_the_real_valid_split_gives_140_items_with_2236_queries(shared_dir, tmp_path):
    from tests.fake_benchmarks import FakeBenchmark, read_mevis_valid
    videos = read_mevis_valid(shared_dir)
    write_json(tmp_path / 'mevis' / 'valid' / 'meta_expressions.json', {'videos': videos})
    (tmp_path / 'mevis' / 'valid' / 'JPEGImages').mkdir()
    _, dataset = build(FakeBenchmark(tmp_path / 'mevis'), tmp_path / 'cache', 'test', mevis_eval_split='valid')
    assert len(dataset) == 140 and [video for video, _, _ in dataset.samples] == list(videos)
    assert sum(len(expressions) for _, _, expressions in dataset.samples) == 2236
    video_id, frames, expressions = dataset.samples[0]
    assert video_id == '6200271d2d86' and frames == sorted(videos[video_id]['frames'])
    assert [exp_id for exp_id, _ in expressions] == list(videos[video_id]['expressions'])
    assert expressions[0] == ('0', 'car driving forward from left to right')


def test_valid_u_evaluation_by_construction(fake_mevis, tmp_path):
    # Expressions 0 (object 0) and 2 (objects 0 and 1) draw their targets: J = F = 1. Expression 1 (object 1, in
    # frames 0 and 1 of 4) draws nothing: 0 in frames 0 and 1, 1 in frames 2 and 3 (both empty): 1/2.
    import datasets
    from tests.fake_benchmarks import mevis_target, outputs_drawing
    config, dataset = build(fake_mevis, tmp_path / 'cache', 'test')
    assert dataset.split == 'valid_u'

    def masks_of_query(q, metadata):
        if metadata['exp_id'] == '1':
            return None
        return mevis_target(fake_mevis, 'valid_u', metadata['video_id'], metadata['exp_id'])

    evaluator = datasets.build_evaluator(config, dataset, tmp_path / 'run', 0)
    batch = dataset.collator([dataset[0], dataset[1]])
    evaluator.update(batch, outputs_drawing(batch, masks_of_query))
    metrics = evaluator.summarize()
    assert (metrics['J'], metrics['F'], metrics['J&F']) == pytest.approx((5 / 6, 5 / 6, 5 / 6), abs=1e-12)
    assert metrics['expressions'] == 6
    video = next(iter(fake_mevis.videos['valid_u']))
    written = tmp_path / 'run' / 'mevis' / 'valid_u' / 'epoch_0' / video / '0'
    assert sorted(p.name for p in written.iterdir()) == ['00000.png', '00001.png', '00002.png', '00003.png']
    mask = np.asarray(Image.open(written / '00000.png'))
    np.testing.assert_array_equal(mask, mevis_target(fake_mevis, 'valid_u', video, '0')[0] * 255)


def test_valid_evaluation_writes_and_checks_the_server_zip(fake_mevis, tmp_path):
    import datasets
    from datasets.mevis import check_submission_zip
    from tests.fake_benchmarks import outputs_drawing
    config, dataset = build(fake_mevis, tmp_path / 'cache', 'test', mevis_eval_split='valid')
    evaluator = datasets.build_evaluator(config, dataset, tmp_path / 'run', 2)
    assert (evaluator.best_metric, evaluator.higher_is_better) == ('training loss', False)
    batch = dataset.collator([dataset[0], dataset[1]])
    evaluator.update(batch, outputs_drawing(batch, lambda q, metadata: None))
    metrics = evaluator.summarize()
    zip_path = tmp_path / 'run' / 'mevis' / 'valid' / 'submission_epoch_2.zip'
    assert metrics == {'submission_zip': str(zip_path), 'expressions': 6, 'submission_check': 'OK'}
    with zipfile.ZipFile(zip_path) as archive:
        names = sorted(archive.namelist())
    expected = sorted(f'{video}/{exp_id}/{frame}.png' for video, entry in fake_mevis.videos['valid'].items()
                      for exp_id in entry['expressions'] for frame in entry['frames'])
    assert names == expected  # video folders at the zip's root
    meta = fake_mevis.root / 'valid' / 'meta_expressions.json'
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', SubsetWarning)
        result = check_submission_zip(zip_path, meta, dataset_root=fake_mevis.root, show_progress=False)
        assert result.ok, result.summary()
        # a zip with the Refer-YouTube-VOS Annotations/ level, a mask missing, a mask of the wrong size
        bad = tmp_path / 'bad.zip'
        with zipfile.ZipFile(zip_path) as source, zipfile.ZipFile(bad, 'w') as archive:
            archive.writestr(f'Annotations/{names[0]}', source.read(names[0]))
            buffer = io.BytesIO()
            Image.new('L', (95, 64)).save(buffer, format='PNG')
            archive.writestr(names[1], buffer.getvalue())
            for name in names[3:]:
                archive.writestr(name, source.read(name))
        result = check_submission_zip(bad, meta, dataset_root=fake_mevis.root, show_progress=False)
    assert not result.ok and result.missing == names[:1] + names[2:3]
    problems = '\n'.join(result.problems)
    assert f"unexpected zip entry 'Annotations/{names[0]}'" in problems
    assert f'{names[1]}: size 95x64 (WxH), but the frame is 96x64' in problems


def test_config_is_the_refer_youtube_vos_recipe_on_mevis():
    from config import Config, load_config
    mevis, ytvos = load_config('configs/mevis.yaml'), load_config('configs/refer_youtube_vos.yaml')
    different = {k for k, v in mevis.to_dict().items() if v != getattr(ytvos, k)}
    assert different == {'dataset_name', 'dataset_path', 'eval_window_size'} and mevis.mevis_eval_split == 'valid_u'
    assert load_config('configs/mevis.yaml', ['mevis_eval_split=valid']).mevis_eval_split == 'valid'
    from models.postprocessing import ReferYoutubeVOSPostProcess, build
    assert type(build(mevis)) is ReferYoutubeVOSPostProcess  # what the original's build_model API returns
    with pytest.raises(ValueError, match="mevis_eval_split: 'test' is not one of 'valid_u', 'valid'"):
        Config(dataset_name='mevis', mevis_eval_split='test')

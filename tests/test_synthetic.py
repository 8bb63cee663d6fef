"""The synthetic referring-video dataset: generation, reading it with the real A2D loader, its offline text encoder,
and that MTTR learns on it (a short training run through main.py)."""
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import datasets
import main
from config import load_config
from datasets.synthetic import (MARKER_FILE, SHAPES, TEXT_ENCODER_DIR, SyntheticSpec, ensure_synthetic_dataset,
                                generate_video, shape_mask, vocabulary, write_synthetic_dataset)
from models import build_model
from models.text_encoder import build_text_encoder
from tests.helpers import SYNTHETIC_CONFIG

SMALL = SyntheticSpec(seed=3, num_train_videos=4, num_test_videos=2)
# the learning test: two epochs on this many training videos must beat the untrained model by these margins
LEARN_TRAIN_VIDEOS = 300
LEARN_MIN_MAP_GAIN = 0.05
LEARN_MIN_P50_GAIN = 0.2


@pytest.fixture(scope='module')
def small_dataset(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp('synthetic') / 'data', SMALL, progress=False)


def read_h5(path):
    with h5py.File(path, 'r') as f:
        return {key: np.array(f[key]) for key in f}


def test_the_same_spec_writes_the_same_dataset(small_dataset, tmp_path):
    again = write_synthetic_dataset(tmp_path / 'again', SMALL, progress=False)
    for name in ('Release/videoset.csv', 'text_annotations/a2d_annotation.txt', 'objects.json', MARKER_FILE):
        assert (again / name).read_text() == (small_dataset / name).read_text(), name
    h5_files = sorted(p.relative_to(small_dataset) for p in small_dataset.rglob('*.h5'))
    assert len(h5_files) == 6 * len(SMALL.annotated_frames)
    for name in h5_files:
        first, second = read_h5(small_dataset / name), read_h5(again / name)
        assert first.keys() == second.keys() and all(np.array_equal(first[k], second[k]) for k in first)
    other = write_synthetic_dataset(tmp_path / 'other', SyntheticSpec(seed=4, num_train_videos=4, num_test_videos=2),
                                    progress=False)
    assert (other / 'objects.json').read_text() != (small_dataset / 'objects.json').read_text()


def test_expressions_name_the_colour_and_shape_of_their_object():
    absent_expressions = 0
    for index in range(40):
        _, masks, objects, expressions = generate_video(SMALL, 'train', index)
        assert len(expressions) == len(masks) in (len(objects), len(objects) + 1)
        assert len({o.colour for o in objects}) == len(objects)  # the colour alone tells the objects apart
        for obj, expression in zip(objects, expressions):
            assert obj.colour in expression.split() and obj.shape in expression.split()
            assert set(expression.split()) <= set(vocabulary())
        for expression, expression_masks in zip(expressions[len(objects):], masks[len(objects):]):
            # one more expression: an object the video does not show, of a colour none of its objects has
            absent_expressions += 1
            assert not expression_masks.any() and set(expression.split()) <= set(vocabulary())
            assert not {o.colour for o in objects} & set(expression.split())
            assert set(expression.split()) & set(SHAPES)
    assert 40 * 0.3 < absent_expressions < 40 * 0.7  # absent_expression_rate 0.5


def test_some_objects_enter_or_leave_between_the_annotated_frames():
    """An object that crosses an edge is absent from one annotated frame and shows about half of itself or more
    in the other; every other object shows whole in every frame."""
    annotated = [f - 1 for f in SMALL.annotated_frames]
    crossing = 0
    for index in range(40):
        _, masks, objects, _ = generate_video(SMALL, 'train', index)
        for obj, object_masks in zip(objects, masks):
            areas = object_masks.sum((1, 2))
            border = np.ones_like(object_masks[0])
            border[1:-1, 1:-1] = False
            if not (object_masks & border).any():  # whole in every frame
                assert areas.min() > 0
                continue
            crossing += 1
            whole = shape_mask(obj.shape, (SMALL.frame_size / 2,) * 2, obj.radius, SMALL.frame_size).sum()
            shown = areas[annotated] > 0
            assert shown.tolist() in ([True, False], [False, True]), areas
            assert areas[annotated].max() >= 0.4 * whole, (areas, whole)
            travel = np.abs(np.diff(obj.centres, axis=0)).sum(1)
            assert np.allclose(travel, SMALL.crossing_speed)
    assert 40 * 0.2 < crossing < 40 * 0.5  # crossing_rate 0.35, one object per such video
    without = SyntheticSpec(seed=3, crossing_rate=0, absent_expression_rate=0)  # the data without "when"
    for index in range(40):
        _, masks, objects, expressions = generate_video(without, 'train', index)
        assert len(expressions) == len(objects) and masks.sum((2, 3)).min() > 0


def test_mask_files_list_the_instances_a_frame_shows(small_dataset):
    masks_dir = small_dataset / 'text_annotations' / 'a2d_annotation_with_instances'
    for split, count in (('train', SMALL.num_train_videos), ('test', SMALL.num_test_videos)):
        for index in range(count):
            _, masks, _, _ = generate_video(SMALL, split, index)
            for frame in SMALL.annotated_frames:
                stored = read_h5(masks_dir / f'syn{split}{index:05d}' / f'{frame:05d}.h5')
                shown = [k for k in range(len(masks)) if masks[k, frame - 1].any()]
                assert stored['instance'].astype(int).tolist() == shown


def test_the_a2d_loader_reads_it(small_dataset, tmp_path):
    config = load_config(SYNTHETIC_CONFIG, [f'dataset_path={small_dataset}', f'cache_dir={tmp_path}',
                                  'horizontal_flip_augmentations=false'])
    train = datasets.build_dataset('train', **config.to_dict())
    test = datasets.build_dataset('test', **config.to_dict())
    # absent_referred_samples (configs/synthetic.yaml): a sample for every expression and annotated frame
    counts = {split: sum(len(generate_video(SMALL, split, i)[3]) * len(SMALL.annotated_frames)
                         for i in range(n)) for split, n in (('train', 4), ('test', 2))}
    assert (len(train.samples), len(test.samples)) == (counts['train'], counts['test'])
    assert len(test) == 2 * len(SMALL.annotated_frames)  # test items: an annotated frame with all its queries

    annotations = (small_dataset / 'text_annotations' / 'a2d_annotation.txt').read_text().splitlines()[1:]
    for index in range(len(test)):
        frames, targets, queries = test[index]
        assert frames.shape == (config.window_size, 3, SMALL.frame_size, SMALL.frame_size)
        for sample_index, query_targets, query in zip(test.items[index], targets, queries):
            _, video_id, frame, instance_id = test.samples[sample_index]
            _, masks, _, expressions = generate_video(SMALL, 'test', int(video_id[-5:]))
            centre = query_targets[config.window_size // 2]
            assert torch.equal(centre['masks'][centre['referred_instance_idx']],
                               torch.from_numpy(masks[instance_id, frame - 1]))
            assert centre['is_ref_inst_visible'].item() == masks[instance_id, frame - 1].any()
            assert query == expressions[instance_id] and f'{video_id},{instance_id},{query}' in annotations


def test_fixed_query_control(tmp_path):
    root = write_synthetic_dataset(tmp_path / 'control', SyntheticSpec(num_train_videos=3, num_test_videos=1,
                                                                       fixed_query='an object'), progress=False)
    rows = (root / 'text_annotations' / 'a2d_annotation.txt').read_text().splitlines()[1:]
    assert rows and all(row.endswith(',an object') for row in rows)


def test_the_text_encoder_works_offline_and_knows_every_word(small_dataset):
    model, tokenizer = build_text_encoder(str(small_dataset / TEXT_ENCODER_DIR), pretrained=False)
    for word in vocabulary():
        assert len(tokenizer(' ' + word, add_special_tokens=False)['input_ids']) == 1, word
    encoded = tokenizer(['the big red circle moving left'], return_tensors='pt')
    assert model(**encoded).last_hidden_state.shape == (1, 8, model.config.hidden_size)


def test_first_use_generates_once_and_fills_the_paths(tmp_path, monkeypatch):
    config = load_config(SYNTHETIC_CONFIG, [f'cache_dir={tmp_path}'])
    calls = []
    import datasets.synthetic as synthetic
    original = synthetic.write_synthetic_dataset
    monkeypatch.setattr(synthetic, 'write_synthetic_dataset',
                        lambda root, spec, progress: calls.append(root) or original(root, SMALL, progress=False))
    ensure_synthetic_dataset(config, progress=False)
    assert Path(config.dataset_path).parent == tmp_path and (Path(config.dataset_path) / MARKER_FILE).is_file()
    assert config.text_encoder_type == str(Path(config.dataset_path) / TEXT_ENCODER_DIR)
    ensure_synthetic_dataset(load_config(SYNTHETIC_CONFIG, [f'cache_dir={tmp_path}']), progress=False)
    assert len(calls) == 1

    (tmp_path / 'not_synthetic').mkdir()
    with pytest.raises(FileNotFoundError, match=MARKER_FILE):
        ensure_synthetic_dataset(load_config(SYNTHETIC_CONFIG, [f'dataset_path={tmp_path / "not_synthetic"}']))


@pytest.mark.slow
def test_mttr_learns_the_synthetic_task(tmp_path):
    """Two short epochs on a smaller dataset raise mAP and P@0.5 far above the same model untrained."""
    root = write_synthetic_dataset(tmp_path / 'data', SyntheticSpec(seed=1, num_train_videos=LEARN_TRAIN_VIDEOS,
                                                                    num_test_videos=30), progress=False)
    flags = ['-c', SYNTHETIC_CONFIG, '--cpu', '--set', f'dataset_path={root}', '--set',
             f'cache_dir={tmp_path / "cache"}', '--set', 'epochs=2', '--set', 'eval_pictures=0']
    config = load_config(SYNTHETIC_CONFIG, [f'dataset_path={root}', f'text_encoder_type={root / TEXT_ENCODER_DIR}'])
    torch.manual_seed(config.seed)
    untrained, _, _ = build_model(config)
    torch.save({'model_state_dict': untrained.state_dict()}, tmp_path / 'untrained.pth')
    assert main.main(list(map(str, ['-rm', 'eval', '-ckpt', tmp_path / 'untrained.pth',
                                    '--output_dir', tmp_path / 'before', *flags]))) == 0
    assert main.main(list(map(str, ['-rm', 'train', '--output_dir', tmp_path / 'run', *flags]))) == 0
    before = json.loads((tmp_path / 'before' / 'metrics_epoch_0.json').read_text())
    after = json.loads((tmp_path / 'run' / 'metrics_epoch_1.json').read_text())
    assert after['mAP 0.5:0.95'] > before['mAP 0.5:0.95'] + LEARN_MIN_MAP_GAIN, (before, after)
    assert after['P@0.5'] > before['P@0.5'] + LEARN_MIN_P50_GAIN, (before, after)

import json
import os
import random
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from datasets import build_dataset, refer_youtube_vos
from datasets.files import DatasetLayoutError, SubsetWarning
from datasets.video_expressions import windows_of
from tests.fake_datasets import (YTVOS_TRAIN_VIDEOS, dataset_config, frame_index, make_ref_youtube_vos_dataset,
                                 write_palette_png, ytvos_frame_names, ytvos_mask)
from tests.helpers import SHARED_DIR

REAL_VALID_META = SHARED_DIR / 'data/real/refer_youtube_vos/meta_expressions/valid/meta_expressions.json'
WINDOW = 4

pytestmark = pytest.mark.filterwarnings('ignore::datasets.files.SubsetWarning')


def ytvos_config(root, tmp_path, **overrides):
    return dataset_config('ref_youtube_vos', root, tmp_path / 'cache', **{'window_size': WINDOW, **overrides})


@pytest.fixture(scope='module')
def fake(tmp_path_factory):
    return make_ref_youtube_vos_dataset(tmp_path_factory.mktemp('ytvos') / 'refer_youtube_vos')


@pytest.fixture
def fake_copy(fake, tmp_path):
    root = tmp_path / 'refer_youtube_vos'
    shutil.copytree(fake.root, root)
    return root


def names(positions):
    return [f'{5 * p:05d}' for p in positions]


# --- training windows ---------------------------------------------------------------------------------------

def test_windows_of():
    frames = names(range(10))
    assert windows_of(frames, 4) == [names(range(0, 4)), names(range(4, 8)), names(range(6, 10))]
    assert windows_of(frames, 5) == [names(range(0, 5)), names(range(5, 10))]
    assert windows_of(names(range(2)), 4) == [names([0, 1, 1, 1])]


def test_train_samples_skip_windows_without_the_referred_object(fake, tmp_path):
    dataset = build_dataset('train', **ytvos_config(fake.root, tmp_path))
    assert dataset.samples == [
        ('trainvidA', names(range(0, 4)), '0', 1, 'the cat on the left'),
        ('trainvidA', names(range(4, 8)), '0', 1, 'the cat on the left'),
        ('trainvidA', names(range(6, 10)), '0', 1, 'the cat on the left'),  # last window from the end
        ('trainvidA', names(range(0, 4)), '1', 2, 'a dog'),  # visible in frames 0-2 only
        ('trainvidA', names(range(6, 10)), '2', 3, 'a ball'),  # visible in frame 9 only
        ('trainvidB', names([0, 1, 1, 1]), '0', 1, 'a person'),  # short video: last frame repeated
    ]


@pytest.mark.parametrize('idx, positions, object_ids, referred, visible', [
    (3, [0, 1, 2, 3], [1, 2], 1, [1, 1, 1, 0]),
    (4, [6, 7, 8, 9], [1, 3], 1, [0, 0, 0, 1]),
    (0, [0, 1, 2, 3], [1, 2], 0, [1, 1, 1, 1]),
    (5, [0, 1, 1, 1], [1], 0, [1, 1, 1, 1]),
])
def test_train_item(fake, tmp_path, idx, positions, object_ids, referred, visible):
    dataset = build_dataset('train', **ytvos_config(fake.root, tmp_path))
    video_id = dataset.samples[idx][0]
    video, targets, text_query = dataset[idx]
    assert video.shape == (WINDOW, 3, 64, 96)
    assert [frame_index(f) for f in video] == positions
    assert text_query == dataset.samples[idx][4]
    assert len(targets) == WINDOW
    for position, name, target, is_visible in zip(positions, names(positions), targets, visible):
        visible_positions = YTVOS_TRAIN_VIDEOS[video_id][1]
        expected = np.stack([ytvos_mask(video_id, position, o) if position in visible_positions[o] else
                             np.zeros((64, 96), bool) for o in object_ids])
        assert np.array_equal(target['masks'].numpy(), expected)  # one mask per object of the window, id order
        assert target['referred_instance_idx'].item() == referred
        assert target['is_ref_inst_visible'].dtype == torch.uint8 and target['is_ref_inst_visible'].item() == is_visible
        assert target['orig_size'] == (64, 96) and target['size'].tolist() == [64, 96]
        assert torch.equal(target['iscrowd'], torch.zeros(len(object_ids)))
        assert target['image_id'] == f'v_{video_id}_f_{name}'


def test_train_flip_swaps_frames_masks_and_words(fake, tmp_path):
    dataset = build_dataset('train', **ytvos_config(fake.root, tmp_path, horizontal_flip_augmentations=True))
    random.seed(3)
    seen = set()
    for _ in range(12):
        video, targets, text_query = dataset[0]
        flipped = text_query == 'the cat on the right'
        seen.add(flipped)
        expected = torch.from_numpy(ytvos_mask('trainvidA', 0, 1))
        assert torch.equal(targets[0]['masks'][0], expected.flip(-1) if flipped else expected)
        assert [frame_index(f.flip(-1) if flipped else f) for f in video] == [0, 1, 2, 3]
    assert seen == {True, False}


def test_train_batch(fake, tmp_path):
    dataset = build_dataset('train', **ytvos_config(fake.root, tmp_path))
    batch = dataset.collator([dataset[3], dataset[5]])
    assert batch['samples'].tensors.shape == (WINDOW, 2, 3, 64, 96)
    assert len(batch['targets']) == WINDOW and all(len(step) == 2 for step in batch['targets'])
    assert [t['referred_instance_idx'].item() for t in batch['targets'][0]] == [1, 0]
    assert 'videos_metadata' not in batch


def test_train_sample_list_cache(fake_copy, tmp_path, monkeypatch):
    first = build_dataset('train', **ytvos_config(fake_copy, tmp_path))

    def fail(mask):
        raise AssertionError('the cached sample list should have been used')
    monkeypatch.setattr(refer_youtube_vos, 'object_ids', fail)
    assert build_dataset('train', **ytvos_config(fake_copy, tmp_path)).samples == first.samples
    monkeypatch.undo()
    assert len(build_dataset('train', **ytvos_config(fake_copy, tmp_path, window_size=5))) == 5  # own cache
    # other masks under the same path: the ball is now visible in frame 0 too
    mask_path = fake_copy / 'train' / 'Annotations' / 'trainvidA' / '00000.png'
    ids = np.array(Image.open(mask_path))
    ids[ytvos_mask('trainvidA', 0, 3)] = 3
    write_palette_png(mask_path, ids)
    rebuilt = build_dataset('train', **ytvos_config(fake_copy, tmp_path))
    assert ('trainvidA', names(range(0, 4)), '2', 3, 'a ball') in rebuilt.samples and len(rebuilt) == 7
    assert len(list((tmp_path / 'cache' / 'ref_youtube_vos').glob('samples_train_*.json'))) == 3


# --- evaluation --------------------------------------------------------------------------------------------

def test_valid_is_valid_minus_test_videos(fake, tmp_path):
    dataset = build_dataset('test', **ytvos_config(fake.root, tmp_path))
    assert [(s[0], [e for e, _ in s[2]]) for s in dataset.samples] == [('validvidA', ['0', '1']),
                                                                       ('validvidB', ['0', '1'])]
    assert dataset.samples[0][2][1] == ('1', 'a second expression')


def test_eval_item_is_the_whole_video_with_all_its_expressions(fake, tmp_path):
    dataset = build_dataset('test', **ytvos_config(fake.root, tmp_path, eval_short_size=32, eval_max_size=1000))
    video, targets, text_queries, metadata = dataset[0]
    assert video.shape == (5, 3, 32, 48)
    assert [frame_index(f) for f in video] == [0, 1, 2, 3, 4]
    assert targets == [[None] * 5, [None] * 5]
    assert text_queries == ['the thing in validvida', 'a second expression']
    assert metadata == [{'video_id': 'validvidA', 'exp_id': exp_id, 'frame_indices': ytvos_frame_names(5),
                         'original_frame_size': (64, 96), 'resized_frame_size': (32, 48)} for exp_id in '01']
    batch = dataset.collator([dataset[0], dataset[1]])  # 5 and 3 frames
    assert batch['samples'].tensors.shape == (5, 2, 3, 32, 48)
    assert batch['samples'].mask[3:, 1].all() and not batch['samples'].mask[:3, 1].any()
    assert [(m['video_id'], m['exp_id']) for m in batch['videos_metadata']] == [
        ('validvidA', '0'), ('validvidA', '1'), ('validvidB', '0'), ('validvidB', '1')]
    assert batch['query_videos'].tolist() == [0, 0, 1, 1]
    assert batch['text_queries'] == ('the thing in validvida', 'a second expression', 'the thing in validvidb',
                                     'a second expression')
    assert batch['valid_indices'].tolist() == [0, 1, 2, 3, 4]  # every frame, without targets


def test_valid_video_ids_file_replaces_the_missing_test_file(tmp_path):
    fake = make_ref_youtube_vos_dataset(tmp_path / 'ytvos', write_test_meta=False)
    with pytest.raises(FileNotFoundError) as error:
        build_dataset('test', **ytvos_config(fake.root, tmp_path))
    message = str(error.value)
    assert 'meta_expressions/test/meta_expressions.json not found' in message
    assert 'valid_video_ids_path' in message and '(3 videos)' in message

    ids_path = tmp_path / 'valid_ids.txt'
    ids_path.write_text('validvidB\nvalidvidA\n')
    dataset = build_dataset('test', **ytvos_config(fake.root, tmp_path, valid_video_ids_path=str(ids_path)))
    assert [s[0] for s in dataset.samples] == ['validvidA', 'validvidB']

    ids_path.write_text('validvidA\nnot_a_video\n')
    with pytest.raises(ValueError, match=r'valid_ids.txt: 1 video ids are not in .*valid/meta_expressions.json'):
        build_dataset('test', **ytvos_config(fake.root, tmp_path, valid_video_ids_path=str(ids_path)))


# --- errors -------------------------------------------------------------------------------------------

def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match='dataset root not found: .*nowhere'):
        build_dataset('train', **ytvos_config(tmp_path / 'nowhere', tmp_path))


@pytest.mark.parametrize('image_set, relative, message', [
    ('train', 'train/JPEGImages', 'train frame folder not found: .*train/JPEGImages'),
    ('train', 'train/Annotations', 'train mask folder not found: .*train/Annotations'),
    ('train', 'meta_expressions/train/meta_expressions.json', 'train expressions file not found'),
    ('train', 'train/Annotations/trainvidA/00010.png', r'mask .*trainvidA/00010.png not found \(a frame listed in'),
    ('test', 'valid/JPEGImages', 'valid frame folder not found: .*valid/JPEGImages'),
    ('test', 'meta_expressions/valid/meta_expressions.json', 'valid expressions file not found'),
])
def test_missing_file_or_folder(fake_copy, tmp_path, image_set, relative, message):
    path = fake_copy / relative
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(DatasetLayoutError, match=message) as error:
        build_dataset(image_set, **ytvos_config(fake_copy, tmp_path))
    assert '\n' not in str(error.value) and 'meta_expressions/' in error.value.layout


def test_rgb_mask_is_refused_with_its_name(fake_copy, tmp_path):
    path = fake_copy / 'train' / 'Annotations' / 'trainvidB' / '00005.png'
    Image.open(path).convert('RGB').save(path)
    with pytest.raises(ValueError, match='trainvidB/00005.png: expected a palette PNG .* mode RGB'):
        build_dataset('train', **ytvos_config(fake_copy, tmp_path))


def test_unreadable_frame_names_the_file(fake_copy, tmp_path):
    dataset = build_dataset('test', **ytvos_config(fake_copy, tmp_path))
    (fake_copy / 'valid' / 'JPEGImages' / 'validvidB' / '00005.jpg').write_bytes(b'garbage')
    with pytest.raises(RuntimeError, match='cannot read the frame .*validvidB/00005.jpg'):
        dataset[1]


def test_train_expression_without_obj_id(fake_copy, tmp_path):
    path = fake_copy / 'meta_expressions' / 'train' / 'meta_expressions.json'
    meta = json.loads(path.read_text())
    del meta['videos']['trainvidB']['expressions']['0']['obj_id']
    path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match='expression 0 of video trainvidB has no obj_id'):
        build_dataset('train', **ytvos_config(fake_copy, tmp_path))


def test_row_count_warnings(fake, tmp_path):
    with pytest.warns(SubsetWarning, match='train/meta_expressions.json: found 2 videos, the full dataset has 3471'):
        build_dataset('train', **ytvos_config(fake.root, tmp_path))
    with pytest.warns(SubsetWarning) as record:
        build_dataset('test', **ytvos_config(fake.root, tmp_path))
    messages = [str(w.message) for w in record]
    assert any('valid/meta_expressions.json: found 3 videos, the full dataset has 507' in m for m in messages)
    assert any('test/meta_expressions.json: found 2 valid videos, the full dataset has 202' in m for m in messages)


# --- the distributed valid expressions file ------------------------------------------------------------------

@pytest.fixture(scope='module')
def real_valid(tmp_path_factory):
    if not REAL_VALID_META.is_file():
        pytest.skip(f'real Refer-YouTube-VOS valid expressions not found at {REAL_VALID_META}')
    root = tmp_path_factory.mktemp('real_ytvos') / 'refer_youtube_vos'
    (root / 'meta_expressions' / 'valid').mkdir(parents=True)
    os.symlink(REAL_VALID_META, root / 'meta_expressions' / 'valid' / 'meta_expressions.json')
    (root / 'valid' / 'JPEGImages').mkdir(parents=True)
    videos = json.loads(REAL_VALID_META.read_text())['videos']
    # stand-in test split: the competition's is not distributed any more
    test_ids = sorted(videos)[::5] + sorted(videos)[1::5] + sorted(videos)[2::5][:305 - 2 * 102]
    return root, videos, test_ids


def test_real_valid_file_needs_the_test_file_or_valid_ids(real_valid, tmp_path):
    root, videos, test_ids = real_valid
    assert len(videos) == 507 and len(test_ids) == 305
    with pytest.raises(FileNotFoundError, match=r'lists the valid and the test videos together \(507 videos\)'):
        build_dataset('test', **ytvos_config(root, tmp_path))
    valid_ids = [v for v in videos if v not in set(test_ids)]
    ids_path = tmp_path / 'valid_ids.txt'
    ids_path.write_text('\n'.join(valid_ids))
    with warnings.catch_warnings():
        warnings.simplefilter('error', SubsetWarning)  # 507 listed, 202 valid: the full dataset's counts
        dataset = build_dataset('test', **ytvos_config(root, tmp_path, valid_video_ids_path=str(ids_path)))
    expected = [(v, sorted(videos[v]['frames']), [(e, ' '.join(x['exp'].lower().split()))
                                                  for e, x in videos[v]['expressions'].items()])
                for v in valid_ids]
    assert dataset.samples == expected
    assert len(dataset) == 202  # one item per video


def test_real_valid_file_with_a_test_file(real_valid, tmp_path):
    root, videos, test_ids = real_valid
    test_root = tmp_path / 'with_test'
    shutil.copytree(root, test_root, symlinks=True)
    (test_root / 'meta_expressions' / 'test').mkdir()
    (test_root / 'meta_expressions' / 'test' / 'meta_expressions.json').write_text(
        json.dumps({'videos': {v: videos[v] for v in test_ids}}))
    dataset = build_dataset('test', **ytvos_config(test_root, tmp_path))
    assert [s[0] for s in dataset.samples] == [v for v in videos if v not in set(test_ids)]

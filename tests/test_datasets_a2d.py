import csv
import random
import shutil
import warnings

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

import main
from datasets import build_dataset
from datasets import a2d_sentences
from datasets.a2d_sentences import ClipReader, read_text_annotations
from datasets.coco_evaluator import ReferringCOCOEvaluator
from datasets.files import DatasetLayoutError, SubsetWarning
from tests.fake_datasets import (A2D_VIDEOS, a2d_mask, dataset_config, frame_index, make_a2d_dataset, write_a2d_h5,
                                 write_index_clip)
from tests.helpers import JHMDB_CONFIG, SHARED_DIR, YTVOS_CONFIG

REAL_A2D = SHARED_DIR / 'data' / 'real' / 'a2d_sentences'
WINDOW = 8

pytestmark = pytest.mark.filterwarnings('ignore::datasets.files.SubsetWarning')


def a2d_config(root, cache, **overrides):
    return dataset_config('a2d_sentences', root, cache, **{'window_size': WINDOW, **overrides})


@pytest.fixture(scope='module')
def fake(tmp_path_factory):
    return make_a2d_dataset(tmp_path_factory.mktemp('a2d') / 'a2d_sentences')


@pytest.fixture
def fake_copy(fake, tmp_path):
    """A copy to modify or break."""
    root = tmp_path / 'a2d_sentences'
    shutil.copytree(fake.root, root)
    return root


def expected_window(frame, num_frames):
    return [min(max(i, 0), num_frames - 1) for i in range(frame - 1 - WINDOW // 2, frame - 1 + (WINDOW + 1) // 2)]


# --- reading clips --------------------------------------------------------------------------------------------

@pytest.mark.parametrize('gop', [None, 5, 1])
def test_clip_reader_reads_exactly_the_requested_frames(tmp_path, gop):
    path = tmp_path / 'clip.mp4'
    write_index_clip(path, 30, gop=gop)
    reader = ClipReader()
    for start, stop in [(-4, 4), (-10, -2), (0, 8), (11, 19), (13, 14), (26, 34), (35, 40), (29, 30)]:
        frames = reader.read_window(path, start, stop)
        assert [frame_index(f) for f in frames] == [min(max(i, 0), 29) for i in range(start, stop)], (start, stop)
    random_windows = random.Random(0).sample(range(-3, 30), 12)
    for start in random_windows:  # out of order, so the reader seeks backwards too
        assert [frame_index(f) for f in reader.read_window(path, start, start + 5)] == \
               [min(max(i, 0), 29) for i in range(start, start + 5)]


def test_clip_reader_falls_back_to_whole_decoding(tmp_path, monkeypatch):
    path = tmp_path / 'clip.mp4'
    write_index_clip(path, 20, gop=5)
    reader = ClipReader()
    monkeypatch.setattr(reader, '_decode_timestamps', lambda path, wanted: None)
    with pytest.warns(UserWarning, match='decoding this clip whole'):
        frames = reader.read_window(path, 15, 23)
    assert [frame_index(f) for f in frames] == [15, 16, 17, 18, 19, 19, 19, 19]
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # warned once per clip
        assert [frame_index(f) for f in reader.read_window(path, -2, 2)] == [0, 0, 0, 1]


def test_unreadable_video_names_the_file(tmp_path):
    path = tmp_path / 'broken.mp4'
    path.write_bytes(b'not a video at all' * 100)
    with pytest.raises(RuntimeError, match='broken.mp4'):
        ClipReader().read_window(path, 0, 8)


# --- sample list ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('image_set', ['train', 'test'])
def test_sample_list(fake, tmp_path, image_set):
    dataset = build_dataset(image_set, **a2d_config(fake.root, tmp_path))
    assert dataset.samples == fake.samples[image_set]
    assert len(dataset.samples) == {'train': 6, 'test': 3}[image_set]
    videos = {s[1] for s in dataset.samples}
    assert 'missedvid01' not in videos
    assert all(A2D_VIDEOS[v][0] == (image_set == 'test') for v in videos)
    assert 'bird standing in the beach' not in {s[0] for s in dataset.samples}  # the '1 (copy)' row
    if image_set == 'train':
        assert dataset.samples[0][0] == 'the man on the left running'  # lower-cased, spaces normalised


def test_items_windows_masks_and_targets(fake, tmp_path):
    dataset = build_dataset('train', **a2d_config(fake.root, tmp_path))
    for idx, (query, video_id, frame, instance_id) in enumerate(dataset.samples):
        video, targets, text_query = dataset[idx]
        assert video.shape == (WINDOW, 3, 64, 96) and video.dtype == torch.float32
        assert text_query == query
        assert [frame_index(f) for f in video] == expected_window(frame, fake.num_frames[video_id])
        assert len(targets) == WINDOW
        assert all(t is None for i, t in enumerate(targets) if i != WINDOW // 2)
        target = targets[WINDOW // 2]
        instance_ids = A2D_VIDEOS[video_id][2][frame]
        expected_masks = np.stack([fake.mask(video_id, frame, i) for i in instance_ids])
        assert target['masks'].dtype == torch.bool
        assert np.array_equal(target['masks'].numpy(), expected_masks)  # [N, H, W], not transposed
        assert target['referred_instance_idx'].item() == instance_ids.index(instance_id)
        assert target['orig_size'] == (64, 96) and target['size'].tolist() == [64, 96]
        assert target['area'].tolist() == expected_masks.sum((1, 2)).tolist()
        assert torch.equal(target['iscrowd'], torch.zeros(len(instance_ids)))
        assert target['image_id'] == f'v_{video_id}_f_{frame}_i_{instance_id}'


def test_windows_clamped_at_both_ends(fake, tmp_path):
    dataset = build_dataset('train', **a2d_config(fake.root, tmp_path))
    first = dataset.samples.index(('the man on the left running', 'trainvid001', 1, 0))
    last = dataset.samples.index(('the man on the left running', 'trainvid001', 20, 0))
    assert [frame_index(f) for f in dataset[first][0]] == [0, 0, 0, 0, 0, 1, 2, 3]
    assert [frame_index(f) for f in dataset[last][0]] == [15, 16, 17, 18, 19, 19, 19, 19]


def test_training_flip_swaps_frames_masks_and_words(fake, tmp_path):
    dataset = build_dataset('train', **a2d_config(fake.root, tmp_path, horizontal_flip_augmentations=True))
    idx = dataset.samples.index(('the man on the left running', 'trainvid001', 10, 0))
    expected_masks = torch.from_numpy(fake.mask('trainvid001', 10, 0))[None]
    random.seed(1)
    seen = set()
    for _ in range(12):
        video, targets, text_query = dataset[idx]
        flipped = text_query == 'the man on the right running'
        seen.add(flipped)
        assert torch.equal(targets[WINDOW // 2]['masks'], expected_masks.flip(-1) if flipped else expected_masks)
        frames = video.flip(-1) if flipped else video
        assert [frame_index(f) for f in frames] == expected_window(10, 20)
    assert seen == {True, False}


def test_resize_to_train_sizes(fake, tmp_path):
    dataset = build_dataset('train', **a2d_config(fake.root, tmp_path, train_short_size=32, train_max_size=1000))
    video, targets, _ = dataset[0]
    assert video.shape[-2:] == (32, 48)
    assert targets[WINDOW // 2]['size'].tolist() == [32, 48] and targets[WINDOW // 2]['orig_size'] == (64, 96)
    assert targets[WINDOW // 2]['masks'].shape[-2:] == (32, 48)


def test_old_readme_video_folder_is_accepted(tmp_path):
    fake = make_a2d_dataset(tmp_path / 'a2d', video_folder='CLIPS320')
    dataset = build_dataset('test', **a2d_config(fake.root, tmp_path / 'cache'))
    assert [frame_index(f) for f in dataset[0][0]] == expected_window(dataset.samples[0][2], 16)


def test_test_items_hold_every_query_of_an_annotated_frame(fake, tmp_path):
    dataset = build_dataset('test', **a2d_config(fake.root, tmp_path))
    assert dataset.items == [[0, 1], [2]]  # testvid0001 frame 4 (instances 2 and 5), frame 12 (instance 5)
    video, targets, queries = dataset[0]
    assert [frame_index(f) for f in video] == expected_window(4, 16)
    assert queries == ['red car', 'blue car on the left']
    assert [t[WINDOW // 2]['image_id'] for t in targets] == ['v_testvid0001_f_4_i_2', 'v_testvid0001_f_4_i_5']
    assert [t[WINDOW // 2]['referred_instance_idx'].item() for t in targets] == [0, 1]
    batch = dataset.collator([dataset[0], dataset[1]])
    assert batch['samples'].tensors.shape[1] == 2 and batch['query_videos'].tolist() == [0, 0, 1]
    assert batch['valid_indices'].tolist() == [WINDOW // 2]
    assert [t['image_id'] for t in batch['targets'][WINDOW // 2]] == [
        'v_testvid0001_f_4_i_2', 'v_testvid0001_f_4_i_5', 'v_testvid0001_f_12_i_5']


def test_collated_batch(fake, tmp_path):
    dataset = build_dataset('train', **a2d_config(fake.root, tmp_path))
    batch = dataset.collator([dataset[0], dataset[5]])
    assert batch['samples'].tensors.shape == (WINDOW, 2, 3, 64, 96)
    assert batch['text_queries'] == (dataset.samples[0][0], dataset.samples[5][0])
    assert batch['targets'][WINDOW // 2][1]['image_id'] == 'v_trainvid002_f_6_i_3'
    assert batch['targets'][0] == (None, None)


# --- evaluation ground truth --------------------------------------------------------------------------------

def test_coco_ground_truth(fake, tmp_path):
    dataset = build_dataset('test', **a2d_config(fake.root, tmp_path / 'cache'))
    assert dataset.coco_gt_path.parent.parent == tmp_path / 'cache'
    coco = COCO(str(dataset.coco_gt_path))
    expected_ids = [f'v_{v}_f_{f}_i_{i}' for _, v, f, i in fake.samples['test']]
    assert [img['id'] for img in coco.dataset['images']] == expected_ids
    assert [ann['id'] for ann in coco.dataset['annotations']] == [1, 2, 3]
    assert coco.dataset['categories'] == [{'id': 1, 'name': 'dummy_class'}]
    for (_, video_id, frame, instance_id), ann in zip(fake.samples['test'], coco.dataset['annotations']):
        mask = fake.mask(video_id, frame, instance_id)
        assert coco.imgs[ann['image_id']]['height'] == 64 and coco.imgs[ann['image_id']]['width'] == 96
        assert isinstance(ann['segmentation']['counts'], str)
        assert np.array_equal(coco.annToMask(ann), mask)
        assert ann['area'] == mask.sum() and ann['iscrowd'] == 0 and ann['category_id'] == 1
        ys, xs = np.nonzero(mask)
        assert ann['bbox'] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    assert build_dataset('train', **a2d_config(fake.root, tmp_path / 'cache')).coco_gt_path is None


def test_configured_ground_truth_path(fake, tmp_path):
    gt_path = tmp_path / 'gt' / 'a2d_test.json'
    config = a2d_config(fake.root, tmp_path / 'cache', dataset_coco_gt_format_path=str(gt_path))
    dataset = build_dataset('test', **config)
    assert dataset.coco_gt_path == gt_path and gt_path.is_file()


# --- absent_referred_samples: frames without the referred instance -----------------------------------------

# the fake's annotated frames without the referred instance: trainvid001 instance 1 at frame 10, testvid0001
# instance 2 at frame 12 (see A2D_VIDEOS)
ABSENT = {'train': [('dog on the right', 'trainvid001', 10, 1)], 'test': [('red car', 'testvid0001', 12, 2)]}


@pytest.mark.parametrize('image_set', ['train', 'test'])
def test_absent_referred_samples_add_the_frames_without_the_instance(fake, tmp_path, image_set):
    plain = build_dataset(image_set, **a2d_config(fake.root, tmp_path))
    assert plain.samples == fake.samples[image_set]  # the original's samples when the key is off
    dataset = build_dataset(image_set, **a2d_config(fake.root, tmp_path, absent_referred_samples=True))
    assert sorted(dataset.samples) == sorted(fake.samples[image_set] + ABSENT[image_set])
    for idx in range(len(dataset)):
        item = dataset[idx]
        queries = [item[2]] if image_set == 'train' else item[2]
        targets = [item[1]] if image_set == 'train' else item[1]
        samples = [dataset.samples[i] for i in dataset.items[idx]]
        for sample, query, query_targets in zip(samples, queries, targets):
            _, video_id, frame, instance_id = sample
            target = query_targets[WINDOW // 2]
            shown = A2D_VIDEOS[video_id][2][frame]
            expected = [fake.mask(video_id, frame, i) for i in shown]
            if sample in ABSENT[image_set]:  # one more object: the referred one, with an empty mask
                expected.append(np.zeros((64, 96), dtype=bool))
                assert target['referred_instance_idx'].item() == len(shown)
            else:
                assert target['referred_instance_idx'].item() == shown.index(instance_id)
            assert np.array_equal(target['masks'].numpy(), np.stack(expected))
            assert target['is_ref_inst_visible'].item() == (sample not in ABSENT[image_set])
            assert target['area'].tolist() == [m.sum() for m in expected] and len(target['iscrowd']) == len(expected)
    if image_set == 'test':  # the ground truth holds the frames that show the instance, as before
        coco = COCO(str(dataset.coco_gt_path))
        assert [img['id'] for img in coco.dataset['images']] == [f'v_{v}_f_{f}_i_{i}'
                                                                 for _, v, f, i in fake.samples['test']]
    if image_set == 'train':  # the original's targets carry no visibility
        assert all('is_ref_inst_visible' not in plain[i][1][WINDOW // 2] for i in range(len(plain)))


def test_the_evaluator_scores_absent_frames_for_the_probability_of_referred_only(fake, tmp_path):
    dataset = build_dataset('test', **a2d_config(fake.root, tmp_path, absent_referred_samples=True))
    evaluator = ReferringCOCOEvaluator(dataset.coco_gt_path, tmp_path / 'pictures', 0)
    batch = dataset.collator([dataset[i] for i in range(len(dataset))])
    queries = len(batch['text_queries'])  # 4: frame 4 (red car, blue car), frame 12 (red car absent, blue car)
    targets = batch['targets'][WINDOW // 2]
    absent = [not t['is_ref_inst_visible'] for t in targets]
    assert absent == [False, False, True, False]
    # query q's object query 0 holds the ground truth mask; the probabilities of "referred" are chosen by hand
    probabilities = torch.tensor([[0.9, 0.2], [0.8, 0.6], [0.1, 0.3], [0.7, 0.05]])  # [queries, object queries]
    masks = torch.full((1, queries, 2, 64, 96), -10.0)
    for q, target in enumerate(targets):
        masks[0, q, 0] = torch.where(target['masks'][target['referred_instance_idx']], 10.0, -10.0)
    logits = torch.stack([probabilities.log(), (1 - probabilities).log()], -1)[None]  # [1, queries, 2, 2]
    evaluator.update(batch, {'pred_masks': masks, 'pred_is_referred': logits})
    assert {p['image_id'] for p in evaluator.predictions} == {t['image_id'] for t, a in zip(targets, absent) if not a}
    metrics = evaluator.summarize()
    assert metrics['referred_probability_absent'] == pytest.approx(0.3)
    assert metrics['referred_probability_present'] == pytest.approx((0.9 + 0.8 + 0.7) / 3)
    assert metrics['mAP 0.5:0.95'] == pytest.approx(1.0) and metrics['P@0.9'] == 1.0  # the present frames only
    plain = ReferringCOCOEvaluator(dataset.coco_gt_path, tmp_path / 'pictures', 0)
    for target in targets:  # targets without visibility (the original's samples): no such metric
        target.pop('is_ref_inst_visible')
    batch['targets'] = [(None,) * queries] * WINDOW
    batch['targets'][WINDOW // 2] = tuple(t for t, a in zip(targets, absent) if not a)
    keep = [q for q in range(queries) if not absent[q]]
    plain.update(batch, {'pred_masks': masks[:, keep], 'pred_is_referred': logits[:, keep]})
    assert not any(key.startswith('referred_probability') for key in plain.summarize())


@pytest.mark.parametrize('config_path', [JHMDB_CONFIG, YTVOS_CONFIG])
def test_datasets_that_do_not_read_absent_referred_samples_refuse_it(config_path, tmp_path, capsys):
    args = ['-rm', 'eval', '-c', config_path, '--cpu', '-ckpt', tmp_path / 'model.pth', '--output_dir',
            tmp_path / 'run', '--set', 'absent_referred_samples=true']
    assert main.main(list(map(str, args))) == 2
    dataset_name = config_path.stem.replace('refer_', 'ref_')
    assert capsys.readouterr().err.strip() == (f'error: config key absent_referred_samples: {dataset_name} does not '
                                               'read it (only a2d_sentences does); set it to false')
    assert not (tmp_path / 'run').exists()


# --- caching ----------------------------------------------------------------------------------------------

def test_sample_list_is_cached_and_rebuilt_for_other_data(fake_copy, tmp_path, monkeypatch):
    config = a2d_config(fake_copy, tmp_path / 'cache')
    first = build_dataset('train', **config)
    cached = sorted((tmp_path / 'cache' / 'a2d_sentences').glob('samples_train_*.json'))
    assert len(cached) == 1

    def fail(path):
        raise AssertionError('the cached sample list should have been used')
    monkeypatch.setattr(a2d_sentences, 'read_instance_ids', fail)
    assert build_dataset('train', **config).samples == first.samples
    monkeypatch.undo()

    # other data under the same path: another annotation row, and a mask file rewritten with another instance
    with open(fake_copy / 'text_annotations' / 'a2d_annotation.txt', 'a', newline='') as f:
        csv.writer(f, lineterminator='\n').writerow(['trainvid002', '4', 'a second bird'])
    write_a2d_h5(fake_copy / 'text_annotations' / 'a2d_annotation_with_instances' / 'trainvid002' / '00006.h5',
                 [3, 4], np.stack([a2d_mask('trainvid002', 6, 3), a2d_mask('trainvid002', 6, 4)]))
    rebuilt = build_dataset('train', **config)
    assert rebuilt.samples == first.samples + [('a second bird', 'trainvid002', 6, 4)]
    assert len(sorted((tmp_path / 'cache' / 'a2d_sentences').glob('samples_train_*.json'))) == 2


def test_single_and_multiple_instance_files(tmp_path):
    path = tmp_path / 'x.h5'
    mask = np.zeros((6, 10), dtype=bool)
    mask[1:3, 2:9] = True
    write_a2d_h5(path, [7], mask[None])
    ids, masks = a2d_sentences.read_frame_masks(path)
    assert ids == [7] and masks.shape == (1, 6, 10) and np.array_equal(masks[0], mask)
    write_a2d_h5(path, [2, 7], np.stack([mask, ~mask]))
    ids, masks = a2d_sentences.read_frame_masks(path)
    assert ids == [2, 7] and np.array_equal(masks, np.stack([mask, ~mask]))


# --- errors ----------------------------------------------------------------------------------------------

def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'dataset root not found: .*nowhere.*dataset_path'):
        build_dataset('train', **a2d_config(tmp_path / 'nowhere', tmp_path / 'cache'))


@pytest.mark.parametrize('relative, message', [
    ('Release/videoset.csv', 'A2D videoset file not found: .*Release/videoset.csv'),
    ('text_annotations/a2d_annotation.txt', 'text annotations not found: .*a2d_annotation.txt'),
    ('text_annotations/a2d_missed_videos.txt', 'missed-videos list not found: .*a2d_missed_videos.txt'),
    ('text_annotations/a2d_annotation_with_instances', 'mask folder not found: .*a2d_annotation_with_instances'),
    ('Release/clips320H', 'A2D video folder not found: .*clips320H.*CLIPS320'),
    ('Release/clips320H/trainvid002.mp4', '1 A2D videos not found: .*trainvid002.mp4'),
    ('text_annotations/a2d_annotation_with_instances/trainvid001', '1 A2D-Sentences mask folders not found'),
])
def test_missing_file_or_folder_is_named_with_the_layout(fake_copy, tmp_path, relative, message):
    path = fake_copy / relative
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(DatasetLayoutError, match=message) as error:
        build_dataset('train', **a2d_config(fake_copy, tmp_path / 'cache'))
    assert '\n' not in str(error.value) and str(error.value).endswith('(the expected layout is printed above)')
    assert 'a2d_annotation_with_instances' in error.value.layout


def test_videoset_with_a_header_is_rejected(fake_copy, tmp_path):
    path = fake_copy / 'Release' / 'videoset.csv'
    path.write_text('VID,Label,Start,End,Height,Width,FramesCut,AnnotatedFrames,Usage\n' + path.read_text())
    with pytest.raises(ValueError, match=r'videoset.csv, line 1: expected 9 comma-separated columns without a header'):
        build_dataset('train', **a2d_config(fake_copy, tmp_path / 'cache'))


def test_unreadable_mask_names_the_file(fake_copy, tmp_path):
    bad = fake_copy / 'text_annotations' / 'a2d_annotation_with_instances' / 'trainvid002' / '00006.h5'
    bad.write_bytes(b'garbage')
    with pytest.raises(RuntimeError, match='cannot read the A2D mask file .*trainvid002/00006.h5'):
        build_dataset('train', **a2d_config(fake_copy, tmp_path / 'cache'))


def test_unreadable_video_names_the_file_when_read(fake_copy, tmp_path):
    dataset = build_dataset('train', **a2d_config(fake_copy, tmp_path / 'cache'))
    (fake_copy / 'Release' / 'clips320H' / 'trainvid002.mp4').write_bytes(b'garbage' * 100)
    with pytest.raises(RuntimeError, match='cannot read the video .*trainvid002.mp4'):
        dataset[5]


def test_row_counts_differing_from_the_full_dataset_warn(fake, tmp_path):
    with pytest.warns(SubsetWarning) as record:
        build_dataset('train', **a2d_config(fake.root, tmp_path))
    messages = [str(w.message) for w in record]
    assert any('videoset.csv: found 4 rows, the full dataset has 3782' in m for m in messages)
    assert any('a2d_annotation.txt: found 7 rows, the full dataset has 6655' in m for m in messages)
    assert any('a2d_missed_videos.txt: found 1 video ids, the full dataset has 28' in m for m in messages)


# --- the real annotation files ----------------------------------------------------------------------------

@pytest.fixture(scope='module')
def real_a2d_test(tmp_path_factory):
    """The real videoset.csv, a2d_annotation.txt and a2d_missed_videos.txt with generated masks (every
    instance of a video in every annotated frame) and empty clips, for the test split."""
    if not REAL_A2D.is_dir():
        pytest.skip(f'real A2D annotation files not found at {REAL_A2D}')
    root = tmp_path_factory.mktemp('real_a2d') / 'a2d_sentences'
    (root / 'Release' / 'clips320H').mkdir(parents=True)
    (root / 'text_annotations').mkdir()
    shutil.copy(REAL_A2D / 'Release' / 'videoset.csv', root / 'Release')
    for name in ('a2d_annotation.txt', 'a2d_missed_videos.txt'):
        shutil.copy(REAL_A2D / 'text_annotations' / name, root / 'text_annotations')
    with open(REAL_A2D / 'Release' / 'videoset.csv', newline='') as f:
        videoset = {row[0]: row for row in csv.reader(f)}
    missed = set((REAL_A2D / 'text_annotations' / 'a2d_missed_videos.txt').read_text().split())
    with open(REAL_A2D / 'text_annotations' / 'a2d_annotation.txt', newline='') as f:
        rows = list(csv.reader(f))[1:]
    test_rows = [r for r in rows if videoset[r[0]][8] == '1' and r[0] not in missed]
    instances = {}
    for video_id, instance_id, _ in test_rows:
        instances.setdefault(video_id, []).append(int(instance_id))
    mask = np.zeros((4, 6), dtype=bool)
    mask[1, 2:5] = True
    for video_id, ids in instances.items():
        (root / 'Release' / 'clips320H' / f'{video_id}.mp4').touch()
        for frame in range(1, int(videoset[video_id][7]) + 1):
            write_a2d_h5(root / 'text_annotations' / 'a2d_annotation_with_instances' / video_id / f'{frame:05d}.h5',
                         ids, np.stack([mask] * len(ids)))
    expected = [(' '.join(q.lower().split()), v, frame, int(i)) for v, i, q in test_rows
                for frame in range(1, int(videoset[v][7]) + 1)]
    return root, expected


@pytest.mark.slow
def test_real_annotation_files_give_the_test_sample_list(real_a2d_test, tmp_path):
    root, expected = real_a2d_test
    with warnings.catch_warnings():
        warnings.simplefilter('error', SubsetWarning)  # the real files have the full dataset's row counts
        dataset = build_dataset('test', **a2d_config(root, tmp_path))
    assert dataset.samples == expected
    assert len({s[1] for s in dataset.samples}) == 737  # test videos minus the missed ones
    assert all(q == q.strip() and '  ' not in q and q == q.lower() for q, *_ in dataset.samples)
    coco = COCO(str(dataset.coco_gt_path))
    assert len(coco.imgs) == len(expected) == len(coco.anns)


def test_real_annotation_rows():
    if not REAL_A2D.is_dir():
        pytest.skip(f'real A2D annotation files not found at {REAL_A2D}')
    rows = read_text_annotations(REAL_A2D / 'text_annotations' / 'a2d_annotation.txt')
    assert len(rows) == 6655 - 1  # the '1 (copy)' row is dropped
    assert ('T6bNPuKV-wY', 1, 'a man in black suit standing on the right') in rows
    assert 'bird standing in the beach' not in {q for _, _, q in rows}
    assert all(q == ' '.join(q.split()) for _, _, q in rows)


def test_clip_reader_keeps_few_clips_open_and_none_across_processes(tmp_path):
    import pickle
    reader = ClipReader()
    paths = [tmp_path / f'clip{i}.mp4' for i in range(ClipReader.OPEN_CLIPS + 2)]
    for path in paths:
        write_index_clip(path, 12)
        assert [frame_index(f) for f in reader.read_window(path, 3, 6)] == [3, 4, 5]
    assert len(reader._open) == ClipReader.OPEN_CLIPS
    assert pickle.loads(pickle.dumps(reader))._open == {}
    assert [frame_index(f) for f in reader.read_window(paths[-1], 0, 2)] == [0, 1]  # an open clip, read again

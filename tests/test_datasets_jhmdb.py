import json
import os
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from pycocotools.coco import COCO

from datasets import build_dataset
from datasets.files import DatasetLayoutError, SubsetWarning
from tests.fake_datasets import JHMDB_VIDEOS, dataset_config, frame_index, jhmdb_metadata_entry, make_jhmdb_dataset
from tests.helpers import SHARED_DIR

PAPER_METADATA = SHARED_DIR / 'data' / 'jhmdb_sentences_samples_metadata.json'
REAL_JHMDB = SHARED_DIR / 'data' / 'real' / 'jhmdb_sentences'
WINDOW = 8

pytestmark = pytest.mark.filterwarnings('ignore::datasets.files.SubsetWarning')


def jhmdb_config(root, tmp_path, **overrides):
    values = {'cache_dir': str(tmp_path / 'cache'), 'window_size': WINDOW, 'output_dir': str(tmp_path / 'run'),
              **overrides}
    return dataset_config('jhmdb_sentences', root, values.pop('cache_dir'), **values)


@pytest.fixture(scope='module')
def fake(tmp_path_factory):
    return make_jhmdb_dataset(tmp_path_factory.mktemp('jhmdb') / 'jhmdb_sentences')


def write_metadata(path, entries):
    path.write_text(json.dumps(entries))
    return str(path)


def expected_draw(seed):
    rng = random.Random(seed)
    return {video_id: sorted(rng.sample(range(1, min(n_frames, n_masks) + 1), 3))
            for video_id, (_, n_frames, n_masks, _) in JHMDB_VIDEOS.items()}


# --- sample list ------------------------------------------------------------------------------------------

def test_new_samples_are_drawn_with_the_seed_and_written_to_the_run(fake, tmp_path):
    dataset = build_dataset('test', **jhmdb_config(fake.root, tmp_path, seed=7))
    written = tmp_path / 'run' / 'jhmdb_sentences_samples_metadata.json'
    assert dataset.samples_metadata_path == written
    entries = json.loads(written.read_text())
    draw = expected_draw(7)
    assert entries == [jhmdb_metadata_entry(v, f, fake.num_frames[v], JHMDB_VIDEOS[v][3])
                       for v in JHMDB_VIDEOS for f in draw[v]]
    assert all(e[3] == 10 for e in entries[:3])  # 12 frames on disk, 10 masks
    assert build_dataset('test', **jhmdb_config(fake.root, tmp_path / 'again', seed=7)).samples == dataset.samples


def test_generate_flag_wins_over_a_given_file(fake, tmp_path):
    given = write_metadata(tmp_path / 'given.json', [jhmdb_metadata_entry('pullup_vid_2', 4, 8, 'x')])
    dataset = build_dataset('test', **jhmdb_config(fake.root, tmp_path, samples_metadata_path=given,
                                                   generate_new_samples_metadata=True))
    assert len(dataset) == 6 and dataset.samples_metadata_path.parent == tmp_path / 'run'


def test_without_output_dir_the_drawn_list_goes_to_the_cache(fake, tmp_path):
    dataset = build_dataset('test', **jhmdb_config(fake.root, tmp_path, output_dir=''))
    assert dataset.samples_metadata_path.is_relative_to(tmp_path / 'cache')


def test_metadata_paths_are_resolved_against_the_dataset_path(fake, tmp_path):
    root = tmp_path / 'somewhere_else'  # not named jhmdb_sentences, as the paths in the file are
    shutil.copytree(fake.root, root)
    entries = [jhmdb_metadata_entry('brush_vid_1', 1, 10, '  Woman on the LEFT  '),
               jhmdb_metadata_entry('brush_vid_1', 10, 10, 'woman'),
               jhmdb_metadata_entry('pullup_vid_2', 4, 8, 'man')]
    metadata = write_metadata(tmp_path / 'metadata.json', entries)
    dataset = build_dataset('test', **jhmdb_config(root, tmp_path, samples_metadata_path=metadata))
    assert dataset.samples[0][1] == root / 'Rename_Images' / 'brush_hair' / 'brush_vid_1' / '00001.png'
    assert dataset.samples[0][2] == root / 'puppet_mask' / 'brush_hair' / 'brush_vid_1' / 'puppet_mask.mat'

    windows = [[1, 1, 1, 1, 1, 2, 3, 4], [6, 7, 8, 9, 10, 10, 10, 10], [1, 1, 2, 3, 4, 5, 6, 7]]
    for idx, (entry, window) in enumerate(zip(entries, windows)):
        video, targets, text_query = dataset[idx]
        video_id, frame = entry[0], int(entry[1][-9:-4])
        assert video.shape == (WINDOW, 3, 64, 96)
        assert [frame_index(f) for f in video] == window  # frames count from 1, clamped to [1, total_frames]
        assert all(t is None for i, t in enumerate(targets) if i != WINDOW // 2)
        target = targets[WINDOW // 2]
        assert np.array_equal(target['masks'].numpy(), fake.mask(video_id, frame)[None])
        assert target['referred_instance_idx'].item() == 0 and target['image_id'] == f'v_{video_id}_f_{frame}'
        assert target['orig_size'] == (64, 96) and target['size'].tolist() == [64, 96]
        assert torch.equal(target['iscrowd'], torch.zeros(1))
    assert dataset[0][2] == 'woman on the left'  # normalised, and never flipped


def test_coco_ground_truth(fake, tmp_path):
    dataset = build_dataset('test', **jhmdb_config(fake.root, tmp_path))
    coco = COCO(str(dataset.coco_gt_path))
    assert dataset.coco_gt_path.is_relative_to(tmp_path / 'cache')
    draw = expected_draw(42)
    assert [img['id'] for img in coco.dataset['images']] == [f'v_{v}_f_{f}' for v in JHMDB_VIDEOS for f in draw[v]]
    for image in coco.dataset['images']:
        video_id, frame = image['id'][2:].rsplit('_f_', 1)
        (ann,) = coco.imgToAnns[image['id']]
        assert np.array_equal(coco.annToMask(ann), fake.mask(video_id, int(frame)))
    assert [a['id'] for a in coco.dataset['annotations']] == list(range(1, 7))


def test_collated_batch(fake, tmp_path):
    dataset = build_dataset('test', **jhmdb_config(fake.root, tmp_path))
    batch = dataset.collator([dataset[0], dataset[4]])
    assert batch['samples'].tensors.shape == (WINDOW, 2, 3, 64, 96)
    expected_ids = [f'v_{video_id}_f_{int(frame_path.stem)}'
                    for video_id, frame_path, *_ in (dataset.samples[0], dataset.samples[4])]
    assert [t['image_id'] for t in batch['targets'][WINDOW // 2]] == expected_ids


# --- errors -------------------------------------------------------------------------------------------

def test_training_is_refused(fake, tmp_path):
    with pytest.raises(ValueError, match='evaluation only'):
        build_dataset('train', **jhmdb_config(fake.root, tmp_path))


def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match='dataset root not found: .*nowhere'):
        build_dataset('test', **jhmdb_config(tmp_path / 'nowhere', tmp_path))


@pytest.mark.parametrize('relative, message', [
    ('Rename_Images', 'folder Rename_Images not found: .*Rename_Images'),
    ('puppet_mask', 'folder puppet_mask not found: .*puppet_mask'),
    ('jhmdb_annotation.txt', 'text annotations not found: .*jhmdb_annotation.txt'),
    ('puppet_mask/pullup/pullup_vid_2', r'puppet_mask/<action>/pullup_vid_2 not found .*line 3'),
])
def test_missing_file_or_folder(fake, tmp_path, relative, message):
    root = tmp_path / 'jhmdb'
    shutil.copytree(fake.root, root)
    path = root / relative
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(DatasetLayoutError, match=message) as error:
        build_dataset('test', **jhmdb_config(root, tmp_path))
    assert '\n' not in str(error.value) and 'puppet_mask.mat' in error.value.layout


def test_missing_metadata_file(fake, tmp_path):
    with pytest.raises(FileNotFoundError, match='samples metadata .*samples_metadata_path.* not found: .*missing.json'):
        build_dataset('test', **jhmdb_config(fake.root, tmp_path, samples_metadata_path=str(tmp_path / 'missing.json')))


def test_metadata_of_another_dataset_path(fake, tmp_path):
    other = jhmdb_metadata_entry('other_video', 1, 9, 'q', videos={'other_video': ('run',)})
    metadata = write_metadata(tmp_path / 'm.json', [jhmdb_metadata_entry('brush_vid_1', 1, 10, 'q'), other])
    with pytest.raises(FileNotFoundError, match=r'1 JHMDB frame folders listed in .*m.json not found: .*other_video'):
        build_dataset('test', **jhmdb_config(fake.root, tmp_path, samples_metadata_path=metadata))


def test_unreadable_mask_names_the_file(fake, tmp_path):
    root = tmp_path / 'jhmdb'
    shutil.copytree(fake.root, root)
    (root / 'puppet_mask' / 'pullup' / 'pullup_vid_2' / 'puppet_mask.mat').write_bytes(b'garbage')
    with pytest.raises(RuntimeError, match='cannot read the JHMDB mask file .*pullup_vid_2/puppet_mask.mat'):
        build_dataset('test', **jhmdb_config(root, tmp_path))


def test_row_count_warning(fake, tmp_path):
    with pytest.warns(SubsetWarning, match='jhmdb_annotation.txt: found 2 rows, the full dataset has 928'):
        build_dataset('test', **jhmdb_config(fake.root, tmp_path))


# --- the real masks and the paper's sample list -----------------------------------------------------------

@pytest.fixture(scope='module')
def real_root(tmp_path_factory):
    """The real masks and annotations, with empty files standing in for the frames, and a cache directory
    shared by the tests using them (the ground truth of the paper's list is built once)."""
    if not (PAPER_METADATA.is_file() and REAL_JHMDB.is_dir()):
        pytest.skip(f'real JHMDB files not found under {SHARED_DIR / "data"}')
    root = tmp_path_factory.mktemp('real_jhmdb') / 'jhmdb_sentences'
    root.mkdir()
    os.symlink(REAL_JHMDB / 'puppet_mask', root / 'puppet_mask')
    shutil.copy(REAL_JHMDB / 'jhmdb_annotation.txt', root)
    for video_id, frame_path, _, total_frames, _ in json.loads(PAPER_METADATA.read_text())[::3]:
        frames_dir = root / Path(frame_path).parent.relative_to('jhmdb_sentences')
        frames_dir.mkdir(parents=True)
        for i in range(1, total_frames + 1):
            (frames_dir / f'{i:05d}.png').touch()
    return root, root.parent / 'cache'


@pytest.mark.slow
def test_paper_sample_list_and_ground_truth_from_the_real_masks(real_root, tmp_path):
    real_root, cache = real_root
    config = jhmdb_config(real_root, tmp_path, samples_metadata_path=str(PAPER_METADATA), cache_dir=str(cache))
    with warnings.catch_warnings():
        warnings.simplefilter('error', SubsetWarning)
        dataset = build_dataset('test', **config)
    assert len(dataset) == 2784
    assert dataset.samples[0][1] == real_root / 'Rename_Images/pullup/100_pullups_pullup_f_nm_np1_fr_med_1/00002.png'
    coco = COCO(str(dataset.coco_gt_path))
    assert len(coco.imgs) == len(coco.anns) == 2784
    assert coco.dataset['images'][0] == {'id': 'v_100_pullups_pullup_f_nm_np1_fr_med_1_f_2', 'height': 240,
                                         'width': 320}
    for video_id, frame_path, mask_path, _, _ in dataset.samples[::400]:
        frame = int(frame_path.stem)
        mask = scipy.io.loadmat(mask_path)['part_mask'][:, :, frame - 1]
        (ann,) = coco.imgToAnns[f'v_{video_id}_f_{frame}']
        assert np.array_equal(coco.annToMask(ann), mask != 0) and ann['area'] == (mask != 0).sum() > 0


@pytest.mark.slow
def test_seed_42_draws_the_papers_sample_list(real_root, tmp_path):
    real_root, cache = real_root
    dataset = build_dataset('test', **jhmdb_config(real_root, tmp_path, seed=42, cache_dir=str(cache)))
    assert json.loads(dataset.samples_metadata_path.read_text()) == json.loads(PAPER_METADATA.read_text())

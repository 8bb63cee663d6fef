"""The datasets' inputs and outputs as a user meets them (issue 24): text and JSON files that are malformed name
themselves (not UTF-8, a repeated key, an expression without its text or with values of the wrong type), a
missing part of a dataset is one line with its layout apart, the caches and the predicted masks on a real full
disk leave nothing half-written and the earlier files whole (the import rules: tests/test_architecture.py).

Faults are real: files holding the bad bytes, a small tmpfs that fills up (`helpers.small_tmpfs`, root needed).
"""
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from datasets import build_dataset
from datasets.files import DatasetLayoutError, read_json, require_path
from datasets.video_expressions import write_expression_masks
from tests.fake_benchmarks import write_mevis_split
from tests.fake_datasets import (dataset_config, jhmdb_metadata_entry, make_a2d_dataset, make_jhmdb_dataset,
                                 make_ref_youtube_vos_dataset, rectangle_mask)
from tests.helpers import file_digests, fill_disk, small_tmpfs
from utils import WriteError

LATIN1_CAFE = 'caf\u00e9'.encode('latin-1')  # b'caf\xe9': the 0xE9 byte starts no UTF-8 sequence

pytestmark = pytest.mark.filterwarnings('ignore::datasets.files.SubsetWarning')


def append_line(path: Path, line: bytes) -> int:
    """Append `line` to the file as a line of its own; returns its line number."""
    data = path.read_bytes()
    if data and not data.endswith(b'\n'):
        data += b'\n'
    path.write_bytes(data + line + b'\n')
    return data.count(b'\n') + 1


# ---------------------------------------------------------------- class 10: a missing part of a dataset

def test_a_missing_path_is_one_line_and_the_layout_apart(tmp_path):
    layout = '<dataset_path>/\n└── wanted.txt'
    with pytest.raises(DatasetLayoutError) as error:
        require_path(tmp_path / 'wanted.txt', 'the wanted file', layout)
    assert str(error.value) == f'the wanted file not found: {tmp_path / "wanted.txt"} (the expected layout is ' \
                               'printed above)'
    assert error.value.layout == layout and isinstance(error.value, FileNotFoundError)
    copy = pickle.loads(pickle.dumps(error.value))  # (as it crosses processes)
    assert (str(copy), copy.layout) == (str(error.value), layout)


@pytest.mark.parametrize('relative', ['train/Annotations', 'meta_expressions/train/meta_expressions.json'])
def test_a_missing_part_of_a_dataset_is_a_layout_error(tmp_path, relative):
    root = make_ref_youtube_vos_dataset(tmp_path / 'ytvos').root
    path = root / relative
    path.unlink() if path.is_file() else shutil.rmtree(path)
    with pytest.raises(DatasetLayoutError, match=f'not found: {path} \\(the expected layout is printed above\\)$') \
            as error:
        build_dataset('train', **dataset_config('ref_youtube_vos', root, tmp_path / 'cache'))
    assert 'meta_expressions/' in error.value.layout and '\n' not in str(error.value)


# ---------------------------------------------------------------- class 6: text that is not UTF-8

def a2d_without_clips(tmp_path):
    root = make_a2d_dataset(tmp_path / 'a2d', write_clips=False).root
    (root / 'Release' / 'clips320H').mkdir()  # (the text files are read before the clips are looked for)
    return root


@pytest.mark.parametrize('relative, line', [
    ('Release/videoset.csv', b'cafevid01,0,00:00:00,00:00:05,64,96,10,1,' + LATIN1_CAFE),
    ('text_annotations/a2d_annotation.txt', b'trainvid001,0,the man in the ' + LATIN1_CAFE),
    ('text_annotations/a2d_missed_videos.txt', LATIN1_CAFE),
])
def test_a2d_text_files_that_are_not_utf8_are_named(tmp_path, relative, line):
    root = a2d_without_clips(tmp_path)
    line_number = append_line(root / relative, line)
    with pytest.raises(ValueError, match=f'^{root / relative}, line {line_number}: not UTF-8 text .*byte 0xe9'):
        build_dataset('train', **dataset_config('a2d_sentences', root, tmp_path / 'cache'))


def test_jhmdb_text_files_that_are_not_utf8_are_named(tmp_path):
    root = make_jhmdb_dataset(tmp_path / 'jhmdb').root
    metadata = tmp_path / 'samples.json'
    entry = jhmdb_metadata_entry('brush_vid_1', 3, 10, 'QUERY')
    metadata.write_bytes(json.dumps([entry]).encode().replace(b'QUERY', b'a woman in a ' + LATIN1_CAFE))
    with pytest.raises(ValueError, match=f'^{metadata}, line 1: not UTF-8 text'):
        build_dataset('test', **dataset_config('jhmdb_sentences', root, tmp_path / 'cache',
                                               samples_metadata_path=str(metadata)))
    annotations = root / 'jhmdb_annotation.txt'
    line_number = append_line(annotations, b'brush_vid_1,a woman in a ' + LATIN1_CAFE)
    with pytest.raises(ValueError, match=f'^{annotations}, line {line_number}: not UTF-8 text'):
        build_dataset('test', **dataset_config('jhmdb_sentences', root, tmp_path / 'cache'))


def test_refer_youtube_vos_text_files_that_are_not_utf8_are_named(tmp_path):
    root = make_ref_youtube_vos_dataset(tmp_path / 'ytvos').root
    ids = tmp_path / 'valid_ids.txt'
    ids.write_bytes(b'validvidA\n' + LATIN1_CAFE + b'\n')
    with pytest.raises(ValueError, match=f'^{ids}, line 2: not UTF-8 text'):
        build_dataset('test', **dataset_config('ref_youtube_vos', root, tmp_path / 'cache',
                                               valid_video_ids_path=str(ids)))
    meta = root / 'meta_expressions' / 'train' / 'meta_expressions.json'
    meta.write_bytes(meta.read_bytes().replace(b'a dog', b'a ' + LATIN1_CAFE + b' dog'))
    with pytest.raises(ValueError, match=f'^{meta}, line 1: not UTF-8 text'):
        build_dataset('train', **dataset_config('ref_youtube_vos', root, tmp_path / 'cache'))


def small_mevis(root, splits=('train', 'valid_u')):
    """Two videos of 3 frames; vidA's expression 0 refers to object 1 (frames 0 and 1), 1 to objects 1 and 2."""
    for split in splits:
        write_mevis_split(root, split, {
            'vidA': {'frames': ['00000', '00001', '00002'],
                     'objects': {1: [rectangle_mask(0, 0), rectangle_mask(1, 0), None],
                                 2: [None, rectangle_mask(1, 1), rectangle_mask(2, 1)]},
                     'expressions': {'0': ('the first box', [1]), '1': ('both boxes', [1, 2])}},
            'vidB': {'frames': ['00000', '00001', '00002'],
                     'objects': {3: [rectangle_mask(t, 2) for t in range(3)]},
                     'expressions': {'0': ('the only box', [3])}}})
    return Path(root)


@pytest.mark.parametrize('name', ['meta_expressions.json', 'mask_dict.json'])
def test_mevis_json_files_that_are_not_utf8_are_named(tmp_path, name):
    root = small_mevis(tmp_path / 'mevis')
    path = root / 'train' / name
    text = path.read_bytes()
    path.write_bytes(text[:-1] + b', "x": "' + LATIN1_CAFE + b'"}')
    with pytest.raises(ValueError, match=f'^{path}, line 1: not UTF-8 text'):
        build_dataset('train', **dataset_config('mevis', root, tmp_path / 'cache', window_size=2))


def test_ref_davis17_video_list_that_is_not_utf8_is_named(tmp_path):
    root = tmp_path / 'ref_davis17'
    for folder in ('JPEGImages', 'Annotations_unsupervised'):
        (root / 'DAVIS' / folder / '480p').mkdir(parents=True)
    (root / 'DAVIS' / 'ImageSets' / '2017').mkdir(parents=True)
    val = root / 'DAVIS' / 'ImageSets' / '2017' / 'val.txt'
    val.write_bytes(b'bear\n' + LATIN1_CAFE + b'\n')
    (root / 'davis_text_annotations').mkdir()
    for name in ('Davis17_annot1.txt', 'Davis17_annot1_full_video.txt', 'Davis17_annot2.txt',
                 'Davis17_annot2_full_video.txt'):
        (root / 'davis_text_annotations' / name).write_text('')
    with pytest.raises(ValueError, match=f'^{val}, line 2: not UTF-8 text'):
        build_dataset('test', **dataset_config('ref_davis17', root, tmp_path / 'cache'))


# ---------------------------------------------------------------- class 6: repeated keys, missing texts, wrong types

def edit_train_meta(root: Path, edit) -> Path:
    path = root / 'meta_expressions' / 'train' / 'meta_expressions.json'
    meta = json.loads(path.read_text())
    edit(meta['videos'])
    path.write_text(json.dumps(meta))
    return path


def test_a_repeated_expression_or_video_id_names_the_file_video_and_expression(tmp_path):
    root = make_ref_youtube_vos_dataset(tmp_path / 'ytvos').root
    config = dataset_config('ref_youtube_vos', root, tmp_path / 'cache')
    path = root / 'meta_expressions' / 'train' / 'meta_expressions.json'
    good = path.read_text()
    # (json.dumps cannot write a repeated key: the text is edited)
    path.write_text(good.replace('{"0": {"exp": "a person", "obj_id": "1"}}',
                                 '{"0": {"exp": "a person", "obj_id": "1"}, "0": {"exp": "a bird", "obj_id": "1"}}'))
    with pytest.raises(ValueError, match=f'^{path}: expression 0 of video trainvidB is listed twice'):
        build_dataset('train', **config)
    video_b = good[good.index('"trainvidB"'):-2]
    path.write_text(good[:-2] + ', ' + video_b + '}}')
    with pytest.raises(ValueError, match=f'^{path}: video trainvidB is listed twice'):
        build_dataset('train', **config)


def test_a_repeated_key_in_any_json_names_the_file_and_the_key(tmp_path):
    root = small_mevis(tmp_path / 'mevis')
    mask_dict = root / 'train' / 'mask_dict.json'
    mask_dict.write_text(mask_dict.read_text()[:-1] + ', "1": [null, null, null]}')
    with pytest.raises(ValueError, match=f"^{mask_dict}: key '1' appears twice in the top-level object"):
        build_dataset('train', **dataset_config('mevis', root, tmp_path / 'cache', window_size=2))
    nested = tmp_path / 'nested.json'
    nested.write_text('{"a": [0, {"b": {"c": 1, "c": 2}}]}')
    with pytest.raises(ValueError, match=f"^{nested}: key 'c' appears twice in a > \\[1\\] > b "):
        read_json(nested, 'anything')


@pytest.mark.parametrize('edit, message', [
    (lambda videos: videos['trainvidB']['expressions']['0'].pop('exp'),
     'expression 0 of video trainvidB has no "exp"'),
    (lambda videos: videos['trainvidB']['expressions']['0'].update(exp=123),
     'expression 0 of video trainvidB: "exp" is 123; expected a text'),
    (lambda videos: videos['trainvidB'].update(frames=['00000', 5]),
     "video trainvidB: frame 5 is a int; expected frame names as strings"),
    (lambda videos: videos['trainvidB']['expressions']['0'].update(obj_id='one'),
     "expression 0 of video trainvidB: obj_id 'one' is not an object id; expected an integer"),
    (lambda videos: videos['trainvidB']['expressions']['0'].update(obj_id=1.5),
     'expression 0 of video trainvidB: obj_id 1.5 is not an object id'),
    (lambda videos: videos['trainvidB']['expressions']['0'].update(obj_id=True),
     'expression 0 of video trainvidB: obj_id True is not an object id'),
])
def test_refer_youtube_vos_expressions_of_the_wrong_form_are_named(tmp_path, edit, message):
    root = make_ref_youtube_vos_dataset(tmp_path / 'ytvos').root
    path = edit_train_meta(root, edit)
    with pytest.raises(ValueError, match=f'^{path}: {message}'):
        build_dataset('train', **dataset_config('ref_youtube_vos', root, tmp_path / 'cache'))


@pytest.mark.parametrize('key, values, shown', [('obj_id', ['a'], "'a'"), ('anno_id', [1.5], '1.5'),
                                                ('obj_id', [True], 'True')])
def test_mevis_object_ids_of_the_wrong_type_are_named(tmp_path, key, values, shown):
    root = small_mevis(tmp_path / 'mevis')
    path = root / 'valid_u' / 'meta_expressions.json'
    meta = json.loads(path.read_text())
    meta['videos']['vidA']['expressions']['1'][key] = values
    path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=f'^{path}: expression 1 of video vidA: "{key}" holds {shown}; expected '):
        build_dataset('test', **dataset_config('mevis', root, tmp_path / 'cache', window_size=2))


@pytest.mark.parametrize('position, value', [(4, 5), (3, '10'), (1, None)])
def test_jhmdb_samples_of_the_wrong_form_are_named(tmp_path, position, value):
    root = make_jhmdb_dataset(tmp_path / 'jhmdb').root
    entry = jhmdb_metadata_entry('brush_vid_1', 3, 10, 'a woman')
    entry[position] = value
    metadata = tmp_path / 'samples.json'
    metadata.write_text(json.dumps([entry]))
    with pytest.raises(ValueError, match=f'^{metadata}: expected a JSON list of entries .* got the entry '):
        build_dataset('test', **dataset_config('jhmdb_sentences', root, tmp_path / 'cache',
                                               samples_metadata_path=str(metadata)))


def test_a_missing_file_a_config_key_names_is_one_line(tmp_path):
    root = make_ref_youtube_vos_dataset(tmp_path / 'ytvos').root
    ids = tmp_path / 'valid_ids.txt'
    with pytest.raises(FileNotFoundError) as error:
        build_dataset('test', **dataset_config('ref_youtube_vos', root, tmp_path / 'cache',
                                               valid_video_ids_path=str(ids)))
    assert str(error.value) == (f'valid video ids (valid_video_ids_path) not found: {ids} (expected a text file with '
                                'one valid video id a line)')


# ---------------------------------------------------------------- class 3: a real full disk

def test_a_full_disk_while_caching_a_sample_list_names_the_file_and_keeps_the_earlier_cache(tmp_path):
    root = make_ref_youtube_vos_dataset(tmp_path / 'ytvos').root
    with small_tmpfs(tmp_path / 'cache') as cache:
        build_dataset('train', **dataset_config('ref_youtube_vos', root, cache, window_size=4))
        before = file_digests(cache)
        filler = fill_disk(cache)
        with pytest.raises(WriteError) as error:
            build_dataset('train', **dataset_config('ref_youtube_vos', root, cache, window_size=5))
        message = str(error.value)
        assert message.startswith(f'cannot write the cache file {cache / "ref_youtube_vos"}/samples_train_ws5_')
        assert message.endswith('.json: No space left on device') and '\n' not in message
        filler.unlink()
        assert file_digests(cache) == before  # no half-written or temporary file
        build_dataset('train', **dataset_config('ref_youtube_vos', root, cache, window_size=5))  # (room again)


def test_a_full_disk_while_splitting_mevis_masks_names_the_file_and_keeps_the_earlier_ones(tmp_path):
    root = small_mevis(tmp_path / 'mevis')
    with small_tmpfs(tmp_path / 'cache') as cache:
        build_dataset('test', **dataset_config('mevis', root, cache, window_size=2))  # valid_u's per-video files
        before = file_digests(cache)
        filler = fill_disk(cache)
        with pytest.raises(WriteError) as error:
            build_dataset('train', **dataset_config('mevis', root, cache, window_size=2))
        masks_dir = next((cache / 'mevis').glob('masks_train_*'))
        assert str(error.value) == f'cannot write the MeViS mask file {masks_dir / "vidA.json"}: No space left on ' \
                                   'device'
        filler.unlink()
        assert file_digests(cache) == before  # the train split's index was not written: the next run splits again
        dataset = build_dataset('train', **dataset_config('mevis', root, cache, window_size=2))
        assert sorted(p.name for p in dataset.masks_dir.iterdir()) == ['vidA.json', 'vidB.json']


def test_a_full_disk_while_writing_masks_leaves_no_half_written_png(tmp_path):
    masks = np.stack([rectangle_mask(t, 0) for t in range(3)]).astype(np.uint8) * 255  # [T, H, W]
    frames = ['00000', '00005', '00010']
    with small_tmpfs(tmp_path / 'out', '128k') as out:
        write_expression_masks(out, 'vidA', '0', frames, masks)
        before = file_digests(out)
        filler = fill_disk(out)
        with pytest.raises(WriteError) as error:
            write_expression_masks(out, 'vidA', '1', frames, masks)
        assert str(error.value) == f'cannot write the predicted mask {out / "vidA" / "1" / "00000.png"}: No space ' \
                                   'left on device'
        filler.unlink()
        assert file_digests(out) == before  # the masks of expression 0 whole, none of expression 1

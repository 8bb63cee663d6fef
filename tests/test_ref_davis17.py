"""datasets/ref_davis17.py: the Khoreva text files, the usual conversion into expression records (checked against
the real val records), the label-map rule and the palette PNGs.

Text files and frame folders are written here in the real layout; expected values are set by construction.
"""
import json
import random
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.files import SubsetWarning
from datasets.ref_davis17 import (DAVIS_PALETTE, EXPRESSION_SETS, expression_records, label_maps,
                                  read_expression_records, read_expressions, read_label_maps, read_text_annotations,
                                  write_label_maps)
from metrics import davis_unsupervised_scores

REAL_RECORDS = 'data/real/ref_davis17/valid_samples_metadata.json'
# Train videos of the text files (not in val.txt), under the misspelt names the real files use.
TRAIN_LINES = [('clasic-car', 1, 'a grey classic car'), ('dog-scale', 2, 'a small dog on the scale'),
               ('motor-bike', 1, 'a red motorbike')]


def write_dataset(root: Path, lines_per_set, val_videos, frames_per_video):
    """`lines_per_set[a]`: the text lines of expression set a; the annotator-2 files are written in Latin-1."""
    text_dir = root / 'davis_text_annotations'
    text_dir.mkdir(parents=True)
    for (name, encoding), lines in zip(EXPRESSION_SETS, lines_per_set):
        (text_dir / name).write_bytes(''.join(line + '\n' for line in lines).encode(encoding))
    image_sets = root / 'DAVIS' / 'ImageSets' / '2017'
    image_sets.mkdir(parents=True)
    (image_sets / 'val.txt').write_text(''.join(f'{video}\n' for video in val_videos))
    for video, frames in frames_per_video.items():
        video_dir = root / 'DAVIS' / 'JPEGImages' / '480p' / video
        video_dir.mkdir(parents=True)
        for frame in reversed(frames):  # creation order must not matter
            (video_dir / f'{frame}.jpg').touch()
    return root


def line(video, object_id, text):
    return f'{video} {object_id} "{text}"'


# ---------------------------------------------------------------- the real val records

def test_real_val_records_are_reproduced_from_text_files(shared_dir, tmp_path):
    records = json.loads((shared_dir / REAL_RECORDS).read_text())
    videos = OrderedDict((video, frames) for video, frames, _ in records)
    assert len(records) == 244 and len(videos) == 30
    assert len({(video, meta['obj_id']) for video, _, meta in records}) == 61
    assert sum(len(frames) for frames in videos.values()) == 1999

    # Text files consistent with the records: expression set a holds the records with exp_id % 4 == a; lines in
    # shuffled order, plus train videos under misspelt names.
    lines_per_set = [[line(*train_line) for train_line in TRAIN_LINES] for _ in EXPRESSION_SETS]
    for video, _, meta in records:
        lines_per_set[int(meta['exp_id']) % 4].append(line(video, meta['obj_id'], meta['exp']))
    for lines in lines_per_set:
        random.Random(0).shuffle(lines)
    root = write_dataset(tmp_path / 'ref_davis17', lines_per_set, list(videos), videos)

    with warnings.catch_warnings():
        warnings.simplefilter('error', SubsetWarning)  # the full val split: 30 videos, 244 expressions
        assert read_expression_records(root) == records


# ---------------------------------------------------------------- text file quirks

def test_text_file_quirks(tmp_path):
    path = tmp_path / 'Davis17_annot2.txt'
    path.write_bytes(b'clasic-car 1 "a car in front of the caf\xe9"\r\n'
                     b'\r\n'
                     b'dog-scale   2   "the dog\'s "little" scale "\r\n'
                     b'motor-bike 1 "a  man   on a bike"\n')
    assert read_text_annotations(path, 'latin-1') == {
        'classic-car': {1: 'a car in front of the caf\u00e9'},  # Latin-1 byte 0xE9
        'dogs-scale': {2: 'the dog\'s "little" scale '},  # inner quotes and the space before the last one kept
        'motorbike': {1: 'a man on a bike'},  # tokens joined by single spaces
    }


def test_utf8_file_with_a_latin1_byte_names_the_line(tmp_path):
    path = tmp_path / 'Davis17_annot1.txt'
    path.write_bytes('bear 1 "a brown bear"\nbear 2 "a na\u00efve cub"\n'.encode('utf-8') + b'cows 1 "a caf\xe9 cow"\n')
    with pytest.raises(ValueError, match=r'Davis17_annot1\.txt, line 3: not utf-8 text'):
        read_text_annotations(path, 'utf-8')
    path.write_bytes('bear 2 "a na\u00efve cub"\n'.encode('utf-8'))
    assert read_text_annotations(path, 'utf-8') == {'bear': {2: 'a na\u00efve cub'}}


@pytest.mark.parametrize('bad_line', ['bear 1 a brown bear', 'bear one "a brown bear"', 'bear "a brown bear"',
                                      'bear 1 "a brown bear', 'bear 1', 'bear 1 "'])
def test_malformed_line_names_the_file_and_line(tmp_path, bad_line):
    path = tmp_path / 'Davis17_annot1_full_video.txt'
    path.write_text(f'bear 1 "a brown bear"\n\n{bad_line}\n')
    with pytest.raises(ValueError, match=r'Davis17_annot1_full_video\.txt, line 3: expected <video> <object id>'):
        read_text_annotations(path, 'utf-8')


def test_a_second_line_for_an_object_is_an_error(tmp_path):
    path = tmp_path / 'Davis17_annot1.txt'
    path.write_text('bear 1 "a brown bear"\nbear 2 "a cub"\nbear 1 "another bear"\n')
    with pytest.raises(ValueError, match=r'line 3: object 1 of video bear already has an expression \(line 1\)'):
        read_text_annotations(path, 'utf-8')


# ---------------------------------------------------------------- the conversion

def test_objects_in_id_order_four_expressions_each(tmp_path):
    # Objects 10, 2 and 1, listed in that order; object k (k-th by id) gets exp_ids 4(k-1) + set.
    lines_per_set = [[line('bear', object_id, f'set {a} object {object_id}') for object_id in (10, 2, 1)]
                     for a in range(4)]
    root = write_dataset(tmp_path / 'davis', lines_per_set, ['bear'], {'bear': ['00002', '00000', '00001']})
    (root / 'DAVIS' / 'JPEGImages' / '480p' / 'bear' / 'notes.txt').touch()  # not a frame
    with pytest.warns(SubsetWarning):
        records = read_expression_records(root)
    frames = ['00000', '00001', '00002']
    assert records == [['bear', frames, {'exp': f'set {exp_id % 4} object {object_id}', 'obj_id': str(object_id),
                                         'exp_id': str(exp_id)}]
                       for exp_id, object_id in enumerate(object_id for object_id in (1, 2, 10) for _ in range(4))]
    for _, _, meta in records:  # expression set a = exp_id % 4 == a
        assert meta['exp'].startswith(f'set {int(meta["exp_id"]) % 4} ')


def test_an_object_missing_from_a_file_is_an_error(tmp_path):
    lines_per_set = [[line('bear', 1, 'a bear'), line('bear', 2, 'a cub')] for _ in range(4)]
    lines_per_set[3] = [line('bear', 1, 'a bear')]
    root = write_dataset(tmp_path / 'davis', lines_per_set, ['bear'], {'bear': ['00000']})
    expressions = read_expressions(root / 'davis_text_annotations')
    assert expressions['bear'][2] == ('a cub', 'a cub', 'a cub', None)
    with pytest.raises(ValueError, match=r'object 2 of video bear has no expression in '
                                         r'Davis17_annot2_full_video\.txt'):
        expression_records(expressions, ['bear'], {'bear': ['00000']})
    with pytest.raises(ValueError, match='video cows has no expressions'):
        expression_records(expressions, ['cows'], {'cows': ['00000']})


def test_misspelt_names_reach_the_val_videos(tmp_path):
    lines_per_set = [[line(name, object_id, f'{name} {a}') for name, object_id, _ in TRAIN_LINES] for a in range(4)]
    val = ['classic-car', 'dogs-scale', 'motorbike']
    root = write_dataset(tmp_path / 'davis', lines_per_set, val, {video: ['00000'] for video in val})
    with pytest.warns(SubsetWarning):
        records = read_expression_records(root)
    assert [(video, meta['obj_id'], meta['exp']) for video, _, meta in records] == [
        (video, str(object_id), f'{name} {a}') for video, (name, object_id, _) in zip(val, TRAIN_LINES)
        for a in range(4)]


def test_missing_text_file_shows_the_layout(tmp_path):
    root = write_dataset(tmp_path / 'davis', [[] for _ in range(4)], ['bear'], {'bear': ['00000']})
    (root / 'davis_text_annotations' / 'Davis17_annot2.txt').unlink()
    with pytest.raises(FileNotFoundError, match=r'(?s)Davis17_annot2\.txt.*Expected layout'):
        read_expression_records(root)


# ---------------------------------------------------------------- label maps and PNGs

def test_label_map_rule():
    # Two objects, one frame, five pixels: probabilities [object 1, object 2] per pixel.
    probabilities = torch.tensor([[0.9, 0.6],  # overlap: the higher probability wins -> 1
                                  [0.6, 0.9],  # -> 2
                                  [0.4, 0.49],  # nothing reaches 0.5 -> background
                                  [0.5, 0.0],  # 0.5 is not below 0.5 -> 1
                                  [0.7, 0.7]])  # tie -> the lower id
    probabilities = probabilities.T.reshape(2, 1, 1, 5)  # [K, T, H, W]
    expected = np.array([[[1, 2, 0, 1, 1]]], dtype=np.uint8)
    maps = label_maps(probabilities)
    assert maps.dtype == np.uint8 and maps.shape == (1, 1, 5)
    np.testing.assert_array_equal(maps, expected)
    np.testing.assert_array_equal(label_maps(probabilities.numpy()), expected)


def test_label_maps_need_k_t_h_w():
    with pytest.raises(ValueError, match=r'\[K, T, H, W\]'):
        label_maps(torch.zeros(2, 3, 4))


def test_label_maps_are_written_as_davis_palette_pngs(tmp_path):
    maps = np.zeros((3, 4, 6), dtype=np.uint8)
    maps[:, 1:3, 1:3] = 1
    maps[1, 0, 5] = 2
    maps[2, 3, 0] = 255
    video_dir = write_label_maps(tmp_path / 'out', 2, 'bear', maps)
    assert video_dir == tmp_path / 'out' / 'anno_2' / 'bear'
    assert sorted(p.name for p in video_dir.iterdir()) == ['00000.png', '00001.png', '00002.png']
    image = Image.open(video_dir / '00001.png')
    assert image.mode == 'P'
    palette = image.getpalette()
    # The PASCAL VOC colour map of the DAVIS annotations: index bits spread from the top bit of R, G and B.
    assert palette[:15] == [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128]
    assert palette[3 * 8:3 * 10] == [64, 0, 0, 192, 0, 0]
    assert palette[3 * 255:3 * 256] == [224, 224, 192]
    assert len(DAVIS_PALETTE) == 768
    frames, read_back = read_label_maps(video_dir)
    assert frames == ['00000', '00001', '00002']
    np.testing.assert_array_equal(read_back, maps)


def test_label_maps_of_exact_probabilities_score_one(tmp_path):
    # Ground truth: object 1 a square, object 2 a bar, in 3 frames of 30x40; the per-object probabilities are
    # 0.8 inside each object and 0.2 elsewhere: the written label maps score 1.0.
    gt = np.zeros((3, 30, 40), dtype=np.uint8)
    for t in range(3):
        gt[t, 5:15, 5 + t:15 + t] = 1
        gt[t, 20:25, 10:35] = 2
    probabilities = np.stack([np.where(gt == k, 0.8, 0.2) for k in (1, 2)]).astype(np.float32)
    video_dir = write_label_maps(tmp_path, 0, 'bear', label_maps(probabilities))
    scores = davis_unsupervised_scores(gt, read_label_maps(video_dir)[1])
    assert scores.j_mean.tolist() == [1.0, 1.0] and scores.f_mean.tolist() == [1.0, 1.0]

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

from datasets.files import DatasetLayoutError, SubsetWarning
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
    with pytest.raises(DatasetLayoutError, match=r'Davis17_annot2\.txt \(the expected layout is printed above\)') \
            as error:
        read_expression_records(root)
    assert 'Davis17_annot2.txt                (Latin-1)' in error.value.layout


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


# ---------------------------------------------------------------- loader and evaluator

def build_test_set(root, cache_dir, **config_values):
    import datasets
    from config import Config
    from tests.fake_datasets import SMALL_FRAME_SIZES
    config = Config(dataset_name='ref_davis17', dataset_path=str(root), cache_dir=str(cache_dir),
                    **SMALL_FRAME_SIZES, **config_values)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', SubsetWarning)
        return config, datasets.build_dataset('test', config)


def test_one_item_per_video_with_the_expressions_of_all_its_objects(shared_dir, tmp_path):
    from tests.fake_benchmarks import make_ref_davis17_dataset, read_davis_records
    from tests.fake_datasets import frame_index
    info = make_ref_davis17_dataset(tmp_path / 'ref_davis17', shared_dir)
    before = sorted(p.relative_to(info.root) for p in info.root.rglob('*'))
    _, dataset = build_test_set(info.root, tmp_path / 'cache')
    assert len(dataset) == 2 and dataset.video_ids == ['dogs-jump', 'judo']
    records = [r for r in read_davis_records(shared_dir) if r[0] == 'dogs-jump']
    video, targets, queries, metadata = dataset[0]
    assert video.shape == (4, 3, 64, 96) and [frame_index(frame) for frame in video] == [0, 1, 2, 3]
    assert len(queries) == len(targets) == len(metadata) == 12  # 3 objects x 4 expression sets
    assert queries == [' '.join(meta['exp'].lower().split()) for _, _, meta in records]
    assert [(m['exp_id'], m['obj_id'], m['expression_set'], m['label']) for m in metadata] == \
        [(str(e), str(e // 4 + 1), e % 4, e // 4 + 1) for e in range(12)]
    assert metadata[0]['frame_indices'] == ['00000', '00001', '00002', '00003']
    assert metadata[0]['original_frame_size'] == metadata[0]['resized_frame_size'] == (64, 96)
    assert len(dataset[1][2]) == 8  # judo: 2 objects
    batch = dataset.collator([dataset[0], dataset[1]])
    assert batch['query_videos'].tolist() == [0] * 12 + [1] * 8 and batch['valid_indices'].tolist() == [0, 1, 2, 3]
    # the converted list went to the cache; the dataset folder is as it was
    assert len(list((tmp_path / 'cache' / 'ref_davis17').glob('val_expressions_*.json'))) == 1
    assert sorted(p.relative_to(info.root) for p in info.root.rglob('*')) == before


def test_the_real_val_split_gives_30_items_and_244_queries(shared_dir, tmp_path):
    records = json.loads((shared_dir / REAL_RECORDS).read_text())
    videos = OrderedDict((video, frames) for video, frames, _ in records)
    lines_per_set = [[] for _ in EXPRESSION_SETS]
    for video, _, meta in records:
        lines_per_set[int(meta['exp_id']) % 4].append(line(video, meta['obj_id'], meta['exp']))
    root = write_dataset(tmp_path / 'ref_davis17', lines_per_set, list(videos), videos)
    (root / 'DAVIS' / 'Annotations_unsupervised' / '480p').mkdir(parents=True)
    text_dir = root / 'davis_text_annotations'
    moved = text_dir.rename(tmp_path / 'elsewhere')  # the text files may live outside the dataset folder
    _, dataset = build_test_set(root, tmp_path / 'cache', davis_text_annotations_path=str(moved))
    assert dataset.video_ids == list(videos)
    assert [len(expressions) for _, _, expressions in dataset.samples] == \
        [4 * len({meta['obj_id'] for video, _, meta in records if video == v}) for v in videos]
    assert sum(len(expressions) for _, _, expressions in dataset.samples) == 244
    assert [frames for _, frames, _ in dataset.samples] == list(videos.values())


def davis_ground_truth(info, video):
    """`[T, H, W]` label maps of the fake ground truth (void 255)."""
    return read_label_maps(info.root / 'DAVIS' / 'Annotations_unsupervised' / '480p' / video)[1]


def test_evaluator_scores_by_construction(shared_dir, tmp_path):
    # Object k's expression of set 0 and 3 draws object k: 1.0. Set 1 draws the objects in reverse order: the
    # label maps carry other ids, matched back: 1.0. Set 2 draws nothing for object 2 (of dogs-jump and of judo):
    # 2 of the 5 objects score J = F = 0.
    import datasets
    from tests.fake_benchmarks import aligned_mask, make_ref_davis17_dataset, outputs_drawing
    info = make_ref_davis17_dataset(tmp_path / 'ref_davis17', shared_dir, mask=aligned_mask)
    config, dataset = build_test_set(info.root, tmp_path / 'cache')

    def masks_of_query(q, metadata):
        num_objects = info.videos['val'][metadata['video_id']]['objects']
        label, expression_set = metadata['label'], metadata['expression_set']
        if expression_set == 2 and label == 2:
            return None
        drawn = num_objects + 1 - label if expression_set == 1 else label
        return np.stack([aligned_mask(t, drawn - 1) for t in range(len(metadata['frame_indices']))])

    evaluator = datasets.build_evaluator(config, dataset, tmp_path / 'run', 3)
    for index in range(len(dataset)):
        batch = dataset.collator([dataset[index]])
        evaluator.update(batch, outputs_drawing(batch, masks_of_query))
    metrics = evaluator.summarize()
    assert metrics['anno_0 J&F'] == metrics['anno_1 J&F'] == metrics['anno_3 J&F'] == 1.0
    assert (metrics['anno_2 J'], metrics['anno_2 F']) == pytest.approx((0.6, 0.6), abs=1e-12)
    assert (metrics['J'], metrics['F'], metrics['J&F']) == pytest.approx((0.9, 0.9, 0.9), abs=1e-12)
    assert (metrics['videos'], metrics['objects']) == (2, 5)
    out = tmp_path / 'run' / 'ref_davis17' / 'epoch_3'
    assert metrics['label_maps'] == str(out)
    gt = davis_ground_truth(info, 'judo')
    frames, written = read_label_maps(out / 'anno_0' / 'judo')
    assert frames == ['00000', '00001', '00002', '00003']
    assert Image.open(out / 'anno_0' / 'judo' / '00000.png').mode == 'P'
    np.testing.assert_array_equal(written, np.where(gt == 255, 0, gt))  # (void: a ring around object 1)
    np.testing.assert_array_equal(read_label_maps(out / 'anno_1' / 'judo')[1], np.choose(written, [0, 2, 1]))


def test_a_missing_or_malformed_label_map_names_the_file(shared_dir, tmp_path):
    from datasets.ref_davis17 import score_video
    from tests.fake_benchmarks import make_ref_davis17_dataset
    info = make_ref_davis17_dataset(tmp_path / 'ref_davis17', shared_dir, videos=('judo',), num_frames=2)
    gt_dir = info.root / 'DAVIS' / 'Annotations_unsupervised' / '480p'
    gt = davis_ground_truth(info, 'judo')
    maps = np.where(gt == 255, 0, gt).astype(np.uint8)
    write_label_maps(tmp_path / 'pred', 0, 'judo', maps[:1], ['00000'])
    with pytest.raises(FileNotFoundError, match=r'anno_0/judo/00001\.png'):
        score_video(tmp_path / 'pred', gt_dir, 'judo', [0])
    Image.new('RGB', (96, 64)).save(tmp_path / 'pred' / 'anno_0' / 'judo' / '00001.png')
    with pytest.raises(ValueError, match=r'00001\.png: expected a palette PNG .* got mode RGB'):
        score_video(tmp_path / 'pred', gt_dir, 'judo', [0])
    write_label_maps(tmp_path / 'pred', 0, 'judo', maps[1:, :, :90], ['00001'])
    with pytest.raises(ValueError, match=r'00001\.png: 64x90 \(HxW\), but the ground-truth frame is 64x96'):
        score_video(tmp_path / 'pred', gt_dir, 'judo', [0])
    write_label_maps(tmp_path / 'pred', 0, 'judo', maps[1:], ['00001'])
    (scores,) = score_video(tmp_path / 'pred', gt_dir, 'judo', [0])
    assert scores.j_mean.tolist() == [1.0, 1.0]


def test_config_has_the_refer_youtube_vos_model_and_eval_sizes():
    # The checkpoint evaluated is a Refer-YouTube-VOS one: same network, same evaluation frame sizes (480p frames
    # -> 360x640, as in ReferFormer's Ref-DAVIS17 inference).
    from config import load_config
    from datasets.transforms import resized_size
    davis, ytvos = load_config('configs/ref_davis17.yaml'), load_config('configs/refer_youtube_vos.yaml')
    model_keys = ['backbone_name', 'swin_embed_dim', 'swin_depths', 'swin_num_heads', 'swin_window_size',
                  'num_encoder_layers', 'num_decoder_layers', 'dim_feedforward', 'd_model', 'dropout', 'nheads',
                  'num_queries', 'mask_kernels_dim', 'text_encoder_type', 'eval_short_size', 'eval_max_size',
                  'resize_frames']
    assert {k: getattr(davis, k) for k in model_keys} == {k: getattr(ytvos, k) for k in model_keys}
    assert davis.dataset_name == 'ref_davis17' and davis.davis_text_annotations_path is None
    assert resized_size((854, 480), davis.eval_short_size, davis.eval_max_size) == (360, 640)
    from models.postprocessing import ReferYoutubeVOSPostProcess, build
    assert type(build(davis)) is ReferYoutubeVOSPostProcess  # what the original's build_model API returns

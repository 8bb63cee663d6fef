"""tools/evaluate_jf.py and tools/make_submission_zip.py on tiny fake Refer-YouTube-VOS layouts.

Expected J and F come from the hand-derived cases of test_metrics.py: in a frame with a diagonal below 125
pixels (radius-1 tolerance), a 5x5 square against the same square shifted by 2 columns has J = 15/35 = 3/7
(3 shared columns) and F = 0.6.
"""
import hashlib
import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from datasets.submission import check_submission_zip, expected_mask_names, write_submission_zip
from datasets.video_expressions import read_meta_expressions
from tests.helpers import REPO, fill_disk, small_tmpfs, write_json
from tools.evaluate_jf import evaluate_refer_youtube_vos, main as evaluate_main
from tools.make_submission_zip import main as submission_main

H, W = 20, 24  # diagonal 31.2: boundary tolerance ceil(0.008 * 31.2) = 1 pixel


def box(top, left, height, width, shape=(H, W)):
    mask = np.zeros(shape, dtype=bool)
    mask[top:top + height, left:left + width] = True
    return mask


def save_mask(path, mask):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def save_object_ids(path, object_ids):
    """A palette PNG whose pixel values are object ids, as in train/Annotations."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(object_ids.astype(np.uint8))
    image.putpalette([0, 0, 0, 236, 95, 103, 249, 145, 87] + [0] * (256 - 3) * 3)
    assert image.mode == 'P'
    image.save(path)


@pytest.fixture
def train_root(tmp_path):
    """vid1 (2 frames): object 1 = 5x5 square at rows/cols 5..9 in both frames, object 2 = 5x5 square at
    rows 12..16 / cols 14..18 in frame 00000 only. vid2 (1 frame, 16x16): object 1 = 6x6 square."""
    root = tmp_path / 'ytvos'
    both = np.zeros((H, W), dtype=np.uint8)
    both[box(5, 5, 5, 5)] = 1
    both[box(12, 14, 5, 5)] = 2
    only_first = np.zeros((H, W), dtype=np.uint8)
    only_first[box(5, 5, 5, 5)] = 1
    save_object_ids(root / 'train' / 'Annotations' / 'vid1' / '00000.png', both)
    save_object_ids(root / 'train' / 'Annotations' / 'vid1' / '00005.png', only_first)
    save_object_ids(root / 'train' / 'Annotations' / 'vid2' / '00000.png', box(2, 2, 6, 6, (16, 16)))
    write_json(root / 'meta_expressions' / 'train' / 'meta_expressions.json', {'videos': {
        'vid1': {'expressions': {'0': {'exp': 'the first square', 'obj_id': '1'},
                                 '1': {'exp': 'the second square', 'obj_id': '2'}},
                 'frames': ['00000', '00005']},
        'vid2': {'expressions': {'0': {'exp': 'a square', 'obj_id': '1'}}, 'frames': ['00000']}}})
    return root


@pytest.fixture
def predictions_dir(tmp_path):
    """vid1/0: frame 00000 shifted by 2 columns (J 3/7, F 0.6), frame 00005 exact (1, 1): J 5/7, F 0.8.
    vid1/1: frame 00000 missing (object present: 0, 0), frame 00005 empty (object absent: 1, 1): J 0.5, F 0.5.
    vid2/0: exact: J 1, F 1."""
    annotations = tmp_path / 'predictions' / 'Annotations'
    save_mask(annotations / 'vid1' / '0' / '00000.png', box(5, 7, 5, 5))
    save_mask(annotations / 'vid1' / '0' / '00005.png', box(5, 5, 5, 5))
    save_mask(annotations / 'vid1' / '1' / '00005.png', np.zeros((H, W), dtype=bool))
    save_mask(annotations / 'vid2' / '0' / '00000.png', box(2, 2, 6, 6, (16, 16)))
    return tmp_path / 'predictions'


def evaluate(predictions, root, videos=None):
    return evaluate_refer_youtube_vos(predictions, root / 'train' / 'Annotations',
                                      root / 'meta_expressions' / 'train' / 'meta_expressions.json',
                                      videos=videos, show_progress=False)


# ---------------------------------------------------------------- local J&F

def test_j_and_f_average_frames_then_expressions(train_root, predictions_dir):
    results = evaluate(predictions_dir, train_root, videos=['vid1'])
    assert results['per_expression']['vid1/0'] == pytest.approx({'J': 5 / 7, 'F': 0.8}, abs=1e-12)
    assert results['per_expression']['vid1/1'] == pytest.approx({'J': 0.5, 'F': 0.5}, abs=1e-12)
    assert results['J'] == pytest.approx((5 / 7 + 0.5) / 2, abs=1e-12)  # 17/28
    assert results['F'] == pytest.approx((0.8 + 0.5) / 2, abs=1e-12)  # 0.65
    assert results['J&F'] == pytest.approx((17 / 28 + 0.65) / 2, abs=1e-12)
    assert (results['num_videos'], results['num_expressions'], results['num_frames']) == (1, 2, 4)
    assert results['missing_predictions'] == ['vid1/1/00000.png']


def test_all_videos_when_no_restriction(train_root, predictions_dir):
    results = evaluate(predictions_dir, train_root)
    assert results['J'] == pytest.approx((5 / 7 + 0.5 + 1) / 3, abs=1e-12)
    assert results['F'] == pytest.approx((0.8 + 0.5 + 1) / 3, abs=1e-12)
    assert results['num_expressions'] == 3


def test_zip_round_trip_gives_the_same_scores(train_root, predictions_dir, tmp_path):
    zip_path = write_submission_zip(predictions_dir, tmp_path / 'out' / 'submission_epoch_0.zip')
    with zipfile.ZipFile(zip_path) as archive:
        assert sorted(archive.namelist()) == ['Annotations/vid1/0/00000.png', 'Annotations/vid1/0/00005.png',
                                              'Annotations/vid1/1/00005.png', 'Annotations/vid2/0/00000.png']
    from_zip = evaluate(zip_path, train_root)
    from_folder = evaluate(predictions_dir, train_root)
    assert from_zip['J&F'] == from_folder['J&F'] and from_zip['per_expression'] == from_folder['per_expression']
    assert from_zip['missing_predictions'] == ['vid1/1/00000.png']
    # The Annotations folder itself is accepted too.
    assert evaluate(predictions_dir / 'Annotations', train_root)['J&F'] == from_folder['J&F']


def test_command_line_prints_and_saves_beside_the_predictions(train_root, predictions_dir, capsys):
    assert evaluate_main([str(predictions_dir), '--annotations-dir', str(train_root / 'train' / 'Annotations'),
                          '--meta', str(train_root / 'meta_expressions' / 'train' / 'meta_expressions.json'),
                          '--videos', 'vid1', '--no-progress']) == 0
    printed = capsys.readouterr().out
    assert f'J&F {100 * (17 / 28 + 0.65) / 2:.2f}' in printed
    assert '1 prediction files missing' in printed and 'vid1/1/00000.png' in printed
    saved = json.loads((predictions_dir.parent / 'predictions_jf.json').read_text())
    assert saved['missing_predictions'] == ['vid1/1/00000.png']
    assert saved['F'] == pytest.approx(0.65, abs=1e-12)


def test_command_line_with_dataset_root_videos_file_and_output(train_root, predictions_dir, tmp_path):
    videos_file = tmp_path / 'videos.txt'
    videos_file.write_text('vid2\n')
    output = tmp_path / 'results' / 'jf.json'
    evaluate_main([str(predictions_dir), '--dataset-root', str(train_root), '--videos-file', str(videos_file),
                   '--output', str(output), '--no-progress'])
    saved = json.loads(output.read_text())
    assert (saved['J'], saved['F'], saved['J&F']) == (1.0, 1.0, 1.0)
    assert saved['missing_predictions'] == []


def test_missing_ground_truth_folder_and_meta_file_are_named(train_root, predictions_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match=r'nowhere.*train/Annotations/<video>/<frame>\.png'):
        evaluate_refer_youtube_vos(predictions_dir, tmp_path / 'nowhere',
                                   train_root / 'meta_expressions' / 'train' / 'meta_expressions.json')
    with pytest.raises(FileNotFoundError, match=r'missing\.json.*meta_expressions'):
        evaluate_refer_youtube_vos(predictions_dir, train_root / 'train' / 'Annotations', tmp_path / 'missing.json')


def test_meta_without_obj_id_and_unknown_videos_are_refused(train_root, predictions_dir, tmp_path):
    valid_meta = tmp_path / 'valid_meta.json'
    write_json(valid_meta, {'videos': {'vid1': {'expressions': {'0': {'exp': 'x'}}, 'frames': ['00000']}}})
    with pytest.raises(ValueError, match='obj_id'):
        evaluate_refer_youtube_vos(predictions_dir, train_root / 'train' / 'Annotations', valid_meta,
                                   show_progress=False)
    with pytest.raises(ValueError, match='vid9'):
        evaluate(predictions_dir, train_root, videos=['vid9'])


def test_prediction_of_the_wrong_size_is_named(train_root, tmp_path):
    save_mask(tmp_path / 'p' / 'Annotations' / 'vid2' / '0' / '00000.png', np.zeros((16, 17), dtype=bool))
    with pytest.raises(ValueError, match=r'vid2/0/00000\.png is 16x17'):
        evaluate(tmp_path / 'p', train_root, videos=['vid2'])


# ---------------------------------------------------------------- the tool's old name, its inputs and output

def tool_args(train_root, predictions_dir, *more):
    return [str(predictions_dir), '--dataset-root', str(train_root), '--no-progress', *map(str, more)]


def last_line_error(code, capsys):
    """The `error: ...` line, asserting exit status 2 and that it is the last line of stderr and the only one."""
    err = capsys.readouterr().err
    assert code == 2 and err.count('\n') == 1 and err.startswith('error: '), err
    return err.strip()


def test_the_old_name_says_so_and_runs_the_new_tool(train_root, predictions_dir, tmp_path, capsys):
    from tools.evaluate_refer_youtube_vos import main as old_main
    assert evaluate_main(tool_args(train_root, predictions_dir, '--output', tmp_path / 'new.json')) == 0
    new_out = capsys.readouterr().out
    assert old_main(tool_args(train_root, predictions_dir, '--output', tmp_path / 'old.json')) == 0
    old_out, old_err = capsys.readouterr()
    assert old_err == ('note: tools/evaluate_refer_youtube_vos.py is now tools/evaluate_jf.py; the old name goes in '
                       'the next release\n')
    assert old_out.replace('old.json', 'new.json') == new_out
    assert (tmp_path / 'old.json').read_text() == (tmp_path / 'new.json').read_text()


@pytest.mark.slow
def test_the_old_command_as_a_user_runs_it(train_root, predictions_dir, tmp_path):
    result = subprocess.run([sys.executable, 'tools/evaluate_refer_youtube_vos.py',
                             *tool_args(train_root, predictions_dir, '--output', tmp_path / 'jf.json')],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0 and result.stderr.startswith('note: tools/evaluate_refer_youtube_vos.py is now '
                                                               'tools/evaluate_jf.py'), result.stderr
    assert json.loads((tmp_path / 'jf.json').read_text())['J'] == pytest.approx((5 / 7 + 0.5 + 1) / 3, abs=1e-12)


def test_a_videos_file_that_is_not_utf8_is_named(train_root, predictions_dir, tmp_path, capsys):
    videos_file = tmp_path / 'videos.txt'
    videos_file.write_bytes(b'vid1\nvid\xe92\n')
    code = evaluate_main(tool_args(train_root, predictions_dir, '--videos-file', videos_file))
    assert last_line_error(code, capsys).startswith(f'error: {videos_file}, line 2: not UTF-8 text')


def test_a_repeated_expression_in_the_meta_file_is_named(train_root, predictions_dir, capsys):
    meta = train_root / 'meta_expressions' / 'train' / 'meta_expressions.json'
    repeated = '{"0": {"exp": "a square", "obj_id": "1"}, "0": {"exp": "x", "obj_id": "1"}}'
    meta.write_text(meta.read_text().replace('{"0": {"exp": "a square", "obj_id": "1"}}', repeated))
    code = evaluate_main(tool_args(train_root, predictions_dir))
    assert last_line_error(code, capsys).startswith(f'error: {meta}: expression 0 of video vid2 is listed twice')


def test_an_output_below_a_file_is_refused_before_scoring(train_root, predictions_dir, tmp_path, capsys):
    a_file = tmp_path / 'a_file'
    a_file.write_text('')
    code = evaluate_main(tool_args(train_root, predictions_dir, '--output', a_file / 'jf.json'))
    out = capsys.readouterr()
    assert code == 2 and out.out == ''  # nothing scored
    assert out.err == f'error: cannot write the results file {a_file / "jf.json"}: {a_file} is a file, not a folder\n'


def test_a_full_disk_under_the_output_keeps_the_earlier_results(train_root, predictions_dir, tmp_path, capsys):
    with small_tmpfs(tmp_path / 'out') as out:
        output = out / 'jf.json'
        assert evaluate_main(tool_args(train_root, predictions_dir, '--output', output)) == 0
        earlier = hashlib.sha1(output.read_bytes()).hexdigest()
        capsys.readouterr()
        filler = fill_disk(out)
        code = evaluate_main(tool_args(train_root, predictions_dir, '--videos', 'vid2', '--output', output))
        captured = capsys.readouterr()
        assert code == 2 and 'J&F 100.00' in captured.out  # the scores are printed before the error
        assert captured.err == f'error: cannot write the results file {output}: No space left on device\n'
        filler.unlink()
        assert hashlib.sha1(output.read_bytes()).hexdigest() == earlier
        assert sorted(p.name for p in out.iterdir()) == ['jf.json']  # no temporary file left


def test_a_submission_zip_below_a_file_or_at_a_folder_is_refused(predictions_dir, tmp_path, capsys):
    a_file = tmp_path / 'a_file'
    a_file.write_text('')
    code = submission_main(['write', str(predictions_dir), str(a_file / 'out.zip')])
    assert last_line_error(code, capsys) == (f'error: cannot write the submission zip {a_file / "out.zip"}: {a_file} '
                                             'is a file, not a folder')
    code = submission_main(['write', str(predictions_dir), str(tmp_path)])
    assert last_line_error(code, capsys) == (f'error: cannot write the submission zip {tmp_path}: it is a folder; '
                                             'expected a file name')


# ---------------------------------------------------------------- submission zip check

@pytest.fixture
def valid_root(tmp_path):
    """A valid split: vidA (2 expressions, 2 frames of 24x20 pixels) and vidT, which the test meta also lists."""
    root = tmp_path / 'valid_root'
    for video in ('vidA', 'vidT'):
        for frame in ('00000', '00005'):
            (root / 'valid' / 'JPEGImages' / video).mkdir(parents=True, exist_ok=True)
            Image.new('RGB', (W, H)).save(root / 'valid' / 'JPEGImages' / video / f'{frame}.jpg')
    expressions = {'0': {'exp': 'a dog'}, '1': {'exp': 'a cat'}}
    write_json(root / 'meta_expressions' / 'valid' / 'meta_expressions.json', {'videos': {
        'vidA': {'expressions': expressions, 'frames': ['00000', '00005']},
        'vidT': {'expressions': {'0': {'exp': 'a bird'}}, 'frames': ['00000', '00005']}}})
    write_json(root / 'meta_expressions' / 'test' / 'meta_expressions.json', {'videos': {
        'vidT': {'expressions': {'0': {'exp': 'a bird'}}, 'frames': ['00000', '00005']}}})
    return root


def write_valid_predictions(folder, skip=(), overrides=None):
    overrides = overrides or {}
    for exp_id in ('0', '1'):
        for frame in ('00000', '00005'):
            name = f'vidA/{exp_id}/{frame}.png'
            if name in skip:
                continue
            path = folder / 'Annotations' / name
            path.parent.mkdir(parents=True, exist_ok=True)
            overrides.get(name, Image.fromarray(box(1, 1, 3, 3).astype(np.uint8) * 255)).save(path)
    return folder


def check(zip_path, root, **kwargs):
    return check_submission_zip(zip_path, root / 'meta_expressions' / 'valid' / 'meta_expressions.json',
                                show_progress=False, **kwargs)


def test_complete_submission_passes_the_check(valid_root, tmp_path):
    zip_path = write_submission_zip(write_valid_predictions(tmp_path / 'pred'), tmp_path / 'submission.zip')
    result = check(zip_path, valid_root, dataset_root=valid_root, exclude_videos={'vidT'})
    assert result.ok, result.summary()
    assert (result.num_expected, result.num_excluded_videos) == (4, 1)
    # Without leaving out the test videos, vidT's masks are missing.
    result = check(zip_path, valid_root)
    assert not result.ok
    assert result.missing == ['vidT/0/00000.png', 'vidT/0/00005.png']


def test_check_reports_missing_and_malformed_masks(valid_root, tmp_path):
    overrides = {'vidA/0/00005.png': Image.fromarray(box(1, 1, 3, 3).astype(np.uint8)),  # 0/1 values
                 'vidA/1/00000.png': Image.new('RGB', (W, H)),  # three channels
                 'vidA/1/00005.png': Image.new('L', (W + 1, H))}  # not the frame size
    folder = write_valid_predictions(tmp_path / 'pred', skip={'vidA/0/00000.png'}, overrides=overrides)
    result = check(write_submission_zip(folder, tmp_path / 'bad.zip'), valid_root, dataset_root=valid_root,
                   exclude_videos={'vidT'})
    assert not result.ok
    assert result.missing == ['vidA/0/00000.png']
    problems = '\n'.join(result.problems)
    assert len(result.problems) == 3
    assert 'vidA/0/00005.png: values [1]' in problems
    assert 'vidA/1/00000.png: 3 channels' in problems
    assert 'vidA/1/00005.png: size 25x20' in problems
    assert 'vidA/0/00000.png' in result.summary()


def test_check_reports_a_zip_without_the_annotations_folder(valid_root, tmp_path):
    zip_path = tmp_path / 'flat.zip'
    folder = write_valid_predictions(tmp_path / 'pred') / 'Annotations'
    with zipfile.ZipFile(zip_path, 'w') as archive:
        for path in sorted(folder.glob('*/*/*.png')):
            archive.write(path, path.relative_to(folder).as_posix())
    result = check(zip_path, valid_root, exclude_videos={'vidT'})
    assert not result.ok
    assert any('Annotations/' in problem for problem in result.problems)


def test_submission_command_line_writes_and_checks(valid_root, tmp_path, capsys):
    folder = write_valid_predictions(tmp_path / 'pred')
    zip_path = tmp_path / 'submission_epoch_3.zip'
    # The test meta file under the dataset root is found and its video left out.
    assert submission_main(['write', str(folder), str(zip_path), '--dataset-root', str(valid_root),
                            '--no-progress']) == 0
    assert 'OK' in capsys.readouterr().out
    with zipfile.ZipFile(zip_path) as archive:
        archive_names = archive.namelist()
    incomplete = tmp_path / 'incomplete.zip'
    with zipfile.ZipFile(zip_path) as source, zipfile.ZipFile(incomplete, 'w') as archive:
        for name in archive_names[1:]:
            archive.writestr(name, source.read(name))
    assert submission_main(['check', str(incomplete), '--meta',
                            str(valid_root / 'meta_expressions' / 'valid' / 'meta_expressions.json'),
                            '--test-meta', str(valid_root / 'meta_expressions' / 'test' / 'meta_expressions.json'),
                            '--no-progress']) == 1
    printed = capsys.readouterr().out
    assert '1 missing masks' in printed and 'vidA/0/00000.png' in printed


def test_writing_an_empty_folder_fails_clearly(tmp_path):
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match=r'no masks in .*empty'):
        write_submission_zip(tmp_path / 'empty', tmp_path / 'x.zip')
    assert not (tmp_path / 'x.zip').exists()


# ---------------------------------------------------------------- the real valid meta file

def test_real_valid_meta_file(shared_dir, tmp_path):
    meta_path = shared_dir / 'data' / 'real' / 'refer_youtube_vos' / 'meta_expressions' / 'valid' / 'meta_expressions.json'
    if not meta_path.is_file():
        pytest.skip(f'{meta_path} is absent')
    videos = read_meta_expressions(meta_path)
    assert len(videos) == 507
    assert not any('obj_id' in expression for entry in videos.values() for expression in entry['expressions'].values())
    names = expected_mask_names(videos)
    num_masks = sum(len(entry['frames']) * len(entry['expressions']) for entry in videos.values())
    assert len(names) == len(set(names)) == num_masks

    # A zip holding one video's masks: everything else is reported missing, nothing is malformed.
    video, entry = next(iter(videos.items()))
    folder = tmp_path / 'pred' / 'Annotations'
    for exp_id in entry['expressions']:
        for frame in entry['frames']:
            save_mask(folder / video / exp_id / f'{frame}.png', box(1, 1, 3, 3))
    result = check_submission_zip(write_submission_zip(folder.parent, tmp_path / 'one_video.zip'), meta_path,
                                  show_progress=False)
    assert result.problems == []
    assert len(result.missing) == num_masks - len(entry['frames']) * len(entry['expressions'])
    assert not any(name.startswith(f'{video}/') for name in result.missing)

"""tools/evaluate_jf.py on MeViS (valid_u ground truth from mask_dict.json) and Ref-DAVIS17 (label
maps under the DAVIS-2017 unsupervised protocol) predictions, on the fake sets of `fake_benchmarks`: its scores,
incomplete predictions scored as the official scorers score them, and its one-line errors for missing or
malformed inputs. Also the values the benchmark tools (tools/benchmark.py, tools/benchmark_data.py,
tools/make_synthetic_dataset.py) refuse.
"""
import json
import re
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest
from PIL import Image

from datasets.files import SubsetWarning
from datasets.ref_davis17 import read_label_maps, write_label_maps
from tests.fake_benchmarks import (aligned_mask, make_mevis_dataset, make_ref_davis17_dataset, mevis_target,
                                   write_mevis_split)
from tests.fake_datasets import rectangle_mask
from tests.helpers import REPO
from tools.evaluate_jf import main as evaluate_main


@pytest.fixture(autouse=True)
def no_row_count_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', SubsetWarning)
        yield


def run(args, capsys):
    code = evaluate_main([str(a) for a in args] + ['--no-progress'])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *parts):
    assert code == 2 and err.startswith('error: ') and err.strip().count('\n') == 0, err
    for part in parts:
        assert str(part) in err, (part, err)


# ---------------------------------------------------------------- MeViS

@pytest.fixture
def mevis_case(shared_dir, tmp_path):
    """valid_u predictions: every expression's target, except expression 1 of the first video, which predicts
    nothing (its object is in frames 0 and 1 of 4: J = F = 1/2). Over the 6 expressions: J = F = 11/12."""
    info = make_mevis_dataset(tmp_path / 'mevis', shared_dir, frames={'valid_u': 4}, mask=aligned_mask)
    predictions = tmp_path / 'predictions'
    first = next(iter(info.videos['valid_u']))
    for video, entry in info.videos['valid_u'].items():
        for exp_id in entry['expressions']:
            target = mevis_target(info, 'valid_u', video, exp_id)
            if (video, exp_id) == (first, '1'):
                target[:] = False
            for frame, mask in zip(entry['frames'], target):
                path = predictions / video / exp_id / f'{frame}.png'
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    return info, predictions, first


def test_mevis_scores_from_a_folder_and_from_the_server_zip(mevis_case, tmp_path, capsys):
    info, predictions, first = mevis_case
    code, out, _ = run([predictions, '--benchmark', 'mevis', '--dataset-root', info.root], capsys)
    assert code == 0 and f'J&F {100 * 11 / 12:.2f}   J {100 * 11 / 12:.2f}' in out
    assert 'MeViS, DAVIS-2017 measures: 2 videos, 6 expressions, 24 frames' in out
    saved = json.loads((tmp_path / 'predictions_jf.json').read_text())
    assert saved['per_expression'][f'{first}_1'] == {'J': 0.5, 'F': 0.5}
    assert saved['J&F'] == pytest.approx(11 / 12, abs=1e-12) and saved['missing_predictions'] == []

    zip_path = tmp_path / 'submission.zip'  # video folders at the root, as the server takes them
    with zipfile.ZipFile(zip_path, 'w') as archive:
        for path in sorted(predictions.rglob('*.png')):
            archive.write(path, path.relative_to(predictions).as_posix())
    code, out, _ = run([zip_path, '--benchmark', 'mevis', '--meta', info.root / 'valid_u' / 'meta_expressions.json',
                        '--mask-dict', info.root / 'valid_u' / 'mask_dict.json'], capsys)
    assert code == 0 and 'missing' not in out
    from_zip = json.loads((tmp_path / 'submission_jf.json').read_text())
    assert from_zip['per_expression'] == saved['per_expression'] and from_zip['J&F'] == saved['J&F']


def test_mevis_bad_inputs_are_one_line_errors(mevis_case, tmp_path, capsys):
    info, predictions, first = mevis_case
    args = ['--benchmark', 'mevis', '--dataset-root', info.root]
    victim = predictions / first / '0' / '00001.png'
    original = victim.read_bytes()
    victim.write_bytes(original[:40])  # truncated
    assert_one_line_error(*run([predictions, *args], capsys)[::2], victim, 'not a readable PNG')
    Image.new('RGB', (96, 64)).save(victim)
    assert_one_line_error(*run([predictions, *args], capsys)[::2], f'{first}/0/00001.png', 'single-channel')
    Image.new('L', (90, 64)).save(victim)
    assert_one_line_error(*run([predictions, *args], capsys)[::2], f'{first}/0/00001.png', 'is 64x90')
    victim.write_bytes(original)
    assert_one_line_error(*run([tmp_path / 'nowhere', *args], capsys)[::2], tmp_path / 'nowhere')
    (info.root / 'valid_u' / 'mask_dict.json').unlink()
    assert_one_line_error(*run([predictions, *args], capsys)[::2], info.root / 'valid_u' / 'mask_dict.json')
    (info.root / 'valid_u' / 'mask_dict.json').write_text('{"100": [')
    assert_one_line_error(*run([predictions, *args], capsys)[::2], 'mask_dict.json', 'expected JSON')


# ---------------------------------------------------------------- MeViS: incomplete predictions

@pytest.fixture
def missing_video_case(tmp_path):
    """valid_u, two videos of 4 frames. vidA: expression 0 refers to object 1 (every frame), 1 to object 2 (frames 0
    and 1). vidB: 0 to object 3 (every frame), 1 to object 4 (frame 0), 2 to nothing (a no-target expression).
    The predictions hold vidA's targets exactly and no vidB folder at all."""
    frames = ['00000', '00001', '00002', '00003']

    def visible(slot, positions):
        return [rectangle_mask(t, slot) if t in positions else None for t in range(4)]
    videos = {'vidA': {'frames': frames, 'objects': {1: visible(0, range(4)), 2: visible(1, [0, 1])},
                       'expressions': {'0': ('the first box', [1]), '1': ('the box that leaves', [2])}},
              'vidB': {'frames': frames, 'objects': {3: visible(2, range(4)), 4: visible(3, [0])},
                       'expressions': {'0': ('the third box', [3]), '1': ('the box seen once', [4]),
                                       '2': ('a box that is not there', [])}}}
    root = tmp_path / 'mevis'
    write_mevis_split(root, 'valid_u', videos)
    predictions = tmp_path / 'predictions'
    for exp_id, (_, anno_ids) in videos['vidA']['expressions'].items():
        for t, frame in enumerate(frames):
            target = np.zeros((64, 96), dtype=bool)
            for anno_id in anno_ids:
                if videos['vidA']['objects'][anno_id][t] is not None:
                    target |= videos['vidA']['objects'][anno_id][t]
            path = predictions / 'vidA' / exp_id / f'{frame}.png'
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(target.astype(np.uint8) * 255).save(path)
    return root, predictions


def test_a_missing_mevis_video_scores_zero_per_expression_as_eval_mevis(missing_video_case, tmp_path, capsys):
    # MeViS's eval_mevis.py gives each expression of a video whose folder is missing J = F = 0. vidA's two exact
    # expressions score 1 and vidB's three 0: J = F = J&F = 2/5. (Scoring vidB's missing files as empty masks, as
    # the tool did, gave 3/4 to vidB's expression 1, whose target is empty in 3 of its 4 frames, and 1 to the
    # no-target expression 2: (1 + 1 + 0 + 3/4 + 1) / 5 = 0.75.)
    root, predictions = missing_video_case
    expected = (1 + 1 + 0 + 0 + 0) / 5
    code, out, _ = run([predictions, '--benchmark', 'mevis', '--dataset-root', root], capsys)
    assert code == 0, out
    assert f'J&F {100 * expected:.2f}   J {100 * expected:.2f}   F {100 * expected:.2f}' in out
    assert '1 video(s) missing from the predictions (12 files): each of their expressions scores J = F = 0' in out
    assert out.splitlines()[-2] == '  vidB'
    saved = json.loads((tmp_path / 'predictions_jf.json').read_text())
    assert saved['J&F'] == pytest.approx(expected, abs=1e-12) and saved['missing_videos'] == ['vidB']
    assert saved['per_expression'] == {'vidA_0': {'J': 1.0, 'F': 1.0}, 'vidA_1': {'J': 1.0, 'F': 1.0},
                                       'vidB_0': {'J': 0.0, 'F': 0.0}, 'vidB_1': {'J': 0.0, 'F': 0.0},
                                       'vidB_2': {'J': 0.0, 'F': 0.0}}
    assert len(saved['missing_predictions']) == 12 and saved['missing_predictions'][0] == 'vidB/0/00000.png'

    zip_path = tmp_path / 'server.zip'  # the same predictions as the server takes them
    with zipfile.ZipFile(zip_path, 'w') as archive:
        for path in sorted(predictions.rglob('*.png')):
            archive.write(path, path.relative_to(predictions).as_posix())
    assert run([zip_path, '--benchmark', 'mevis', '--dataset-root', root], capsys)[0] == 0
    assert json.loads((tmp_path / 'server_jf.json').read_text())['per_expression'] == saved['per_expression']


def test_a_missing_mevis_expression_or_frame_is_an_error_naming_it(missing_video_case, capsys):
    # eval_mevis.py fails on an expression whose folder or frame is missing in a video that is there (it reads
    # None for the PNG); the tool says which files are missing instead of scoring them.
    root, predictions = missing_video_case
    args = [predictions, '--benchmark', 'mevis', '--dataset-root', root]
    (predictions / 'vidB').mkdir()  # an empty video folder is a video that is there
    assert_one_line_error(*run(args, capsys)[::2], '12 prediction files missing from video folders that are there',
                          'e.g. vidB/0/00000.png, vidB/0/00001.png, vidB/0/00002.png', 'eval_mevis.py')
    (predictions / 'vidB').rmdir()
    (predictions / 'vidA' / '0' / '00002.png').unlink()
    assert_one_line_error(*run(args, capsys)[::2], '1 prediction files missing', 'e.g. vidA/0/00002.png;')
    for path in (predictions / 'vidA' / '1').iterdir():
        path.unlink()
    (predictions / 'vidA' / '1').rmdir()
    assert_one_line_error(*run(args, capsys)[::2], '5 prediction files missing', 'vidA/0/00002.png, vidA/1/00000.png')


# ---------------------------------------------------------------- Ref-DAVIS17

@pytest.fixture
def davis_case(shared_dir, tmp_path):
    """Label maps equal to the ground truth (void as background) for the four sets; in set 2, judo's objects
    1 and 2 swapped (still 1.0 under the id matching)."""
    info = make_ref_davis17_dataset(tmp_path / 'ref_davis17', shared_dir, num_frames=3)
    predictions = tmp_path / 'run' / 'ref_davis17' / 'epoch_0'
    for video, entry in info.videos['val'].items():
        frames, gt = read_label_maps(info.root / 'DAVIS' / 'Annotations_unsupervised' / '480p' / video)
        maps = np.where(gt == 255, 0, gt).astype(np.uint8)
        for expression_set in range(4):
            swapped = expression_set == 2 and video == 'judo'
            write_label_maps(predictions, expression_set, video, np.choose(maps, [0, 2, 1]).astype(np.uint8)
                             if swapped else maps, frames)
    return info, predictions


def test_ref_davis17_scores_the_four_sets_and_their_mean(davis_case, capsys):
    info, predictions = davis_case
    code, out, _ = run([predictions, '--benchmark', 'ref_davis17', '--dataset-root', info.root], capsys)
    assert code == 0, out
    assert 'Ref-DAVIS17, DAVIS-2017 unsupervised protocol: 2 videos, 5 objects' in out
    assert re.search(r'mean \(the reported number\) +100\.00 +100\.00 +100\.00', out), out
    saved = json.loads((predictions.parent / 'epoch_0_jf.json').read_text())
    assert saved['per_set']['anno_2'] == {'J': 1.0, 'F': 1.0, 'J&F': 1.0}
    assert saved['per_video']['judo']['anno_2'] == {'J': [1.0, 1.0], 'F': [1.0, 1.0]}


def test_ref_davis17_sets_and_videos_of_the_predictions(davis_case, tmp_path, capsys):
    # Only anno_0 of one video, the ground truth given by folder: scored, but not "the reported number".
    info, predictions = davis_case
    only = tmp_path / 'only'
    (only / 'anno_0').mkdir(parents=True)
    (predictions / 'anno_0' / 'judo').rename(only / 'anno_0' / 'judo')
    code, out, _ = run([only, '--benchmark', 'ref_davis17', '--annotations-dir',
                        info.root / 'DAVIS' / 'Annotations_unsupervised' / '480p'], capsys)
    assert code == 0 and '1 videos, 2 objects' in out and 'mean of 1 sets (not the reported number)' in out


def test_ref_davis17_bad_inputs_are_one_line_errors(davis_case, tmp_path, capsys):
    info, predictions = davis_case
    args = ['--benchmark', 'ref_davis17', '--dataset-root', info.root]
    victim = predictions / 'anno_1' / 'judo' / '00002.png'
    original = victim.read_bytes()
    victim.write_bytes(original[:30])
    assert_one_line_error(*run([predictions, *args], capsys)[::2], victim, 'cannot read')
    Image.new('RGB', (96, 64)).save(victim)
    assert_one_line_error(*run([predictions, *args], capsys)[::2], victim, 'mode RGB')
    Image.new('P', (96, 60)).save(victim)
    assert_one_line_error(*run([predictions, *args], capsys)[::2], victim, '60x96 (HxW)')
    victim.unlink()
    assert_one_line_error(*run([predictions, *args], capsys)[::2], victim, 'not found')
    assert_one_line_error(*run([tmp_path / 'nowhere', *args], capsys)[::2], tmp_path / 'nowhere')
    # a missing part of the dataset: the expected layout first, the one-line error last
    code, _, err = run([predictions, '--benchmark', 'ref_davis17', '--dataset-root', tmp_path], capsys)
    val = tmp_path / 'DAVIS' / 'ImageSets' / '2017' / 'val.txt'
    assert code == 2 and err.startswith('expected layout:\n<dataset_path>/\n├── DAVIS/') and 'Traceback' not in err
    assert err.strip().splitlines()[-1] == \
        f'error: val video list not found: {val} (the expected layout is printed above)'


@pytest.mark.slow
def test_an_error_as_a_user_sees_it(davis_case):
    _, predictions = davis_case
    victim = predictions / 'anno_0' / 'dogs-jump' / '00000.png'
    victim.write_bytes(b'not a png')
    result = subprocess.run([sys.executable, str(REPO / 'tools' / 'evaluate_jf.py'), str(predictions),
                             '--benchmark', 'ref_davis17', '--annotations-dir',
                             str(davis_case[0].root / 'DAVIS' / 'Annotations_unsupervised' / '480p'), '--no-progress'],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f'error: cannot read the mask {victim}')


# ---------------------------------------------------------------- the benchmark tools' values

def assert_usage_error(code, capsys, message):
    """Exit status 2, and the error alone on stderr in one line, as main.py gives it."""
    err = capsys.readouterr().err
    assert code == 2 and err == f'error: {message}\n', err


@pytest.mark.parametrize('flag, value', [('--repeats', 0), ('--threads', 0), ('--threads', -2)])
def test_benchmark_counts_must_be_positive(flag, value, capsys):
    from tools.benchmark import main as benchmark_main
    code = benchmark_main(['--cases', 'eval', flag, str(value)])  # (stops before any case starts)
    assert_usage_error(code, capsys, f'{flag} must be at least 1, got {value}')


def test_benchmark_json_below_a_file_is_refused_before_the_cases_run(tmp_path, capsys):
    from tools.benchmark import main as benchmark_main
    a_file = tmp_path / 'a_file'
    a_file.write_text('')
    code = benchmark_main(['--cases', 'eval', '--json', str(a_file / 'results.json')])
    assert_usage_error(code, capsys, f'cannot write the results file {a_file / "results.json"}: {a_file} is a file, '
                                     'not a folder')


@pytest.mark.parametrize('flag', ['--window-size', '--repeats'])
def test_benchmark_data_counts_must_be_positive(flag, capsys):
    from tools.benchmark_data import main as benchmark_data_main
    assert_usage_error(benchmark_data_main([flag, '-1']), capsys, f'{flag} must be at least 1, got -1')


@pytest.mark.parametrize('args, message', [
    (['--train-videos', '0'], '--train-videos must be at least 1, got 0'),
    (['--test-videos', '-3'], '--test-videos must be at least 1, got -3'),
    (['--seed', '-1'], '--seed must be 0 or more, got -1'),
    (['--crossing-rate', '1.5'], '--crossing-rate must lie in 0..1, got 1.5'),
    (['--absent-expression-rate', '-0.1'], '--absent-expression-rate must lie in 0..1, got -0.1'),
])
def test_make_synthetic_dataset_counts_must_be_positive(tmp_path, capsys, args, message):
    from tools.make_synthetic_dataset import main as make_main
    assert_usage_error(make_main([str(tmp_path / 'out'), *args]), capsys, message)
    assert not (tmp_path / 'out').exists()


def test_make_synthetic_dataset_output_below_a_file_or_existing_is_refused(tmp_path, capsys):
    from tools.make_synthetic_dataset import main as make_main
    a_file = tmp_path / 'a_file'
    a_file.write_text('')
    assert_usage_error(make_main([str(a_file / 'out')]), capsys,
                       f'output directory {a_file / "out"}: {a_file} is a file, not a directory')
    assert_usage_error(make_main([str(a_file)]), capsys,
                       f'output directory {a_file} is a file; expected a directory (it is created if missing)')
    (tmp_path / 'taken').mkdir()
    assert_usage_error(make_main([str(tmp_path / 'taken')]), capsys,
                       f'output directory {tmp_path / "taken"} exists; give a new directory')

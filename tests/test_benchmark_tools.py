"""tools/evaluate_refer_youtube_vos.py on MeViS (valid_u ground truth from mask_dict.json) and Ref-DAVIS17 (label
maps under the DAVIS-2017 unsupervised protocol) predictions, on the fake sets of `fake_benchmarks`; and its
one-line errors for missing or malformed inputs.
"""
import json
import re
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets.files import SubsetWarning
from datasets.ref_davis17 import read_label_maps, write_label_maps
from tests.fake_benchmarks import aligned_mask, make_mevis_dataset, make_ref_davis17_dataset, mevis_target
from tools.evaluate_refer_youtube_vos import main as evaluate_main

REPO = Path(__file__).resolve().parents[1]


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
            if path.relative_to(predictions).as_posix() != f'{first}/0/00003.png':
                archive.write(path, path.relative_to(predictions).as_posix())
    code, out, _ = run([zip_path, '--benchmark', 'mevis', '--meta', info.root / 'valid_u' / 'meta_expressions.json',
                        '--mask-dict', info.root / 'valid_u' / 'mask_dict.json'], capsys)
    assert code == 0 and '1 prediction files missing' in out and f'{first}/0/00003.png' in out
    saved = json.loads((tmp_path / 'submission_jf.json').read_text())
    assert saved['per_expression'][f'{first}_0'] == {'J': 0.75, 'F': 0.75}  # the missing frame scores 0


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
    assert_one_line_error(*run([predictions, '--benchmark', 'ref_davis17', '--dataset-root', tmp_path], capsys)[::2],
                          'val.txt')


@pytest.mark.slow
def test_an_error_as_a_user_sees_it(davis_case):
    _, predictions = davis_case
    victim = predictions / 'anno_0' / 'dogs-jump' / '00000.png'
    victim.write_bytes(b'not a png')
    result = subprocess.run([sys.executable, str(REPO / 'tools' / 'evaluate_refer_youtube_vos.py'), str(predictions),
                             '--benchmark', 'ref_davis17', '--annotations-dir',
                             str(davis_case[0].root / 'DAVIS' / 'Annotations_unsupervised' / '480p'), '--no-progress'],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f'error: cannot read the mask {victim}')

"""MeViS train -> valid_u evaluation -> valid submission, and the Ref-DAVIS17 evaluation, through main.py as a user
runs them, on the fake sets of `fake_benchmarks` (real video ids, frame names and expressions) with the tiny model
of test_main (`helpers.TINY_TRAINING_MODEL`). One MeViS-trained checkpoint serves every evaluation (Ref-DAVIS17
takes any checkpoint of this architecture; users evaluate the Refer-YouTube-VOS one).
"""
import warnings

import pytest
import torch

import main
from datasets.files import SubsetWarning
from datasets.mevis import check_submission_zip
from tests.fake_benchmarks import make_mevis_dataset, make_ref_davis17_dataset
from tests.helpers import (DAVIS_CONFIG, MEVIS_CONFIG, SMALL_DATA, TINY_TRAINING_MODEL, config_overrides, read_json,
                           run_main, set_flags, write_tiny_text_encoder)
from tools.evaluate_jf import evaluate_mevis, evaluate_ref_davis17


@pytest.fixture(scope='module')
def setup(tmp_path_factory, shared_dir):
    root = tmp_path_factory.mktemp('benchmarks')
    values = dict(TINY_TRAINING_MODEL, **SMALL_DATA, cache_dir=str(root / 'cache'), epochs=1,
                  text_encoder_type=str(write_tiny_text_encoder(root / 'text_encoder')))
    return root, config_overrides(values), make_mevis_dataset(root / 'mevis', shared_dir), \
        make_ref_davis17_dataset(root / 'ref_davis17', shared_dir)


def mevis_flags(setup, **more):
    _, overrides, mevis, _ = setup
    return ['-ws', 3, '-bs', 1, '--cpu', *set_flags(overrides, dataset_path=mevis.root, **more)]


@pytest.fixture(scope='module')
def mevis_run(setup):
    root = setup[0]
    result = run_main('-rm', 'train', '-c', MEVIS_CONFIG, '--output_dir', root / 'mevis_run', *mevis_flags(setup))
    return root / 'mevis_run', result


@pytest.mark.slow
def test_mevis_train_then_valid_u_then_valid_zip(mevis_run, setup, tmp_path):
    run_dir, result = mevis_run
    _, _, mevis, _ = setup
    assert 'MeViS train: 10 windows; 2 windows in which the referred objects are absent' in result.stdout
    trained = read_json(run_dir / 'metrics_epoch_0.json')
    assert 0 <= trained['J&F'] <= 1 and trained['expressions'] == 6
    checkpoint = run_dir / 'checkpoints' / 'best.pth.tar'
    assert torch.load(checkpoint, weights_only=True)['best_score'] == pytest.approx(trained['J&F'])

    # valid_u: the same numbers as after training, and as the local J&F tool gives on the written masks
    run_main('-rm', 'eval', '-c', MEVIS_CONFIG, '-ckpt', checkpoint, '--output_dir', tmp_path / 'valid_u',
             *mevis_flags(setup))
    evaluated = read_json(tmp_path / 'valid_u' / 'metrics_epoch_0.json')
    assert {k: v for k, v in evaluated.items() if k != 'predictions'} == \
        {k: v for k, v in trained.items() if k != 'predictions'}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', SubsetWarning)
        tool = evaluate_mevis(evaluated['predictions'], mevis.root / 'valid_u' / 'meta_expressions.json',
                              mevis.root / 'valid_u' / 'mask_dict.json', show_progress=False)
    assert tool['J&F'] == pytest.approx(evaluated['J&F'], abs=1e-12) and not tool['missing_predictions']

    # valid: the server's zip, every mask checked against the frames
    result = run_main('-rm', 'eval', '-c', MEVIS_CONFIG, '-ckpt', checkpoint, '--output_dir', tmp_path / 'valid',
                      *mevis_flags(setup, mevis_eval_split='valid'))
    metrics = read_json(tmp_path / 'valid' / 'metrics_epoch_0.json')
    assert metrics['submission_check'] == 'OK' and metrics['expressions'] == 6
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', SubsetWarning)
        check = check_submission_zip(metrics['submission_zip'], mevis.root / 'valid' / 'meta_expressions.json',
                                     dataset_root=mevis.root, show_progress=False)
    assert check.ok and check.num_expected == 18 and not check.unexpected, check.summary()


@pytest.mark.slow
def test_ref_davis17_evaluation_on_two_processes(mevis_run, setup, tmp_path, capsys):
    _, overrides, _, davis = setup
    checkpoint = mevis_run[0] / 'checkpoints' / 'best.pth.tar'
    result = run_main('-rm', 'eval', '-c', DAVIS_CONFIG, '-ckpt', checkpoint, '--output_dir', tmp_path / 'eval',
                      '-ng', 2, '--cpu', *set_flags(overrides, dataset_path=davis.root))
    assert 'mean (the reported number)' in result.stdout and '2 videos, 5 objects' in result.stdout
    metrics = read_json(tmp_path / 'eval' / 'metrics_epoch_0.json')
    label_maps = tmp_path / 'eval' / 'ref_davis17' / 'epoch_0'
    assert metrics['label_maps'] == str(label_maps) and (metrics['videos'], metrics['objects']) == (2, 5)
    assert sorted(p.relative_to(label_maps).as_posix() for p in label_maps.rglob('*.png')) == sorted(
        f'anno_{a}/{video}/{frame}.png' for a in range(4) for video, entry in davis.videos['val'].items()
        for frame in entry['frames'])
    # the scores the two processes computed and gathered are those of one pass over the label maps
    tool = evaluate_ref_davis17(label_maps, davis.root / 'DAVIS' / 'Annotations_unsupervised' / '480p',
                                show_progress=False)
    assert tool['J&F'] == pytest.approx(metrics['J&F'], abs=1e-12)
    for a in range(4):
        assert tool['per_set'][f'anno_{a}']['J'] == pytest.approx(metrics[f'anno_{a} J'], abs=1e-12)
    # evaluation only
    assert main.main(list(map(str, ['-rm', 'train', '-c', DAVIS_CONFIG, '--cpu', '--output_dir', tmp_path / 'train',
                                    *set_flags(overrides, dataset_path=davis.root)]))) == 2
    assert 'ref_davis17 has no \'train\' split' in capsys.readouterr().err

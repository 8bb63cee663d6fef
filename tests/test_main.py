"""main.py and trainer.py as a user runs them: train, evaluate, resume, several processes, signals, errors.

Every run uses a tiny MTTR (`helpers.TINY_TRAINING_MODEL`: small Swin, 1-layer RoBERTa built from a config with a
tokenizer the test writes, 4 object queries) on the fake A2D-Sentences dataset of `fake_datasets` (the `a2d_setup`
fixture), on the CPU with `num_workers: 0`, so results are reproducible.
"""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

import main
import trainer
from config import load_config
from datasets.submission import check_submission_zip
from engine.launch import free_port
from engine.loaders import ResumableDistributedSampler, ShardSampler, make_loader
from engine.stopping import StopRequest
from tests.fake_datasets import make_ref_youtube_vos_dataset
from tests.helpers import (A2D_CONFIG, JHMDB_CONFIG, REPO, YTVOS_CONFIG, eval_args, load, read_json, run_main,
                           set_flags, start_long_training, train_args)

ORIGINAL_CHECKPOINT_KEYS = {'epoch', 'total_epochs', 'model_state_dict', 'optimizer_state_dict',
                            'scheduler_state_dict', 'grad_scaler_state_dict', 'best_mAP'}


@pytest.fixture(scope='module')
def trained_run(a2d_setup):
    root, _ = a2d_setup
    run_dir = root / 'run_2_epochs'
    run_main(*train_args(a2d_setup, run_dir))
    return run_dir


@pytest.mark.slow
def test_training_run_directory(trained_run, a2d_setup):
    names = {p.relative_to(trained_run).as_posix() for p in trained_run.rglob('*')}
    assert {'config.yaml', 'log.txt', 'metrics.jsonl', 'metrics_epoch_0.json', 'metrics_epoch_1.json',
            'checkpoints/0.pth.tar', 'checkpoints/1.pth.tar', 'checkpoints/last.pth.tar',
            'checkpoints/best.pth.tar'} <= names
    lines = [json.loads(line) for line in (trained_run / 'metrics.jsonl').read_text().splitlines()]
    assert [line['epoch'] for line in lines] == [0, 1]
    assert all('mAP 0.5:0.95' in line['metrics'] and 'loss_dice' in line['train_losses'] for line in lines)
    assert 'epoch 1 evaluation' in (trained_run / 'log.txt').read_text()
    pictures = sorted((trained_run / 'pictures' / 'epoch_1').glob('*.png'))
    assert len(pictures) == 3  # eval_pictures is 4, the test split has 3 samples
    assert Image.open(pictures[0]).size == (2 * 96 * 4, 64 * 4)  # two panels, enlarged to >= 240 px high

    config = load_config(trained_run / 'config.yaml', [])
    assert (config.epochs, config.window_size, config.batch_size, config.d_model) == (2, 3, 2, 64)

    checkpoint = load(trained_run / 'checkpoints' / '1.pth.tar')
    assert ORIGINAL_CHECKPOINT_KEYS <= set(checkpoint)
    recorded = read_json(trained_run / 'provenance.json')
    assert checkpoint['provenance'] == recorded and recorded['torch'] == str(torch.__version__)
    assert recorded['command'].split()[1:4] == [str(REPO / 'main.py'), '-rm', 'train']
    log = (trained_run / 'log.txt').read_text()
    assert 'code: ' in log and recorded['command'] in log
    assert (checkpoint['epoch'], checkpoint['total_epochs']) == (1, 2)
    assert torch.equal(load(trained_run / 'checkpoints' / 'last.pth.tar')['model_state_dict']['is_referred_head.weight'],
                       checkpoint['model_state_dict']['is_referred_head.weight'])


@pytest.mark.slow
def test_evaluating_a_checkpoint_gives_the_metrics_of_its_epoch(trained_run, a2d_setup, tmp_path):
    best = trained_run / 'checkpoints' / 'best.pth.tar'
    epoch = load(best)['epoch']  # whichever epoch scored best
    result = run_main(*eval_args(a2d_setup, tmp_path / 'eval', best))
    assert 'mAP 0.5:0.95' in result.stdout
    evaluated = read_json(tmp_path / 'eval' / f'metrics_epoch_{epoch}.json')
    assert evaluated == read_json(trained_run / f'metrics_epoch_{epoch}.json')
    assert evaluated['overall_iou'] > 0  # not an all-zero comparison
    assert not (tmp_path / 'eval' / 'checkpoints').exists()


@pytest.mark.slow
def test_two_process_evaluation_equals_one_process(trained_run, a2d_setup, tmp_path):
    run_main(*eval_args(a2d_setup, tmp_path / 'eval', trained_run / 'checkpoints' / '0.pth.tar', '-ng', 2))
    assert read_json(tmp_path / 'eval' / 'metrics_epoch_0.json') == read_json(trained_run / 'metrics_epoch_0.json')


@pytest.mark.slow
def test_bfloat16_evaluation_is_close_to_fp32(trained_run, a2d_setup, tmp_path):
    checkpoint = trained_run / 'checkpoints' / '0.pth.tar'
    run_main(*eval_args(a2d_setup, tmp_path / 'eval', checkpoint, '--set', 'amp_dtype=bfloat16'))
    bfloat16 = read_json(tmp_path / 'eval' / 'metrics_epoch_0.json')
    fp32 = read_json(trained_run / 'metrics_epoch_0.json')
    assert bfloat16.keys() == fp32.keys()
    assert bfloat16['overall_iou'] == pytest.approx(fp32['overall_iou'], abs=0.02)


@pytest.mark.slow
def test_bfloat16_training_with_activation_checkpointing(a2d_setup, tmp_path):
    run_dir = tmp_path / 'run'
    run_main(*train_args(a2d_setup, run_dir, epochs=1, amp_dtype='bfloat16', backbone_activation_checkpointing='true'))
    (line,) = [json.loads(line) for line in (run_dir / 'metrics.jsonl').read_text().splitlines()]
    assert 0 < line['train_losses']['loss'] < float('inf')
    assert load_config(run_dir / 'config.yaml', []).amp_dtype == 'bfloat16'
    assert (run_dir / 'checkpoints' / '0.pth.tar').is_file()


@pytest.mark.slow
def test_torchrun_processes_join_its_process_group(trained_run, a2d_setup, tmp_path):
    _, overrides = a2d_setup
    result = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc-per-node', '2', '--master-port',
                             str(free_port()), str(REPO / 'main.py'),
                             *map(str, eval_args(a2d_setup, tmp_path / 'eval',
                                                 trained_run / 'checkpoints' / '0.pth.tar'))],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert '(2 process(es), cpu)' in result.stdout
    assert read_json(tmp_path / 'eval' / 'metrics_epoch_0.json') == read_json(trained_run / 'metrics_epoch_0.json')


def assert_same_weights(first, second):
    assert first.keys() == second.keys()
    different = [k for k in first if not torch.equal(first[k], second[k])]
    assert not different, f'{len(different)} tensors differ, e.g. {different[:5]}'


@pytest.mark.slow
def test_resuming_after_one_epoch_gives_the_weights_of_an_uninterrupted_run(trained_run, a2d_setup, tmp_path):
    run_dir = tmp_path / 'run'
    run_main(*train_args(a2d_setup, run_dir, epochs=1))
    result = run_main(*train_args(a2d_setup, tmp_path / 'resumed', '--resume',
                                  run_dir / 'checkpoints' / 'last.pth.tar'))
    assert 'resumed from' in result.stdout
    resumed = load(tmp_path / 'resumed' / 'checkpoints' / '1.pth.tar')
    uninterrupted = load(trained_run / 'checkpoints' / '1.pth.tar')
    assert_same_weights(resumed['model_state_dict'], uninterrupted['model_state_dict'])
    assert resumed['scheduler_state_dict']['last_epoch'] == uninterrupted['scheduler_state_dict']['last_epoch'] == 2
    assert read_json(tmp_path / 'resumed' / 'metrics_epoch_1.json') == read_json(trained_run / 'metrics_epoch_1.json')


@pytest.mark.slow
def test_refer_youtube_vos_training_and_two_process_evaluation_write_a_valid_submission(a2d_setup, tmp_path):
    root, overrides = a2d_setup
    dataset = make_ref_youtube_vos_dataset(tmp_path / 'refer_youtube_vos')
    config = YTVOS_CONFIG
    flags = ['-ws', 3, '-bs', 1, '--cpu', *set_flags(overrides, dataset_path=dataset.root, epochs=1)]
    run_main('-rm', 'train', '-c', config, '--output_dir', tmp_path / 'run', *flags)
    assert (tmp_path / 'run' / 'validation_outputs' / 'submission_epoch_0.zip').is_file()
    checkpoint = tmp_path / 'run' / 'checkpoints' / 'last.pth.tar'
    assert 'best_loss' in load(checkpoint)
    run_main('-rm', 'eval', '-c', config, '--output_dir', tmp_path / 'eval', '-ckpt', checkpoint, '-ng', 2, *flags)
    zip_path = tmp_path / 'eval' / 'validation_outputs' / 'submission_epoch_0.zip'
    meta = dataset.root / 'meta_expressions'
    check = check_submission_zip(zip_path, meta / 'valid' / 'meta_expressions.json', dataset_root=dataset.root,
                                 exclude_videos=json.loads((meta / 'test' / 'meta_expressions.json').read_text())[
                                     'videos'], show_progress=False)
    assert check.ok and check.num_expected > 0 and not check.unexpected, check.summary()
    assert read_json(tmp_path / 'eval' / 'metrics_epoch_0.json')['expressions'] == 4


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_that_resumes(a2d_setup, tmp_path):
    run_dir = tmp_path / 'run'
    process = start_long_training(train_args(a2d_setup, run_dir, epochs=1000))
    try:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == main.INTERRUPTED_EXIT_CODE, stderr[-3000:]
    assert 'resum' in stdout
    checkpoint = load(run_dir / 'checkpoints' / 'last.pth.tar')
    stopped_in = checkpoint.get('epoch_in_progress', checkpoint['epoch'] + 1)
    assert stopped_in >= 1

    result = run_main(*train_args(a2d_setup, run_dir, '--resume', run_dir / 'checkpoints' / 'last.pth.tar',
                                  epochs=stopped_in + 1))
    assert 'resumed from' in result.stdout
    assert (run_dir / 'checkpoints' / f'{stopped_in}.pth.tar').is_file()
    assert load(run_dir / 'checkpoints' / 'last.pth.tar')['epoch'] == stopped_in


def _train_replica(rank, config, port, out_dir):
    """One of two gloo processes: one training epoch under DDP, then this replica's weights to a file."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    import datasets
    from models import build_model
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=2)
    try:
        trainer.seed_everything(config.seed + rank)
        model, criterion, _ = build_model(config)
        dataset = datasets.build_dataset('train', **config.to_dict())
        sampler = ResumableDistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=0)
        loader = make_loader(dataset, config.num_workers, config.batch_size, sampler, torch.device('cpu'))
        initial = {k: v.clone() for k, v in model.state_dict().items()}
        ddp_model = DistributedDataParallel(model)
        optimizer = trainer.build_optimizer(model, config)
        scaler = torch.amp.GradScaler('cpu', enabled=False)
        trainer.train_one_epoch(ddp_model, criterion, loader, optimizer, scaler, torch.device('cpu'), 0, config,
                                StopRequest())
        torch.save({'initial': initial, 'trained': model.state_dict()}, Path(out_dir) / f'rank{rank}.pt')
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_training_keeps_the_replicas_equal(a2d_setup, tmp_path):
    _, overrides = a2d_setup
    config = load_config(A2D_CONFIG, overrides, window_size=3, batch_size=1, device='cpu')
    mp.start_processes(_train_replica, args=(config, free_port(), tmp_path), nprocs=2, start_method='spawn')
    rank0, rank1 = load(tmp_path / 'rank0.pt'), load(tmp_path / 'rank1.pt')
    # different seeds per rank, yet DDP starts both from rank 0's weights and keeps them equal
    assert not torch.equal(rank0['initial']['is_referred_head.weight'], rank1['initial']['is_referred_head.weight'])
    assert_same_weights(rank0['trained'], rank1['trained'])
    assert not torch.equal(rank0['trained']['is_referred_head.weight'], rank0['initial']['is_referred_head.weight'])


# --- errors -----------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_usage_errors_are_one_line(a2d_setup, tmp_path, capsys):
    truncated = tmp_path / 'truncated.pth.tar'
    torch.save({'model_state_dict': {'w': torch.zeros(1000)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    foreign = tmp_path / 'foreign.pth.tar'
    torch.save({'model_state_dict': {'classifier.weight': torch.zeros(2)}}, foreign)
    cases = [
        (eval_args(a2d_setup, tmp_path / 'e1', tmp_path / 'missing.pth.tar'), 'checkpoint not found'),
        (eval_args(a2d_setup, tmp_path / 'e2', truncated), str(truncated)),
        (eval_args(a2d_setup, tmp_path / 'e3', foreign), 'unexpected keys: classifier.weight'),
        (train_args(a2d_setup, tmp_path / 't1', no_such_key=1), 'no_such_key'),
        (train_args(a2d_setup, tmp_path / 't2', lr='fast'), 'lr'),
        (train_args(a2d_setup, tmp_path / 't3', dataset_path=tmp_path / 'nowhere'), f'{tmp_path / "nowhere"}'),
        (train_args(a2d_setup, tmp_path / 't4', text_encoder_type=tmp_path / 'no_encoder'), 'text_encoder_type'),
        (['-rm', 'eval', '-c', A2D_CONFIG, '--cpu'], '-ckpt'),
        (['-rm', 'train', '-c', JHMDB_CONFIG, '--cpu', '--output_dir', tmp_path / 'j',
          *set_flags(a2d_setup[1])], 'evaluation only'),
    ]
    try:
        import wandb  # noqa: F401
    except ImportError:
        cases.append((train_args(a2d_setup, tmp_path / 't5', wandb_mode='online'), 'pip install wandb'))
    if not torch.cuda.is_available():
        cases.append((['-rm', 'train', '-c', A2D_CONFIG, '-ng', 1], '--cpu'))
    for args, message in cases:  # in this process: an exception other than the handled ones fails the test
        assert main.main(list(map(str, args))) == 2, args
        error = capsys.readouterr().err
        assert message in error, (args, error)
    # and once as a user sees it
    result = run_main(*cases[0][0], expect=2)
    assert result.stderr.strip() == f'error: checkpoint not found: {tmp_path / "missing.pth.tar"}'


@pytest.mark.slow
def test_resume_needs_a_checkpoint_of_a_training_run(trained_run, a2d_setup, tmp_path):
    bare = tmp_path / 'weights_only.pth.tar'
    torch.save({'model_state_dict': load(trained_run / 'checkpoints' / '0.pth.tar')['model_state_dict']}, bare)
    result = run_main(*train_args(a2d_setup, tmp_path / 'run', '--resume', bare), expect=2)
    assert 'cannot resume' in result.stderr and 'optimizer_state_dict' in result.stderr


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(a2d_setup, tmp_path, monkeypatch, capsys):
    build = trainer.build_network_and_criterion

    def build_with_failing_criterion(config):
        model, criterion = build(config)
        forward = criterion.forward
        calls = []

        def failing(outputs, targets):
            losses = forward(outputs, targets)
            calls.append(1)
            if len(calls) > 3:  # after the first epoch (3 iterations)
                losses['loss_dice'] = losses['loss_dice'] * float('nan')
            return losses
        criterion.forward = failing
        return model, criterion

    monkeypatch.setattr(trainer, 'build_network_and_criterion', build_with_failing_criterion)
    run_dir = tmp_path / 'run'
    assert main.main(list(map(str, train_args(a2d_setup, run_dir)))) == 2
    error = capsys.readouterr().err
    assert 'non-finite loss at epoch 1' in error and 'loss_dice' in error
    good = load(run_dir / 'checkpoints' / '0.pth.tar')
    last = load(run_dir / 'checkpoints' / 'last.pth.tar')
    assert last['epoch'] == 0
    assert_same_weights(last['model_state_dict'], good['model_state_dict'])
    assert not (run_dir / 'checkpoints' / '1.pth.tar').exists()


def test_shard_sampler_evaluates_every_sample_once():
    dataset = list(range(7))
    shards = [list(ShardSampler(dataset, rank, 3)) for rank in range(3)]
    assert sorted(i for shard in shards for i in shard) == dataset


def test_resumable_sampler_skips_what_was_done():
    dataset = list(range(10))
    sampler = ResumableDistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=3)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.skip = 4
    assert list(sampler) == full[4:] and len(sampler) == 6


def test_an_epoch_stopped_part_way_continues_where_it_stopped(a2d_setup):
    import datasets
    from models import build_model
    _, overrides = a2d_setup
    config = load_config(A2D_CONFIG, overrides, window_size=3, batch_size=1, device='cpu')
    model, criterion, _ = build_model(config)
    dataset = datasets.build_dataset('train', **config.to_dict())
    sampler = ResumableDistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=0)
    optimizer = trainer.build_optimizer(model, config)
    scaler = torch.amp.GradScaler('cpu', enabled=False)
    stop = StopRequest()
    stop.signum = signal.SIGTERM
    gradients = []  # per step, the gradient tensors the optimizer used
    optimizer.register_step_post_hook(
        lambda optimizer, args, kwargs: gradients.append([p.grad for g in optimizer.param_groups for p in g['params']]))

    def epoch(progress):
        sampler.skip = progress['iteration'] if progress else 0
        loader = make_loader(dataset, config.num_workers, 1, sampler, torch.device('cpu'))
        return trainer.train_one_epoch(model, criterion, loader, optimizer, scaler, torch.device('cpu'), 0, config,
                                       stop, progress)

    first = epoch(None)
    assert first['stopped'] and (first['iteration'], first['count']) == (1, 1)
    second = epoch(first)
    assert second['stopped'] and (second['iteration'], second['count']) == (2, 2)
    stop.signum = None
    rest = epoch(second)
    assert not rest['stopped'] and rest['iteration'] == rest['count'] == len(dataset) == 6
    assert set(trainer.mean_losses(rest)) >= {'loss', 'loss_dice', 'loss_is_referred', 'loss_sigmoid_focal'}
    # the gradients are zeroed between steps, not re-allocated (less CPU heap fragmentation)
    assert len(gradients) == 6 and None not in gradients[0]
    assert all(a is b for step in gradients[1:] for a, b in zip(gradients[0], step))

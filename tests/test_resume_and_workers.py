"""Two faults of a training run, injected for real: a stop signal part-way through an epoch, after which the run is
resumed with another batch size or number of processes (each sample of that epoch must be trained exactly once),
and a DataLoader worker process killed with SIGKILL, as the out-of-memory killer kills it (one line says what
happened and what was saved, exit code 2).

The end-to-end tests run main.py's `main` on a made-up dataset registered from this file: `DRIVER` registers it
in every process of the run (spawned processes import the driver again) and then runs main.py as a user does. Its
training samples append their index to a file when they are read, so a test sees which samples a run trained, and
its reading pauses where `RECORDED_DATASET` asks, so that a signal reaches the run at a known point: a SIGTERM
while the run reads its first batch, a SIGKILL to a loader worker that is reading a batch.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset, DistributedSampler

from config import load_config
from datasets.evaluator import Evaluator
from datasets.transforms import collate_videos
from engine.loaders import ResumableDistributedSampler, worker_death
from models import build_network
from tests.fake_datasets import square_video_item
from tests.helpers import (A2D_CONFIG, REPO, TINY_TRAINING_MODEL, config_overrides, file_digests, load, set_flags,
                           write_tiny_text_encoder)
from utils import save_checkpoint

SIZE = 32  # frames of SIZE x SIZE pixels, 4 a video: a training step of the tiny model takes a fraction of a second
TRAIN_SAMPLES, TEST_SAMPLES = 6, 2
CONTROL_VARIABLE = 'RECORDED_DATASET'
INTERRUPTED_EXIT_CODE, ERROR_EXIT_CODE = 143, 2  # main.py's, as documented in README.md

DRIVER = f'''import sys
sys.path.insert(0, {str(REPO)!r})
import datasets
datasets.register_dataset('recorded', 'tests.test_resume_and_workers:build_recorded_dataset',
                          'tests.test_resume_and_workers:build_recorded_evaluator')
if __name__ == '__main__':
    import main
    sys.exit(main.main(exiting=True))
'''


# --- the dataset ------------------------------------------------------------------------------------------------

class RecordedDataset(Dataset):
    """Videos of 4 frames with a white square (its place depends on the sample), query 'the square', the middle
    frame annotated. `control` (the JSON of the RECORDED_DATASET variable): 'record', a file to which every
    training sample read appends its index; '<split>_samples', the split's length; 'pause', where reading waits:
    {'split', 'dir', 'after'}: a sample of that split, read once the file 'after' exists (if given), writes
    `<dir>/paused.<pid>` and waits until `<dir>/go` exists (or its parent process has ended)."""

    def __init__(self, image_set: str, control: dict):
        self.image_set, self.control = image_set, control
        self.collator = collate_videos

    def __len__(self):
        return self.control.get(f'{self.image_set}_samples', TRAIN_SAMPLES if self.image_set == 'train' else
                                TEST_SAMPLES)

    def pause_if_asked(self):
        pause = self.control.get('pause')
        if not pause or pause['split'] != self.image_set:
            return
        go = Path(pause['dir']) / 'go'
        if go.exists() or (pause.get('after') and not Path(pause['after']).exists()):
            return
        (Path(pause['dir']) / f'paused.{os.getpid()}').touch()
        parent = os.getppid()
        while not go.exists() and os.getppid() == parent:  # (a worker whose run has ended stops waiting)
            time.sleep(0.02)

    def __getitem__(self, index):
        self.pause_if_asked()
        if self.image_set == 'train' and self.control.get('record'):
            with open(self.control['record'], 'a') as record:
                record.write(f'{index}\n')
        return square_video_item(index, self.image_set, SIZE)


class CountingEvaluator(Evaluator):
    """Counts the queries evaluated (the score picks best.pth.tar)."""
    best_metric = 'queries'
    checkpoint_key = 'best_queries'

    def __init__(self):
        self.queries = 0

    def update(self, batch, outputs):
        self.queries += len(batch['text_queries'])

    def summarize(self):
        return {'queries': float(self.queries)}


def build_recorded_dataset(image_set, config, transforms):
    return RecordedDataset(image_set, json.loads(os.environ.get(CONTROL_VARIABLE, '{}')))


def build_recorded_evaluator(config, dataset, run_dir, epoch):
    return CountingEvaluator()


# --- running main.py on it --------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def recorded_setup(tmp_path_factory):
    """(the driver script, the `--set` flags of the tiny model on the recorded dataset)."""
    root = tmp_path_factory.mktemp('recorded')
    driver = root / 'driver.py'
    driver.write_text(DRIVER)
    values = dict(TINY_TRAINING_MODEL, dataset_name='recorded', text_encoder_type=str(write_tiny_text_encoder(
        root / 'text_encoder')), cache_dir=str(root / 'cache'), lr_drop=[5], num_workers=0, epochs=1)
    return driver, config_overrides(values)


def main_args(setup, mode, run_dir, *extra, **sets):
    _, overrides = setup
    return ['-rm', mode, '-c', A2D_CONFIG, '-ws', 4, '--cpu', '--output_dir', run_dir, *set_flags(overrides, **sets),
            *extra]


def start_main(setup, args, control: dict) -> subprocess.Popen:
    """main.py with `args` in a child process whose output (stdout and stderr, in order) goes to a pipe."""
    driver, _ = setup
    env = dict(os.environ, **{CONTROL_VARIABLE: json.dumps(control)})
    return subprocess.Popen([sys.executable, str(driver), *map(str, args)], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen, expect: int) -> str:
    try:
        output, _ = process.communicate(timeout=600)
    finally:
        process.kill()
    assert process.returncode == expect, f'exit code {process.returncode}\n{output[-4000:]}'
    return output


def wait_for_pause(process: subprocess.Popen, pause_dir: Path) -> list:
    """The pids of the processes that paused reading (once one has)."""
    deadline = time.time() + 300
    while not list(pause_dir.glob('paused.*')):
        if process.poll() is not None or time.time() > deadline:
            process.kill()
            raise AssertionError(f'the run never paused:\n{process.communicate()[0][-4000:]}')
        time.sleep(0.05)
    return [int(p.suffix[1:]) for p in pause_dir.glob('paused.*')]


def child_pids(pid: int) -> set:
    """The processes whose parent is `pid` (from /proc/<n>/stat, which every Linux kernel has)."""
    children = set()
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            fields = stat.read_text().rsplit(')', 1)[1].split()  # (the command name may hold spaces)
        except (OSError, IndexError):
            continue  # a process that ended meanwhile
        if int(fields[1]) == pid:
            children.add(int(stat.parent.name))
    return children


def recorded(path: Path) -> Counter:
    return Counter(int(line) for line in path.read_text().split()) if path.exists() else Counter()


def assert_each_trained_once(record: Path, size: int = TRAIN_SAMPLES):
    trained = recorded(record)
    again = sorted(i for i, n in trained.items() if n > 1)
    never = sorted(set(range(size)) - set(trained))
    assert trained == Counter(range(size)), f'trained more than once: {again}, never: {never}'


# --- the sampler ------------------------------------------------------------------------------------------------

def shares(sampler_class, size, world_size, epoch=3, seed=7, **attributes):
    """Each process's list of sample indices for one epoch."""
    result = []
    for rank in range(world_size):
        sampler = sampler_class(list(range(size)), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        for name, value in attributes.items():
            setattr(sampler, name, value)
        result.append(list(sampler))
        assert len(sampler) == len(result[-1])
    return result


@pytest.mark.parametrize('size', [1, 6, 7, 10])
@pytest.mark.parametrize('world_size', [1, 2, 3])
def test_an_epoch_from_its_start_is_distributed_samplers(size, world_size):
    assert shares(ResumableDistributedSampler, size, world_size) == shares(DistributedSampler, size, world_size)


def trained_before_the_stop(size, batch_size, world_size, iterations):
    """The indices a run of `world_size` processes trained in `iterations` full iterations of an epoch, as
    DistributedSampler gave them out."""
    return [index for share in shares(DistributedSampler, size, world_size)
            for index in share[:iterations * batch_size]]


@pytest.mark.parametrize('size, before, after', [
    (6, (2, 1, 1), (1, 2)),   # -bs 2 stopped after an iteration, resumed with -bs 1 -ng 2
    (6, (2, 1, 1), (3, 1)),   # ... with -bs 3
    (6, (1, 2, 1), (2, 1)),   # -bs 1 -ng 2, resumed with -bs 2 on one process
    (10, (1, 2, 2), (1, 3)),  # three processes take the remaining 6
    (11, (2, 1, 3), (1, 5))])
def test_the_rest_of_an_epoch_goes_to_the_new_processes_each_sample_once(size, before, after):
    batch_size, world_size, iterations = before
    done = trained_before_the_stop(size, batch_size, world_size, iterations)
    assert len(done) == iterations * batch_size * world_size
    _, new_world_size = after
    rest = shares(ResumableDistributedSampler, size, new_world_size, skip=len(done))
    assert len({len(share) for share in rest}) == 1  # (equal shares: the processes take the same number of steps)
    assert Counter(done + [i for share in rest for i in share]) == Counter(range(size))


def test_the_rest_of_an_epoch_is_padded_with_the_epochs_first_samples_as_distributed_sampler_pads():
    """7 samples, 2 processes: DistributedSampler pads the epoch with its first sample. Stopped after one iteration
    of -bs 1 and resumed the same way, each process goes on with the samples it would have had."""
    whole = shares(DistributedSampler, 7, 2)
    rest = shares(ResumableDistributedSampler, 7, 2, skip=2)
    assert rest == [share[1:] for share in whole]
    # resumed on 3 processes: the 5 remaining samples and the epoch's first one
    order = shares(DistributedSampler, 7, 1)[0]
    rest = shares(ResumableDistributedSampler, 7, 3, skip=2)
    assert sorted(i for share in rest for i in share) == sorted(order[2:] + order[:1])


# --- resuming with another batch size or number of processes ----------------------------------------------------

@pytest.fixture(scope='module')
def stopped_run(recorded_setup, tmp_path_factory):
    """A run of `-bs 2` on one process, stopped by a real SIGTERM while it read its first batch: its directory and
    the file of the indices it trained (the first iteration: 2 of the epoch's 6 samples)."""
    root = tmp_path_factory.mktemp('stopped')
    run_dir, record, pause_dir = root / 'run', root / 'trained.txt', root / 'pause'
    pause_dir.mkdir()
    process = start_main(recorded_setup, main_args(recorded_setup, 'train', run_dir, '-bs', 2),
                         {'record': str(record), 'pause': {'split': 'train', 'dir': str(pause_dir)}})
    try:
        assert wait_for_pause(process, pause_dir) == [process.pid]  # (num_workers 0: the run itself reads)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # (the handler runs at once: the sleeping reader is woken by it)
        (pause_dir / 'go').touch()
    finally:
        output = finish(process, INTERRUPTED_EXIT_CODE)
    checkpoint = load(run_dir / 'checkpoints' / 'last.pth.tar')
    assert checkpoint['epoch_in_progress'] == 0 and checkpoint['progress']['iteration'] == 1, output
    assert sum(recorded(record).values()) == 2
    return run_dir, record


def copy_of(stopped_run, tmp_path):
    run_dir, record = stopped_run
    shutil.copytree(run_dir, tmp_path / 'run')
    shutil.copy(record, tmp_path / 'trained.txt')
    return tmp_path / 'run', tmp_path / 'trained.txt'


def as_written_before(checkpoint_path: Path):
    """The checkpoint as this program wrote it before its progress held the number of samples done."""
    checkpoint = load(checkpoint_path)
    checkpoint['progress'] = {k: checkpoint['progress'][k] for k in ('iteration', 'loss_sums', 'count')}
    torch.save(checkpoint, checkpoint_path)


@pytest.mark.slow
@pytest.mark.parametrize('flags, old_checkpoint', [
    (['-bs', 3], False),
    (['-bs', 1], False),
    (['-bs', 2, '-ng', 2], False),
    (['-bs', 2, '-ng', 2], True)],
    ids=['bs3', 'bs1', 'bs2-ng2', 'bs2-ng2-checkpoint-written-before'])
def test_resuming_with_another_batch_size_or_process_count_trains_each_sample_of_the_epoch_once(
        recorded_setup, stopped_run, tmp_path, flags, old_checkpoint):
    run_dir, record = copy_of(stopped_run, tmp_path)
    checkpoint = run_dir / 'checkpoints' / 'last.pth.tar'
    if old_checkpoint:
        as_written_before(checkpoint)
    process = start_main(recorded_setup, main_args(recorded_setup, 'train', run_dir, '--resume', checkpoint, *flags),
                         {'record': str(record)})
    output = finish(process, 0)
    assert 'resumed from' in output and 'Traceback' not in output
    assert_each_trained_once(record)
    assert load(run_dir / 'checkpoints' / '0.pth.tar')['epoch'] == 0


@pytest.mark.slow
def test_resuming_with_the_same_batch_size_gives_the_weights_of_a_run_never_stopped(recorded_setup, stopped_run,
                                                                                    tmp_path):
    run_dir, record = copy_of(stopped_run, tmp_path)
    resumed = start_main(recorded_setup, main_args(recorded_setup, 'train', run_dir, '-bs', 2, '--resume',
                                                   run_dir / 'checkpoints' / 'last.pth.tar'), {'record': str(record)})
    finish(resumed, 0)
    whole = start_main(recorded_setup, main_args(recorded_setup, 'train', tmp_path / 'whole', '-bs', 2), {})
    finish(whole, 0)
    first, second = (load(d / 'checkpoints' / '0.pth.tar')['model_state_dict'] for d in (run_dir, tmp_path / 'whole'))
    assert first.keys() == second.keys()
    assert [k for k in first if not torch.equal(first[k], second[k])] == []
    assert_each_trained_once(record)


@pytest.mark.slow
@pytest.mark.parametrize('control, flags, message', [
    ({'train_samples': 9}, [], "stopped epoch 0 after 2 of its 6 training samples; this run's training set has 9 "
                               'samples, so the rest of that epoch is unknown: resume with the training set it was '
                               'trained on'),
    ({}, ['--set', 'seed=5'], "stopped epoch 0 part-way under seed 42, and the order of an epoch's samples follows "
                              'the seed: resume with --set seed=42 (this run has seed 5)')],
    ids=['training-set-size', 'seed'])
def test_resuming_an_epoch_that_cannot_go_on_as_it_began_is_refused_in_one_line(recorded_setup, stopped_run, tmp_path,
                                                                                 control, flags, message):
    run_dir, record = copy_of(stopped_run, tmp_path)
    before = file_digests(tmp_path)
    checkpoint = run_dir / 'checkpoints' / 'last.pth.tar'
    process = start_main(recorded_setup, main_args(recorded_setup, 'train', run_dir, '-bs', 2, '--resume', checkpoint,
                                                   *flags), {'record': str(record), **control})
    output = finish(process, ERROR_EXIT_CODE)
    assert output.strip().splitlines()[-1] == f'error: {checkpoint} {message}'
    assert 'Traceback' not in output
    assert file_digests(tmp_path) == before


# --- a loader worker killed -------------------------------------------------------------------------------------

@pytest.mark.parametrize('message, expected', [
    ('DataLoader worker (pid 4321) is killed by signal: Killed. ', ('pid 4321', 'was killed by SIGKILL', 'SIGKILL')),
    ('DataLoader worker (pid 4321) is killed by signal: Bus error. It is possible that dataloader\'s workers are out '
     'of shared memory. Please try to raise your shared memory limit.', ('pid 4321', 'was killed by SIGBUS', 'SIGBUS')),
    ('DataLoader worker (pid 4321) exited unexpectedly with exit code 1. Details are lost due to multiprocessing.',
     ('pid 4321', 'exited with code 1', None)),
    ('DataLoader worker (pid(s) 4321, 4322) exited unexpectedly', ('pid(s) 4321, 4322', 'ended unexpectedly', None)),
    ('CUDA out of memory', None)])
def test_torchs_messages_of_a_dead_worker_are_read(message, expected):
    """The forms torch's RuntimeError takes (its SIGCHLD handler's, when the loop computes; its wait's, when the loop
    waits for a batch: the end-to-end tests below meet the latter, with the former as its cause)."""
    assert worker_death(RuntimeError(message)) == expected
    assert worker_death(ValueError(message)) is None


def kill_a_reading_worker(process: subprocess.Popen, pause_dir: Path) -> int:
    """SIGKILL to one of the run's loader workers, once they read: a child process of main.py's process."""
    paused = wait_for_pause(process, pause_dir)
    workers = child_pids(process.pid)
    assert paused and set(paused) <= workers, (paused, workers)
    os.kill(paused[0], signal.SIGKILL)
    return paused[0]


@pytest.mark.slow
def test_a_loader_worker_killed_during_training_ends_the_run_in_one_line(recorded_setup, tmp_path):
    run_dir, pause_dir = tmp_path / 'run', tmp_path / 'pause'
    pause_dir.mkdir()
    first_checkpoint = run_dir / 'checkpoints' / '0.pth.tar'
    process = start_main(recorded_setup, main_args(recorded_setup, 'train', run_dir, '-bs', 2, num_workers=2,
                                                   epochs=3),
                         {'pause': {'split': 'train', 'dir': str(pause_dir), 'after': str(first_checkpoint)}})
    before = file_digests(tmp_path, exclude=[run_dir, pause_dir])
    pid = kill_a_reading_worker(process, pause_dir)
    output = finish(process, ERROR_EXIT_CODE)
    last = run_dir / 'checkpoints' / 'last.pth.tar'
    assert output.strip().splitlines()[-1] == (
        f'error: DataLoader worker (pid {pid}) of the training data was killed by SIGKILL: the machine may have run '
        'out of memory (the out-of-memory killer sends SIGKILL); use fewer loader workers (--set num_workers=1, '
        f'now 2) or a smaller batch (-bs 1, now 2). Saved: the latest checkpoint, {last}; --resume {last} '
        'continues from it')
    assert 'Traceback' not in output
    assert load(last)['epoch'] == 0 and 'epoch_in_progress' not in load(last)
    assert not (run_dir / 'checkpoints' / '1.pth.tar').exists()
    assert file_digests(tmp_path, exclude=[run_dir, pause_dir]) == before


@pytest.mark.slow
def test_a_loader_worker_killed_during_an_evaluation_ends_it_in_one_line(recorded_setup, tmp_path):
    _, overrides = recorded_setup
    torch.manual_seed(0)
    weights = tmp_path / 'weights.pth.tar'
    save_checkpoint({'model_state_dict': build_network(load_config(A2D_CONFIG, overrides, running_mode='eval',
                                                                   device='cpu', window_size=4)).state_dict()},
                    weights)
    run_dir, pause_dir = tmp_path / 'eval', tmp_path / 'pause'
    pause_dir.mkdir()
    before = file_digests(tmp_path, exclude=[run_dir, pause_dir])
    process = start_main(recorded_setup, main_args(recorded_setup, 'eval', run_dir, '-bs', 1, '-ckpt', weights,
                                                   num_workers=2),
                         {'pause': {'split': 'test', 'dir': str(pause_dir)}})
    pid = kill_a_reading_worker(process, pause_dir)
    output = finish(process, ERROR_EXIT_CODE)
    assert output.strip().splitlines()[-1] == (
        f'error: DataLoader worker (pid {pid}) of the evaluation data was killed by SIGKILL: the machine may have '
        'run out of memory (the out-of-memory killer sends SIGKILL); use fewer loader workers (--set '
        'num_workers=1, now 2). Saved: nothing (an evaluation writes its metrics when it completes): run it again')
    assert 'Traceback' not in output
    assert not list(run_dir.glob('metrics*'))
    assert file_digests(tmp_path, exclude=[run_dir, pause_dir]) == before

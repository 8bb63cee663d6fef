"""A training run's checkpoints: what they hold, writing them (atomically), `last`/`best` links, pruning old
epochs, and resuming a run from one (model, optimizer, schedule, grad scaler, position, best score, RNG states).

Checkpoints keep the original's keys (`epoch`, `total_epochs`, `model_state_dict`, `optimizer_state_dict`,
`scheduler_state_dict`, `grad_scaler_state_dict`, `best_mAP` / `best_loss`) and add what resuming needs, the
config and the run's provenance; they are read with `torch.load(..., weights_only=True)`.
"""
import errno
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from models import load_model_weights
from utils import RunError, error_message, replacing, save_checkpoint, writing

KEEP_EPOCH_CHECKPOINTS = 15
RESUME_KEYS = ('epoch', 'model_state_dict', 'optimizer_state_dict', 'scheduler_state_dict',
               'grad_scaler_state_dict', 'rng_states')


def rng_states() -> dict:
    """This process's random states (Python, NumPy, torch, CUDA), as types a weights_only checkpoint can hold."""
    name, keys, position, has_gauss, cached_gauss = np.random.get_state()
    states = {'python': random.getstate(), 'torch': torch.get_rng_state(),
              'numpy': (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gauss)}
    if torch.cuda.is_available():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict):
    version, internal, gauss = states['python']
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached_gauss = states['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gauss))
    torch.set_rng_state(states['torch'])
    if 'cuda' in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states['cuda'])


def checkpoint_contents(model, optimizer, scheduler, scaler, config, epoch, best_key, best, all_rng_states,
                        provenance: Optional[dict] = None, **extra) -> dict:
    """The original's checkpoint keys plus what resuming needs."""
    return {'epoch': epoch, 'total_epochs': config.epochs, 'model_state_dict': model.state_dict(),
            'optimizer_state_dict': optimizer.state_dict(), 'scheduler_state_dict': scheduler.state_dict(),
            'grad_scaler_state_dict': scaler.state_dict(), best_key: best, 'config': config.to_dict(),
            'rng_states': all_rng_states, **({'provenance': provenance} if provenance else {}), **extra}


def link_or_copy(source: Path, target: Path):
    """Make `target` the same file as `source` (a hard link where possible), replacing it atomically."""
    with writing(target, 'checkpoint'), replacing(target) as temporary:
        temporary.unlink()
        try:
            os.link(source, temporary)
        except OSError:
            shutil.copyfile(source, temporary)


def epoch_checkpoints(checkpoint_dir: Path):
    """`<n>.pth.tar` files, oldest epoch first."""
    return sorted((p for p in checkpoint_dir.glob('*.pth.tar') if p.name.split('.')[0].isdigit()),
                  key=lambda p: int(p.name.split('.')[0]))


def prune_epoch_checkpoints(checkpoint_dir: Path):
    for old in epoch_checkpoints(checkpoint_dir)[:-KEEP_EPOCH_CHECKPOINTS]:
        old.unlink()


def load_weights_or_fail(model: nn.Module, path: str) -> dict:
    try:
        return load_model_weights(model, path)
    except (FileNotFoundError, RuntimeError, KeyError, ValueError) as error:
        raise RunError(error_message(error)) from error


@dataclass
class Resumed:
    """Where a resumed run starts: the epoch, the progress already made in it (an interrupted epoch's
    `{'iteration', 'loss_sums', 'count', 'samples_done', 'dataset_size', 'shuffle_seed'}`, see
    `interrupted_epoch_progress`) or None, the best score so far, and this process's random states (None when they
    were re-seeded: another number of processes)."""
    epoch: int
    progress: Optional[dict]
    best: Optional[float]
    rng_states: Optional[dict] = None


def interrupted_epoch_progress(path: str, checkpoint: dict, dataset_size: int, seed: int) -> dict:
    """The progress saved with an epoch stopped part-way, checked against this run's training set and seed.

    `samples_done` is the number of leading positions of the epoch's order (engine/loaders.py,
    ResumableDistributedSampler) that were trained; the rest of the epoch is the rest of that order, whatever the
    batch size and number of processes of the run that resumes it. Checkpoints written before it was stored lack it:
    their run took `batch_size` samples a process and iteration, on `len(rng_states)` processes. The order depends on
    the training set's length and the seed: a run with others is refused, naming the checkpoint."""
    progress = dict(checkpoint['progress'])
    epoch = int(checkpoint['epoch_in_progress'])
    if 'samples_done' not in progress:
        progress['samples_done'] = (int(progress['iteration']) * int(checkpoint['config']['batch_size']) *
                                    len(checkpoint['rng_states']))
    progress.setdefault('dataset_size', None)
    progress.setdefault('shuffle_seed', checkpoint['config']['seed'])
    done, size, shuffle_seed = int(progress['samples_done']), progress['dataset_size'], progress['shuffle_seed']
    if (size is not None and size != dataset_size) or done > dataset_size:
        of = f'of its {size} training samples' if size is not None else 'training samples'
        raise RunError(f'{path} stopped epoch {epoch} after {done} {of}; this run\'s training set has {dataset_size} '
                       'samples, so the rest of that epoch is unknown: resume with the training set it was trained on')
    if shuffle_seed != seed:
        raise RunError(f'{path} stopped epoch {epoch} part-way under seed {shuffle_seed}, and the order of an epoch\'s '
                       f'samples follows the seed: resume with --set seed={shuffle_seed} (this run has seed {seed})')
    return progress


def resume_from(path: str, model: nn.Module, optimizer, scheduler, scaler, rank: int, world_size: int,
                best_key: str, log, dataset_size: int, seed: int) -> Resumed:
    """Restore a training run from one of its checkpoints; the best score is stored under `best_key`, the
    evaluator's name for it. `log`: where to say that random states are re-seeded. `dataset_size` and `seed`: this
    run's training set length and seed, which an epoch stopped part-way must have been shuffled with."""
    checkpoint = load_weights_or_fail(model, path)
    missing = [k for k in RESUME_KEYS if k not in checkpoint]
    if missing:
        raise RunError(f'{path} cannot resume a run: it lacks {", ".join(missing)} (an official MTTR checkpoint or '
                       'bare weights can only start a new run: use -ckpt)')
    try:
        optimizer.load_state_dict(checkpoint['optimizer_state_dict'])
        scheduler.load_state_dict(checkpoint['scheduler_state_dict'])
        scaler.load_state_dict(checkpoint['grad_scaler_state_dict'])
    except (ValueError, KeyError) as error:
        raise RunError(f'{path}: the optimizer state does not fit this model/config ({error})') from error
    try:
        states = checkpoint['rng_states']
        if len(states) == world_size:
            set_rng_states(states[rank])
        else:
            log(f'{path} was written by {len(states)} process(es), this run has {world_size}: '
                'random states are re-seeded')
        own_states = states[rank] if len(states) == world_size else None
        best = checkpoint.get(best_key)
        if 'epoch_in_progress' in checkpoint:
            return Resumed(int(checkpoint['epoch_in_progress']),
                           interrupted_epoch_progress(path, checkpoint, dataset_size, seed), best, own_states)
        return Resumed(int(checkpoint['epoch']) + 1, None, best, own_states)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError) as error:
        raise RunError(f'{path} cannot resume a run: its epoch, progress or random states are not as this program '
                       f'writes them ({type(error).__name__}: {error_message(error)})') from error


class CheckpointFolder:
    """`<run>/checkpoints/`: `<epoch>.pth.tar` (the newest KEEP_EPOCH_CHECKPOINTS), `last.pth.tar` and
    `best.pth.tar` (links to epoch files), or `last.pth.tar` alone for an epoch stopped part-way."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.last, self.best = self.path / 'last.pth.tar', self.path / 'best.pth.tar'

    def create(self):
        with writing(self.path, 'checkpoint folder'):
            if self.path.is_symlink():  # (checkpoints written into a folder elsewhere)
                raise OSError(errno.ELOOP, 'it is a symbolic link', str(self.path))
            self.path.mkdir(exist_ok=True)

    def save_epoch(self, epoch: int, contents: dict, is_best: bool) -> Path:
        path = self.path / f'{epoch}.pth.tar'
        save_checkpoint(contents, path)
        link_or_copy(path, self.last)
        if is_best:
            link_or_copy(path, self.best)
        prune_epoch_checkpoints(self.path)
        return path

    def save_interrupted(self, contents: dict) -> Path:
        save_checkpoint(contents, self.last)
        return self.last

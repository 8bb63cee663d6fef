"""One training or evaluation run: the optimisation loop, the evaluation loop, checkpoints and logs.

`run()` is called once per process (by main.py directly, by its spawned workers, or under torchrun). It names no
dataset: the loaders and evaluators come from `datasets.build_dataset` / `datasets.build_evaluator`, and each
evaluator says which of its metrics picks the best checkpoint.
"""
import functools
import itertools
import json
import logging
import math
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm import tqdm

import datasets
from config import Config, save_config
from datasets.evaluator import Evaluator
from datasets.video import window_layout
from models import build_network, criterion as criterion_module, load_model_weights
from utils import (DirectoryLock, LockHeld, NestedTensor, UsageError, WriteError, all_gather_lists, atomic_write,
                   autocast, autocast_dtype, broadcast_object, check_directory_path, describe_holder, error_message,
                   get_world_size, is_main_process, rng_states, save_checkpoint, set_rng_states, writing)

KEEP_EPOCH_CHECKPOINTS = 15
# What tells that a folder holds a run, and what --overwrite deletes of a previous run (nothing else is touched).
RUN_MARKERS = ('config.yaml', 'checkpoints')
RUN_OUTPUTS = ('config.yaml', 'log.txt', 'metrics.jsonl', 'metrics_epoch_*.json', 'checkpoints', 'pictures',
               'validation_outputs', 'wandb')
# The folders of a run where an interrupted atomic write can leave its temporary `.<name>.<random>.tmp` file.
TEMPORARY_FILE_FOLDERS = ('.', 'checkpoints', 'validation_outputs')
# Errors of reading a sample that are the data's fault (a corrupt video, a missing frame): reported in one line.
SAMPLE_ERRORS = (OSError, ValueError, RuntimeError)
logger = logging.getLogger('mttr')


class RunError(Exception):
    """A run cannot go on (bad checkpoint, non-finite loss, ...); main.py prints it in one line."""


class SampleError(RunError):
    """A sample could not be read; raised in the process that read it (main.py prints it from any process)."""


class StopNow(BaseException):
    """Raised by a second stop signal: the run ends at once, saving nothing (a checkpoint being written is left
    out, the previous ones stay as they were)."""


class EvaluationStopped(Exception):
    def __init__(self, batches: int, total: int):
        super().__init__(batches, total)
        self.batches, self.total = batches, total


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f'signal {signum}'


class StopRequest:
    """Set by SIGTERM/SIGINT (cluster preemption, Ctrl-C). Training saves a resumable checkpoint at the end of
    the iteration and stops; an evaluation (`-rm eval`) stops after the batch, saving nothing. A second signal
    stops at once (StopNow)."""

    def __init__(self, training: bool = True):
        self.training = training
        self.signum = None
        self.stopping_now = False

    def __call__(self, signum, _frame):
        if self.signum is None:
            self.signum = signum
            if is_main_process():
                action = ('saving a resumable checkpoint at the end of this iteration' if self.training else
                          'stopping the evaluation after this batch; nothing will be saved')
                print(f'\n{signal_name(signum)}: {action} (send it again to stop at once)', file=sys.stderr)
        elif not self.stopping_now:  # (further signals are ignored while the run unwinds)
            self.stopping_now = True
            raise StopNow(signum)

    def agreed(self, device: torch.device) -> bool:
        """True on every process as soon as any process got a signal, so all stop at the same iteration."""
        flag = torch.tensor([float(self.signum is not None)], device=device)
        if dist.is_initialized():
            dist.all_reduce(flag)
        return flag.item() > 0


# ---------------------------------------------------------------------------------------------------------------
# setup

class _EarlyRecords(logging.Handler):
    """Keeps what is logged before the run's log file is opened (the run writes nothing until it has checked its
    checkpoint and data), to copy it there."""

    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


LOG_FORMAT = logging.Formatter('%(asctime)s %(message)s', '%Y-%m-%d %H:%M:%S')


class _LogFile(logging.FileHandler):
    """log.txt. A record it cannot write (a full disk) is reported once, in one line, instead of a traceback per
    record; the run goes on (the checkpoint writes report the disk themselves)."""
    failed = False

    def handleError(self, record):
        if not self.failed:
            self.failed = True
            print(f'warning: cannot write the log {self.baseFilename} ({error_message(sys.exc_info()[1])}); '
                  'logging goes to stdout only', file=sys.stderr)


def setup_logging():
    """Log to stdout on the main process; `log_to_file` adds the run's log.txt."""
    logger.handlers.clear()
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if is_main_process():
        stdout = logging.StreamHandler(sys.stdout)
        stdout.setFormatter(LOG_FORMAT)
        logger.addHandler(stdout)
        logger.addHandler(_EarlyRecords())
    else:
        logger.addHandler(logging.NullHandler())


def log_to_file(run_dir: Path):
    early = [h for h in logger.handlers if isinstance(h, _EarlyRecords)]
    if not early:
        return
    path = run_dir / 'log.txt'
    with writing(path, 'log'):
        handler = _LogFile(path)
    handler.setFormatter(LOG_FORMAT)
    for record in early[0].records:
        handler.handle(record)
    logger.removeHandler(early[0])
    logger.addHandler(handler)


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_optimizer(model: nn.Module, config: Config) -> torch.optim.AdamW:
    """AdamW with three groups: backbone, text encoder (when trained) and everything else."""
    groups = {'other': [], 'backbone': [], 'text_encoder': []}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            group = 'backbone' if 'backbone' in name else 'text_encoder' if 'text_encoder' in name else 'other'
            groups[group].append(parameter)
    param_dicts = [{'params': groups['other']},
                   {'params': groups['backbone'], 'lr': config.lr_backbone},
                   {'params': groups['text_encoder'], 'lr': config.text_encoder_lr}]
    return torch.optim.AdamW(param_dicts, lr=config.lr, weight_decay=config.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, config: Config) -> torch.optim.lr_scheduler.MultiStepLR:
    """The learning rate is multiplied by `lr_drop_gamma` after each epoch of `lr_drop`; stepped once per epoch."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=config.lr_drop, gamma=config.lr_drop_gamma)


class ShardSampler(Sampler):
    """Evaluation: every process takes every world_size-th sample, so each sample is evaluated exactly once
    (DistributedSampler would pad the last batch with duplicates)."""

    def __init__(self, dataset: Dataset, rank: int, world_size: int):
        self.indices = list(range(rank, len(dataset), world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


class ResumableDistributedSampler(DistributedSampler):
    """DistributedSampler that can start an epoch part-way, to resume after an interruption."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.skip = 0

    def __iter__(self):
        return iter(list(super().__iter__())[self.skip:])

    def __len__(self):
        return self.num_samples - self.skip


class SampleFailure:
    """What a loader yields instead of a batch when one of its samples could not be read. An exception raised in a
    loader worker process would reach the trainer re-raised with the worker's whole traceback in its message; this
    carries the one line that names the file and the sample."""

    def __init__(self, message: str):
        self.message = message


class ReportingDataset(Dataset):
    """`dataset` whose items are SampleFailures (naming the sample) where reading them fails with SAMPLE_ERRORS."""

    def __init__(self, dataset: Dataset, split: str):
        self.dataset, self.split = dataset, split

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, idx):
        try:
            return self.dataset[idx]
        except SAMPLE_ERRORS as error:
            describe = getattr(self.dataset, 'describe', None)
            what = f'sample {idx} of the {self.split} split' + (f' ({describe(idx)})' if describe else '')
            return SampleFailure(f'{what}: {error_message(error)}')


def _collate_or_failure(collate, items):
    failure = next((item for item in items if isinstance(item, SampleFailure)), None)
    return failure if failure is not None else collate(items)


def check_batch(batch):
    if isinstance(batch, SampleFailure):
        raise SampleError(batch.message)
    return batch


def make_loader(dataset: Dataset, config: Config, batch_size: int, sampler: Sampler,
                device: torch.device) -> DataLoader:
    """A loader whose batches are SampleFailures where a sample cannot be read (see `check_batch`)."""
    split = getattr(dataset, 'image_set', 'train' if isinstance(sampler, DistributedSampler) else 'test')
    return DataLoader(ReportingDataset(dataset, split), batch_size=batch_size, sampler=sampler,
                      collate_fn=functools.partial(_collate_or_failure, dataset.collator),
                      num_workers=config.num_workers, pin_memory=device.type == 'cuda', persistent_workers=False)


def to_device(value, device: torch.device):
    if torch.is_tensor(value):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value


# ---------------------------------------------------------------------------------------------------------------
# the two loops

def train_one_epoch(model: nn.Module, criterion: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, device: torch.device, epoch: int, config: Config,
                    stop: StopRequest, progress: Optional[dict] = None) -> dict:
    """One epoch, or what is left of it: `progress` is what an interrupted epoch had done
    (`{'iteration', 'loss_sums', 'count'}`, saved in its checkpoint). Returns the progress made; `'stopped'` is
    true when a stop was requested before the last iteration."""
    model.train()
    criterion.train()
    progress = dict(progress or {'iteration': 0, 'loss_sums': {}, 'count': 0}, stopped=False)
    start = progress['iteration']
    bar = tqdm(loader, desc=f'epoch {epoch}', disable=not is_main_process(), dynamic_ncols=True,
               initial=start, total=start + len(loader))
    for iteration, batch in enumerate(bar, start=start + 1):
        batch = check_batch(batch)
        samples = batch['samples'].to(device)
        valid_indices = batch['valid_indices']
        targets = to_device([batch['targets'][i] for i in valid_indices.tolist()], device)
        with autocast(config, device, training=True):
            outputs = model(samples, valid_indices.to(device), batch['text_queries'])
            loss_dict = criterion(outputs, targets)
            loss = sum(loss_dict[k] * criterion.weight_dict[k] for k in loss_dict if k in criterion.weight_dict)
        reduced = reduce_mean({**loss_dict, 'loss': loss.detach()})
        if not all(math.isfinite(v) for v in reduced.values()):
            bad = {k: v for k, v in reduced.items() if not math.isfinite(v)}
            raise RunError(f'non-finite loss at epoch {epoch} iteration {iteration}: {bad} (all losses: {reduced}); '
                           'the run stopped and its checkpoints are untouched')
        # zeroed, not freed: the gradients keep their memory from step to step (as in the original, whose PyTorch
        # zeroed them) instead of being re-allocated among the activations, which fragments the CPU heap
        optimizer.zero_grad(set_to_none=False)
        scaler.scale(loss).backward()
        if config.clip_max_norm > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_max_norm)
        scaler.step(optimizer)
        scaler.update()
        sums = progress['loss_sums']
        for k, v in reduced.items():
            sums[k] = sums.get(k, 0.0) + v
        progress.update(iteration=iteration, count=progress['count'] + 1)
        bar.set_postfix(loss=f'{reduced["loss"]:.4f}', lr=f'{optimizer.param_groups[0]["lr"]:.2e}')
        if iteration < start + len(loader) and stop.agreed(device):
            progress['stopped'] = True
            break
    return progress


def mean_losses(progress: dict) -> Dict[str, float]:
    return {k: v / progress['count'] for k, v in progress['loss_sums'].items()}


def reduce_mean(loss_dict: Dict[str, torch.Tensor]) -> Dict[str, float]:
    """Mean of each loss over the processes, as Python floats (for logging and the finiteness check)."""
    keys = sorted(loss_dict)
    values = torch.stack([loss_dict[k].detach().float() for k in keys])
    if dist.is_initialized():
        dist.all_reduce(values)
        values /= get_world_size()
    return dict(zip(keys, values.tolist()))


@torch.inference_mode()
def evaluation_outputs(model: nn.Module, batch: dict, device: torch.device, config: Config) -> dict:
    """The network's last-layer outputs for a batch's queries, each video encoded once for all its queries, the
    masks as their factors (`models.postprocessing.mask_logits`). With `eval_window_size`, whole videos longer than
    that are run in windows (`datasets.video.window_layout`) whose outputs are put together on the CPU."""
    samples, queries = batch['samples'], batch['text_queries']
    query_videos, valid_indices = batch['query_videos'].to(device), batch['valid_indices']
    num_frames = samples.tensors.shape[0]
    if config.eval_window_size is None or num_frames <= config.eval_window_size:
        with autocast(config, device, training=False):
            return model.segment(samples.to(device), valid_indices.to(device), queries, query_videos,
                                 config.query_batch, factored_masks=True)
    if not torch.equal(valid_indices, torch.arange(num_frames)):
        raise RunError('eval_window_size cuts whole videos into windows; this dataset evaluates chosen frames '
                       '(set eval_window_size: null)')
    parts = []
    for window in window_layout(num_frames, config.eval_window_size):
        part = NestedTensor(samples.tensors[window.start:window.end], samples.mask[window.start:window.end])
        with autocast(config, device, training=False):
            outputs = model.segment(part.to(device), torch.arange(window.end - window.start, device=device),
                                    queries, query_videos, config.query_batch, factored_masks=True)
        parts.append({key: value[window.first_output - window.start:].cpu() for key, value in outputs.items()})
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


def evaluate(model: nn.Module, evaluator: Evaluator, loader: DataLoader, device: torch.device, config: Config,
             description: str, stop: Optional[StopRequest] = None) -> Optional[dict]:
    """Run the network on every batch of the loader and hand the final layer's outputs for the batch's queries (fp32,
    also under bfloat16 autocast) to the evaluator. Returns its metrics on the main process, None elsewhere.

    With `stop`, a stop signal ends the evaluation after the batch (EvaluationStopped, on every process: they agree
    once their loops are over, as their shares may differ by a batch)."""
    model.eval()
    batches = 0
    for batch in tqdm(loader, desc=description, disable=not is_main_process(), dynamic_ncols=True):
        batch = check_batch(batch)
        evaluator.update(batch, evaluation_outputs(model, batch, device, config))
        batches += 1
        if stop is not None and stop.signum is not None:
            break
    if stop is not None and stop.agreed(device):
        raise EvaluationStopped(batches, len(loader))
    return evaluator.summarize()


# ---------------------------------------------------------------------------------------------------------------
# checkpoints and logs

def checkpoint_contents(model, optimizer, scheduler, scaler, config, epoch, best_key, best, all_rng_states,
                        **extra) -> dict:
    """The original's checkpoint keys plus what resuming needs."""
    return {'epoch': epoch, 'total_epochs': config.epochs, 'model_state_dict': model.state_dict(),
            'optimizer_state_dict': optimizer.state_dict(), 'scheduler_state_dict': scheduler.state_dict(),
            'grad_scaler_state_dict': scaler.state_dict(), best_key: best, 'config': config.to_dict(),
            'rng_states': all_rng_states, **extra}


def link_or_copy(source: Path, target: Path):
    """Make `target` the same file as `source` (a hard link where possible), replacing it atomically."""
    temporary = target.with_name(f'.{target.name}.tmp')
    with writing(target, 'checkpoint'):
        try:
            temporary.unlink(missing_ok=True)
            try:
                os.link(source, temporary)
            except OSError:
                shutil.copyfile(source, temporary)
            os.replace(temporary, target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise


def prune_epoch_checkpoints(checkpoint_dir: Path):
    epoch_files = sorted((p for p in checkpoint_dir.glob('*.pth.tar') if p.name.split('.')[0].isdigit()),
                         key=lambda p: int(p.name.split('.')[0]))
    for old in epoch_files[:-KEEP_EPOCH_CHECKPOINTS]:
        old.unlink()


def format_table(values: dict) -> str:
    width = max(len(k) for k in values)
    return '\n'.join(f'  {k:<{width}}  {v:.4f}' if isinstance(v, float) else f'  {k:<{width}}  {v}'
                     for k, v in values.items())


def record_metrics(run_dir: Path, epoch: int, eval_metrics: dict, train_losses: Optional[dict] = None,
                   wandb_run=None):
    """Print the metrics as a table, write metrics_epoch_<n>.json and append a line to metrics.jsonl."""
    logger.info(f'epoch {epoch} evaluation:\n{format_table(eval_metrics)}')
    path = run_dir / f'metrics_epoch_{epoch}.json'
    with writing(path, 'metrics file'):
        atomic_write(path, lambda f: f.write(json.dumps({'epoch': epoch, **eval_metrics}, indent=2)), mode='w')
    line = {'epoch': epoch, 'metrics': eval_metrics}
    if train_losses is not None:
        line['train_losses'] = train_losses
    with writing(run_dir / 'metrics.jsonl', 'metrics file'), open(run_dir / 'metrics.jsonl', 'a') as f:
        f.write(json.dumps(line) + '\n')
    if wandb_run is not None:
        wandb_run.log({**{f'eval/{k}': v for k, v in eval_metrics.items() if isinstance(v, (int, float))},
                       **{f'train/{k}': v for k, v in (train_losses or {}).items()}}, step=epoch)


def start_wandb(config: Config, run_dir: Path):
    if config.wandb_mode == 'disabled' or not is_main_process():
        return None
    try:
        import wandb
    except ImportError as error:
        raise RunError(f"wandb_mode is '{config.wandb_mode}' but wandb is not installed: pip install wandb, "
                       "or set wandb_mode: disabled") from error
    return wandb.init(project='mttr', config=config.to_dict(), mode=config.wandb_mode, dir=str(run_dir))


# ---------------------------------------------------------------------------------------------------------------
# the run directory

class RunDirClaim:
    """A run directory locked for one run (see `claim_run_dir`); `release` ends the claim."""

    def __init__(self, path: Path, lock: DirectoryLock, created: bool):
        self.path, self.lock, self.created = path, lock, created

    def release(self):
        self.lock.release()
        if self.created:
            try:
                self.path.rmdir()  # only when empty: the run stopped before writing anything
            except OSError:
                pass


def _os_reason(error: OSError) -> str:
    return error.strerror or error_message(error)


def claim_run_dir(run_dir, resume: Optional[str] = None, overwrite: bool = False, running_mode: str = 'train',
                  unique: bool = False) -> RunDirClaim:
    """Create (if need be) and lock the run directory for one run, before the run writes anything there.

    Refused, with a UsageError: a path that is or lies below a file, or that cannot be created or written; a
    directory locked by a live run (its pid is named); a directory that holds a run (config.yaml or checkpoints/),
    unless `resume` is one of its files or `overwrite` is given (the run then deletes the previous run's files
    once it has checked its inputs). `unique`: the name is a default one, `<name>_2`, `<name>_3`, ... are taken
    when another run created it first. Temporary files that an interrupted write left in the directory are
    removed (the lock tells that no live run is writing them)."""
    run_dir = Path(run_dir)
    check_directory_path(run_dir, 'run directory')
    created = False
    try:
        if unique:
            base = run_dir
            for n in itertools.count(2):
                try:
                    run_dir.mkdir(parents=True)
                    break
                except FileExistsError:
                    run_dir = base.with_name(f'{base.name}_{n}')
            created = True
        elif not run_dir.is_dir():
            run_dir.mkdir(parents=True, exist_ok=True)
            created = True
    except OSError as error:
        raise UsageError(f'cannot create the run directory {run_dir}: {_os_reason(error)}') from error
    lock = DirectoryLock(run_dir)
    try:
        previous = lock.acquire()
    except (LockHeld, OSError) as error:
        if created:
            run_dir.rmdir()
        if isinstance(error, LockHeld):
            raise UsageError(f'run directory {run_dir} is in use by another run ({describe_holder(error.holder)}); '
                             'wait for it to end or choose another --output_dir') from None
        raise UsageError(f'cannot write into the run directory {run_dir}: {_os_reason(error)}') from error
    claim = RunDirClaim(run_dir, lock, created)
    try:
        if previous:
            print(f'note: {lock.path} was left by {describe_holder(previous)}, which is no longer running; '
                  'taking it over', file=sys.stderr)
        found = [name for name in RUN_MARKERS if (run_dir / name).exists()]
        resumes_here = resume is not None and Path(resume).resolve().is_relative_to(run_dir.resolve())
        if found and not overwrite and not resumes_here:
            what = f'run directory {run_dir} already holds a run ({", ".join(found)})'
            if running_mode == 'train':
                raise UsageError(f'{what}: continue it with --resume {run_dir / "checkpoints" / "last.pth.tar"}, '
                                 'choose another --output_dir, or give --overwrite to delete its files first')
            raise UsageError(f'{what}: evaluate into another --output_dir, or give --overwrite to delete its files '
                             'first')
        remove_stale_temporary_files(run_dir)
    except BaseException:
        claim.release()
        raise
    return claim


def remove_stale_temporary_files(run_dir: Path):
    for folder in TEMPORARY_FILE_FOLDERS:
        for path in sorted((run_dir / folder).glob('.*.tmp')):
            if path.is_file():
                size = path.stat().st_size
                path.unlink()
                print(f'note: removed {path} ({size / 2 ** 20:.1f} MiB), left by an interrupted write',
                      file=sys.stderr)


def remove_previous_run(run_dir: Path):
    """--overwrite: delete the files a previous run wrote into `run_dir` (RUN_OUTPUTS), nothing else."""
    removed = []
    for pattern in RUN_OUTPUTS:
        for path in sorted(run_dir.glob(pattern)):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path.name)
    if removed:
        logger.info(f'--overwrite: removed the previous run\'s {", ".join(removed)} from {run_dir}')


def write_config(config: Config, path: Path):
    """config.yaml, replaced atomically (a full disk leaves the previous one of a resumed run intact)."""
    temporary = path.with_name(f'.{path.name}.tmp')
    with writing(path, 'config'):
        try:
            save_config(config, temporary)
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise


def open_run_dir(config: Config, run_dir: Path, replace_run: bool):
    """The run has checked its checkpoint, config and data: from here on it writes into its directory."""
    if is_main_process():
        with writing(run_dir, 'run directory'):
            run_dir.mkdir(parents=True, exist_ok=True)
        if replace_run:
            remove_previous_run(run_dir)
        write_config(config, run_dir / 'config.yaml')
    if dist.is_initialized():
        dist.barrier()
    log_to_file(run_dir)


# ---------------------------------------------------------------------------------------------------------------
# the run

def run(config: Config, rank: int, world_size: int, device: str, backend: Optional[str] = None,
        resume: Optional[str] = None, replace_run: bool = False) -> str:
    """Train or evaluate as `config.running_mode` says. Returns 'done', 'interrupted' (a stop signal: training
    saved a resumable checkpoint, an evaluation saved nothing) or 'stopped' (a second signal: stopped at once).

    Nothing is written into the run directory before the checkpoint, the config and the data have been checked.
    `replace_run`: delete a previous run's files from the directory first (main.py's --overwrite)."""
    device = torch.device(device)
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world_size)
    stop = StopRequest(training=config.running_mode == 'train')
    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        # e.g. under torchrun every node picks a time-stamped name: use rank 0's
        config.output_dir = broadcast_object(config.output_dir)
        run_dir = Path(config.output_dir)
        setup_logging()
        try:
            return _run(config, rank, world_size, device, run_dir, resume, stop, replace_run)
        except WriteError as error:
            raise RunError(f'{error}; the run stopped (the files written before are intact)') from error
        except StopNow:
            if is_main_process():
                if config.running_mode == 'train':
                    last = run_dir / 'checkpoints' / 'last.pth.tar'
                    saved = (f'the latest checkpoint is {last}' if last.is_file() else
                             'no checkpoint had been written yet')
                else:
                    saved = 'an evaluation saves no checkpoint and no metrics'
                logger.info(f'stopped at once by a second {signal_name(stop.signum)}: nothing was saved '
                            f'({saved})')
            return 'stopped'
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if dist.is_initialized():
            dist.destroy_process_group()


def _run(config: Config, rank: int, world_size: int, device: torch.device, run_dir: Path, resume: Optional[str],
         stop: StopRequest, replace_run: bool) -> str:
    seed_everything(config.seed + rank)
    model, criterion = build_or_fail(build_network_and_criterion, config)
    model.to(device)
    criterion.to(device)
    loaded = load_weights_or_fail(model, config.checkpoint_path) if config.checkpoint_path else {}
    if config.compile_model:
        model.compile()  # in place: the state_dict keeps its keys

    train_dataset = build_or_fail(datasets.build_dataset, 'train', config) if config.running_mode == 'train' else None
    test_dataset = build_or_fail(datasets.build_dataset, 'test', config)
    test_loader = make_loader(test_dataset, config, config.eval_batch_size,
                              ShardSampler(test_dataset, rank, world_size), device)

    def evaluation(epoch: int, stop: Optional[StopRequest] = None) -> Tuple[Evaluator, Optional[dict]]:
        evaluator = build_or_fail(datasets.build_evaluator, config, test_dataset, run_dir, epoch)
        return evaluator, evaluate(model, evaluator, test_loader, device, config, f'evaluating epoch {epoch}', stop)

    if config.running_mode == 'eval':
        epoch = loaded.get('epoch', 0) if isinstance(loaded, dict) else 0
        open_run_dir(config, run_dir, replace_run)
        logger.info(f'run directory: {run_dir} ({world_size} process(es), {device.type})')
        wandb_run = start_wandb(config, run_dir)
        try:
            _, eval_metrics = evaluation(epoch, stop)
        except EvaluationStopped as stopped:
            logger.info(f'stopped by {signal_name(stop.signum)} after {stopped.batches} of {stopped.total} batches: '
                        f'nothing was saved (an evaluation saves no checkpoint, and no metrics when it is cut '
                        f'short; outputs it wrote under {run_dir} are incomplete)')
            return 'interrupted'
        if is_main_process():
            record_metrics(run_dir, epoch, eval_metrics, wandb_run=wandb_run)
            logger.info(f'evaluated {config.checkpoint_path}; metrics in {run_dir}')
        return 'done'

    ddp_model = model
    if world_size > 1:
        ddp_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == 'cuda' else None)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    # gradient scaling for float16 autocast only
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype(config, device, training=True) == torch.float16)
    # (evaluators write nothing until they are used: this one gives the best-checkpoint rule from the start)
    evaluator = build_or_fail(datasets.build_evaluator, config, test_dataset, run_dir, 0)
    start_epoch, resumed_progress, best = 0, None, None
    if resume:
        start_epoch, resumed_progress, best = resume_from(resume, model, optimizer, scheduler, scaler, rank,
                                                          world_size, evaluator.checkpoint_key)
    open_run_dir(config, run_dir, replace_run)
    logger.info(f'run directory: {run_dir} ({world_size} process(es), {device.type})')
    if resume:
        logger.info(f'resumed from {resume}: epoch {start_epoch}' +
                    (f', iteration {resumed_progress["iteration"]}' if resumed_progress else ''))
    wandb_run = start_wandb(config, run_dir)
    train_sampler = ResumableDistributedSampler(train_dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                                seed=config.seed)
    checkpoint_dir = run_dir / 'checkpoints'
    if is_main_process():
        with writing(checkpoint_dir, 'checkpoint folder'):
            checkpoint_dir.mkdir(exist_ok=True)
    run_started, best_epoch, best_metrics = time.time(), None, None
    for epoch in range(start_epoch, config.epochs):
        train_sampler.set_epoch(epoch)
        progress = resumed_progress if epoch == start_epoch else None
        train_sampler.skip = progress['iteration'] * config.batch_size if progress else 0
        train_loader = make_loader(train_dataset, config, config.batch_size, train_sampler, device)
        started = time.time()
        progress = train_one_epoch(ddp_model, criterion, train_loader, optimizer, scaler, device, epoch, config,
                                   stop, progress)
        if progress['stopped']:
            all_states = all_gather_lists([rng_states()])
            if is_main_process():
                path = checkpoint_dir / 'last.pth.tar'
                del progress['stopped']
                save_checkpoint(checkpoint_contents(model, optimizer, scheduler, scaler, config, epoch - 1,
                                                    evaluator.checkpoint_key, best, all_states,
                                                    epoch_in_progress=epoch, progress=progress), path)
                logger.info(f'stopped by {signal_name(stop.signum)} at epoch {epoch} iteration '
                            f'{progress["iteration"]}; '
                            f'resumable checkpoint: {path}\n'
                            f'continue with: python main.py -rm train -c ... --resume {path}')
            return 'interrupted'
        losses = mean_losses(progress)
        scheduler.step()
        logger.info(f'epoch {epoch} training ({time.time() - started:.0f} s):\n{format_table(losses)}')
        evaluator, eval_metrics = evaluation(epoch)
        is_best, score = None, None
        if is_main_process():  # (only the main process has the metrics)
            score = evaluator.best_score(eval_metrics, losses)
            is_best = best is None or (score > best if evaluator.higher_is_better else score < best)
        is_best, score = broadcast_object((is_best, score))
        if is_best:
            best, best_epoch, best_metrics = score, epoch, eval_metrics
        all_states = all_gather_lists([rng_states()])
        if is_main_process():
            record_metrics(run_dir, epoch, eval_metrics, losses, wandb_run)
            path = checkpoint_dir / f'{epoch}.pth.tar'
            save_checkpoint(checkpoint_contents(model, optimizer, scheduler, scaler, config, epoch,
                                                evaluator.checkpoint_key, best, all_states), path)
            link_or_copy(path, checkpoint_dir / 'last.pth.tar')
            if is_best:
                link_or_copy(path, checkpoint_dir / 'best.pth.tar')
            prune_epoch_checkpoints(checkpoint_dir)
        if stop.agreed(device):
            logger.info(f'stopped by {signal_name(stop.signum)} after epoch {epoch}; resume with --resume '
                        f'{checkpoint_dir / "last.pth.tar"}')
            return 'interrupted'
    if is_main_process():
        if best_epoch is None:
            summary = f'best score {best} (before this run resumed)'
        else:
            summary = (f'best {evaluator.best_metric} {best:.4f} at epoch {best_epoch} '
                       f'({evaluator.describe(best_metrics)})')
        logger.info(f'training finished in {(time.time() - run_started) / 60:.1f} min: {summary}\n'
                    f'  run directory:   {run_dir} (config.yaml, log.txt, metrics.jsonl, evaluation outputs)\n'
                    f'  best checkpoint: {checkpoint_dir / "best.pth.tar"}')
    return 'done'


def build_network_and_criterion(config: Config) -> Tuple[nn.Module, nn.Module]:
    return build_network(config), criterion_module.build(config)


def build_or_fail(build, *args, **kwargs):
    """Model, dataset and evaluator builders report bad configs and dataset layouts with these; main.py prints
    them."""
    try:
        return build(*args, **kwargs)
    except (OSError, ValueError, RuntimeError) as error:  # FileNotFoundError is an OSError
        raise RunError(str(error)) from error


def load_weights_or_fail(model: nn.Module, path: str) -> dict:
    try:
        return load_model_weights(model, path)
    except (FileNotFoundError, RuntimeError, KeyError, ValueError) as error:
        raise RunError(error_message(error)) from error


RESUME_KEYS = ('epoch', 'model_state_dict', 'optimizer_state_dict', 'scheduler_state_dict',
               'grad_scaler_state_dict', 'rng_states')


def resume_from(path: str, model: nn.Module, optimizer, scheduler, scaler, rank: int, world_size: int,
                best_key: str) -> Tuple[int, Optional[dict], Optional[float]]:
    """Restore a training run; returns (epoch to start, the progress made in it or None, the best score, stored
    under `best_key`, the evaluator's name for it)."""
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
            logger.info(f'{path} was written by {len(states)} process(es), this run has {world_size}: '
                        'random states are re-seeded')
        best = checkpoint.get(best_key)
        if 'epoch_in_progress' in checkpoint:
            return int(checkpoint['epoch_in_progress']), dict(checkpoint['progress']), best
        return int(checkpoint['epoch']) + 1, None, best
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError) as error:
        raise RunError(f'{path} cannot resume a run: its epoch, progress or random states are not as this program '
                       f'writes them ({type(error).__name__}: {error_message(error)})') from error

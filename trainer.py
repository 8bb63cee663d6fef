"""One training or evaluation run: the optimisation loop, the evaluation loop, checkpoints and logs.

`run()` is called once per process (by main.py directly, by its spawned workers, or under torchrun). It names no
dataset: the loaders and evaluators come from `datasets.build_dataset` / `datasets.build_evaluator`, and each
evaluator says which of its metrics picks the best checkpoint.
"""
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
from models import build_network, criterion as criterion_module, load_model_weights
from utils import (all_gather_lists, autocast, autocast_dtype, broadcast_object, error_message, get_world_size,
                   is_main_process, rng_states, save_checkpoint, set_rng_states)

KEEP_EPOCH_CHECKPOINTS = 15
logger = logging.getLogger('mttr')


class RunError(Exception):
    """A run cannot go on (bad checkpoint, non-finite loss, ...); main.py prints it in one line."""


class StopRequest:
    """Set by SIGTERM/SIGINT (cluster preemption, Ctrl-C): training saves a resumable checkpoint and stops."""

    def __init__(self):
        self.signum = None

    def __call__(self, signum, _frame):
        if self.signum is not None:  # a second signal: stop at once
            raise KeyboardInterrupt(f'signal {signum} received twice')
        self.signum = signum
        if is_main_process():
            print(f'\nsignal {signum}: saving a resumable checkpoint at the end of this iteration '
                  '(send it again to stop at once)', file=sys.stderr)

    def agreed(self, device: torch.device) -> bool:
        """True on every process as soon as any process got a signal, so all stop at the same iteration."""
        flag = torch.tensor([float(self.signum is not None)], device=device)
        if dist.is_initialized():
            dist.all_reduce(flag)
        return flag.item() > 0


# ---------------------------------------------------------------------------------------------------------------
# setup

def setup_logging(run_dir: Path):
    logger.handlers.clear()
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if is_main_process():
        formatter = logging.Formatter('%(asctime)s %(message)s', '%Y-%m-%d %H:%M:%S')
        for handler in (logging.StreamHandler(sys.stdout), logging.FileHandler(run_dir / 'log.txt')):
            handler.setFormatter(formatter)
            logger.addHandler(handler)
    else:
        logger.addHandler(logging.NullHandler())


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


def make_loader(dataset: Dataset, config: Config, batch_size: int, sampler: Sampler,
                device: torch.device) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=dataset.collator,
                      num_workers=config.num_workers, pin_memory=device.type == 'cuda',
                      persistent_workers=False)


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
def evaluate(model: nn.Module, evaluator: Evaluator, loader: DataLoader, device: torch.device, config: Config,
             description: str) -> Optional[dict]:
    """Run the network on every batch of the loader and hand the final layer's outputs for the batch's queries (fp32,
    also under bfloat16 autocast) to the evaluator. Returns its metrics on the main process, None elsewhere."""
    model.eval()
    for batch in tqdm(loader, desc=description, disable=not is_main_process(), dynamic_ncols=True):
        with autocast(config, device, training=False):  # each video encoded once for all its queries
            outputs = model.segment(batch['samples'].to(device), batch['valid_indices'].to(device),
                                    batch['text_queries'], batch['query_videos'].to(device), config.query_batch)
        evaluator.update(batch, outputs)
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
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
    except OSError:
        shutil.copyfile(source, temporary)
    os.replace(temporary, target)


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
    (run_dir / f'metrics_epoch_{epoch}.json').write_text(json.dumps({'epoch': epoch, **eval_metrics}, indent=2))
    line = {'epoch': epoch, 'metrics': eval_metrics}
    if train_losses is not None:
        line['train_losses'] = train_losses
    with open(run_dir / 'metrics.jsonl', 'a') as f:
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
# the run

def run(config: Config, rank: int, world_size: int, device: str, backend: Optional[str] = None,
        resume: Optional[str] = None) -> str:
    """Train or evaluate as `config.running_mode` says. Returns 'done' or 'interrupted'."""
    device = torch.device(device)
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world_size)
    try:
        # e.g. under torchrun every node picks a time-stamped name: use rank 0's
        config.output_dir = broadcast_object(config.output_dir)
        run_dir = Path(config.output_dir)
        if is_main_process():
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, run_dir / 'config.yaml')
        if dist.is_initialized():
            dist.barrier()
        setup_logging(run_dir)
        logger.info(f'run directory: {run_dir} ({world_size} process(es), {device.type})')
        stop = StopRequest()
        previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            return _run(config, rank, world_size, device, run_dir, resume, stop)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _run(config: Config, rank: int, world_size: int, device: torch.device, run_dir: Path, resume: Optional[str],
         stop: StopRequest) -> str:
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
    wandb_run = start_wandb(config, run_dir)

    def evaluation(epoch: int) -> Tuple[Evaluator, Optional[dict]]:
        evaluator = build_or_fail(datasets.build_evaluator, config, test_dataset, run_dir, epoch)
        return evaluator, evaluate(model, evaluator, test_loader, device, config, f'evaluating epoch {epoch}')

    if config.running_mode == 'eval':
        epoch = loaded.get('epoch', 0)
        _, eval_metrics = evaluation(epoch)
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
    start_epoch, resumed_progress, best = 0, None, None
    if resume:
        start_epoch, resumed_progress, best = resume_from(resume, model, optimizer, scheduler, scaler, rank,
                                                          world_size)
        logger.info(f'resumed from {resume}: epoch {start_epoch}' +
                    (f', iteration {resumed_progress["iteration"]}' if resumed_progress else ''))
    train_sampler = ResumableDistributedSampler(train_dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                                seed=config.seed)
    checkpoint_dir = run_dir / 'checkpoints'
    if is_main_process():
        checkpoint_dir.mkdir(exist_ok=True)
    # (evaluators write nothing until they are used: this one gives the best-checkpoint rule from the start)
    evaluator = build_or_fail(datasets.build_evaluator, config, test_dataset, run_dir, start_epoch)
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
                logger.info(f'stopped by signal {stop.signum} at epoch {epoch} iteration {progress["iteration"]}; '
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
            logger.info(f'stopped by signal {stop.signum} after epoch {epoch}; resume with --resume '
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


def resume_from(path: str, model: nn.Module, optimizer, scheduler, scaler, rank: int,
                world_size: int) -> Tuple[int, Optional[dict], Optional[float]]:
    """Restore a training run; returns (epoch to start, the progress made in it or None, best score)."""
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
    states = checkpoint['rng_states']
    if len(states) == world_size:
        set_rng_states(states[rank])
    else:
        logger.info(f'{path} was written by {len(states)} process(es), this run has {world_size}: '
                    'random states are re-seeded')
    best = checkpoint.get('best_mAP', checkpoint.get('best_loss', checkpoint.get('best_score')))
    if 'epoch_in_progress' in checkpoint:
        return checkpoint['epoch_in_progress'], checkpoint['progress'], best
    return checkpoint['epoch'] + 1, None, best

"""One training or evaluation run of MTTR in one process: the training loop, the evaluation loop and the epoch
loop around them.

`run()` is the target of engine.launch (one call per process). It names no dataset: the loaders and evaluators
come from `datasets.build_dataset` / `datasets.build_evaluator`, and each evaluator says which of its metrics
picks the best checkpoint. The run's directory, checkpoints, stop signals and loaders are the engine's
(engine/__init__.py lists its modules).
"""
import math
import random
import time
from typing import Dict, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import datasets
from config import Config
from datasets.evaluator import Evaluator
from engine.checkpoints import (Resumed, checkpoint_contents, load_weights_or_fail, resume_from, rng_states,
                                set_rng_states)
from engine.launch import Process
from engine.loaders import (LoaderWorkerDied, ResumableDistributedSampler, ShardSampler, check_batch, make_loader,
                            reporting_worker_deaths, to_device)
from engine.logs import format_table, logger, setup_logging
from engine.provenance import provenance
from engine.run_directory import RunDirectory
from engine.stopping import StopNow, StopRequest, signal_name
from models import build_network, criterion as criterion_module
from models.windows import window_layout
from utils import (NestedTensor, RunError, WriteError, all_gather_lists, autocast, autocast_dtype,
                   broadcast_object, get_world_size, is_main_process)


class EvaluationStopped(Exception):
    def __init__(self, batches: int, total: int):
        super().__init__(batches, total)
        self.batches, self.total = batches, total


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


def build_network_and_criterion(config: Config) -> Tuple[nn.Module, nn.Module]:
    return build_network(config), criterion_module.build(config)


def build_or_fail(build, *args, **kwargs):
    """Model, dataset and evaluator builders report bad configs and dataset layouts with these; main.py prints
    them."""
    try:
        return build(*args, **kwargs)
    except (OSError, ValueError, RuntimeError) as error:  # FileNotFoundError is an OSError
        raise RunError(str(error), details=getattr(error, 'layout', None)) from error


# ---------------------------------------------------------------------------------------------------------------
# the two loops

def train_one_epoch(model: nn.Module, criterion: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, device: torch.device, epoch: int, config: Config,
                    stop: StopRequest, progress: Optional[dict] = None, random_states: Optional[dict] = None) -> dict:
    """One epoch, or what is left of it: `progress` is what an interrupted epoch had done
    (`{'iteration', 'loss_sums', 'count', ...}`, saved in its checkpoint). Returns the progress made; `'stopped'` is
    true when a stop was requested before the last iteration. `random_states`: this process's random states where the
    epoch stopped, set once the loader's iterator exists (creating it draws its workers' seed from them), so that
    the epoch goes on as if it had never stopped. A loader worker that dies ends it with a LoaderWorkerDied."""
    model.train()
    criterion.train()
    progress = dict(progress or {'iteration': 0, 'loss_sums': {}, 'count': 0}, stopped=False)
    start = progress['iteration']
    with reporting_worker_deaths('training data', config.num_workers, '-bs', config.batch_size):
        batches = iter(loader)
        if random_states is not None:
            set_rng_states(random_states)
        with tqdm(batches, desc=f'epoch {epoch}', disable=not is_main_process(), dynamic_ncols=True,
                  initial=start, total=start + len(loader)) as bar:
            for iteration, batch in enumerate(bar, start=start + 1):
                batch = check_batch(batch)
                samples = batch['samples'].to(device)
                valid_indices = batch['valid_indices']
                targets = to_device([batch['targets'][i] for i in valid_indices.tolist()], device)
                with autocast(config, device, training=True):
                    outputs = model(samples, valid_indices.to(device), batch['text_queries'])
                    loss_dict = criterion(outputs, targets)
                    loss = sum(loss_dict[k] * criterion.weight_dict[k] for k in loss_dict
                               if k in criterion.weight_dict)
                reduced = reduce_mean({**loss_dict, 'loss': loss.detach()})
                if not all(math.isfinite(v) for v in reduced.values()):
                    bad = {k: v for k, v in reduced.items() if not math.isfinite(v)}
                    raise RunError(f'non-finite loss at epoch {epoch} iteration {iteration}: {bad} (all losses: '
                                   f'{reduced}); the run stopped and its checkpoints are untouched')
                # zeroed, not freed: the gradients keep their memory from step to step (as in the original, whose
                # PyTorch zeroed them) instead of being re-allocated among the activations, which fragments the CPU
                # heap
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
    that are run in windows (`models.windows.window_layout`) whose outputs are put together on the CPU."""
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
    once their loops are over, as their shares may differ by a batch). A loader worker that dies ends it with a
    LoaderWorkerDied."""
    model.eval()
    batches = 0
    with reporting_worker_deaths('evaluation data', config.num_workers, '-ebs', config.eval_batch_size), \
            tqdm(loader, desc=description, disable=not is_main_process(), dynamic_ncols=True) as bar:
        for batch in bar:
            batch = check_batch(batch)
            evaluator.update(batch, evaluation_outputs(model, batch, device, config))
            batches += 1
            if stop is not None and stop.signum is not None:
                break
    if stop is not None and stop.agreed(device):
        raise EvaluationStopped(batches, len(loader))
    return evaluator.summarize()


# ---------------------------------------------------------------------------------------------------------------
# the run

def run(process: Process, config: Config, resume: Optional[str] = None, replace_run: bool = False,
        argv: Optional[list] = None) -> str:
    """Train or evaluate as `config.running_mode` says, as one process of the run. Returns 'done', 'interrupted'
    (a stop signal: training saved a resumable checkpoint, an evaluation saved nothing) or 'stopped' (a second
    signal: stopped at once).

    Nothing is written into the run directory before the checkpoint, the config and the data have been checked.
    `replace_run`: delete a previous run's files from the directory first (main.py's --overwrite). `argv`: the
    command line to record (default: this process's)."""
    process.stop.training = config.running_mode == 'train'
    config.output_dir = broadcast_object(config.output_dir)  # e.g. under torchrun every node picks a name: rank 0's
    run_dir = RunDirectory(config.output_dir)
    setup_logging()
    try:
        seed_everything(config.seed + process.rank)
        model, criterion = build_or_fail(build_network_and_criterion, config)
        model.to(process.device)
        criterion.to(process.device)
        loaded = load_weights_or_fail(model, config.checkpoint_path) if config.checkpoint_path else {}
        if config.compile_model:
            model.compile()  # in place: the state_dict keeps its keys
        train_dataset = build_or_fail(datasets.build_dataset, 'train', config) if config.running_mode == 'train' \
            else None
        test_dataset = build_or_fail(datasets.build_dataset, 'test', config)
        test_loader = make_loader(test_dataset, config.num_workers, config.eval_batch_size,
                                  ShardSampler(test_dataset, process.rank, process.world_size), process.device)
        run = Run(process, config, run_dir, model, criterion, test_dataset, test_loader, provenance(argv))
        if config.running_mode == 'eval':
            return run.evaluate_checkpoint(loaded.get('epoch', 0) if isinstance(loaded, dict) else 0, replace_run)
        return run.train(train_dataset, resume, replace_run)
    except WriteError as error:
        raise RunError(f'{error}; the run stopped (the files written before are intact)') from error
    except LoaderWorkerDied as died:
        last = run_dir.checkpoints.last
        saved = ('nothing (an evaluation writes its metrics when it completes): run it again'
                 if config.running_mode == 'eval' else
                 f'the latest checkpoint, {last}; --resume {last} continues from it' if last.is_file() else
                 'nothing (no checkpoint had been written yet)')
        raise LoaderWorkerDied(f'{died} Saved: {saved}') from died
    except StopNow:
        if is_main_process():
            if config.running_mode == 'train':
                saved = (f'the latest checkpoint is {run_dir.checkpoints.last}' if run_dir.checkpoints.last.is_file()
                         else 'no checkpoint had been written yet')
            else:
                saved = 'an evaluation saves no checkpoint and no metrics'
            logger.info(f'stopped at once by a second {signal_name(process.stop.signum)}: nothing was saved ({saved})')
        return 'stopped'


class Run:
    """The parts of one run, built and checked by `run`."""

    def __init__(self, process: Process, config: Config, run_dir: RunDirectory, model: nn.Module,
                 criterion: nn.Module, test_dataset: Dataset, test_loader: DataLoader, provenance: dict):
        self.process, self.config, self.run_dir = process, config, run_dir
        self.device, self.stop = process.device, process.stop
        self.model, self.criterion = model, criterion
        self.test_dataset, self.test_loader, self.provenance = test_dataset, test_loader, provenance

    def evaluation(self, epoch: int, stop: Optional[StopRequest] = None) -> Tuple[Evaluator, Optional[dict]]:
        evaluator = build_or_fail(datasets.build_evaluator, self.config, self.test_dataset, self.run_dir.path, epoch)
        return evaluator, evaluate(self.model, evaluator, self.test_loader, self.device, self.config,
                                   f'evaluating epoch {epoch}', stop)

    def open_run_dir(self, replace_run: bool):
        self.run_dir.open(self.config, replace_run, self.provenance)
        logger.info(f'run directory: {self.run_dir.path} ({self.process.world_size} process(es), '
                    f'{self.device.type})')
        return self.run_dir.start_wandb(self.config)

    def evaluate_checkpoint(self, epoch: int, replace_run: bool) -> str:
        wandb_run = self.open_run_dir(replace_run)
        try:
            _, eval_metrics = self.evaluation(epoch, self.stop)
        except EvaluationStopped as stopped:
            logger.info(f'stopped by {signal_name(self.stop.signum)} after {stopped.batches} of {stopped.total} '
                        f'batches: nothing was saved (an evaluation saves no checkpoint, and no metrics when it is '
                        f'cut short; outputs it wrote under {self.run_dir.path} are incomplete)')
            return 'interrupted'
        if is_main_process():
            self.run_dir.record_metrics(epoch, eval_metrics, wandb_run=wandb_run)
            logger.info(f'evaluated {self.config.checkpoint_path}; metrics in {self.run_dir.path}')
        return 'done'

    def train(self, train_dataset: Dataset, resume: Optional[str], replace_run: bool) -> str:
        config, model, device, checkpoints = self.config, self.model, self.device, self.run_dir.checkpoints
        ddp_model = model if self.process.world_size == 1 else \
            DistributedDataParallel(model, device_ids=[device.index] if device.type == 'cuda' else None)
        optimizer = build_optimizer(model, config)
        scheduler = build_scheduler(optimizer, config)
        # gradient scaling for float16 autocast only
        scaler = torch.amp.GradScaler(device.type,
                                      enabled=autocast_dtype(config, device, training=True) == torch.float16)
        # (evaluators write nothing until they are used: this one gives the best-checkpoint rule from the start)
        evaluator = build_or_fail(datasets.build_evaluator, config, self.test_dataset, self.run_dir.path, 0)
        state = Resumed(0, None, None) if not resume else \
            resume_from(resume, model, optimizer, scheduler, scaler, self.process.rank, self.process.world_size,
                        evaluator.checkpoint_key, logger.info, len(train_dataset), config.seed)
        wandb_run = self.open_run_dir(replace_run)
        if resume:
            logger.info(f'resumed from {resume}: epoch {state.epoch}' +
                        (f', iteration {state.progress["iteration"]}' if state.progress else ''))
        sampler = ResumableDistributedSampler(train_dataset, num_replicas=self.process.world_size,
                                              rank=self.process.rank, shuffle=True, seed=config.seed)

        def contents(epoch, **extra):
            return checkpoint_contents(model, optimizer, scheduler, scaler, config, epoch, evaluator.checkpoint_key,
                                       state.best, all_gather_lists([rng_states()]), self.provenance, **extra)

        if is_main_process():
            checkpoints.create()
        started, best_epoch, best_metrics = time.time(), None, None
        for epoch in range(state.epoch, config.epochs):
            sampler.set_epoch(epoch)
            progress = state.progress if epoch == state.epoch else None
            # (the positions of the epoch's order trained before it stopped, by any batch size and processes)
            sampler.skip = progress['samples_done'] if progress else 0
            loader = make_loader(train_dataset, config.num_workers, config.batch_size, sampler, device)
            epoch_started = time.time()
            iterations_before = progress['iteration'] if progress else 0
            progress = train_one_epoch(ddp_model, self.criterion, loader, optimizer, scaler, device, epoch, config,
                                       self.stop, progress, state.rng_states if progress else None)
            if progress.pop('stopped'):
                # (a stop comes between two full iterations, never after the last, possibly short, one)
                progress.update(samples_done=sampler.positions_after(progress['iteration'] - iterations_before,
                                                                     config.batch_size),
                                dataset_size=len(train_dataset), shuffle_seed=config.seed)
                saved = contents(epoch - 1, epoch_in_progress=epoch, progress=progress)  # (on every process)
                if is_main_process():
                    path = checkpoints.save_interrupted(saved)
                    logger.info(f'stopped by {signal_name(self.stop.signum)} at epoch {epoch} iteration '
                                f'{progress["iteration"]}; resumable checkpoint: {path}\n'
                                f'continue with: python main.py -rm train -c ... --resume {path}')
                return 'interrupted'
            losses = mean_losses(progress)
            scheduler.step()
            logger.info(f'epoch {epoch} training ({time.time() - epoch_started:.0f} s):\n{format_table(losses)}')
            evaluator, eval_metrics = self.evaluation(epoch)
            score = evaluator.best_score(eval_metrics, losses) if is_main_process() else None
            is_best = is_main_process() and (state.best is None or (
                score > state.best if evaluator.higher_is_better else score < state.best))
            is_best, score = broadcast_object((is_best, score))  # (only the main process has the metrics)
            if is_best:
                state.best, best_epoch, best_metrics = score, epoch, eval_metrics
            saved = contents(epoch)
            if is_main_process():
                self.run_dir.record_metrics(epoch, eval_metrics, losses, wandb_run)
                checkpoints.save_epoch(epoch, saved, is_best)
            if self.stop.agreed(device):
                logger.info(f'stopped by {signal_name(self.stop.signum)} after epoch {epoch}; resume with --resume '
                            f'{checkpoints.last}')
                return 'interrupted'
        if is_main_process():
            summary = f'best score {state.best} (before this run resumed)' if best_epoch is None else \
                (f'best {evaluator.best_metric} {state.best:.4f} at epoch {best_epoch} '
                 f'({evaluator.describe(best_metrics)})')
            logger.info(f'training finished in {(time.time() - started) / 60:.1f} min: {summary}\n'
                        f'  run directory:   {self.run_dir.path} (config.yaml, log.txt, metrics.jsonl, evaluation '
                        f'outputs)\n  best checkpoint: {checkpoints.best}')
        return 'done'

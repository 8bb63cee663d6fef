"""One training or evaluation run: data, model, optimisation loop, evaluation, checkpoints and logs.

`run()` is called once per process (by main.py directly, by its spawned workers, or under torchrun).
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
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from tqdm import tqdm

import datasets
import metrics
from datasets.files import SubsetWarning
from config import save_config
from models import build_model, load_model_weights
from tools.make_submission_zip import write_submission_zip
from utils import (autocast, autocast_dtype, get_world_size, is_main_process, keep_freed_memory_in_process,
                   save_checkpoint)

KEEP_EPOCH_CHECKPOINTS = 15
PICTURE_MIN_HEIGHT = 240
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

    def agreed(self, device):
        """True on every process as soon as any process got a signal, so all stop at the same iteration."""
        flag = torch.tensor([float(self.signum is not None)], device=device)
        if dist.is_initialized():
            dist.all_reduce(flag)
        return flag.item() > 0


# ---------------------------------------------------------------------------------------------------------------
# setup

def setup_logging(run_dir):
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


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_states():
    """This process's random states, as types a weights_only checkpoint can hold."""
    name, keys, position, has_gauss, cached_gauss = np.random.get_state()
    states = {'python': random.getstate(), 'torch': torch.get_rng_state(),
              'numpy': (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gauss)}
    if torch.cuda.is_available():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states):
    version, internal, gauss = states['python']
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached_gauss = states['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gauss))
    torch.set_rng_state(states['torch'])
    if 'cuda' in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states['cuda'])


def build_optimizer(model, config):
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


class ShardSampler(Sampler):
    """Evaluation: every process takes every world_size-th sample, so each sample is evaluated exactly once
    (DistributedSampler would pad the last batch with duplicates)."""

    def __init__(self, dataset, rank, world_size):
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


def make_loader(dataset, config, batch_size, sampler, device):
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=dataset.collator,
                      num_workers=config.num_workers, pin_memory=device.type == 'cuda',
                      persistent_workers=False)


# ---------------------------------------------------------------------------------------------------------------
# batches

def to_device(value, device):
    if torch.is_tensor(value):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value


def annotated_frames(targets):
    """The positions of the annotated frames in a batch's targets (A2D/JHMDB: the centre frame)."""
    return torch.tensor([i for i, frame in enumerate(targets) if None not in frame], dtype=torch.long)


def flatten_frames_and_videos(outputs, targets):
    """[T, B, ...] outputs and T lists of B targets -> [T*B, ...] and one list, frame-major."""
    outputs = {k: v.flatten(0, 1) for k, v in outputs.items() if torch.is_tensor(v)}
    return outputs, [t for frame in targets for t in frame]


# ---------------------------------------------------------------------------------------------------------------
# the two loops

def train_one_epoch(model, criterion, loader, optimizer, scaler, device, epoch, config, stop, progress=None):
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
        valid_indices = annotated_frames(batch['targets'])
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


def mean_losses(progress):
    return {k: v / progress['count'] for k, v in progress['loss_sums'].items()}


def reduce_mean(loss_dict):
    """Mean of each loss over the processes, as Python floats (for logging and the finiteness check)."""
    keys = sorted(loss_dict)
    values = torch.stack([loss_dict[k].detach().float() for k in keys])
    if dist.is_initialized():
        dist.all_reduce(values)
        values /= get_world_size()
    return dict(zip(keys, values.tolist()))


def eval_forward(model, samples, valid_indices, text_queries, config, device):
    """The final layer's outputs, in fp32 (the post-processing's precision) also under bfloat16 autocast."""
    with autocast(config, device, training=False):
        outputs = model(samples, valid_indices.to(device), text_queries)
    return {'pred_masks': outputs['pred_masks'].float(), 'pred_is_referred': outputs['pred_is_referred'].float()}


@torch.inference_mode()
def evaluate(model, postprocessor, loader, dataset, device, config, epoch, run_dir):
    """Evaluate on the test split; returns the metrics dict on the main process (None elsewhere)."""
    model.eval()
    predictions = []
    pictures_left = config.eval_pictures if is_main_process() else 0
    bar = tqdm(loader, desc=f'evaluating epoch {epoch}', disable=not is_main_process(), dynamic_ncols=True)
    for batch in bar:
        samples = batch['samples'].to(device)
        if config.dataset_name == 'ref_youtube_vos':
            valid_indices = torch.arange(samples.tensors.shape[0])
            outputs = eval_forward(model, samples, valid_indices, batch['text_queries'], config, device)
            predictions.extend(postprocessor(outputs, batch['videos_metadata'], samples.tensors.shape[-2:]))
            continue
        valid_indices = annotated_frames(batch['targets'])
        targets = [batch['targets'][i] for i in valid_indices.tolist()]
        outputs = eval_forward(model, samples, valid_indices, batch['text_queries'], config, device)
        if pictures_left > 0:
            pictures_left -= save_evaluation_pictures(run_dir / 'pictures' / f'epoch_{epoch}', samples, valid_indices,
                                                      outputs, targets, batch['text_queries'], pictures_left)
        outputs, targets = flatten_frames_and_videos(outputs, targets)
        processed = postprocessor(outputs, resized_padded_sample_size=samples.tensors.shape[-2:],
                                  resized_sample_sizes=[t['size'] for t in targets],
                                  orig_sample_sizes=[t['orig_size'] for t in targets])
        for frame, target in zip(processed, targets):
            for score, rle in zip(frame['scores'].tolist(), frame['rle_masks']):
                predictions.append({'image_id': target['image_id'], 'category_id': 1, 'segmentation': rle,
                                    'score': score})
    if config.dataset_name == 'ref_youtube_vos':
        return write_ref_youtube_vos_predictions(predictions, run_dir, epoch)
    predictions = gather(predictions)
    if not is_main_process():
        return None
    coco_gt = metrics.read_coco_ground_truth(dataset.coco_gt_path)
    return metrics.compute_referring_metrics(coco_gt, predictions, verbose=False)


def save_evaluation_pictures(directory, samples, valid_indices, outputs, targets, text_queries, limit):
    """For up to `limit` videos of a batch: the annotated frame with the mask of the query scored most likely to
    be referred (left) and with the ground truth (right), the query above. Returns how many were written."""
    from PIL import Image

    from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD
    from inference import draw_overlay
    directory.mkdir(parents=True, exist_ok=True)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    padded_size = samples.tensors.shape[-2:]
    written = 0
    for b in range(min(limit, samples.tensors.shape[1])):
        frame_position, target = valid_indices[0].item(), targets[0][b]
        h, w = target['size'].tolist()
        frame = ((samples.tensors[frame_position, b].cpu() * std + mean).clamp(0, 1) * 255).byte()
        image = Image.fromarray(frame.permute(1, 2, 0)[:h, :w].numpy())
        referred = outputs['pred_is_referred'][0, b].softmax(-1)[:, 0]  # [N]
        best = referred.argmax().item()
        logits = torch.nn.functional.interpolate(outputs['pred_masks'][0, b, best][None, None].float(), padded_size,
                                                 mode='bilinear', align_corners=False)[0, 0, :h, :w]
        predicted = (logits.sigmoid() > 0.5).cpu().numpy()
        truth = target['masks'][target['referred_instance_idx']].cpu().numpy()
        scale = -(-PICTURE_MIN_HEIGHT // h)  # small frames are enlarged so the caption stays readable
        if scale > 1:
            image = image.resize((w * scale, h * scale), Image.NEAREST)
            predicted, truth = (m.repeat(scale, 0).repeat(scale, 1) for m in (predicted, truth))
        panels = [draw_overlay(image, predicted, f'prediction ({referred[best]:.2f}): {text_queries[b]}', (0, 200, 0)),
                  draw_overlay(image, truth, 'ground truth', (230, 40, 40))]
        name = str(target['image_id']).replace('/', '_')
        Image.fromarray(np.concatenate(panels, axis=1)).save(directory / f'{name}.png')
        written += 1
    return written


def gather(items):
    """All processes' lists concatenated, on the main process."""
    if not dist.is_initialized():
        return items
    gathered = [None] * get_world_size()
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


def write_ref_youtube_vos_predictions(predictions, run_dir, epoch):
    """Writes Annotations/<video>/<exp_id>/<frame>.png (0/255) and zips them for the competition server."""
    from PIL import Image
    out_dir = run_dir / 'validation_outputs' / f'epoch_{epoch}'
    for video in predictions:
        masks = video['pred_masks'][:, 0].numpy().astype(np.uint8) * 255
        video_dir = out_dir / 'Annotations' / video['video_id'] / str(video['exp_id'])
        video_dir.mkdir(parents=True, exist_ok=True)
        for frame_name, mask in zip(video['frame_indices'], masks):
            Image.fromarray(mask).save(video_dir / f'{frame_name}.png')
    written = sum(gather([len(predictions)]))  # every process's expressions, counted once
    if not is_main_process():
        return None
    zip_path = run_dir / 'validation_outputs' / f'submission_epoch_{epoch}.zip'
    write_submission_zip(out_dir, zip_path)
    return {'submission_zip': str(zip_path), 'expressions': written}


# ---------------------------------------------------------------------------------------------------------------
# checkpoints and logs

def checkpoint_contents(model, optimizer, scheduler, scaler, config, epoch, best, all_rng_states, **extra):
    """The original's checkpoint keys plus what resuming needs."""
    best_key = 'best_loss' if config.dataset_name == 'ref_youtube_vos' else 'best_mAP'
    return {'epoch': epoch, 'total_epochs': config.epochs, 'model_state_dict': model.state_dict(),
            'optimizer_state_dict': optimizer.state_dict(), 'scheduler_state_dict': scheduler.state_dict(),
            'grad_scaler_state_dict': scaler.state_dict(), best_key: best, 'config': config.to_dict(),
            'rng_states': all_rng_states, **extra}


def link_or_copy(source, target):
    """Make `target` the same file as `source` (a hard link where possible), replacing it atomically."""
    temporary = target.with_name(f'.{target.name}.tmp')
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
    except OSError:
        shutil.copyfile(source, temporary)
    os.replace(temporary, target)


def prune_epoch_checkpoints(checkpoint_dir):
    epoch_files = sorted((p for p in checkpoint_dir.glob('*.pth.tar') if p.name.split('.')[0].isdigit()),
                         key=lambda p: int(p.name.split('.')[0]))
    for old in epoch_files[:-KEEP_EPOCH_CHECKPOINTS]:
        old.unlink()


def format_table(values):
    width = max(len(k) for k in values)
    return '\n'.join(f'  {k:<{width}}  {v:.4f}' if isinstance(v, float) else f'  {k:<{width}}  {v}'
                     for k, v in values.items())


def record_metrics(run_dir, epoch, eval_metrics, train_losses=None, wandb_run=None):
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


def start_wandb(config, run_dir):
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

def run(config, rank, world_size, device, backend=None, resume=None):
    """Train or evaluate as `config.running_mode` says. Returns 'done' or 'interrupted'."""
    device = torch.device(device)
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    elif config.cpu_keep_freed_memory:
        keep_freed_memory_in_process()
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world_size)
    try:
        # e.g. under torchrun every node picks a time-stamped name: use rank 0's
        config.output_dir = broadcast(config.output_dir)
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


def _run(config, rank, world_size, device, run_dir, resume, stop):
    seed_everything(config.seed + rank)
    if config.synthetic_dataset:  # generated data is not a subset of A2D-Sentences: no row-count warnings
        warnings.simplefilter('ignore', SubsetWarning)
    if config.running_mode == 'train' and config.dataset_name == 'jhmdb_sentences':
        raise RunError('JHMDB-Sentences is used for evaluation only (as in the paper): run with -rm eval and an '
                       'A2D-Sentences checkpoint')
    model, criterion, postprocessor = build_or_fail(build_model, config)
    model.to(device)
    criterion.to(device)
    loaded = load_weights_or_fail(model, config.checkpoint_path) if config.checkpoint_path else {}
    if config.compile_model:
        model.compile()  # in place: the state_dict keeps its keys

    test_dataset = build_or_fail(datasets.build_dataset, 'test', **config.to_dict())
    test_loader = make_loader(test_dataset, config, config.eval_batch_size,
                              ShardSampler(test_dataset, rank, world_size), device)
    wandb_run = start_wandb(config, run_dir)

    if config.running_mode == 'eval':
        epoch = loaded.get('epoch', 0)
        eval_metrics = evaluate(model, postprocessor, test_loader, test_dataset, device, config, epoch, run_dir)
        if is_main_process():
            record_metrics(run_dir, epoch, eval_metrics, wandb_run=wandb_run)
            logger.info(f'evaluated {config.checkpoint_path}; metrics in {run_dir}')
        return 'done'

    train_dataset = build_or_fail(datasets.build_dataset, 'train', **config.to_dict())
    ddp_model = model
    if world_size > 1:
        ddp_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == 'cuda' else None)
    optimizer = build_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=config.lr_drop, gamma=config.lr_drop_gamma)
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
    higher_is_better = config.dataset_name != 'ref_youtube_vos'
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
            all_states = gather([rng_states()])
            if is_main_process():
                path = checkpoint_dir / 'last.pth.tar'
                del progress['stopped']
                save_checkpoint(checkpoint_contents(model, optimizer, scheduler, scaler, config, epoch - 1, best,
                                                    all_states, epoch_in_progress=epoch, progress=progress), path)
                logger.info(f'stopped by signal {stop.signum} at epoch {epoch} iteration {progress["iteration"]}; '
                            f'resumable checkpoint: {path}\n'
                            f'continue with: python main.py -rm train -c ... --resume {path}')
            return 'interrupted'
        losses = mean_losses(progress)
        scheduler.step()
        logger.info(f'epoch {epoch} training ({time.time() - started:.0f} s):\n{format_table(losses)}')
        eval_metrics = evaluate(model, postprocessor, test_loader, test_dataset, device, config, epoch, run_dir)
        score = eval_metrics['mAP 0.5:0.95'] if higher_is_better and is_main_process() else losses['loss']
        is_best = broadcast(best is None or (score > best if higher_is_better else score < best))
        best = broadcast(score) if is_best else best
        if is_best:
            best_epoch, best_metrics = epoch, eval_metrics
        all_states = gather([rng_states()])
        if is_main_process():
            record_metrics(run_dir, epoch, eval_metrics, losses, wandb_run)
            path = checkpoint_dir / f'{epoch}.pth.tar'
            save_checkpoint(checkpoint_contents(model, optimizer, scheduler, scaler, config, epoch, best, all_states),
                            path)
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
        elif higher_is_better:
            summary = (f'best mAP 0.5:0.95 {best:.4f} at epoch {best_epoch} (P@0.5 {best_metrics["P@0.5"]:.4f}, '
                       f'mean IoU {best_metrics["mean_iou"]:.4f}, overall IoU {best_metrics["overall_iou"]:.4f})')
        else:
            summary = f'lowest training loss {best:.4f} at epoch {best_epoch}'
        logger.info(f'training finished in {(time.time() - run_started) / 60:.1f} min: {summary}\n'
                    f'  run directory:   {run_dir} (config.yaml, log.txt, metrics.jsonl, pictures/)\n'
                    f'  best checkpoint: {checkpoint_dir / "best.pth.tar"}')
    return 'done'


def broadcast(value):
    if not dist.is_initialized():
        return value
    shared = [value]
    dist.broadcast_object_list(shared, src=0)
    return shared[0]


def build_or_fail(build, *args, **kwargs):
    """Model and dataset builders report bad configs and dataset layouts with these; main.py prints them."""
    try:
        return build(*args, **kwargs)
    except (OSError, ValueError, RuntimeError) as error:  # FileNotFoundError is an OSError
        raise RunError(str(error)) from error


def load_weights_or_fail(model, path):
    try:
        return load_model_weights(model, path)
    except (FileNotFoundError, RuntimeError, KeyError, ValueError) as error:
        raise RunError(str(error).strip('"')) from error


RESUME_KEYS = ('epoch', 'model_state_dict', 'optimizer_state_dict', 'scheduler_state_dict',
               'grad_scaler_state_dict', 'rng_states')


def resume_from(path, model, optimizer, scheduler, scaler, rank, world_size):
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
    best = checkpoint.get('best_mAP', checkpoint.get('best_loss'))
    if 'epoch_in_progress' in checkpoint:
        return checkpoint['epoch_in_progress'], checkpoint['progress'], best
    return checkpoint['epoch'] + 1, None, best

"""MTTR command line: read the config, then train or evaluate on one or many processes.

    python main.py -rm train -c configs/a2d_sentences.yaml -ws 10 -bs 3 -ng 2
    python main.py -rm eval  -c configs/a2d_sentences.yaml -ws 10 -bs 3 -ckpt CHECKPOINT -ng 2
    torchrun --nnodes 2 --nproc-per-node 8 ... main.py -rm train -c configs/refer_youtube_vos.yaml -ws 12 -bs 1
"""
import argparse
import os
import signal
import socket
import sys
from datetime import datetime
from pathlib import Path
from typing import List, Optional, Tuple

import torch
import torch.multiprocessing as mp

import trainer
from config import Config, load_config
from utils import UsageError, error_message, keep_freed_memory_in_process

TORCHRUN_VARIABLES = ('RANK', 'LOCAL_RANK', 'WORLD_SIZE')
INTERRUPTED_EXIT_CODE = 143  # stopped by a signal after saving a resumable checkpoint


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Train or evaluate MTTR (referring video object segmentation).',
        epilog='Config values are merged as: YAML file < the flags above < --set. '
               'Under torchrun (RANK/LOCAL_RANK/WORLD_SIZE set) each process joins that process group '
               'instead of spawning its own.')
    parser.add_argument('-c', '--config_path', required=True, help='YAML config, e.g. configs/a2d_sentences.yaml')
    parser.add_argument('-rm', '--running_mode', required=True, choices=['train', 'eval'],
                        help='train (evaluating after every epoch) or evaluate a checkpoint once')
    parser.add_argument('-ws', '--window_size', type=int, help='frames per video window (config default: 8)')
    parser.add_argument('-bs', '--batch_size', type=int, help='training batch size per process')
    parser.add_argument('-ebs', '--eval_batch_size', type=int, help='evaluation batch size per process (default: -bs)')
    parser.add_argument('-ckpt', '--checkpoint_path',
                        help='weights to evaluate (eval) or to start training from (train); official MTTR '
                             'checkpoints load unchanged')
    devices = parser.add_mutually_exclusive_group()
    devices.add_argument('-ng', '--num_gpus', type=int,
                         help='number of GPUs, one process each (with --cpu: number of CPU processes)')
    devices.add_argument('-gids', '--gpu_ids', type=int, nargs='+', help='ids of the GPUs to use, one process each')
    parser.add_argument('--cpu', action='store_true',
                        help='run on the CPU; with -ng N, N processes communicating over gloo')
    parser.add_argument('--resume', metavar='CHECKPOINT',
                        help='continue a training run from one of its checkpoints (model, optimizer, scheduler, '
                             'grad scaler, epoch, best score, RNG states); writes into the same run directory '
                             'unless --output_dir is given')
    parser.add_argument('--output_dir', help='run directory (default: runs/<date-time>)')
    parser.add_argument('--set', dest='overrides', action='append', default=[], metavar='KEY=VALUE',
                        help='override any config key, type-checked (repeatable), e.g. --set lr=2e-4 '
                             '--set lr_drop=[10,20]')
    args = parser.parse_args(argv)
    if args.gpu_ids is not None and args.cpu:
        parser.error('--cpu and -gids exclude each other')
    if args.num_gpus is not None and args.num_gpus < 1:
        parser.error('-ng must be at least 1')
    if args.resume and args.running_mode != 'train':
        parser.error('--resume continues a training run: use it with -rm train')
    if args.resume and args.checkpoint_path:
        parser.error('give either --resume (continue a run) or -ckpt (start from weights), not both')
    return args


def build_config(args: argparse.Namespace) -> Config:
    flags = dict(running_mode=args.running_mode, window_size=args.window_size, batch_size=args.batch_size,
                 eval_batch_size=args.eval_batch_size or args.batch_size, checkpoint_path=args.checkpoint_path,
                 output_dir=args.output_dir, device='cpu' if args.cpu else 'cuda')
    if args.running_mode == 'eval':  # the checkpoint holds every weight: no Kinetics or RoBERTa weights to read
        flags.update(backbone_pretrained=False, text_encoder_pretrained=False)
    try:
        config = load_config(args.config_path, args.overrides, **flags)
    except (FileNotFoundError, KeyError, TypeError, ValueError) as error:
        raise UsageError(error_message(error)) from error
    if config.synthetic_dataset:
        from datasets.synthetic import ensure_synthetic_dataset
        try:
            ensure_synthetic_dataset(config)
        except (FileNotFoundError, ValueError) as error:
            raise UsageError(error_message(error)) from error
    if config.running_mode == 'eval' and not config.checkpoint_path:
        raise UsageError('-rm eval needs a checkpoint: -ckpt CHECKPOINT')
    for path in (config.checkpoint_path, args.resume):
        if path and not Path(path).is_file():
            raise UsageError(f'checkpoint not found: {path}')
    return config


def default_run_dir(resume: Optional[str]) -> Path:
    """Resuming writes into the run directory the checkpoint belongs to (`<run>/checkpoints/<x>.pth.tar`)."""
    if resume:
        checkpoint_dir = Path(resume).resolve().parent
        if checkpoint_dir.name == 'checkpoints':
            return checkpoint_dir.parent
    return Path('runs') / datetime.now().strftime('%Y-%m-%d_%H-%M-%S')


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def launch_plan(args: argparse.Namespace) -> Tuple[List[str], str]:
    """Returns (devices, backend): one device per process to spawn, and the process-group backend."""
    if args.cpu:
        return ['cpu'] * (args.num_gpus or 1), 'gloo'
    gpu_ids = args.gpu_ids if args.gpu_ids is not None else list(range(args.num_gpus or 1))
    if not torch.cuda.is_available():
        raise UsageError(f'{len(gpu_ids)} GPU(s) requested but CUDA is not available on this machine; '
                         'run on the CPU with --cpu (and --cpu -ng N for N processes)')
    if max(gpu_ids) >= torch.cuda.device_count():
        raise UsageError(f'GPU ids {gpu_ids} requested but this machine has {torch.cuda.device_count()} GPU(s)')
    return [f'cuda:{i}' for i in gpu_ids], 'nccl'


def set_up_process(config: Config, device: str):
    """Process-wide settings of a run's process (entry points only: they change the whole process)."""
    if device == 'cpu' and config.cpu_keep_freed_memory:
        keep_freed_memory_in_process()


def _worker(rank, devices, backend, port, config, resume):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    if backend == 'gloo':  # CPU processes share the cores instead of each taking all of them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // len(devices)))
    set_up_process(config, devices[rank])
    try:
        trainer.run(config, rank=rank, world_size=len(devices), device=devices[rank], backend=backend, resume=resume)
    except trainer.RunError as error:
        if rank == 0:
            print(f'error: {error}', file=sys.stderr)
        sys.exit(2)


def spawn(devices: List[str], backend: str, config: Config, resume: Optional[str]) -> str:
    """One process per device. SIGTERM is passed on so each process can save a checkpoint (Ctrl-C in a terminal
    reaches every process by itself)."""
    context = mp.start_processes(_worker, args=(devices, backend, free_port(), config, resume),
                                 nprocs=len(devices), join=False, start_method='spawn')

    received = []

    def forward(signum, _frame):
        received.append(signum)
        for process in context.processes:
            if process.is_alive():
                os.kill(process.pid, signum)

    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, forward),
                signal.SIGINT: signal.signal(signal.SIGINT, lambda *_: None)}
    try:
        while not context.join():
            pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 'interrupted' if received else 'done'


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        config = build_config(args)
        config.output_dir = str(config.output_dir or default_run_dir(args.resume))
        if all(v in os.environ for v in TORCHRUN_VARIABLES):
            # launched by torchrun: join its process group (multi-node works the same way)
            local_rank = int(os.environ['LOCAL_RANK'])
            use_cuda = not args.cpu and torch.cuda.is_available()
            device = f'cuda:{local_rank}' if use_cuda else 'cpu'
            set_up_process(config, device)
            status = trainer.run(config, rank=int(os.environ['RANK']), world_size=int(os.environ['WORLD_SIZE']),
                                 device=device, backend='nccl' if use_cuda else 'gloo', resume=args.resume)
        else:
            devices, backend = launch_plan(args)
            if len(devices) == 1:
                set_up_process(config, devices[0])
                status = trainer.run(config, rank=0, world_size=1, device=devices[0], backend=None,
                                     resume=args.resume)
            else:
                status = spawn(devices, backend, config, args.resume)
    except (UsageError, trainer.RunError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    except mp.ProcessRaisedException as error:
        print(f'error in a worker process:\n{error}', file=sys.stderr)
        return 1
    except mp.ProcessExitedException as error:
        return error.exit_code if error.exit_code and error.exit_code > 0 else 1
    return INTERRUPTED_EXIT_CODE if status == 'interrupted' else 0


if __name__ == '__main__':
    sys.exit(main())

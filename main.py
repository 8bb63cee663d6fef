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
# stopped by a signal: training saved a resumable checkpoint (or, at a second signal, stopped at once without
# saving); an evaluation stopped after its batch, saving nothing
INTERRUPTED_EXIT_CODE = 143
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


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
    parser.add_argument('--output_dir', help='run directory (default: runs/<date-time>); a directory that holds a '
                                             'run is refused, unless --resume continues that run or --overwrite')
    parser.add_argument('--overwrite', action='store_true',
                        help='start this run in an --output_dir that holds another run, deleting that run\'s '
                             'checkpoints, metrics, log and evaluation outputs once this run\'s inputs are checked')
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
    if args.resume and args.overwrite:
        parser.error('--overwrite starts a new run, --resume continues one: give one of them')
    return args


def build_config(args: argparse.Namespace) -> Config:
    flags = dict(running_mode=args.running_mode, window_size=args.window_size, batch_size=args.batch_size,
                 eval_batch_size=args.batch_size if args.eval_batch_size is None else args.eval_batch_size,
                 checkpoint_path=args.checkpoint_path,
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


def default_run_dir(resume: Optional[str]) -> Tuple[Path, bool]:
    """(run directory, whether it is a new time-stamped one). Resuming writes into the run directory the checkpoint
    belongs to (`<run>/checkpoints/<x>.pth.tar`)."""
    if resume:
        checkpoint_dir = Path(resume).resolve().parent
        if checkpoint_dir.name == 'checkpoints':
            return checkpoint_dir.parent, False
    return Path('runs') / datetime.now().strftime('%Y-%m-%d_%H-%M-%S'), True


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


def _exit_quietly(_signum, _frame):
    raise SystemExit(0)


def _worker(rank, devices, backend, port, config, resume, replace_run):
    # A signal before the run has set up its own handling, or after it is over, ends this process quietly (the
    # launching process reports the stop); SIGTERM's default action would end it with a negative exit code, which
    # makes the launching process terminate the other processes, perhaps while one saves a checkpoint.
    for signum in STOP_SIGNALS:
        signal.signal(signum, _exit_quietly)
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    if backend == 'gloo':  # CPU processes share the cores instead of each taking all of them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // len(devices)))
    set_up_process(config, devices[rank])
    try:
        # (a stopped run ends with 0 here too: the launching process, which got the signal, exits with 143)
        trainer.run(config, rank=rank, world_size=len(devices), device=devices[rank], backend=backend, resume=resume,
                    replace_run=replace_run)
    except trainer.RunError as error:
        if rank == 0 or isinstance(error, trainer.SampleError):  # (a sample error is of this process's share)
            print(f'error: {error}', file=sys.stderr)
        sys.exit(2)
    finally:  # (Python's exit restores the default action of handled signals; an ignored one stays ignored)
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)


def spawn(devices: List[str], backend: str, config: Config, resume: Optional[str], replace_run: bool) -> str:
    """One process per device. SIGTERM is passed on so each process can save a checkpoint (Ctrl-C in a terminal
    reaches every process by itself)."""
    received, processes = [], []

    def pass_on(signum):
        for process in processes:
            if process.is_alive():
                os.kill(process.pid, signum)

    def forward(signum, _frame):
        received.append(signum)
        pass_on(signum)

    # (installed before the processes start: they would inherit an ignored signal)
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, forward),
                signal.SIGINT: signal.signal(signal.SIGINT, lambda signum, _frame: received.append(signum))}
    try:
        context = mp.start_processes(_worker, args=(devices, backend, free_port(), config, resume, replace_run),
                                     nprocs=len(devices), join=False, start_method='spawn')
        processes.extend(context.processes)
        for signum in list(received):  # (one that came while they were starting)
            pass_on(signum)
        while not context.join():
            pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 'interrupted' if received else 'done'


def claim(config: Config, args: argparse.Namespace, new_name: bool) -> trainer.RunDirClaim:
    """Lock the run directory for this run (see trainer.claim_run_dir); its final name goes into the config."""
    run_dir = trainer.claim_run_dir(config.output_dir, resume=args.resume, overwrite=args.overwrite,
                                    running_mode=config.running_mode, unique=new_name)
    config.output_dir = str(run_dir.path)
    return run_dir


def main(argv: Optional[List[str]] = None, exiting: bool = False) -> int:
    """Returns the exit code. `exiting`: the process ends after this, so stop signals stay ignored once the run is
    over (a signal while the process exits must not turn its exit code into a kill); otherwise the signal handlers
    found are restored."""
    args = parse_args(argv)
    claimed, previous_handlers = None, {}
    try:
        config = build_config(args)
        new_name = False
        if not config.output_dir:
            default, new_name = default_run_dir(args.resume)
            config.output_dir = str(default)
        # a stop signal once the run is over (the run restores this) must not kill the process
        previous_handlers = {signum: signal.signal(signum, signal.SIG_IGN) for signum in STOP_SIGNALS}
        if all(v in os.environ for v in TORCHRUN_VARIABLES):
            # launched by torchrun: join its process group (multi-node works the same way); rank 0 holds the run
            # directory, the others take its name from rank 0
            rank = int(os.environ['RANK'])
            if rank == 0:
                claimed = claim(config, args, new_name)
            local_rank = int(os.environ['LOCAL_RANK'])
            use_cuda = not args.cpu and torch.cuda.is_available()
            device = f'cuda:{local_rank}' if use_cuda else 'cpu'
            set_up_process(config, device)
            status = trainer.run(config, rank=rank, world_size=int(os.environ['WORLD_SIZE']), device=device,
                                 backend='nccl' if use_cuda else 'gloo', resume=args.resume,
                                 replace_run=args.overwrite)
        else:
            devices, backend = launch_plan(args)
            claimed = claim(config, args, new_name)
            if len(devices) == 1:
                set_up_process(config, devices[0])
                status = trainer.run(config, rank=0, world_size=1, device=devices[0], backend=None,
                                     resume=args.resume, replace_run=args.overwrite)
            else:
                status = spawn(devices, backend, config, args.resume, args.overwrite)
    except (UsageError, trainer.RunError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    except mp.ProcessRaisedException as error:
        print(f'error in a worker process:\n{error}', file=sys.stderr)
        return 1
    except mp.ProcessExitedException as error:
        if error.exit_code != 2:  # (2: a RunError, which the process printed)
            print(f'error: a worker {error_message(error)}', file=sys.stderr)
        return error.exit_code if error.exit_code and error.exit_code > 0 else 1
    finally:
        if not exiting:
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
        if claimed is not None:
            claimed.release()
    return INTERRUPTED_EXIT_CODE if status in ('interrupted', 'stopped') else 0


if __name__ == '__main__':
    sys.exit(main(exiting=True))

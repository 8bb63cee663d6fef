"""MTTR command line: read the config, then train or evaluate on one or many processes.

    python main.py -rm train -c configs/a2d_sentences.yaml -ws 10 -bs 3 -ng 2
    python main.py -rm eval  -c configs/a2d_sentences.yaml -ws 10 -bs 3 -ckpt CHECKPOINT -ng 2
    torchrun --nnodes 2 --nproc-per-node 8 ... main.py -rm train -c configs/refer_youtube_vos.yaml -ws 12 -bs 1
"""
import argparse
import sys
from datetime import datetime
from pathlib import Path
from typing import List, Optional, Tuple

import trainer
from config import Config
from engine.arguments import add_run_arguments
from engine.launch import Failed, launch, plan_processes, print_error
from engine.run_config import load_run_config
from engine.run_directory import RunDirectory
from utils import RunError, UsageError

# stopped by a signal: training saved a resumable checkpoint (or, at a second signal, stopped at once without
# saving); an evaluation stopped after its batch, saving nothing
INTERRUPTED_EXIT_CODE = 143


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Train or evaluate MTTR (referring video object segmentation).',
        epilog='Config values are merged as: YAML file < the flags above < --set. '
               'Under torchrun (RANK/LOCAL_RANK/WORLD_SIZE set) each process joins that process group '
               'instead of spawning its own.')
    parser.add_argument('-rm', '--running_mode', required=True, choices=['train', 'eval'],
                        help='train (evaluating after every epoch) or evaluate a checkpoint once')
    add_run_arguments(parser, checkpoint_required=False,
                      checkpoint_help='weights to evaluate (eval) or to start training from (train); official MTTR '
                                      'checkpoints load unchanged',
                      window_size_default=None, window_size_help='frames per video window (config default: 8)',
                      cpu_help='run on the CPU; with -ng N, N processes communicating over gloo')
    parser.add_argument('-bs', '--batch_size', type=int, help='training batch size per process')
    parser.add_argument('-ebs', '--eval_batch_size', type=int, help='evaluation batch size per process (default: -bs)')
    devices = parser.add_mutually_exclusive_group()
    devices.add_argument('-ng', '--num_gpus', type=int,
                         help='number of GPUs, one process each (with --cpu: number of CPU processes)')
    devices.add_argument('-gids', '--gpu_ids', type=int, nargs='+', help='ids of the GPUs to use, one process each')
    parser.add_argument('--resume', metavar='CHECKPOINT',
                        help='continue a training run from one of its checkpoints (model, optimizer, scheduler, '
                             'grad scaler, epoch, best score, RNG states); writes into the same run directory '
                             'unless --output_dir is given')
    parser.add_argument('--output_dir', help='run directory (default: runs/<date-time>); a directory that holds a '
                                             'run is refused, unless --resume continues that run or --overwrite')
    parser.add_argument('--overwrite', action='store_true',
                        help='start this run in an --output_dir that holds another run, deleting that run\'s '
                             'checkpoints, metrics, log and evaluation outputs once this run\'s inputs are checked')
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
    if args.running_mode == 'eval' and not args.checkpoint_path:
        raise UsageError('-rm eval needs a checkpoint: -ckpt CHECKPOINT')
    if args.resume and not Path(args.resume).is_file():
        raise UsageError(f'checkpoint not found: {args.resume}')
    return load_run_config(args.config_path, args.overrides, running_mode=args.running_mode,
                           checkpoint_path=args.checkpoint_path, window_size=args.window_size,
                           batch_size=args.batch_size,
                           eval_batch_size=args.batch_size if args.eval_batch_size is None else args.eval_batch_size,
                           output_dir=args.output_dir, device='cpu' if args.cpu else 'cuda')


def default_run_dir(resume: Optional[str]) -> Tuple[Path, bool]:
    """(run directory, whether it is a new time-stamped one). Resuming writes into the run directory the checkpoint
    belongs to (`<run>/checkpoints/<x>.pth.tar`)."""
    if resume:
        checkpoint_dir = Path(resume).resolve().parent
        if checkpoint_dir.name == 'checkpoints':
            return checkpoint_dir.parent, False
    return Path('runs') / datetime.now().strftime('%Y-%m-%d_%H-%M-%S'), True


def main(argv: Optional[List[str]] = None, exiting: bool = False) -> int:
    """Returns the exit code. `exiting`: the process ends after this, so stop signals stay ignored once the run is
    over (a signal while the process exits must not turn its exit code into a kill)."""
    args = parse_args(argv)
    claimed = None
    try:
        config = build_config(args)
        new_name = False
        if not config.output_dir:
            default, new_name = default_run_dir(args.resume)
            config.output_dir = str(default)
        plan = plan_processes(args.cpu, args.num_gpus, args.gpu_ids)
        if plan.rank == 0:  # (under torchrun the other processes take the name rank 0 claimed)
            claimed = RunDirectory.claim(config.output_dir, resume=args.resume, overwrite=args.overwrite,
                                         running_mode=config.running_mode, unique=new_name,
                                         inputs=[args.resume, config.checkpoint_path])
            config.output_dir = str(claimed.path)
        status = launch(trainer.run, plan, config, args.resume, args.overwrite, sys.argv if argv is None else
                        ['main.py', *argv], keep_freed_memory=config.cpu_keep_freed_memory, exiting=exiting)
    except (UsageError, RunError) as error:
        print_error(error)
        return 2
    except Failed as failed:
        return failed.exit_code
    finally:
        if claimed is not None:
            claimed.release()
    return INTERRUPTED_EXIT_CODE if status in ('interrupted', 'stopped') else 0


if __name__ == '__main__':
    sys.exit(main(exiting=True))

"""The command-line flags every front end shares, declared once: `-c`, `-ckpt`, `-ws`, `--cpu`, `--set`."""
import argparse
from typing import Optional


def add_run_arguments(parser: argparse.ArgumentParser, *, checkpoint_required: bool, window_size_default: Optional[int],
                      window_size_help: str,
                      checkpoint_help: str = 'MTTR checkpoint (official ones load as they are)',
                      cpu_help: str = 'run on the CPU (default: CUDA)'):
    parser.add_argument('-c', '--config_path', required=True, help='YAML config, e.g. configs/refer_youtube_vos.yaml')
    parser.add_argument('-ckpt', '--checkpoint_path', required=checkpoint_required, help=checkpoint_help)
    parser.add_argument('-ws', '--window_size', type=int, default=window_size_default, help=window_size_help)
    parser.add_argument('--cpu', action='store_true', help=cpu_help)
    parser.add_argument('--set', dest='overrides', action='append', default=[], metavar='KEY=VALUE',
                        help='override any config key, type-checked (repeatable), e.g. --set lr=2e-4 '
                             '--set text_encoder_type=path/to/roberta-base')

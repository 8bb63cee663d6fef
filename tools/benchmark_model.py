"""Forward time of the MTTR network on this machine (paper architecture, deterministic weights).

    python tools/benchmark_model.py --text-encoder ../shared/parity/roberta-base -ws 8 --height 320 --width 427
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from config import load_config  # noqa: E402
from models import build_network  # noqa: E402
from utils import NestedTensor  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--text-encoder', default='roberta-base', help='hub name or local directory (config + tokenizer)')
    parser.add_argument('-ws', '--window-size', type=int, default=8)
    parser.add_argument('-bs', '--batch-size', type=int, default=1)
    parser.add_argument('--height', type=int, default=320)
    parser.add_argument('--width', type=int, default=427)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--all-frames-annotated', action='store_true',
                        help='run the heads on every frame (Refer-YouTube-VOS) instead of the centre frame (A2D)')
    args = parser.parse_args()

    config = load_config('configs/a2d_sentences.yaml', [f'text_encoder_type={args.text_encoder}',
                                                        'text_encoder_pretrained=false', 'backbone_pretrained=false'],
                         running_mode='eval', device='cpu')
    model = build_network(config).eval()
    t, b = args.window_size, args.batch_size
    samples = NestedTensor(torch.randn(t, b, 3, args.height, args.width),
                           torch.zeros(t, b, args.height, args.width, dtype=torch.bool))
    valid = torch.arange(t) if args.all_frames_annotated else torch.tensor([t // 2])
    queries = ['a man in black pulling up'] * b
    times = []
    with torch.inference_mode():
        model(samples, valid, queries)  # warm-up
        for _ in range(args.repeats):
            start = time.perf_counter()
            model(samples, valid, queries)
            times.append(time.perf_counter() - start)
    print(f'T={t} B={b} 3x{args.height}x{args.width}, {torch.get_num_threads()} threads: '
          f'median {statistics.median(times):.2f} s over {args.repeats} runs '
          f'({", ".join(f"{x:.2f}" for x in times)})')


if __name__ == '__main__':
    main()

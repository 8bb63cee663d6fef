"""Peak memory and scratch disk of inference.py on a short and a long video: they must not grow with the length.

    python tools/benchmark_long_video.py [--model synthetic|paper] [--frames 40 400] [--rule video]
        [--second-pass network|scratch] [--text-encoder ../shared/parity/roberta-base] [--json out.json]

Each run is `inference.py` in a child process on a generated video (a box crossing a textured background; 64x64 for
the synthetic quick-start model, 360x640 for the paper's), with random weights (memory and disk do not depend on
them) and one text query. Peak RSS is the child's (wait4's ru_maxrss); peak scratch is the largest total size,
polled every 50 ms, of what the run keeps under -o that is no output: its `.scratch-*` folders.
Prints per video length the wall time, peak RSS, peak scratch and output size, and the ratios long / short.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from utils import UsageError, error_message  # noqa: E402

MODELS = {'synthetic': ('configs/synthetic.yaml', (64, 64), 8),  # (config, frame size, window)
          'paper': ('configs/refer_youtube_vos.yaml', (360, 640), 12)}


def write_video(path: Path, num_frames: int, size) -> Path:
    from datasets.video_files import write_mp4
    height, width = size
    rng = np.random.default_rng(0)
    background = rng.integers(40, 120, size=(height, width, 3), dtype=np.uint8)

    def frames():
        for t in range(num_frames):
            frame = background.copy()
            left = int((t * 3) % max(1, width - width // 4))
            frame[height // 4:height // 4 + height // 3, left:left + width // 4] = (220, 30, 30)
            yield frame
    return write_mp4(path, frames(), rate=25)


def write_checkpoint(path: Path, config_path: str, overrides) -> Path:
    import torch
    from config import load_config
    from models import build_network
    from utils import save_checkpoint
    torch.manual_seed(0)
    config = load_config(REPO / config_path, overrides, running_mode='eval', device='cpu', backbone_pretrained=False,
                         text_encoder_pretrained=False)
    save_checkpoint({'model_state_dict': build_network(config).state_dict()}, path)
    return path


def scratch_bytes(out_dir: Path) -> int:
    total = 0
    for scratch in out_dir.glob('.scratch-*'):
        for path in scratch.rglob('*'):
            try:
                total += path.stat().st_size if path.is_file() else 0
            except OSError:  # (removed meanwhile)
                pass
    return total


def run(command, out_dir: Path) -> dict:
    peak = [0]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    done = threading.Event()

    def poll():
        while not done.is_set():
            if out_dir.exists():
                peak[0] = max(peak[0], scratch_bytes(out_dir))
            time.sleep(0.05)
    poller = threading.Thread(target=poll, daemon=True)
    started = time.perf_counter()
    poller.start()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    done.set()
    poller.join()
    stderr = process.stderr.read()
    if status != 0:
        raise RuntimeError(f'inference.py failed ({status}): {stderr[-2000:]}')
    outputs = sum(p.stat().st_size for p in out_dir.rglob('*') if p.is_file())
    return {'seconds': round(seconds, 1), 'peak_rss_mib': round(usage.ru_maxrss / 1024, 1),
            'peak_scratch_mib': round(peak[0] / 2 ** 20, 2), 'outputs_mib': round(outputs / 2 ** 20, 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', choices=MODELS, default='synthetic')
    parser.add_argument('--frames', type=int, nargs=2, default=[40, 400], metavar=('SHORT', 'LONG'))
    parser.add_argument('--rule', default='video')
    parser.add_argument('--second-pass', help='network or scratch, for the whole-video rules (default: network)')
    parser.add_argument('--text-encoder', help='a local RoBERTa directory (config and tokenizer); default: the '
                                               'synthetic dataset\'s tokenizer for the synthetic model')
    parser.add_argument('--json', help='write the figures there')
    args = parser.parse_args(argv)
    try:
        if min(args.frames) < 1:
            raise UsageError(f'--frames must be at least 1, got {args.frames}')
        config_path, size, window = MODELS[args.model]
        with tempfile.TemporaryDirectory(prefix='mttr-long-video-') as work:
            work = Path(work)
            if args.text_encoder:
                text_encoder = Path(args.text_encoder)
            else:
                from datasets.synthetic import write_text_encoder
                text_encoder = write_text_encoder(work / 'text_encoder')
            overrides = [f'text_encoder_type={text_encoder}']
            checkpoint = write_checkpoint(work / 'random.pth.tar', config_path, overrides)
            results = {}
            for frames in args.frames:
                video = write_video(work / f'video_{frames}.mp4', frames, size)
                out_dir = work / f'out_{frames}'
                command = [sys.executable, 'inference.py', '-c', config_path, '-ckpt', str(checkpoint), '--video',
                           str(video), '--text', 'the red box', '-o', str(out_dir), '--cpu', '-ws', str(window),
                           '--rule', args.rule] + (['--second-pass', args.second_pass] if args.second_pass else []) + \
                    [item for override in overrides for item in ('--set', override)]
                results[frames] = run(command, out_dir)
                print(f'{frames} frames: {results[frames]}', flush=True)
    except (UsageError, RuntimeError) as error:
        print(f'error: {error_message(error)}', file=sys.stderr)
        return 2
    short, long = (results[f] for f in args.frames)
    ratios = {key: round(long[key] / short[key], 3) if short[key] else 1.0 if not long[key] else None
              for key in ('peak_rss_mib', 'peak_scratch_mib', 'seconds', 'outputs_mib')}
    print(f'{args.model} model, rule {args.rule}, second pass {args.second_pass or "-"}: {args.frames[1]} / '
          f'{args.frames[0]} frames: {ratios}')
    if args.json:
        Path(args.json).write_text(json.dumps({'model': args.model, 'rule': args.rule, 'second_pass':
                                               args.second_pass, 'runs': results, 'ratios': ratios}, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())

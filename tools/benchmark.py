"""Time and peak memory of the MTTR network (paper architecture, random weights) on this machine.

    python tools/benchmark.py --text-encoder ../shared/parity/roberta-base [--cases eval train_small ...]
                              [--repeats 5] [--threads 2] [--device cpu|cuda] [--json benchmark.json]
                              [--amp [--amp-dtype bfloat16]] [--checkpointing] [--compile] [--return-freed-memory]

Cases:
  eval         eval forward of one window, T=8, B=1, 3x320x427, centre frame annotated (A2D), inference mode
  train_small  training step (forward + loss + backward + AdamW step), T=8, B=1, 3x160x288, A2D-style target
  train        the same at 3x320x427
  ytvos        Refer-YouTube-VOS evaluation of a 36-frame 360x640 video: windows of 12 + post-processing
  per_query    4 expressions of that video, one forward pass per expression and window (as the original does)
  shared       the same 4 expressions with each window encoded once for all of them (`MTTR.segment`); run
               `--cases per_query shared` to get both and their ratio
  parity       not timed: the largest difference (relative to the largest value) of the outputs from the
               original's on the golden forward cases, with the same options (`--parity-dir ../shared/parity`)

Each case runs in its own process, so its peak memory (peak RSS on the CPU, peak allocated memory on CUDA) is
its own. Times are the median of `--repeats` runs after one warm-up run. `--amp` runs under autocast (fp16 on
CUDA, bf16 on the CPU; `--amp-dtype` picks another); the parity tests hold for fp32 only. `--checkpointing` and `--compile` are the
config's backbone_activation_checkpointing and compile_model; `--return-freed-memory` turns off
cpu_keep_freed_memory (glibc's default allocator behaviour).
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = ('eval', 'train_small', 'train', 'ytvos', 'parity', 'per_query', 'shared')
VIDEO_CASES = ('ytvos', 'per_query', 'shared')  # the 36-frame 360x640 video in windows of 12
EXPRESSIONS = ['a man in black pulling up', 'the dog on the left', 'a red car driving away',
               'the person standing in the back']


def parity_errors(model, amp, parity_dir):
    """{case: {output: max |ours - original| / max |original|}} over the golden forward cases."""
    import torch
    from utils import NestedTensor
    sys.path.insert(0, str(parity_dir))
    from weights import deterministic_state_dict
    model.load_state_dict(deterministic_state_dict(model.state_dict()), strict=True)
    golden = torch.load(Path(parity_dir) / 'golden.pt', weights_only=True)
    errors = {}
    for name, case in golden['cases'].items():
        inputs, expected = case['inputs'], case['outputs']
        with torch.inference_mode(), amp:
            out = model.eval()(NestedTensor(inputs['samples'], inputs['mask']), inputs['valid_indices'],
                               inputs['text_queries'])
        errors[name] = {key: ((out[key].float() - expected[key]).abs().max() / expected[key].abs().max()).item()
                        for key in ('pred_masks', 'pred_is_referred')}
    return errors


def run_case(case, args):
    import torch
    sys.path.insert(0, str(REPO))
    from config import load_config
    from models import build_model
    from engine.cpu_heap import keep_freed_memory_in_process
    from utils import NestedTensor

    if args.device == 'cpu' and not args.return_freed_memory:
        keep_freed_memory_in_process()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    text_encoder = Path(args.parity_dir) / 'roberta-base' if case == 'parity' else args.text_encoder
    config = load_config(REPO / 'configs' / ('refer_youtube_vos.yaml' if case in VIDEO_CASES else 'a2d_sentences.yaml'),
                         [f'text_encoder_type={text_encoder}', 'text_encoder_pretrained=false',
                          'backbone_pretrained=false',
                          f'backbone_activation_checkpointing={str(args.checkpointing).lower()}'],
                         running_mode='eval', device=args.device)
    model, criterion, postprocessor = build_model(config)
    model.to(device)
    if args.compile:
        model.compile()
    criterion.to(device)
    query = ['a man in black pulling up']
    amp_dtype = getattr(torch, args.amp_dtype) if args.amp_dtype else \
        torch.float16 if device.type == 'cuda' else torch.bfloat16
    amp = torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp)

    if case == 'parity':
        return {'case': case, 'amp': args.amp, 'compile': args.compile,
                'max_relative_error': parity_errors(model, amp, args.parity_dir)}

    def video(t, h, w):
        return NestedTensor(torch.randn(t, 1, 3, h, w, device=device),
                            torch.zeros(t, 1, h, w, dtype=torch.bool, device=device))

    if case == 'eval':
        model.eval()
        samples = video(8, 320, 427)

        def step():
            with torch.inference_mode(), amp:
                model(samples, torch.tensor([4], device=device), query)
    elif case.startswith('train'):
        model.train()
        h, w = (160, 288) if case == 'train_small' else (320, 427)
        samples = video(8, h, w)
        masks = torch.zeros(2, h, w, dtype=torch.bool, device=device)
        masks[0, h // 4:h // 2, w // 4:w // 2] = True
        masks[1, h // 2:, w // 2:] = True
        targets = [[{'masks': masks, 'referred_instance_idx': torch.tensor(0, device=device)}]]
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step():
            with amp:
                outputs = model(samples, torch.tensor([4], device=device), query)
                losses = criterion(outputs, targets)
                loss = sum(losses[k] * criterion.weight_dict[k] for k in losses)
            optimizer.zero_grad(set_to_none=False)  # as the trainer
            loss.backward()
            optimizer.step()
    else:
        model.eval()
        frames, window = 36, 12
        samples = video(frames, 360, 640)
        metadata = {'video_id': 'v', 'exp_id': '0', 'frame_indices': [f'{i:05d}' for i in range(window)],
                    'original_frame_size': (720, 1280), 'resized_frame_size': (360, 640)}
        windows = [NestedTensor(samples.tensors[start:start + window], samples.mask[start:start + window])
                   for start in range(0, frames, window)]
        valid_indices = torch.arange(window, device=device)

        def per_expression(expressions):  # one forward pass per expression and window
            for part in windows:
                for expression in expressions:
                    outputs = model(part, valid_indices, [expression])
                    outputs.pop('aux_outputs')
                    postprocessor(outputs, [metadata], (360, 640))

        def step():
            with torch.inference_mode(), amp:
                if case == 'shared':  # each window encoded once for every expression
                    for part in windows:
                        outputs = model.segment(part, valid_indices, EXPRESSIONS, query_batch=len(EXPRESSIONS))
                        postprocessor(outputs, [metadata] * len(EXPRESSIONS), (360, 640))
                else:
                    per_expression(EXPRESSIONS if case == 'per_query' else query)

    def timed():
        if device.type == 'cuda':
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == 'cuda':
            torch.cuda.synchronize()
        return time.perf_counter() - start

    timed()  # warm-up
    times = [timed() for _ in range(args.repeats)]
    if device.type == 'cuda':
        peak = torch.cuda.max_memory_allocated() / 2 ** 30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB
    return {'case': case, 'device': args.device, 'amp': args.amp, 'amp_dtype': str(amp_dtype) if args.amp else None,
            'threads': args.threads,
            'checkpointing': args.checkpointing, 'compile': args.compile,
            'keep_freed_memory': args.device == 'cpu' and not args.return_freed_memory,
            'median_s': statistics.median(times), 'times_s': times, 'peak_memory_gib': peak}


def check_args(args):
    """Values argparse cannot check by itself: counts of at least 1, a --json file that can be created (checked
    before the cases run, which takes minutes). A UsageError or WriteError names the value."""
    from datasets.files import check_output_file
    from utils import UsageError
    for flag, count in (('--repeats', args.repeats), ('--threads', args.threads)):
        if count < 1:
            raise UsageError(f'{flag} must be at least 1, got {count}')
    if args.json:
        check_output_file(args.json, 'results file')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--text-encoder', default='roberta-base', help='hub name or local directory (config + tokenizer)')
    parser.add_argument('--cases', nargs='+', choices=CASES, default=list(CASES[:4]))
    parser.add_argument('--parity-dir', help="the parity data for the 'parity' case, e.g. ../shared/parity")
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--amp', action='store_true', help='autocast: fp16 on CUDA, bf16 on the CPU')
    parser.add_argument('--amp-dtype', choices=['float16', 'bfloat16'], help="--amp's dtype instead of the default")
    parser.add_argument('--checkpointing', action='store_true', help='backbone activation checkpointing')
    parser.add_argument('--compile', action='store_true', help='torch.compile the network (warm-up compiles)')
    parser.add_argument('--return-freed-memory', action='store_true',
                        help="CPU: keep glibc's default of returning freed memory to the system (as the original)")
    parser.add_argument('--json', help='write the results here')
    parser.add_argument('--one-case', choices=CASES, help=argparse.SUPPRESS)  # the child process's case
    args = parser.parse_args(argv)
    if 'parity' in (args.cases + [args.one_case]) and not args.parity_dir:
        parser.error("the 'parity' case needs --parity-dir (e.g. ../shared/parity)")

    if args.one_case:
        print(json.dumps(run_case(args.one_case, args)))
        return 0
    # (imported here: a case's process imports only what it measures)
    sys.path.insert(0, str(REPO))
    from utils import UsageError, WriteError, write_json
    try:
        check_args(args)
    except (UsageError, WriteError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    results = []
    print(f'{"case":<12} {"device":<7} {"amp":<5} {"median s":>9} {"peak GiB":>9}   runs (s)')
    for case in args.cases:
        child = [sys.executable, __file__, '--one-case', case, '--text-encoder', args.text_encoder,
                 '--repeats', str(args.repeats), '--threads', str(args.threads), '--device', args.device]
        child += ['--parity-dir', args.parity_dir] if args.parity_dir else []
        child += ['--amp-dtype', args.amp_dtype] if args.amp_dtype else []
        child += [f'--{flag.replace("_", "-")}' for flag in ('amp', 'checkpointing', 'compile', 'return_freed_memory')
                  if getattr(args, flag)]
        done = subprocess.run(child, capture_output=True, text=True)
        if done.returncode != 0:
            print(f'{case}: failed\n{done.stderr[-2000:]}', file=sys.stderr)
            return 1
        result = json.loads(done.stdout.strip().splitlines()[-1])
        results.append(result)
        if case == 'parity':
            print(f'{case:<12} {args.device:<7} {str(args.amp):<5} max relative error: ' + '; '.join(
                f'{name} ' + ', '.join(f'{key} {error:.2e}' for key, error in errors.items())
                for name, errors in result['max_relative_error'].items()))
            continue
        print(f'{case:<12} {args.device:<7} {str(args.amp):<5} {result["median_s"]:>9.2f} '
              f'{result["peak_memory_gib"]:>9.2f}   {", ".join(f"{t:.2f}" for t in result["times_s"])}')
    by_case = {result['case']: result for result in results}
    if {'per_query', 'shared'} <= set(by_case):
        per_query, shared = by_case['per_query'], by_case['shared']
        print(f'shared encoding, {len(EXPRESSIONS)} expressions: {per_query["median_s"] / shared["median_s"]:.2f}x '
              f'faster than one at a time, peak memory {shared["peak_memory_gib"] / per_query["peak_memory_gib"]:.2f}x')
    if args.json:
        try:
            write_json(args.json, results, 'results file', indent=2)
        except WriteError as error:
            print(f'error: {error}', file=sys.stderr)
            return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())

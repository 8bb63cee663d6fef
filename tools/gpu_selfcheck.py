"""The checks to run on the first machine with a GPU: what only CUDA exercises, in a few minutes, no code to write.

    python tools/gpu_selfcheck.py [--json report.json] [--text-encoder ../shared/parity/roberta-base] [--steps STEP ...]

On CUDA the code takes other branches than on the CPU, where the tests run: SDPA kernels in the window attention,
unchunked Swin MLPs, fp16 autocast with gradient scaling, NCCL, pinned memory, Triton kernels from torch.compile.
The tests run on the GPU as they are; this script adds only what no test covers. A failure is reported (type,
message, traceback tail; for the tests, pytest's message of each failing test) and the other steps still run. Exit
code 0 when no check failed, 1 otherwise, 2 without CUDA. Needs ../shared/parity beside the checkout. Steps
(expected time on one current data-centre GPU, A100/H100 class, with the paper's model):

  pytest     ~70 s  python -m pytest --device cuda on the tests that take the `device` fixture (TEST_FILES; TF32 off,
                    the CPU tolerances): the original's golden forward cases, the shared video encoding, matcher,
                    losses, post-processors, window attention, the forward under fp16 and bf16 autocast, and
                    training steps under fp16 with gradient scaling and bf16, with and without activation
                    checkpointing (tests/test_amp_training.py); one check per test file
  compile    ~150 s torch.compile of the network (in a child process, time limit --compile-timeout) on the golden
                    padded case's inputs: it compiles and its outputs match eager within 1e-4 relative (TF32 off)
  main       ~40 s  main.py -rm train, one epoch of a generated synthetic A2D-layout set, fp16 AMP, 2 loader workers
                    (pinned memory), in a process holding an NCCL process group of world size 1 (main.py starts none
                    for one process); then main.py -rm eval of its checkpoint: exit codes 0 and the same metrics
  benchmark  ~155 s tools/benchmark.py --device cuda, cases eval, train, ytvos in fp32, fp16 and bf16, per_query and
                    shared (4 expressions of a 36-frame video) in fp32: median time and peak memory

About 7 minutes in all, mostly process start-ups with CUDA initialisation and inductor's compilation (the least
certain estimate). `--device cpu` tests this script's plumbing (tests/test_gpu_selfcheck.py): what cannot run on
the CPU is skipped with the reason (fp16 autocast is a CUDA rule of this project). `--small` leaves out the tests
marked slow and compiles configs/synthetic.yaml's network.
"""
import argparse
import contextlib
import io
import json
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import xml.etree.ElementTree as ElementTree
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARITY_DIR = REPO.parent / 'shared' / 'parity'  # where tests/conftest.py finds it
EXIT_FAILED, EXIT_NO_CUDA = 1, 2
IN_PROCESS_GROUP = '--run-main-in-process-group'  # internal: argv[1:] = [this, backend, *main.py arguments]
TEST_FILES = ('tests/test_models.py', 'tests/test_shared_encoding.py', 'tests/test_postprocessing.py',
              'tests/test_criterion.py', 'tests/test_matcher.py', 'tests/test_attention.py',
              'tests/test_amp_training.py')
PYTEST_TIMEOUT_S, COMPILE_TOLERANCE = 1800, 1e-4
SMALL_MODEL_QUERIES = ['the red circle', 'the big blue square moving left']
PRECISIONS, AMP_DTYPES = ('fp32', 'fp16', 'bf16'), {'fp16': 'float16', 'bf16': 'bfloat16'}
BENCHMARK_CASES = ('eval', 'train', 'ytvos', 'per_query', 'shared')  # the last two: the shared encoding's gain


class Skip(Exception):
    """The check cannot run on this device or setup; the message says why."""


class CheckFailed(Exception):
    """The check ran and found a problem."""


def require(condition, message):
    if not condition:
        raise CheckFailed(message)


def error_record(error: BaseException) -> dict:
    lines = traceback.format_exception(type(error), error, error.__traceback__)
    return {'type': type(error).__name__, 'message': str(error)[:4000], 'traceback_tail': ''.join(lines)[-3000:]}


def first_line(text, width=110):
    line = str(text).strip().splitlines()[0] if str(text).strip() else ''
    return line if len(line) <= width else line[:width - 3] + '...'


@contextlib.contextmanager
def check(checks: list, name):
    """One check of a step, appended to `checks`; the body may put values and a one-line 'summary' into the
    entry it gets. A failure is recorded and does not stop the step's other checks."""
    entry = {'name': name}
    checks.append(entry)
    start = time.perf_counter()
    try:
        yield entry
        entry['status'] = 'passed'
    except Skip as reason:
        entry.update(status='skipped', reason=str(reason))
    except Exception as error:  # noqa: BLE001 (every failure is reported, none stops the others)
        entry.update(status='failed', error=error_record(error))
    finally:
        entry['seconds'] = round(time.perf_counter() - start, 2)


class Run:
    """What the steps share: the options, the device and a temporary directory."""

    def __init__(self, args):
        import torch
        self.args, self.device = args, torch.device(args.device)
        self.on_cuda = self.device.type == 'cuda'
        self.workdir = Path(tempfile.mkdtemp(prefix='gpu_selfcheck_', dir=args.tmp_root))

    def config(self, **values):
        """The paper's network without pretrained weights; with --small configs/synthetic.yaml's sizes and a small
        text encoder written for it (datasets/synthetic.py)."""
        from config import load_config
        if self.args.small:
            from datasets.synthetic import write_text_encoder
            text_encoder = self.workdir / 'small_text_encoder'
            if not text_encoder.is_dir():
                write_text_encoder(text_encoder)
            name, overrides = 'synthetic.yaml', [f'text_encoder_type={text_encoder}']
        else:
            name, overrides = 'a2d_sentences.yaml', [f'text_encoder_type={self.args.text_encoder}',
                                                     'text_encoder_pretrained=false', 'backbone_pretrained=false']
        overrides += [f'{key}={str(value).lower()}' for key, value in values.items()]
        return load_config(REPO / 'configs' / name, overrides, running_mode='train', device=str(self.device))


def step_pytest(run: Run, checks: list):
    junit = run.workdir / 'pytest.xml'
    with check(checks, 'pytest') as entry:
        require((PARITY_DIR / 'golden.pt').is_file(),
                f'{PARITY_DIR / "golden.pt"} not found: the parity tests would skip (../shared beside the checkout)')
        command = [sys.executable, '-m', 'pytest', '--device', run.args.device, *TEST_FILES, '-q', '-p',
                   'no:cacheprovider', '-o', 'junit_family=xunit1', f'--junitxml={junit}']
        command += ['-m', 'not slow'] if run.args.small else []
        entry['command'] = ' '.join(command)
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=PYTEST_TIMEOUT_S)
        last_line = (done.stdout.strip() or done.stderr.strip() or 'no output').splitlines()[-1]
        entry.update(exit_code=done.returncode, output_tail=(done.stdout + done.stderr)[-3000:], summary=last_line)
        # 1: tests failed (the checks per file below say which); any other code: pytest could not run them
        require(done.returncode in (0, 1) and junit.is_file(), f'pytest exited with {done.returncode}: {last_line}')
    for file, tests in (junit_results(junit) if junit.is_file() else {}).items():
        with check(checks, Path(file).name) as entry:
            counts = {o: sum(t['outcome'] == o for t in tests) for o in ('passed', 'failed', 'skipped')}
            entry.update(counts, tests=tests)
            failed = [f'{t["test"]}: {first_line(t["message"], 200)}' for t in tests if t['outcome'] == 'failed']
            require(not failed, f'{len(failed)} of {len(tests)} failed: ' + '; '.join(failed[:5]))
            skipped = [first_line(t['message'], 60) for t in tests if t['outcome'] == 'skipped']
            if len(skipped) == len(tests):
                raise Skip(f'all {len(tests)} skipped: {skipped[0]}')
            entry['summary'] = ', '.join(f'{n} {o}' for o, n in counts.items() if n) + \
                (f' ({skipped[0]})' if skipped else '')


def junit_results(junit):
    """{test file: [{'test', 'outcome': passed/failed/skipped, 'message', 'properties'}]} from pytest's junit xml
    (xunit1 names each test's file; a file that cannot be imported is one failed entry)."""
    files = {}
    for case in ElementTree.parse(junit).iter('testcase'):
        test = {'test': case.get('name'), 'outcome': 'passed', 'message': ''}
        for child in case:
            if child.tag in ('failure', 'error', 'skipped'):
                test.update(outcome='skipped' if child.tag == 'skipped' else 'failed',
                            message=child.get('message') or (child.text or '').strip())
        properties = {p.get('name'): p.get('value') for p in case.iter('property')}
        if properties:  # record_property: what a test measures without bounding it
            test['properties'] = properties
        files.setdefault(case.get('file') or case.get('classname') or case.get('name'), []).append(test)
    return files


def step_compile(run: Run, checks: list):
    """Runs itself in a child process (--in-child), so that a hang or a crash in the compiler is a reported failure."""
    if not run.args.in_child:
        out = run.workdir / 'compile.json'
        command = [sys.executable, str(Path(__file__).resolve()), '--in-child', '--steps', 'compile', '--json',
                   str(out), '--tmp-root', str(run.workdir), '--device', run.args.device, '--text-encoder',
                   str(run.args.text_encoder), '--compile-backend', run.args.compile_backend,
                   *(['--small'] if run.args.small else [])]  # (--tmp-root: its files go with ours if it is killed)
        try:
            done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=run.args.compile_timeout)
        except subprocess.TimeoutExpired:
            raise CheckFailed(f'the compile step did not finish within --compile-timeout {run.args.compile_timeout} s')
        require(out.is_file(), f'the child process exited with {done.returncode} without a report: '
                               f'{done.stderr[-2000:]}')
        (child_step,) = json.loads(out.read_text())['steps']
        checks.extend(child_step['checks'])
        if 'error' in child_step:
            raise CheckFailed(f'{child_step["error"]["type"]}: {child_step["error"]["message"]}')
        return
    import torch
    from torch._dynamo.utils import counters
    from models import build_network
    from utils import NestedTensor
    # full fp32 precision, so that only the compiler's reordering moves the outputs (this process does nothing else)
    if hasattr(torch.backends.cuda.matmul, 'fp32_precision'):  # torch >= 2.9; mixing it with allow_tf32 raises
        torch.backends.cuda.matmul.fp32_precision = torch.backends.cudnn.conv.fp32_precision = 'ieee'
    else:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    with check(checks, f'torch.compile ({run.args.compile_backend})') as entry:
        inputs = torch.load(PARITY_DIR / 'golden.pt', weights_only=True)['cases']['padded']['inputs']  # 2 videos
        samples = NestedTensor(inputs['samples'], inputs['mask']).to(run.device)
        valid_indices = inputs['valid_indices'].to(run.device)
        # the small network's text encoder knows the synthetic expressions' words only
        texts = SMALL_MODEL_QUERIES if run.args.small else inputs['text_queries']
        torch.manual_seed(0)
        network = build_network(run.config()).to(run.device).eval()

        def forward():
            with torch.inference_mode():
                return network(samples, valid_indices, texts)

        eager = forward()
        network.compile(backend=run.args.compile_backend)  # in place, as the trainer does
        start = time.perf_counter()
        compiled = forward()
        compile_s = time.perf_counter() - start
        layers = [('', compiled, eager)] + [(f'aux_{i}.', a, b) for i, (a, b) in enumerate(
            zip(compiled.get('aux_outputs', []), eager.get('aux_outputs', [])))]
        errors = {prefix + key: ((a[key].double() - b[key].double()).abs().max() / b[key].double().abs().max()).item()
                  for prefix, a, b in layers for key in ('pred_masks', 'pred_is_referred')}
        worst = max(errors, key=errors.get)
        entry.update(max_relative_error=errors, first_call_s=compile_s, graphs=counters['stats']['unique_graphs'],
                     graph_breaks={first_line(reason, 150): n for reason, n in counters['graph_break'].items()})
        entry['summary'] = f'first call (compiling) {compile_s:.1f} s; largest relative difference {errors[worst]:.1e}'
        require(errors[worst] <= COMPILE_TOLERANCE,
                f'{worst}: compiled differs from eager by {errors[worst]:.2e} > {COMPILE_TOLERANCE:g}')
        if torch._dynamo.config.disable:
            raise Skip('torch.compile is disabled in this process (TORCH_COMPILE_DISABLE): eager was compared '
                       'with eager')


def step_main(run: Run, checks: list):
    from datasets.synthetic import SyntheticSpec, write_synthetic_dataset
    root = run.workdir / 'main'
    settings = [f'dataset_path={root / "data"}', f'cache_dir={root / "cache"}', 'epochs=1']
    if run.on_cuda:
        device_flags = ['-gids', str(run.device.index)] if run.device.index is not None else ['-ng', '1']
        backend = 'nccl'
        settings += ['enable_amp=true', 'amp_dtype=float16', 'num_workers=2']  # users' CUDA setting; pinned memory
    else:
        device_flags, backend = ['--cpu', '-ng', '1'], 'gloo'
    flags = ['-c', 'configs/synthetic.yaml', *device_flags] + [f for s in settings for f in ('--set', s)]
    train_dir, eval_dir = root / 'train', root / 'eval'
    checkpoint = train_dir / 'checkpoints' / 'last.pth.tar'
    with check(checks, f'train ({backend}, world size 1)') as entry:
        write_synthetic_dataset(root / 'data', SyntheticSpec(seed=0, num_train_videos=2, num_test_videos=2),
                                progress=False)
        entry['summary'] = run_main([sys.executable, str(Path(__file__).resolve()), IN_PROCESS_GROUP, backend,
                                     '-rm', 'train', '--output_dir', str(train_dir), *flags], entry)
        require(checkpoint.is_file(), f'no checkpoint at {checkpoint}')
    with check(checks, 'eval of its checkpoint') as entry:
        if not checkpoint.is_file():
            raise Skip('training wrote no checkpoint')
        ran = run_main([sys.executable, 'main.py', '-rm', 'eval', '-ckpt', str(checkpoint), '--output_dir',
                        str(eval_dir), *flags], entry)
        trained, evaluated = (read_metrics(d / 'metrics_epoch_0.json') for d in (train_dir, eval_dir))
        differences = {k: abs(trained[k] - evaluated[k]) for k in trained if k in evaluated}
        entry['metric_differences'] = differences
        require(differences, f'no common metrics in {train_dir} and {eval_dir}')
        worst = max(differences, key=differences.get)
        # the same weights evaluated in fp32 by another process: only GPU non-determinism may move a pixel
        require(differences[worst] <= 1e-2, f'{worst}: {evaluated[worst]} against {trained[worst]} after training')
        entry['summary'] = f'{ran}; metrics as after training (largest difference {differences[worst]:.1e})'


def run_main(command, entry):
    entry['command'] = ' '.join(command)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=900)
    entry.update(exit_code=done.returncode, output_tail=(done.stdout + done.stderr)[-3000:])
    last_line = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ''
    require(done.returncode == 0, f'exit code {done.returncode}: {last_line}')
    return f'exit 0 in {time.perf_counter() - start:.0f} s'


def read_metrics(path):
    require(path.is_file(), f'{path} was not written')
    return {k: v for k, v in json.loads(path.read_text()).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def main_in_process_group(backend, main_argv):
    """main.main(main_argv) in a process that holds a process group of world size 1: main.py starts no group for
    one process, so this is how the trainer's collectives (loss reduction, broadcasts, gathers) run on NCCL."""
    import torch.distributed as dist
    sys.path.insert(0, str(REPO))
    import main as mttr_main
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    dist.init_process_group(backend, init_method=f'tcp://127.0.0.1:{port}', rank=0, world_size=1)
    try:
        return mttr_main.main(main_argv)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def step_benchmark(run: Run, checks: list):
    for case in run.args.bench_cases:
        for precision in PRECISIONS:
            with check(checks, f'{case} {precision}') as entry:
                if precision not in run.args.bench_precisions:
                    raise Skip('not selected (--bench-precisions)')
                if case in ('per_query', 'shared') and precision != 'fp32':
                    raise Skip('the shared-encoding cases are timed in fp32 (their ratio does not depend on it)')
                if precision == 'fp16' and not run.on_cuda:
                    raise Skip('fp16 autocast is a CUDA path of this project')
                out = run.workdir / f'benchmark_{case}_{precision}.json'
                amp = ['--amp', '--amp-dtype', AMP_DTYPES[precision]] if precision in AMP_DTYPES else []
                command = [sys.executable, 'tools/benchmark.py', '--device', run.args.device, '--cases', case,
                           '--repeats', str(run.args.repeats), '--text-encoder', str(run.args.text_encoder),
                           '--json', str(out), *amp]
                entry['command'] = ' '.join(command)
                done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=900)
                if done.returncode != 0 or not out.is_file():
                    entry['output_tail'] = (done.stdout + done.stderr)[-3000:]
                    raise CheckFailed(f'tools/benchmark.py exited with {done.returncode}')
                (result,) = json.loads(out.read_text())
                entry.update({key: result[key] for key in ('median_s', 'peak_memory_gib', 'times_s')})
                entry['summary'] = f'{result["median_s"]:.3f} s, {result["peak_memory_gib"]:.2f} GiB'


STEPS = {  # name: (function, expected seconds on one GPU, title)
    'pytest': (step_pytest, 70, 'the parity, loss, post-processing, attention and AMP training tests'),
    'compile': (step_compile, 150, 'torch.compile matches eager'),
    'main': (step_main, 40, 'main.py train + eval, one process with a process group'),
    'benchmark': (step_benchmark, 155, 'tools/benchmark.py timings and peak memory'),
}
STARTUP_ESTIMATE_S = 10


def run_step(run, name):
    function, estimate, title = STEPS[name]
    checks, output = [], io.StringIO()
    record = {'name': name, 'title': title, 'gpu_estimate_s': estimate}
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(output), \
            contextlib.redirect_stderr(output):
        warnings.simplefilter('always')
        try:
            function(run, checks)
        except Exception as error:  # noqa: BLE001 (a failure outside any check fails the step, not the run)
            record['error'] = error_record(error)
    statuses = {entry['status'] for entry in checks}
    record.update(seconds=round(time.perf_counter() - start, 2), checks=checks, status='failed' if 'error' in record
                  or 'failed' in statuses else 'skipped' if statuses <= {'skipped'} else 'passed')
    messages = list(dict.fromkeys(f'{w.category.__name__}: {first_line(w.message, 200)}' for w in caught))
    if messages:
        record['warnings'] = messages[:10]
    if record['status'] == 'failed' and output.getvalue():
        record['output_tail'] = output.getvalue()[-3000:]
    return record


def summary(report):
    lines = [f'gpu_selfcheck on {report["device"]} ({report["device_name"]}), torch {report["torch"]}, '
             f'{report["total_seconds"]:.0f} s', f'{"step":<10} {"status":<8} {"time s":>7} {"GPU est.":>9}  what']
    for step in report['steps']:
        lines.append(f'{step["name"]:<10} {step["status"]:<8} {step["seconds"]:>7.1f} '
                     f'{step["gpu_estimate_s"]:>8d}s  {step["title"]}')
        if 'error' in step:
            lines.append(f'    error   {first_line(step["error"]["type"] + ": " + step["error"]["message"], 100)}')
        for entry in step['checks']:
            detail = entry.get('summary', '') if entry['status'] == 'passed' else entry.get('reason') or \
                f'{entry["error"]["type"]}: {entry["error"]["message"]}'
            lines.append(f'    {entry["status"]:<7} {entry["name"]:<28} {first_line(detail, 88)}')
    counts = {s: sum(step['status'] == s for step in report['steps']) for s in ('passed', 'failed', 'skipped')}
    lines.append(f'{counts["passed"]} passed, {counts["failed"]} failed, {counts["skipped"]} skipped; expected on one '
                 f'GPU: {report["gpu_estimate_s"] / 60:.1f} min; exit code {report["exit_code"]}')
    return '\n'.join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--text-encoder', type=Path, default=PARITY_DIR / 'roberta-base',
                        help='RoBERTa config + tokenizer directory for the compile and benchmark steps '
                             '(default: ../shared/parity/roberta-base beside the checkout)')
    parser.add_argument('--steps', nargs='+', choices=list(STEPS), default=list(STEPS),
                        help='run only these steps (always in the order above)')
    parser.add_argument('--json', type=Path, help='write the full report here')
    parser.add_argument('--repeats', type=int, default=3, help='timed runs per benchmark case (after a warm-up)')
    parser.add_argument('--bench-cases', nargs='+', default=list(BENCHMARK_CASES), help='benchmark cases')
    parser.add_argument('--bench-precisions', nargs='+', choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument('--compile-backend', default='inductor', help='torch.compile backend (the trainer: inductor)')
    parser.add_argument('--compile-timeout', type=int, default=420, help='seconds before the compile step fails')
    parser.add_argument('--device', default='cuda',
                        help='cuda or cuda:N; "cpu" tests this script\'s plumbing only (tests/test_gpu_selfcheck.py)')
    parser.add_argument('--small', action='store_true', help='plumbing tests: no slow tests, and '
                        "configs/synthetic.yaml's network in the compile step")
    parser.add_argument('--in-child', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--tmp-root', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device != 'cpu' and not args.device.startswith('cuda'):
        parser.error(f'--device {args.device}: expected cuda, cuda:N or cpu')
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == [IN_PROCESS_GROUP]:
        return main_in_process_group(argv[1], argv[2:])
    args = parse_args(argv)
    with warnings.catch_warnings():  # a machine without a driver may warn here: the one line below says it all
        warnings.simplefilter('ignore')
        import torch
        has_cuda = torch.cuda.is_available()
    if args.device.startswith('cuda') and not has_cuda:
        print('gpu_selfcheck: no CUDA device (torch.cuda.is_available() is False); run it on a machine with a GPU '
              '(--device cpu only tests this script)', file=sys.stderr)
        return EXIT_NO_CUDA
    sys.path.insert(0, str(REPO))
    run, started, steps = Run(args), time.perf_counter(), []
    try:
        for name in (n for n in STEPS if n in args.steps):
            print(f'gpu_selfcheck: {name} ...', file=sys.stderr, flush=True)
            steps.append(run_step(run, name))
            print(f'gpu_selfcheck: {name} {steps[-1]["status"]} ({steps[-1]["seconds"]:.1f} s)', file=sys.stderr,
                  flush=True)
    finally:
        shutil.rmtree(run.workdir, ignore_errors=True)
    report = {
        'device': args.device,
        'device_name': torch.cuda.get_device_name(run.device) if run.on_cuda else platform.processor() or 'CPU',
        'torch': torch.__version__, 'cuda': torch.version.cuda, 'python': platform.python_version(),
        'options': {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        'total_seconds': round(time.perf_counter() - started, 1),
        'gpu_estimate_s': STARTUP_ESTIMATE_S + sum(STEPS[step['name']][1] for step in steps),
        'exit_code': EXIT_FAILED if any(step['status'] == 'failed' for step in steps) else 0,
        'steps': steps,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    print(summary(report))
    return report['exit_code']


if __name__ == '__main__':
    sys.exit(main())

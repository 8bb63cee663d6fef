"""tools/gpu_selfcheck.py, the checks for the first machine with a GPU, run here with `--device cpu` so that its
plumbing (steps, reports, subprocesses, skip reasons, exit codes) cannot rot while no GPU runs it.

On the CPU the steps use small models where they can (`--small`), the benchmark times one case once, and
torch.compile is disabled (TORCH_COMPILE_DISABLE=1; tracing alone takes a minute here): the compile step's child
process, comparison and report still run.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools import gpu_selfcheck

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / 'tools' / 'gpu_selfcheck.py'
PARITY_DIR = REPO.parent / 'shared' / 'parity'
CPU_PLUMBING = ['--device', 'cpu', '--small', '--train-steps', '1', '--bench-cases', 'eval',
                '--bench-precisions', 'fp32', '--repeats', '1']


def run_tool(*args, env=None, timeout=900):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, **(env or {})), timeout=timeout)


def test_without_cuda_it_stops_at_once_with_one_line():
    done = run_tool(env={'CUDA_VISIBLE_DEVICES': ''}, timeout=120)  # no GPU visible, also on a GPU machine
    assert done.returncode == gpu_selfcheck.EXIT_NO_CUDA
    assert done.stdout == ''
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('gpu_selfcheck: no CUDA device (torch.cuda.is_available() is False)')


@pytest.fixture(scope='module')
def plumbing(tmp_path_factory, shared_dir):
    report_path = tmp_path_factory.mktemp('gpu_selfcheck') / 'report.json'
    done = run_tool(*CPU_PLUMBING, '--json', report_path, env={'TORCH_COMPILE_DISABLE': '1'})
    assert report_path.is_file(), done.stderr[-3000:]
    return done, json.loads(report_path.read_text())


@pytest.mark.slow
def test_every_step_runs_on_the_cpu_and_passes_or_says_why_it_skipped(plumbing):
    done, report = plumbing
    failed = [(s['name'], c['name'], c.get('error', {}).get('message')) for s in report['steps'] for c in s['checks']
              if c['status'] == 'failed'] + [(s['name'], s['error']) for s in report['steps'] if 'error' in s]
    assert not failed and done.returncode == 0 and report['exit_code'] == 0, failed
    assert [s['name'] for s in report['steps']] == list(gpu_selfcheck.STEPS)
    for step in report['steps']:
        assert step['status'] in ('passed', 'skipped') and step['seconds'] > 0 and step['gpu_estimate_s'] > 0
        assert step['checks'], step['name']
        for check in step['checks']:
            assert check['status'] in ('passed', 'skipped') and 'seconds' in check, (step['name'], check)
            if check['status'] == 'skipped':
                assert check['reason'], (step['name'], check['name'])


@pytest.mark.slow
def test_cpu_report_holds_the_measurements(plumbing):
    _, report = plumbing
    steps = {s['name']: {c['name']: c for c in s['checks']} for s in report['steps']}
    assert steps['parity']['forward single']['max_relative_error']['pred_masks'] <= 1e-4
    assert set(steps['parity']) >= {'forward padded', 'matcher + criterion a2d', 'matcher + criterion ytvos',
                                    'post-processing a2d', 'post-processing ytvos'}
    # fp16 autocast is a CUDA rule of this project: skipped on the CPU, with the rule as the reason
    for step, check in [('autocast', 'float16'), ('train', 'float16'), ('train', 'float16 + checkpointing'),
                        ('attention', 'float16 autocast'), ('benchmark', 'eval fp16')]:
        assert steps[step][check]['status'] == 'skipped', (step, check)
    assert 'autocast_dtype' in steps['train']['float16']['reason']
    assert steps['autocast']['bfloat16']['status'] == 'passed'
    for name in ('bfloat16', 'bfloat16 + checkpointing'):
        train = steps['train'][name]
        assert train['status'] == 'passed' and train['optimizer_steps_taken'] == 1 and not train['unchanged_weights']
    # on the CPU with a bias gradient the window attention is the project's autograd Function
    assert steps['attention']['fp32']['kernel'] == '_AttentionWithMaskGradientBackward'
    assert steps['attention']['fp32 shifted']['max_relative_error']['grad_bias'] <= 1e-4
    compiled = steps['compile']['torch.compile (inductor)']  # disabled here: the comparison ran, then skipped
    assert compiled['status'] == 'skipped' and 'TORCH_COMPILE_DISABLE' in compiled['reason']
    assert compiled['max_relative_error']['pred_masks'] == 0
    assert steps['main']['eval of its checkpoint']['exit_code'] == 0
    assert '--cpu' in steps['main']['eval of its checkpoint']['command']
    assert steps['benchmark']['eval fp32']['median_s'] > 0 and steps['benchmark']['eval fp32']['peak_memory_gib'] > 0


@pytest.mark.slow
def test_summary_fits_one_screen_and_names_every_step(plumbing):
    done, _ = plumbing
    lines = done.stdout.strip().splitlines()
    assert len(lines) <= 50 and max(map(len, lines)) <= 140
    for name in gpu_selfcheck.STEPS:
        assert any(line.startswith(name + ' ') for line in lines), name
    assert lines[-1].endswith('exit code 0')


def run_in_process(tmp_path, capsys, *args):
    report_path = tmp_path / 'report.json'
    exit_code = gpu_selfcheck.main(['--device', 'cpu', '--parity-dir', str(PARITY_DIR), '--json', str(report_path),
                                    *args])
    capsys.readouterr()
    return exit_code, {s['name']: s for s in json.loads(report_path.read_text())['steps']}


def test_a_failing_step_fails_the_run_and_the_others_still_run(tmp_path, capsys, monkeypatch):
    def broken(run, report):
        raise RuntimeError('deliberately broken')
    monkeypatch.setitem(gpu_selfcheck.STEPS, 'parity', gpu_selfcheck.Step(broken, 1, 'broken on purpose'))
    exit_code, steps = run_in_process(tmp_path, capsys, '--steps', 'parity', 'attention')
    assert exit_code == gpu_selfcheck.EXIT_FAILED
    assert steps['parity']['status'] == 'failed'
    error = steps['parity']['error']
    assert error['type'] == 'RuntimeError' and error['message'] == 'deliberately broken'
    assert 'in broken' in error['traceback_tail']
    assert steps['attention']['status'] == 'passed'


def test_a_check_beyond_the_tolerance_fails_without_stopping_the_other_checks(tmp_path, capsys):
    exit_code, steps = run_in_process(tmp_path, capsys, '--steps', 'attention', '--tolerance', '0')
    assert exit_code == gpu_selfcheck.EXIT_FAILED
    checks = {c['name']: c for c in steps['attention']['checks']}
    for name in ('fp32', 'fp32 shifted'):
        assert checks[name]['status'] == 'failed' and checks[name]['error']['type'] == 'CheckFailed'
        assert 'relative error' in checks[name]['error']['message']
    assert checks['bfloat16 autocast']['status'] == 'passed'  # reported only, no bound


def test_a_compile_step_that_hangs_is_stopped_and_reported(tmp_path, capsys):
    exit_code, steps = run_in_process(tmp_path, capsys, '--steps', 'compile', '--small', '--compile-timeout', '1')
    assert exit_code == gpu_selfcheck.EXIT_FAILED
    assert steps['compile']['status'] == 'failed'
    assert '--compile-timeout 1' in steps['compile']['error']['message']

"""tools/gpu_selfcheck.py, the checks for the first machine with a GPU, run here with `--device cpu` so that its
plumbing (steps, the pytest run and its junit report, reports, subprocesses, skip reasons, exit codes) cannot rot
while no GPU runs it; and tests/conftest.py's `--device` option, which its pytest step relies on.

On the CPU the steps use small models where they can (`--small`, which also leaves out the slow tests), the
benchmark times one case once, and torch.compile is disabled (TORCH_COMPILE_DISABLE=1; tracing alone takes a minute
here): the compile step's child process, comparison and report still run.
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
CPU_PLUMBING = ['--device', 'cpu', '--small', '--bench-cases', 'eval',
                '--bench-precisions', 'fp32', '--repeats', '1']
NO_GPU = {'CUDA_VISIBLE_DEVICES': ''}  # no GPU visible, also on a GPU machine


def run_tool(*args, env=None, timeout=900):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, **(env or {})), timeout=timeout)


def test_without_cuda_it_stops_at_once_with_one_line():
    done = run_tool(env=NO_GPU, timeout=120)
    assert done.returncode == gpu_selfcheck.EXIT_NO_CUDA
    assert done.stdout == ''
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('gpu_selfcheck: no CUDA device (torch.cuda.is_available() is False)')


@pytest.mark.slow  # (a pytest process each: ~9 s)
@pytest.mark.parametrize('device, message', [('cuda', '--device cuda: no CUDA device'),
                                             ('tpu', '--device tpu: expected cpu, cuda or cuda:N')])
def test_pytest_on_a_device_that_is_not_there_is_a_usage_error(device, message):
    """Not a run whose device tests all skip: asked to test the GPU, pytest must not pass without one."""
    done = subprocess.run([sys.executable, '-m', 'pytest', '--device', device, 'tests/test_attention.py', '-q', '-p',
                           'no:cacheprovider'], capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, **NO_GPU), timeout=120)
    assert done.returncode == pytest.ExitCode.USAGE_ERROR
    assert message in done.stderr and 'passed' not in done.stdout


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
    # the device's tests ran on the CPU, one check per file (--small: without the slow ones, so not the shared
    # encoding's), the CUDA-only autocast test skipped with its reason
    tests = steps['pytest']
    assert tests['pytest']['exit_code'] == 0 and '--device cpu' in tests['pytest']['command']
    assert set(tests) == {'pytest'} | {Path(f).name for f in gpu_selfcheck.TEST_FILES} - {'test_shared_encoding.py'}
    models = {t['test']: t for t in tests['test_models.py']['tests']}
    assert models['test_forward_matches_the_original[padded]']['outcome'] == 'passed'
    autocast = models['test_forward_under_the_trainers_autocast_stays_finite[float16]']
    assert autocast['outcome'] == 'skipped' and 'CUDA' in autocast['message']
    assert tests['test_models.py']['skipped'] == 2 and tests['test_criterion.py']['passed'] > 10
    # fp16 autocast is a CUDA rule of this project: skipped on the CPU, with the rule as the reason; bf16 trains
    amp = {t['test']: t for t in tests['test_amp_training.py']['tests']}
    name = 'test_training_steps_under_autocast_take_finite_steps_that_move_every_weight[{}-{}]'
    for checkpointing in ('plain', 'checkpointing'):
        fp16, bf16 = amp[name.format('float16', checkpointing)], amp[name.format('bfloat16', checkpointing)]
        assert fp16['outcome'] == 'skipped' and 'autocast_dtype' in fp16['message'], fp16
        assert bf16['outcome'] == 'passed' and len(bf16['properties']['losses'].split()) == 2, bf16
    assert steps['benchmark']['eval fp16']['status'] == 'skipped'
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
    assert any(line.split()[:2] == ['passed', 'test_models.py'] for line in lines)
    assert lines[-1].endswith('exit code 0')


def run_in_process(tmp_path, capsys, *args):
    report_path = tmp_path / 'report.json'
    exit_code = gpu_selfcheck.main(['--device', 'cpu', '--json', str(report_path), *args])
    summary = capsys.readouterr().out
    return exit_code, {s['name']: s for s in json.loads(report_path.read_text())['steps']}, summary


def test_a_failing_step_fails_the_run_and_the_others_still_run(tmp_path, capsys, monkeypatch):
    def broken(run, checks):
        raise RuntimeError('deliberately broken')

    def fine(run, checks):
        with gpu_selfcheck.check(checks, 'fine') as entry:
            entry['summary'] = 'all good'
    monkeypatch.setitem(gpu_selfcheck.STEPS, 'pytest', (broken, 1, 'broken on purpose'))
    monkeypatch.setitem(gpu_selfcheck.STEPS, 'main', (fine, 1, 'fine on purpose'))
    exit_code, steps, _ = run_in_process(tmp_path, capsys, '--steps', 'pytest', 'main')
    assert exit_code == gpu_selfcheck.EXIT_FAILED
    assert steps['pytest']['status'] == 'failed'
    error = steps['pytest']['error']
    assert error['type'] == 'RuntimeError' and error['message'] == 'deliberately broken'
    assert 'in broken' in error['traceback_tail']
    assert steps['main']['status'] == 'passed' and steps['main']['checks'][0]['summary'] == 'all good'


FAKE_TESTS = {
    # the --device option and fixture, for test files outside tests/
    'conftest.py': 'from tests.conftest import device, pytest_addoption, pytest_configure  # noqa: F401\n',
    'test_mixed.py': '''import pytest


def test_passes(device, record_property):
    record_property('largest difference', '1.5e-06')
    assert device.type == 'cpu'


def test_fails(device):
    assert device.type == 'cuda', 'deliberately failing'


def test_skips():
    pytest.skip('not on this device')
''',
    'test_all_skipped.py': '''import pytest


def test_skips():
    pytest.skip('nothing to do here')
''',
}


@pytest.mark.slow  # (a pytest process: ~5 s)
def test_failing_tests_fail_the_pytest_step_with_their_messages(tmp_path, capsys, monkeypatch, shared_dir):
    for name, text in FAKE_TESTS.items():
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(gpu_selfcheck, 'TEST_FILES', (str(tmp_path / 'test_mixed.py'),
                                                      str(tmp_path / 'test_all_skipped.py')))
    exit_code, steps, summary = run_in_process(tmp_path, capsys, '--steps', 'pytest')
    assert exit_code == gpu_selfcheck.EXIT_FAILED and steps['pytest']['status'] == 'failed'
    checks = {c['name']: c for c in steps['pytest']['checks']}
    assert checks['pytest']['status'] == 'passed' and checks['pytest']['exit_code'] == 1  # pytest ran them
    assert checks['pytest']['summary'].startswith('1 failed, 1 passed, 2 skipped')
    mixed = checks['test_mixed.py']
    assert mixed['status'] == 'failed' and (mixed['passed'], mixed['failed'], mixed['skipped']) == (1, 1, 1)
    assert mixed['error']['message'].startswith('1 of 3 failed: test_fails: AssertionError: deliberately failing')
    tests = {t['test']: t for t in mixed['tests']}
    assert tests['test_passes']['properties'] == {'largest difference': '1.5e-06'}
    assert tests['test_skips'] == {'test': 'test_skips', 'outcome': 'skipped', 'message': 'not on this device'}
    assert checks['test_all_skipped.py']['status'] == 'skipped'
    assert checks['test_all_skipped.py']['reason'] == 'all 1 skipped: nothing to do here'
    assert '    failed  test_mixed.py' in summary


@pytest.mark.slow  # (a pytest process: ~5 s)
def test_a_pytest_run_that_cannot_start_fails_the_step(tmp_path, capsys, monkeypatch, shared_dir):
    monkeypatch.setattr(gpu_selfcheck, 'TEST_FILES', (str(tmp_path / 'test_not_there.py'),))
    exit_code, steps, _ = run_in_process(tmp_path, capsys, '--steps', 'pytest')
    assert exit_code == gpu_selfcheck.EXIT_FAILED
    (check,) = steps['pytest']['checks']
    assert check['status'] == 'failed' and check['exit_code'] == pytest.ExitCode.USAGE_ERROR
    assert check['error']['message'].startswith(f'pytest exited with {int(pytest.ExitCode.USAGE_ERROR)}: ')


def test_a_compile_step_that_hangs_is_stopped_and_reported(tmp_path, capsys):
    exit_code, steps, _ = run_in_process(tmp_path, capsys, '--steps', 'compile', '--small', '--compile-timeout', '1')
    assert exit_code == gpu_selfcheck.EXIT_FAILED
    assert steps['compile']['status'] == 'failed'
    assert '--compile-timeout 1' in steps['compile']['error']['message']

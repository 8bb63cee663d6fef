"""engine/run_directory.py's rules, without a training run: claiming and locking a directory, refusing one that
holds another run, --overwrite (deleting only a previous run's files, never what the run reads), stale temporary
files, and what `open` writes (config.yaml, provenance.json, the log). Also engine/provenance.py."""
import json
import os
import subprocess
import sys
import time

import pytest

from config import Config, load_config
from engine import provenance
from engine.logs import logger, setup_logging
from engine.run_directory import RunDirectory
from utils import UsageError

LOCK_HOLDER = '''
import sys, time
sys.path.insert(0, {repo!r})
from engine.run_directory import RunDirectory
RunDirectory.claim({path!r})
print('claimed', flush=True)
time.sleep(600)
'''


def previous_run(path):
    """A folder as a finished run leaves it, and a file of the user's beside it."""
    (path / 'checkpoints').mkdir(parents=True)
    (path / 'checkpoints' / '0.pth.tar').write_bytes(b'weights')
    (path / 'config.yaml').write_text('lr:\n  value: 0.1\n')
    (path / 'metrics_epoch_0.json').write_text('{}')
    (path / 'notes.txt').write_text('mine')
    return path


def test_a_new_directory_is_created_locked_and_removed_again_when_the_run_wrote_nothing(tmp_path):
    run = RunDirectory.claim(tmp_path / 'runs' / 'a')
    holder = json.loads((tmp_path / 'runs' / 'a' / '.lock').read_text())
    assert holder['pid'] == os.getpid()
    with pytest.raises(UsageError, match=f'is in use by another run \\(pid {os.getpid()}'):
        RunDirectory.claim(tmp_path / 'runs' / 'a')
    run.release()
    assert not (tmp_path / 'runs' / 'a').exists()


def test_default_names_of_runs_started_together_get_a_suffix(tmp_path):
    first = RunDirectory.claim(tmp_path / 'run', unique=True)
    second = RunDirectory.claim(tmp_path / 'run', unique=True)
    assert (first.path.name, second.path.name) == ('run', 'run_2')


def test_a_directory_holding_a_run_is_refused_unless_resumed_or_overwritten(tmp_path):
    run_dir = previous_run(tmp_path / 'run')
    with pytest.raises(UsageError, match=r'already holds a run \(config.yaml, checkpoints\): continue it with '
                                         rf'--resume {run_dir}/checkpoints/last.pth.tar'):
        RunDirectory.claim(run_dir)
    with pytest.raises(UsageError, match='evaluate into another --output_dir, or give --overwrite'):
        RunDirectory.claim(run_dir, running_mode='eval')
    RunDirectory.claim(run_dir, resume=str(run_dir / 'checkpoints' / '0.pth.tar')).release()
    RunDirectory.claim(run_dir, overwrite=True).release()
    assert (run_dir / 'checkpoints' / '0.pth.tar').is_file()  # (deleted only once the run has checked its inputs)


def test_overwrite_deletes_only_the_previous_runs_files_when_the_run_opens(tmp_path):
    run_dir = previous_run(tmp_path / 'run')
    setup_logging()
    run = RunDirectory.claim(run_dir, overwrite=True)
    run.open(Config(device='cpu'), replace_run=True, provenance=provenance.provenance(['main.py']))
    logger.handlers.clear()
    run.release()
    assert sorted(p.name for p in run_dir.iterdir()) == ['config.yaml', 'log.txt', 'notes.txt', 'provenance.json']
    assert load_config(run_dir / 'config.yaml').lr == Config().lr


def test_overwrite_never_deletes_what_the_run_reads(tmp_path):
    run_dir = previous_run(tmp_path / 'run')
    checkpoint = run_dir / 'checkpoints' / '0.pth.tar'
    with pytest.raises(UsageError, match=f'--overwrite would delete {checkpoint}, which this run reads'):
        RunDirectory.claim(run_dir, overwrite=True, running_mode='eval', inputs=[str(checkpoint)])
    assert checkpoint.read_bytes() == b'weights' and not (run_dir / '.lock').exists()
    RunDirectory.claim(run_dir, overwrite=True, inputs=[str(run_dir / 'notes.txt')]).release()  # not a run's file


def test_paths_that_cannot_hold_a_run_are_refused(tmp_path):
    (tmp_path / 'file').write_text('x')
    with pytest.raises(UsageError, match='is a file; expected a directory'):
        RunDirectory.claim(tmp_path / 'file')
    with pytest.raises(UsageError, match='file is a file, not a directory'):
        RunDirectory.claim(tmp_path / 'file' / 'run')


@pytest.mark.slow  # (a process that imports torch, then is killed: ~7 s)
def test_a_lock_left_by_a_killed_run_and_its_temporary_files_are_taken_over(tmp_path, capsys):
    run_dir = tmp_path / 'run'
    holder = subprocess.Popen([sys.executable, '-c', LOCK_HOLDER.format(repo=str(provenance.REPO), path=str(run_dir))],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == 'claimed'
    with pytest.raises(UsageError, match=f'in use by another run \\(pid {holder.pid}'):
        RunDirectory.claim(run_dir)
    (run_dir / 'checkpoints').mkdir()
    (run_dir / 'checkpoints' / '.last.pth.tar.x1y2.tmp').write_bytes(b'\0' * 1024)
    holder.kill()  # a real SIGKILL: the lock file stays, the kernel frees the lock
    holder.wait()
    time.sleep(0.1)
    capsys.readouterr()
    run = RunDirectory.claim(run_dir, resume=str(run_dir / 'checkpoints' / 'last.pth.tar'))
    err = capsys.readouterr().err
    assert f'was left by pid {holder.pid}' in err and 'which is no longer running; taking it over' in err
    assert 'removed' in err and '.last.pth.tar.x1y2.tmp' in err
    assert not (run_dir / 'checkpoints' / '.last.pth.tar.x1y2.tmp').exists()
    run.release()


def test_the_provenance_names_the_commit_and_whether_the_tree_is_dirty(tmp_path, monkeypatch):
    repo = tmp_path / 'repo'
    repo.mkdir()

    def git(*args):
        return subprocess.run(['git', '-C', str(repo), '-c', 'user.name=t', '-c', 'user.email=t@t', *args],
                              capture_output=True, text=True, check=True).stdout.strip()

    git('init', '-q')
    (repo / 'a.py').write_text('1\n')
    git('add', 'a.py')
    git('commit', '-q', '-m', 'one')
    monkeypatch.setattr(provenance, 'REPO', repo)
    assert provenance.code_version() == {'git_commit': git('rev-parse', 'HEAD'), 'git_dirty': False}
    (repo / 'a.py').write_text('2\n')
    assert provenance.code_version()['git_dirty'] is True
    monkeypatch.setattr(provenance, 'REPO', tmp_path / 'no_repo')
    assert provenance.code_version() == {'git_commit': None, 'git_dirty': None}
    record = provenance.provenance(['main.py', '-rm', 'train'])
    assert record['command'].endswith('main.py -rm train')
    assert 'not a git checkout' in provenance.describe(record) and record['torch'] in provenance.describe(record)

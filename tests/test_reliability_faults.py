"""Issue 24's classes with the real fault, through the commands users run: symbolic links in a run directory, the
user's umask, --overwrite of what the run reads, a full disk at the first checkpoint, SIGINT and SIGKILL in
inference.py (demo.py's: tests/test_demo.py), YAML files with a duplicate key or a syntax error or not UTF-8, a
variable-frame-rate webm, and the error line last after a dataset's expected layout."""
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction

import av
import numpy as np
import pytest

import main
from tests.helpers import (REPO, YTVOS_CONFIG, error_line, eval_args, file_digests, run_main,
                           small_tmpfs, start_and_wait_for, tiny_model_and_clip, train_args)

pytestmark = pytest.mark.filterwarnings('ignore::datasets.files.SubsetWarning')


def in_process(args) -> int:
    return main.main(list(map(str, args)))


@pytest.fixture(scope='module')
def finished_run(a2d_setup):
    root, _ = a2d_setup
    run_main(*train_args(a2d_setup, root / 'finished', epochs=1))
    return root / 'finished'


# --- 1: never through a link; the user's permissions -------------------------------------------------------------

@pytest.mark.parametrize('name', ['.lock', 'log.txt', 'metrics.jsonl', 'checkpoints'])
def test_a_file_of_the_run_that_is_a_symbolic_link_is_refused_before_anything_is_written(a2d_setup, tmp_path, capsys,
                                                                                        name):
    outside = tmp_path / 'elsewhere'
    outside.mkdir() if name == 'checkpoints' else outside.write_text('not the run\'s')
    run_dir = tmp_path / 'run'
    run_dir.mkdir()
    (run_dir / name).symlink_to(outside)
    before = file_digests(tmp_path)
    assert in_process(train_args(a2d_setup, run_dir, epochs=1)) == 2
    assert error_line(capsys) == (f'error: {run_dir / name} is a symbolic link (to {outside}); a run writes no file '
                                  'through a link: remove it, or choose another --output_dir')
    assert file_digests(tmp_path) == before and sorted(p.name for p in run_dir.iterdir()) == [name]


@pytest.mark.slow
def test_every_file_a_run_writes_follows_the_umask(a2d_setup, tmp_path):
    run_dir = tmp_path / 'run'
    run_main(*train_args(a2d_setup, run_dir, epochs=1), preexec_fn=lambda: os.umask(0o002))
    modes = {p.relative_to(run_dir).as_posix(): p.stat().st_mode & 0o777 for p in run_dir.rglob('*') if p.is_file()}
    assert {'checkpoints/0.pth.tar', 'metrics_epoch_0.json', 'metrics.jsonl', 'config.yaml', 'log.txt',
            'provenance.json'} <= set(modes)
    assert set(modes.values()) == {0o664}, modes


# --- 2: --overwrite never deletes what the run needs -------------------------------------------------------------

@pytest.mark.slow
def test_overwrite_refuses_to_delete_the_checkpoint_it_evaluates(a2d_setup, finished_run, capsys):
    checkpoint = finished_run / 'checkpoints' / 'best.pth.tar'
    before = file_digests(finished_run)
    assert in_process(eval_args(a2d_setup, finished_run, checkpoint, '--overwrite')) == 2
    assert error_line(capsys) == (f'error: --overwrite would delete {checkpoint}, which this run reads: copy it out '
                                  f'of {finished_run} first, or choose another --output_dir')
    assert file_digests(finished_run) == before


# --- 3: a full disk for real ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_full_disk_at_the_first_checkpoint_is_one_line_and_leaves_nothing_half_written(a2d_setup, tmp_path):
    with small_tmpfs(tmp_path / 'disk', '1m') as disk:
        result = run_main(*train_args(a2d_setup, disk / 'run', epochs=1), expect=2)
        last = result.stderr.strip().splitlines()[-1]
        assert last == (f'error: cannot write the checkpoint {disk / "run" / "checkpoints" / "0.pth.tar"}: No space '
                        'left on device; the run stopped (the files written before are intact)')
        assert 'Traceback' not in result.stderr
        left = sorted(p.relative_to(disk).as_posix() for p in disk.rglob('*') if p.is_file())
        assert 'run/config.yaml' in left and not [name for name in left if name.endswith('.tmp') or
                                                  name.startswith('run/checkpoints/')]


# --- 4: interrupts --------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    return tiny_model_and_clip(tmp_path_factory.mktemp('faults'), 60, 64, 96, 25)


def inference_command(tiny, out_dir, *extra, video=None):
    _, checkpoint, overrides, clip = tiny
    command = [sys.executable, str(REPO / 'inference.py'), '-c', str(YTVOS_CONFIG), '-ckpt', str(checkpoint),
               '--video', str(video or clip), '--text', 'the red box', '-o', str(out_dir), '--cpu', '-ws', '4']
    for item in overrides:
        command += ['--set', item]
    return command + [str(e) for e in extra]


@pytest.mark.slow
def test_ctrl_c_in_inference_exits_130_in_one_line_removing_temporary_files(tiny, tmp_path):
    out_dir = tmp_path / 'out'
    process = start_and_wait_for(inference_command(tiny, out_dir, '--rule', 'window'),
                                 out_dir / '00_the-red-box' / 'masks' / '000004.png')
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == ('inference.py: stopped by SIGINT: the results folders of this run are '
                                              'incomplete (no summary.json); temporary files were removed')
    assert 'Traceback' not in stderr and not (out_dir / 'summary.json').exists()
    names = [p.name for p in out_dir.rglob('*')]
    assert not [n for n in names if n.endswith(('.tmp', '.partial')) or n.startswith('.scratch-')], names
    assert not (out_dir / '.lock').exists()


@pytest.mark.slow
def test_the_next_run_removes_what_a_killed_run_left(tiny, tmp_path):
    out_dir = tmp_path / 'out'
    process = start_and_wait_for(inference_command(tiny, out_dir, '--rule', 'video', '--second-pass', 'scratch'),
                                 out_dir / 'config.yaml')
    deadline = time.time() + 300
    while not any(out_dir.glob('.scratch-*/window2.pt')):
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.05)
    process.kill()  # a real SIGKILL: nothing of the run cleans up
    process.communicate()
    (scratch,) = out_dir.glob('.scratch-*')
    done = subprocess.run(inference_command(tiny, out_dir, '--end', 0.5), capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f'note: removed {scratch} (' in done.stderr and 'the scratch folder of an interrupted run' in done.stderr
    assert not list(out_dir.glob('.scratch-*')) and (out_dir / 'summary.json').is_file()


# --- 6: malformed inputs name themselves --------------------------------------------------------------------------

@pytest.mark.parametrize('text, expected', [
    (b'lr:\n  value: 1.0\nlr:\n  value: 2.0\n', 'line 3: found duplicate key "lr"'),
    (b'lr:\n  value: [1, 2\nepochs: 3\n', "line 3: expected ',' or ']', but got ':'"),
    (b'lr:\n  desc: caf\xe9\n  value: 1.0\n', 'not UTF-8 text (byte 15: invalid continuation byte)'),
])
def test_a_config_file_that_cannot_be_read_names_itself_and_the_line(tmp_path, capsys, text, expected):
    path = tmp_path / 'config.yaml'
    path.write_bytes(text)
    assert in_process(['-rm', 'train', '-c', path, '--cpu', '--output_dir', tmp_path / 'run']) == 2
    assert error_line(capsys).startswith(f'error: {path}' + (', ' if expected.startswith('line') else ': ') + expected)
    assert not (tmp_path / 'run').exists()


# --- 7: valid inputs are accepted -------------------------------------------------------------------------------------

def write_variable_rate_webm(path, durations_ms):
    """A real VP8 webm whose frames last as long as `durations_ms` says: the container states no frame count."""
    with av.open(str(path), 'w') as container:
        stream = container.add_stream('libvpx', rate=30)
        stream.width, stream.height, stream.pix_fmt = 96, 64, 'yuv420p'
        stream.codec_context.time_base = Fraction(1, 1000)
        pts = 0
        for index, duration in enumerate(durations_ms):
            frame = av.VideoFrame.from_ndarray(np.full((64, 96, 3), 20 * index, np.uint8), format='rgb24')
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            pts += duration
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@pytest.mark.slow  # (inference.py in a process: ~7 s)
def test_a_variable_frame_rate_webm_is_not_refused_as_truncated(tiny, tmp_path):
    video = write_variable_rate_webm(tmp_path / 'vfr.webm', [33, 100, 500, 33, 250, 40, 1000, 33])
    with av.open(str(video)) as container:
        assert container.streams.video[0].frames == 0  # (what makes it a case: no count to be held to)
    done = subprocess.run(inference_command(tiny, tmp_path / 'out', video=video), capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    masks = sorted((tmp_path / 'out' / '00_the-red-box' / 'masks').glob('*.png'))
    assert len(masks) == 8


# --- 10: the error is the last line --------------------------------------------------------------------------------

def test_a_dataset_layout_error_prints_the_layout_first_and_the_error_last(a2d_setup, tmp_path, capsys):
    args = train_args(a2d_setup, tmp_path / 'run', dataset_path=tmp_path / 'no_dataset')
    assert in_process(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f'error: a2d_sentences: dataset root not found: {tmp_path / "no_dataset"}')
    assert err[0].startswith('<dataset_path>/') and any('clips320H' in line for line in err[:-1])

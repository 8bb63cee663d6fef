"""Issue 16, as a user meets it: bad ids, busy or finished run directories, signals, truncated videos, failing
samples, full disks and broken submission zips. Each case runs the command a user runs (main.py in a subprocess
or main.main in this process, tools/make_submission_zip.py's main) and checks the exit code, the one-line message,
that nothing outside the run directory changed and that earlier checkpoints are byte-identical afterwards.

The fake datasets, the tiny model and the command lines are test_main.py's (the `a2d_setup` fixture,
`helpers.train_args` and `helpers.eval_args`).
"""
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

import datasets
import main
from config import load_config
from datasets.a2d_sentences import ClipReader
from datasets.coco_evaluator import ReferringCOCOEvaluator
from engine.run_directory import RunDirectory
from tests.fake_datasets import (
    A2D_VIDEOS,
    dataset_config,
    jhmdb_metadata_entry,
    make_a2d_dataset,
    make_jhmdb_dataset,
    make_ref_youtube_vos_dataset,
    write_index_clip,
)
from tests.helpers import (REPO, YTVOS_CONFIG, error_line, eval_args, file_digests, load, run_main, set_flags,
                           read_only_folder, small_tmpfs, start_long_training, train_args)
from tools.make_submission_zip import main as submission_main
from utils import safe_name

# Larger training frames: an iteration then lasts long enough for a second signal to arrive before the first one's
# checkpoint is saved.
SLOWER_STEPS = dict(train_short_size=256, train_max_size=384)


def in_process(args) -> int:
    return main.main(list(map(str, args)))


@pytest.fixture(scope='module')
def finished_run(a2d_setup):
    """A finished one-epoch training run (checkpoints 0, last, best)."""
    root, _ = a2d_setup
    run_dir = root / 'finished_run'
    run_main(*train_args(a2d_setup, run_dir, epochs=1))
    return run_dir


def ytvos_eval_args(a2d_setup, run_dir, checkpoint, dataset_root, *extra):
    _, overrides = a2d_setup
    return ['-rm', 'eval', '-c', YTVOS_CONFIG, '-ws', 3, '-bs', 1, '--cpu', '-ckpt', checkpoint,
            '--output_dir', run_dir, *set_flags(overrides, dataset_path=dataset_root), *extra]


def truncate_clip(path: Path, keep_frames: int):
    """Rewrite an mp4 with its index first (`faststart`), then cut it after the data of its first `keep_frames`
    frames (in file order): the index still lists every frame, and demuxing ends early without an error."""
    faststart = path.with_name('faststart.mp4')
    with av.open(str(path)) as source, av.open(str(faststart), 'w', options={'movflags': 'faststart'}) as target:
        stream = source.streams.video[0]
        copy = target.add_stream_from_template(stream)
        for packet in source.demux(stream):
            if packet.dts is not None:
                packet.stream = copy
                target.mux(packet)
    with av.open(str(faststart)) as container:
        positions = sorted(packet.pos for packet in container.demux(video=0) if packet.size > 0)
    path.write_bytes(faststart.read_bytes()[:positions[keep_frames]])
    faststart.unlink()


# --- 1: ids that are not plain names --------------------------------------------------------------------------

def test_safe_name_accepts_one_path_component_only():
    assert safe_name('00005', 'frame name', 'meta.json') == '00005'
    for bad in ('../x', '/abs', '', '.', '..', 'a\\b', 'a\0b', 3):
        with pytest.raises(ValueError, match=r'meta\.json: frame name .* is not a plain name'):
            safe_name(bad, 'frame name', 'meta.json')


@pytest.mark.slow
def test_refer_youtube_vos_ids_that_are_not_plain_names_stop_evaluation_before_any_write(finished_run, a2d_setup,
                                                                                          tmp_path, capsys):
    dataset = make_ref_youtube_vos_dataset(tmp_path / 'ytvos')
    meta_path = dataset.root / 'meta_expressions' / 'valid' / 'meta_expressions.json'
    good_meta = json.loads(meta_path.read_text())
    checkpoint = finished_run / 'checkpoints' / 'last.pth.tar'
    checkpoints = file_digests(finished_run / 'checkpoints')

    def with_expression_id(meta, exp_id):
        meta['videos']['validvidA']['expressions'][exp_id] = {'exp': 'a hostile id'}

    def with_video_id(meta, video_id):
        meta['videos'][video_id] = meta['videos'].pop('validvidA')

    def with_frame_name(meta, frame):
        meta['videos']['validvidB']['frames'][0] = frame

    cases = [(with_expression_id, '../../../../../x'), (with_video_id, str(tmp_path / 'abs')),
             (with_frame_name, ''), (with_video_id, '..')]
    for i, (change, bad_id) in enumerate(cases):
        meta = json.loads(json.dumps(good_meta))
        change(meta, bad_id)
        meta_path.write_text(json.dumps(meta))
        before = file_digests(tmp_path)
        run_dir = tmp_path / f'eval{i}'
        assert in_process(ytvos_eval_args(a2d_setup, run_dir, checkpoint, dataset.root)) == 2
        line = error_line(capsys)
        assert f'{meta_path}: ' in line and f'{bad_id!r} is not a plain name' in line, line
        assert file_digests(tmp_path) == before and not run_dir.exists()  # nothing written, not even the run directory
    # and once as a user sees it
    result = run_main(*ytvos_eval_args(a2d_setup, tmp_path / 'eval', checkpoint, dataset.root), expect=2)
    assert result.stderr.strip().splitlines() == [line]
    assert file_digests(finished_run / 'checkpoints') == checkpoints


def test_a2d_and_jhmdb_ids_that_are_not_plain_names_are_refused_naming_the_file(tmp_path):
    a2d = make_a2d_dataset(tmp_path / 'a2d')
    with open(a2d.root / 'Release' / 'videoset.csv', 'a') as f:
        f.write('../x,0,00:00:00,00:00:05,64,96,10,1,1\n')
    with pytest.raises(ValueError, match=r"videoset\.csv, line 5: video id '\.\./x' is not a plain name"):
        datasets.build_dataset('test', **dataset_config('a2d_sentences', a2d.root, tmp_path / 'cache'))

    jhmdb = make_jhmdb_dataset(tmp_path / 'jhmdb')
    entry = jhmdb_metadata_entry('brush_vid_1', 3, 10, 'a query')
    entry[1] = entry[1].replace('brush_vid_1/', 'brush_vid_1/../../../../')
    metadata = tmp_path / 'samples.json'
    metadata.write_text(json.dumps([entry]))
    with pytest.raises(ValueError, match=r"samples\.json: a component of path .* '\.\.' is not a plain name"):
        datasets.build_dataset('test', **dataset_config('jhmdb_sentences', jhmdb.root, tmp_path / 'cache',
                                                        samples_metadata_path=str(metadata)))


# --- 2, 3, 5, 6: run directories, locks, a second SIGTERM ------------------------------------------------------

def test_a_run_directory_that_holds_a_run_is_refused_unless_resumed_or_overwritten(finished_run, a2d_setup,
                                                                                 tmp_path, capsys):
    before = file_digests(finished_run)
    checkpoint = finished_run / 'checkpoints' / 'last.pth.tar'
    assert in_process(train_args(a2d_setup, finished_run, epochs=1)) == 2
    line = error_line(capsys)
    assert f'run directory {finished_run} already holds a run (config.yaml, checkpoints)' in line
    assert f'--resume {checkpoint}' in line and '--overwrite' in line
    assert in_process(eval_args(a2d_setup, finished_run, checkpoint)) == 2
    assert 'already holds a run' in error_line(capsys)
    assert file_digests(finished_run) == before

    # --overwrite: the previous run's files go, once the new run's inputs are checked
    copy = tmp_path / 'copy'
    shutil.copytree(finished_run, copy)
    (copy / 'notes.txt').write_text('mine')
    foreign = tmp_path / 'foreign.pth.tar'
    torch.save({'model_state_dict': {'classifier.weight': torch.zeros(2)}}, foreign)
    assert in_process(eval_args(a2d_setup, copy, foreign, '--overwrite')) == 2  # checked first: nothing is deleted
    assert 'does not fit this model' in error_line(capsys)
    assert file_digests(copy) == file_digests(finished_run) | {'notes.txt': hashlib.sha1(b'mine').hexdigest()}
    assert in_process(eval_args(a2d_setup, copy, checkpoint, '--overwrite')) == 0
    assert not (copy / 'checkpoints').exists() and (copy / 'notes.txt').read_text() == 'mine'
    assert load_config(copy / 'config.yaml', []).running_mode == 'eval'
    assert 'epoch 0 training' not in (copy / 'log.txt').read_text()
    assert file_digests(finished_run) == before


def test_two_runs_started_in_the_same_second_get_their_own_directories(tmp_path):
    base = tmp_path / 'runs' / '2024-01-01_00-00-00'
    first = RunDirectory.claim(base, unique=True)
    second = RunDirectory.claim(base, unique=True)
    try:
        assert (first.path, second.path) == (base, base.with_name(base.name + '_2'))
    finally:
        first.release()
        second.release()
    assert not base.exists()  # nothing was written: the empty directories go with the claims


@pytest.mark.slow
def test_a_live_run_holds_its_directory_and_a_second_sigterm_stops_it_at_once(a2d_setup, tmp_path, capsys):
    run_dir = tmp_path / 'run'
    checkpoints = run_dir / 'checkpoints'
    process = start_long_training(train_args(a2d_setup, run_dir, epochs=1000, **SLOWER_STEPS))
    try:
        # what an interrupted write of another run would have left: while this run lives, nobody removes it
        left_over = checkpoints / '.last.pth.tar.k3j4h5.tmp'
        left_over.write_bytes(b'\0' * 4096)
        for args in (train_args(a2d_setup, run_dir, epochs=2), train_args(a2d_setup, run_dir, '--overwrite', epochs=2),
                     train_args(a2d_setup, run_dir, '--resume', checkpoints / '0.pth.tar', epochs=2),
                     eval_args(a2d_setup, run_dir, checkpoints / '0.pth.tar')):
            assert in_process(args) == 2
            line = error_line(capsys)
            assert f'run directory {run_dir} is in use by another run (pid {process.pid}, since ' in line, line
        assert left_over.exists()
        epoch_checkpoints = {name: digest for name, digest in file_digests(checkpoints).items() if name[0].isdigit()}
        process.send_signal(signal.SIGTERM)
        time.sleep(0.1)  # (two signals at once would be handled as one)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == main.INTERRUPTED_EXIT_CODE, stderr[-3000:]
    assert 'Traceback' not in stdout + stderr and 'KeyboardInterrupt' not in stderr, stderr[-3000:]
    assert 'stopped at once by a second SIGTERM: nothing was saved (the latest checkpoint is' in stdout, stdout
    after = file_digests(checkpoints)
    assert {name: after.get(name) for name in epoch_checkpoints} == epoch_checkpoints
    assert after['last.pth.tar'] == after[max((n for n in after if n[0].isdigit()), key=lambda n: int(n.split('.')[0]))]
    assert [p.name for p in checkpoints.glob('.*')] == [left_over.name]
    assert not (run_dir / '.lock').exists()

    # 6 and 3: the next start removes the stale temporary file and takes over a lock left by a dead process; a
    # resume whose config does not fit the checkpoint then stops before writing anything
    (run_dir / '.lock').write_text(json.dumps({'pid': process.pid, 'host': 'elsewhere', 'started': 'yesterday'}))
    before = file_digests(run_dir, exclude=[left_over, run_dir / '.lock'])
    assert in_process(train_args(a2d_setup, run_dir, '--resume', checkpoints / 'last.pth.tar', num_queries=5)) == 2
    captured = capsys.readouterr()
    assert f'note: removed {left_over} (0.0 MiB), left by an interrupted write' in captured.err
    assert f'was left by pid {process.pid} on elsewhere, since yesterday, which is no longer running' in captured.err
    assert captured.err.strip().splitlines()[-1].startswith(f'error: {checkpoints / "last.pth.tar"} does not fit')
    assert file_digests(run_dir) == before  # config.yaml, log.txt and the checkpoints as they were; the lock released


@pytest.mark.slow
def test_a_second_sigterm_stops_two_process_training_at_once(a2d_setup, tmp_path):
    run_dir = tmp_path / 'run'
    checkpoints = run_dir / 'checkpoints'
    process = start_long_training(train_args(a2d_setup, run_dir, '-ng', 2, epochs=1000, **SLOWER_STEPS))
    try:
        epoch_checkpoints = {name: digest for name, digest in file_digests(checkpoints).items() if name[0].isdigit()}
        process.send_signal(signal.SIGTERM)
        time.sleep(0.1)  # (two signals at once would be handled as one)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == main.INTERRUPTED_EXIT_CODE, stderr[-3000:]
    assert 'Traceback' not in stdout + stderr, stderr[-3000:]
    assert 'stopped at once by a second SIGTERM' in stdout
    after = file_digests(checkpoints)
    assert {name: after.get(name) for name in epoch_checkpoints} == epoch_checkpoints
    assert not list(checkpoints.glob('.*')) and not (run_dir / '.lock').exists()


# --- 4: SIGTERM during an evaluation ---------------------------------------------------------------------------

def test_sigterm_stops_an_evaluation_after_the_batch_saving_nothing(finished_run, a2d_setup, tmp_path, capsys,
                                                                    monkeypatch):
    update = ReferringCOCOEvaluator.update

    def update_then_signal(self, batch, outputs):
        update(self, batch, outputs)
        signal.raise_signal(signal.SIGTERM)  # as the cluster does, during the first batch

    monkeypatch.setattr(ReferringCOCOEvaluator, 'update', update_then_signal)
    checkpoints = file_digests(finished_run / 'checkpoints')
    run_dir = tmp_path / 'eval'
    assert in_process(eval_args(a2d_setup, run_dir, finished_run / 'checkpoints' / '0.pth.tar', '-ebs', 1)) == 143
    captured = capsys.readouterr()
    assert 'Traceback' not in captured.err and 'saving a resumable checkpoint' not in captured.err + captured.out
    assert 'SIGTERM: stopping the evaluation after this batch; nothing will be saved' in captured.err
    assert 'stopped by SIGTERM after 1 of 2 batches: nothing was saved' in captured.out
    assert not list(run_dir.glob('metrics*')) and not (run_dir / 'checkpoints').exists()
    assert file_digests(finished_run / 'checkpoints') == checkpoints


@pytest.mark.slow
def test_sigterm_stops_a_two_process_evaluation(finished_run, a2d_setup, tmp_path):
    root, overrides = a2d_setup
    videos = {**A2D_VIDEOS, 'testvid0001': (1, 16, {frame: [2, 5] for frame in range(1, 17)})}
    dataset = make_a2d_dataset(tmp_path / 'a2d', videos=videos)  # 16 test batches of one frame
    run_dir = tmp_path / 'eval'
    args = [*eval_args(a2d_setup, run_dir, finished_run / 'checkpoints' / '0.pth.tar', '-ebs', 1, '-ng', 2),
            '--set', f'dataset_path={dataset.root}']
    process = subprocess.Popen([sys.executable, str(REPO / 'main.py'), *map(str, args)], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while 'run directory:' not in ((run_dir / 'log.txt').read_text() if (run_dir / 'log.txt').exists() else ''):
            assert process.poll() is None and time.time() < deadline, process.communicate()
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == main.INTERRUPTED_EXIT_CODE, stderr[-3000:]
    assert 'Traceback' not in stdout + stderr, stderr[-3000:]
    assert 'of 8 batches: nothing was saved' in stdout, stdout
    assert not list(run_dir.glob('metrics*')) and not (run_dir / '.lock').exists()


# --- 7 and 11: truncated videos, errors in loader workers ------------------------------------------------------

def test_a_truncated_clip_is_an_error_naming_the_file_and_both_counts(tmp_path):
    path = tmp_path / 'clip.mp4'
    write_index_clip(path, 16, gop=5)
    truncate_clip(path, 4)
    with pytest.raises(RuntimeError, match=rf'{path} is truncated or damaged: the file announces 16 frames, 4 could'):
        ClipReader().read_window(path, 0, 3)

    write_index_clip(path, 16, gop=5)
    truncate_clip(path, 15)  # a frame short of its index: read, with a warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        assert len(ClipReader().read_window(path, 12, 16)) == 4
    assert any('announces 16 frames, 15 could be read' in str(w.message) for w in caught)


@pytest.mark.parametrize('num_workers', [0, 2])
def test_a_sample_that_cannot_be_read_stops_the_run_in_one_line(finished_run, a2d_setup, tmp_path, capsys,
                                                                num_workers):
    dataset = make_a2d_dataset(tmp_path / 'a2d')
    clip = dataset.root / 'Release' / 'clips320H' / 'testvid0001.mp4'
    truncate_clip(clip, 4)
    run_dir = tmp_path / 'eval'
    args = [*eval_args(a2d_setup, run_dir, finished_run / 'checkpoints' / '0.pth.tar'),
            '--set', f'dataset_path={dataset.root}', '--set', f'num_workers={num_workers}']
    before = file_digests(tmp_path, exclude=[run_dir])
    assert in_process(args) == 2
    line = error_line(capsys)
    assert line == (f'error: sample 0 of the test split (video testvid0001, frame 4): the video {clip} is truncated '
                    'or damaged: the file announces 16 frames, 4 could be read')
    assert file_digests(tmp_path, exclude=[run_dir]) == before


# --- 9, 10: checkpoints that are not dicts, config values that cannot work --------------------------------------

def test_a_checkpoint_that_is_not_a_dict_is_a_one_line_error(a2d_setup, tmp_path, capsys):
    for name, content in (('list.pth.tar', [1, 2, 3]), ('tensor.pth.tar', torch.zeros(3))):
        path = tmp_path / name
        torch.save(content, path)
        for args in (eval_args(a2d_setup, tmp_path / 'eval', path),
                     train_args(a2d_setup, tmp_path / 'train', '-ckpt', path),
                     train_args(a2d_setup, tmp_path / 'resumed', '--resume', path)):
            assert in_process(args) == 2
            assert f'{path} holds no model weights' in error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['list.pth.tar', 'tensor.pth.tar']


@pytest.mark.slow
def test_config_values_that_cannot_work_are_one_line_errors(a2d_setup, tmp_path, capsys):
    cases = [(['-bs', 0], 'batch_size: must be at least 1, got 0'),
             (['-ws', 0], 'window_size: must be at least 1, got 0'),
             (['-ebs', 0], 'eval_batch_size: must be at least 1, got 0'),
             (['--set', 'nheads=3'], 'd_model (64) must be divisible by nheads (3)')]
    for extra, message in cases:
        assert in_process([*train_args(a2d_setup, tmp_path / 'run'), *extra]) == 2
        assert message in error_line(capsys)
    result = run_main(*train_args(a2d_setup, tmp_path / 'run'), '-ebs', 0, expect=2)
    assert result.stderr.strip() == 'error: config key eval_batch_size: must be at least 1, got 0'
    assert list(tmp_path.iterdir()) == []


# --- 12: run directories that cannot be written, full disks -----------------------------------------------------

def test_output_dirs_that_cannot_hold_a_run_are_one_line_errors(a2d_setup, tmp_path, capsys):
    a_file = tmp_path / 'a_file'
    a_file.write_text('keep me')
    assert in_process(train_args(a2d_setup, a_file)) == 2
    assert error_line(capsys) == f'error: run directory {a_file} is a file; expected a directory (it is created ' \
                                 'if missing)'
    assert in_process(train_args(a2d_setup, a_file / 'run')) == 2
    assert error_line(capsys) == f'error: run directory {a_file / "run"}: {a_file} is a file, not a directory'

    with read_only_folder(tmp_path / 'read_only') as read_only:
        assert in_process(train_args(a2d_setup, read_only)) == 2
        assert error_line(capsys) == f'error: cannot write into the run directory {read_only}: Read-only file system'
        assert not list(read_only.iterdir())
    assert file_digests(tmp_path) == {'a_file': hashlib.sha1(b'keep me').hexdigest()}


def test_a_full_disk_while_saving_a_checkpoint_stops_the_run_keeping_the_earlier_ones(finished_run, a2d_setup,
                                                                                     tmp_path, capsys):
    """A resumed run on a disk with room for its config, log and metrics but not for its next checkpoint."""
    files = [p for p in finished_run.rglob('*') if p.is_file()]
    room = sum(4096 * -(-p.stat().st_size // 4096) for p in files)  # (tmpfs counts in pages; copies break links)
    half_a_checkpoint = (finished_run / 'checkpoints' / 'last.pth.tar').stat().st_size // 2
    with small_tmpfs(tmp_path / 'disk', str(room + half_a_checkpoint + 2 ** 16)) as disk:
        run_dir = disk / 'run'
        shutil.copytree(finished_run, run_dir)
        before = file_digests(run_dir / 'checkpoints')
        assert in_process(train_args(a2d_setup, run_dir, '--resume', run_dir / 'checkpoints' / 'last.pth.tar',
                                     epochs=2)) == 2
        assert error_line(capsys) == (f'error: cannot write the checkpoint {run_dir / "checkpoints" / "1.pth.tar"}: '
                                      'No space left on device; the run stopped (the files written before are intact)')
        assert file_digests(run_dir / 'checkpoints') == before  # no temporary file left either
        assert load(run_dir / 'checkpoints' / 'last.pth.tar')['epoch'] == 0
        assert (run_dir / 'metrics_epoch_1.json').is_file()  # (what was written before the checkpoint stays)


def test_a_full_disk_while_writing_masks_is_a_one_line_error(finished_run, a2d_setup, tmp_path, capsys):
    """A Refer-YouTube-VOS evaluation whose run directory fills up among its prediction masks."""
    dataset = make_ref_youtube_vos_dataset(tmp_path / 'ytvos')
    before = file_digests(tmp_path)
    with small_tmpfs(tmp_path / 'disk', '48k') as disk:
        run_dir = disk / 'eval'
        assert in_process(ytvos_eval_args(a2d_setup, run_dir, finished_run / 'checkpoints' / 'last.pth.tar',
                                          dataset.root)) == 2
        annotations = run_dir / 'validation_outputs' / 'epoch_0' / 'Annotations'
        line = error_line(capsys)
        assert line.startswith(f'error: cannot write the predicted mask {annotations}/') and line.endswith(
            '.png: No space left on device; the run stopped (the files written before are intact)'), line
        saved = sorted(annotations.rglob('*.png'))
        assert saved and all(np.asarray(Image.open(path)).shape == (64, 96) for path in saved)  # each one whole
        assert not [p for p in run_dir.rglob('*') if p.name.endswith('.tmp')]
    assert file_digests(tmp_path, exclude=[tmp_path / 'disk']) == before  # nothing written outside the run


# --- 13: tools/make_submission_zip.py ---------------------------------------------------------------------------

@pytest.fixture
def submission(tmp_path):
    """A valid meta file for one video (2 frames, 1 expression) and a zip with its masks."""
    meta = tmp_path / 'meta_expressions.json'
    meta.write_text(json.dumps({'videos': {'vid': {'expressions': {'0': {'exp': 'a thing'}},
                                                   'frames': ['00000', '00005']}}}))
    predictions = tmp_path / 'predictions' / 'Annotations' / 'vid' / '0'
    predictions.mkdir(parents=True)
    for frame in ('00000', '00005'):
        Image.fromarray(np.zeros((4, 6), dtype=np.uint8)).save(predictions / f'{frame}.png')
    assert submission_main(['write', str(tmp_path / 'predictions'), str(tmp_path / 'ok.zip')]) == 0
    return meta, tmp_path / 'ok.zip'


def test_make_submission_zip_errors_are_one_line(submission, tmp_path, capsys):
    meta, good_zip = submission
    capsys.readouterr()
    corrupt = tmp_path / 'corrupt.zip'
    with zipfile.ZipFile(good_zip) as source, zipfile.ZipFile(corrupt, 'w') as target:
        for entry in source.namelist():
            target.writestr(entry, b'not a png' if entry.endswith('00005.png') else source.read(entry))
        target.writestr('Annotations/../x/00000.png', source.read(source.namelist()[0]))
    assert submission_main(['check', str(corrupt), '--meta', str(meta), '--no-progress']) == 1
    report = capsys.readouterr().out
    assert f'{corrupt}, member Annotations/vid/0/00005.png: not a readable PNG (UnidentifiedImageError' in report
    assert "zip entry 'Annotations/../x/00000.png': name part '..' is not a plain name" in report
    assert 'BytesIO' not in report

    not_a_zip = tmp_path / 'not_a.zip'
    not_a_zip.write_text('hello')
    bad_meta = tmp_path / 'bad_meta.json'
    bad_meta.write_text('{"videos": ')
    a_file = tmp_path / 'a_file'
    a_file.write_text('')
    cases = [(['check', str(tmp_path / 'missing.zip'), '--meta', str(meta)],
              f'predictions not found: {tmp_path / "missing.zip"}'),
             (['check', str(not_a_zip), '--meta', str(meta)], f'{not_a_zip} is not a readable zip file'),
             (['check', str(good_zip), '--meta', str(bad_meta)], f'{bad_meta}: not valid JSON'),
             (['check', str(good_zip), '--meta', str(tmp_path / 'no_meta.json')],
              f'meta expressions file not found: {tmp_path / "no_meta.json"}'),
             (['write', str(tmp_path / 'no_predictions'), str(tmp_path / 'out.zip')],
              f'predictions folder not found: {tmp_path / "no_predictions"}'),
             (['write', str(tmp_path / 'predictions'), str(a_file / 'out.zip')],
              f'cannot write the submission zip {a_file / "out.zip"}: ')]
    for argv, message in cases:
        assert submission_main(argv) == 2, argv
        line = error_line(capsys)
        assert line.startswith(f'error: {message}'), line

    with read_only_folder(tmp_path / 'read_only') as read_only:
        assert submission_main(['write', str(tmp_path / 'predictions'), str(read_only / 'out.zip')]) == 2
        assert error_line(capsys) == (f'error: cannot write the submission zip {read_only / "out.zip"}: Read-only '
                                      'file system')
        assert not list(read_only.iterdir())

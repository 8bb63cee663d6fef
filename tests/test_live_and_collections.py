"""inference.py on live sources and on whole collections, as a user runs it, in child processes.

Live: a writer process feeds an MPEG-TS stream into a named pipe (or into standard input) one frame at a time; the
first masks must be on disk before the source ends, and a source that stalls ends the run with what was segmented
and one line. Collections: six short videos over two processes under torchrun (gloo, CPU) are each segmented
once, into the files one process writes, byte for byte; a run killed midway finishes only the rest when run again.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest

from tests.helpers import REPO, YTVOS_CONFIG, read_json, tiny_model_and_clip, video_frames, write_mp4

pytestmark = pytest.mark.slow

NUM_FRAMES, HEIGHT, WIDTH, FPS = 30, 64, 96, 25
LOW_LATENCY = ['--input-option', 'probesize=32', '--input-option', 'analyzeduration=0']
# A live source: writes frames of argv[1] (an mp4) as MPEG-TS into argv[2] ('-': stdout) one at a time, after
# `first` frames waits until the file argv[4] exists (or argv[5] seconds), then writes the rest, or, with 'stall',
# keeps the stream open without sending more until it is killed.
WRITER = '''
import os, sys, time, av
source, target, first, wait_for, how = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
output = av.open(sys.stdout.buffer if target == '-' else target, 'w', format='mpegts', options={'flush_packets': '1'})
stream = output.add_stream('mpeg4', rate=25)
with av.open(source) as video:
    frames = [frame.to_ndarray(format='rgb24') for frame in video.decode(video=0)]
stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], 'yuv420p'
stream.codec_context.gop_size = 1
for index, frame in enumerate(frames):
    if index == first:
        if how == 'stall':
            time.sleep(600)
        deadline = time.time() + 120
        while not os.path.exists(wait_for) and time.time() < deadline:
            time.sleep(0.05)
        print('masks on disk before the end' if os.path.exists(wait_for) else 'no masks', file=sys.stderr, flush=True)
    output.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')))
output.mux(stream.encode(None))
output.close()
'''


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    return tiny_model_and_clip(tmp_path_factory.mktemp('live'), NUM_FRAMES, HEIGHT, WIDTH, FPS)


def inference_command(tiny, out_dir, *extra):
    _, checkpoint, overrides, _ = tiny
    command = [sys.executable, str(REPO / 'inference.py'), '-c', str(YTVOS_CONFIG), '-ckpt', str(checkpoint),
               '-o', str(out_dir), '--cpu', '-ws', '8']
    for item in overrides:
        command += ['--set', item]
    return command + [str(e) for e in extra]


def writer(video, target, first, wait_for, how='wait', **popen):
    return subprocess.Popen([sys.executable, '-c', WRITER, str(video), str(target), str(first), str(wait_for), how],
                            stderr=subprocess.PIPE, text=True, **popen)


# --- live sources ----------------------------------------------------------------------------------------------

def test_a_named_pipe_gets_its_first_masks_before_it_ends(tiny, tmp_path):
    _, _, _, video = tiny
    pipe, out_dir = tmp_path / 'live.ts', tmp_path / 'out'
    os.mkfifo(pipe)
    first_masks = out_dir / '00_the-red-box' / 'masks' / '000000.png'
    source = writer(video, pipe, 16, first_masks)
    done = subprocess.run(inference_command(tiny, out_dir, '--video', pipe, '--online', '--text', 'the red box',
                                            *LOW_LATENCY), capture_output=True, text=True, timeout=300)
    _, writer_err = source.communicate(timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert 'masks on disk before the end' in writer_err  # the writer held back frame 16 until they were there
    summary = read_json(out_dir / 'summary.json')
    assert summary['num_frames'] == NUM_FRAMES and summary['object_query_rule'] == 'window'
    assert summary['stop_reason'] is None
    latencies = summary['latency_seconds']['per_window']
    assert len(latencies) == summary['windows'] and all(0 <= value < 60 for value in latencies)
    masks = sorted((out_dir / '00_the-red-box' / 'masks').glob('*.png'))
    assert [p.name for p in masks] == [f'{i:06d}.png' for i in range(NUM_FRAMES)]
    with av.open(str(out_dir / '00_the-red-box' / 'overlay.mp4')) as container:  # (fragmented: playable as it grew)
        assert sum(1 for _ in container.decode(video=0)) == NUM_FRAMES


def test_standard_input_is_a_source(tiny, tmp_path):
    _, _, _, video = tiny
    source = writer(video, '-', NUM_FRAMES, tmp_path / 'never', stdout=subprocess.PIPE)
    done = subprocess.run(inference_command(tiny, tmp_path / 'out', '--video', '-', '--online', '--input-format',
                                            'mpegts', '--text', 'the red box'),
                          stdin=source.stdout, capture_output=True, text=True, timeout=300)
    source.wait(timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_json(tmp_path / 'out' / 'summary.json')['num_frames'] == NUM_FRAMES


def test_a_source_that_stalls_gives_what_was_segmented_and_one_line(tiny, tmp_path):
    _, _, _, video = tiny
    pipe, out_dir = tmp_path / 'live.ts', tmp_path / 'out'
    os.mkfifo(pipe)
    source = writer(video, pipe, 12, tmp_path / 'never', how='stall')
    try:
        done = subprocess.run(inference_command(tiny, out_dir, '--video', pipe, '--online', '--text', 'the red box',
                                                '--stall-timeout', 3, *LOW_LATENCY),
                              capture_output=True, text=True, timeout=300)
    finally:
        source.kill()
    assert done.returncode == 3, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    # of the 12 frames sent, the last one or two may stay in the demuxer and the parser, which see a frame's end
    # only when the next one starts
    received = int(last.split('(after ')[1].split(' frames)')[0])
    assert 10 <= received <= 12
    assert last == (f'inference.py: stopped early: the source {pipe} sent no frame for 3 s (after {received} frames); '
                    f'the {received} frames before are segmented in {out_dir}')
    assert len(list((out_dir / '00_the-red-box' / 'masks').glob('*.png'))) == received
    assert read_json(out_dir / 'summary.json')['stop_reason'].startswith(f'the source {pipe} sent no frame')


# --- collections -----------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def collection(tiny):
    root = tiny[0]
    lines = []
    for index in range(6):
        path = write_mp4(root / f'video{index}.mp4', video_frames(10 + index, HEIGHT, WIDTH), FPS)
        lines.append({'video': str(path), 'queries': ['the red box', 'the background'][:1 + index % 2]})
    (root / 'videos.jsonl').write_text('\n'.join(json.dumps(line) for line in lines) + '\n')
    return root / 'videos.jsonl'


def one_thread_each():
    """The same number of threads in every process: torchrun gives its processes one, so the run they are compared
    with gets one too (float sums may round otherwise with more)."""
    return {**os.environ, 'OMP_NUM_THREADS': '1'}


def files_of(folder: Path) -> dict:
    """Every result file's bytes, but the summaries' timings."""
    found = {}
    for path in sorted(folder.rglob('*')):
        if path.is_file() and path.name not in ('log.txt', '.lock'):
            data = path.read_bytes()
            if path.name == 'summary.json':
                summary = json.loads(data)
                for key in ('seconds', 'latency_seconds', 'videos', 'processes'):
                    summary.pop(key, None)
                data = json.dumps(summary, sort_keys=True).encode()
            found[path.relative_to(folder).as_posix()] = data
    return found


def test_torchrun_segments_each_video_once_into_the_files_one_process_writes(tiny, collection, tmp_path):
    port = 29500 + os.getpid() % 1000
    torchrun = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc-per-node', '2', '--master-port',
                               str(port), *inference_command(tiny, tmp_path / 'two', '--videos', collection)[1:]],
                              capture_output=True, text=True, timeout=600, env=one_thread_each(), cwd=REPO)
    assert torchrun.returncode == 0, torchrun.stderr[-3000:]
    one = subprocess.run(inference_command(tiny, tmp_path / 'one', '--videos', collection), capture_output=True,
                         text=True, timeout=600, env=one_thread_each())
    assert one.returncode == 0, one.stderr[-3000:]
    summary = read_json(tmp_path / 'two' / 'summary.json')
    assert summary['processes'] == 2 and summary['counts'] == {'segmented': 6}
    assert [(video['folder'], video['rank']) for video in summary['videos']] == \
        [(f'video{index}', index % 2) for index in range(6)]  # each video by one process
    ours, theirs = files_of(tmp_path / 'two'), files_of(tmp_path / 'one')
    assert sorted(ours) == sorted(theirs) and len(ours) > 6 * 5
    assert [name for name in ours if ours[name] != theirs[name]] == []


def test_a_killed_collection_run_finishes_only_the_rest(tiny, collection, tmp_path):
    out_dir = tmp_path / 'out'
    process = subprocess.Popen(inference_command(tiny, out_dir, '--videos', collection), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(list(out_dir.glob('video*/summary.json'))) < 2 and time.time() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = {path.parent.name: path.stat().st_mtime_ns for path in out_dir.glob('video*/summary.json')}
    assert 2 <= len(finished) < 6
    again = subprocess.run(inference_command(tiny, out_dir, '--videos', collection), capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    statuses = {video['folder']: video['status'] for video in read_json(out_dir / 'summary.json')['videos']}
    assert statuses == {f'video{i}': 'complete (skipped)' if f'video{i}' in finished else 'segmented'
                        for i in range(6)}
    assert all((out_dir / name / 'summary.json').stat().st_mtime_ns == mtime for name, mtime in finished.items())
    assert not list(out_dir.rglob('.*.partial')) and not list(out_dir.rglob('.*.tmp'))


def test_a_bad_video_is_reported_skipped_and_fails_the_exit_code(tiny, collection, tmp_path):
    videos = tmp_path / 'videos.jsonl'
    lines = collection.read_text().splitlines()[:2] + [json.dumps({'video': str(tmp_path / 'gone.mp4'),
                                                                   'queries': ['a dog']})]
    videos.write_text('\n'.join(lines) + '\n')
    done = subprocess.run(inference_command(tiny, tmp_path / 'out', '--videos', videos), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 1, done.stderr[-3000:]
    gone = tmp_path / 'gone.mp4'
    assert f'error: {gone} (line 3): no such file or folder: {gone} (expected a video file or a folder of frames); ' \
           'skipped' in done.stdout + done.stderr
    summary = read_json(tmp_path / 'out' / 'summary.json')
    assert summary['counts'] == {'segmented': 2, 'failed': 1}
    assert (tmp_path / 'out' / 'video0' / 'summary.json').is_file()

"""demo.py as a page's users reach it: through HTTP, with gradio_client, against the app served on 127.0.0.1 by
the test, with the tiny MTTR of `helpers.tiny_model_files` (the `tiny_demo` fixture: seeded random weights) on
generated clips."""
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from unittest import mock

import av
import numpy as np
import pytest
from PIL import Image

import demo
import inference
from video_inference import overlays, results, sources
from tests.helpers import (DEMO_FPS as FPS, DEMO_HEIGHT as HEIGHT, DEMO_NUM_FRAMES as NUM_FRAMES,
                           DEMO_QUERIES as QUERIES, DEMO_WIDTH as WIDTH, REPO, YTVOS_CONFIG, read_mp4, start_server,
                           video_frames, write_mp4)

try:  # the demo's requirements (requirements-demo.txt) bring them
    import gradio_client
    import httpx
except ImportError:
    gradio_client = httpx = None

needs_gradio = pytest.mark.skipif(demo.MISSING_DEPENDENCY is not None or gradio_client is None,
                                  reason='the demo\'s requirements are missing: pip install -r requirements-demo.txt')
pytestmark = pytest.mark.filterwarnings('ignore::DeprecationWarning:gradio.*')  # Gradio's use of pandas 3


@pytest.fixture(scope='module')
def server(tiny_demo, tmp_path_factory):
    _, checkpoint, overrides, _ = tiny_demo
    work_dir = tmp_path_factory.mktemp('demo_server')
    with mock.patch.dict(os.environ):  # build_app sets GRADIO_TEMP_DIR
        app, url, segmenter = start_server(work_dir, checkpoint, overrides)
        yield url, segmenter, work_dir
        app.close()


def segment(url, video, queries, window_size=12, start=0, end=None):
    """One request as the page's button sends it; returns (overlay, plot, zip, summary)."""
    client = gradio_client.Client(url, verbose=False)
    return client.predict(gradio_client.handle_file(str(video)), '\n'.join(queries), window_size, start,
                          end, api_name='/segment')


def write_clip_with_sound(path, frames, fps, seconds_of_sound):
    """An mp4 of `frames` with an AAC track: a 440 Hz tone of `seconds_of_sound`."""
    rate = 22050
    with av.open(str(path), 'w') as container:
        video = container.add_stream('libx264', rate=fps)
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], 'yuv420p'
        audio = container.add_stream('aac', rate=rate, layout='mono')
        for frame in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')))
        container.mux(video.encode(None))
        tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(rate * seconds_of_sound)) / rate)).astype(np.float32)
        for start in range(0, len(tone), 1024):
            chunk = av.AudioFrame.from_ndarray(tone[None, start:start + 1024].copy(), format='fltp', layout='mono')
            chunk.sample_rate, chunk.pts = rate, start
            container.mux(audio.encode(chunk))
        container.mux(audio.encode(None))
    return path


@needs_gradio
@pytest.mark.slow
def test_the_overlay_keeps_the_sound_of_the_part_segmented(server, tmp_path):
    url, _, _ = server
    video = write_clip_with_sound(tmp_path / 'with_sound.mp4', video_frames(NUM_FRAMES, HEIGHT, WIDTH), FPS,
                                  NUM_FRAMES / FPS)
    overlay, _, _, _ = segment(url, video, QUERIES[:1], window_size=8, start=0.2, end=0.8)
    path = overlay['video'] if isinstance(overlay, dict) else overlay
    with av.open(str(path)) as container:
        (sound,) = container.streams.audio
        seconds = sum(frame.samples for frame in container.decode(sound)) / sound.rate
    assert seconds == pytest.approx(0.6, abs=0.1)  # the sound of 0.2-0.8 s, as the frames


def read_zip_masks(path):
    with zipfile.ZipFile(path) as archive:
        return {name: np.array(Image.open(io.BytesIO(archive.read(name)))) for name in archive.namelist()}


@needs_gradio
@pytest.mark.slow
def test_the_zip_holds_the_masks_inference_writes(tiny_demo, server, tmp_path):
    root, checkpoint, overrides, video = tiny_demo
    url, _, _ = server
    overlay, plot, masks_zip, summary = segment(url, video, QUERIES, window_size=8)
    argv = ['-c', str(YTVOS_CONFIG), '-ckpt', str(checkpoint), '--video', str(video), '-o', str(tmp_path / 'cli'),
            '--cpu', '-ws', '8'] + [a for q in QUERIES for a in ('--text', q)] + [a for o in overrides
                                                                                   for a in ('--set', o)]
    inference.main(argv)
    expected = {}
    for index, query in enumerate(QUERIES):
        folder = results.query_folder_name(index, query)
        for path in sorted((tmp_path / 'cli' / folder / 'masks').glob('*.png')):
            expected[f'{folder}/{path.name}'] = np.array(Image.open(path))
    ours = read_zip_masks(masks_zip['value'] if isinstance(masks_zip, dict) else masks_zip)
    assert sorted(ours) == sorted(expected) and len(ours) == 2 * NUM_FRAMES
    for name, mask in expected.items():
        np.testing.assert_array_equal(ours[name], mask, err_msg=name)
    assert {0, 255} <= set(np.unique(np.stack(list(ours.values()))))  # masks with something in them

    frames, rate = read_mp4(overlay['video'] if isinstance(overlay, dict) else overlay)
    # enlarged 3 times (the clip is under 240 pixels high), with a legend of the two queries below
    assert frames.shape[0] == NUM_FRAMES and frames.shape[2] == 3 * WIDTH and frames.shape[1] > 3 * HEIGHT
    assert rate == FPS
    assert Image.open(plot).format == 'PNG'
    # inference.py's rule for files: windows of 8 overlapping by 2, [0, 8), [6, 14), [12, 20), [16, 24)
    assert summary.startswith(f'{NUM_FRAMES} frames of {WIDTH}x{HEIGHT} at {FPS} fps, 4 windows of up to 8 frames')
    assert all(results.query_folder_name(i, q) in summary for i, q in enumerate(QUERIES))


@needs_gradio
@pytest.mark.slow
def test_bad_requests_get_the_page_s_error_and_the_server_keeps_serving(tiny_demo, server, tmp_path):
    root, _, _, video = tiny_demo
    url, _, _ = server
    not_a_video = tmp_path / 'not_a_video.mp4'
    not_a_video.write_text('plain text')
    long_video = write_mp4(tmp_path / 'long.mp4', video_frames(75, 40, 60), fps=FPS)  # 3 s
    many_frames = write_mp4(tmp_path / 'many_frames.mp4', video_frames(50, 40, 60), fps=FPS)  # 2 s
    cases = [(not_a_video, QUERIES, {}, 'cannot read the video not_a_video.mp4'),
             (video, ['  ', ''], {}, 'no text query'),
             (long_video, QUERIES, {}, 'the video is 3.0 s long; this server takes videos of at most 2.5 s'),
             (many_frames, QUERIES, {}, '50 frames from 0 s to the end; this server segments at most 40 frames'),
             (video, QUERIES * 2, {}, '4 queries: this server segments at most 3 per request'),
             (video, QUERIES, {'start': 0.5, 'end': 0.2}, 'end (0.2 s) must come after start (0.5 s)'),
             (video, QUERIES, {'window_size': 0}, 'Value 0 is less than minimum value 1')]  # Gradio's check
    for path, queries, extra, message in cases:
        with pytest.raises(gradio_client.exceptions.AppError) as error:
            segment(url, path, queries, **extra)
        assert message in str(error.value)
        assert str(tmp_path) not in str(error.value)  # the page names the upload, not the server's folders
    # the server itself refuses an upload over --max-upload-mb (gradio_client checks it before sending)
    response = httpx.post(f'{url}gradio_api/upload', files={'files': ('big.mp4', bytes(6 * 1024 ** 2))})
    assert response.status_code == 413
    _, _, masks_zip, _ = segment(url, many_frames, QUERIES[:1], start=1.2)  # the part from 1.2 s: 20 frames
    assert len(read_zip_masks(masks_zip)) == 20


@needs_gradio
@pytest.mark.slow
def test_a_second_request_waits_in_the_queue_with_its_position(tiny_demo, server):
    """Two pages send a request at once: the second is queued (its position shown), not run beside the first;
    the first reports its progress after each window."""
    video = tiny_demo[3]
    url, segmenter, _ = server
    first_client, second_client = (gradio_client.Client(url, verbose=False) for _ in range(2))
    arguments = (gradio_client.handle_file(str(video)), QUERIES[0], 8, 0, None)
    segmenter.window_delay, segmenter.intervals = 1.0, []
    try:
        first = first_client.submit(*arguments, api_name='/segment')
        deadline = time.monotonic() + 60
        while first.status().code != gradio_client.utils.Status.PROGRESS and time.monotonic() < deadline:
            time.sleep(0.05)
        second = second_client.submit(*arguments, api_name='/segment')
        first_statuses, second_statuses = [], []
        while not (first.done() and second.done()) and time.monotonic() < deadline:
            first_statuses.append(first.status())
            second_statuses.append(second.status())
            time.sleep(0.05)
        first.result(), second.result()
    finally:
        segmenter.window_delay = 0.0
    (first_start, first_end), (second_start, second_end) = segmenter.intervals
    assert first_end <= second_start
    queued = [s for s in second_statuses if s.code == gradio_client.utils.Status.IN_QUEUE]
    assert queued and queued[0].rank == 0 and queued[0].queue_size >= 1
    windows = {unit.desc for s in first_statuses for unit in (s.progress_data or [])}
    assert {'window 1 of 4', 'window 2 of 4'} <= windows


def test_session_files_are_deleted_when_the_page_closes(tmp_path):
    session_files = demo.SessionFiles(tmp_path / 'sessions')
    shared_upload, own_upload = tmp_path / 'shared.mp4', tmp_path / 'own.mp4'
    for path in (shared_upload, own_upload):
        path.write_bytes(b'video')
    first_run = session_files.run_dir('first')
    first_run.mkdir(parents=True)
    (first_run / 'overlay.mp4').write_bytes(b'result')
    session_files.add_upload('first', str(shared_upload))
    session_files.add_upload('first', str(own_upload))
    session_files.add_upload('second', str(shared_upload))
    session_files.end('first')
    assert not (tmp_path / 'sessions' / 'first').exists()
    assert not own_upload.exists() and shared_upload.exists()  # the second page still shows it
    session_files.end('second')
    assert not shared_upload.exists()


def test_example_clips_come_from_the_synthetic_generator(tmp_path):
    examples = demo.write_example_clips(tmp_path, count=2)
    assert len(examples) == 2
    for path, queries in examples:
        frames, rate = read_mp4(path)
        assert frames.shape == (demo.EXAMPLE_FRAMES, 64 * demo.EXAMPLE_SCALE, 64 * demo.EXAMPLE_SCALE, 3)
        assert rate == 8
        lines = queries.splitlines()
        assert 2 <= len(lines) <= 3 and all(line.split()[0] in ('the', 'a') for line in lines)


def write_clip(path, codec: str, frames):
    with av.open(str(path), 'w') as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], 'yuv420p'
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')))
        container.mux(stream.encode())
    return path


def test_an_upload_browsers_cannot_play_gets_a_word_instead_of_a_blank_preview(tmp_path):
    frames = video_frames(4, 32, 48)
    avi = write_clip(tmp_path / 'clip.avi', 'mpeg4', frames)  # MPEG-4 Part 2 in AVI: no browser plays it
    assert demo.preview_note(str(avi)) == (
        'Browsers cannot play this video (mpeg4 in AVI (Audio Video Interleaved)), so it shows no preview here; it is '
        'segmented all the same, and the overlay on the right plays in any browser.')
    assert demo.preview_note(str(write_clip(tmp_path / 'part2.mp4', 'mpeg4', frames))).startswith(
        'Browsers cannot play this video (mpeg4 in QuickTime / MOV)')
    for playable in (write_mp4(tmp_path / 'clip.mp4', frames, FPS), write_clip(tmp_path / 'clip.webm', 'libvpx-vp9',
                                                                                frames)):
        assert demo.preview_note(str(playable)) == ''
    (tmp_path / 'broken.mp4').write_bytes(b'not a video')  # (reported when it is segmented)
    assert demo.preview_note(str(tmp_path / 'broken.mp4')) == '' and demo.preview_note(None) == ''


def test_the_video_length_is_read_without_decoding(tmp_path):
    """From the mp4's header, and from the packets of a raw H.264 stream, which has no header."""
    frames = video_frames(50, 40, 60)
    assert sources.video_duration(write_mp4(tmp_path / 'clip.mp4', frames, FPS)) == pytest.approx(50 / FPS)
    with av.open(str(tmp_path / 'clip.h264'), 'w', format='h264') as container:
        stream = container.add_stream('libx264' if 'libx264' in av.codecs_available else 'h264', rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 60, 40, 'yuv420p'
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')))
        container.mux(stream.encode())
    assert sources.video_duration(tmp_path / 'clip.h264') == pytest.approx(50 / FPS)


def test_the_legend_names_every_query_under_the_frame():
    image = Image.fromarray(np.full((60, 90, 3), 100, dtype=np.uint8))
    masks = [np.zeros((60, 90), dtype=np.uint8) for _ in range(2)]
    masks[0][10:20, 10:20] = 1
    overlay = overlays.draw_overlays(image, masks, ['a short one', 'a query much too long for the frame'],
                                     overlays.OVERLAY_COLOURS[:2])
    assert overlay.shape[1:] == (90, 3) and overlay.shape[0] > 60 and overlay.shape[0] % 2 == 0
    np.testing.assert_array_equal(overlay[:60][masks[0] == 0][0], [100, 100, 100])  # the frame, unchanged off masks
    assert tuple(overlay[15, 15]) != (100, 100, 100)  # blended in the first colour
    legend = overlay[60:]
    for colour in overlays.OVERLAY_COLOURS[:2]:  # each query's swatch
        assert (legend == colour).all(axis=-1).any()


@needs_gradio
def test_command_line_errors_are_one_line(tiny_demo, capsys, tmp_path):
    _, checkpoint, overrides, _ = tiny_demo
    argv = ['-c', str(YTVOS_CONFIG), '--cpu'] + [a for o in overrides for a in ('--set', o)]
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        port = taken.getsockname()[1]
        for extra, message in [
                (['-ckpt', 'nowhere.pth'], 'checkpoint not found: nowhere.pth'),
                (['-ckpt', str(checkpoint), '--max-frames', '0'], '--max-frames must be positive, got 0'),
                (['-ckpt', str(checkpoint), '--set', 'no_such_key=1'], 'unknown config key(s) no_such_key'),
                (['-ckpt', str(checkpoint), '--port', str(port)], f'cannot listen on 127.0.0.1:{port}')]:
            with mock.patch.dict(os.environ), mock.patch.object(tempfile, 'tempdir', str(tmp_path)), \
                    pytest.raises(SystemExit) as stop:
                demo.main(argv + extra)
            assert stop.value.code == 2
            lines = capsys.readouterr().err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith('demo.py: error: ') and message in lines[0], lines
    assert not list(tmp_path.iterdir())  # the last one made its temporary folder, and deleted it


@needs_gradio
@pytest.mark.slow
@pytest.mark.parametrize('stop', [signal.SIGTERM, signal.SIGINT])
def test_the_server_listens_on_127_0_0_1_and_deletes_its_folder_when_stopped(tiny_demo, tmp_path, stop):
    """demo.py as a user starts it; `kill` stops it as Ctrl-C does, in one line, with exit code 128 + the signal."""
    _, checkpoint, overrides, _ = tiny_demo
    with socket.socket() as probe:  # a free port
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
    command = [sys.executable, str(REPO / 'demo.py'), '-c', str(YTVOS_CONFIG), '-ckpt', str(checkpoint), '--cpu',
               '--port', str(port)] + [a for o in overrides for a in ('--set', o)]
    server = subprocess.Popen(command, cwd=REPO, env={**os.environ, 'TMPDIR': str(tmp_path)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(f'http://127.0.0.1:{port}/', timeout=5) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, server.stdout.read()
                time.sleep(0.5)
        (work_dir,) = tmp_path.glob('mttr-demo-*')
        address = socket.gethostbyname(socket.gethostname())
        if address != '127.0.0.1':  # not reachable on the machine's other addresses
            with socket.socket() as other:
                other.settimeout(2)
                assert other.connect_ex((address, port)) != 0
        server.send_signal(stop)
        output, _ = server.communicate(timeout=60)
    finally:
        server.kill()
    assert server.returncode == 128 + stop, output
    assert output.strip().splitlines()[-1] == (f'demo.py: stopped by {stop.name}: the server is closed and its '
                                               f'temporary files ({work_dir}) removed')
    assert f'http://127.0.0.1:{port}' in output
    assert not work_dir.exists()


@pytest.mark.slow
def test_without_gradio_it_says_how_to_install_it(tmp_path):
    """A `gradio` module that fails to import stands for a machine without it."""
    (tmp_path / 'gradio.py').write_text('raise ImportError("No module named \'gradio\'")\n')
    result = subprocess.run([sys.executable, str(REPO / 'demo.py'), '-c', 'configs/synthetic.yaml', '-ckpt', 'x.pth'],
                            capture_output=True, text=True, cwd=REPO, timeout=300,
                            env={**os.environ, 'PYTHONPATH': f'{tmp_path}{os.pathsep}{REPO}'})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith('demo.py: error: the demo needs Gradio and matplotlib')
    assert result.stderr.strip().endswith('pip install -r requirements-demo.txt')
    assert result.stdout == ''


def test_help_shows_the_limits_and_their_defaults(capsys):
    with pytest.raises(SystemExit) as stop:
        demo.parse_args(['--help'])
    assert stop.value.code == 0
    text = ' '.join(capsys.readouterr().out.split()).split('options:')[1]
    for flag, default in [('--host HOST', 'default 127.0.0.1'), ('--port PORT', 'default 7860'),
                          ('--max-upload-mb MB', 'default 50 MB'), ('--max-video-seconds S', 'default 120 s'),
                          ('--max-frames N', 'default 300'), ('--max-queries N', 'default 6')]:
        assert flag in text and default in text.split(flag, 1)[1].split('--')[0], flag

"""inference.py as a user runs it, on a generated video, with a small MTTR under seeded random weights.

The model is tiny (`helpers.TINY_INFERENCE_MODEL`: small Swin, 1-layer RoBERTa built from a config, 6 object
queries) and frames are resized to 64x96, so each window is one fast CPU forward pass; the output stays at the
input's 100x150.
"""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import inference
from video_inference.results import query_folder_name
from video_inference.sources import select_frames
from tests.helpers import (REPO, TINY_INFERENCE_MODEL, YTVOS_CONFIG, read_mp4, small_tmpfs, tiny_model_and_clip,
                           video_frames)

NUM_FRAMES, HEIGHT, WIDTH, FPS = 37, 100, 150, 25


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    return tiny_model_and_clip(tmp_path_factory.mktemp('inference'), NUM_FRAMES, HEIGHT, WIDTH, FPS)


def run(setup, video, out_dir, *queries, extra=()):
    """inference.main in this process; returns the folder of each query."""
    _, checkpoint, overrides, _ = setup
    argv = ['-c', str(YTVOS_CONFIG), '-ckpt', str(checkpoint), '--video', str(video), '-o', str(out_dir), '--cpu']
    for query in queries:
        argv += ['--text', query]
    for item in overrides:
        argv += ['--set', item]
    inference.main(argv + [str(a) for a in extra])
    return [out_dir / query_folder_name(i, q) for i, q in enumerate(queries)]


def fails_with(setup, capsys, video, *queries, extra=(), out_dir=None):
    """The one-line message of a run that must stop with exit code 2."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        run(setup, video, out_dir or setup[0] / 'failed', *queries, extra=extra)
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('inference.py: error: '), lines
    return lines[0]


def read_scores(query_dir):
    return json.loads((query_dir / 'scores.json').read_text())


def read_masks(query_dir):
    return {p.name: np.array(Image.open(p)) for p in sorted((query_dir / 'masks').glob('*.png'))}


@pytest.fixture(scope='module')
def video_run(setup):
    """The 37-frame clip in windows of 12: [0, 12), [12, 24), [24, 36) and [25, 37) for the last frame, with the
    whole-video rule (the results of this repository's inference before the other rules)."""
    root, _, _, video = setup
    (query_dir,) = run(setup, video, root / 'clip_out', 'the red box on the left', extra=['-ws', 12, '--rule', 'video'])
    return query_dir


def test_overlay_video_has_the_input_frame_count_size_and_rate(video_run):
    frames, rate = read_mp4(video_run / 'overlay.mp4')
    assert frames.shape == (NUM_FRAMES, HEIGHT, WIDTH, 3)
    assert rate == FPS


def test_one_binary_png_mask_per_frame_at_the_input_size(video_run):
    masks = read_masks(video_run)
    assert list(masks) == [f'{i:06d}.png' for i in range(NUM_FRAMES)]
    assert all(mask.shape == (HEIGHT, WIDTH) and mask.dtype == np.uint8 for mask in masks.values())
    values = np.unique(np.stack(list(masks.values())))
    assert set(values) <= {0, 255}
    assert list(values) == [0, 255]  # the tiny model segments something, and not the whole frame
    records = read_scores(video_run)['frames']
    assert [r['mask_pixels'] for r in records] == [int((m > 0).sum()) for m in masks.values()]


def test_one_object_query_is_chosen_for_the_whole_video(video_run):
    scores = read_scores(video_run)
    probabilities = np.load(video_run / 'object_query_probabilities.npy')  # [T, N]
    assert probabilities.shape == (NUM_FRAMES, TINY_INFERENCE_MODEL['num_queries'])
    chosen = scores['object_query']
    assert chosen == int(probabilities.mean(axis=0).argmax())
    assert scores['object_query_score'] == pytest.approx(probabilities[:, chosen].mean(), abs=1e-6)
    assert [r['referred_probability'] for r in scores['frames']] == pytest.approx(probabilities[:, chosen], abs=1e-7)
    assert [w['frames'] for w in scores['windows']] == [[0, 12], [12, 24], [24, 36], [25, 37]]
    assert [w['output_frames'] for w in scores['windows']] == [[0, 12], [12, 24], [24, 36], [36, 37]]
    assert [r['window'] for r in scores['frames']] == [0] * 12 + [1] * 12 + [2] * 12 + [3]
    assert (scores['num_frames'], scores['frame_rate'], scores['query']) == (NUM_FRAMES, FPS, 'the red box on the left')


def test_the_preview_is_the_overlay_of_the_middle_frame(video_run):
    preview = np.array(Image.open(video_run / 'preview.png'))
    assert preview.shape == (HEIGHT, WIDTH, 3)
    overlay, _ = read_mp4(video_run / 'overlay.mp4')
    differences = [np.abs(preview.astype(int) - frame).mean() for frame in overlay]
    assert int(np.argmin(differences)) == NUM_FRAMES // 2  # the overlay video went through H.264


def test_the_first_window_gives_what_a_run_on_that_window_alone_gives(setup, video_run):
    """Windows are independent forward passes, so the frames of the first window get the same per-query
    probabilities either way. Their masks are the same when the same object query is used: the whole video's
    choice may differ from the one the first 12 frames alone would make, so the short run is given it."""
    root, _, _, video = setup
    long_scores = read_scores(video_run)
    (short_run,) = run(setup, video, root / 'first_window', 'the red box on the left',
                       extra=['-ws', 12, '--end', 12 / FPS, '--object-query', long_scores['object_query']])
    short_scores = read_scores(short_run)
    assert [w['frames'] for w in short_scores['windows']] == [[0, 12]]
    np.testing.assert_array_equal(np.load(short_run / 'object_query_probabilities.npy'),
                                  np.load(video_run / 'object_query_probabilities.npy')[:12])
    short_masks, long_masks = read_masks(short_run), read_masks(video_run)
    assert list(short_masks) == [f'{i:06d}.png' for i in range(12)]
    for name, mask in short_masks.items():
        np.testing.assert_array_equal(mask, long_masks[name], err_msg=name)
    assert short_scores['frames'] == long_scores['frames'][:12]


def test_the_default_rule_chooses_per_window_over_overlapping_windows(setup):
    root, _, _, video = setup
    (query_dir,) = run(setup, video, root / 'per_window', 'the red box', extra=['-ws', 12])
    scores = read_scores(query_dir)
    assert (scores['object_query_rule'], scores['window_overlap']) == ('window', 3)
    assert [w['frames'] for w in scores['windows']] == [[0, 12], [9, 21], [18, 30], [25, 37]]
    assert [w['output_frames'] for w in scores['windows']] == [[0, 12], [12, 21], [21, 30], [30, 37]]
    windows = scores['windows']
    assert [r['window'] for r in scores['frames']] == [0] * 12 + [1] * 9 + [2] * 9 + [3] * 7
    assert [r['object_query'] for r in scores['frames']] == [windows[r['window']]['object_query']
                                                             for r in scores['frames']]
    probabilities = np.load(query_dir / 'object_query_probabilities.npy')
    assert [r['referred_probability'] for r in scores['frames']] == pytest.approx(
        [probabilities[r['frame'], r['object_query']] for r in scores['frames']], abs=1e-7)
    summary = json.loads((root / 'per_window' / 'summary.json').read_text())
    assert summary['num_frames'] == NUM_FRAMES and summary['windows'] == 4


def test_start_end_and_fps_select_the_frames(setup):
    root, _, _, video = setup
    (query_dir,) = run(setup, video, root / 'selection', 'the red box',
                       extra=['--start', 0.4, '--end', 1.2, '--fps', 10])
    scores = read_scores(query_dir)
    # frames at 0.04 s steps; from 0.4 s, the first frame at or after every 0.1 s, up to 1.2 s (excluded)
    expected = [10, 13, 15, 18, 20, 23, 25, 28]
    assert [r['source_index'] for r in scores['frames']] == expected
    assert [r['time'] for r in scores['frames']] == pytest.approx([i / FPS for i in expected])
    assert list(read_masks(query_dir)) == [f'{i:06d}.png' for i in expected]
    frames, rate = read_mp4(query_dir / 'overlay.mp4')
    assert frames.shape == (len(expected), HEIGHT, WIDTH, 3) and rate == 10


def test_frame_folder_with_two_queries(setup):
    """A folder of PNGs of odd size (the overlay is then 4:4:4, which keeps odd sizes), in windows of 4."""
    root = setup[0]
    folder = root / 'frames'
    folder.mkdir()
    frames = video_frames(num_frames=7, height=75, width=101)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f'img_{i:03d}.png')
    (folder / 'notes.txt').write_text('not a frame')
    query_dirs = run(setup, folder, root / 'folder_out', 'the red box', 'the background', extra=['-ws', 4])
    assert [d.name for d in query_dirs] == ['00_the-red-box', '01_the-background']
    for query_dir in query_dirs:
        assert list(read_masks(query_dir)) == [f'img_{i:03d}.png' for i in range(7)]
        assert all(m.shape == (75, 101) for m in read_masks(query_dir).values())
        overlay, rate = read_mp4(query_dir / 'overlay.mp4')
        assert overlay.shape == (7, 75, 101, 3) and rate == 30
        assert [w['frames'] for w in read_scores(query_dir)['windows']] == [[0, 4], [3, 7]]
    first, second = (np.load(d / 'object_query_probabilities.npy') for d in query_dirs)
    assert not np.allclose(first, second)  # each query is segmented with its own text


def test_queries_of_one_run_equal_a_run_per_query(setup):
    """Four queries share each window's encoding (decoded 3 at a time, so in two chunks); each gives what a run
    with that query alone gives: probabilities within 1e-5 and the same object query (tests/test_video_segmenter.py
    checks the masks pixel by pixel against the logits)."""
    root, _, _, video = setup
    queries = ['the red box', 'the background', 'a box moving right', 'the left part']
    texts_file = root / 'queries.txt'
    texts_file.write_text('\n'.join(queries[1:]) + '\n\n')
    together = run(setup, video, root / 'together', queries[0],
                   extra=['-ws', 12, '--texts-file', texts_file, '--query-batch', 3])
    together = [root / 'together' / query_folder_name(i, q) for i, q in enumerate(queries)]
    assert all(d.is_dir() for d in together)
    for index, query in enumerate(queries):
        (alone,) = run(setup, video, root / f'alone{index}', query, extra=['-ws', 12])
        ours, theirs = (np.load(d / 'object_query_probabilities.npy') for d in (together[index], alone))
        assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()
        assert [w['object_query'] for w in read_scores(together[index])['windows']] == \
            [w['object_query'] for w in read_scores(alone)['windows']]
        assert read_masks(together[index]).keys() == read_masks(alone).keys()


def test_texts_file_errors(setup, capsys, tmp_path):
    video = setup[3]
    assert 'no text query' in fails_with(setup, capsys, video)
    empty = tmp_path / 'empty.txt'
    empty.write_text('\n  \n')
    assert f'--texts-file {empty} holds no query' in fails_with(setup, capsys, video, extra=['--texts-file', empty])
    missing = tmp_path / 'missing.txt'
    assert f'--texts-file {missing}: cannot read it' in fails_with(setup, capsys, video,
                                                                   extra=['--texts-file', missing])
    assert '--query-batch must be at least 1' in fails_with(setup, capsys, video, 'a query',
                                                            extra=['--query-batch', 0])


def test_select_frames():
    times = [i / 25 for i in range(50)]
    assert select_frames(times) == list(range(50))
    assert select_frames(times, start=0.2, end=1.0) == list(range(5, 25))
    assert select_frames(times, fps=10)[:8] == [0, 3, 5, 8, 10, 13, 15, 18]
    assert select_frames(times, fps=100) == list(range(50))  # a higher rate than the video's keeps every frame
    assert select_frames(times, start=5) == []


def foreign_checkpoint(setup):
    state_dict = dict(torch.load(setup[1], weights_only=True)['model_state_dict'])
    state_dict.pop('is_referred_head.weight')
    state_dict['class_embed.weight'] = torch.zeros(3, 64)
    path = setup[0] / 'foreign.pth'
    torch.save({'model_state_dict': state_dict}, path)
    return path


def test_unreadable_video(setup, capsys):
    path = setup[0] / 'not_a_video.mp4'
    path.write_text('plain text')
    truncated = setup[0] / 'truncated.mp4'
    truncated.write_bytes(setup[3].read_bytes()[:2000])
    for video in (path, truncated):
        message = fails_with(setup, capsys, video, 'a query')
        assert f'cannot read the video {video}' in message and 'folder of jpg/png frames' in message


def test_truncated_video_with_its_index_at_the_start_is_refused_naming_both_counts(setup, capsys, tmp_path):
    """A 'faststart' mp4 announces all its frames before its data: cut short, it still decodes without an error
    (PyAV's threaded decoding swallows it), only fewer frames."""
    import av
    path = tmp_path / 'faststart.mp4'
    with av.open(str(path), 'w', options={'movflags': 'faststart'}) as container:
        stream = container.add_stream('libx264', rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, 'yuv420p'
        for frame in np.random.default_rng(0).integers(0, 256, (24, HEIGHT, WIDTH, 3), dtype=np.uint8):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')))
        container.mux(stream.encode())
    data = path.read_bytes()
    for kept in (0.3, 0.5):  # (cut there, the decoder stops quietly / with an error)
        truncated = tmp_path / f'truncated_{kept}.mp4'
        truncated.write_bytes(data[:int(len(data) * kept)])
        message = fails_with(setup, capsys, truncated, 'a query')
        assert f'the video {truncated} is truncated or damaged: the file announces 24 frames, ' in message
        decoded = int(message.split('announces 24 frames, ')[1].split()[0])
        assert 0 < decoded < 22


def test_missing_video_and_empty_folder(setup, capsys):
    assert 'no such file or folder' in fails_with(setup, capsys, setup[0] / 'nowhere.mp4', 'a query')
    empty = setup[0] / 'empty_folder'
    empty.mkdir()
    assert f'no frames in the folder {empty}' in fails_with(setup, capsys, empty, 'a query')


@pytest.mark.parametrize('query', ['', '   '])
def test_empty_query(setup, capsys, query):
    message = fails_with(setup, capsys, setup[3], 'a dog', query)
    assert 'the text query is empty' in message


def test_no_frames_in_the_range(setup, capsys):
    message = fails_with(setup, capsys, setup[3], 'a query', extra=['--start', 2, '--end', 3])
    assert message.endswith(f'no frames between 2 s and 3 s in {setup[3]} (it has 37 frames spanning 0.00-1.44 s)')


def test_checkpoint_of_another_architecture_lists_the_keys(setup, capsys):
    video = setup[3]
    message = fails_with(setup, capsys, video, 'a query', extra=['-ckpt', foreign_checkpoint(setup)])
    assert 'does not fit this model' in message
    assert 'missing keys: is_referred_head.weight; unexpected keys: class_embed.weight' in message
    message = fails_with(setup, capsys, video, 'a query', extra=['--set', 'num_queries=7'])
    assert 'size mismatch for obj_queries.weight' in message


@pytest.mark.slow
def test_command_line_errors_are_one_line_without_a_stack_trace(setup):
    root, checkpoint, _, _ = setup
    bad_video = root / 'bad_cli.avi'
    bad_video.write_bytes(b'\x00' * 100)
    command = [sys.executable, str(REPO / 'inference.py'), '-c', str(YTVOS_CONFIG), '-ckpt', str(checkpoint),
               '--video', str(bad_video), '--text', 'a query', '-o', str(root / 'cli'), '--cpu']
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(f'inference.py: error: cannot read the video {bad_video}')
    assert result.stdout == ''


def test_output_folders_that_cannot_hold_results_are_one_line_errors(setup, capsys, tmp_path):
    video = setup[3]
    a_file = tmp_path / 'a_file'
    a_file.write_text('not a folder')
    assert fails_with(setup, capsys, video, 'a query', out_dir=a_file) == (
        f'inference.py: error: -o {a_file} is a file; expected a directory (it is created if missing)')
    assert fails_with(setup, capsys, video, 'a query', out_dir=a_file / 'below') == (
        f'inference.py: error: -o {a_file / "below"}: {a_file} is a file, not a directory')


def test_a_full_disk_while_writing_results_is_a_one_line_error_leaving_nothing_half_written(setup, capsys, tmp_path):
    with small_tmpfs(tmp_path / 'disk', '96k') as disk:
        capsys.readouterr()
        with pytest.raises(SystemExit) as stop:
            run(setup, setup[3], disk / 'out', 'a query', extra=['-ws', 12])
        assert stop.value.code == 2
        error = capsys.readouterr().err
        last = error.strip().splitlines()[-1]
        assert last.startswith('inference.py: error: cannot write the ') and last.endswith('No space left on device')
        assert str(disk / 'out') in last and 'Traceback' not in error
        written = sorted(p.relative_to(disk).as_posix() for p in disk.rglob('*') if p.is_file())
        assert not [name for name in written if name.endswith(('.tmp', '.partial'))]  # no temporary file left
        masks = [disk / name for name in written if name.endswith('.png') and '/masks/' in name]
        assert masks and all(np.array(Image.open(path)).shape == (HEIGHT, WIDTH) for path in masks)  # each whole


def test_config_and_device_errors(setup, capsys):
    video = setup[3]
    message = fails_with(setup, capsys, video, 'a query', extra=['--set', 'no_such_key=1'])
    assert 'unknown config key(s) no_such_key' in message
    message = fails_with(setup, capsys, video, 'a query', extra=['--object-query', 6])
    assert '--object-query 6: the model has object queries 0 to 5' in message
    message = fails_with(setup, capsys, video, 'a query', extra=['-ckpt', setup[0] / 'no_checkpoint.pth'])
    assert message.endswith(f'checkpoint not found: {setup[0] / "no_checkpoint.pth"}')
    if not torch.cuda.is_available():
        message = fails_with(setup, capsys, video, 'a query', extra=['--set', 'device=cuda'])
        assert 'CUDA is not available on this machine; run on the CPU with --cpu' in message


@pytest.mark.parametrize('value, kind', [('-5', 'a list'), ('0', 'a Tensor')])
def test_bad_values_and_checkpoints_that_hold_no_weights_are_one_line_errors(setup, capsys, tmp_path, value, kind):
    video = setup[3]
    assert fails_with(setup, capsys, video, 'a query', extra=['--fps', value]) == (
        f'inference.py: error: --fps must be a positive number of frames a second, got {value}')
    checkpoint = tmp_path / 'not_a_dict.pth'
    torch.save([1, 2] if kind == 'a list' else torch.zeros(3), checkpoint)
    message = fails_with(setup, capsys, video, 'a query', extra=['-ckpt', checkpoint])
    assert f'{checkpoint} holds no model weights (it holds {kind})' in message

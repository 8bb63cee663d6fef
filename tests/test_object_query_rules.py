"""The window layout with overlaps, for files and for frames as they arrive (models/windows.py), and the rules
that choose an object query across windows (video_inference/choice.py), on hand-made numbers; and the tool that
compares the rules (tools/compare_object_query_rules.py), run on a tiny model."""
import json

import numpy as np
import pytest
import torch

from models.windows import WindowCutter, window_layout
from video_inference.choice import CausalChoice, LinkedChoice, RunningMean, WholeVideoChoice, overlaps


def spans(windows):
    return [(w.start, w.end, w.first_output) for w in windows]


def test_non_overlapping_windows_keep_the_layout_evaluation_and_inference_have_used():
    assert spans(window_layout(37, 12)) == [(0, 12, 0), (12, 24, 12), (24, 36, 24), (25, 37, 36)]
    assert spans(window_layout(36, 12)) == [(0, 12, 0), (12, 24, 12), (24, 36, 24)]
    assert spans(window_layout(5, 12)) == [(0, 5, 0)]


def test_overlapping_windows_give_each_frame_to_the_first_window_holding_it():
    assert spans(window_layout(30, 12, overlap=3)) == [(0, 12, 0), (9, 21, 12), (18, 30, 21)]
    assert spans(window_layout(31, 12, overlap=3)) == [(0, 12, 0), (9, 21, 12), (18, 30, 21), (19, 31, 30)]
    for num_frames in range(1, 40):
        outputs = [f for w in window_layout(num_frames, 8, overlap=2) for f in range(w.first_output, w.end)]
        assert outputs == list(range(num_frames)), num_frames  # every frame once, in order


def test_the_cutter_gives_the_layout_as_frames_arrive():
    for num_frames in (1, 7, 12, 13, 30, 31, 100):
        cutter, seen = WindowCutter(12, 3), []
        for frame in range(num_frames):
            cut = cutter.add(frame)
            if cut is not None:
                window, items = cut
                assert items == list(range(window.start, window.end))  # its own frames, as soon as the last came
                assert window.end == frame + 1
                seen.append(window)
        last = cutter.finish()
        if last is not None:
            assert last[1] == list(range(last[0].start, last[0].end))
            seen.append(last[0])
        assert seen == window_layout(num_frames, 12, 3)


def test_an_overlap_as_large_as_the_window_is_refused():
    with pytest.raises(ValueError, match='the window overlap must be 0 to 11'):
        window_layout(30, 12, overlap=12)


def test_the_running_mean_is_numpys_mean_to_the_bit():
    rng = np.random.default_rng(0)
    for num_frames in (1, 5, 37, 1000):
        rows = rng.random((num_frames, 50), dtype=np.float32)
        running = RunningMean()
        for start in range(0, num_frames, 12):  # a window at a time
            running.add(rows[start:start + 12])
        assert np.array_equal(running.mean(), rows.mean(axis=0))


def test_whole_video_choice_takes_the_highest_mean_over_all_frames():
    choice = WholeVideoChoice()
    choice.add(np.array([[0.9, 0.1, 0.5]] * 4, dtype=np.float32))  # slot 0 wins the first window ...
    choice.add(np.array([[0.0, 0.8, 0.55]] * 8, dtype=np.float32))  # ... slot 1 the longer second one
    # means: slot 0 (3.6 + 0) / 12 = 0.3, slot 1 (0.4 + 6.4) / 12 = 0.567, slot 2 (2 + 4.4) / 12 = 0.533
    assert choice.choose() == 1


def masks_of(*boxes, size=8):
    """[T=1, N, size, size] bool masks, one per (top, left, bottom, right) box (None: an empty mask)."""
    masks = torch.zeros((1, len(boxes), size, size), dtype=torch.bool)
    for n, box in enumerate(boxes):
        if box is not None:
            top, left, bottom, right = box
            masks[0, n, top:bottom, left:right] = True
    return masks


def test_overlaps_are_the_ious_of_every_pair_and_zero_when_both_are_empty():
    previous = masks_of((0, 0, 4, 4), None)  # 16 pixels, nothing
    current = masks_of((0, 0, 4, 4), (0, 2, 4, 6), None)  # the same, half of it (8 shared of 24), nothing
    assert np.allclose(overlaps(previous, current), [[1.0, 8 / 24, 0.0], [0.0, 0.0, 0.0]])


def test_the_causal_rule_follows_the_object_across_windows():
    choice = CausalChoice(link=True)
    first = np.array([[0.1, 0.9, 0.2]], dtype=np.float32)
    assert choice.choose(first, None) == 1  # the first window: probabilities alone
    choice.remember(masks_of((0, 0, 4, 4)))  # slot 1's masks on the window's last frame
    # in the next window the object is in slot 2, whose probability is a little lower than slot 0's
    second = np.array([[0.5, 0.1, 0.4]], dtype=np.float32)
    shared = masks_of((4, 4, 8, 8), None, (0, 0, 4, 4))  # slot 2 covers what slot 1 covered
    assert choice.choose(second, shared) == 2  # 0.4 + IoU 1 beats 0.5 + IoU 0
    window_rule = CausalChoice(link=False)
    assert window_rule.choose(second, shared) == 0  # (the `window` rule: probabilities alone)


def test_the_linked_rule_chooses_the_best_chain_over_the_whole_video():
    choice = LinkedChoice()
    choice.add(np.array([0.6, 0.5]), None)
    choice.add(np.array([0.5, 0.6]), np.array([[0.0, 1.0], [1.0, 0.0]]))  # slot 0 becomes slot 1 and back
    choice.add(np.array([0.9, 0.0]), np.array([[1.0, 0.0], [0.0, 1.0]]))
    # chains by hand: [0, 1, 1] = 0.6 + 1 + 0.6 + 1 + 0.0 = 3.2; [1, 0, 0] = 0.5 + 1 + 0.5 + 1 + 0.9 = 3.9;
    # [0, 0, 0] = 0.6 + 0.5 + 0.9 = 2.0; [0, 1, 0] = 0.6 + 1 + 0.6 + 0 + 0.9 = 3.1
    assert choice.choose() == [1, 0, 0]


def test_the_linked_rule_without_shared_frames_chooses_each_window_by_its_probabilities():
    choice = LinkedChoice()
    choice.add(np.array([0.6, 0.5]), None)
    choice.add(np.array([0.2, 0.7]), None)
    assert choice.choose() == [0, 1]


# --- tools/compare_object_query_rules.py -----------------------------------------------------------------------

@pytest.fixture(scope='module')
def tiny_checkpoint(tmp_path_factory):
    from tests.helpers import tiny_model_files
    return tiny_model_files(tmp_path_factory.mktemp('rules'))


def run_tool(tiny_checkpoint, *extra):
    from tests.helpers import YTVOS_CONFIG
    from tools import compare_object_query_rules
    checkpoint, overrides = tiny_checkpoint
    argv = ['-c', str(YTVOS_CONFIG), '-ckpt', str(checkpoint), '-ws', '4', '--videos', '2', '--frames', '12',
            *[flag for item in overrides for flag in ('--set', item)], *map(str, extra)]
    return compare_object_query_rules.main(argv)


def test_the_rules_tool_scores_every_rule_on_every_expression_of_the_long_videos(tiny_checkpoint, tmp_path, capsys):
    from datasets.synthetic import LongVideoSpec, generate_long_video
    assert run_tool(tiny_checkpoint, '--json', tmp_path / 'rules.json') == 0
    results = json.loads((tmp_path / 'rules.json').read_text())
    assert list(results) == ['video', 'window', 'linked', 'causal']
    spec = LongVideoSpec(seed=0, num_frames=12)
    expressions = sum(len(generate_long_video(spec, index)[3]) for index in range(2))
    for rule, result in results.items():
        assert result['expressions'] == expressions, rule
        assert 0 <= result['J'] <= 1 and 0 <= result['F'] <= 1
        assert result['J&F'] == pytest.approx((result['J'] + result['F']) / 2)
        assert result['window_overlap'] == (0 if rule == 'video' else 1)  # a quarter of 4, rounded up
        assert result['causal'] == (rule in ('window', 'causal'))
    table = capsys.readouterr().out.splitlines()
    assert sum(line.startswith('| `') for line in table) == 4
    # these 12-frame videos have their objects in view throughout: no frame without the object
    assert all(result['referred_probability_absent'] is None for result in results.values())
    assert all(line.split(' | ')[6].endswith(' / -') for line in table if line.startswith('| `'))


@pytest.mark.slow
def test_the_rules_tool_splits_the_probability_of_referred_by_whether_the_object_is_shown(tiny_checkpoint,
                                                                                          tmp_path):
    """The chosen object query's probability of "referred", averaged over the frames that show the expression's
    object and over those that do not (seed 1, 20 frames: objects enter or leave)."""
    from datasets.synthetic import LongVideoSpec, generate_long_video
    from engine.run_config import load_run_config
    from tests.helpers import YTVOS_CONFIG
    from tools.compare_object_query_rules import InMemoryFrames
    from video_inference.segmenter import VideoSegmenter
    checkpoint, overrides = tiny_checkpoint
    config = load_run_config(YTVOS_CONFIG, overrides, running_mode='eval', checkpoint_path=str(checkpoint),
                             needs_dataset=False, device='cpu')
    segmenter = VideoSegmenter.from_checkpoint(config, checkpoint)
    assert run_tool(tiny_checkpoint, '--json', tmp_path / 'rules.json', '--seed', 1, '--frames', 20) == 0
    results = json.loads((tmp_path / 'rules.json').read_text())
    spec = LongVideoSpec(seed=1, num_frames=20)
    probabilities = {True: [], False: []}
    for index in range(2):
        frames, masks, _, expressions = generate_long_video(spec, index)
        windows = list(segmenter.segment(InMemoryFrames(frames), expressions, 4, 'video', num_frames=20))
        for q, object_masks in enumerate(masks):
            chosen = [p for w in windows for p in w.probabilities[q][:, w.object_queries[q]]]
            for frame, probability in enumerate(chosen):
                probabilities[bool(object_masks[frame].any())].append(probability)
    assert probabilities[True] and probabilities[False]  # the long videos have frames of both kinds
    assert results['video']['referred_probability_present'] == pytest.approx(np.mean(probabilities[True]))
    assert results['video']['referred_probability_absent'] == pytest.approx(np.mean(probabilities[False]))


def test_the_rules_tool_checks_its_values_and_output_before_segmenting(tiny_checkpoint, tmp_path, capsys):
    assert run_tool(tiny_checkpoint, '--frames', 4) == 2
    assert capsys.readouterr().err.strip() == ('error: --frames (4) must exceed -ws (4): the rules differ only on '
                                               'videos longer than a window')
    (tmp_path / 'a_file').write_text('')
    assert run_tool(tiny_checkpoint, '--json', tmp_path / 'a_file' / 'rules.json') == 2
    output = tmp_path / 'a_file' / 'rules.json'
    assert capsys.readouterr().err.strip() == (f'error: cannot write the results file {output}: {tmp_path / "a_file"} '
                                               'is a file, not a folder')

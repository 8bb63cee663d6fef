"""video_inference/segmenter.py: several text queries on one encoding of each window give, query by query, what a
segmentation with that query alone gives; the windows' results come in order, each frame once; the two second
passes of the whole-video rules give the same results (the tiny model of `helpers.tiny_model_files`)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from config import load_config
from datasets.transforms import transforms_from_config
from models import build_trained_network
from models.windows import window_layout
from tests.helpers import YTVOS_CONFIG, tiny_model_files, video_frames, write_mp4
from video_inference.segmenter import VideoSegmenter
from video_inference.sources import open_input

QUERIES = ['the red box', 'the background', 'a box moving right', 'the left part']


@pytest.fixture(scope='module')
def segmenter_and_video(tmp_path_factory):
    root = tmp_path_factory.mktemp('segmenter')
    checkpoint, overrides = tiny_model_files(root)
    config = load_config(YTVOS_CONFIG, overrides, running_mode='eval', device='cpu')
    segmenter = VideoSegmenter(build_trained_network(config, checkpoint), transforms_from_config('test', config),
                               torch.device('cpu'), query_batch=3)
    video = write_mp4(root / 'clip.mp4', video_frames(num_frames=20, height=100, width=150), fps=25)
    return segmenter, video


def frames_of(video):
    return open_input(str(video), 0.0, None, None, 30.0)


def upsampled(outputs, query, slot):
    """[T, H, W]: the object query's mask logits at the padded input size (what the post-processing thresholds)."""
    logits = outputs.logits(query, slots=slice(slot, slot + 1))
    return F.interpolate(logits, size=outputs.padded_size, mode='bilinear', align_corners=False)[:, 0]


@pytest.mark.slow
def test_shared_encoding_gives_each_query_its_own_results(segmenter_and_video):
    segmenter, video = segmenter_and_video
    items = list(frames_of(video))
    for window in window_layout(len(items), 8):
        images = [image for _, image in items[window.start:window.end]]
        together = segmenter.run_window(window, images, QUERIES)
        for q, query in enumerate(QUERIES):
            alone = segmenter.run_window(window, images, [query])
            ours, theirs = together.probabilities[q], alone.probabilities[0]
            assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()
            ours, theirs = together.logits(q), alone.logits(0)
            assert (ours - theirs).abs().max() <= 1e-5 * theirs.abs().max()
            slot = int(theirs.mean(dim=(0, 2, 3)).argmax())
            ours, theirs = upsampled(together, q, slot), upsampled(alone, 0, slot)
            differ = (ours > 0) != (theirs > 0)
            assert (theirs[differ].abs() <= 1e-4).all()  # only pixels at the threshold may flip


def test_window_results_come_in_order_each_frame_once(segmenter_and_video):
    segmenter, video = segmenter_and_video
    results = list(segmenter.segment(frames_of(video), QUERIES, 8, rule='video'))
    positions = [frame.source_index for result in results for frame, _ in result.frames]
    assert positions == list(range(20))
    assert [len(result.frames) for result in results] == [8, 8, 4]  # [0, 8), [8, 16), [12, 20): its own 4
    for result in results:
        assert len(result.masks) == len(result.probabilities) == len(result.object_queries) == len(QUERIES)
        assert all(masks.shape == (len(result.frames), 100, 150) for masks in result.masks)
    # the video rule: one object query per text query in every window
    assert all(len({result.object_queries[q] for result in results}) == 1 for q in range(len(QUERIES)))


def test_the_second_pass_from_the_network_or_from_the_scratch_folder_gives_the_same_results(segmenter_and_video,
                                                                                            tmp_path):
    segmenter, video = segmenter_and_video
    for rule in ('video', 'linked'):
        network = list(segmenter.segment(frames_of(video), QUERIES[:2], 8, rule=rule))
        scratch = list(segmenter.segment(frames_of(video), QUERIES[:2], 8, rule=rule, second_pass='scratch',
                                         scratch_dir=tmp_path))
        assert [r.object_queries for r in network] == [r.object_queries for r in scratch]
        for a, b in zip(network, scratch):
            assert all(np.array_equal(x, y) for x, y in zip(a.masks, b.masks))
            assert all(np.array_equal(x, y) for x, y in zip(a.probabilities, b.probabilities))
        assert list(tmp_path.iterdir()) == []  # the scratch folder is gone


def test_a_forced_object_query_holds_in_every_window(segmenter_and_video):
    segmenter, video = segmenter_and_video
    results = list(segmenter.segment(frames_of(video), QUERIES[:1], 8, rule='causal', object_query=4))
    assert [result.object_queries for result in results] == [[4]] * len(results)

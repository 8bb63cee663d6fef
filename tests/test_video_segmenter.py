"""models/video_segmenter.py: several text queries on one encoding of each window give, query by query, what a
segmentation with that query alone gives (the tiny model of tests/test_inference.py, deterministic weights)."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from config import load_config
from datasets.transforms import transforms_from_config
from datasets.video import open_input
from models import build_trained_network
from models.video_segmenter import VideoSegmenter
from tests.test_inference import YTVOS_CONFIG, tiny_model_files, video_frames, write_mp4

QUERIES = ['the red box', 'the background', 'a box moving right', 'the left part']


@pytest.fixture(scope='module')
def segmentations(tmp_path_factory, shared_dir):
    root = tmp_path_factory.mktemp('segmenter')
    checkpoint, overrides = tiny_model_files(root, shared_dir)
    config = load_config(YTVOS_CONFIG, overrides, running_mode='eval', device='cpu')
    segmenter = VideoSegmenter(build_trained_network(config, checkpoint), transforms_from_config('test', config),
                               torch.device('cpu'), query_batch=3)
    video = write_mp4(root / 'clip.mp4', video_frames(num_frames=20))

    def segment(queries, name):
        (root / name).mkdir()
        frames = open_input(str(video), 0.0, None, None, 30.0)
        return segmenter.segment(frames, queries, 8, root / name), frames.size
    together = segment(QUERIES, 'together')
    alone = [segment([query], f'alone{i}') for i, query in enumerate(QUERIES)]
    return together, alone


def upsampled_logits(result, query_index, window_index):
    """[T_out, H, W]: the chosen object query's mask logits at the padded input size (what the post-processing
    thresholds at 0)."""
    logits = np.load(result.masks_path(query_index, window_index))[:, result.object_queries[query_index]]
    _, padded_size = result.window_sizes[window_index]
    return F.interpolate(torch.from_numpy(logits)[:, None], size=padded_size, mode='bilinear',
                         align_corners=False)[:, 0]


@pytest.mark.slow
def test_shared_encoding_gives_each_query_its_own_results(segmentations):
    (together, size), alone = segmentations
    assert len(together.windows) == 3  # [0, 8), [8, 16), [12, 20)
    for q, (single, _) in enumerate(alone):
        ours, theirs = together.referred_probabilities(q), single.referred_probabilities(0)
        assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()
        assert together.object_queries[q] == single.object_queries[0]
        for w in range(len(together.windows)):
            ours, theirs = np.load(together.masks_path(q, w)), np.load(single.masks_path(0, w))
            assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()
            ours, theirs = upsampled_logits(together, q, w), upsampled_logits(single, 0, w)
            differ = (ours > 0) != (theirs > 0)
            assert (theirs[differ].abs() <= 1e-4).all()  # only pixels at the threshold may flip


def test_masks_and_frames_line_up(segmentations):
    (together, size), _ = segmentations
    frames = open_input(str(Path(together.scratch_dir).parent / 'clip.mp4'), 0.0, None, None, 30.0)
    seen = [(position, window, len(masks)) for position, _, _, window, masks in together.frame_masks(frames, size)]
    assert [position for position, _, _ in seen] == list(range(20))
    assert [window for _, window, _ in seen] == [0] * 8 + [1] * 8 + [2] * 4  # the last window's own frames
    assert all(count == len(QUERIES) for _, _, count in seen)

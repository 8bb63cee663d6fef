import random

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from datasets.transforms import (IMAGENET_MEAN, IMAGENET_STD, VideoTransforms, build_transforms, collate_videos,
                                 resized_size, swap_left_right, to_normalized_video)
from tests.fake_datasets import frame_index, index_frame, rectangle_mask


def video_sample(num_frames=3, width=96, height=64, annotated=(1,)):
    frames = [Image.fromarray(index_frame(i, width, height)) for i in range(num_frames)]
    targets = [None] * num_frames
    for t in annotated:
        masks = torch.from_numpy(np.stack([rectangle_mask(t, 0, width, height), rectangle_mask(t, 2, width, height)]))
        targets[t] = {'masks': masks, 'size': torch.tensor([height, width]), 'area': masks.sum((1, 2)).double()}
    return frames, targets


@pytest.mark.parametrize('image_size, size, max_size, expected', [
    ((428, 320), 320, 576, (320, 428)),   # short side already right: kept
    ((568, 320), 320, 576, (320, 568)),
    ((640, 480), 320, 576, (320, 426)),   # int() rounds down
    ((480, 640), 320, 576, (426, 320)),   # portrait
    ((1280, 720), 360, 640, (360, 640)),
    ((1000, 200), 320, 576, (115, 575)),  # long side capped: size = round(576 * 200 / 1000) = 115
    ((320, 240), 320, None, (320, 426)),
])
def test_resized_size_follows_detr_rule(image_size, size, max_size, expected):
    assert resized_size(image_size, size, max_size) == expected


@pytest.mark.parametrize('query, expected', [
    ('the man on the left', 'the man on the right'),
    ('right hand of the left player', 'left hand of the right player'),
    ('the leftmost dog', 'the rightmost dog'),
    ('a bright red car', 'a bright red car'),
    ('an upright bottle', 'an upright bottle'),
])
def test_swap_left_right(query, expected):
    assert swap_left_right(query) == expected
    assert swap_left_right(swap_left_right(query)) == query


def test_flip_swaps_masks_frames_and_words():
    frames, targets = video_sample()
    masks = targets[1]['masks'].clone()
    transforms = VideoTransforms(None, None, horizontal_flip=True)
    seen = set()
    random.seed(0)
    for _ in range(20):
        frames, targets = video_sample()
        video, out_targets, query = transforms(frames, targets, 'the dog on the left')
        flipped = query == 'the dog on the right'
        seen.add(flipped)
        expected_masks = masks.flip(-1) if flipped else masks
        assert torch.equal(out_targets[1]['masks'], expected_masks)
        shown = [frame_index(frame.flip(-1) if flipped else frame) for frame in video]
        assert shown == [0, 1, 2]
        assert out_targets[0] is None and out_targets[2] is None
    assert seen == {True, False}  # p = 0.5


def test_no_flip_when_disabled_or_evaluating():
    sizes = dict(train_short_size=64, train_max_size=96, eval_short_size=64, eval_max_size=96)
    assert not build_transforms('test', **sizes, resize_frames=True, horizontal_flip=True).horizontal_flip
    assert not build_transforms('train', **sizes, resize_frames=True, horizontal_flip=False).horizontal_flip
    assert build_transforms('train', **sizes, resize_frames=True, horizontal_flip=True).horizontal_flip


def test_resize_frames_and_masks_nearest():
    frames, targets = video_sample(width=96, height=64)
    masks = targets[1]['masks'].clone()
    video, targets, _ = VideoTransforms(32, 1000, horizontal_flip=False)(frames, targets, 'q')
    assert video.shape == (3, 3, 32, 48)
    assert targets[1]['size'].tolist() == [32, 48]
    assert targets[1]['masks'].dtype == torch.bool and targets[1]['masks'].shape == (2, 32, 48)
    expected = torch.nn.functional.interpolate(masks[:, None].float(), (32, 48), mode='nearest')[:, 0] > 0.5
    assert torch.equal(targets[1]['masks'], expected)
    assert torch.allclose(targets[1]['area'], masks.sum((1, 2)).double() / 4)
    assert [frame_index(f) for f in video] == [0, 1, 2]


def test_eval_sizes_are_used_for_test():
    frames, targets = video_sample(width=96, height=64)
    video, targets, _ = build_transforms('test', resize_frames=True, horizontal_flip=True, train_short_size=32,
                                         train_max_size=48, eval_short_size=16, eval_max_size=1000)(frames, targets, 'q')
    assert video.shape[-2:] == (16, 24) and targets[1]['size'].tolist() == [16, 24]


def test_normalisation_matches_torchvision():
    frames, _ = video_sample()
    expected = torch.stack([TF.normalize(TF.to_tensor(f), IMAGENET_MEAN, IMAGENET_STD) for f in frames])
    assert torch.equal(to_normalized_video(frames), expected)
    white = to_normalized_video([Image.new('RGB', (4, 2), (255, 255, 255))])
    assert torch.allclose(white[0, :, 0, 0], (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD))


def test_collator_pads_and_masks():
    a = torch.ones(4, 3, 20, 30)
    b = torch.full((4, 3, 25, 10), 2.0)
    ta = [None, None, {'id': 'a'}, None]
    tb = [None, None, {'id': 'b'}, None]
    batch = collate_videos([(a, ta, 'first'), (b, tb, 'second')])
    samples = batch['samples']
    assert samples.tensors.shape == (4, 2, 3, 25, 30) and samples.mask.shape == (4, 2, 25, 30)
    assert not samples.mask[:, 0, :20, :30].any() and samples.mask[:, 0, 20:].all()
    assert not samples.mask[:, 1, :25, :10].any() and samples.mask[:, 1, :, 10:].all()
    assert (samples.tensors[:, 0, :, 20:] == 0).all() and (samples.tensors[:, 1, :, :, :10] == 2).all()
    assert batch['text_queries'] == ('first', 'second')
    assert len(batch['targets']) == 4 and batch['targets'][2] == ({'id': 'a'}, {'id': 'b'})
    assert batch['targets'][0] == (None, None)
    assert 'videos_metadata' not in batch


def test_collator_videos_of_different_lengths_with_metadata():
    a, b = torch.ones(5, 3, 8, 8), torch.ones(3, 3, 8, 8)
    batch = collate_videos([(a, [None] * 5, 'x', {'video_id': 'a'}), (b, [None] * 3, 'y', {'video_id': 'b'})])
    assert batch['samples'].tensors.shape[:2] == (5, 2)
    assert batch['samples'].mask[3:, 1].all() and not batch['samples'].mask[:, 0].any()
    assert len(batch['targets']) == 5
    assert batch['videos_metadata'] == ({'video_id': 'a'}, {'video_id': 'b'})

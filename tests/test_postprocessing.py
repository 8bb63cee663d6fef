import json
import math

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
import torch.nn.functional as F

from config import load_config
from models.postprocessing import A2DSentencesPostProcess, ReferYoutubeVOSPostProcess, build
from tests.helpers import A2D_CONFIG

# pycocotools' decode trips a NumPy 2 deprecation inside its own code
pytestmark = pytest.mark.filterwarnings('ignore:__array__ implementation:DeprecationWarning')


def logits_at_output_pixels(mask_logits, padded_size, resized_size, original_size):
    """[C, h, w] logits -> [C, 1, H0, W0]: the upsampled logit that decided each output pixel."""
    logits = F.interpolate(mask_logits[None].float(), size=list(padded_size), mode='bilinear', align_corners=False)[0]
    logits = logits[:, :int(resized_size[0]), :int(resized_size[1])].unsqueeze(1)
    return F.interpolate(logits, size=[int(s) for s in original_size], mode='nearest')


def assert_masks_match(masks, expected, logits):
    """Binary masks must be identical, except that up to 0.1% of the pixels may differ where the logit lies within
    1e-4 of the threshold (0): there a last-bit difference in the upsampling may flip the decision."""
    assert masks.shape == expected.shape
    differ = masks.bool() != expected.bool()
    assert differ.float().mean().item() <= 1e-3
    assert (logits[differ].abs() < 1e-4).all(), 'masks differ away from the threshold'


def decode(rle):
    counts = rle['counts']
    return mask_util.decode({'size': rle['size'], 'counts': counts.encode() if isinstance(counts, str) else counts})


def flat_outputs(outputs):
    return {key: outputs[key].flatten(0, 1) for key in ('pred_masks', 'pred_is_referred')}


def on(device, outputs):
    return {key: outputs[key].to(device) for key in ('pred_masks', 'pred_is_referred')}


# ---------------------------------------------------------------- parity with the original


def test_a2d_matches_the_original(golden, device):
    case = golden['postprocess']['a2d']
    outputs = flat_outputs(golden['cases'][case['case']]['outputs'])
    predictions = A2DSentencesPostProcess()(on(device, outputs), case['resized_padded_sample_size'],
                                            case['resized_sample_sizes'], case['orig_sample_sizes'])
    assert len(predictions) == len(case['predictions'])
    for frame, (prediction, expected) in enumerate(zip(predictions, case['predictions'])):
        torch.testing.assert_close(prediction['scores'].cpu(), expected['scores'], rtol=1e-5, atol=1e-5)
        logits = logits_at_output_pixels(outputs['pred_masks'][frame], case['resized_padded_sample_size'],
                                         case['resized_sample_sizes'][frame], case['orig_sample_sizes'][frame])
        assert_masks_match(prediction['masks'].cpu(), expected['masks'], logits)
        assert len(prediction['rle_masks']) == len(expected['rle_masks'])
        for query, (rle, expected_rle) in enumerate(zip(prediction['rle_masks'], expected['rle_masks'])):
            assert list(rle['size']) == list(expected_rle['size'])
            assert np.array_equal(decode(rle), prediction['masks'][query, 0].cpu().numpy())
            assert_masks_match(torch.from_numpy(decode(rle)), torch.from_numpy(decode(expected_rle)), logits[query, 0])


def test_ref_youtube_vos_matches_the_original(golden, device):
    case = golden['postprocess']['ytvos']
    outputs = golden['cases'][case['case']]['outputs']
    predictions = ReferYoutubeVOSPostProcess()(on(device, outputs), case['videos_metadata'],
                                               case['samples_shape_with_padding'])
    assert len(predictions) == len(case['predictions'])
    for b, (prediction, expected) in enumerate(zip(predictions, case['predictions'])):
        assert {k: v for k, v in prediction.items() if k != 'pred_masks'} == \
            {k: v for k, v in expected.items() if k != 'pred_masks'}
        assert prediction['pred_masks'].dtype == torch.uint8
        query = outputs['pred_is_referred'][:, b].softmax(-1)[..., 0].mean(0).argmax()
        logits = logits_at_output_pixels(outputs['pred_masks'][:, b, query], case['samples_shape_with_padding'],
                                         case['videos_metadata'][b]['resized_frame_size'],
                                         case['videos_metadata'][b]['original_frame_size'])
        assert_masks_match(prediction['pred_masks'], expected['pred_masks'], logits)


# ---------------------------------------------------------------- hand-made cases


def test_a2d_by_hand(device):
    # query 0: everywhere +5; query 1: left half +5, right half -5 (bilinear x2 keeps the boundary in the middle)
    pred_masks = torch.full((1, 2, 4, 4), 5.0)
    pred_masks[0, 1, :, 2:] = -5.0
    pred_is_referred = torch.tensor([[[1.0, -1.0], [0.0, 2.0]]])
    outputs = on(device, {'pred_masks': pred_masks, 'pred_is_referred': pred_is_referred})
    predictions = A2DSentencesPostProcess()(outputs, resized_padded_sample_size=(8, 8),
                                            resized_sample_sizes=[torch.tensor([6, 8])],
                                            orig_sample_sizes=[torch.tensor([12, 16])])
    (prediction,) = predictions
    expected_scores = [1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(2.0))]
    torch.testing.assert_close(prediction['scores'].cpu(), torch.tensor(expected_scores))
    expected_masks = np.zeros((2, 1, 12, 16), dtype=bool)
    expected_masks[0] = True
    expected_masks[1, 0, :, :8] = True  # 4 of the 8 input columns, doubled to the original width
    assert prediction['masks'].shape == (2, 1, 12, 16)
    assert np.array_equal(prediction['masks'].cpu().numpy(), expected_masks)
    for rle, expected in zip(prediction['rle_masks'], expected_masks):
        assert isinstance(rle['counts'], str) and list(rle['size']) == [12, 16]
        assert np.array_equal(mask_util.decode(rle), expected[0].astype(np.uint8))
    json.dumps(prediction['rle_masks'])  # the RLEs go into JSON result files as they are


def test_ref_youtube_vos_picks_the_query_with_the_best_average_over_time(device):
    num_frames, batch_size, num_queries = 2, 2, 3
    pred_masks = torch.full((num_frames, batch_size, num_queries, 4, 4), -5.0)
    for b in range(batch_size):
        for q in range(num_queries):
            pred_masks[:, b, q, q, :] = 5.0  # query q marks row q (rows 2q and 2q+1 at the input size)
    pred_is_referred = torch.zeros(num_frames, batch_size, num_queries, 2)
    # video 0: query 2 wins frame 0 alone, query 1 wins on average; video 1: query 0 throughout
    pred_is_referred[:, 0, :, 0] = torch.tensor([[0.0, 2.0, 3.0], [0.0, 2.0, -3.0]])
    pred_is_referred[:, 1, 0, 0] = 1.0
    metadata = [{'video_id': 'a', 'resized_frame_size': [8, 6], 'original_frame_size': [16, 12], 'exp_id': '0'},
                {'video_id': 'b', 'resized_frame_size': [6, 8], 'original_frame_size': [3, 4], 'exp_id': '1'}]
    outputs = on(device, {'pred_masks': pred_masks, 'pred_is_referred': pred_is_referred})
    predictions = ReferYoutubeVOSPostProcess()(outputs, metadata, (8, 8))
    assert [p['video_id'] for p in predictions] == ['a', 'b'] and predictions[1]['exp_id'] == '1'
    first, second = (p['pred_masks'] for p in predictions)
    assert first.dtype == torch.uint8 and first.shape == (num_frames, 1, 16, 12) and second.shape == (2, 1, 3, 4)
    expected_first = torch.zeros(16, 12, dtype=torch.uint8)
    expected_first[4:8] = 1  # input rows 2-3, doubled
    assert all(torch.equal(frame[0], expected_first) for frame in first)
    expected_second = torch.zeros(3, 4, dtype=torch.uint8)
    expected_second[0] = 1  # input rows 0-1 are marked; nearest from 6 rows to 3 takes rows 0, 2 and 4
    assert all(torch.equal(frame[0], expected_second) for frame in second)


def test_outputs_are_not_tracked_by_autograd(device):
    pred_masks = torch.zeros(1, 2, 4, 4, device=device, requires_grad=True)
    pred_is_referred = torch.zeros(1, 2, 2, device=device, requires_grad=True)
    (prediction,) = A2DSentencesPostProcess()({'pred_masks': pred_masks, 'pred_is_referred': pred_is_referred},
                                              (4, 4), [(4, 4)], [(4, 4)])
    assert not prediction['scores'].requires_grad and torch.is_inference(prediction['scores'])


@pytest.mark.parametrize('dataset_name, expected', [('a2d_sentences', A2DSentencesPostProcess),
                                                    ('jhmdb_sentences', A2DSentencesPostProcess),
                                                    ('ref_youtube_vos', ReferYoutubeVOSPostProcess)])
def test_build_follows_the_dataset(dataset_name, expected):
    assert type(build(load_config(A2D_CONFIG, [f'dataset_name={dataset_name}']))) is expected

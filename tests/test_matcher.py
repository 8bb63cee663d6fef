import pytest
import torch

from config import load_config
from models.matcher import HungarianMatcher, build, dice_coefficient, is_referred_cost
from tests.helpers import A2D_CONFIG, to_device

LAYERS = ('final', 'aux_0', 'aux_1')


def layer_outputs(outputs, layer):
    return outputs if layer == 'final' else outputs['aux_outputs'][int(layer[-1])]


def video_targets(masks, referred, visible=None):
    """One video's targets for every frame: masks [T, N_obj, H, W]; visible: per-frame flags or None."""
    frames = []
    for t, frame_masks in enumerate(masks):
        target = {'masks': frame_masks, 'referred_instance_idx': torch.tensor(referred)}
        if visible is not None:
            target['is_ref_inst_visible'] = torch.tensor(visible[t], dtype=torch.uint8)
        frames.append(target)
    return frames


def batch_targets(*videos):
    """Per-video frame lists -> the criterion's layout: T sequences of B dicts."""
    return [list(frame) for frame in zip(*videos)]


@pytest.mark.parametrize('dataset', ['a2d', 'ytvos'])
@pytest.mark.parametrize('layer', LAYERS)
def test_indices_and_costs_match_the_original(golden, dataset, layer, device):
    case = golden['criterion'][dataset]
    outputs = to_device(layer_outputs(golden['cases'][case['case']]['outputs'], layer), device)
    targets = to_device(case['targets'], device)
    matcher = build(load_config(A2D_CONFIG))
    indices = matcher(outputs, targets)
    expected = case['matcher_indices'][layer]
    assert len(indices) == len(expected)
    for (queries, objects), (expected_queries, expected_objects) in zip(indices, expected):
        assert queries.dtype == objects.dtype == torch.int64
        assert torch.equal(queries.cpu(), expected_queries) and torch.equal(objects.cpu(), expected_objects)
    for cost, expected_cost in zip(matcher.cost_matrices(outputs, targets), case['matcher_cost_matrices'][layer]):
        torch.testing.assert_close(cost.cpu(), expected_cost, rtol=1e-5, atol=1e-5)


def test_build_reads_the_cost_coefficients():
    matcher = build(load_config(A2D_CONFIG, ['set_cost_is_referred=3', 'set_cost_dice=7']))
    assert (matcher.cost_is_referred, matcher.cost_dice) == (3, 7)
    with pytest.raises(ValueError, match='cannot both be 0'):
        HungarianMatcher(0, 0)


def test_dice_coefficient_by_hand(device):
    # [T=1, Q=2, 1, 2]: sigmoid 0.5,0.5 and 1,0
    inputs = torch.tensor([[[[0.0, 0.0]], [[100.0, -100.0]]]], device=device)
    targets = torch.tensor([[[[1.0, 0.0]]]], device=device)  # [T=1, M=1, 1, 2]
    # query 0: (2*0.5 + 1) / (1 + 1 + 1); query 1: (2*1 + 1) / (1 + 1 + 1)
    torch.testing.assert_close(dice_coefficient(inputs, targets).cpu(), torch.tensor([[2 / 3], [1.0]]))


def test_reference_cost_follows_visibility_per_frame(device):
    # one video, two frames, three queries, two objects; object 1 is referred and visible in frame 0 only
    logits = torch.tensor([[[[2.0, 0.0], [0.0, 1.0], [0.5, 0.5]]],
                           [[[1.0, 0.0], [0.0, 3.0], [-1.0, 1.0]]]])  # [T=2, B=1, N=3, 2]
    p = logits.softmax(-1)[:, 0]  # [T, N, 2]
    targets = batch_targets(video_targets(torch.zeros(2, 2, 4, 4, dtype=torch.bool), referred=1, visible=[1, 0]))
    logits, targets = logits.to(device), to_device(targets, device)
    cost = is_referred_cost(logits, targets).cpu()
    expected_object0 = -(p[0, :, 1] + p[1, :, 1]) / 2  # never referred
    expected_object1 = -(p[0, :, 0] + p[1, :, 1]) / 2  # referred where visible
    torch.testing.assert_close(cost, torch.stack([expected_object0, expected_object1], dim=1))
    # without visibility annotations the referred object counts as visible in every frame
    for frame in targets:
        del frame[0]['is_ref_inst_visible']
    torch.testing.assert_close(is_referred_cost(logits, targets)[:, 1].cpu(), -(p[0, :, 0] + p[1, :, 0]) / 2)


def square_masks(num_objects, size=8):
    """Disjoint masks: object k covers row k (rows beyond size wrap into columns)."""
    masks = torch.zeros(num_objects, size, size, dtype=torch.bool)
    for k in range(num_objects):
        masks[k, k % size, (k // size) * 2:(k // size) * 2 + 2] = True
    return masks


def test_recovers_a_planted_assignment_in_a_batch_of_one_and_five_objects(device):
    num_frames, num_queries, size = 2, 7, 8
    planted = [{2: 0}, {6: 0, 0: 1, 3: 2, 1: 3, 4: 4}]  # per video: query -> object
    referred = [0, 3]
    pred_masks = torch.full((num_frames, 2, num_queries, size, size), -8.0)
    pred_is_referred = torch.zeros(num_frames, 2, num_queries, 2)
    videos = []
    for b, (assignment, num_objects) in enumerate(zip(planted, (1, 5))):
        masks = square_masks(num_objects, size)
        for query, obj in assignment.items():
            pred_masks[:, b, query][:, masks[obj]] = 8.0
        videos.append(video_targets(masks.expand(num_frames, -1, -1, -1), referred[b]))
    outputs = to_device({'pred_masks': pred_masks, 'pred_is_referred': pred_is_referred}, device)
    indices = HungarianMatcher(2, 5)(outputs, to_device(batch_targets(*videos), device))
    for (queries, objects), assignment in zip(indices, planted):
        assert dict(zip(queries.tolist(), objects.tolist())) == assignment


def test_reference_cost_uses_the_right_column_of_each_video(device):
    # masks give no information (all queries predict the same); only the reference logits decide
    num_queries = 4
    pred_masks = torch.zeros(1, 2, num_queries, 4, 4)
    pred_is_referred = torch.zeros(1, 2, num_queries, 2)
    pred_is_referred[0, 0, 3, 0] = 6.0  # video 0: query 3 is confident that it is referred
    pred_is_referred[0, 1, 1, 0] = 6.0  # video 1: query 1
    videos = [video_targets(torch.zeros(1, 2, 4, 4, dtype=torch.bool), referred=1),
              video_targets(torch.zeros(1, 3, 4, 4, dtype=torch.bool), referred=2)]
    outputs = to_device({'pred_masks': pred_masks, 'pred_is_referred': pred_is_referred}, device)
    indices = HungarianMatcher(1, 0)(outputs, to_device(batch_targets(*videos), device))
    assert dict(zip(*[t.tolist() for t in indices[0]]))[3] == 1
    assert dict(zip(*[t.tolist() for t in indices[1]]))[1] == 2


def test_more_objects_than_queries_is_a_clear_error():
    outputs = {'pred_masks': torch.zeros(1, 2, 5, 4, 4), 'pred_is_referred': torch.zeros(1, 2, 5, 2)}
    targets = batch_targets(video_targets(torch.zeros(1, 2, 4, 4, dtype=torch.bool), 0),
                            video_targets(torch.zeros(1, 7, 4, 4, dtype=torch.bool), 0))
    with pytest.raises(ValueError, match=r'video 1 .* 7 target objects .* only 5 object queries'):
        HungarianMatcher(2, 5)(outputs, targets)


def test_bfloat16_predictions_and_no_gradient_tracking(device):
    pred_masks = torch.randn(2, 1, 4, 8, 8, generator=torch.Generator().manual_seed(0)).bfloat16().to(device)
    outputs = {'pred_masks': pred_masks.requires_grad_(),
               'pred_is_referred': torch.zeros(2, 1, 4, 2, dtype=torch.bfloat16, device=device)}
    targets = to_device(batch_targets(video_targets(square_masks(3).expand(2, -1, -1, -1), 1, visible=[1, 0])),
                        device)
    costs = HungarianMatcher(2, 5).cost_matrices(outputs, targets)
    assert costs[0].shape == (4, 3) and costs[0].dtype == torch.float32 and not costs[0].requires_grad
    assert torch.isfinite(costs[0]).all()

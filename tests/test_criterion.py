import copy
import math

import pytest
import torch

from config import load_config
from models.criterion import SetCriterion, build, build_weight_dict
from models.matcher import HungarianMatcher
from tests.helpers import A2D_CONFIG, to_device

LOSS_NAMES = ('loss_is_referred', 'loss_dice', 'loss_sigmoid_focal')
EOS_COEF = 0.1


def criterion_from_config(*overrides):
    return build(load_config(A2D_CONFIG, list(overrides)))


def weighted_total(losses, weight_dict):
    return sum(losses[name] * weight_dict[name] for name in losses)


def detached_copy(outputs, device, requires_grad=False, dtype=None):
    """A deep copy of the golden outputs on `device` (the golden dict is shared by all tests and must stay
    untouched)."""
    def copy_tensor(t):
        t = t.detach().clone().to(device, dtype or t.dtype)
        return t.requires_grad_(requires_grad)
    result = {k: copy_tensor(v) for k, v in outputs.items() if k != 'aux_outputs'}
    result['aux_outputs'] = [{k: copy_tensor(v) for k, v in aux.items()} for aux in outputs['aux_outputs']]
    return result


# ---------------------------------------------------------------- parity with the original


@pytest.mark.parametrize('dataset', ['a2d', 'ytvos'])
def test_losses_match_the_original(golden, dataset, device):
    case = golden['criterion'][dataset]
    criterion = criterion_from_config()
    losses = criterion(to_device(golden['cases'][case['case']]['outputs'], device), to_device(case['targets'], device))
    assert set(losses) == set(case['losses'])
    for name, expected in case['losses'].items():
        assert losses[name].item() == pytest.approx(expected.item(), rel=1e-5), name
    assert weighted_total(losses, criterion.weight_dict).item() == pytest.approx(case['total_loss'].item(), rel=1e-5)


def test_weight_dict_matches_the_original(golden):
    weight_dict = criterion_from_config().weight_dict
    assert weight_dict == golden['criterion']['a2d']['weight_dict']
    assert list(weight_dict) == list(golden['criterion']['a2d']['weight_dict'])


def test_weight_dict_follows_the_config():
    config = load_config(A2D_CONFIG, ['num_decoder_layers=4', 'dice_loss_coef=3'])
    weight_dict = build_weight_dict(config)
    assert set(weight_dict) == {f'{n}{s}' for n in LOSS_NAMES for s in ('', '_0', '_1', '_2')}
    assert weight_dict['loss_dice_2'] == 3 and weight_dict['loss_is_referred_1'] == 2
    config = load_config(A2D_CONFIG, ['aux_loss=false'])
    assert set(build_weight_dict(config)) == set(LOSS_NAMES)


# ---------------------------------------------------------------- behaviour beyond the original


def test_does_not_mutate_its_inputs(golden, device):
    case = golden['criterion']['ytvos']
    outputs = detached_copy(golden['cases'][case['case']]['outputs'], device)
    targets = to_device(copy.deepcopy(case['targets']), device)
    before_outputs, before_targets = copy.deepcopy(outputs), copy.deepcopy(targets)
    tensor_ids = {k: id(v) for k, v in outputs.items() if k != 'aux_outputs'}
    criterion_from_config()(outputs, targets)
    assert set(outputs) == {'pred_masks', 'pred_is_referred', 'aux_outputs'}
    assert {k: id(v) for k, v in outputs.items() if k != 'aux_outputs'} == tensor_ids
    for key in ('pred_masks', 'pred_is_referred'):
        assert torch.equal(outputs[key], before_outputs[key]) and outputs[key].shape == before_outputs[key].shape
        for aux, aux_before in zip(outputs['aux_outputs'], before_outputs['aux_outputs']):
            assert torch.equal(aux[key], aux_before[key])
    assert len(outputs['aux_outputs']) == 2
    for frame, frame_before in zip(targets, before_targets):
        for video, video_before in zip(frame, frame_before):
            assert set(video) == set(video_before)
            for key, value in video.items():
                assert torch.equal(value, video_before[key]) if torch.is_tensor(value) else value == video_before[key]


def test_gradients_reach_every_prediction(golden, device):
    case = golden['criterion']['a2d']
    outputs = detached_copy(golden['cases'][case['case']]['outputs'], device, requires_grad=True)
    criterion = criterion_from_config()
    weighted_total(criterion(outputs, to_device(case['targets'], device)), criterion.weight_dict).backward()
    for layer in [outputs] + outputs['aux_outputs']:
        for key in ('pred_masks', 'pred_is_referred'):
            grad = layer[key].grad
            assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, key


def test_runs_under_bfloat16_autocast(golden, device):
    if device.type == 'cuda' and not torch.cuda.is_bf16_supported():
        pytest.skip(f'{torch.cuda.get_device_name(device)} has no bf16 support')
    case = golden['criterion']['a2d']
    targets = to_device(case['targets'], device)
    reference = criterion_from_config()(to_device(golden['cases'][case['case']]['outputs'], device), targets)
    # as a model under autocast would hand them over: bf16 predictions that require grad
    outputs = detached_copy(golden['cases'][case['case']]['outputs'], device, requires_grad=True,
                            dtype=torch.bfloat16)
    criterion = criterion_from_config()
    with torch.autocast(device.type, dtype=torch.bfloat16):
        losses = criterion(outputs, targets)
        total = weighted_total(losses, criterion.weight_dict)
    assert set(losses) == set(reference)
    for name, value in losses.items():
        assert torch.isfinite(value) and value.dtype == torch.float32, name
        # bf16 rounding of the logits (about 3 significant digits) moves the losses by < 1e-3 here
        assert value.item() == pytest.approx(reference[name].item(), rel=1e-2), name
    total.backward()
    assert torch.isfinite(outputs['pred_masks'].grad).all() and outputs['pred_is_referred'].grad.abs().sum() > 0


def test_more_objects_than_queries_is_a_clear_error():
    outputs = {'pred_masks': torch.zeros(1, 1, 5, 4, 4), 'pred_is_referred': torch.zeros(1, 1, 5, 2)}
    targets = [[{'masks': torch.zeros(6, 4, 4, dtype=torch.bool), 'referred_instance_idx': torch.tensor(0)}]]
    with pytest.raises(ValueError, match=r'6 target objects .* only 5 object queries'):
        criterion_from_config()(outputs, targets)


# ---------------------------------------------------------------- hand-made cases with closed-form losses

LOGIT = 4.0  # every predicted pixel is on the right side of the threshold; dice outweighs any reference cost
# per-pixel focal loss of a correct pixel, before alpha: -log(sigmoid(L)) * sigmoid(-L)^2
FOCAL_PER_PIXEL = math.log1p(math.exp(-LOGIT)) * (1 / (1 + math.exp(LOGIT))) ** 2


def planted_case(objects_per_video, planted, referred, visible, sizes, num_queries, num_frames, seed=0):
    """Videos whose matched queries predict their object exactly (logits +-LOGIT at the padded size, so no
    resampling happens) and whose reference logits are random. Returns outputs, targets and the per-video masks."""
    height, width = max(s[0] for s in sizes), max(s[1] for s in sizes)
    batch_size = len(objects_per_video)
    pred_masks = torch.full((num_frames, batch_size, num_queries, height, width), -LOGIT)
    generator = torch.Generator().manual_seed(seed)
    pred_is_referred = torch.randn(num_frames, batch_size, num_queries, 2, generator=generator)
    targets = [[] for _ in range(num_frames)]
    all_masks = []
    for b, (num_objects, (h, w)) in enumerate(zip(objects_per_video, sizes)):
        masks = torch.zeros(num_objects, h, w, dtype=torch.bool)
        for k in range(num_objects):
            masks[k, k, :k + 2] = True  # object k: the first k+2 pixels of row k
        all_masks.append(masks)
        for query, obj in planted[b].items():
            pred_masks[:, b, query, :h, :w][:, masks[obj]] = LOGIT
        for t in range(num_frames):
            target = {'masks': masks.to(torch.uint8), 'referred_instance_idx': torch.tensor(referred[b])}
            if visible is not None:
                target['is_ref_inst_visible'] = torch.tensor(visible[b][t], dtype=torch.uint8)
            targets[t].append(target)
    return {'pred_masks': pred_masks, 'pred_is_referred': pred_is_referred}, targets, all_masks


def expected_reference_loss(pred_is_referred, planted, referred, visible):
    """-sum of weighted log-probabilities of the target class over all (frame, video) pairs, / (T * B)."""
    num_frames, batch_size, num_queries = pred_is_referred.shape[:3]
    log_p = pred_is_referred.double().log_softmax(-1)
    total = 0.0
    for t in range(num_frames):
        for b in range(batch_size):
            referred_query = next(q for q, obj in planted[b].items() if obj == referred[b])
            for q in range(num_queries):
                is_target = q == referred_query and (visible is None or visible[b][t])
                weight = 1.0 if q == referred_query else EOS_COEF
                total -= weight * log_p[t, b, q, 0 if is_target else 1].item()
    return total / (num_frames * batch_size)


def expected_mask_losses(all_masks, padded_size):
    """Sigmoid focal and dice losses of exact predictions, each summed over masks and / number of target masks."""
    num_pixels = padded_size[0] * padded_size[1]
    sig = 1 / (1 + math.exp(-LOGIT))
    focal = dice = 0.0
    for masks in all_masks:
        for mask in masks:
            area = int(mask.sum())
            focal += (0.25 * area + 0.75 * (num_pixels - area)) * FOCAL_PER_PIXEL / num_pixels
            soft_sum = area * sig + (num_pixels - area) * (1 - sig)
            dice += 1 - (2 * area * sig + 1) / (soft_sum + area + 1)
    num_masks = sum(len(m) for m in all_masks)
    return focal / num_masks, dice / num_masks  # the frames repeat the same sum and count


def single_layer_criterion():
    return SetCriterion(HungarianMatcher(2, 5),
                        {'loss_is_referred': 2, 'loss_dice': 5, 'loss_sigmoid_focal': 2}, eos_coef=EOS_COEF)


def test_mixed_batch_of_one_and_five_objects(device):
    planted = [{4: 0}, {6: 0, 0: 1, 3: 2, 1: 3, 5: 4}]
    referred = [0, 3]
    sizes = [(6, 10), (8, 7)]  # different sizes: targets are padded to 8 x 10
    outputs, targets, all_masks = planted_case((1, 5), planted, referred, None, sizes, num_queries=7, num_frames=2)
    losses = single_layer_criterion()(to_device(outputs, device), to_device(targets, device))
    focal, dice = expected_mask_losses(all_masks, (8, 10))
    assert losses['loss_sigmoid_focal'].item() == pytest.approx(focal, rel=1e-5)
    assert losses['loss_dice'].item() == pytest.approx(dice, rel=1e-5)
    expected = expected_reference_loss(outputs['pred_is_referred'], planted, referred, None)
    assert losses['loss_is_referred'].item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize('visible', [[[0, 0, 0]], [[1, 0, 1]], [[1, 1, 1]]], ids=['never', 'frames0and2', 'always'])
def test_reference_loss_follows_visibility(visible, device):
    planted = [{2: 0, 0: 1, 3: 2}]
    outputs, targets, _ = planted_case((3,), planted, [1], visible, [(6, 6)], num_queries=4, num_frames=3)
    losses = single_layer_criterion()(to_device(outputs, device), to_device(targets, device))
    expected = expected_reference_loss(outputs['pred_is_referred'], planted, [1], visible)
    assert losses['loss_is_referred'].item() == pytest.approx(expected, rel=1e-5)
    assert all(torch.isfinite(v) for v in losses.values())


def test_referred_object_invisible_in_every_frame_has_no_referred_target(device):
    # with the referred object invisible throughout, raising its query's 'referred' logit must raise the loss
    planted = [{2: 0, 0: 1}]
    never = [[0, 0]]
    outputs, targets, _ = planted_case((2,), planted, [1], never, [(6, 6)], num_queries=3, num_frames=2)
    outputs, targets = to_device(outputs, device), to_device(targets, device)
    criterion = single_layer_criterion()
    base = criterion(outputs, targets)['loss_is_referred']
    outputs['pred_is_referred'][:, :, 0, 0] += 2.0  # query 0 is matched to the referred object 1
    assert criterion(outputs, targets)['loss_is_referred'] > base

"""The training loss: reference cross-entropy plus sigmoid focal and dice mask losses on Hungarian-matched queries.

The losses are computed in float32 whatever the dtype of the predictions, so the criterion also runs under
autocast (e.g. CPU bfloat16). Neither the outputs dict nor the targets are modified.
"""
from typing import Dict

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss

from models import matcher as matcher_module
from utils import get_world_size, is_dist_avail_and_initialized, nested_tensor_from_tensor_list


class SetCriterion(nn.Module):
    """Losses of MTTR's predictions against the annotated instances of each video.

    Args:
        matcher: assigns queries to instance sequences (one assignment per video, shared by its frames).
        weight_dict: loss name -> weight; a loss term is computed only when its weight is positive. The weights
            are applied by the caller: `sum(losses[k] * weight_dict[k] for k in losses)`.
        eos_coef: weight of the 'not referred' term of the queries that are not matched to the referred instance.
    """

    def __init__(self, matcher: nn.Module, weight_dict: Dict[str, float], eos_coef: float):
        super().__init__()
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.eos_coef = eos_coef
        self.losses = []
        if weight_dict.get('loss_dice', 0) > 0 or weight_dict.get('loss_sigmoid_focal', 0) > 0:
            self.losses.append('masks')
        if weight_dict.get('loss_is_referred', 0) > 0:
            self.losses.append('is_referred')

    def forward(self, outputs, targets) -> Dict[str, Tensor]:
        """outputs: {'pred_masks': [T, B, N, h, w], 'pred_is_referred': [T, B, N, 2], optional 'aux_outputs':
        a list of such dicts, one per decoder layer but the last}; targets: T sequences of B dicts
        {'masks': [N_obj, H, W], 'referred_instance_idx': 0-d, optional 'is_ref_inst_visible': 0-d}.

        Returns the loss terms of the last decoder layer, and those of aux layer i with the suffix `_i`.
        """
        losses = self.layer_losses(outputs, targets)
        for layer_index, aux_outputs in enumerate(outputs.get('aux_outputs') or []):
            losses.update({f'{name}_{layer_index}': value
                           for name, value in self.layer_losses(aux_outputs, targets).items()})
        return losses

    def layer_losses(self, outputs, targets) -> Dict[str, Tensor]:
        indices = self.matcher(outputs, targets)
        num_frames = len(targets)
        # Each (frame, video) pair becomes one item, frame-major; a video's matching is reused for all its frames.
        flat_outputs = {key: rearrange(outputs[key], 't b ... -> (t b) ...')
                        for key in ('pred_masks', 'pred_is_referred')}
        flat_targets = [video for frame in targets for video in frame]
        indices = num_frames * indices

        # Normalise by the average number of target masks over the processes
        num_masks = torch.as_tensor([float(sum(len(t['masks']) for t in flat_targets))], device=indices[0][0].device)
        if is_dist_avail_and_initialized():
            torch.distributed.all_reduce(num_masks)
        num_masks = torch.clamp(num_masks / get_world_size(), min=1).item()

        losses = {}
        for loss in self.losses:
            losses.update(getattr(self, f'loss_{loss}')(flat_outputs, flat_targets, indices, num_masks))
        return losses

    def loss_is_referred(self, outputs, targets, indices, num_masks) -> Dict[str, Tensor]:
        """Weighted cross-entropy of the reference prediction, summed and divided by the number of (frame, video)
        pairs. The query matched to the referred instance is the target [1, 0] in frames where the instance is
        visible; every other entry is [0, 1] with weight `eos_coef`."""
        log_probabilities = outputs['pred_is_referred'].float().log_softmax(dim=-1)  # [T*B, N, 2]
        device = log_probabilities.device
        referred_queries = referred_query_indices(indices, targets).to(device)  # [T*B]
        pairs = torch.arange(len(targets), device=device)
        visible = torch.stack([torch.as_tensor(t.get('is_ref_inst_visible', True)).to(device) for t in targets]).bool()

        target_classes = torch.zeros_like(log_probabilities)
        target_classes[..., 1] = 1
        target_classes[pairs[visible], referred_queries[visible]] = target_classes.new_tensor([1.0, 0.0])
        loss = -(log_probabilities * target_classes).sum(-1)  # [T*B, N]
        weights = torch.full_like(loss, self.eos_coef)
        weights[pairs, referred_queries] = 1.0
        return {'loss_is_referred': (loss * weights).sum() / len(indices)}

    def loss_masks(self, outputs, targets, indices, num_masks) -> Dict[str, Tensor]:
        """Sigmoid focal and dice losses of the matched masks, upsampled to the padded target size."""
        pred_masks = outputs['pred_masks'][source_permutation(indices)].float()  # [M, h, w]
        # All target masks of all items padded to one size, then the matched ones in the order of pred_masks
        target_masks = nested_tensor_from_tensor_list([mask.unsqueeze(0) for t in targets for mask in t['masks']])
        target_masks = target_masks.tensors.squeeze(1)[matched_target_positions(indices, targets)]
        target_masks = target_masks.to(pred_masks)  # [M, H, W]
        pred_masks = F.interpolate(pred_masks.unsqueeze(1), size=target_masks.shape[-2:], mode='bilinear',
                                   align_corners=False).squeeze(1)
        pred_masks, target_masks = pred_masks.flatten(1), target_masks.flatten(1)  # [M, H*W]
        focal = sigmoid_focal_loss(pred_masks, target_masks, alpha=0.25, gamma=2, reduction='none')
        return {'loss_sigmoid_focal': focal.mean(1).sum() / num_masks,
                'loss_dice': dice_loss(pred_masks, target_masks, num_masks)}


def dice_loss(inputs: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """1 - soft dice (smooth 1) per mask, summed and divided by `num_masks`. inputs: [M, P] logits; targets [M, P]."""
    inputs = inputs.sigmoid()
    numerator = 2 * (inputs * targets).sum(-1)
    denominator = inputs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def source_permutation(indices):
    """(item index, query index) of every matched pair, for indexing [items, N, ...] predictions."""
    items = torch.cat([torch.full_like(queries, i) for i, (queries, _) in enumerate(indices)])
    return items, torch.cat([queries for queries, _ in indices])


def matched_target_positions(indices, targets) -> Tensor:
    """Position of every matched object in the concatenation of all items' objects, in the order of
    `source_permutation`."""
    objects_per_item = torch.as_tensor([len(t['masks']) for t in targets])
    first_object = (objects_per_item.cumsum(0) - objects_per_item).to(indices[0][1].device)
    return torch.cat([first_object[i] + objects for i, (_, objects) in enumerate(indices)])


def referred_query_indices(indices, targets) -> Tensor:
    """The query matched to the referred instance, for each item: [items] int64."""
    referred = []
    for item, ((queries, objects), target) in enumerate(zip(indices, targets)):
        referred_object = int(target['referred_instance_idx'])
        query = queries[objects == referred_object]
        if len(query) != 1:
            raise ValueError(f'target {item}: referred_instance_idx {referred_object} is not one of its '
                             f'{len(target["masks"])} objects')
        referred.append(query)
    return torch.cat(referred)


def build_weight_dict(config) -> Dict[str, float]:
    """Weights of the loss terms; with aux_loss, a copy with suffix `_i` for each decoder layer i but the last."""
    layer_weights = {'loss_is_referred': config.is_referred_loss_coef,
                     'loss_dice': config.dice_loss_coef,
                     'loss_sigmoid_focal': config.sigmoid_focal_loss_coef}
    weight_dict = dict(layer_weights)
    if config.aux_loss:
        for layer_index in range(config.num_decoder_layers - 1):
            weight_dict.update({f'{name}_{layer_index}': weight for name, weight in layer_weights.items()})
    return weight_dict


def build(config) -> SetCriterion:
    return SetCriterion(matcher_module.build(config), build_weight_dict(config), eos_coef=config.eos_coef)

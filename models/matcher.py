"""Hungarian matching of the object queries to the annotated instances of each video.

One assignment is made per video for the whole window: a query is matched to an instance *sequence*, so the costs
are averaged over the annotated frames before `linear_sum_assignment` runs.
"""
from typing import List, Tuple

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from utils import nested_tensor_from_tensor_list


class HungarianMatcher(nn.Module):
    """Matches the `N` queries of each video to its instances by `cost_is_referred * reference + cost_dice * dice`.

    Args:
        cost_is_referred: weight of the negative reference probability of the target class ([1, 0] for the
            referred instance in frames where it is visible, [0, 1] otherwise). Default 1.
        cost_dice: weight of the negative soft dice between the upsampled mask and the target mask. Default 1.
    """

    def __init__(self, cost_is_referred: float = 1, cost_dice: float = 1):
        super().__init__()
        if cost_is_referred == 0 and cost_dice == 0:
            raise ValueError('HungarianMatcher: cost_is_referred and cost_dice cannot both be 0')
        self.cost_is_referred = cost_is_referred
        self.cost_dice = cost_dice

    @torch.no_grad()
    def forward(self, outputs, targets) -> List[Tuple[Tensor, Tensor]]:
        """outputs: {'pred_masks': [T, B, N, h, w], 'pred_is_referred': [T, B, N, 2]};
        targets: T sequences of B dicts {'masks': [N_obj, H, W], 'referred_instance_idx', optional
        'is_ref_inst_visible'}.

        Returns one `(query_indices, target_indices)` pair of int64 tensors per video.
        """
        device = outputs['pred_masks'].device
        indices = []
        for video_cost in self.cost_matrices(outputs, targets):
            query_indices, target_indices = linear_sum_assignment(video_cost)
            indices.append((torch.as_tensor(query_indices, dtype=torch.int64, device=device),
                            torch.as_tensor(target_indices, dtype=torch.int64, device=device)))
        return indices

    @torch.no_grad()
    def cost_matrices(self, outputs, targets) -> List[Tensor]:
        """The matching cost of each video on the CPU: [N, N_obj] per video."""
        batch_size, num_queries = outputs['pred_masks'].shape[1:3]
        objects_per_video = [len(video['masks']) for video in targets[0]]
        for video_index, num_objects in enumerate(objects_per_video):
            if num_objects > num_queries:
                raise ValueError(f'video {video_index} of the batch has {num_objects} target objects but the model '
                                 f'has only {num_queries} object queries; every object needs its own query')

        pred_masks = outputs['pred_masks'].float().flatten(1, 2)  # [T, B*N, h, w]
        # Pad the masks of all videos of a frame to one size: [T, total_objects, H, W]
        target_masks = torch.stack([
            nested_tensor_from_tensor_list([mask.unsqueeze(0) for video in frame for mask in video['masks']]).tensors
            for frame in targets]).squeeze(2).to(pred_masks)
        pred_masks = F.interpolate(pred_masks, size=target_masks.shape[-2:], mode='bilinear', align_corners=False)

        cost = 0
        if self.cost_is_referred != 0:
            cost = cost + self.cost_is_referred * is_referred_cost(outputs['pred_is_referred'], targets)
        if self.cost_dice != 0:
            cost = cost + self.cost_dice * -dice_coefficient(pred_masks, target_masks)
        cost = cost.view(batch_size, num_queries, -1).cpu()  # [B, N, total_objects]
        return [columns[video_index] for video_index, columns in enumerate(cost.split(objects_per_video, dim=-1))]


def dice_coefficient(inputs: Tensor, targets: Tensor, smooth: float = 1.0) -> Tensor:
    """Soft dice between every prediction and every target, averaged over time.

    inputs: [T, Q, H, W] logits; targets: [T, M, H, W] binary. Returns [Q, M].
    """
    inputs = inputs.sigmoid().flatten(2)  # [T, Q, H*W]
    targets = targets.flatten(2).to(inputs.dtype)  # [T, M, H*W]
    numerator = 2 * torch.matmul(inputs, targets.transpose(1, 2))  # [T, Q, M], no [T, Q, M, H*W] product
    denominator = inputs.sum(-1).unsqueeze(2) + targets.sum(-1).unsqueeze(1)
    return ((numerator + smooth) / (denominator + smooth)).mean(0)


def referred_targets_per_frame(targets) -> Tensor:
    """[T, B] bool: whether each video's referred instance counts as referred in each frame.

    Without visibility annotations the referred instance is taken as visible in every frame.
    """
    if 'is_ref_inst_visible' not in targets[0][0]:
        return torch.ones(len(targets), len(targets[0]), dtype=torch.bool)
    return torch.stack([torch.stack([torch.as_tensor(video['is_ref_inst_visible']).cpu() for video in frame])
                        for frame in targets]).bool()


def is_referred_cost(pred_is_referred: Tensor, targets) -> Tensor:
    """Negative probability of each instance's reference class, averaged over time: [B*N, total_objects].

    pred_is_referred: [T, B, N, 2] logits, index 0 = referred.
    """
    probabilities = pred_is_referred.float().flatten(1, 2).softmax(dim=-1)  # [T, B*N, 2]
    num_frames = probabilities.shape[0]
    objects_per_video = [len(video['masks']) for video in targets[0]]
    # The referred instance is the same in every frame; its column in the concatenated targets of the batch:
    first_column = [sum(objects_per_video[:i]) for i in range(len(objects_per_video))]
    referred_columns = [int(video['referred_instance_idx']) + offset for video, offset in zip(targets[0], first_column)]

    target_classes = probabilities.new_zeros(num_frames, sum(objects_per_video), 2)  # [T, total_objects, 2]
    target_classes[..., 1] = 1  # not referred
    for column, visible in zip(referred_columns, referred_targets_per_frame(targets).T):
        target_classes[visible.to(target_classes.device), column] = target_classes.new_tensor([1.0, 0.0])
    return -(probabilities.unsqueeze(2) * target_classes.unsqueeze(1)).sum(dim=-1).mean(dim=0)


def build(config) -> HungarianMatcher:
    return HungarianMatcher(cost_is_referred=config.set_cost_is_referred, cost_dice=config.set_cost_dice)

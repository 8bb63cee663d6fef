"""Turn the network's outputs into evaluation predictions at the datasets' original frame sizes.

Masks go through the same steps in both datasets: bilinear upsampling to the padded input size, threshold at
sigmoid > 0.5, crop of the padding, nearest resize to the original frame size.
"""
from typing import Optional, Sequence

import numpy as np
import pycocotools.mask as mask_util
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


def _size(size) -> list:
    """A (height, width) given as a tensor, tuple or list, as a list of ints."""
    return [int(s) for s in size]


def binary_masks_at_input_size(mask_logits: Tensor, padded_size) -> Tensor:
    """[B, C, h, w] logits -> [B, C, H, W] bool at the padded input size."""
    mask_logits = F.interpolate(mask_logits.float(), size=_size(padded_size), mode='bilinear', align_corners=False)
    return mask_logits.sigmoid() > 0.5


def _crop_and_resize(masks: Tensor, resized_size, original_size) -> Tensor:
    """[C, H, W] bool at the padded input size -> [C, 1, H0, W0] bool at the original frame size."""
    height, width = _size(resized_size)
    masks = masks[:, :height, :width].unsqueeze(1)  # drop the padding
    return F.interpolate(masks.float(), size=_size(original_size), mode='nearest') > 0.5


def encode_rle(mask: Tensor) -> dict:
    """COCO RLE of a [1, H, W] binary mask, with 'counts' as str so the result can be written to JSON
    (pycocotools decodes str and bytes alike)."""
    rle = mask_util.encode(np.asfortranarray(mask[0, :, :, None].cpu().numpy(), dtype=np.uint8))[0]
    rle['counts'] = rle['counts'].decode('ascii')
    return rle


def mask_logits(outputs, object_queries: Optional[Tensor] = None) -> Tensor:
    """The mask logits `[T, B, N, h, w]` of the network's outputs, which hold them as 'pred_masks' or as their
    factors 'mask_kernels' [T, B, N, C] and 'mask_features' [T, B, C, h, w] (`MTTR.segment(factored_masks=True)`).
    With `object_queries` (`[B]`, one object query per video), only those: `[T, B, 1, h, w]`."""
    if 'pred_masks' in outputs:
        masks = outputs['pred_masks']
        if object_queries is None:
            return masks
        return masks.gather(2, object_queries.to(masks.device)[None, :, None, None, None].expand(
            masks.shape[0], -1, 1, *masks.shape[-2:]))
    kernels = outputs['mask_kernels']
    if object_queries is not None:
        kernels = kernels.gather(2, object_queries.to(kernels.device)[None, :, None, None].expand(
            kernels.shape[0], -1, 1, kernels.shape[-1]))
    return torch.einsum('tbnc,tbchw->tbnhw', kernels, outputs['mask_features'])


def trajectory_scores(pred_is_referred: Tensor) -> Tensor:
    """`[B, N]`: each object query's probability of "referred" averaged over the frames `[T, B, N, 2]`."""
    return pred_is_referred.float().softmax(dim=-1)[..., 0].mean(dim=0)


def referred_query_outputs(outputs, index: int, num_frames: int) -> dict:
    """The outputs of video (or text query) `index` over its first `num_frames` frames, kept to the object query
    with the highest probability of "referred" averaged over those frames (the choice of
    `ReferYoutubeVOSPostProcess`, which then keeps it): {'pred_masks' [T, 1, 1, h, w], 'pred_is_referred'
    [T, 1, 1, 2]}. `outputs` may hold the masks as factors (see `mask_logits`)."""
    is_referred = outputs['pred_is_referred'][:num_frames, index:index + 1]  # [T, 1, N, 2]
    chosen = trajectory_scores(is_referred).argmax(dim=-1)  # [1]
    part = {key: value[:num_frames, index:index + 1] for key, value in outputs.items()}
    return {'pred_masks': mask_logits(part, chosen),
            'pred_is_referred': is_referred[:, :, chosen[0]:chosen[0] + 1]}


class A2DSentencesPostProcess(nn.Module):
    """A2D-Sentences and JHMDB-Sentences: every query of every annotated frame is one scored mask prediction."""

    @torch.inference_mode()
    def forward(self, outputs, resized_padded_sample_size, resized_sample_sizes: Sequence,
                orig_sample_sizes: Sequence):
        """outputs: {'pred_masks': [F, N, h, w], 'pred_is_referred': [F, N, 2]} with time and batch flattened
        (F frames); resized_padded_sample_size: the padded input (H, W); resized_sample_sizes and
        orig_sample_sizes: per frame, its (H, W) in the input without padding and in the dataset.

        Returns per frame {'scores': [N], 'masks': [N, 1, H0, W0] bool, 'rle_masks': N COCO RLE dicts}.
        """
        scores = outputs['pred_is_referred'].float().softmax(dim=-1)[..., 0]  # [F, N]
        masks = binary_masks_at_input_size(outputs['pred_masks'], resized_padded_sample_size)  # [F, N, H, W]
        predictions = []
        for frame_scores, frame_masks, resized_size, original_size in zip(scores, masks, resized_sample_sizes,
                                                                         orig_sample_sizes):
            frame_masks = _crop_and_resize(frame_masks, resized_size, original_size)
            predictions.append({'scores': frame_scores, 'masks': frame_masks,
                                'rle_masks': [encode_rle(mask) for mask in frame_masks.cpu()]})
        return predictions


class ReferYoutubeVOSPostProcess(nn.Module):
    """Ref-YouTube-VOS: per video, the query with the highest referred probability averaged over time gives the
    mask of every frame."""

    @torch.inference_mode()
    def forward(self, outputs, videos_metadata: Sequence[dict], samples_shape_with_padding):
        """outputs: {'pred_masks': [T, B, N, h, w], 'pred_is_referred': [T, B, N, 2]}; videos_metadata: per video a
        dict with 'resized_frame_size' and 'original_frame_size' (H, W); samples_shape_with_padding: the padded
        input (H, W).

        Returns per video {**metadata, 'pred_masks': [T, 1, H0, W0] uint8 on the CPU}.
        """
        chosen_queries = trajectory_scores(outputs['pred_is_referred']).argmax(dim=-1)  # [B]
        pred_masks = rearrange(outputs['pred_masks'], 't b n h w -> b t n h w')
        pred_masks = pred_masks[torch.arange(len(chosen_queries)), :, chosen_queries]  # [B, T, h, w]
        pred_masks = binary_masks_at_input_size(pred_masks, samples_shape_with_padding)
        predictions = []
        for video_masks, metadata in zip(pred_masks, videos_metadata):
            video_masks = _crop_and_resize(video_masks, metadata['resized_frame_size'],
                                           metadata['original_frame_size'])
            predictions.append({**metadata, 'pred_masks': video_masks.to(torch.uint8).cpu()})
        return predictions


def build(config) -> nn.Module:
    """The post-processing the original's `build_model` returns with the model (the evaluators build their own)."""
    if config.dataset_name in ('a2d_sentences', 'jhmdb_sentences'):
        return A2DSentencesPostProcess()
    if config.dataset_name in ('ref_youtube_vos', 'ref_davis17', 'mevis'):
        return ReferYoutubeVOSPostProcess()
    raise ValueError(f"config key dataset_name: no post-processing for {config.dataset_name!r}; expected "
                     f"'a2d_sentences', 'jhmdb_sentences', 'ref_youtube_vos', 'ref_davis17' or 'mevis'")

"""MTTR: the network that segments the text-referred object in every annotated frame of a video window."""
from typing import List, NamedTuple, Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from models.multimodal_transformer import MultimodalTransformer
from models.segmentation import FPNSpatialDecoder
from models.text_encoder import POSITION_IDS

POSITION_IDS_KEY = f'transformer.text_encoder.{POSITION_IDS}'


class VideoFeatures(NamedTuple):
    """What MTTR computes from a video batch alone (B videos, T' annotated frames), for `MTTR.decode`."""
    vid_embeds: Tensor  # [T', B, d_model, H/16, W/16]: the last backbone stage, projected
    vid_pad_mask: Tensor  # [T', B, H/16, W/16], True on padding
    finer_features: List[Tensor]  # the spatial decoder's skip inputs: [T', B, 192, H/8, W/8], [T', B, 96, H/4, W/4]

    @property
    def num_videos(self) -> int:
        return self.vid_embeds.shape[1]


def _query_videos(query_videos, num_videos, num_queries, device) -> Optional[Tensor]:
    """Each query's video index as a LongTensor [Q] on `device`, or None when query i refers to video i."""
    if query_videos is None:
        if num_queries == num_videos:
            return None
        if num_videos == 1:
            return torch.zeros(num_queries, dtype=torch.long, device=device)
        raise ValueError(f'{num_queries} text queries for {num_videos} videos: without query_videos there must be '
                         'one query per video (or a single video); pass query_videos, the video index of each query')
    query_videos = torch.as_tensor(query_videos, dtype=torch.long).to(device)
    if query_videos.shape != (num_queries,):
        raise ValueError(f'query_videos must hold one video index per text query ({num_queries}), got shape '
                         f'{tuple(query_videos.shape)}')
    if num_queries and not 0 <= int(query_videos.min()) <= int(query_videos.max()) < num_videos:
        raise ValueError(f'query_videos must index the {num_videos} encoded videos (0..{num_videos - 1}), got '
                         f'{query_videos.tolist()}')
    return query_videos


def _check_query_batch(query_batch):
    if query_batch is not None and query_batch < 1:
        raise ValueError(f'query_batch must be a positive number of queries or None, got {query_batch}')


class MLP(nn.Module):
    """A few fully connected layers with ReLU between them."""

    def __init__(self, input_dim, hidden_dim, output_dim, num_layers):
        super().__init__()
        hidden = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip([input_dim] + hidden, hidden + [output_dim]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < len(self.layers) - 1 else layer(x)
        return x


class MTTR(nn.Module):
    def __init__(self, backbone, transformer: MultimodalTransformer, num_queries=50, mask_kernels_dim=8,
                 aux_loss=True):
        super().__init__()
        self.backbone = backbone
        self.transformer = transformer
        d_model = transformer.d_model
        self.is_referred_head = nn.Linear(d_model, 2)  # index 0: referred, 1: not referred
        self.instance_kernels_head = MLP(d_model, d_model, output_dim=mask_kernels_dim, num_layers=2)
        self.obj_queries = nn.Embedding(num_queries, d_model)
        self.vid_embed_proj = nn.Conv2d(backbone.layer_output_channels[-1], d_model, kernel_size=1)
        self.spatial_decoder = FPNSpatialDecoder(d_model, backbone.layer_output_channels[:-1][::-1], mask_kernels_dim)
        self.aux_loss = aux_loss

    def forward(self, samples, valid_indices, text_queries):
        """samples: padded video batch (.tensors [T, B, 3, H, W], .mask [T, B, H, W] True on padding);
        valid_indices: LongTensor of the annotated frames; text_queries: B strings, one per video.

        Returns {'pred_masks' [T', B, N, H/4, W/4], 'pred_is_referred' [T', B, N, 2], 'aux_outputs': [...]}.
        """
        return self.decode(self.encode_video(samples, valid_indices), text_queries)

    def encode_video(self, samples, valid_indices) -> VideoFeatures:
        """The text-independent part of the network (the backbone is most of MTTR's compute): run it once per
        video window and `decode` as many text queries against it as needed."""
        backbone_out = self.backbone(samples)
        valid_indices = valid_indices.to(samples.tensors.device)
        # only the annotated frames go on
        vid_embeds = backbone_out[-1].tensors.index_select(0, valid_indices)
        vid_pad_mask = backbone_out[-1].mask.index_select(0, valid_indices)
        t, b = vid_embeds.shape[:2]
        vid_embeds = self.vid_embed_proj(rearrange(vid_embeds, 't b c h w -> (t b) c h w'))
        vid_embeds = rearrange(vid_embeds, '(t b) c h w -> t b c h w', t=t, b=b)
        finer_features = [o.tensors.index_select(0, valid_indices) for o in backbone_out[:-1][::-1]]
        return VideoFeatures(vid_embeds, vid_pad_mask, finer_features)

    def decode(self, video_features: VideoFeatures, text_queries, query_videos=None):
        """Segment what each of Q text queries refers to in the videos `encode_video` encoded.

        query_videos: LongTensor [Q], the index (0..B-1) of each query's video; None means query i refers to
        video i (then Q must equal B), or, for a single encoded video, that every query refers to it.
        The Q queries go through the transformer as one batch. Returns the dict `forward` returns, with Q in place
        of B.
        """
        return self._decode(video_features, text_queries, query_videos, with_aux_outputs=self.aux_loss)

    @torch.inference_mode()
    def segment(self, samples, valid_indices, text_queries, query_videos=None, query_batch=None,
                factored_masks=False):
        """Inference for many text queries on a video batch: the videos are encoded once, then the queries are
        decoded `query_batch` at a time (None: all at once; see `decode_in_chunks`).

        samples and valid_indices as in `forward`; text_queries: Q strings; query_videos: as in `decode` (e.g.
        None for one video and any number of queries). Runs under inference mode; put the model in eval() mode.

        Returns the last decoder layer's {'pred_masks' [T', Q, N, H/4, W/4], 'pred_is_referred' [T', Q, N, 2]}
        in float32 (also under autocast), queries in the order given. With `factored_masks`, the masks come as
        their two factors instead, 'mask_kernels' [T', Q, N, C] and 'mask_features' [T', Q, C, H/4, W/4]
        (C = mask_kernels_dim, 8: a sixth of the memory of 50 object queries' masks;
        `models.postprocessing.mask_logits` multiplies them out, for all object queries or chosen ones).
        """
        _check_query_batch(query_batch)
        _query_videos(query_videos, samples.tensors.shape[1], len(text_queries), samples.tensors.device)  # (early)
        video_features = self.encode_video(samples, valid_indices)
        out = {}
        for chunk, chunk_out in self.decode_in_chunks(video_features, text_queries, query_videos, query_batch,
                                                      factored_masks):
            for key, value in chunk_out.items():
                if key not in out:  # filled in place: no second copy of the results at the end
                    shape = list(value.shape)
                    shape[1] = len(text_queries)
                    out[key] = value.new_empty(shape)
                out[key][:, chunk] = value
        return out

    @torch.inference_mode()
    def decode_in_chunks(self, video_features: VideoFeatures, text_queries, query_videos=None, query_batch=None,
                         factored_masks=False):
        """Yields `(chunk, outputs)` for the queries `text_queries[chunk]`, `query_batch` at a time (None: all at
        once): the last decoder layer's `pred_masks` [T', q, N, H/4, W/4] (or, with `factored_masks`, its factors:
        see `segment`) and `pred_is_referred` [T', q, N, 2] in float32. The memory the decoding needs is that of
        `query_batch` queries, whatever their number."""
        _check_query_batch(query_batch)
        num_queries = len(text_queries)
        query_videos = _query_videos(query_videos, video_features.num_videos, num_queries,
                                     video_features.vid_embeds.device)
        query_batch = query_batch or num_queries
        if query_videos is None and query_batch < num_queries:  # (None pairs query i with video i)
            query_videos = torch.arange(num_queries, device=video_features.vid_embeds.device)
        for start in range(0, num_queries, query_batch):
            chunk = slice(start, start + query_batch)
            chunk_videos = None if query_videos is None else query_videos[chunk]
            chunk_out = self._decode(video_features, text_queries[chunk], chunk_videos, with_aux_outputs=False,
                                     factored_masks=factored_masks)
            yield chunk, {key: value.float() for key, value in chunk_out.items()}

    def _decode(self, video_features: VideoFeatures, text_queries, query_videos, with_aux_outputs,
                factored_masks=False):
        query_videos = _query_videos(query_videos, video_features.num_videos, len(text_queries),
                                     video_features.vid_embeds.device)

        def per_query(tensor):  # [T', B, ...] -> [T', Q, ...]
            if query_videos is None:
                return tensor
            if tensor.shape[1] == 1:  # a view, not a copy
                return tensor.expand(tensor.shape[0], len(query_videos), *tensor.shape[2:])
            return tensor.index_select(1, query_videos)

        vid_embeds = per_query(video_features.vid_embeds)
        t, q = vid_embeds.shape[:2]
        hs, vid_memory, _ = self.transformer(vid_embeds, per_query(video_features.vid_pad_mask), text_queries,
                                             self.obj_queries.weight)
        # hs: [L, T', Q, N, C]; vid_memory: [T', Q, C, h, w]
        if not with_aux_outputs:
            hs = hs[-1:]

        vid_memory = rearrange(vid_memory, 't q c h w -> (t q) c h w')
        finer_features = [rearrange(per_query(f), 't q c h w -> (t q) c h w') for f in video_features.finer_features]
        decoded_frame_features = self.spatial_decoder(vid_memory, finer_features)
        decoded_frame_features = rearrange(decoded_frame_features, '(t q) c h w -> t q c h w', t=t, q=q)
        instance_kernels = self.instance_kernels_head(hs)  # [L, T', Q, N, mask_kernels_dim]
        outputs_is_referred = self.is_referred_head(hs)  # [L, T', Q, N, 2]
        if factored_masks:  # (the last layer only)
            return {'mask_kernels': instance_kernels[-1], 'mask_features': decoded_frame_features,
                    'pred_is_referred': outputs_is_referred[-1]}
        output_masks = torch.einsum('ltqnc,tqchw->ltqnhw', instance_kernels, decoded_frame_features)

        layer_outputs = [{'pred_masks': pm, 'pred_is_referred': pir}
                         for pm, pir in zip(output_masks, outputs_is_referred)]
        out = layer_outputs[-1]
        if with_aux_outputs:
            out['aux_outputs'] = layer_outputs[:-1]
        return out

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """Load a checkpoint's `model_state_dict` with `strict` semantics.

        The only key allowed to be absent is RoBERTa's `embeddings.position_ids` buffer (checkpoints written by a
        current transformers lack it); where present, as in the official checkpoints, it must hold the positions
        the model computes itself.
        """
        state_dict = dict(state_dict)
        own_position_ids = self.state_dict()[POSITION_IDS_KEY]
        loaded = state_dict.setdefault(POSITION_IDS_KEY, own_position_ids)
        if loaded.shape != own_position_ids.shape or not torch.equal(loaded.cpu(), own_position_ids.cpu()):
            raise ValueError(f'{POSITION_IDS_KEY} in the checkpoint (shape {tuple(loaded.shape)}) differs from the '
                             f'positions of the text encoder (shape {tuple(own_position_ids.shape)}): the checkpoint '
                             'was made for another text encoder architecture')
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

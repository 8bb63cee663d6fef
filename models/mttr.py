"""MTTR: the network that segments the text-referred object in every annotated frame of a video window."""
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from models.multimodal_transformer import MultimodalTransformer
from models.segmentation import FPNSpatialDecoder
from models.text_encoder import POSITION_IDS

POSITION_IDS_KEY = f'transformer.text_encoder.{POSITION_IDS}'


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
        valid_indices: LongTensor of the annotated frames; text_queries: B strings.

        Returns {'pred_masks' [T', B, N, H/4, W/4], 'pred_is_referred' [T', B, N, 2], 'aux_outputs': [...]}.
        """
        backbone_out = self.backbone(samples)
        valid_indices = valid_indices.to(samples.tensors.device)
        for layer_out in backbone_out:  # only the annotated frames go on
            layer_out.tensors = layer_out.tensors.index_select(0, valid_indices)
            layer_out.mask = layer_out.mask.index_select(0, valid_indices)
        vid_embeds, vid_pad_mask = backbone_out[-1].decompose()
        t, b = vid_embeds.shape[:2]
        vid_embeds = self.vid_embed_proj(rearrange(vid_embeds, 't b c h w -> (t b) c h w'))
        vid_embeds = rearrange(vid_embeds, '(t b) c h w -> t b c h w', t=t, b=b)

        hs, vid_memory, _ = self.transformer(vid_embeds, vid_pad_mask, text_queries, self.obj_queries.weight)
        # hs: [L, T', B, N, C]; vid_memory: [T', B, C, h, w]

        vid_memory = rearrange(vid_memory, 't b c h w -> (t b) c h w')
        finer_features = [rearrange(o.tensors, 't b c h w -> (t b) c h w') for o in backbone_out[:-1][::-1]]
        decoded_frame_features = self.spatial_decoder(vid_memory, finer_features)
        decoded_frame_features = rearrange(decoded_frame_features, '(t b) c h w -> t b c h w', t=t, b=b)
        instance_kernels = self.instance_kernels_head(hs)  # [L, T', B, N, mask_kernels_dim]
        output_masks = torch.einsum('ltbnc,tbchw->ltbnhw', instance_kernels, decoded_frame_features)
        outputs_is_referred = self.is_referred_head(hs)  # [L, T', B, N, 2]

        layer_outputs = [{'pred_masks': pm, 'pred_is_referred': pir}
                         for pm, pir in zip(output_masks, outputs_is_referred)]
        out = layer_outputs[-1]
        if self.aux_loss:
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

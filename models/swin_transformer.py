"""The per-frame Video Swin Transformer backbone (Video Swin-T with patch size (1, 4, 4), first 3 stages).

The blocks follow Video Swin (Liu et al., 2022) exactly, including its quirks, because the official MTTR
checkpoints were trained with them: padded tokens take part in window attention, and when a window is
clipped to a short input the relative-position bias is read from the top-left corner of the full index table.
"""
from functools import lru_cache
from pathlib import Path
from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from einops import rearrange
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import nn

from models.attention import window_attention
from utils import NestedTensor

MLP_CHUNK_FRAMES = 2  # frames per chunk of the blocks' MLPs on the CPU when autograd is off


def window_partition(x, window_size):
    """[B, D, H, W, C] -> [B * num_windows, wd * wh * ww, C]"""
    wd, wh, ww = window_size
    return rearrange(x, 'b (d wd) (h wh) (w ww) c -> (b d h w) (wd wh ww) c', wd=wd, wh=wh, ww=ww)


def window_reverse(windows, window_size, batch, depth, height, width):
    """[B * num_windows, wd * wh * ww, C] -> [B, D, H, W, C]"""
    wd, wh, ww = window_size
    return rearrange(windows, '(b d h w) (wd wh ww) c -> b (d wd) (h wh) (w ww) c', b=batch,
                     d=depth // wd, h=height // wh, w=width // ww, wd=wd, wh=wh, ww=ww)


def get_window_size(input_size, window_size, shift_size):
    """Clip the window to inputs smaller than it; such dimensions are not shifted."""
    use_window, use_shift = list(window_size), list(shift_size)
    for i, size in enumerate(input_size):
        if size <= window_size[i]:
            use_window[i] = size
            use_shift[i] = 0
    return tuple(use_window), tuple(use_shift)


def shift_regions(depth, height, width, window_size, shift_size, device):
    """[num_windows, N]: the region of every token of every shifted window. Tokens of different regions (rolled in
    from the far side of the video) must not attend to each other."""
    img_mask = torch.zeros((1, depth, height, width, 1), device=device)
    region = 0
    for d in (slice(-window_size[0]), slice(-window_size[0], -shift_size[0]), slice(-shift_size[0], None)):
        for h in (slice(-window_size[1]), slice(-window_size[1], -shift_size[1]), slice(-shift_size[1], None)):
            for w in (slice(-window_size[2]), slice(-window_size[2], -shift_size[2]), slice(-shift_size[2], None)):
                img_mask[:, d, h, w, :] = region
                region += 1
    return window_partition(img_mask, window_size).squeeze(-1)


class ShiftMask(NamedTuple):
    """Video Swin's additive shift mask (-100 between tokens of different regions) as its few distinct window
    patterns: `patterns` [P, N, N] and, for each, the indices of the windows (in one video) that use it. Most
    windows use the all-zero pattern."""
    patterns: torch.Tensor
    windows: List[torch.Tensor]


@lru_cache()
def compute_shift_mask(depth, height, width, window_size, shift_size, device) -> ShiftMask:
    with torch.inference_mode(False):  # cached: must serve training as well as evaluation
        regions = shift_regions(depth, height, width, window_size, shift_size, device)
        layouts, layout_of_window = torch.unique(regions, dim=0, return_inverse=True)  # [P, N], [num_windows]
        different = layouts.unsqueeze(1) != layouts.unsqueeze(2)  # [P, N, N]
        patterns = torch.zeros(different.shape, device=device).masked_fill(different, -100.0)
        return ShiftMask(patterns, [torch.nonzero(layout_of_window == p).flatten() for p in range(len(layouts))])


class WindowAttention3D(nn.Module):
    def __init__(self, dim, window_size, num_heads, qkv_bias=True, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.window_size = window_size
        self.num_heads = num_heads
        wd, wh, ww = window_size
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * wd - 1) * (2 * wh - 1) * (2 * ww - 1), num_heads))
        coords = torch.stack(torch.meshgrid(torch.arange(wd), torch.arange(wh), torch.arange(ww), indexing='ij'))
        coords = coords.flatten(1)  # [3, N]
        relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # [N, N, 3]
        relative = relative + torch.tensor([wd - 1, wh - 1, ww - 1])
        relative = relative * torch.tensor([(2 * wh - 1) * (2 * ww - 1), 2 * ww - 1, 1])
        self.register_buffer('relative_position_index', relative.sum(-1))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x, mask: Optional[ShiftMask] = None):
        """x: [B * num_windows, N, C], the windows of B videos; mask: the shift mask of one video's windows."""
        x = rearrange(self._attend(x, mask), 'b h n d -> b n (h d)')
        return self.proj_drop(self.proj(x))

    def _attend(self, x, mask):
        """[B * num_windows, heads, N, head_dim]; q, k and v are freed on return."""
        windows, n, c = x.shape
        if mask is not None:
            # bias + shift mask would be a full [windows, heads, N, N] tensor. Instead the windows are grouped by
            # mask pattern (across videos) and each group attends with one mask broadcast over it, which the fused
            # kernels take; the grouping is undone at the end.
            num_windows = sum(len(w) for w in mask.windows)
            videos = torch.arange(0, windows, num_windows, device=x.device)[:, None]
            groups = [(videos + w).flatten() for w in mask.windows]
            rows = torch.cat(groups)
            x = x.index_select(0, rows)
        q, k, v = rearrange(self.qkv(x), 'b n (three h d) -> three b h n d', three=3, h=self.num_heads)
        # Video Swin reads the top-left [N, N] corner of the index table when the window is clipped.
        # (index_select: its backward, an index_add, is faster on the CPU than indexing's index_put)
        index = self.relative_position_index[:n, :n].reshape(-1)
        bias = self.relative_position_bias_table.index_select(0, index).reshape(n, n, -1)
        bias = bias.permute(2, 0, 1).unsqueeze(0).to(q.dtype).contiguous()  # [1, heads, N, N]
        dropout_p = self.attn_drop if self.training else 0.0
        if mask is None:
            return window_attention(q, k, v, bias, dropout_p=dropout_p)
        outputs, start = [], 0
        for pattern, group in zip(mask.patterns, groups):
            part = slice(start, start + len(group))
            outputs.append(window_attention(q[part], k[part], v[part], bias, pattern.to(q.dtype), dropout_p))
            start += len(group)
        return torch.cat(outputs).index_select(0, torch.argsort(rows))


class SwinTransformerBlock3D(nn.Module):
    def __init__(self, dim, num_heads, window_size=(8, 7, 7), shift_size=(0, 0, 0), mlp_ratio=4.0,
                 qkv_bias=True, drop=0.0, attn_drop=0.0, drop_path=0.0):
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention3D(dim, window_size, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def _attention(self, x, shift_mask):
        b, d, h, w, c = x.shape
        window_size, shift_size = get_window_size((d, h, w), self.window_size, self.shift_size)
        x = self.norm1(x)
        pad_d = (window_size[0] - d % window_size[0]) % window_size[0]
        pad_h = (window_size[1] - h % window_size[1]) % window_size[1]
        pad_w = (window_size[2] - w % window_size[2]) % window_size[2]
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h, 0, pad_d))
        _, dp, hp, wp, _ = x.shape
        shifted = any(s > 0 for s in shift_size)
        if shifted:
            x = torch.roll(x, shifts=tuple(-s for s in shift_size), dims=(1, 2, 3))
        x = window_partition(x, window_size)  # (rebinding x lets the padded and rolled copies go)
        x = self.attn(x, mask=shift_mask if shifted else None)
        x = window_reverse(x, window_size, b, dp, hp, wp)
        if shifted:
            x = torch.roll(x, shifts=shift_size, dims=(1, 2, 3))
        return x[:, :d, :h, :w, :]

    def _feed_forward(self, x):
        if torch.is_grad_enabled() or x.device.type != 'cpu':
            return self.mlp(self.norm2(x))
        # Without autograd the MLP's 4x wider hidden layer would be the largest tensor of the network's forward:
        # on the CPU it is computed a few frames at a time (eval peak 2.04 -> 1.81 GiB at the same speed on this
        # project's test machine; not measured on GPUs, so not done there).
        return torch.cat([self.mlp(self.norm2(part)) for part in x.split(MLP_CHUNK_FRAMES, dim=1)], dim=1)

    def forward(self, x, shift_mask: ShiftMask):
        """x: [B, D, H, W, C]"""
        x = x + self.drop_path(self._attention(x, shift_mask))
        return x + self.drop_path(self._feed_forward(x))


class PatchMerging(nn.Module):
    """Halves H and W and doubles the channels: [B, D, H, W, C] -> [B, D, H/2, W/2, 2C]."""

    def __init__(self, dim):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x):
        h, w = x.shape[2:4]
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x))


class BasicLayer(nn.Module):
    """One Swin stage: blocks alternating regular and shifted windows (the patch merging is kept outside)."""

    def __init__(self, dim, depth, num_heads, window_size, drop_path, mlp_ratio=4.0, qkv_bias=True,
                 activation_checkpointing=False):
        super().__init__()
        self.window_size = window_size
        self.activation_checkpointing = activation_checkpointing
        self.shift_size = tuple(s // 2 for s in window_size)
        self.blocks = nn.ModuleList([
            SwinTransformerBlock3D(dim, num_heads, window_size, (0, 0, 0) if i % 2 == 0 else self.shift_size,
                                   mlp_ratio, qkv_bias, drop_path=drop_path[i])
            for i in range(depth)])

    def forward(self, x):
        """x: [B, D, H, W, C]"""
        _, d, h, w, _ = x.shape
        window_size, shift_size = get_window_size((d, h, w), self.window_size, self.shift_size)
        dp, hp, wp = (-(-size // win) * win for size, win in zip((d, h, w), window_size))
        shift_mask = compute_shift_mask(dp, hp, wp, window_size, shift_size, x.device)
        for block in self.blocks:
            if self.activation_checkpointing and torch.is_grad_enabled():
                # keeps only the block's input; the stochastic-depth draws are replayed in the recomputation
                x = torch.utils.checkpoint.checkpoint(block, x, shift_mask, use_reentrant=False)
            else:
                x = block(x, shift_mask)
        return x


class PatchEmbed3D(nn.Module):
    def __init__(self, patch_size=(1, 4, 4), in_chans=3, embed_dim=96):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x):
        """[B, 3, T, H, W] -> [B, T, H/4, W/4, C]"""
        _, _, d, h, w = x.shape
        pd, ph, pw = self.patch_size
        x = F.pad(x, (0, -w % pw, 0, -h % ph, 0, -d % pd))
        x = rearrange(self.proj(x), 'b c d h w -> b d h w c')
        return self.norm(x)


class VideoSwinBackbone(nn.Module):
    """Video Swin-T without temporal downsampling: one feature map per frame for each of the first stages.

    Returns, per stage, a NestedTensor `[T, B, C_i, H_i, W_i]` with the padding mask resized to it.
    """

    def __init__(self, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=(8, 7, 7),
                 num_stages=3, drop_path_rate=0.1, mlp_ratio=4.0, train_backbone=True, activation_checkpointing=False):
        super().__init__()
        self.patch_embed = PatchEmbed3D((1, 4, 4), 3, embed_dim)
        # the stochastic-depth schedule spans all 4 stages of Swin-T, as in the pretrained model
        drop_path = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.ModuleList([
            BasicLayer(embed_dim * 2 ** i, depths[i], num_heads[i], window_size,
                       drop_path[sum(depths[:i]):sum(depths[:i + 1])], mlp_ratio,
                       activation_checkpointing=activation_checkpointing)
            for i in range(num_stages)])
        # no merging after the last used stage
        self.downsamples = nn.ModuleList([PatchMerging(embed_dim * 2 ** i) for i in range(num_stages - 1)])
        self.layer_output_channels = [embed_dim * 2 ** i for i in range(num_stages)]
        self.apply(_init_weights)
        if not train_backbone:
            self.requires_grad_(False)

    def forward(self, samples: NestedTensor) -> List[NestedTensor]:
        x = self.patch_embed(rearrange(samples.tensors, 't b c h w -> b c t h w'))
        stage_outputs = []
        for i, layer in enumerate(self.layers):
            x = layer(x.contiguous())
            stage_outputs.append(x)
            if i < len(self.downsamples):
                x = self.downsamples[i](x)
        outputs = []
        for out in stage_outputs:
            out = rearrange(out, 'b t h w c -> t b c h w')
            # [T, B, H, W] interpolated as T images of B channels, mode 'nearest', as the original does
            mask = F.interpolate(samples.mask.float(), size=out.shape[-2:]).to(torch.bool)
            outputs.append(NestedTensor(out, mask))
        return outputs


def _init_weights(module):
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


KINETICS_WEIGHTS_HELP = (
    'It is the Kinetics-400 Video Swin-T checkpoint swin_tiny_patch244_window877_kinetics400_1k.pth '
    'published by the Video Swin Transformer authors (github.com/SwinTransformer/Video-Swin-Transformer); '
    'see pretrained_swin_transformer/README.md. To train without it set backbone_pretrained: false.')


def adapt_kinetics_state_dict(checkpoint_state_dict, num_stages=3):
    """Map the Kinetics-400 Video Swin-T weights onto `VideoSwinBackbone`.

    Keeps the `backbone.*` entries (the `cls_head.*` ones are the classifier), sums the patch embedding over its
    2 temporal taps ([96, 3, 2, 4, 4] -> [96, 3, 1, 4, 4]) since our patches are one frame deep, moves the
    patch-merging weights of the used stages to `downsamples.i` and drops the unused last stage and final norm.
    """
    adapted = {}
    for key, value in checkpoint_state_dict.items():
        if not key.startswith('backbone.'):
            continue
        key = key[len('backbone.'):]
        if key == 'patch_embed.proj.weight':
            value = value.sum(dim=2, keepdim=True)
        if key.startswith('layers.'):
            stage, rest = key.split('.', 2)[1:]
            stage = int(stage)
            if stage >= num_stages:
                continue
            if rest.startswith('downsample.'):
                if stage >= num_stages - 1:
                    continue
                key = f'downsamples.{stage}.{rest[len("downsample."):]}'
        elif key.startswith('norm.'):
            continue
        adapted[key] = value
    return adapted


def load_kinetics_weights(backbone: VideoSwinBackbone, path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'backbone_pretrained is true but the Kinetics-400 weights are not at {path}. '
                                + KINETICS_WEIGHTS_HELP)
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as error:
        raise RuntimeError(f'could not read the Kinetics-400 weights {path}: {error}. {KINETICS_WEIGHTS_HELP}') from error
    if not isinstance(checkpoint, dict) or 'state_dict' not in checkpoint:
        raise KeyError(f"{path}: expected a dict with key 'state_dict' (the Video Swin checkpoint format). "
                       + KINETICS_WEIGHTS_HELP)
    state_dict = adapt_kinetics_state_dict(checkpoint['state_dict'], num_stages=len(backbone.layers))
    missing, unexpected = backbone.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise KeyError(f'{path} does not match Video Swin-T: missing keys {missing}, unexpected keys {unexpected}')


def build_backbone(*, pretrained: bool, pretrained_path: str, train_backbone: bool, embed_dim: int = 96,
                   depths: Tuple[int, ...] = (2, 2, 6, 2), num_heads: Tuple[int, ...] = (3, 6, 12, 24),
                   window_size: Tuple[int, ...] = (8, 7, 7),
                   activation_checkpointing: bool = False) -> VideoSwinBackbone:
    """The backbone, with the Kinetics-400 weights read from `pretrained_path` when `pretrained`."""
    backbone = VideoSwinBackbone(embed_dim, tuple(depths), tuple(num_heads), tuple(window_size),
                                 train_backbone=train_backbone, activation_checkpointing=activation_checkpointing)
    if pretrained:
        load_kinetics_weights(backbone, pretrained_path)
    return backbone

"""2-D sine positional encoding of the visual tokens (DETR's, normalised, y features then x features)."""
import math

import torch
from torch import nn


class PositionEmbeddingSine2D(nn.Module):
    def __init__(self, temperature=10000, normalize=True, scale=2 * math.pi):
        super().__init__()
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale

    def forward(self, mask, hidden_dim):
        """mask: [B, H, W] (True on padding) -> positions [B, H, W, hidden_dim]."""
        num_pos_feats = hidden_dim // 2
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / num_pos_feats)
        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3)

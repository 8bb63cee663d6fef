"""The FPN-like spatial decoder that turns the encoder's visual memory into per-frame mask features."""
from typing import List

import torch.nn.functional as F
from torch import Tensor, nn


class FPNSpatialDecoder(nn.Module):
    """Decodes [N, d_model, H/32-ish] memory with the backbone's stride-8 and stride-4 features into
    `mask_kernels_dim` channels at stride 4."""

    def __init__(self, context_dim, fpn_dims, mask_kernels_dim=8):
        super().__init__()
        inter_dims = [context_dim, context_dim // 2, context_dim // 4, context_dim // 8]
        self.lay1 = nn.Conv2d(context_dim, inter_dims[0], 3, padding=1)
        self.gn1 = nn.GroupNorm(8, inter_dims[0])
        self.lay2 = nn.Conv2d(inter_dims[0], inter_dims[1], 3, padding=1)
        self.gn2 = nn.GroupNorm(8, inter_dims[1])
        self.lay3 = nn.Conv2d(inter_dims[1], inter_dims[2], 3, padding=1)
        self.gn3 = nn.GroupNorm(8, inter_dims[2])
        self.lay4 = nn.Conv2d(inter_dims[2], inter_dims[3], 3, padding=1)
        self.gn4 = nn.GroupNorm(8, inter_dims[3])
        self.adapter1 = nn.Conv2d(fpn_dims[0], inter_dims[1], 1)
        self.adapter2 = nn.Conv2d(fpn_dims[1], inter_dims[2], 1)
        self.out_lay = nn.Conv2d(inter_dims[3], mask_kernels_dim, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: Tensor, layer_features: List[Tensor]):
        """x: [N, d_model, h, w]; layer_features: backbone outputs from coarse to fine ([N, 192, 2h, 2w], [N, 96, 4h, 4w])."""
        x = F.relu(self.gn1(self.lay1(x)))
        x = F.relu(self.gn2(self.lay2(x)))
        cur_fpn = self.adapter1(layer_features[0])
        x = cur_fpn + F.interpolate(x, size=cur_fpn.shape[-2:], mode='nearest')
        x = F.relu(self.gn3(self.lay3(x)))
        cur_fpn = self.adapter2(layer_features[1])
        x = cur_fpn + F.interpolate(x, size=cur_fpn.shape[-2:], mode='nearest')
        x = F.relu(self.gn4(self.lay4(x)))
        return self.out_lay(x)  # [N, mask_kernels_dim, H/4, W/4]

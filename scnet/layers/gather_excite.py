"""Gather-Excite with a learned global-extent gather (GE-theta-minus), for Table 3's GE rows.

Hu et al., "Gather-Excite" (NeurIPS 2018): the *gather* summarises each channel over the whole feature map
with a depthwise convolution whose kernel covers the map, the *excite* gates every position of the channel
with ``sigmoid`` of that summary. The paper's ResNet+GE (31.2M) and GE-SCNet (31.1M) parameter counts fit
this variant without an MLP: a depthwise ``extent x extent`` kernel plus a BN per channel.

Why not timm's ``GatherExcite``: in timm 1.0.31 both its MLP and its parameterised gather fail to build (the
factory passes device/dtype positionally). This module is the few lines the Table 3 rows need.

Other input sizes. The kernel is sized for the map at the design resolution (224 px: 56, 28, 14, 7 for the
four stages). A map of any other size is first resampled to ``extent x extent`` with adaptive average
pooling, then gathered by the kernel: the gather keeps its global extent and its weights keep their meaning
(each kernel tap covers the same relative region of the image). At the design size the pooling is the
identity and the module is exactly a ``extent x extent`` depthwise "valid" convolution.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['GatherExcite']


class GatherExcite(nn.Module):
    """Global-extent depthwise gather, BN, sigmoid gate (GE-theta-minus).

    Args:
        channels: number of channels gated.
        extent: spatial size the depthwise gather kernel covers (the map size at the design resolution).
    """

    def __init__(self, channels: int, extent: int, norm_layer=nn.BatchNorm2d, device=None, dtype=None):
        super().__init__()
        if extent < 1:
            raise ValueError(f'GatherExcite: extent must be >= 1, got {extent}')
        self.extent = extent
        self.gather = nn.Conv2d(channels, channels, extent, groups=channels, bias=False, device=device,
                                dtype=dtype)
        self.norm = norm_layer(channels, device=device, dtype=dtype)
        nn.init.constant_(self.gather.weight, 1.0 / (extent * extent))  # starts as a global average

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        summary = x
        if tuple(x.shape[-2:]) != (self.extent, self.extent):
            summary = F.adaptive_avg_pool2d(x, self.extent)
        gate = torch.sigmoid(self.norm(self.gather(summary)))  # (N, C, 1, 1)
        return x * gate

    def extra_repr(self) -> str:
        return f'extent={self.extent}'

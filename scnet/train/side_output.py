"""Side supervision after res3 (Fig. 5): an auxiliary classifier on the output of the second stage.

A 1x1 convolution gives a score per class at every position of the stage-2 map (the "side-output score
maps" of Fig. 4); their spatial average is the auxiliary logits. That equals global pooling followed by a
linear layer (both are linear), and keeps the maps at hand for visualisation.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

__all__ = ['SideOutputHead', 'WithSideOutput', 'SIDE_STAGE']

#: The module whose output the side head reads: timm ResNet's second stage ("res3" in the paper).
SIDE_STAGE = 'layer2'


class SideOutputHead(nn.Module):
    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.score = nn.Conv2d(in_channels, num_classes, 1)

    def score_maps(self, features: torch.Tensor) -> torch.Tensor:
        return self.score(features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.score_maps(features).mean(dim=(2, 3))


class WithSideOutput(nn.Module):
    """``model`` plus a side head on its stage-2 output; ``forward`` returns ``(logits, side_logits)``."""

    def __init__(self, model: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.model = model
        stage = getattr(model, SIDE_STAGE, None)
        if stage is None:
            raise ValueError(f'{type(model).__name__} has no {SIDE_STAGE}: side supervision needs a ResNet-family '
                             'model of the zoo')
        channels = stage[-1].conv3.out_channels if hasattr(stage[-1], 'conv3') else stage[-1].conv2.out_channels
        self.side = SideOutputHead(channels, num_classes)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        x = m.maxpool(m.act1(m.bn1(m.conv1(x))))
        x = m.layer1(x)
        res3 = m.layer2(x)
        x = m.layer4(m.layer3(res3))
        return m.forward_head(x), self.side(res3)

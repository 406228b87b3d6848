"""The model class of the zoo: timm's ``ResNet`` plus the two things the paper's networks need that it lacks.

* ``cifar_stem``: a 3x3 stride-1 stem without max-pool, for 32-64 px images (the stride of every stage
  drops by 4, and ``feature_info`` says so, so ``features_only`` stays right).
* ``gather_excite``: a GE-theta-minus gate (``scnet.layers.GatherExcite``) after every block's last BN, with
  the gather kernel sized to each stage's map at ``design_size`` px, as Table 3's GE rows.

Every other choice (block type, depth, width, cardinality, stem, ``avg_down``, output stride, attention)
is timm's own argument; SC-Conv enters only through the block (``scnet.models.blocks.SCBottleneck``).
"""
from __future__ import annotations

from timm.models.resnet import ResNet
from torch import nn

from scnet.layers.gather_excite import GatherExcite

__all__ = ['SCResNet']


class SCResNet(ResNet):
    """timm ``ResNet`` with optional CIFAR stem and Gather-Excite gates (see module docstring)."""

    def __init__(self, *args, cifar_stem: bool = False, gather_excite: bool = False, design_size: int = 224,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # the stem's first conv weight: a norm layer may have none (norm_layer=nn.Identity, as timm's ResNet allows)
        first = next(self.parameters())
        dd = dict(device=first.device, dtype=first.dtype)
        if cifar_stem:
            if isinstance(self.conv1, nn.Sequential):
                raise ValueError("cifar_stem replaces the 7x7 stem; it cannot be combined with stem_type='deep'")
            self.conv1 = nn.Conv2d(self.in_chans, self.conv1.out_channels, 3, stride=1, padding=1, bias=False,
                                   **dd)
            nn.init.kaiming_normal_(self.conv1.weight, mode='fan_out', nonlinearity='relu')
            self.maxpool = nn.Identity()
            self.feature_info[0]['reduction'] = 1
            for info in self.feature_info[1:]:
                info['reduction'] //= 4
        if gather_excite:
            for info in self.feature_info[1:]:
                extent = max(1, design_size // info['reduction'])
                for block in getattr(self, info['module']):
                    block.se = GatherExcite(block.conv3.out_channels, extent, **dd)

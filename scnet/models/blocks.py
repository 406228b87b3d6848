"""The SCNet bottleneck: timm's ResNet ``Bottleneck`` with its 3x3 conv replaced by an ``SCConv2d``.

Everything else (1x1 convs, norms, activations, SE/attention, drop-path, shortcut) stays timm's, so the
whole ResNet family machinery (stems, ``avg_down``, output stride, feature extraction) applies unchanged.
See ``shared``'s design notes: the authors' bottleneck with its two 1x1 convs and per-path BNs is this
block once their weights are concatenated.
"""
from __future__ import annotations

from typing import Optional

from timm.models.resnet import Bottleneck
from torch import nn

from scnet.layers.scconv import SCConv2d

__all__ = ['SCBottleneck', 'AvgDownsample']


class AvgDownsample(nn.AvgPool2d):
    """The authors' ``avd`` layer of the v1d models: a 3x3, stride-s, padding-1 average pool placed after the
    (then stride-1) 3x3 convs of a down-sampling block.

    Passed as the *block's* ``aa_layer``: timm's own ``'avg'`` choice builds a 2x2 pool, and a *model* level
    ``aa_layer`` would also change the stem's max-pool, which the authors' stem keeps.
    """

    def __init__(self, channels: Optional[int] = None, stride: int = 2, **_: object) -> None:
        super().__init__(kernel_size=3, stride=stride, padding=1)


class SCBottleneck(Bottleneck):
    """timm ``Bottleneck`` whose ``conv2`` is a self-calibrated convolution.

    Keyword args beyond timm's: ``pooling_r``, ``pool``, ``identity``, ``upsample``, ``memory_efficient`` (see
    ``SCConv2d``) and
    ``avd`` (the v1d down-sampling average pool).
    """

    def __init__(
            self,
            inplanes: int,
            planes: int,
            stride: int = 1,
            downsample: Optional[nn.Module] = None,
            *,
            pooling_r: int = 4,
            pool: str = 'avg',
            identity: bool = True,
            upsample: str = 'nearest',
            memory_efficient: bool = True,
            avd: bool = False,
            **kwargs,
    ) -> None:
        if avd:
            kwargs['aa_layer'] = AvgDownsample
        super().__init__(inplanes, planes, stride, downsample, **kwargs)
        plain = self.conv2
        self.conv2 = SCConv2d(
            plain.in_channels, plain.out_channels,
            stride=plain.stride[0], dilation=plain.dilation[0], groups=plain.groups,
            pooling_r=pooling_r, pool=pool, identity=identity, upsample=upsample, memory_efficient=memory_efficient,
            norm_layer=kwargs.get('norm_layer', nn.BatchNorm2d),
            device=plain.weight.device, dtype=plain.weight.dtype,
        )

"""Self-calibrated convolution (SC-Conv), equations 2-5 of Liu et al., CVPR 2020.

A 3x3 convolution whose filters are split into four groups K1..K4. The input channels are split in
two halves:

* the first half goes through K1 alone (the paper's "path 2", which keeps the original context);
* the second half is self-calibrated (the paper's "path 1"):

  T1  = Pool_r(X1)                          (2)   average (or max) pooling, kernel r, stride r
  X1' = Up(K2(T1))                          (3)   nearest (authors' release) or bilinear (paper text)
  Y1' = K3(X1) * sigmoid(X1 + X1')          (4)   "X1 +" is the identity term, optional
  Y1  = K4(Y1')                             (5)   K4 carries the stride

and the output is ``cat([Y2, Y1])``: path 2 first, the order of the authors' released checkpoints.

The module is a drop-in for ``nn.Conv2d(in, out, 3, stride, padding=dilation, dilation=dilation,
groups=groups, bias=False)``: same input and output shapes, and for ``in == out`` the same number of
convolution weights. The two normalisation layers after K2 and K3 are the only additions, as in the
authors' networks. The normalisation and activation that follow K1 and K4 in the authors' bottleneck are
*not* part of this module: they are the block's own ``bn2``/``act2`` applied to the concatenated output,
which is the same computation because both are per channel.

Small feature maps. The authors' release pools with a fixed ``r x r`` window and crashes on maps smaller
than ``r``. Here the pooling window is clamped, per dimension, to the map's extent: a map of height
``h < r`` is pooled over its whole height (the calibration context becomes global along that axis).
Maps of at least ``r`` pixels take exactly the authors' floor-mode pooling, so their checkpoints give
their numbers wherever their code runs at all.

Training memory. Written plainly, autograd keeps four half-width maps per layer for backward that a plain
3x3 convolution does not have: K3's output (for its BN), the BN's output and the gate (for the product),
and the product (for K4). Two of them are cheap to recompute: with ``memory_efficient=True`` (the
default) the product and K4 run under ``torch.utils.checkpoint``, which keeps only their inputs and
recomputes the gate, the product and K4's forward during backward. That cuts SCNet-50's saved
activations at batch 16 from 1.18x to 1.10x ResNet-50's for about 4% more arithmetic (K4's forward once
more); nothing stateful runs twice (the BNs stay outside the recomputed part). ``memory_efficient=False``
keeps everything, as the authors' code does.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ['SCConv2d', 'NormLayer']

NormLayer = Callable[[int], nn.Module]

_POOLS = ('avg', 'max')
_UPSAMPLES = ('nearest', 'bilinear')


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'SCConv2d: {name} must be a positive integer, got {value!r}')
    return value


def _single(name: str, value) -> int:
    """Accept ``v`` or ``(v, v)``; SC-Conv needs the same stride/dilation along both axes."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f'SCConv2d: {name} must be the same along both axes, got {tuple(value)}')
        value = value[0]
    return _positive_int(name, value)


class SCConv2d(nn.Module):
    """Self-calibrated 3x3 convolution, a drop-in for a bias-free 3x3 ``nn.Conv2d``.

    Args:
        in_channels: input channels; even, and each half divisible by ``groups``.
        out_channels: output channels; even, and each half divisible by ``groups``.
        stride: stride of the layer, applied by K1 and K4 (as in the authors' networks).
        dilation: dilation of all four 3x3 convolutions; padding equals the dilation.
        groups: grouped convolution; each half keeps ``groups`` groups (SCNeXt).
        pooling_r: down-sampling rate r of equation 2 (1 = no pooling).
        pool: ``'avg'`` (default) or ``'max'`` pooling for equation 2.
        identity: ``True`` gates with ``sigmoid(X1 + X1')``, ``False`` with ``sigmoid(X1')``.
        upsample: ``'nearest'`` (the authors' released code) or ``'bilinear'`` (the paper's text).
        norm_layer: builds the normalisation after K2 and after K3 from a channel count;
            ``None`` for none (for networks without normalisation).
        memory_efficient: in training, recompute the gate, the product and K4 during backward instead of
            keeping their maps (see the module doc); no effect on results or in inference.
    """

    def __init__(
            self,
            in_channels: int,
            out_channels: int,
            stride: int = 1,
            dilation: int = 1,
            groups: int = 1,
            *,
            pooling_r: int = 4,
            pool: str = 'avg',
            identity: bool = True,
            upsample: str = 'nearest',
            norm_layer: Optional[NormLayer] = nn.BatchNorm2d,
            memory_efficient: bool = True,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        in_channels = _positive_int('in_channels', in_channels)
        out_channels = _positive_int('out_channels', out_channels)
        stride = _single('stride', stride)
        dilation = _single('dilation', dilation)
        groups = _positive_int('groups', groups)
        pooling_r = _positive_int('pooling_r', pooling_r)
        if pool not in _POOLS:
            raise ValueError(f"SCConv2d: pool must be one of {_POOLS}, got {pool!r}")
        if upsample not in _UPSAMPLES:
            raise ValueError(f"SCConv2d: upsample must be one of {_UPSAMPLES}, got {upsample!r}")
        for name, channels in (('in_channels', in_channels), ('out_channels', out_channels)):
            if channels % 2 or (channels // 2) % groups:
                raise ValueError(
                    f'SCConv2d: {name}={channels} must be even and each half ({channels / 2:g}) divisible '
                    f'by groups={groups}; SC-Conv splits the channels in two halves of {groups} groups each')

        self.in_channels = in_channels
        self.out_channels = out_channels
        # Conv2d-like attributes, so code that inspects a conv keeps working after the swap.
        self.kernel_size = (3, 3)
        self.stride = (stride, stride)
        self.padding = (dilation, dilation)
        self.dilation = (dilation, dilation)
        self.groups = groups
        self.pooling_r = pooling_r
        self.pool = pool
        self.identity = bool(identity)
        self.upsample = upsample
        self.memory_efficient = bool(memory_efficient)

        half_in, half_out = in_channels // 2, out_channels // 2
        dd = dict(device=device, dtype=dtype)

        def conv3x3(cin: int, cout: int, s: int = 1) -> nn.Conv2d:
            return nn.Conv2d(cin, cout, 3, stride=s, padding=dilation, dilation=dilation, groups=groups,
                             bias=False, **dd)

        def norm(channels: int) -> nn.Module:
            if norm_layer is None:
                return nn.Identity()
            try:
                return norm_layer(channels, **dd)
            except TypeError:  # a norm factory that takes no device/dtype
                return norm_layer(channels).to(**{k: v for k, v in dd.items() if v is not None})

        self.k1 = conv3x3(half_in, half_out, stride)   # path 2: plain conv
        self.k2 = conv3x3(half_in, half_in)            # path 1: on the pooled input (eq. 3)
        self.k2_norm = norm(half_in)
        self.k3 = conv3x3(half_in, half_in)            # path 1: features to calibrate (eq. 4)
        self.k3_norm = norm(half_in)
        self.k4 = conv3x3(half_in, half_out, stride)   # path 1: output transform (eq. 5)

    def _context(self, x1: torch.Tensor) -> torch.Tensor:
        """``K2(Pool_r(X1))`` with its normalisation, at the pooled resolution (equations 2 and 3)."""
        context = x1
        if self.pooling_r > 1:
            h, w = x1.shape[-2:]
            window = (min(self.pooling_r, h), min(self.pooling_r, w))  # clamped on small maps, see module doc
            pool = F.avg_pool2d if self.pool == 'avg' else F.max_pool2d
            context = pool(x1, window, window)
        return self.k2_norm(self.k2(context))

    def _gate(self, x1: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``sigmoid(X1 + Up(context))`` (or without ``X1``): the gate of equation 4."""
        if context.shape[-2:] != x1.shape[-2:]:
            if self.upsample == 'nearest':
                context = F.interpolate(context, size=x1.shape[-2:], mode='nearest')
            else:
                context = F.interpolate(context, size=x1.shape[-2:], mode='bilinear', align_corners=False)
        return torch.sigmoid(x1 + context if self.identity else context)

    def _calibrate(self, features: torch.Tensor, x1: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``Y1 = K4(K3(X1) * gate)``: equations 4 and 5, given the normalised ``K3(X1)``."""
        return self.k4(features * self._gate(x1, context))

    def calibration_gate(self, x1: torch.Tensor) -> torch.Tensor:
        """``sigmoid(X1 + Up(K2(Pool_r(X1))))``, the gate of equation 4, for the self-calibrated half."""
        return self._gate(x1, self._context(x1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_plain, x_calib = torch.split(x, self.in_channels // 2, dim=1)
        y_plain = self.k1(x_plain)
        context = self._context(x_calib)
        features = self.k3_norm(self.k3(x_calib))
        if self.memory_efficient and self.training and torch.is_grad_enabled():
            y_calib = checkpoint(self._calibrate, features, x_calib, context, use_reentrant=False)
        else:
            y_calib = self._calibrate(features, x_calib, context)
        return torch.cat([y_plain, y_calib], dim=1)

    def extra_repr(self) -> str:
        s = f'{self.in_channels}, {self.out_channels}, kernel_size=(3, 3), stride={self.stride}'
        if self.dilation != (1, 1):
            s += f', dilation={self.dilation}'
        if self.groups != 1:
            s += f', groups={self.groups}'
        s += f', pooling_r={self.pooling_r}, pool={self.pool!r}, identity={self.identity}'
        s += f', upsample={self.upsample!r}'
        return s if self.memory_efficient else s + ', memory_efficient=False'

"""``scnet.convert(model)``: try SC-Conv on any CNN in one line.

Every 3x3 ``nn.Conv2d`` that an ``SCConv2d`` can stand in for, with the same input and output shapes, is
replaced in place; every other 3x3 conv is left alone and the report says why. New layers are freshly
initialised (He-normal, as torchvision and timm initialise ResNets): the calibration branch has no
counterpart in a plain conv, so copying weights would not preserve the function anyway; convert, then train
or fine-tune.
"""
from __future__ import annotations

import fnmatch
import json
from dataclasses import asdict, dataclass, field
from typing import Iterable, List, Optional

import torch
from torch import nn

from scnet.layers.scconv import SCConv2d

__all__ = ['convert', 'ConversionReport', 'ConvertedLayer', 'SkippedLayer']


@dataclass
class ConvertedLayer:
    name: str
    in_channels: int
    out_channels: int
    stride: int
    dilation: int
    groups: int
    params_before: int
    params_after: int


@dataclass
class SkippedLayer:
    name: str
    reason: str


@dataclass
class ConversionReport:
    """What ``convert`` changed and what it left, with reasons. ``str(report)`` is a readable summary."""

    converted: List[ConvertedLayer] = field(default_factory=list)
    skipped: List[SkippedLayer] = field(default_factory=list)

    @property
    def params_before(self) -> int:
        return sum(c.params_before for c in self.converted)

    @property
    def params_after(self) -> int:
        return sum(c.params_after for c in self.converted)

    def to_dict(self) -> dict:
        return {'converted': [asdict(c) for c in self.converted], 'skipped': [asdict(s) for s in self.skipped],
                'params_before': self.params_before, 'params_after': self.params_after}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def __str__(self) -> str:
        lines = [f'converted {len(self.converted)} 3x3 conv(s) to SCConv2d '
                 f'({self.params_before:,} -> {self.params_after:,} parameters), skipped {len(self.skipped)}']
        lines += [f'  + {c.name}: {c.in_channels}->{c.out_channels}, stride {c.stride}, groups {c.groups}'
                  for c in self.converted]
        lines += [f'  - {s.name}: {s.reason}' for s in self.skipped]
        return '\n'.join(lines)


def _why_not(conv: nn.Conv2d) -> Optional[str]:
    """None if ``conv`` can become an SCConv2d of the same shape, else the reason it cannot."""
    if type(conv) is not nn.Conv2d:
        return f'{type(conv).__name__} is a Conv2d subclass with its own behaviour'
    if conv.padding_mode != 'zeros':
        return f'padding_mode={conv.padding_mode!r} (SC-Conv pads with zeros)'
    if conv.bias is not None:
        return 'has a bias (SC-Conv is bias-free, to be followed by a norm layer)'
    if conv.stride[0] != conv.stride[1] or conv.dilation[0] != conv.dilation[1]:
        return f'stride {conv.stride} / dilation {conv.dilation} differ between axes'
    if conv.padding != conv.dilation:
        return f'padding {conv.padding} != dilation {conv.dilation} (output size would change)'
    g = conv.groups
    for what, c in (('input', conv.in_channels), ('output', conv.out_channels)):
        if c % 2 or (c // 2) % g:
            return f'{c} {what} channels cannot be split into two halves of {g} group(s) each'
    return None


def convert(model: nn.Module, *, exclude: Iterable[str] = (), **sc_options) -> ConversionReport:
    """Replace, in place, every eligible 3x3 ``nn.Conv2d`` of ``model`` by an ``SCConv2d`` of the same shape.

    Args:
        model: any ``nn.Module`` (your network, a torchvision or timm model).
        exclude: shell patterns of module names to leave alone, e.g. ``('layer4.*',)``.
        **sc_options: ``SCConv2d`` options (``pooling_r``, ``pool``, ``identity``, ``upsample``,
            ``norm_layer``, ``memory_efficient``).

    Returns:
        A ``ConversionReport`` listing the converted layers and the skipped 3x3 convs with their reasons.
        Eligible convs have an even number of input and output channels divisible in halves by their
        groups, zero padding equal to their dilation, no bias, and equal stride along both axes.
    """
    patterns = tuple(exclude)
    report = ConversionReport()
    for name, conv in list(model.named_modules()):
        if not isinstance(conv, nn.Conv2d) or conv.kernel_size != (3, 3):
            continue
        reason = _why_not(conv) if name else 'the model itself is this conv: wrap it in a module to convert it'
        if reason is None and any(fnmatch.fnmatch(name, p) for p in patterns):
            reason = 'excluded by pattern'
        if reason:
            report.skipped.append(SkippedLayer(name, reason))
            continue
        sc = SCConv2d(conv.in_channels, conv.out_channels, stride=conv.stride[0], dilation=conv.dilation[0],
                      groups=conv.groups, device=conv.weight.device, dtype=conv.weight.dtype, **sc_options)
        sc.train(conv.training)
        if conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous():
            sc.to(memory_format=torch.channels_last)
        for k in (sc.k1, sc.k2, sc.k3, sc.k4):
            nn.init.kaiming_normal_(k.weight, mode='fan_out', nonlinearity='relu')
        parent_name, _, child = name.rpartition('.')
        setattr(model.get_submodule(parent_name) if parent_name else model, child, sc)
        report.converted.append(ConvertedLayer(
            name, conv.in_channels, conv.out_channels, conv.stride[0], conv.dilation[0], conv.groups,
            params_before=sum(p.numel() for p in conv.parameters()),
            params_after=sum(p.numel() for p in sc.parameters())))
    return report

"""The authors' SCNet networks, re-implemented literally: their module tree, their parameter names, their maths.

Why this exists: ``scnet`` does not copy the authors' architecture, it rebuilds it from timm's ResNet and
maps their checkpoints onto it (``scnet.weights.convert_authors_state_dict``). A mapping can only be shown
right against the original computation, and their checkpoints cannot be downloaded in the tests. So this
module rebuilds *their* networks as their release structures them (two 1x1 convs ``conv1_a``/``conv1_b``
with their own BNs, ``k1`` as path 2, ``scconv.k2/k3/k4`` as path 1, nearest up-sampling, the v1d deep stem,
``avg_down`` shortcut and ``avd`` pooling), and ``test_reference_matches_released_layout`` pins it to the
tensor list of their four released checkpoints (``data/official_layout/*.json``): same names, same order,
same shapes, same dtypes. Random weights in this network then stand in for the real checkpoints.

It shares no code with ``scnet``; it is written from the authors' description, independently of the package.
Like theirs, it fails on feature maps smaller than the pooling rate r = 4 (inputs of 96 px and below).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['LAYOUT_DIR', 'LAYOUTS', 'MIN_INPUT', 'load_layout', 'layout_table', 'build_reference',
           'randomize_', 'random_authors_state_dict', 'AuthorsSCNet']

LAYOUT_DIR = Path(__file__).parent / 'data' / 'official_layout'
#: The four checkpoints the authors describe (three released, scnet101_v1d announced).
LAYOUTS = ('scnet50', 'scnet50_v1d', 'scnet101', 'scnet101_v1d')
#: Smallest square input their code runs on: stage 4 must be at least r = 4 pixels wide.
MIN_INPUT = 97

_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
POOLING_R = 4
EXPANSION = 4


def load_layout(name: str) -> dict:
    """The JSON description of the authors' checkpoint ``name``: url, counts and the ordered tensor list."""
    with open(LAYOUT_DIR / f'{name}.json') as f:
        return json.load(f)


def layout_table(name: str) -> List[Tuple[str, Tuple[int, ...], str]]:
    """``[(key, shape, dtype name), ...]`` of the released checkpoint, in file order."""
    return [(k, tuple(shape), dtype) for k, shape, dtype in load_layout(name)['keys']]


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels)


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)


class SCConv(nn.Module):
    """Their path 1: ``k4(k3(x) * sigmoid(x + up(k2(x))))``; ``k2`` starts with the r x r average pool."""

    def __init__(self, planes: int, stride: int) -> None:
        super().__init__()
        self.k2 = nn.Sequential(nn.AvgPool2d(POOLING_R, POOLING_R), _conv(planes, planes, 3), _bn(planes))
        self.k3 = nn.Sequential(_conv(planes, planes, 3), _bn(planes))
        self.k4 = nn.Sequential(_conv(planes, planes, 3, stride), _bn(planes), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # size=... and no mode: interpolate's default, nearest-neighbour (not the bilinear of the paper's text)
        context = F.interpolate(self.k2(x), size=x.shape[2:])
        return self.k4(self.k3(x) * torch.sigmoid(x + context))


class SCBottleneck(nn.Module):
    """Their bottleneck: two half-width 1x1 branches, path 2 (``k1``) and path 1 (``scconv``) concatenated
    in that order into ``conv3``. With ``avd`` (v1d, down-sampling blocks) both paths run at stride 1 and a
    3x3 stride-s average pool follows each of them."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 avd: bool = False) -> None:
        super().__init__()
        half = planes // 2
        self.conv1_a = _conv(inplanes, half, 1)
        self.bn1_a = _bn(half)
        self.conv1_b = _conv(inplanes, half, 1)
        self.bn1_b = _bn(half)
        self.avd = avd and stride > 1
        inner_stride = 1 if self.avd else stride
        self.k1 = nn.Sequential(_conv(half, half, 3, inner_stride), _bn(half), nn.ReLU())
        self.scconv = SCConv(half, inner_stride)
        self.avd_layer = nn.AvgPool2d(3, stride, padding=1) if self.avd else None
        self.conv3 = _conv(2 * half, planes * EXPANSION, 1)
        self.bn3 = _bn(planes * EXPANSION)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        path2 = self.k1(self.relu(self.bn1_a(self.conv1_a(x))))
        path1 = self.scconv(self.relu(self.bn1_b(self.conv1_b(x))))
        if self.avd_layer is not None:
            path2, path1 = self.avd_layer(path2), self.avd_layer(path1)
        out = self.bn3(self.conv3(torch.cat([path2, path1], dim=1)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class AuthorsSCNet(nn.Module):
    """Their SCNet: 7x7 stem (v1b) or deep 3x3 stem (v1d), four stages of ``SCBottleneck``, pool, ``fc``."""

    def __init__(self, layers: Tuple[int, ...], v1d: bool = False, stem_width: int = 32,
                 num_classes: int = 1000) -> None:
        super().__init__()
        self.v1d = v1d
        if v1d:
            w = stem_width
            self.conv1 = nn.Sequential(_conv(3, w, 3, 2), _bn(w), nn.ReLU(), _conv(w, w, 3), _bn(w), nn.ReLU(),
                                       _conv(w, 2 * w, 3))
            self.inplanes = 2 * w
        else:
            self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
            self.inplanes = 64
        self.bn1 = _bn(self.inplanes)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._stage(64, layers[0], 1)
        self.layer2 = self._stage(128, layers[1], 2)
        self.layer3 = self._stage(256, layers[2], 2)
        self.layer4 = self._stage(512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * EXPANSION, num_classes)

    def _shortcut(self, planes: int, stride: int) -> Optional[nn.Module]:
        out = planes * EXPANSION
        if stride == 1 and self.inplanes == out:
            return None
        if not self.v1d:
            return nn.Sequential(_conv(self.inplanes, out, 1, stride), _bn(out))
        # avg_down: pool first (an identity-sized 1x1 pool when the stage keeps its resolution), then 1x1 conv
        pool = nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
        return nn.Sequential(pool, _conv(self.inplanes, out, 1), _bn(out))

    def _stage(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        first = SCBottleneck(self.inplanes, planes, stride, self._shortcut(planes, stride), avd=self.v1d)
        self.inplanes = planes * EXPANSION
        return nn.Sequential(first, *(SCBottleneck(self.inplanes, planes, avd=self.v1d) for _ in range(1, blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build_reference(name: str, num_classes: int = 1000) -> AuthorsSCNet:
    """The authors' network of layout ``name`` (depth and variant from the name, stem width from the JSON)."""
    depth = int(name.removeprefix('scnet').split('_')[0])
    v1d = name.endswith('_v1d')
    stem_width = 32
    if v1d:
        stem_width = dict((k, s) for k, s, _ in layout_table(name))['conv1.0.weight'][0]
    return AuthorsSCNet(_DEPTHS[depth], v1d=v1d, stem_width=stem_width, num_classes=num_classes)


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every weight and every BN running statistic a random, non-trivial value (in place).

    Fresh BNs (mean 0, var 1, weight 1, bias 0) would hide a mapping that mixes up BN halves or swaps
    statistics; random ones do not. Scales keep activations of order one through 101 layers.
    """
    g = torch.Generator().manual_seed(seed)

    def uniform(t: torch.Tensor, lo: float, hi: float) -> None:
        t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                uniform(m.weight, 0.3, 1.2)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.3)
                uniform(m.running_var, 0.4, 2.5)
                m.num_batches_tracked.fill_(int(torch.randint(1, 10 ** 6, (1,), generator=g)))
    return model


def random_authors_state_dict(name: str, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Random tensors with exactly the names, shapes and dtypes of the released checkpoint ``name``,
    built from the JSON alone (no network)."""
    g = torch.Generator().manual_seed(seed)
    out: Dict[str, torch.Tensor] = {}
    for key, shape, dtype in layout_table(name):
        if dtype == 'int64':
            out[key] = torch.randint(0, 10 ** 6, shape, generator=g, dtype=torch.int64)
        else:
            out[key] = torch.randn(shape, generator=g, dtype=getattr(torch, dtype))
    return out

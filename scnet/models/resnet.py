"""The model class of the zoo: timm's ``ResNet`` plus the two things the paper's networks need that it lacks.

* ``cifar_stem``: a 3x3 stride-1 stem without max-pool, for 32-64 px images (the stride of every stage
  drops by 4, and ``feature_info`` says so, so ``features_only`` stays right).
* ``gather_excite``: a GE-theta-minus gate (``scnet.layers.GatherExcite``) after every block's last BN, with
  the gather kernel sized to each stage's map at ``design_size`` px, as Table 3's GE rows.

Every other choice (block type, depth, width, cardinality, stem, ``avg_down``, output stride, attention)
is timm's own argument; SC-Conv enters only through the block (``scnet.models.blocks.SCBottleneck``).
"""
from __future__ import annotations

import numbers
import warnings
from typing import Any, List, Optional, Union

import torch
from timm.models.resnet import ResNet
from torch import nn

from scnet.errors import InvalidArgumentError, InvalidArgumentTypeError
from scnet.layers.gather_excite import GatherExcite

__all__ = ['SCResNet', 'check_unpooled_head', 'check_out_indices']


def check_unpooled_head(name: str, global_pool: Optional[str], num_classes: Optional[int],
                        features_only: bool = False) -> None:
    """``global_pool=''`` with a classifier is an error: timm builds it, and its first forward pass fails on a
    Linear layer given the unpooled ``(N, C, H, W)`` map. ``num_classes`` ``None`` means the default classifier."""
    if global_pool == '' and num_classes != 0 and not features_only:
        classes = 'the default classifier' if num_classes is None else f'num_classes={num_classes}'
        raise InvalidArgumentError(
            f"{name}: global_pool='' keeps the (N, C, H, W) feature map, which a classifier cannot take "
            f"({classes}); for unpooled features pass num_classes=0 too (the model then returns the map), or keep a "
            "pooling: 'avg', 'max', 'avgmax', 'catavgmax'")


def check_out_indices(name: str, out_indices: Any, levels: int, argument: str = 'out_indices') -> None:
    """A clear error for feature map indices (``features_only``'s ``out_indices``, ``forward_intermediates``'
    ``indices``) that name a map the network does not have: timm fails with a bare ``IndexError`` from deep in its
    feature wrapper or an ``AssertionError``, or returns nothing for ``0``."""
    example = tuple(range(1, levels))
    takes = (f'the network has {levels} feature maps: index 0 is the stem, 1 to {levels - 1} the stages (-{levels} '
             f'to -1 count from the end), and an int n takes the last n; e.g. {argument}={example}')
    integer = (lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool))
    if integer(out_indices):
        if not 1 <= out_indices <= levels:
            raise InvalidArgumentError(f'{name}: {argument}={out_indices!r} is not a number of feature maps '
                                       f'to take (1 to {levels}); {takes}')
        return
    if not isinstance(out_indices, (tuple, list)) or not all(integer(i) for i in out_indices):
        raise InvalidArgumentTypeError(f'{name}: {argument} must be a tuple of feature map indices or an int, '
                                       f'got {out_indices!r}; {takes}')
    outside = [i for i in out_indices if not -levels <= i < levels]
    if outside:
        raise InvalidArgumentError(f'{name}: {argument}={tuple(out_indices)!r} names feature map '
                                   f'{", ".join(map(str, outside))}, which the network does not have; {takes}')


class SCResNet(ResNet):
    """timm ``ResNet`` with optional CIFAR stem and Gather-Excite gates (see module docstring)."""

    def __init__(self, *args, cifar_stem: bool = False, gather_excite: bool = False, design_size: int = 224,
                 **kwargs) -> None:
        if cifar_stem and 'deep' in (kwargs.get('stem_type') or ''):  # checked before building the whole network
            raise InvalidArgumentError(
                f"cifar_stem (a single 3x3 convolution, the *_cifar models' stem) cannot be combined with "
                f"stem_type={kwargs.get('stem_type')!r}: leave stem_type out, or give it to a model with the "
                "ImageNet stem, e.g. create_model('scnet26', stem_type='deep')")
        super().__init__(*args, **kwargs)
        # the stem's first conv weight: a norm layer may have none (norm_layer=nn.Identity, as timm's ResNet allows)
        first = next(self.parameters())
        dd = dict(device=first.device, dtype=first.dtype)
        if cifar_stem:
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
                    # the network's norm (a GroupNorm network gets GroupNorm gates, not BatchNorm ones)
                    block.se = GatherExcite(block.conv3.out_channels, extent,
                                            norm_layer=kwargs.get('norm_layer', nn.BatchNorm2d), **dd)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """timm's, refusing a classifier on unpooled features asked for in one call (``global_pool=''`` with
        ``num_classes`` > 0), which timm builds and the next forward pass fails on. Where the unpooled model's
        pooling is kept (``global_pool`` not given) the head is built, as timm builds it, with a warning: timm's
        own model tests give a classifier to such a model to check where its parameters live, and a caller may
        set the pooling next."""
        name = f'{type(self).__name__}.reset_classifier'
        if global_pool is not None:
            check_unpooled_head(name, global_pool, num_classes)
        elif self.global_pool.pool_type == '' and num_classes:
            warnings.warn(f"{name}({num_classes}) keeps global_pool='': its classifier cannot take the unpooled "
                          f"(N, C, H, W) map, so a forward pass fails until a pooling is set; pass one, e.g. "
                          f"reset_classifier({num_classes}, 'avg')", UserWarning, stacklevel=2)
        super().reset_classifier(num_classes, global_pool)

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = 'NCHW',
                              intermediates_only: bool = False):
        """timm's, with its bare assertions on ``indices`` and ``output_fmt`` as errors naming the way out."""
        self._check_intermediate_indices('forward_intermediates', indices)
        if output_fmt != 'NCHW':
            raise InvalidArgumentError(f"{type(self).__name__}.forward_intermediates: output_fmt={output_fmt!r} is "
                                       "not possible, a ResNet's maps are 'NCHW'; permute them, e.g. "
                                       "map.permute(0, 2, 3, 1) for NHWC")
        return super().forward_intermediates(x, indices, norm, stop_early, output_fmt, intermediates_only)

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """timm's, with its bare assertion on ``indices`` as an error naming the maps that exist."""
        self._check_intermediate_indices('prune_intermediate_layers', indices)
        return super().prune_intermediate_layers(indices, prune_norm, prune_head)

    def _check_intermediate_indices(self, method: str, indices) -> None:
        if indices is not None:  # None: every map
            check_out_indices(f'{type(self).__name__}.{method}', indices, len(self.feature_info), 'indices')

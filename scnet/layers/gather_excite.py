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

Tracing and scripting. The size test lives in ``fit_to_extent``, a ``torch.fx.wrap``-ped function (a leaf of
``torch.fx`` graphs, which cannot follow a branch on a map's size) written with integer comparisons only, so
the layer also compiles with TorchScript, ``torch.compile`` and ``torch.export``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from scnet.errors import InvalidArgumentError, SingleValueBatchError
from scnet.layers.scconv import _call_norm_layer, _norm_factory, _positive_int, check_norm_takes_maps

__all__ = ['GatherExcite', 'fit_to_extent']


def fit_to_extent(x: torch.Tensor, extent: int) -> torch.Tensor:
    """``x`` resampled to ``extent x extent`` by adaptive average pooling; ``x`` itself when it has that size."""
    if x.shape[-2] != extent or x.shape[-1] != extent:
        return F.adaptive_avg_pool2d(x, extent)
    return x


# A leaf of torch.fx graphs (fx.wrap acts on this module's globals, where the layer calls it).
torch.fx.wrap('fit_to_extent')


class GatherExcite(nn.Module):
    """Global-extent depthwise gather, BN, sigmoid gate (GE-theta-minus).

    Args:
        channels: number of channels gated.
        extent: spatial size the depthwise gather kernel covers (the map size at the design resolution).
        norm_layer: the norm after the gather, built from a channel count, a timm norm name, or ``None`` for none.
    """

    def __init__(self, channels: int, extent: int, norm_layer=nn.BatchNorm2d, device=None, dtype=None):
        super().__init__()
        channels = _positive_int('channels', channels, 'GatherExcite')
        extent = _positive_int('extent', extent, 'GatherExcite')
        check_norm_takes_maps(norm_layer, channels, 'GatherExcite')
        norm_layer = _norm_factory(norm_layer, 'GatherExcite')
        self.extent = extent
        self.gather = nn.Conv2d(channels, channels, extent, groups=channels, bias=False, device=device,
                                dtype=dtype)
        try:
            self.norm = nn.Identity() if norm_layer is None else _call_norm_layer(
                norm_layer, channels, dict(device=device, dtype=dtype), 'GatherExcite')
        except ValueError as e:  # e.g. GroupNorm's 32 groups on 8 channels
            raise InvalidArgumentError(f'GatherExcite: norm_layer cannot normalise {channels} channels '
                                       f'({str(e).strip() or type(e).__name__}); pass a norm that fits them, e.g. '
                                       'functools.partial(timm.layers.GroupNorm, num_groups=8)') from None
        nn.init.constant_(self.gather.weight, 1.0 / (extent * extent))  # starts as a global average

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            self._check_input(x)
        gate = torch.sigmoid(self.norm(self.gather(fit_to_extent(x, self.extent))))  # (N, C, 1, 1)
        return x * gate

    @torch.jit.unused
    def _check_input(self, x: torch.Tensor) -> None:
        """Clear errors for a map of another channel count than the layer gates (torch's comes from the depthwise
        gather, about its groups) and for one image in training (torch's from the BatchNorm, naming neither the
        layer nor a way out). Not under torch.fx (a Proxy has no shape to check)."""
        if isinstance(x, torch.fx.Proxy) or not isinstance(x, torch.Tensor):
            return
        channels = self.gather.in_channels
        if x.dim() != 4 or x.shape[1] != channels:
            raise InvalidArgumentError(f'GatherExcite expects an input of shape (N, {channels}, H, W) (channels='
                                       f'{channels}), got {tuple(x.shape)}')
        norm = self.norm
        # (the batch size last: an exported or compiled eval-mode network keeps a dynamic batch dimension)
        if isinstance(norm, nn.modules.batchnorm._BatchNorm) and (norm.training or norm.running_mean is None) \
                and x.shape[0] == 1:
            raise SingleValueBatchError(
                'GatherExcite: a batch of 1 image gives the BatchNorm after the gather a single value per channel '
                '(the gather summarises each map in one value), and batch statistics need more: train with batches '
                'of at least 2 images (drop_last=True in the DataLoader keeps a last batch of 1 out), or call '
                'model.eval() to run on one image')

    def extra_repr(self) -> str:
        return f'extent={self.extent}'

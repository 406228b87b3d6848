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
groups=groups, bias=False)``: it takes the same arguments in the same order (so a call written for the plain
convolution swaps by its class name alone; a kernel size other than 3, another padding or a bias is refused,
since SC-Conv's four convolutions are 3x3, padded by their dilation, and bias-free), gives the same input and
output shapes, and for ``in == out`` has the same number of convolution weights. The two normalisation layers
after K2 and K3 are the only additions, as in the authors' networks. The normalisation and activation that
follow K1 and K4 in the authors' bottleneck are *not* part of this module: they are the block's own
``bn2``/``act2`` applied to the concatenated output, which is the same computation because both are per
channel.

Small feature maps. The authors' release pools with a fixed ``r x r`` window and crashes on maps smaller
than ``r``. Here the pooling window is clamped, per dimension, to the map's extent: a map of height
``h < r`` is pooled over its whole height (the calibration context becomes global along that axis).
Maps of at least ``r`` pixels take exactly the authors' floor-mode pooling, so their checkpoints give
their numbers wherever their code runs at all.

Training memory. Written plainly, autograd keeps four half-width maps per layer for backward that a plain
3x3 convolution does not have: K3's output (for its BN), the BN's output and the gate (for the product),
and the product (for K4). With ``memory_efficient=True`` the BN after K3, the gate, the product and K4 run
as one autograd node (``scnet.layers.calibration.CalibratedHalf``) that keeps only K3's output and rebuilds
the rest with element-wise passes in backward; nothing stateful runs twice and no convolution runs again.
It is the default because it keeps SCNet-50's peak training memory close to ResNet-50's, where plain
autograd needs clearly more, for a training step a few percent slower (on the small networks too, where the
memory saved matters less: the embedded recipe turns it off); ``benchmarks/small_networks.py`` measures both
paths on both. ``memory_efficient=False`` keeps all four maps, for a slightly faster step where memory is
plentiful. Whole-stage recomputation, for still less memory at the cost of a second forward pass, is timm's
``model.set_grad_checkpointing()``, which the zoo's networks inherit. Inference is the same either way.

Tracing and scripting. Everything that depends on a map's size lives in ``scnet.layers.calibration``'s
``torch.fx.wrap``-ped functions, so the layer traces with ``torch.fx`` and compiles with TorchScript,
``torch.compile`` and ``torch.export``.
"""
from __future__ import annotations

import numbers
from typing import Callable, Optional, Tuple, Union

import torch
from torch import nn
from torch.nn.modules import module as _module_hooks  # the global hooks of nn.modules.module.register_module_*_hook

from scnet.errors import InvalidArgumentError, InvalidArgumentTypeError, SingleValueBatchError
from scnet.layers.calibration import CalibratedHalf, batch_norm_momentum, calibrated_product, pool_context

__all__ = ['SCConv2d', 'NormLayer']

# Leaves of torch.fx graphs: they branch on map sizes, which symbolic tracing cannot follow. fx.wrap acts on
# the calling module's globals, so it is declared here, where the layer calls them.
torch.fx.wrap('pool_context')
torch.fx.wrap('calibrated_product')

NormLayer = Callable[[int], nn.Module]

_POOLS = ('avg', 'max')
_UPSAMPLES = ('nearest', 'bilinear')


def _positive_int(name: str, value, layer: str = 'SCConv2d') -> int:
    """A positive integer of any integer type (numpy's too, as ``nn.Conv2d`` takes them), as a Python int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InvalidArgumentError(f'{layer}: {name} must be a positive integer, got {value!r}')
    return int(value)


def _conv2d_argument(name: str, value, allowed, why: str):
    """An ``nn.Conv2d`` argument SC-Conv fixes (``kernel_size``, ``padding``, ``bias``, ``padding_mode``): accepted
    where it is the value SC-Conv has, refused with ``why`` otherwise (never silently ignored)."""
    if isinstance(value, (tuple, list)) and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    if not any(type(value) is type(a) and value == a for a in allowed) and not (
            isinstance(value, numbers.Integral) and not isinstance(value, bool)
            and any(type(a) is int and value == a for a in allowed)):
        raise InvalidArgumentError(f'SCConv2d: {name}={value!r} is not possible: {why}')


def _single(name: str, value) -> int:
    """Accept ``v`` or ``(v, v)``; SC-Conv needs the same stride/dilation along both axes."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2 or value[0] != value[1]:
            raise InvalidArgumentError(f'SCConv2d: {name} must be the same along both axes, got {tuple(value)}')
        value = value[0]
    return _positive_int(name, value)


def _flag(name: str, value) -> bool:
    """``True``/``False`` (or 1/0); anything else, e.g. ``identity='no'`` (which ``bool()`` would read as True),
    is an error rather than a silent ``True``."""
    if isinstance(value, bool) or (type(value) is int and value in (0, 1)):
        return bool(value)
    raise InvalidArgumentError(f'SCConv2d: {name} must be True or False, got {value!r}')


def _choice(name: str, value, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise InvalidArgumentError(f'SCConv2d: {name} must be one of {choices}, got {value!r}')
    return value


def _norm_factory(norm_layer, layer: str = 'SCConv2d') -> Optional[NormLayer]:
    """``norm_layer`` as a callable (or None): a timm layer name (``'batchnorm'``, ``'groupnorm'``, ...) is
    resolved as timm's ResNet resolves its own ``norm_layer``, so one string configures a whole zoo model."""
    if isinstance(norm_layer, nn.Module):  # callable too, but a built layer: calling it would normalise an int
        raise InvalidArgumentTypeError(
            f'{layer}: norm_layer must build a norm from a channel count (nn.BatchNorm2d, functools.partial('
            f'timm.layers.GroupNorm, num_groups=8), a timm name such as \'batchnorm\'), not a built layer '
            f'({type(norm_layer).__name__} instance): pass its class, e.g. norm_layer={type(norm_layer).__name__}')
    if norm_layer is None or callable(norm_layer):
        return norm_layer
    if isinstance(norm_layer, str):
        from timm.layers import create_norm, get_norm_layer
        try:
            return get_norm_layer(norm_layer)
        except KeyError:
            names = ', '.join(sorted(getattr(create_norm, '_NORM_MAP', {})))
            raise InvalidArgumentError(
                f'{layer}: unknown norm_layer {norm_layer!r}; pass a callable that builds the norm from a channel '
                f'count (nn.BatchNorm2d, functools.partial(timm.layers.GroupNorm, num_groups=8), ...), None, or one '
                f'of timm\'s names: {names}') from None
    raise InvalidArgumentTypeError(
        f'{layer}: norm_layer must be a callable that builds a norm layer from a channel count (e.g. '
        f'nn.BatchNorm2d), a timm norm name such as \'batchnorm\', or None; got {type(norm_layer).__name__}')


def check_norm_takes_maps(norm_layer, channels: int, layer: str) -> None:
    """Refuse a ``norm_layer`` that builds but cannot normalise ``(N, C, H, W)`` feature maps: one over the last
    dimension (``nn.LayerNorm``, timm's ``'layernorm'``, ``'rmsnorm'``, ``'simplenorm'``) or of 1-D inputs
    (``nn.BatchNorm1d``) builds without complaint and fails only at the first forward pass, with torch's shape
    error naming neither the argument nor the variant over channels to use instead. A fresh instance is run in
    eval mode on a small map of zeros (no layer's statistics change); one that does not build is left to the
    caller, which reports it with the layer's channels."""
    shown = norm_layer
    norm_layer = _norm_factory(norm_layer, layer)
    if norm_layer is None:
        return
    try:
        probe = norm_layer(channels)
    except Exception:  # (reported where the layer builds it: GroupNorm's groups, a missing argument, ...)
        return
    if not isinstance(probe, nn.Module):
        return
    held = next((t for t in (*probe.parameters(), *probe.buffers()) if t.is_floating_point()), None)
    where = {} if held is None else dict(device=held.device, dtype=held.dtype)  # (a norm built on a device)
    try:
        with torch.no_grad():
            probe.eval()(torch.zeros(2, channels, 2, 2, **where))
    except (RuntimeError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InvalidArgumentError(
            f'{layer}: norm_layer={shown!r} does not normalise (N, C, H, W) feature maps ({first}); pass a norm over '
            'the channels of a map: nn.BatchNorm2d, or one of timm\'s names \'batchnorm\', \'groupnorm\', '
            '\'layernorm2d\', \'rmsnorm2d\', \'simplenorm2d\'') from None


def _call_norm_layer(norm_layer: NormLayer, channels: int, dd: dict, layer: str):
    """``norm_layer(channels)``, with ``device``/``dtype`` where it takes them. A factory that cannot be called
    with a channel count alone (``nn.GroupNorm``, whose first argument is the number of groups) is an error that
    says so, instead of torch's "missing 1 required positional argument"."""
    try:
        return norm_layer(channels, **dd)
    except TypeError:  # a norm factory that takes no device/dtype
        pass
    try:
        built = norm_layer(channels)
    except TypeError as e:
        raise InvalidArgumentTypeError(
            f'{layer}: norm_layer({channels}) failed ({e}); norm_layer builds a norm from a channel count alone: '
            'for GroupNorm pass functools.partial(timm.layers.GroupNorm, num_groups=8) or timm\'s name '
            '\'groupnorm\'') from None
    if isinstance(built, nn.Module):
        built = built.to(**{k: v for k, v in dd.items() if v is not None})
    return built


class SCConv2d(nn.Module):
    """Self-calibrated 3x3 convolution, a drop-in for a bias-free 3x3 ``nn.Conv2d``.

    The arguments up to ``padding_mode`` are ``nn.Conv2d``'s, in its order; those SC-Conv fixes are accepted
    where they have its value and refused otherwise, so ``SCConv2d(64, 64, 3, 2, 1, bias=False)`` is
    ``nn.Conv2d(64, 64, 3, 2, 1, bias=False)`` made self-calibrated.

    Args:
        in_channels: input channels; even, and each half divisible by ``groups``.
        out_channels: output channels; even, and each half divisible by ``groups``.
        kernel_size: 3 (every convolution of SC-Conv is 3x3).
        stride: stride of the layer, applied by K1 and K4 (as in the authors' networks).
        padding: ``None`` (the default), the dilation, or ``'same'`` at stride 1: each convolution is padded by
            its dilation (``nn.Conv2d``'s default of 0 is not possible, so give it where a plain call leaves it out).
        dilation: dilation of all four 3x3 convolutions.
        groups: grouped convolution; each half keeps ``groups`` groups (SCNeXt).
        bias: ``False``: SC-Conv has no bias (a norm follows it).
        padding_mode: ``'zeros'``.
        pooling_r: down-sampling rate r of equation 2 (1 = no pooling).
        pool: ``'avg'`` (default) or ``'max'`` pooling for equation 2.
        identity: ``True`` gates with ``sigmoid(X1 + X1')``, ``False`` with ``sigmoid(X1')``.
        upsample: ``'nearest'`` (the authors' released code) or ``'bilinear'`` (the paper's text).
        norm_layer: builds the normalisation after K2 and after K3 from a channel count, or a timm norm name
            (``'batchnorm'``, ``'groupnorm'``, ...); ``None`` for none (for networks without normalisation).
        memory_efficient: in training, keep one half-width map for backward instead of four and rebuild the
            others in backward (see the module doc); no effect on results or in inference.
    """

    def __init__(
            self,
            in_channels: int,
            out_channels: int,
            kernel_size: Union[int, Tuple[int, int]] = 3,
            stride: Union[int, Tuple[int, int]] = 1,
            padding: Union[int, Tuple[int, int], str, None] = None,
            dilation: Union[int, Tuple[int, int]] = 1,
            groups: int = 1,
            bias: bool = False,
            padding_mode: str = 'zeros',
            *,
            pooling_r: int = 4,
            pool: str = 'avg',
            identity: bool = True,
            upsample: str = 'nearest',
            norm_layer: Union[NormLayer, str, None] = nn.BatchNorm2d,
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
        _conv2d_argument('kernel_size', kernel_size, (3,),
                         "SC-Conv's four convolutions are 3x3, so kernel_size is 3; the arguments follow nn.Conv2d's "
                         'order: SCConv2d(in_channels, out_channels, 3, stride), or stride=... by name')
        _conv2d_argument('padding', padding, (None, dilation, 'same') if stride == 1 else (None, dilation),
                         f'each 3x3 convolution is padded by its dilation ({dilation}), so that the output has the '
                         f'size of nn.Conv2d(..., 3, stride={stride}, padding={dilation}, dilation={dilation}); '
                         'leave padding out')
        _conv2d_argument('bias', bias, (False,), 'SC-Conv has no bias, as in the authors\' networks (a norm '
                                                 'follows it); build it with bias=False and let the next layer '
                                                 'carry the shift')
        _conv2d_argument('padding_mode', padding_mode, ('zeros',), "SC-Conv pads with zeros, padding_mode='zeros'")
        pooling_r = _positive_int('pooling_r', pooling_r)
        pool = _choice('pool', pool, _POOLS)
        upsample = _choice('upsample', upsample, _UPSAMPLES)
        identity = _flag('identity', identity)
        memory_efficient = _flag('memory_efficient', memory_efficient)
        given_norm, norm_layer = norm_layer, _norm_factory(norm_layer)
        for name, channels in (('in_channels', in_channels), ('out_channels', out_channels)):
            if channels % 2 or (channels // 2) % groups:
                raise InvalidArgumentError(
                    f'SCConv2d: {name}={channels} must be even and each half ({channels / 2:g}) divisible '
                    f'by groups={groups}; SC-Conv splits the channels in two halves of {groups} groups each')
        check_norm_takes_maps(given_norm, in_channels // 2, 'SCConv2d')

        self.in_channels = in_channels
        self.out_channels = out_channels
        # Conv2d-like attributes, so code that inspects a conv keeps working after the swap.
        self.kernel_size = (3, 3)
        self.stride = (stride, stride)
        self.padding = (dilation, dilation)
        self.dilation = (dilation, dilation)
        self.groups = groups
        self.padding_mode = 'zeros'
        self.register_parameter('bias', None)  # as nn.Conv2d(bias=False) has it
        self.pooling_r = pooling_r
        self.pool = pool
        self.identity = identity
        self.upsample = upsample
        self.memory_efficient = memory_efficient

        half_in, half_out = in_channels // 2, out_channels // 2
        dd = dict(device=device, dtype=dtype)

        def conv3x3(cin: int, cout: int, s: int = 1) -> nn.Conv2d:
            return nn.Conv2d(cin, cout, 3, stride=s, padding=dilation, dilation=dilation, groups=groups,
                             bias=False, **dd)

        def norm(channels: int) -> nn.Module:
            if norm_layer is None:
                return nn.Identity()
            try:
                layer = _call_norm_layer(norm_layer, channels, dd, 'SCConv2d')
            except ValueError as e:  # e.g. GroupNorm's 32 groups on a half of 16 channels
                raise InvalidArgumentError(
                    f'SCConv2d: norm_layer cannot normalise the {channels}-channel half of this {in_channels}-channel '
                    f'layer ({str(e).strip() or type(e).__name__}); SC-Conv normalises its half-width maps after K2 '
                    'and K3: pass a norm that fits them, e.g. functools.partial(timm.layers.GroupNorm, num_groups=8), '
                    'or widen the layer (for a zoo model, larger channels=)') from None
            if not isinstance(layer, nn.Module):
                raise InvalidArgumentTypeError(f'SCConv2d: norm_layer({channels}) must build an nn.Module, got '
                                               f'{type(layer).__name__}')
            return layer

        self.k1 = conv3x3(half_in, half_out, stride)   # path 2: plain conv
        self.k2 = conv3x3(half_in, half_in)            # path 1: on the pooled input (eq. 3)
        self.k2_norm = norm(half_in)
        self.k3 = conv3x3(half_in, half_in)            # path 1: features to calibrate (eq. 4)
        self.k3_norm = norm(half_in)
        self.k4 = conv3x3(half_in, half_out, stride)   # path 1: output transform (eq. 5)

    def reset_parameters(self) -> None:
        """Re-initialise K1..K4 as ``nn.Conv2d.reset_parameters`` does and reset both norms (weights and running
        statistics), in construction order, so ``torch.manual_seed(s)`` gives the weights a new layer built after
        the same seed has. For code written against ``nn.Conv2d`` (re-initialisation, ``to_empty`` after building
        on the meta device)."""
        for module in (self.k1, self.k2, self.k2_norm, self.k3, self.k3_norm, self.k4):
            reset = getattr(module, 'reset_parameters', None)
            if callable(reset):
                reset()

    def _context(self, x1: torch.Tensor) -> torch.Tensor:
        """``K2(Pool_r(X1))`` with its normalisation, at the pooled resolution (equations 2 and 3)."""
        context = x1
        if self.pooling_r > 1:
            context = pool_context(x1, self.pooling_r, self.pool == 'max')
        return self.k2_norm(self.k2(context))

    def calibration_gate(self, x1: torch.Tensor) -> torch.Tensor:
        """``sigmoid(X1 + Up(K2(Pool_r(X1))))``, the gate of equation 4, for the self-calibrated half."""
        return calibrated_product(torch.ones_like(x1), x1, self._context(x1), self.identity, self.upsample)

    @torch.jit.unused
    def _one_map_path(self, features: torch.Tensor, x_calib: torch.Tensor,
                      context: torch.Tensor) -> Optional[torch.Tensor]:
        """BN3, gate, product and K4 as one ``CalibratedHalf`` node when it applies, else ``None``: training-mode
        ``nn.BatchNorm2d`` after K3 (in training mode itself), a plain ``nn.Conv2d`` K4, neither with hooks, and
        autograd on, outside torch.fx, tracing and compilers (they plan memory themselves or cannot run a custom
        autograd node). An empty batch takes the plain path, as ATen's
        batch norm kernels reject empty inputs that ``nn.BatchNorm2d`` handles itself."""
        bn, k4 = self.k3_norm, self.k4
        # bn.training too: a BatchNorm put in eval mode alone (frozen statistics for fine-tuning, in a network
        # otherwise training) normalises with its running statistics, which the node (batch statistics) does not
        if not (self.memory_efficient and self.training and torch.is_grad_enabled()
                and type(bn) is nn.BatchNorm2d and bn.training and bn.track_running_stats
                and type(k4) is nn.Conv2d and k4.padding_mode == 'zeros'  # a subclass's forward is its own
                and not _has_hooks(bn) and not _has_hooks(k4)
                and not torch.compiler.is_compiling() and not torch.jit.is_tracing() and not _fx_tracing()
                and features.numel() > 0):
            return None
        return CalibratedHalf.apply(
            features, x_calib, context, bn.weight, bn.bias, bn.running_mean, bn.running_var,
            batch_norm_momentum(bn), bn.eps, k4.weight, k4.bias, k4.stride, k4.padding, k4.dilation, k4.groups,
            self.identity, self.upsample)

    @torch.jit.unused
    def _check_input(self, x: torch.Tensor) -> None:
        """A clear error for an input the layer cannot take, instead of one from a half-width convolution deep
        inside (which would count half the channels). Not under torch.fx (a Proxy has no shape to check)."""
        if isinstance(x, torch.fx.Proxy):
            return
        if not isinstance(x, torch.Tensor):
            raise InvalidArgumentTypeError(f'SCConv2d takes a tensor of shape (N, C, H, W), got '
                                           f'{type(x).__name__}; convert it first, e.g. torch.as_tensor(x)')
        if x.dim() != 4:
            hint = ('; for one unbatched (C, H, W) image add the batch dimension: layer(x.unsqueeze(0))'
                    if x.dim() == 3 else '')
            raise InvalidArgumentError(f'SCConv2d expects a 4-D input of shape (N, C, H, W), got a {x.dim()}-D '
                                       f'input of shape {tuple(x.shape)}{hint}')
        if x.shape[1] != self.in_channels:
            raise InvalidArgumentError(f'SCConv2d expects an input of shape (N, {self.in_channels}, H, W) '
                                       f'(in_channels={self.in_channels}), got {tuple(x.shape)}')
        norm = self.k2_norm
        if isinstance(norm, nn.modules.batchnorm._BatchNorm) and (norm.training or norm.running_mean is None):
            # batch statistics of one value per channel: torch's own error would name neither the layer nor a way out
            n, h, w = x.shape[0], x.shape[2], x.shape[3]
            pooled_h, pooled_w = (h // min(self.pooling_r, h), w // min(self.pooling_r, w)) if h and w else (h, w)
            if n * pooled_h * pooled_w == 1:
                raise SingleValueBatchError(
                    f'SCConv2d: a batch of 1 image of {h}x{w} gives the BatchNorm after K2 a single value per '
                    f'channel (the context pooled by pooling_r={self.pooling_r} is 1x1), and batch statistics need '
                    'more: train with batches of at least 2 images (drop_last=True in the DataLoader keeps a last '
                    'batch of 1 out), or call model.eval() to run on one image')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            self._check_input(x)
        # split, not two slices: one gradient concatenation in backward; the Tensor method, not torch.split,
        # whose Python wrapper is host time at every call
        half = self.in_channels // 2
        halves = x.split_with_sizes([half, half], 1)
        x_plain, x_calib = halves[0], halves[1]
        y_plain = self.k1(x_plain)
        context = self._context(x_calib)
        features = self.k3(x_calib)
        y_calib: Optional[torch.Tensor] = None
        if not torch.jit.is_scripting():
            y_calib = self._one_map_path(features, x_calib, context)
        if y_calib is None:
            y_calib = self.k4(calibrated_product(self.k3_norm(features), x_calib, context, self.identity,
                                                 self.upsample))
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


_HOOK_DICTS = ('_forward_pre_hooks', '_forward_hooks', '_backward_pre_hooks', '_backward_hooks')


def has_own_hooks(module: nn.Module) -> bool:
    """True when ``module`` has hooks of its own (``torch.nn.utils.prune``'s masks, the classic ``spectral_norm``
    and ``weight_norm``, feature captures): what replacing or folding it (``scnet.convert``, ``scnet.deploy``)
    would drop or show other values."""
    return any(getattr(module, name, None) for name in _HOOK_DICTS)


def _has_hooks(module: nn.Module) -> bool:
    """True when calling ``module`` would run hooks, its own or every module's: the one-map node calls the
    kernels of K3's norm and K4 directly, without those hooks, so such layers take the plain path."""
    return has_own_hooks(module) or any(getattr(_module_hooks, f'_global{name}', None) for name in _HOOK_DICTS)


def _fx_tracing() -> bool:
    """True while ``torch.fx`` traces symbolically (a Python value there, so not under TorchScript)."""
    from torch.fx._symbolic_trace import is_fx_symbolic_tracing  # not re-exported by torch.fx
    return is_fx_symbolic_tracing()

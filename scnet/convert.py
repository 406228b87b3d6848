"""``scnet.convert(model)``: try SC-Conv on any CNN in one line.

Every 3x3 ``nn.Conv2d`` that an ``SCConv2d`` can stand in for, with the same input and output shapes, is
replaced in place; every other 3x3 conv is left alone and the report says why. New layers are freshly
initialised (He-normal, as torchvision and timm initialise ResNets): the calibration branch has no
counterpart in a plain conv, so copying weights would not preserve the function anyway; convert, then train
or fine-tune.
"""
from __future__ import annotations

import inspect
import json
import warnings
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, Iterator, List, Optional, Tuple, Union

import torch
from torch import nn

from scnet.errors import InvalidArgumentError, InvalidArgumentTypeError
from scnet.layers.scconv import SCConv2d, has_own_hooks
from scnet.name_patterns import as_patterns, matches_any

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
    aliases: List[str] = field(default_factory=list)  # other names of the same (shared) conv, replaced too


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
                  + (f' (also {", ".join(c.aliases)})' if c.aliases else '') for c in self.converted]
        lines += [f'  - {s.name}: {s.reason}' for s in self.skipped]
        return '\n'.join(lines)


def _why_not(conv: nn.Conv2d) -> Optional[str]:
    """None if ``conv`` can become an SCConv2d of the same shape, else the reason it cannot."""
    if type(conv) is not nn.Conv2d:
        return f'{type(conv).__name__} is a Conv2d subclass with its own behaviour'
    if has_own_hooks(conv):
        return ('has hooks (a torch.nn.utils.prune mask, spectral_norm or weight_norm, a capture), which the new '
                'layer would not have: make them permanent first (prune.remove, remove_spectral_norm, '
                'remove_weight_norm) or remove them, then convert')
    if conv.padding_mode != 'zeros':
        return f'padding_mode={conv.padding_mode!r} (SC-Conv pads with zeros)'
    if conv.bias is not None:
        return 'has a bias (SC-Conv is bias-free, to be followed by a norm layer)'
    if conv.stride[0] != conv.stride[1] or conv.dilation[0] != conv.dilation[1]:
        return f'stride {conv.stride} / dilation {conv.dilation} differ between axes'
    same = conv.padding == 'same' and conv.stride == (1, 1)  # a 3x3 kernel's 'same' pads by the dilation
    if conv.padding != conv.dilation and not same:
        return f'padding {conv.padding} != dilation {conv.dilation} (output size would change)'
    g = conv.groups
    for what, c in (('input', conv.in_channels), ('output', conv.out_channels)):
        if c % 2 or (c // 2) % g:
            return f'{c} {what} channels cannot be split into two halves of {g} group(s) each'
    return None


#: Arguments of ``SCConv2d`` that ``convert`` takes from each convolution it replaces (one value passed to
#: ``convert`` would apply to every layer and change its shape).
PER_CONV_ARGUMENTS = ('in_channels', 'out_channels', 'kernel_size', 'stride', 'padding', 'dilation', 'groups', 'bias',
                      'padding_mode', 'device', 'dtype')

#: Options of ``SCConv2d`` that ``convert`` passes on to every new layer: the rest of its signature.
SC_OPTIONS = tuple(p for p in inspect.signature(SCConv2d).parameters if p not in PER_CONV_ARGUMENTS)

ALREADY_SC = 'already an SCConv2d (converted before, or built as one)'


def _check_model(model) -> None:
    """``model`` must be an eager ``nn.Module``: a TorchScript module's forward is compiled code that keeps
    calling its old convolutions whatever attributes are replaced, so converting one would change nothing."""
    if isinstance(model, torch.jit.ScriptModule):
        raise InvalidArgumentTypeError(
            'convert: a TorchScript module (torch.jit.script / torch.jit.trace output) cannot be converted, its '
            'forward is compiled code; convert the nn.Module first, then script it: '
            'scnet.convert(model); torch.jit.script(model)')
    if not isinstance(model, nn.Module):
        hint = (f"; to convert a model by name, build it first: scnet.convert(timm.create_model({model!r}))"
                if isinstance(model, str) else '')
        raise InvalidArgumentTypeError(
            f'convert takes an nn.Module (your network, a torchvision or timm model), got {type(model).__name__}{hint}')


def _check_options(options: dict) -> None:
    per_conv = [k for k in options if k in PER_CONV_ARGUMENTS]
    if per_conv:
        raise InvalidArgumentTypeError(
            f'convert takes {", ".join(per_conv)} from each convolution it replaces (every SCConv2d keeps the shape '
            f'of the conv it replaces), so it accepts no {"/".join(per_conv)} argument; to change them, change the '
            'convolutions of the network, or build SCConv2d(...) layers yourself')
    unknown = [k for k in options if k not in SC_OPTIONS]
    if unknown:
        raise InvalidArgumentTypeError(f'convert: unknown option(s) {", ".join(unknown)}; the SCConv2d options it '
                                       f'takes: {", ".join(SC_OPTIONS)}')


def _reachable(module: nn.Module, prefix: str = '') -> Iterator[Tuple[str, nn.Module]]:
    """Every (name, submodule), a module shared under several names once per name (``named_modules`` lists
    it once, so the other names would keep the old conv). ``SCConv2d`` and TorchScript modules are listed but not
    entered: an SCConv2d's K1..K4 are part of it (converting them again would nest SC-Convs), and a scripted
    module's convolutions cannot be replaced."""
    for child_name, child in module._modules.items():
        if child is None:
            continue
        name = f'{prefix}.{child_name}' if prefix else child_name
        yield name, child
        if not isinstance(child, (SCConv2d, torch.jit.ScriptModule)):
            yield from _reachable(child, name)


def _scripted_convs(module: torch.jit.ScriptModule) -> bool:
    return any(getattr(m, 'original_name', None) == 'Conv2d' for m in module.modules())


def convert(model: nn.Module, *, exclude: Union[str, Iterable[str]] = (), **sc_options) -> ConversionReport:
    """Replace, in place, every eligible 3x3 ``nn.Conv2d`` of ``model`` by an ``SCConv2d`` of the same shape.

    Args:
        model: any eager ``nn.Module`` (your network, a torchvision or timm model); not a TorchScript module
            (convert first, then script).
        exclude: a shell pattern of module names to leave alone, or a list of them, e.g. ``'layer4.*'``.
        **sc_options: ``SCConv2d`` options (``pooling_r``, ``pool``, ``identity``, ``upsample``,
            ``norm_layer``, ``memory_efficient``). Shape arguments (``stride``, ``groups``, ...) come from
            each convolution.

    Returns:
        A ``ConversionReport`` listing the converted layers and the skipped 3x3 convs with their reasons.
        Eligible convs have an even number of input and output channels divisible in halves by their
        groups, zero padding equal to their dilation, no bias, and equal stride along both axes.

    Converting twice changes nothing the second time: existing ``SCConv2d`` layers are reported as skipped,
    never entered. A conv reachable under several names (shared) becomes one ``SCConv2d`` under all of them.
    Every new layer is built before the first is put in place, so an option a layer rejects leaves the model
    unchanged.
    """
    _check_model(model)
    patterns = as_patterns(exclude, lambda bad: InvalidArgumentTypeError(
        f'convert: exclude takes a shell pattern of module names or a list of them, e.g. exclude=\'layer4.*\', '
        f'got {bad!r}'))
    _check_options(sc_options)
    report = ConversionReport()
    if isinstance(model, SCConv2d):
        report.skipped.append(SkippedLayer('', ALREADY_SC))
        return report
    if isinstance(model, nn.Conv2d) and model.kernel_size == (3, 3):
        report.skipped.append(SkippedLayer('', 'the model itself is this conv: wrap it in a module to convert it'))
        return report

    names: Dict[int, List[str]] = {}  # id -> every name of the module, in the order named_modules lists them
    modules: Dict[int, nn.Module] = {}
    for name, module in _reachable(model):
        names.setdefault(id(module), []).append(name)
        modules[id(module)] = module
    every_name = [n for ns in names.values() for n in ns]
    unmatched = [p for p in patterns if not any(matches_any(n, (p,)) for n in every_name)]
    if unmatched:  # a typo would leave the layers it meant converted
        shown = ', '.join(n for n in every_name if n and '.' not in n)
        raise InvalidArgumentError(f'convert: exclude pattern(s) {", ".join(map(repr, unmatched))} match no module '
                                   f'of the model (its top-level modules: {shown or "none"}); nothing was changed')

    replacements = []
    for key, conv in modules.items():
        first = names[key][0]
        if isinstance(conv, SCConv2d):
            report.skipped.append(SkippedLayer(first, ALREADY_SC))
            continue
        if isinstance(conv, torch.jit.ScriptModule):
            if _scripted_convs(conv):
                report.skipped.append(SkippedLayer(first, 'a TorchScript module: its convolutions cannot be '
                                                          'replaced (convert before scripting)'))
            continue
        if not isinstance(conv, nn.Conv2d) or conv.kernel_size != (3, 3):
            continue
        reason = _why_not(conv)
        if reason is None and any(matches_any(n, patterns) for n in names[key]):
            reason = 'excluded by pattern'
        if reason:
            report.skipped.append(SkippedLayer(first, reason))
            continue
        sc = SCConv2d(conv.in_channels, conv.out_channels, stride=conv.stride[0], dilation=conv.dilation[0],
                      groups=conv.groups, device=conv.weight.device, dtype=conv.weight.dtype, **sc_options)
        sc.train(conv.training)
        if conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous():
            sc.to(memory_format=torch.channels_last)
        for k in (sc.k1, sc.k2, sc.k3, sc.k4):
            nn.init.kaiming_normal_(k.weight, mode='fan_out', nonlinearity='relu')
        replacements.append((names[key], sc))
        report.converted.append(ConvertedLayer(
            first, conv.in_channels, conv.out_channels, conv.stride[0], conv.dilation[0], conv.groups,
            params_before=sum(p.numel() for p in conv.parameters()),
            params_after=sum(p.numel() for p in sc.parameters()), aliases=names[key][1:]))
    for all_names, sc in replacements:
        for name in all_names:
            parent_name, _, child = name.rpartition('.')
            setattr(model.get_submodule(parent_name) if parent_name else model, child, sc)
    if not report.converted and not report.skipped:
        warnings.warn(f'convert found no 3x3 convolution in {type(model).__name__}: nothing to convert', stacklevel=2)
    return report

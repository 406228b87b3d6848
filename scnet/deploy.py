"""``scnet.deploy(model)``: an inference copy of a network with its BatchNorms folded into its convolutions.

Why: in eval mode a BatchNorm that directly follows a convolution is a per-channel affine map, so it can be
folded into the convolution's weights and bias (``torch.nn.utils.fusion.fuse_conv_bn_weights`` does the
arithmetic). The network then computes the same function with one pass over memory less per layer, and
channels-last weights and ``torch.compile`` add to the gain on CPU.

SCConv2d needs one rule more than a plain ResNet: the block's ``bn2`` acts per channel on
``cat([K1(x_plain), K4(...)])``, so its first half folds into K1 and its second half into K4, which gain a
bias. Inside the layer, K2 and K3 fold into their own norms ``k2_norm`` and ``k3_norm``.

How pairs are found, in three steps, each a guard on the one before:

1. *Structure proposes.* Walking the module tree: in an ``nn.Sequential``, a conv immediately followed by a
   BatchNorm (timm's downsample branches, deep stems); in any module, children ``convN`` and ``bnN``
   with the same suffix N (timm and torchvision ResNet blocks and stems; a deep stem's ``conv1`` is a
   Sequential whose last conv takes ``bn1``); inside ``SCConv2d`` K2/K3 and their norms; inside
   ``GatherExcite`` the gather conv and its norm. A BatchNorm is a ``BatchNorm2d``, a ``SyncBatchNorm`` or a
   frozen one of torchvision or timm (detection backbones): in eval mode each is the same affine map. A "conv" is an exact ``nn.Conv2d`` (subclasses such as
   weight-standardised convs transform their weights in ``forward``) or an exact ``SCConv2d``.
2. *A probe confirms.* Module names say nothing about ``forward``: a block may also add the conv's output
   elsewhere, and then folding its BN would change that other use. One probe forward pass of the unfolded
   copy records, with a ``TorchFunctionMode``, every operation that reads each proposed conv's output; a
   pair is folded only if the conv and the BN each ran exactly once and the BN's ``batch_norm`` was the only
   reader of that output (and it is not a network output). A pair with hooks on the norm or the conv stays
   too (folded, the norm's hooks would see an identity and the conv's other values). Everything else stays,
   with the reason, in the report.
3. *The result is checked.* The final module (folded, channels-last, compiled) is run on the same probe
   and must agree with the eval-mode original to ``tolerance`` times the output scale; otherwise
   ``DeployError`` names the difference. No network leaves ``deploy`` computing something else.

The caller's model is never modified nor run: ``deploy`` works on a deep copy.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import json
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from scnet.errors import ScnetError
from scnet.layers.gather_excite import GatherExcite
from scnet.layers.scconv import SCConv2d, has_own_hooks

__all__ = ['deploy', 'DeployedModel', 'DeployReport', 'FoldedBN', 'UnfoldedBN', 'DeployError', 'compile_headroom']

#: Probe resolution for models without a ``pretrained_cfg`` / ``default_cfg`` input size.
DEFAULT_PROBE_SIZE = (3, 64, 64)


class DeployError(ScnetError, RuntimeError):
    """The deployed copy does not compute what the original computes, or the model cannot be probed.

    ``report`` is the ``DeployReport`` so far (what was folded, and the difference), or None. ``failed_probe`` is
    ``(shape, detail)`` where the model itself failed on the probe input, so that a caller that made the input
    (``scnet export``, from its flags) can name its own way out.
    """

    def __init__(self, message: str, report: Optional['DeployReport'] = None, *,
                 failed_probe: Optional[Tuple[Tuple[int, ...], str]] = None) -> None:
        super().__init__(message)
        self.report = report
        self.failed_probe = failed_probe


@dataclass
class FoldedBN:
    """A BatchNorm folded away: ``bn`` now an ``nn.Identity``, its affine map in the weights of ``conv``."""

    bn: str
    conv: str
    rule: str


@dataclass
class UnfoldedBN:
    """A BatchNorm left in the network, and why."""

    name: str
    reason: str


@dataclass
class DeployReport:
    """What ``deploy`` did: folded and unfolded BatchNorms, and the check of the result on the probe input.

    ``str(report)`` is a readable summary, ``to_dict()`` a JSON-ready one.
    """

    folded: List[FoldedBN] = field(default_factory=list)
    unfolded: List[UnfoldedBN] = field(default_factory=list)
    probe_shape: Tuple[int, ...] = ()
    max_abs_diff: float = 0.0
    tolerance: float = 0.0
    channels_last: bool = False
    compiled: bool = False

    @property
    def folded_count(self) -> int:
        return len(self.folded)

    def to_dict(self) -> Dict[str, Any]:
        return {'folded_count': self.folded_count, 'unfolded_count': len(self.unfolded),
                'folded': [asdict(f) for f in self.folded], 'unfolded': [asdict(u) for u in self.unfolded],
                'probe_shape': list(self.probe_shape), 'max_abs_diff': self.max_abs_diff,
                'tolerance': self.tolerance, 'channels_last': self.channels_last, 'compiled': self.compiled}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def __str__(self) -> str:
        extras = [name for name, on in (('channels-last', self.channels_last), ('compiled', self.compiled)) if on]
        lines = [f'folded {self.folded_count} BatchNorm(s), left {len(self.unfolded)}; max abs diff '
                 f'{self.max_abs_diff:.3g} (tolerance {self.tolerance:.3g}) on a {tuple(self.probe_shape)} probe'
                 + (f'; {", ".join(extras)}' if extras else '')]
        lines += [f'  - {u.name}: {u.reason}' for u in self.unfolded]
        return '\n'.join(lines)


@contextlib.contextmanager
def compile_headroom():
    """Room for many compiled entries of one function while inside (Dynamo's recompile limits raised).

    Networks of one family share code objects (every timm ResNet's ``forward``), and each network, input
    shape and grad mode is one more compiled entry of that one function. Past Dynamo's recompile limit it
    silently runs the function eagerly: a process that compiles a few networks would then serve
    some of them uncompiled, and a benchmark would time an eager network as a compiled one.
    """
    import torch._dynamo
    with torch._dynamo.config.patch(recompile_limit=256, accumulated_recompile_limit=4096):
        yield


class DeployedModel(nn.Module):
    """The inference network ``deploy`` returns: the folded ``module``, run without autograd.

    * ``module``: the folded network itself (an ordinary module of the original's class, eval mode, no
      parameter requires grad); this is what to export or save.
    * ``report``: the ``DeployReport``.
    * Calling it takes ordinary NCHW tensors: with ``channels_last`` a 4-d input is converted before the
      network sees it, and with ``compile`` the call goes through the ``torch.compile``-d network.
    * Compiled on the CPU, each call runs under ``torch._inductor.config.patch(freezing=True)``: the
      compilations it may trigger (the first, and one per new input shape, as shapes are static) then freeze
      the weights into the graph (oneDNN-prepacked convolutions), and the global inductor config is the same
      after the call as before. (``torch.compile(options={'freezing': True})`` does not reach the check that
      enables freezing: its convolutions stay plain ``aten`` calls.) The call also runs
      under ``compile_headroom()``.
    * Attributes it does not have itself (``fc``, ``pretrained_cfg``, ``forward_features``, ...) are the
      folded network's.
    * It stays in eval mode: ``train()`` is a no-op, since a folded network cannot be trained as the original.
    """

    def __init__(self, module: nn.Module, report: DeployReport, compiled: Optional[nn.Module] = None,
                 inductor_config: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        self.module = module
        self.report = report
        # Not a registered submodule: the compiled wrapper shares the folded module's weights, and
        # registering it would list every tensor twice in state_dict().
        object.__setattr__(self, '_compiled', compiled)
        self._inductor_config = dict(inductor_config or {})
        super().train(False)

    def forward(self, x: torch.Tensor, *args, **kwargs):
        if isinstance(x, torch.Tensor) and x.dim() == 3 and len(self.report.probe_shape) == 4:
            # an unbatched image: a plain first convolution would take it, and the first layer that cannot would
            # report its own input's shape, not the caller's
            raise DeployError(f'the deployed network takes batches of shape (N, C, H, W), as its probe '
                              f'{tuple(self.report.probe_shape)}, got an input of shape {tuple(x.shape)}; for one '
                              f'image add the batch dimension: deployed(x.unsqueeze(0))')
        with torch.no_grad():  # also what lets inductor's freezing apply to a compiled network
            if self.report.channels_last and isinstance(x, torch.Tensor) and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            if self._compiled is None:
                return self.module(x, *args, **kwargs)
            import torch._inductor.config as inductor_config

            with inductor_config.patch(self._inductor_config), compile_headroom():  # scoped to this call
                return self._compiled(x, *args, **kwargs)

    def train(self, mode: bool = True) -> 'DeployedModel':
        return super().train(False)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            # read through __dict__: while copying or unpickling, even _modules may not exist yet
            module = self.__dict__.get('_modules', {}).get('module')
            if module is None or name.startswith('__'):
                raise
            return getattr(module, name)


# ---------------------------------------------------------------------------------------------- step 1


@dataclass
class _Candidate:
    bn: str            # name of the BatchNorm
    producer: str      # name of the module whose output the BN must consume alone
    targets: List[Tuple[str, slice]]  # convs that receive the BN's channels (name, channel slice)
    rule: str


def _is_conv(module: nn.Module) -> bool:
    return type(module) is nn.Conv2d or type(module) is SCConv2d


def _last_conv(module: nn.Module, name: str) -> Optional[Tuple[nn.Module, str]]:
    """``module`` itself if it is a conv, or the last child of a Sequential that is (a deep stem)."""
    if _is_conv(module):
        return module, name
    if isinstance(module, nn.Sequential) and len(module) and _is_conv(module[-1]):
        return module[-1], f'{name}.{len(module) - 1}'
    return None


def _join(prefix: str, name: str) -> str:
    return f'{prefix}.{name}' if prefix else name


def _candidate(bn: str, conv: nn.Module, conv_name: str, rule: str) -> _Candidate:
    if type(conv) is SCConv2d:
        half = conv.out_channels // 2
        return _Candidate(bn, conv_name, [(f'{conv_name}.k1', slice(0, half)),
                                          (f'{conv_name}.k4', slice(half, 2 * half))], rule + ' (SCConv2d halves)')
    return _Candidate(bn, conv_name, [(conv_name, slice(None))], rule)


def _propose(model: nn.Module) -> Dict[str, _Candidate]:
    """Step 1: the (BN, conv) pairs the module tree suggests, keyed by the BN's name."""
    found: Dict[str, _Candidate] = {}

    def add(c: _Candidate) -> None:
        found.setdefault(c.bn, c)

    for prefix, module in model.named_modules():
        children = dict(module.named_children())
        if type(module) is SCConv2d:
            for k in ('k2', 'k3'):
                add(_Candidate(_join(prefix, f'{k}_norm'), _join(prefix, k), [(_join(prefix, k), slice(None))],
                               'SCConv2d k2/k3'))
        if type(module) is GatherExcite:
            add(_Candidate(_join(prefix, 'norm'), _join(prefix, 'gather'), [(_join(prefix, 'gather'), slice(None))],
                           'GatherExcite gather'))
        if isinstance(module, nn.Sequential):
            names = list(children)
            for before, after in zip(names, names[1:]):
                if _is_conv(children[before]) and _is_foldable_norm(children[after]):
                    add(_candidate(_join(prefix, after), children[before], _join(prefix, before), 'Sequential'))
        for name, child in children.items():
            match = re.fullmatch(r'conv(.*)', name)
            bn = children.get(f'bn{match.group(1)}') if match else None
            if bn is not None and _is_foldable_norm(bn):
                conv = _last_conv(child, _join(prefix, name))
                if conv is not None:
                    suffix = match.group(1)
                    add(_candidate(_join(prefix, f'bn{suffix}'), *conv, f'conv{suffix}/bn{suffix}'))
    return found


@functools.lru_cache(maxsize=None)
def _foldable_types() -> Tuple[type, ...]:
    """The norms that, in eval mode, are nothing but the affine map of their running statistics:
    ``BatchNorm2d``, ``SyncBatchNorm`` (a network converted for DDP training) and the ``FrozenBatchNorm2d`` of
    torchvision and timm (detection backbones, ``timm.layers.freeze_batch_norm_2d``)."""
    from timm.layers.norm_act import FrozenBatchNorm2d as TimmFrozen
    from torchvision.ops.misc import FrozenBatchNorm2d

    return nn.BatchNorm2d, nn.SyncBatchNorm, FrozenBatchNorm2d, TimmFrozen


def _is_foldable_norm(module: nn.Module) -> bool:
    return type(module) in _foldable_types()


def _is_batch_norm(module: nn.Module) -> bool:
    """Any batch norm the report must account for, folded or not (subclasses such as timm's BatchNormAct2d,
    frozen ones)."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm) or type(module) in _foldable_types() or \
        'BatchNorm' in type(module).__name__


def _bn_problem(bn: nn.Module) -> Optional[str]:
    """Why a BatchNorm cannot be folded whatever feeds it, or None."""
    if not _is_foldable_norm(bn):
        return f'{type(bn).__name__} is not a plain BatchNorm2d (it may do more than normalise)'
    if bn.running_mean is None or bn.running_var is None:
        return 'no running statistics (track_running_stats=False): it normalises with batch statistics'
    return None


def _hook_problem(modules: Dict[str, nn.Module], candidate: '_Candidate') -> Optional[str]:
    """Why a fold would change what hooks see, or None: a hook on the BatchNorm would no longer run (the norm
    becomes an identity), and one on the convolution that takes the norm's affine map would see other values
    (a capture, a pruning mask, a hook that edits the output)."""
    names = dict.fromkeys([candidate.bn, candidate.producer, *(t for t, _ in candidate.targets)])
    hooked = [n for n in names if n in modules and has_own_hooks(modules[n])]
    if not hooked:
        return None
    return (f'{", ".join(hooked)} {"has" if len(hooked) == 1 else "have"} hooks, which folding would skip or show '
            'other values; remove the hooks to fold it')


# ---------------------------------------------------------------------------------------------- step 2

#: Tensor reads that look at metadata only, not at the values (``x.shape``, ``x.size()``, ...).
_METADATA = {'size', 'dim', 'numel', 'nelement', 'ndimension', 'stride', 'is_contiguous', 'data_ptr',
             'element_size', 'is_floating_point', 'is_complex', 'get_device', '__len__'}
_METADATA_ATTRS = {'shape', 'dtype', 'device', 'ndim', 'layout', 'requires_grad', 'is_cuda', 'is_cpu',
                   'is_meta', 'is_sparse', 'is_quantized', 'is_mkldnn', 'is_nested', 'names', 'grad_fn',
                   'is_leaf', 'output_nr', '_version'}


def _reads_values(func) -> bool:
    name = getattr(func, '__name__', '')
    if name == '__get__':
        return getattr(getattr(func, '__self__', None), '__name__', None) not in _METADATA_ATTRS
    return name not in _METADATA


class _Readers(TorchFunctionMode):
    """Records, for every watched tensor, the torch functions that read its values, each with the candidate
    BN whose ``forward`` was running then (None: none was): a BN reads its input with ``batch_norm``, a
    frozen one with element-wise arithmetic, and either way the read belongs to the BN."""

    def __init__(self) -> None:
        super().__init__()
        self.watched: Dict[int, str] = {}
        self.keep: List[torch.Tensor] = []  # holds watched tensors alive, so their ids stay theirs
        self.readers: Dict[str, List[Tuple[str, Optional[str]]]] = defaultdict(list)
        self.inside: List[str] = []         # the candidate BNs whose forward is running, innermost last

    def watch(self, tensor: torch.Tensor, producer: str) -> None:
        self.watched[id(tensor)] = producer
        self.keep.append(tensor)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.watched and _reads_values(func):
            for leaf in tree_leaves((args, kwargs)):
                producer = self.watched.get(id(leaf)) if isinstance(leaf, torch.Tensor) else None
                if producer is not None:
                    self.readers[producer].append((getattr(func, '__name__', str(func)),
                                                   self.inside[-1] if self.inside else None))
        return func(*args, **kwargs)


def _probe(model: nn.Module, candidates: Dict[str, _Candidate], x: torch.Tensor) -> Tuple[Any, Dict[str, str]]:
    """Step 2: run ``model`` once on ``x``; returns its output and, per candidate BN, why it must stay."""
    modules = dict(model.named_modules())
    readers = _Readers()
    calls: Dict[str, int] = defaultdict(int)
    outputs: Dict[str, int] = {}
    bn_inputs: Dict[str, int] = {}
    handles = []

    def after(name):
        def hook(_module, _inputs, output):
            calls[name] += 1
            if isinstance(output, torch.Tensor):
                outputs[name] = id(output)
                readers.watch(output, name)
        return hook

    def before(name):
        def hook(_module, inputs):
            calls[name] += 1
            readers.inside.append(name)
            if inputs and isinstance(inputs[0], torch.Tensor):
                bn_inputs[name] = id(inputs[0])
        return hook

    def bn_done(_module, _inputs, _output):
        readers.inside.pop()

    try:
        for c in candidates.values():
            handles.append(modules[c.producer].register_forward_hook(after(c.producer)))
            handles.append(modules[c.bn].register_forward_pre_hook(before(c.bn)))
            handles.append(modules[c.bn].register_forward_hook(bn_done))
        with torch.no_grad(), readers:
            out = model(x)
    finally:
        for h in handles:
            h.remove()
    returned = {id(t) for t in tree_leaves(out) if isinstance(t, torch.Tensor)}
    problems: Dict[str, str] = {}
    for c in candidates.values():
        if calls[c.producer] != 1 or calls[c.bn] != 1:
            problems[c.bn] = (f'{c.producer} ran {calls[c.producer]} time(s) and the BN {calls[c.bn]} time(s) in '
                              'one forward pass; folding needs exactly one of each')
        elif bn_inputs.get(c.bn) != outputs.get(c.producer):
            problems[c.bn] = f'its input is not the output of {c.producer}'
        elif any(inside != c.bn for _, inside in readers.readers[c.producer]) or outputs[c.producer] in returned:
            others = [f for f, inside in readers.readers[c.producer] if inside != c.bn] or ['the network output']
            problems[c.bn] = f'the output of {c.producer} is also used elsewhere ({", ".join(others)})'
    return out, problems


# ---------------------------------------------------------------------------------------------- folding


def _fold(model: nn.Module, candidate: _Candidate) -> None:
    """Fold the BN's affine map into the target conv(s) and put an ``nn.Identity`` in the BN's place."""
    bn = model.get_submodule(candidate.bn)
    for conv_name, channels in candidate.targets:
        conv = model.get_submodule(conv_name)
        dtype = conv.weight.dtype
        # float64 arithmetic, one rounding to the conv's dtype at the end
        f64 = lambda t: None if t is None else t.detach()[channels].double()  # noqa: E731
        weight, bias = fuse_conv_bn_weights(
            conv.weight.detach().double(), None if conv.bias is None else conv.bias.detach().double(),
            f64(bn.running_mean), f64(bn.running_var), bn.eps, f64(bn.weight), f64(bn.bias))
        conv.weight = nn.Parameter(weight.detach().to(dtype), requires_grad=False)
        conv.bias = nn.Parameter(bias.detach().to(dtype), requires_grad=False)
    parent, _, child = candidate.bn.rpartition('.')
    setattr(model.get_submodule(parent), child, nn.Identity())


# ---------------------------------------------------------------------------------------------- step 3


def _probe_input(model: nn.Module, example_input: Optional[torch.Tensor]) -> torch.Tensor:
    first = next(iter(model.parameters()), None)
    if first is not None and first.is_meta:
        raise DeployError('the model is on the meta device (shapes only, no weights): load or initialise its '
                          'weights, e.g. model.to_empty(device="cpu") and load a checkpoint, then deploy')
    if example_input is not None:
        if not isinstance(example_input, torch.Tensor):
            raise DeployError(f'example_input must be a tensor, got {type(example_input).__name__}')
        if example_input.numel() == 0:  # nothing to compare: any folded copy would pass the check
            raise DeployError(f'example_input is empty (shape {tuple(example_input.shape)}), so the folded copy could '
                              'not be checked against the original; pass a batch of at least one input like the '
                              'ones the network will see, e.g. torch.randn(1, 3, 224, 224)')
        return example_input
    cfg = getattr(model, 'pretrained_cfg', None) or getattr(model, 'default_cfg', None) or {}
    size = tuple(cfg.get('input_size') or DEFAULT_PROBE_SIZE) if isinstance(cfg, dict) else DEFAULT_PROBE_SIZE
    # the config describes the published weights (3 channels); a network built with timm's in_chans reads its own
    size = (int(getattr(model, 'in_chans', size[0])), *size[1:])
    generator = torch.Generator().manual_seed(0)  # a fixed probe, without touching the global RNG
    x = torch.randn((2, *size), generator=generator)
    return x.to(device=first.device, dtype=first.dtype) if first is not None else x


def _max_abs_diff(expected: Any, actual: Any) -> Tuple[float, float]:
    """Largest absolute difference over all output tensors, and the largest absolute expected value."""
    a = [t for t in tree_leaves(expected) if isinstance(t, torch.Tensor)]
    b = [t for t in tree_leaves(actual) if isinstance(t, torch.Tensor)]
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        raise DeployError('the deployed copy returns outputs of other shapes than the original; please report this')
    diff = max((float((x.double() - y.double()).abs().max()) for x, y in zip(a, b) if x.numel()), default=0.0)
    scale = max((float(x.double().abs().max()) for x in a if x.numel()), default=0.0)
    return diff, scale


def deploy(model: nn.Module, *, channels_last: bool = True, compile: bool = False,
           example_input: Optional[torch.Tensor] = None, tolerance: Optional[float] = None) -> DeployedModel:
    """An inference copy of ``model`` with every BatchNorm that can be folded folded into its convolution.

    Args:
        model: any network; it is deep-copied, never modified, never run.
        channels_last: store the 4-d weights channels-last and convert 4-d inputs to it (faster on CPU with
            oneDNN). Callers still pass ordinary NCHW tensors.
        compile: ``torch.compile`` the folded network with inductor, static shapes. On the CPU inductor's
            weight freezing is on for the compilations of this network only (see ``DeployedModel``; the global
            ``torch._inductor.config`` is left as it is). The first compilation happens here, on the probe
            input: pass an ``example_input`` of the serving shape, as each new shape compiles once more.
        example_input: the probe: an input like the ones the network will see. Default: a random batch of 2
            at the model's ``pretrained_cfg``/``default_cfg`` input size, else 3x64x64. The probe keeps every
            proposed conv's output alive until its end (as a training forward pass would), so keep it small.
        tolerance: the largest accepted difference to the original on the probe, relative to the output's
            scale (``max(1, max |output|)``). Default: 1e-4, or 2e-2 for a network in float16 or bfloat16,
            whose own rounding is about that large.

    Returns:
        a ``DeployedModel``: call it like the original (ordinary NCHW input, no ``torch.no_grad()`` needed).
        ``.report`` says what was folded and what was not (with reasons) and how close the result is;
        ``.module`` is the folded network.

    Raises:
        DeployError: (a ``ScnetError``) the result differs from the original by more than ``tolerance`` on
            the probe, or the model cannot be probed (meta device, an empty ``example_input``), or
            ``tolerance`` is negative or not a number.
    """
    if not isinstance(model, nn.Module):
        raise DeployError(f'deploy takes an nn.Module, got {type(model).__name__}')
    if isinstance(model, torch.jit.ScriptModule):  # compiled code: its norms cannot be folded into a copy
        raise DeployError('deploy takes an eager nn.Module, got a TorchScript module (torch.jit.script or '
                          'torch.jit.trace); deploy the nn.Module first, then script or trace the deployed network '
                          '(its .module; `scnet export --format torchscript` does both)')
    for flag, value in (('channels_last', channels_last), ('compile', compile)):
        if not isinstance(value, bool):  # 'no' would read as True
            raise DeployError(f'{flag} must be True or False, got {value!r}')
    if tolerance is None:
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        tolerance = 2e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-4
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < float('inf'):
        raise DeployError(f'tolerance must be a finite number >= 0 (a difference relative to the output scale), '
                          f'got {tolerance!r}; the default is 1e-4')
    x = _probe_input(model, example_input)
    try:
        folded_model = copy.deepcopy(model).eval()
    except (RuntimeError, TypeError, copy.Error) as e:  # e.g. torch.nn.utils.weight_norm's non-leaf weights
        raise DeployError(f'the model cannot be copied ({type(e).__name__}: {str(e).splitlines()[0]}), and deploy '
                          'works on a copy: with torch.nn.utils.weight_norm, remove it first '
                          '(torch.nn.utils.remove_weight_norm) or use torch.nn.utils.parametrizations.weight_norm') \
            from None
    folded_model.requires_grad_(False)

    candidates = _propose(folded_model)
    modules = dict(folded_model.named_modules())
    report = DeployReport(probe_shape=tuple(x.shape), tolerance=tolerance, channels_last=channels_last,
                          compiled=compile)
    unfit = {bn: _bn_problem(modules[bn]) or _hook_problem(modules, c) for bn, c in candidates.items()}
    candidates = {bn: c for bn, c in candidates.items() if unfit[bn] is None}
    try:
        expected, problems = _probe(folded_model, candidates, x)
    except Exception as e:  # the user's network failed on the probe: say what to pass instead
        detail = f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'
        raise DeployError(f'the model failed on the probe input of shape {tuple(x.shape)} ({detail}); pass '
                          'example_input= with a valid input', failed_probe=(tuple(x.shape), detail)) from None
    for bn, c in candidates.items():
        if bn not in problems:
            _fold(folded_model, c)
            report.folded.append(FoldedBN(bn, ', '.join(n for n, _ in c.targets), c.rule))
    for name, module in modules.items():
        if _is_batch_norm(module) and name not in {f.bn for f in report.folded}:
            reason = unfit.get(name) or problems.get(name) or _bn_problem(module) or \
                'no convolution feeds it by the deploy rules (Sequential neighbours, convN/bnN, SCConv2d, GatherExcite)'
            report.unfolded.append(UnfoldedBN(name, reason))

    if channels_last:
        folded_model = folded_model.to(memory_format=torch.channels_last)
    compiled = None
    if compile:
        compiled = torch.compile(folded_model, backend='inductor', dynamic=False)
    deployed = DeployedModel(folded_model, report, compiled, {'freezing': True} if x.device.type == 'cpu' else None)

    try:
        actual = deployed(x)  # also compiles, here rather than on the caller's first batch
    except Exception as e:
        if not compile:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ''
        raise DeployError(f'torch.compile failed on the folded network ({type(e).__name__}: {first}); deploy with '
                          'compile=False (folding and channels-last need no compiler)', report) from None
    diff, scale = _max_abs_diff(expected, actual)
    report.max_abs_diff = diff
    if not diff <= tolerance * max(1.0, scale):  # "not <=" also catches NaN
        raise DeployError(f'the deployed copy differs from the original by {diff:.3g} (max abs) on the probe, more '
                          f'than {tolerance:g} x the output scale {max(1.0, scale):.3g}; try channels_last=False and '
                          'compile=False, or, if the network itself amplifies float32 rounding that much, pass a '
                          'larger tolerance= (the error\'s .report lists what was folded)', report)
    return deployed

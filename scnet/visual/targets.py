"""Layer names: from ``--layer L`` to a module, and the output of that module during a forward pass.

Names are PyTorch module names of timm's ResNet family: ``conv1``, ``bn1``, ``act1``, ``maxpool`` (the stem),
``layer1``..``layer4`` (the stages), ``layer4.2`` (a block), ``layer4.2.conv2`` (the 3x3 conv of a block, an
SC-Conv in SC models), ``global_pool``, ``fc``. Also accepted:

* the paper's stage names ``res2``..``res5`` for ``layer1``..``layer4`` (``res3`` is the side-output stage);
* negative block indices, counted from the end of a stage: ``layer4.-1.conv2`` is the last block's 3x3 conv
  whatever the depth (``layer4.2.conv2`` in a 50-layer network, ``layer4.1.conv2`` in a 26-layer one).

An unknown name raises :class:`LayerError` listing the usual choices (stem, stages, each stage's last block
and its convs); ``scnet cam --list-layers`` (or :func:`layer_table`) prints every module with its output shape.
"""
from __future__ import annotations

import contextlib
import difflib
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from scnet.errors import InvalidArgumentTypeError, ScnetError

__all__ = ['LayerError', 'InputError', 'STAGES', 'STAGE_ALIASES', 'resolve_layer', 'layer_choices', 'layer_table',
           'capture', 'spatial_output', 'image_batch', 'last_in_forward_order', 'check_differentiable']

STAGES = ('layer1', 'layer2', 'layer3', 'layer4')
#: The paper's names of the four stages (ResNet's conv2_x .. conv5_x).
STAGE_ALIASES = {'res2': 'layer1', 'res3': 'layer2', 'res4': 'layer3', 'res5': 'layer4'}


class LayerError(ScnetError, ValueError):
    """A layer name that does not exist in the model, or whose output is not a spatial map."""


def layer_choices(model: nn.Module) -> List[str]:
    """The layers worth offering: stem, stages, each stage's last block and that block's convs."""
    names = dict(model.named_modules())
    out = [n for n in ('conv1', 'act1', 'maxpool') if n in names]
    for stage in STAGES:
        if stage not in names:
            continue
        out.append(stage)
        blocks = [n for n, _ in names[stage].named_children()]
        if blocks:
            last = f'{stage}.{blocks[-1]}'
            out.append(last)
            out += [f'{last}.{c}' for c in ('conv1', 'conv2', 'conv3') if f'{last}.{c}' in names]
    return out


def _walk(model: nn.Module, name: str) -> Optional[nn.Module]:
    module = model
    for part in name.split('.'):
        children = module._modules
        if part in children and children[part] is not None:
            module = children[part]
            continue
        try:
            index = int(part)
        except ValueError:
            return None
        keys = list(children)
        if not -len(keys) <= index < len(keys) or not all(k.isdigit() for k in keys):
            return None
        module = children[keys[index]]
    return module


def resolve_layer(model: nn.Module, name: str, model_label: str = 'the model') -> Tuple[str, nn.Module]:
    """``(canonical name, module)`` for ``name``; :class:`LayerError` listing valid names when unknown. A
    TorchScript module is refused: the tools read layers through hooks, which it does not take."""
    if isinstance(model, torch.jit.ScriptModule):
        raise InvalidArgumentTypeError(
            f'{model_label} is a TorchScript module (torch.jit.script or torch.jit.trace), whose layers cannot be '
            'hooked: pass the nn.Module it was made from')
    raw = str(name).strip()
    parts = raw.split('.')
    parts[0] = STAGE_ALIASES.get(parts[0].lower(), parts[0])
    wanted = '.'.join(parts)
    module = _walk(model, wanted) if wanted else None
    if module is None or module is model:
        choices = layer_choices(model)
        all_names = [n for n, _ in model.named_modules() if n]
        close = difflib.get_close_matches(wanted, all_names, n=3, cutoff=0.6)
        hint = f' Did you mean {", ".join(close)}?' if close else ''
        raise LayerError(f'no layer {raw!r} in {model_label}.{hint} Valid layers include: {", ".join(choices)} '
                         f'(also res2..res5 for layer1..layer4; all {len(all_names)} module names: '
                         '`scnet cam --models MODEL --list-layers`)')
    canonical = next(n for n, m in model.named_modules() if m is module)
    return canonical, module


def check_differentiable(model: nn.Module, tool: str, model_label: str = 'the model') -> None:
    """Gradient tools (Grad-CAM, receptive fields) need a forward pass that autograd records; the network
    ``scnet.deploy`` returns runs its forward without, and would fail deep in autograd."""
    from scnet.deploy import DeployedModel  # (not at import: scnet.deploy is heavier than the visual tools need)

    if isinstance(model, DeployedModel):
        raise InvalidArgumentTypeError(
            f'{model_label}: {tool} takes gradients, and a network from scnet.deploy runs without them: pass its '
            '.module (the folded network, whose layer names have no "module." in front) or the network as it was '
            'before deploy')


class InputError(ScnetError, ValueError):
    """Images a visual tool cannot give the model: not a tensor, not (N, C, H, W), not float, other channels."""


def image_batch(model: nn.Module, inputs, model_label: str = 'the model') -> torch.Tensor:
    """``inputs`` as the model takes them: a ``(N, C, H, W)`` float batch (one ``(C, H, W)`` image, as
    ``Preprocessing`` gives it, gets its batch dimension) on the device and in the dtype of the model's
    parameters, detached. An :class:`InputError` names what does not fit (integer pixels that were never
    normalised, an image with the channels last, a grey image for an RGB model) and what to do instead."""
    if not isinstance(inputs, torch.Tensor):
        raise InputError(f'{model_label}: the images must be a torch tensor (N, 3, H, W), got '
                         f'{type(inputs).__name__}; convert with torch.as_tensor, or use '
                         'scnet.visual.Preprocessing, which gives the normalised tensor')
    x = inputs.detach()
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4:
        raise InputError(f'{model_label}: the images must be (N, C, H, W) or one (C, H, W) image, got shape '
                         f'{tuple(inputs.shape)}')
    if not x.is_floating_point():
        raise InputError(f'{model_label}: the images are {str(x.dtype).replace("torch.", "")} pixels; the model '
                         'takes normalised float images: use scnet.visual.Preprocessing (resize, crop, normalise)')
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is not None and x.shape[1] != first_conv.in_channels:
        hint = (' (channels last? permute(0, 3, 1, 2) puts them first)'
                if x.shape[-1] == first_conv.in_channels else '')
        raise InputError(f'{model_label}: the model takes {first_conv.in_channels}-channel images, got '
                         f'{x.shape[1]} channels in shape {tuple(x.shape)}{hint}')
    parameter = next(iter(model.parameters()), None)
    if parameter is not None:
        x = x.to(device=parameter.device, dtype=parameter.dtype)
    return x


def last_in_forward_order(model: nn.Module, names: Sequence[str]) -> str:
    """Of the canonical module ``names``, the one registered last: in a ResNet the last to run, so that a pass
    cut after it has run them all, in whatever order they were asked for."""
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return max(names, key=lambda n: order.get(n, -1))


class _Stop(Exception):
    pass


@contextlib.contextmanager
def capture(model: nn.Module, names: Sequence[str], *, stop_after: Optional[str] = None,
            model_label: str = 'the model') -> Iterator[Dict[str, List[torch.Tensor]]]:
    """Record the outputs of the named modules during the forward passes run inside the ``with`` block.

    Yields ``{canonical name: [output of each call]}``. The network goes on with a copy of a recorded
    output, so later in-place operations (an in-place ReLU) do not change it, and gradients with respect to
    it are those of the module's output. With ``stop_after``, the forward pass is cut as soon as that module
    has run (the rest of the network is not computed): the model's call raises an internal exception that
    ends the ``with`` block, silently.
    """
    resolved = [resolve_layer(model, n, model_label) for n in names]
    stop_name = None
    if stop_after is not None:
        stop_name, stop_module = resolve_layer(model, stop_after, model_label)
        if all(n != stop_name for n, _ in resolved):
            resolved.append((stop_name, stop_module))
    store: Dict[str, List[torch.Tensor]] = {n: [] for n, _ in resolved}
    handles = []

    def hook_for(n: str):
        def hook(module, inputs, output):
            store[n].append(output)
            if n == stop_name:
                raise _Stop()
            return output.clone() if isinstance(output, torch.Tensor) else output
        return hook

    for n, module in resolved:
        handles.append(module.register_forward_hook(hook_for(n)))
    try:
        yield store
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()


def spatial_output(store: Dict[str, List[torch.Tensor]], name: str, model_label: str = 'the model') -> torch.Tensor:
    """The single ``(N, C, H, W)`` output recorded for ``name``; :class:`LayerError` when the module ran no
    or several times in the pass, or gave something else than a spatial map."""
    outputs = store[name]
    if not outputs:
        raise LayerError(f'layer {name!r} of {model_label} did not run in the forward pass; choose another')
    if len(outputs) > 1:
        raise LayerError(f'layer {name!r} of {model_label} runs {len(outputs)} times per forward pass; choose a '
                         'module that runs once (its parent block, for example)')
    out = outputs[0]
    if not isinstance(out, torch.Tensor) or out.dim() != 4:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise LayerError(f'layer {name!r} of {model_label} gives {shape}, not a spatial map (N, C, H, W): choose '
                         'a convolution, block or stage, e.g. layer4 or layer4.-1.conv2')
    return out


def layer_table(model: nn.Module, input_size: int = 224) -> List[Tuple[str, str, str]]:
    """``(name, module type, output shape)`` of every module, from one forward pass of a zero image."""
    shapes: Dict[str, str] = {}
    handles = []
    for n, m in model.named_modules():
        if not n:
            continue

        def hook(module, inputs, output, n=n):
            if isinstance(output, torch.Tensor):
                shapes.setdefault(n, 'x'.join(str(s) for s in output.shape[1:]))
        handles.append(m.register_forward_hook(hook))
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, input_size, input_size))
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return [(n, type(m).__name__, shapes.get(n, '-')) for n, m in model.named_modules() if n]

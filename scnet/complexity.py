"""Params, MAdds and FLOPs of the zoo's networks, next to the figures the paper reports (Tables 1 and 3).

Counting convention (the paper does not state its own):

* **Params**: parameters, in millions, frozen ones too (``requires_grad`` off: a partly frozen network for
  fine-tuning, or one from ``scnet.deploy``, has the size it has). BN running statistics are buffers, not
  parameters, so they are not counted.
* **MAdds** (multiply-accumulates, "MACs"): counted by ``torch.utils.flop_counter.FlopCounterMode``, which
  counts convolutions and matrix products (the classifier) only. Batch normalisation, activations, the
  sigmoid gates, element-wise products, pooling and up-sampling are **not** counted: in these networks
  they are about 0.5% of the total (ResNet-50 at 224: some 0.02G outputs of BN, ReLU and pooling beside
  4.09G MAdds).
* **FLOPs** = 2 x MAdds (one multiply and one add per MAdd), which is also how the paper's FLOPs column
  relates to its MAdds column.

Batch size 1, default input 224 x 224, the paper's resolution. The tolerance that ``within_tolerance``
checks is params within 0.1M and MAdds within 3% of the paper: the paper rounds to 0.1M and 0.1G (about
+-1.2% at 4G), and it may count a few layers differently. At other input sizes the paper has nothing to
compare MAdds with, so ``within_tolerance`` is ``None`` there.

Why models are built on the ``meta`` device: ``FlopCounterMode`` only needs shapes, and meta tensors carry
shapes without memory or arithmetic, so profiling scnet101 at any resolution takes a fraction of a second
and no RAM. Every zoo network runs on meta (the tests profile all of them). A module passed in is profiled
where its parameters live, in eval mode, under ``no_grad``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from scnet.errors import InvalidArgumentTypeError, ScnetError

__all__ = ['PaperRow', 'PAPER_ROWS', 'PAPER_INPUT_SIZE', 'PARAMS_TOLERANCE_M', 'MADDS_TOLERANCE_PCT',
           'InputSizeError', 'ProfileError', 'parse_input_size', 'paper_rows', 'paper_models', 'count_complexity',
           'profile_model', 'profile_models', 'profile_paper', 'not_built_rows']

#: Largest accepted |ours - paper| in millions of parameters.
PARAMS_TOLERANCE_M = 0.1
#: Largest accepted |ours - paper| / paper of MAdds, in percent.
MADDS_TOLERANCE_PCT = 3.0
#: The resolution of the paper's complexity figures.
PAPER_INPUT_SIZE = (224, 224)

InputSize = Union[int, Tuple[int, int], Sequence[int], str]


class InputSizeError(ScnetError, ValueError):
    """An input size that is not a positive int, ``(H, W)`` or ``'HxW'``."""


class ProfileError(ScnetError, RuntimeError):
    """A network that cannot run a forward pass at the requested input size."""


@dataclass(frozen=True)
class PaperRow:
    """One row of the paper's Table 1 or Table 3, as printed.

    ``model`` is the zoo name that builds the row's network, or ``None`` when this project does not build it
    (``note`` then says why). ``flops_g`` is ``None`` in Table 3, which has no FLOPs column.
    """

    table: int
    label: str
    model: Optional[str]
    params_m: float
    madds_g: float
    flops_g: Optional[float]
    top1: float
    top5: float
    note: str = ''


_GE = 'GE-theta-minus: global depthwise gather + BN, no MLP'
_COMPARISON_ONLY = 'not built: {what}, a comparison baseline with no SC variant in the paper'

#: Every row of Tables 1 and 3, in the paper's order. Table 1 is at 100 epochs; '(300 ep)' marks Table 3's
#: 300-epoch rows (same networks, longer training, so the same complexity).
PAPER_ROWS: Tuple[PaperRow, ...] = (
    PaperRow(1, 'ResNet-50', 'resnet50', 25.6, 4.1, 8.2, 76.4, 93.0),
    PaperRow(1, 'SCNet-50', 'scnet50', 25.6, 4.0, 7.9, 77.8, 93.9),
    PaperRow(1, 'ResNeXt-50 (32x4d)', 'resnext50_32x4d', 25.0, 4.3, 8.5, 77.4, 93.4),
    PaperRow(1, 'ResNeXt-50 2x40d', 'resnext50_2x40d', 25.4, 4.2, 8.3, 76.8, 93.3),
    PaperRow(1, 'SCNeXt-50', 'scnext50_32x4d', 25.0, 4.3, 8.5, 78.3, 94.0),
    PaperRow(1, 'SE-ResNet-50', 'seresnet50', 28.1, 4.1, 8.2, 77.2, 93.4),
    PaperRow(1, 'SE-SCNet-50', 'se_scnet50', 28.1, 4.0, 7.9, 78.2, 93.9),
    PaperRow(1, 'ResNet-101', 'resnet101', 44.5, 7.8, 15.7, 78.0, 93.9),
    PaperRow(1, 'SCNet-101', 'scnet101', 44.6, 7.2, 14.4, 78.9, 94.3),
    PaperRow(1, 'ResNeXt-101 (32x4d)', 'resnext101_32x4d', 44.2, 8.0, 16.0, 78.5, 94.2),
    PaperRow(1, 'SCNeXt-101', 'scnext101_32x4d', 44.2, 8.0, 15.9, 79.2, 94.4),
    PaperRow(1, 'SE-ResNet-101', 'seresnet101', 49.3, 7.9, 15.7, 78.4, 94.2),
    PaperRow(1, 'SE-SCNet-101', 'se_scnet101', 49.3, 7.2, 14.4, 78.9, 94.3),
    PaperRow(3, 'ResNet-50', 'resnet50', 25.6, 4.1, None, 76.4, 93.0),
    PaperRow(3, 'ResNeXt-50', 'resnext50_32x4d', 25.0, 4.3, None, 77.4, 93.4),
    PaperRow(3, 'SE-ResNet-50', 'seresnet50', 28.1, 4.1, None, 77.2, 93.4),
    PaperRow(3, 'ResNet-50 + CBAM', None, 28.1, 4.1, None, 77.3, 93.6,
             _COMPARISON_ONLY.format(what='CBAM attention (Woo et al., ECCV 2018)')),
    PaperRow(3, 'GCNet (ResNet-50)', None, 28.1, 4.1, None, 77.7, 93.7,
             _COMPARISON_ONLY.format(what='global context blocks (Cao et al., 2019)')),
    PaperRow(3, 'ResNet-50 + GALA', None, 29.4, 4.1, None, 77.3, 93.6,
             _COMPARISON_ONLY.format(what='GALA attention (Linsley et al., ICLR 2019)')),
    PaperRow(3, 'ResNet-50 + AA', None, 28.1, 4.1, None, 77.7, 93.6,
             _COMPARISON_ONLY.format(what='attention-augmented convs (Bello et al., 2019)')),
    PaperRow(3, 'ResNet-50 + GE (300 ep)', 'ge_resnet50', 31.2, 4.1, None, 78.0, 93.6,
             _GE),
    PaperRow(3, 'SCNet-50', 'scnet50', 25.6, 4.0, None, 77.8, 93.9),
    PaperRow(3, 'SCNet-50 (300 ep)', 'scnet50', 25.6, 4.0, None, 78.2, 94.0),
    PaperRow(3, 'SE-SCNet-50', 'se_scnet50', 28.1, 4.0, None, 78.2, 93.9),
    PaperRow(3, 'GE-SCNet-50', 'ge_scnet50', 31.1, 4.0, None, 78.3, 94.0,
             _GE),
)


def paper_rows(model: str) -> List[PaperRow]:
    """The paper's rows for zoo name ``model`` (Table 1 first); empty when the paper does not list it."""
    return [row for row in PAPER_ROWS if row.model == model]


def paper_models() -> List[str]:
    """Zoo names with a row in Table 1 or 3, in the paper's order (each once)."""
    return list(dict.fromkeys(row.model for row in PAPER_ROWS if row.model is not None))


#: The largest side ``parse_input_size`` takes: far above any image a network is run on, far below the sizes
#: at which PyTorch's storage size computation overflows (with the feature maps' channels on top).
MAX_INPUT_SIDE = 1 << 16


def parse_input_size(value: InputSize) -> Tuple[int, int]:
    """``224``, ``'224'``, ``(H, W)`` or ``'HxW'`` (e.g. ``'320x240'``: height 320, width 240) -> ``(H, W)``."""
    if isinstance(value, str):
        match = re.fullmatch(r'\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?', value)
        if not match:
            raise InputSizeError(f"input size {value!r} is not N or HxW with positive integers, e.g. 224 or 320x240")
        h, w = match.group(1), match.group(2) or match.group(1)
        size = (int(h), int(w))
    elif isinstance(value, int) and not isinstance(value, bool):
        size = (value, value)
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        size = (value[0], value[1])
    else:
        raise InputSizeError(f'input size {value!r} is not an int, (H, W) or "HxW"')
    if min(size) < 1:
        raise InputSizeError(f'input size {value!r} must be positive, e.g. 224 or 320x240')
    if max(size) > MAX_INPUT_SIDE:  # torch's tensor sizes overflow long before a profile would mean anything
        raise InputSizeError(f'input size {value!r} is above {MAX_INPUT_SIDE} pixels a side; give a size an image '
                             'has, e.g. 224 or 1333x800')
    return size


def count_complexity(model: nn.Module, input_size: InputSize = 224) -> Tuple[int, int]:
    """``(parameters, MACs)`` of one forward pass of ``model`` on a ``1 x C x H x W`` input.

    Runs where the model's parameters live (``meta`` costs nothing), in eval mode and under ``no_grad``; the
    model's training mode is restored afterwards. MACs are ``FlopCounterMode``'s FLOPs / 2 (see module doc).
    """
    h, w = parse_input_size(input_size)
    params = sum(p.numel() for p in model.parameters())
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device('cpu')
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    x = torch.empty(1, _input_channels(model), h, w, device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    except (RuntimeError, ValueError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ProfileError(f'cannot run a {h}x{w} input through {type(model).__name__}: {first_line}') from e
    finally:
        model.train(was_training)
    return params, counter.get_total_flops() // 2


def _input_channels(model: nn.Module) -> int:
    """The channels a model takes: timm's ``in_chans`` where it records it, else its first convolution's (a
    ``features_only`` backbone, timm's feature wrapper, keeps no ``in_chans``), else RGB."""
    if hasattr(model, 'in_chans'):
        return int(model.in_chans)
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return first_conv.in_channels if first_conv is not None else 3


def _build(name: str, **model_kwargs) -> nn.Module:
    """``scnet.create_model(name)`` on the meta device: shapes only (unknown names raise UnknownModelError)."""
    from scnet.models import create_model  # deferred: scnet.models imports the zoo and timm

    with torch.device('meta'):
        return create_model(name, **model_kwargs)


def _model_name(model: nn.Module) -> str:
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    return cfg.get('architecture') or type(model).__name__


def _row(name: str, size: Tuple[int, int], params: int, macs: int, uncompared: str = '') -> Dict[str, object]:
    """One result row: our figures, the paper's (first matching row), their differences and a verdict.

    ``uncompared``, when given, is why this network is not compared with the paper (it becomes the note).
    """
    rows = [] if uncompared else paper_rows(name)
    paper = rows[0] if rows else None
    params_m, macs_g = params / 1e6, macs / 1e9
    at_paper_size = size == PAPER_INPUT_SIZE
    row: Dict[str, object] = dict(
        model=name, input_size=list(size), params_m=round(params_m, 3), macs_g=round(macs_g, 3),
        flops_g=round(2 * macs_g, 3),
        paper_row=paper.label if paper else None, paper_tables=sorted({r.table for r in rows}),
        paper_params_m=paper.params_m if paper else None, paper_madds_g=paper.madds_g if paper else None,
        paper_flops_g=paper.flops_g if paper else None,
        params_delta_m=None, madds_rel_diff_pct=None, within_tolerance=None, note='',
    )
    if paper is None:
        row['note'] = uncompared or "not in the paper's tables"
        return row
    params_delta = params_m - paper.params_m
    row['params_delta_m'] = round(params_delta, 3)
    remark = '; '.join(dict.fromkeys(r.note for r in rows if r.note))
    if not at_paper_size:
        row['note'] = f'paper figures are at 224x224; MAdds not compared at {size[0]}x{size[1]}'
        return row
    madds_pct = 100 * (macs_g - paper.madds_g) / paper.madds_g
    row['madds_rel_diff_pct'] = round(madds_pct, 2)
    problems = []
    if abs(params_delta) > PARAMS_TOLERANCE_M + 1e-9:
        problems.append(f'params {params_delta:+.2f}M (tolerance {PARAMS_TOLERANCE_M}M)')
    if abs(madds_pct) > MADDS_TOLERANCE_PCT + 1e-9:
        problems.append(f'MAdds {madds_pct:+.1f}% (tolerance {MADDS_TOLERANCE_PCT:g}%)')
    row['within_tolerance'] = not problems
    row['note'] = '; '.join(problems) if problems else 'match' + (f' ({remark})' if remark else '')
    return row


def profile_model(name_or_model: Union[str, nn.Module], input_size: InputSize = 224, *,
                  name: Optional[str] = None, **model_kwargs) -> Dict[str, object]:
    """Params, MACs and FLOPs of one network, with the paper's figures where the paper lists it.

    Args:
        name_or_model: a zoo name (built on the meta device) or a module (profiled where it lives).
        input_size: ``224``, ``(H, W)`` or ``'HxW'``.
        name: for a module, the zoo name whose paper row to compare with (default: not compared).
        **model_kwargs: passed to ``create_model`` for a name, e.g. ``pooling_r=2`` for a Table 2 variant
            (a variant is not compared with the paper's row of the default network).

    Returns a dict: ``model``, ``input_size`` [H, W], ``params_m``, ``macs_g``, ``flops_g``; the paper's
    ``paper_row`` (label of its first row), ``paper_tables`` (e.g. [1, 3]), ``paper_params_m``,
    ``paper_madds_g``, ``paper_flops_g`` (``None`` where the paper has no figure); ``params_delta_m``
    (ours - paper, M), ``madds_rel_diff_pct`` (ours vs paper, %), ``within_tolerance`` (``None`` without a
    paper row or away from 224x224) and a one-line ``note``.
    """
    size = parse_input_size(input_size)
    if isinstance(name_or_model, str):
        options = ', '.join(f'{k}={v!r}' for k, v in sorted(model_kwargs.items()))
        uncompared = f'built with {options}: not compared with the paper' if options else ''
        return _measure(name_or_model, _build(name_or_model, **model_kwargs), size, uncompared)
    if model_kwargs:
        raise InvalidArgumentTypeError(f'model arguments {sorted(model_kwargs)} need a model name, not a module: '
                                       'profile_model(name, ..., pooling_r=2), or build the module with them')
    uncompared = '' if name else 'module given without name=: not compared with the paper'
    return _measure(name or _model_name(name_or_model), name_or_model, size, uncompared)


def _measure(name: str, model: nn.Module, size: Tuple[int, int], uncompared: str = '') -> Dict[str, object]:
    params, macs = count_complexity(model, size)
    return _row(name, size, params, macs, uncompared)


def profile_models(names: Iterable[str], input_size: InputSize = 224, *,
                   progress: Optional[Callable[[List[Tuple[str, nn.Module]]], Iterable[Tuple[str, nn.Module]]]]
                   = None) -> List[Dict[str, object]]:
    """``profile_model`` for each name (or one name), in order. All names are built (on meta, instantly) before any is
    profiled, so a misspelt name fails at once. ``progress`` wraps the (name, model) list, e.g. with tqdm."""
    size = parse_input_size(input_size)
    if isinstance(names, str):  # one name, not its letters
        names = [names]
    models = [(name, _build(name)) for name in names]
    iterate = progress(models) if progress else models
    return [_measure(name, model, size) for name, model in iterate]


def not_built_rows() -> List[Dict[str, object]]:
    """Rows for the paper's networks this project does not build, with the paper's figures and the reason."""
    return [dict(model=None, input_size=list(PAPER_INPUT_SIZE), params_m=None, macs_g=None, flops_g=None,
                 paper_row=r.label, paper_tables=[r.table], paper_params_m=r.params_m, paper_madds_g=r.madds_g,
                 paper_flops_g=r.flops_g, params_delta_m=None, madds_rel_diff_pct=None, within_tolerance=None,
                 note=r.note)
            for r in PAPER_ROWS if r.model is None]


def profile_paper(input_size: InputSize = 224, **kwargs) -> List[Dict[str, object]]:
    """Every network of Tables 1 and 3 that the zoo builds, profiled, then the rows it does not build."""
    return profile_models(paper_models(), input_size, **kwargs) + not_built_rows()

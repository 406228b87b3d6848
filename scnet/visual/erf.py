"""Effective receptive fields (Luo et al., NeurIPS 2016) of each stage: the paper's central claim, measured.

SC-Conv's claim is that each spatial location sees more of the image ("enlarged fields-of-view"). The
effective receptive field (ERF) of a unit is how much each input pixel actually moves it: the gradient of
the unit with respect to the input. Here, for each stage output ``layer1``..``layer4`` (res2..res5):

1. the unit is the centre position ``(h // 2, w // 2)`` of the stage's map, summed over its channels
   (every channel counts, none is picked at random);
2. its gradient with respect to the input image is taken for ``samples`` inputs: by default images of
   independent standard normal pixels in the normalised input space (so no data set is needed), or the
   crops of ``images`` given by the user;
3. the magnitude ``|grad|`` is summed over the three colour channels and averaged over the inputs, then
   divided by its total: a mass distribution over the ``input_size`` x ``input_size`` pixels;
4. the radius that holds a fraction ``q`` of the mass is the half-width ``r`` (in input pixels) of the
   smallest *square* window centred on the mass's centre of gravity that holds at least ``q`` of it
   (Chebyshev distance ``max(|dy|, |dx|) <= r``; the square follows the pixel grid, as in RepLKNet's ERF
   analysis). ``r50`` and ``r95`` are reported, and ``r100``, the window holding every pixel with a
   non-zero gradient: the receptive field wired into the network (for a plain CNN, the theoretical one,
   clipped by the image). A window of radius ``r`` is about ``2r + 1`` pixels wide.

Batch norm runs in eval mode (each image on its own). With a checkpoint, its trained statistics are used.
With random weights, two things are set so that the measurement is about the architecture and not about an
untrained quirk: (a) the last BN of each block starts at 1 instead of timm's 0 (:mod:`scnet.visual.loading`;
with 0, every residual branch, SC-Conv included, is switched off and all ResNets have the same ERF);
(b) the BN statistics are *calibrated*: before measuring, the running mean and variance of every BN are set to
their averages over the first four inputs of the seed (a pass in train mode, momentum None, no weight
changed), as a trained network's statistics fit its data. Without (b) the default statistics (mean 0, variance
1) normalise nothing, activations grow block after block, and SC-Conv's sigmoid gates saturate (their gradient
vanishes: in a random scnet50 many gate values of the late stages sit near 0 or 1, none once calibrated),
so the comparison would measure saturation.
``calibrate_bn=False`` (``--no-bn-calibration``) measures the raw default init.

``seeds`` repeat the measurement with other random weights (random-weight models) and other inputs; the
report gives each seed's radii and their mean.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from scnet.errors import InvalidArgumentError, ScnetError, is_single_value_batch
from scnet.visual.cam import frozen
from scnet.visual.images import DPI, load_image, save_png
from scnet.visual.loading import LoadedModel, as_list, load_model
from scnet.visual.targets import (STAGES, STAGE_ALIASES, capture, check_differentiable, image_batch,
                                  last_in_forward_order, resolve_layer, spatial_output)

__all__ = ['ErfStage', 'effective_receptive_field', 'mass_radius', 'mass_profile', 'calibrate_batch_norm',
           'erf_figure', 'erf_mass_figure', 'measure_models', 'write_erf', 'FRACTIONS']

#: Inputs (the first of each seed's) over which random-weight BN statistics are calibrated.
CALIBRATION_INPUTS = 4
#: Mass fractions whose radius is reported.
FRACTIONS = (0.5, 0.95)
_PAPER = {v: k for k, v in STAGE_ALIASES.items()}


@dataclass
class ErfStage:
    """The ERF of the centre unit of one stage."""

    stage: str
    mass: np.ndarray            # (H, W) float64, sums to 1
    centre: Tuple[float, float]  # centre of gravity of the mass, (y, x) in input pixels
    radii: Dict[float, float]   # fraction -> radius (input pixels)
    map_size: Tuple[int, int]   # (h, w) of the stage's output
    unit: Tuple[int, int]       # the centre unit (i, j) on that map


def _chebyshev(shape: Tuple[int, int], centre: Tuple[float, float]) -> np.ndarray:
    ys = np.arange(shape[0], dtype=np.float64)[:, None] - centre[0]
    xs = np.arange(shape[1], dtype=np.float64)[None, :] - centre[1]
    return np.maximum(np.abs(ys), np.abs(xs))


def centre_of_mass(mass: np.ndarray) -> Tuple[float, float]:
    total = mass.sum()
    ys, xs = np.indices(mass.shape, dtype=np.float64)
    return float((mass * ys).sum() / total), float((mass * xs).sum() / total)


def mass_profile(mass: np.ndarray, centre: Optional[Tuple[float, float]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """``(radii, fraction of the mass within each radius)``, square windows around ``centre`` (default: the
    centre of gravity), radii sorted ascending."""
    mass = np.asarray(mass, dtype=np.float64)
    centre = centre_of_mass(mass) if centre is None else centre
    dist = _chebyshev(mass.shape, centre).ravel()
    order = np.argsort(dist, kind='stable')
    d, cum = dist[order], np.cumsum(mass.ravel()[order]) / mass.sum()
    last = np.r_[d[1:] != d[:-1], True]  # a radius holds all pixels at that distance
    return d[last], cum[last]


def mass_radius(mass: np.ndarray, fraction: float, centre: Optional[Tuple[float, float]] = None) -> float:
    """The smallest radius ``r`` whose square window (``max(|dy|, |dx|) <= r`` around ``centre``, default the
    centre of gravity) holds at least ``fraction`` of ``mass``."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f'fraction must be in (0, 1], got {fraction}')
    mass = np.asarray(mass, dtype=np.float64)
    centre = centre_of_mass(mass) if centre is None else centre
    if fraction >= 1.0:  # all of it: exactly the support, free of rounding in the cumulative sum
        return float(_chebyshev(mass.shape, centre)[mass > 0].max())
    radii, cum = mass_profile(mass, centre)
    i = int(np.searchsorted(cum, fraction - 1e-12, side='left'))
    return float(radii[min(i, len(radii) - 1)])


def calibrate_batch_norm(model: nn.Module, inputs: torch.Tensor, batch_size: int = 8) -> int:
    """Set the running mean and variance of every BN of ``model`` to the averages over ``inputs`` (train-mode
    passes with momentum None, i.e. a cumulative average; no weight changes). Returns the number of BNs.

    Every input counts: ``batch_size`` (at least 2, since a train-mode BN needs two values per channel where a
    map is 1x1) sets the images per pass, and a last single image joins the pass before it. The inputs are
    checked before any statistic changes, and a pass that fails puts the statistics back as they were."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgumentError(f'calibrate_batch_norm: batch_size must be a positive integer, got {batch_size!r}')
    inputs = image_batch(model, inputs)
    if len(inputs) == 0:
        raise InvalidArgumentError('calibrate_batch_norm: no inputs (an empty batch); give at least 2 images')
    step = max(batch_size, 2)
    starts = list(range(0, len(inputs), step))
    if len(starts) > 1 and len(inputs) - starts[-1] == 1:
        starts.pop()  # the last image joins the pass before it
    ends = starts[1:] + [len(inputs)]
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum, m.training, {k: b.clone() for k, b in m.named_buffers(recurse=False)}) for m in bns]
    done = False
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        with torch.no_grad():
            for start, end in zip(starts, ends):
                try:
                    model(inputs[start:end])
                except ValueError as e:
                    if not is_single_value_batch(e):
                        raise
                    raise InvalidArgumentError(
                        'calibrating batch norm on a single input leaves one value per channel where a map is 1x1: '
                        'measure with at least 2 inputs (--samples 2, samples=2), or keep the default statistics '
                        '(--no-bn-calibration, calibrate_bn=False)') from None
        done = True
    finally:
        for m, momentum, training, buffers in saved:
            m.momentum = momentum
            m.train(training)
            if not done:  # the statistics the model had, not the defaults a failed pass would leave
                for k, b in buffers.items():
                    getattr(m, k).copy_(b)
    return len(bns)


def _inputs(n: int, size: int, seed: int, pictures: Optional[List[torch.Tensor]]) -> torch.Tensor:
    if pictures:
        reps = [pictures[i % len(pictures)] for i in range(n)]
        return torch.stack(reps)
    g = torch.Generator().manual_seed(10_007 * seed + 17)
    return torch.randn(n, 3, size, size, generator=g)


def effective_receptive_field(model: nn.Module, inputs: torch.Tensor, stages: Sequence[str] = STAGES, *,
                              batch_size: int = 8, fractions: Sequence[float] = FRACTIONS,
                              model_label: str = 'the model') -> Dict[str, ErfStage]:
    """The ERF of the centre unit of each stage (see the module docstring), from ``inputs`` (``(N, 3, H, W)``).

    One forward pass per batch records every stage; one backward pass per stage (from that stage only, so
    early stages cost little). Parameters are not differentiated.
    """
    check_differentiable(model, 'the effective receptive field', model_label)
    if isinstance(stages, str):  # one stage
        stages = (stages,)
    names = [resolve_layer(model, s, model_label)[0] for s in stages]
    last = last_in_forward_order(model, names)  # the pass is cut after it, whatever order the stages came in
    inputs = image_batch(model, inputs, model_label)
    size = tuple(inputs.shape[-2:])
    sums = {n: torch.zeros(size, dtype=torch.float64) for n in names}
    shapes: Dict[str, Tuple[int, int]] = {}
    with frozen(model):
        for i in range(0, len(inputs), batch_size):
            x = inputs[i:i + batch_size].requires_grad_(True)
            with torch.enable_grad(), capture(model, names, stop_after=last, model_label=model_label) as store:
                model(x)
            outs = {n: spatial_output(store, n, model_label) for n in names}
            for k, n in enumerate(names):
                out = outs[n]
                h, w = out.shape[-2:]
                shapes[n] = (h, w)
                unit = out[:, :, h // 2, w // 2].sum()
                grad, = torch.autograd.grad(unit, x, retain_graph=k < len(names) - 1)
                sums[n] += grad.detach().abs().sum(dim=(0, 1)).double()
    result = {}
    for n in names:
        total = float(sums[n].sum())
        if not total > 0 or not math.isfinite(total):
            raise ScnetError(f'{model_label}: the gradient of {n} with respect to the input is zero or not '
                             'finite; no receptive field to measure (a dead network?)')
        mass = (sums[n] / total).numpy()
        centre = centre_of_mass(mass)
        h, w = shapes[n]
        result[n] = ErfStage(stage=n, mass=mass, centre=centre,
                             radii={q: mass_radius(mass, q, centre) for q in fractions}, map_size=(h, w),
                             unit=(h // 2, w // 2))
    return result


# -------------------------------------------------------------------------------------------- measuring

def measure_models(model_specs: Sequence[str], *, input_size: int = 224, samples: int = 8, seeds: Sequence[int] = (0,),
                   batch_size: int = 8, image_paths: Sequence[Union[str, Path]] = (), calibrate_bn: bool = True,
                   stages: Sequence[str] = STAGES, progress=None) -> Dict[str, object]:
    """ERF of each model at each stage for each seed. Returns ``{'settings', 'models': [{'label', 'model',
    'weights', 'stages': {stage: {...}}, 'mass': {stage: mean mass map}, 'seconds'}]}``; radii are per seed
    and their mean over seeds."""
    if samples < 1:
        raise ScnetError(f'--samples must be at least 1, got {samples}')
    if input_size < 32:
        raise ScnetError(f'--input-size must be at least 32, got {input_size}')
    model_specs, image_paths = as_list(model_specs), as_list(image_paths)
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    if not seeds:
        raise ScnetError('give at least one seed')
    images = [load_image(p) for p in image_paths]  # checked before any model is built
    out_models = []
    labels_seen: Dict[str, int] = {}
    for spec in model_specs:
        t0 = time.perf_counter()
        per_seed: List[Dict[str, ErfStage]] = []
        m: Optional[LoadedModel] = None
        for seed in seeds:
            if m is None or m.weights == 'random':
                m = load_model(spec, image_size=input_size, resize=input_size if not images else None, seed=seed)
            for s in stages:
                resolve_layer(m.model, s, m.label)
            pictures = [m.preprocessing(img)[1] for img in images] if images else None
            x = _inputs(samples, input_size, seed, pictures)
            if calibrate_bn and m.weights == 'random':
                calibrate_batch_norm(m.model, x[:CALIBRATION_INPUTS], batch_size=max(batch_size, 2))
            per_seed.append(effective_receptive_field(m.model, x, stages, batch_size=batch_size, model_label=m.label))
            if progress:
                progress(f'{m.label} seed {seed}: ' + ', '.join(
                    f'{n} r50 {e.radii[0.5]:.0f} r95 {e.radii[0.95]:.0f}' for n, e in per_seed[-1].items()))
        label = m.label
        labels_seen[label] = labels_seen.get(label, 0) + 1
        if labels_seen[label] > 1:
            label = f'{label} #{labels_seen[label]}'
        stage_records, masses = {}, {}
        for n in per_seed[0]:
            mean_mass = np.mean([r[n].mass for r in per_seed], axis=0)
            masses[n] = mean_mass
            rec = {'paper_name': _PAPER.get(n), 'map_size': list(per_seed[0][n].map_size),
                   'stride': input_size / per_seed[0][n].map_size[0], 'unit': list(per_seed[0][n].unit)}
            for q in FRACTIONS:
                key = f'r{round(q * 100)}'
                values = [r[n].radii[q] for r in per_seed]
                rec[key] = float(np.mean(values))
                rec[f'{key}_std'] = float(np.std(values))
                rec[f'{key}_per_seed'] = values
                rec[f'{key}_of_mean_map'] = mass_radius(mean_mass, q)
            # r100: the window holding all of the gradient, i.e. the receptive field the network wires in
            # (for a plain CNN the theoretical one, clipped by the image)
            rec['r100'] = float(np.mean([mass_radius(r[n].mass, 1.0) for r in per_seed]))
            rec['centre_yx'] = [round(float(np.mean([r[n].centre[0] for r in per_seed])), 2),
                                round(float(np.mean([r[n].centre[1] for r in per_seed])), 2)]
            stage_records[n] = rec
        out_models.append({'label': label, 'model': m.name, 'weights': m.weights,
                           'checkpoint': str(m.checkpoint) if m.checkpoint else None,
                           'stages': stage_records, 'mass': masses, 'seconds': time.perf_counter() - t0})
    settings = {
        'input_size': input_size, 'samples': samples, 'seeds': list(seeds), 'inputs':
            'crops of ' + ', '.join(str(p) for p in image_paths) if image_paths else
            'standard normal pixels in the normalised input space',
        'unit': 'centre position (h // 2, w // 2) of the stage output, summed over channels',
        'measure': '|d unit / d input|, summed over colour channels, averaged over inputs, normalised to mass 1',
        'radius': 'half-width r (input pixels) of the smallest square window max(|dy|,|dx|) <= r around the '
                  "mass's centre of gravity holding the fraction; r50/r95 = mean over seeds",
        'batch_norm': 'eval mode; random-weight models: last BN of each block at 1 (not 0), running statistics '
                      + ('calibrated on the inputs' if calibrate_bn else 'at their defaults (mean 0, var 1)'),
    }
    return {'settings': settings, 'models': out_models}


def report_json(result: Dict[str, object]) -> Dict[str, object]:
    """The JSON-ready part of :func:`measure_models`'s result (without the mass maps)."""
    return {'settings': result['settings'],
            'models': [{k: v for k, v in m.items() if k != 'mass'} for m in result['models']]}


# ---------------------------------------------------------------------------------------------- figures

def _square(ax, centre, r, **kwargs):
    from matplotlib.patches import Rectangle

    cy, cx = centre
    ax.add_patch(Rectangle((cx - r - 0.5, cy - r - 0.5), 2 * r + 1, 2 * r + 1, fill=False, **kwargs))


def erf_figure(result: Dict[str, object], *, floor: float = 1e-3):
    """Rows = models, columns = stages: each ERF as ``log10(mass / peak)`` (from ``log10(floor)`` to 0), the
    r50 square dashed and the r95 square solid."""
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    models = result['models']
    stages = list(models[0]['stages'])
    cell, cap, top, left, bar = 2.3, 0.45, 0.95, 0.5, 1.0
    width, height = left + len(stages) * cell * 1.04 + bar, top + len(models) * (cell + cap)
    fig = Figure(figsize=(width, height), dpi=DPI)
    gs = fig.add_gridspec(len(models), len(stages), left=left / width, right=1 - bar / width,
                          top=1 - top / height, bottom=cap / height, wspace=0.04, hspace=cap / cell)
    norm = LogNorm(floor, 1.0)
    image = None
    for r, m in enumerate(models):
        for c, s in enumerate(stages):
            ax = fig.add_subplot(gs[r, c])
            mass = m['mass'][s]
            rel = np.clip(mass / mass.max(), floor, 1.0)
            image = ax.imshow(rel, cmap='magma', norm=norm, interpolation='nearest')
            rec = m['stages'][s]
            centre = rec['centre_yx']
            _square(ax, centre, rec['r50_of_mean_map'], edgecolor='#7fffd4', linestyle='--', linewidth=1.2)
            _square(ax, centre, rec['r95_of_mean_map'], edgecolor='white', linestyle='-', linewidth=1.2)
            ax.set_xlim(-0.5, mass.shape[1] - 0.5)
            ax.set_ylim(mass.shape[0] - 0.5, -0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.text(0.5, -0.03, f"r50 {rec['r50']:.1f} px   r95 {rec['r95']:.1f} px", transform=ax.transAxes,
                    ha='center', va='top', fontsize=9)
            if r == 0:
                h, w = rec['map_size']
                paper = f" ({rec['paper_name']})" if rec['paper_name'] else ''
                ax.set_title(f'{s}{paper}\n{h}x{w} map, centre unit', fontsize=10)
            if c == 0:
                ax.text(-0.05, 0.5, m['label'].replace('$', r'\$'), transform=ax.transAxes, rotation=90,
                        ha='right', va='center', fontsize=10, fontweight='bold')
    st = result['settings']
    fig.suptitle(f"Effective receptive field of the centre unit of each stage ({st['input_size']} px input, "
                 f"{st['samples']} inputs x {len(st['seeds'])} seed(s))\nsquares around the centre of gravity: "
                 'dashed = 50% of the gradient mass, solid = 95%', fontsize=11, y=1 - 0.08 / height, va='top')
    cax = fig.add_axes([1 - bar / width + 0.15 / width, cap / height + 0.15 * (1 - (top + cap) / height),
                        0.16 / width, 0.7 * (1 - (top + cap) / height)])
    cb = fig.colorbar(image, cax=cax)
    cb.set_label('|gradient| relative to its peak (log scale)', fontsize=9)
    cb.ax.tick_params(labelsize=8)
    return fig


def erf_mass_figure(result: Dict[str, object]):
    """One panel per stage: the fraction of the gradient mass within radius r, one line per model."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    models = result['models']
    stages = list(models[0]['stages'])
    fig = Figure(figsize=(3.4 * len(stages) + 1.6, 3.9), dpi=DPI, layout='constrained')
    axes = [fig.add_subplot(1, len(stages), i + 1) for i in range(len(stages))]
    colours = [colormaps['tab10'](i % 10) for i in range(len(models))]
    for ax, s in zip(axes, stages):
        for m, colour in zip(models, colours):
            radii, cum = mass_profile(m['mass'][s])
            ax.plot(radii, cum, color=colour, linewidth=1.8, label=m['label'].replace('$', r'\$'))
            ax.axvline(m['stages'][s]['r50_of_mean_map'], color=colour, linestyle='--', linewidth=0.8, alpha=0.7)
        for q in FRACTIONS:
            ax.axhline(q, color='0.5', linewidth=0.7, linestyle=':')
        paper = _PAPER.get(s)
        ax.set_title(f'{s}' + (f' ({paper})' if paper else ''), fontsize=10)
        ax.set_xlabel('radius r of the square window (px)')
        ax.set_ylim(0, 1.02)
        ax.set_xlim(0, None)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel('fraction of the gradient mass within r')
    axes[-1].legend(loc='upper left', bbox_to_anchor=(1.02, 1.0), fontsize=9, title='model', title_fontsize=9)
    fig.suptitle('Gradient mass within a radius of the centre (left = more concentrated; dashed: r50)',
                 fontsize=11)
    return fig


def write_erf(result: Dict[str, object], output_dir: Union[str, Path]) -> Dict[str, Path]:
    """``erf.json``, ``erf.png`` (heat maps) and ``erf_mass.png`` (mass within a radius) in ``output_dir``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {'json': output_dir / 'erf.json'}
    paths['json'].write_text(json.dumps(report_json(result), indent=2) + '\n', encoding='utf-8')
    paths['png'] = save_png(erf_figure(result), output_dir / 'erf.png')
    paths['mass_png'] = save_png(erf_mass_figure(result), output_dir / 'erf_mass.png')
    return paths

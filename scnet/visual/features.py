"""The strongest channels of a layer's feature maps, as the paper's Fig. 3 (the last 3x3 conv layer).

For one image and a layer with output ``A`` (C channels of h x w), each channel's strength is the mean
magnitude of its map, ``mean_{positions} |A_c|`` (a channel that responds strongly anywhere, positive or
negative: a conv output before its BN has both signs; after a ReLU it is simply the mean activation). The
``top`` strongest channels are drawn, strongest first, each as ``|A_c|`` divided by its own maximum: overlaid
on the picture (upsampled bilinearly), or alone at the layer's resolution (``overlay=False``, nearest
neighbour, so that the 7x7 grid of the last stage stays visible).

The default layer is the last block's 3x3 convolution (``layer4.-1.conv2``), the paper's choice: an SC-Conv in
the SC models, a plain (or grouped) 3x3 convolution in the baselines. Several models give a row each, for
the paper's side-by-side comparison.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from scnet.errors import ScnetError
from scnet.visual.cam import frozen
from scnet.visual.images import draw_grid, load_image, overlay, resize_map, save_png
from scnet.visual.loading import LoadedModel, as_list, load_models
from scnet.visual.targets import InputError, capture, image_batch, resolve_layer, spatial_output

__all__ = ['DEFAULT_FEATURE_LAYER', 'feature_maps', 'strongest_channels', 'compare_features', 'FEATURE_CELL_INCHES']

DEFAULT_FEATURE_LAYER = 'layer4.-1.conv2'
FEATURE_CELL_INCHES = 1.8


def feature_maps(model: nn.Module, inputs: torch.Tensor, layer: str, *, model_label: str = 'the model'
                 ) -> Tuple[str, torch.Tensor]:
    """``(canonical layer name, (N, C, h, w) output of the layer)`` for ``(N, 3, H, W)`` normalised images (or
    one ``(3, H, W)`` image); the network after the layer is not run."""
    name, _ = resolve_layer(model, layer, model_label)
    x = image_batch(model, inputs, model_label)
    with frozen(model), torch.no_grad(), capture(model, [name], stop_after=name, model_label=model_label) as store:
        model(x)
    return name, spatial_output(store, name, model_label).detach()


def strongest_channels(fmap: torch.Tensor, top: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(channel indices, strengths)`` of the ``top`` channels of ``fmap`` (``(C, h, w)``) with the largest
    mean magnitude, strongest first (ties: lower index first)."""
    if not isinstance(fmap, torch.Tensor) or fmap.dim() != 3:
        shape = tuple(fmap.shape) if isinstance(fmap, torch.Tensor) else type(fmap).__name__
        raise InputError(f'strongest_channels takes one image\'s maps (C, h, w), got {shape}'
                         + ('; for image i of a batch pass fmaps[i]' if isinstance(fmap, torch.Tensor)
                            and fmap.dim() == 4 else ''))
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
        raise InputError(f'top must be a whole number >= 1, got {top!r}')
    strength = fmap.abs().flatten(1).mean(1)
    top = min(int(top), fmap.shape[0])
    order = sorted(range(fmap.shape[0]), key=lambda c: (-float(strength[c]), c))[:top]
    idx = torch.tensor(order, dtype=torch.long)
    return idx, strength[idx]


def _magnitude(fmap: torch.Tensor) -> np.ndarray:
    a = fmap.abs().numpy().astype(np.float64)
    peak = a.max()
    return a / peak if peak > 0 else np.zeros_like(a)


def compare_features(model_specs: Sequence[Union[str, LoadedModel]], image_path: Union[str, Path],
                     output_dir: Union[str, Path], *, layer: Optional[str] = None, top: int = 8,
                     use_overlay: bool = True, image_size: Optional[int] = None, resize: Optional[int] = None,
                     seed: int = 0, alpha: float = 0.6, cmap: str = 'inferno',
                     name: Optional[str] = None) -> Dict[str, object]:
    """The ``top`` strongest channels of ``layer`` for each model on one image: a PNG with a row per model
    (the input crop, then the channels, strongest first) and a JSON of the channel indices and strengths.
    Returns ``{'png', 'json', 'records', 'seconds'}``."""
    import time

    start = time.perf_counter()
    if top < 1:
        raise ScnetError(f'--top must be at least 1, got {top}')
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ScnetError(f'output {output_dir} exists and is not a directory')
    layer = layer or DEFAULT_FEATURE_LAYER
    model_specs = as_list(model_specs)
    models = [m if isinstance(m, LoadedModel) else None for m in model_specs]
    loaded = iter(load_models([s for s in model_specs if not isinstance(s, LoadedModel)], image_size=image_size,
                              resize=resize, seed=seed))
    models = [m if m is not None else next(loaded) for m in models]
    if not models:
        raise ScnetError('no model given')
    for m in models:
        resolve_layer(m.model, layer, m.label)
    image = load_image(image_path)

    cells, captions, row_titles, records = [], [], [], []
    for m in models:
        picture, x = m.preprocessing(image)
        layer_name, fmaps = feature_maps(m.model, x[None], layer, model_label=m.label)
        fmap = fmaps[0]
        idx, strength = strongest_channels(fmap, top)
        mean_strength = float(fmap.abs().mean())
        row = [picture]
        caps = [f'input ({picture.shape[1]}x{picture.shape[0]} crop)\n{layer_name}: {fmap.shape[0]} ch, '
                f'{fmap.shape[1]}x{fmap.shape[2]}']
        for c, s in zip(idx.tolist(), strength.tolist()):
            mag = _magnitude(fmap[c])
            if use_overlay:
                row.append(overlay(picture, mag, alpha=alpha, cmap=cmap))
            else:
                row.append(resize_map(mag, picture.shape[:2], mode='nearest'))
            caps.append(f'ch {c}\nmean |a| {s:.3g} ({s / mean_strength:.1f}x avg)' if mean_strength > 0 else
                        f'ch {c}\nmean |a| {s:.3g}')
        cells.append(row)
        captions.append(caps)
        row_titles.append(m.label)
        records.append({'model': m.name, 'label': m.label, 'weights': m.weights, 'layer': layer_name,
                        'channels': int(fmap.shape[0]), 'map_size': list(fmap.shape[1:]),
                        'input_size': list(picture.shape[:2]), 'mean_abs_activation': mean_strength,
                        'top': [{'channel': c, 'mean_abs': s} for c, s in zip(idx.tolist(), strength.tolist())]})
    n_cols = 1 + max(len(r) - 1 for r in cells)
    random = any(m.weights == 'random' for m in models)
    layers = sorted({r['layer'] for r in records})
    title = (f'Strongest channels of {", ".join(layers)} on {Path(image_path).name} (by mean |activation|)'
             + ('  [random weights]' if random else ''))
    col_titles = ['image'] + [f'#{i + 1}' for i in range(n_cols - 1)]
    fig = draw_grid(cells, title=title, col_titles=col_titles, row_titles=row_titles, captions=captions,
                    colorbar=(cmap, '|activation| / channel max', (0.0, 1.0), None),
                    interpolation='antialiased' if use_overlay else 'nearest', cell_inches=FEATURE_CELL_INCHES)
    stem = name or 'features_' + '_'.join(l.replace('.', '-') for l in layers)  # noqa: E741
    png = save_png(fig, output_dir / f'{stem}.png')
    json_path = output_dir / f'{stem}.json'
    json_path.write_text(json.dumps({'image': str(image_path), 'models': records}, indent=2) + '\n',
                         encoding='utf-8')
    return {'png': png, 'json': json_path, 'records': records, 'seconds': time.perf_counter() - start}

"""Grad-CAM (Selvaraju et al., ICCV 2017), as in the paper's Figs. 1 and 6, and the grid that compares models.

For an image, a class c and a layer with output A (K channels of h x w), Grad-CAM is::

    alpha_k = mean over positions of d y_c / d A_k        (y_c: the class score before the softmax)
    L_c     = ReLU(sum_k alpha_k A_k)                     (h x w), upsampled bilinearly to the input size

and each map is shown divided by its own maximum. c is the predicted class unless one is chosen.

Why our own and not the ``grad-cam`` package (pytorch-grad-cam). The method is the dozen lines of
:func:`grad_cam` below, on the forward hook of :mod:`scnet.visual.targets`; the package would add, for
those lines, opencv-python-headless, scikit-learn, scipy and ttach (several times the size of this package's
other dependencies beyond torch, and published only as a source archive that pip has to build) to a library whose
other dependencies are torch, timm and matplotlib, and to every CI run. We checked our maps against grad-cam
1.5.7 (``GradCAM`` on ``layer4`` of resnet50 and scnet50, same images, same classes): they agree to float
precision (a one-off check, not part of the tests), so nothing is lost. What this module does that the package does not:
parameters are not differentiated (only activations, so backward does less work), the hooked
output is protected from the in-place ReLU that follows it in timm's blocks, and a layer that is not a
spatial map, or runs twice, is refused with a clear message instead of giving a wrong picture.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from scnet.errors import ScnetError

from scnet.visual.images import CELL_INCHES, draw_grid, load_image, overlay, save_png
from scnet.visual.loading import LoadedModel, as_list, load_models
from scnet.visual.targets import (STAGE_ALIASES, capture, check_differentiable, image_batch, resolve_layer,
                                  spatial_output)

__all__ = ['ClassMaps', 'grad_cam', 'frozen', 'target_classes', 'cam_figure', 'compare_models', 'DEFAULT_CAM_LAYER']

#: The last stage, the usual Grad-CAM layer (the last convolutional features before pooling).
DEFAULT_CAM_LAYER = 'layer4'
_BATCH = 8


@dataclass
class ClassMaps:
    """Per-image maps of a class's evidence, and what the network said about the images."""

    maps: torch.Tensor        # (N, H, W) at the input's resolution, each in [0, 1] (divided by its maximum)
    raw: torch.Tensor         # (N, h, w) at the layer's resolution, before normalisation
    classes: torch.Tensor     # (N,) the class each map is about
    probs: torch.Tensor       # (N,) softmax probability of that class
    predicted: torch.Tensor   # (N,) the top class
    predicted_probs: torch.Tensor
    layer: str


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Parameters out of autograd (and the model in eval mode) for the block; both restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        model.eval()
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def target_classes(classes, logits: torch.Tensor) -> torch.Tensor:
    """The class of each image: ``classes`` (one for all, or one per image) checked against the logits, else the
    top class."""
    from scnet.visual.loading import ClassError

    n, k = logits.shape
    predicted = logits.argmax(1)
    if classes is None:
        return predicted
    values = classes.reshape(-1).tolist() if isinstance(classes, (torch.Tensor, np.ndarray)) else (
        list(classes) if isinstance(classes, (list, tuple, range)) else [classes])
    if not values or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        raise ClassError(f'classes must be class indices (an int, or one per image), got {classes!r}; for a class '
                         'name use LoadedModel.resolve_class(name)')
    t = torch.as_tensor(values, dtype=torch.long, device=logits.device)
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise ClassError(f'{t.numel()} classes given for {n} images: give one class for all, or one per image')
    if (t < 0).any() or (t >= k).any():
        raise ClassError(f'class {t.tolist()} out of range: the model has {k} classes (0-{k - 1})')
    return t


def normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    """Each ``(H, W)`` map divided by its maximum (a map without positive values stays 0)."""
    peak = maps.flatten(1).amax(1).clamp_min(0)[:, None, None]
    return torch.where(peak > 0, maps.clamp_min(0) / peak.clamp_min(1e-30), torch.zeros_like(maps))


def grad_cam(model: nn.Module, inputs: torch.Tensor, layer: str = DEFAULT_CAM_LAYER,
             classes: Union[None, int, Sequence[int], torch.Tensor] = None, *,
             model_label: str = 'the model') -> ClassMaps:
    """Grad-CAM of ``model`` (any classifier whose forward gives ``(N, classes)`` logits) at ``layer``.

    Args:
        inputs: ``(N, 3, H, W)`` normalised images (or one ``(3, H, W)`` image), moved to the model's device
            and dtype. Images do not interact (the model runs in eval mode).
        layer: module name (``layer4``, ``layer4.-1.conv2``, ``res5``: see :mod:`scnet.visual.targets`).
        classes: the class to explain, one for all images or one per image; None: each image's top class.
    """
    check_differentiable(model, 'Grad-CAM', model_label)
    name, _ = resolve_layer(model, layer, model_label)
    x = image_batch(model, inputs, model_label)
    with frozen(model), torch.enable_grad(), capture(model, [name], model_label=model_label) as store:
        x.requires_grad_(True)  # activations need a graph; parameters do not
        logits = model(x)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            raise ValueError(f'{model_label}: Grad-CAM needs (N, classes) logits, got '
                             f'{getattr(logits, "shape", type(logits).__name__)}')
        act = spatial_output(store, name, model_label)
        target = target_classes(classes, logits)
        score = logits.gather(1, target[:, None]).sum()
        grads, = torch.autograd.grad(score, act)
    with torch.no_grad():
        weights = grads.mean(dim=(2, 3), keepdim=True)
        raw = F.relu((weights * act).sum(1))
        up = F.interpolate(raw[:, None], size=x.shape[-2:], mode='bilinear', align_corners=False)[:, 0]
        probs = logits.softmax(1)
        predicted = probs.argmax(1)
    return ClassMaps(maps=normalise_maps(up), raw=raw.detach(), classes=target.detach(),
                     probs=probs.gather(1, target[:, None])[:, 0], predicted=predicted,
                     predicted_probs=probs.gather(1, predicted[:, None])[:, 0], layer=name)


# ------------------------------------------------------------------------------------------------ figures

def _percent(p: float) -> str:
    p = 100.0 * float(p)
    return f'{p:.0f}%' if p >= 10 else f'{p:.1f}%' if p >= 0.1 else f'{p:.2g}%'


def _fit(text: str, limit: int = 30) -> str:
    return text if len(text) <= limit else text[:limit - 1] + '…'


def caption(m: LoadedModel, result: ClassMaps, i: int, chosen: bool, prefix: str = '') -> str:
    """Two lines under a cell: the class the map is about, and the prediction."""
    cls, pred = int(result.classes[i]), int(result.predicted[i])
    if not chosen or cls == pred:
        line = f'{prefix}pred: {_fit(m.class_label(pred))}  {_percent(result.predicted_probs[i])}'
        return line if not chosen else line + '\n(the chosen class)'
    return (f'{prefix}class: {_fit(m.class_label(cls))}  {_percent(result.probs[i])}\n'
            f'pred: {_fit(m.class_label(pred))}  {_percent(result.predicted_probs[i])}')


def cam_figure(pictures: Sequence[np.ndarray], image_names: Sequence[str], columns: Sequence[dict], *,
               title: str, colorbar_label: str, alpha: float = 0.5, cmap: str = 'jet',
               ticks: Sequence[str] = ('0 (none)', '0.25', '0.5', '0.75', '1 (max)')):
    """The comparison grid: a row per image, the input crop first, then a column per model.

    ``columns``: dicts with ``title``, ``pictures`` (the crop each model saw, one per image), ``maps`` (one
    ``(H, W)`` array in [0, 1] per image) and ``captions``.
    """
    cells, captions = [], []
    for r, picture in enumerate(pictures):
        row = [picture] + [overlay(c['pictures'][r], c['maps'][r], alpha=alpha, cmap=cmap) for c in columns]
        cells.append(row)
        h, w = picture.shape[:2]
        captions.append([f'input ({w}x{h} crop)'] + [c['captions'][r] for c in columns])
    return draw_grid(cells, title=title, col_titles=['image'] + [c['title'] for c in columns],
                     row_titles=list(image_names), captions=captions,
                     colorbar=(cmap, colorbar_label, (0.0, 1.0), list(ticks)))


def _stage_note(layer: str) -> str:
    alias = {v: k for k, v in STAGE_ALIASES.items()}.get(layer)
    return f'{layer} ({alias})' if alias else layer


def _batched(fn: Callable[[torch.Tensor], ClassMaps], x: torch.Tensor) -> ClassMaps:
    parts = [fn(x[i:i + _BATCH]) for i in range(0, len(x), _BATCH)]
    return ClassMaps(*(torch.cat([getattr(p, f) for p in parts]) for f in
                       ('maps', 'raw', 'classes', 'probs', 'predicted', 'predicted_probs')), layer=parts[0].layer)


def compare_models(model_specs: Sequence[Union[str, LoadedModel]], image_paths: Sequence[Union[str, Path]],
                   output_dir: Union[str, Path], *, layer: Optional[str] = None, target_class: Optional[str] = None,
                   side_output: bool = False, image_size: Optional[int] = None, resize: Optional[int] = None,
                   seed: int = 0, alpha: float = 0.5, cmap: str = 'jet',
                   name: Optional[str] = None) -> Dict[str, object]:
    """Grad-CAM (or, with ``side_output``, the res3 side-output score maps) of each model on each image,
    as one PNG grid (a row per image, a column per model) and a JSON record of classes, probabilities and
    where each map peaks. Everything is checked (models, layer, class, images) before anything is computed.

    Returns ``{'png': path, 'json': path, 'records': [...], 'seconds': ...}``.
    """
    import time

    start = time.perf_counter()
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ScnetError(f'output {output_dir} exists and is not a directory')
    model_specs, image_paths = as_list(model_specs), as_list(image_paths)
    if not model_specs:
        raise ValueError('no model given')
    if not image_paths:
        raise ValueError('no image given')
    models = [m if isinstance(m, LoadedModel) else None for m in model_specs]
    specs = [s for s in model_specs if not isinstance(s, LoadedModel)]
    loaded = iter(load_models(specs, image_size=image_size, resize=resize, seed=seed))
    models = [m if m is not None else next(loaded) for m in models]
    images = [load_image(p) for p in image_paths]  # every image checked before any model runs
    names = [Path(p).name for p in image_paths]

    heads = {}
    if side_output:
        from scnet.visual.side_output import SIDE_LAYER, load_side_head, side_output_maps
        heads = {id(m): load_side_head(m) for m in models}
        layer_name = SIDE_LAYER
    else:
        layer_name = layer or DEFAULT_CAM_LAYER
        for m in models:  # an unknown layer fails here, before any forward pass
            resolve_layer(m.model, layer_name, m.label)
    classes = {id(m): (m.resolve_class(target_class) if target_class is not None else None) for m in models}

    columns, records = [], [{'image': str(p), 'models': {}} for p in image_paths]
    first_pictures = None
    for m in models:
        prepared = [m.preprocessing(img) for img in images]
        pictures = [p for p, _ in prepared]
        x = torch.stack([t for _, t in prepared])
        if first_pictures is None:
            first_pictures = pictures
        if side_output:
            result = _batched(lambda b: side_output_maps(m, heads[id(m)], b, classes[id(m)]), x)
        else:
            result = _batched(lambda b: grad_cam(m.model, b, layer_name, classes[id(m)], model_label=m.label), x)
        chosen = target_class is not None
        prefix = 'side ' if side_output else ''
        captions = [caption(m, result, i, chosen, prefix) for i in range(len(images))]
        captions = [c + ('\n(no positive evidence: blank map)' if float(result.maps[i].max()) <= 0 else '')
                    for i, c in enumerate(captions)]
        columns.append({'title': m.label, 'pictures': pictures, 'maps': [mp.numpy() for mp in result.maps],
                        'captions': captions})
        for i, rec in enumerate(records):
            mp = result.maps[i]
            peak = divmod(int(mp.argmax()), mp.shape[1])
            rec['models'][m.label] = {
                'model': m.name, 'weights': m.weights, 'checkpoint': str(m.checkpoint) if m.checkpoint else None,
                'layer': result.layer, 'class': int(result.classes[i]), 'class_name': m.class_label(result.classes[i],
                                                                                                  short=False),
                'prob': float(result.probs[i]), 'predicted': int(result.predicted[i]),
                'predicted_name': m.class_label(result.predicted[i], short=False),
                'predicted_prob': float(result.predicted_probs[i]),
                'map_size': list(result.raw.shape[-2:]), 'input_size': list(mp.shape),
                'peak_yx': [peak[0], peak[1]], 'peak_relative_yx': [round((peak[0] + 0.5) / mp.shape[0], 4),
                                                                     round((peak[1] + 0.5) / mp.shape[1], 4)],
                'empty': bool(float(mp.max()) <= 0.0)}

    random = [m.label for m in models if m.weights == 'random']
    note = '  [random weights]' if len(random) == len(models) else (
        f'  [random weights: {", ".join(random)}]' if random else '')
    if side_output:
        title = f'res3 side-output score maps (layer2){note}'
        bar = 'score of the class at res3 (each map: min to max)'
    else:
        title = f'Grad-CAM at {_stage_note(layer_name)}{note}'
        bar = 'Grad-CAM (each map divided by its max)'
    ticks = ('0 (min)', '0.25', '0.5', '0.75', '1 (max)') if side_output else ('0 (none)', '0.25', '0.5', '0.75',
                                                                                '1 (max)')
    fig = cam_figure(first_pictures, names, columns, title=title, colorbar_label=bar, alpha=alpha, cmap=cmap,
                     ticks=ticks)
    stem = name or ('side_output' if side_output else 'gradcam')
    png = save_png(fig, output_dir / f'{stem}.png')
    report = {'method': 'side-output' if side_output else 'grad-cam', 'layer': layer_name,
              'class': target_class, 'images': records}
    json_path = output_dir / f'{stem}.json'
    json_path.write_text(json.dumps(report, indent=2) + '\n', encoding='utf-8')
    return {'png': png, 'json': json_path, 'records': records, 'seconds': time.perf_counter() - start,
            'grid': (len(images), len(models) + 1), 'cell_inches': CELL_INCHES}

"""A small COCO-format detection and instance-segmentation set of rendered shapes, made in seconds on a CPU.

Each image is low-intensity noise with one to ``max_objects`` shapes of three categories (``square``,
``disc``, ``triangle``) of random size, colour and place, never overlapping, so every object is fully visible
and its polygon is exactly its mask. The files are what a real COCO set looks like on disk::

    ROOT/train/000000.png ...    ROOT/instances_train.json
    ROOT/val/000000.png ...      ROOT/instances_val.json

with ``images`` (id, file_name, width, height), ``categories`` (id, name, supercategory) and ``annotations``
(id, image_id, category_id, bbox ``[x, y, w, h]``, polygon ``segmentation``, polygon ``area``, ``iscrowd`` 0).
The same ``seed`` gives the same files, byte for byte. ``scnet detect shapes DIR`` writes one from the shell.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw

__all__ = ['SHAPES', 'ShapesPaths', 'make_shapes_coco', 'dataset_files_held']

#: Category names, in category-id order (ids start at 1, as COCO's do).
SHAPES = ('square', 'disc', 'triangle')
_DISC_VERTICES = 32


@dataclass(frozen=True)
class ShapesPaths:
    """Where ``make_shapes_coco`` put the two splits (the four arguments ``scnet detect train`` takes)."""

    root: Path
    train_ann: Path
    train_images: Path
    val_ann: Path
    val_images: Path

    def cli_args(self) -> List[str]:
        """``--train-ann .. --train-images .. --val-ann .. --val-images ..`` for ``scnet detect train``."""
        return ['--train-ann', str(self.train_ann), '--train-images', str(self.train_images),
                '--val-ann', str(self.val_ann), '--val-images', str(self.val_images)]


def _polygon(kind: str, cx: float, cy: float, size: float, angle: float) -> List[Tuple[float, float]]:
    """Vertices of a shape of width ``size`` centred at (cx, cy)."""
    r = size / 2
    if kind == 'square':
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if kind == 'disc':
        step = 2 * math.pi / _DISC_VERTICES
        return [(cx + r * math.cos(step * k), cy + r * math.sin(step * k)) for k in range(_DISC_VERTICES)]
    # an equilateral triangle inscribed in the circle of radius r, turned by ``angle``
    return [(cx + r * math.cos(angle + 2 * math.pi * k / 3), cy + r * math.sin(angle + 2 * math.pi * k / 3))
            for k in range(3)]


def _area(points: List[Tuple[float, float]]) -> float:
    """Shoelace area of a simple polygon."""
    return 0.5 * abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1])))


def _render(rng: np.random.Generator, size: int, min_object: int, max_object: int, max_objects: int):
    """One image and its objects ``[(category index, polygon), ...]``."""
    pixels = rng.integers(0, 90, size=(size, size, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    placed: List[Tuple[float, float, float]] = []
    objects = []
    wanted = int(rng.integers(1, max_objects + 1))
    for _ in range(wanted * 20):  # rejection sampling of non-overlapping discs that bound the shapes
        if len(objects) == wanted:
            break
        s = float(rng.uniform(min_object, max_object))
        cx, cy = (float(v) for v in rng.uniform(s / 2 + 1, size - s / 2 - 1, size=2))
        if any(math.hypot(cx - x, cy - y) < (s + t) / 2 * 1.45 + 2 for x, y, t in placed):
            continue
        kind = int(rng.integers(len(SHAPES)))
        angle = float(rng.uniform(0, 2 * math.pi))
        colour = tuple(int(c) for c in rng.integers(120, 256, size=3))
        points = _polygon(SHAPES[kind], cx, cy, s, angle)
        draw.polygon(points, fill=colour)
        placed.append((cx, cy, s))
        objects.append((kind, points))
    return image, objects


def _split(root: Path, split: str, count: int, rng: np.random.Generator, size: int, min_object: int,
           max_object: int, max_objects: int) -> Dict:
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(count):
        image, objects = _render(rng, size, min_object, max_object, max_objects)
        name = f'{i:06d}.png'
        image.save(folder / name)
        images.append({'id': i + 1, 'file_name': name, 'width': size, 'height': size})
        for kind, points in objects:
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            x0, y0, x1, y1 = max(0.0, min(xs)), max(0.0, min(ys)), min(float(size), max(xs)), min(float(size), max(ys))
            annotations.append({
                'id': len(annotations) + 1, 'image_id': i + 1, 'category_id': kind + 1,
                'bbox': [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                'segmentation': [[round(v, 2) for p in points for v in p]],
                'area': round(_area(points), 2), 'iscrowd': 0})
    return {'info': {'description': f'scnet rendered shapes ({split})'}, 'images': images,
            'annotations': annotations,
            'categories': [{'id': k + 1, 'name': n, 'supercategory': 'shape'} for k, n in enumerate(SHAPES)]}


def make_shapes_coco(root, *, num_train: int = 64, num_val: int = 16, image_size: int = 128, seed: int = 0,
                     min_object: Optional[int] = None, max_object: Optional[int] = None,
                     max_objects: int = 4) -> ShapesPaths:
    """Write the shapes set under ``root`` (see the module docstring) and return where its parts are.

    Objects are ``min_object``..``max_object`` pixels wide (default: 12% to 40% of ``image_size``).
    """
    if image_size < 32:
        raise ValueError(f'image_size must be at least 32, got {image_size}')
    if num_train < 1 or num_val < 1:
        raise ValueError('num_train and num_val must be at least 1')
    lo = min_object or max(6, round(0.12 * image_size))
    hi = max_object or max(lo + 1, round(0.40 * image_size))
    root = Path(root)
    rng = np.random.default_rng(seed)
    paths = ShapesPaths(root, root / 'instances_train.json', root / 'train', root / 'instances_val.json',
                        root / 'val')
    for split, count, ann in (('train', num_train, paths.train_ann), ('val', num_val, paths.val_ann)):
        data = _split(root, split, count, rng, image_size, lo, hi, max_objects)
        ann.write_text(json.dumps(data))
    return paths


def dataset_files_held(root: Path, annotation_files: List[str]) -> List[str]:
    """The names of what a COCO-style set in ``root`` would be written over: its annotation files, and its
    ``train/`` and ``val/`` image folders when they hold anything. The commands that write a generated set
    refuse such a folder, since the new files would replace some of the old ones and sit beside the rest."""
    root = Path(root)
    held = [name for name in annotation_files if (root / name).exists()]
    return held + [name for name in ('train', 'val') if (root / name).is_dir() and any((root / name).iterdir())]

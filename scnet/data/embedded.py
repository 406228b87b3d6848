"""The embedded default dataset of ``scnet train``: shape outlines among look-alike strokes, generated offline.

Each 32 x 32 image shows the outline of one shape (the class: circle, cross, heart, hexagon, pentagon, square,
star, triangle) at a random position, size, rotation and aspect, drawn in dark ink on light paper (random tints,
a smooth shading field, pixel noise), together with 2-4 *distractor strokes*: short segments, arcs and corners
drawn with the same pen (same width, same ink) anywhere in the image. Every local piece an outline is made of
(a straight stroke, a curved stroke, a corner) therefore also appears, at random places, in the clutter of every
class, and all strokes have the same width: a 3x3 or 7x7 patch does not tell the classes apart. What does is
the arrangement of strokes over most of the image (a closed outline spans 50-90 % of it: how many corners it
has and how they sit), so a network must integrate over a large receptive field, the property self-calibrated
convolutions are about.

No class-specific shortcut: ink, paper, noise, stroke width, size (circumradius), position, rotation, aspect and
clutter come from the same distributions for every class, and the classes are balanced. The one global
statistic that carries a little class information is the amount of ink (an outline's perimeter at a given
circumradius ranges from 5.2 radii for the triangle to 7.6 for the cross); on the default dataset a
nearest-centroid classifier on the spread of intensity (a proxy of it) does barely better than chance, and on
mean colour or intensity it is at chance (``tests/test_embedded.py`` checks both).

Strokes are about 2 px wide: with 1 px strokes, networks that down-sample with strided convolutions (every
ResNet of the zoo) alias the strokes away and stay at chance for hundreds of steps, while max-pooling networks
learn; 2 px strokes, drawn at 4x and box-filtered, keep the task about shape rather than about sampling phase.

``build_embedded_dataset(root)`` writes ``root/{train,val}/<class>/NNNNN.png`` (torchvision ``ImageFolder``
layout, so the real data pipeline reads it) and ``root/dataset.json``. It is deterministic (one random stream
per image, derived from ``(seed, split, index)``: the same bytes however many processes draw them, and a
split's images do not depend on the other split's size). The default, 1,250 training and 200 validation
images per class (11,600), is what the embedded recipe needs to learn the task in two epochs; it is drawn by one
forked process per core (Linux; one process elsewhere), and a build prints how long it expects to take,
measured on its first images.
It is safe against interruption: the dataset is written into a temporary sibling folder that is renamed into
place only when complete, so a folder with a matching ``dataset.json`` and exactly the expected files is
complete and is reused untouched; anything else is rebuilt.
"""
from __future__ import annotations

import concurrent.futures
import json
import math
import multiprocessing
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

import numpy as np
from PIL import Image, ImageDraw

__all__ = ['EMBEDDED_NAME', 'GENERATOR_VERSION', 'CLASSES', 'DEFAULT_IMAGE_SIZE', 'DEFAULT_TRAIN_PER_CLASS',
           'DEFAULT_VAL_PER_CLASS', 'DEFAULT_SEED', 'default_root', 'DEFAULT_ROOT', 'build_embedded_dataset',
           'render_image', 'read_description', 'is_complete']

#: Name of the dataset, recorded in ``dataset.json``.
EMBEDDED_NAME = 'scnet-shapes'
#: Bumped whenever the images a given seed produces change; a folder of another version is regenerated.
GENERATOR_VERSION = 2
#: The classes, in ``ImageFolder`` (sorted) order.
CLASSES = ('circle', 'cross', 'heart', 'hexagon', 'pentagon', 'square', 'star', 'triangle')
DEFAULT_IMAGE_SIZE = 32
DEFAULT_TRAIN_PER_CLASS = 1250
DEFAULT_VAL_PER_CLASS = 200
DEFAULT_SEED = 0

_SPLITS = ('train', 'val')
_SUPERSAMPLE = 4          # strokes are drawn at 4x and box-filtered down: anti-aliased, sub-pixel widths
_CURVE_POINTS = 48        # every outline, circles included, is one polyline drawn by the same pen
_DISTRACTORS = (2, 5)     # distractor strokes per image: integers in [low, high)
_PEN_WIDTH = (1.6, 2.4)   # stroke width in pixels of the final image (thinner strokes alias in strided nets)
_TIMED_IMAGES = 64        # images timed before a build announces how long it will take
_CHUNK = 250              # images a generation process writes per task
_PARALLEL_FROM = 2000     # builds of fewer images run in one process (forking would cost more than it saves)


def default_root() -> Path:
    """``$SCNET_CACHE/datasets/<name>`` if ``$SCNET_CACHE`` is set, else ``~/.cache/scnet/datasets/<name>``."""
    base = os.environ.get('SCNET_CACHE')
    root = Path(base) if base else Path.home() / '.cache' / 'scnet'
    return root / 'datasets' / EMBEDDED_NAME


#: Where ``scnet train`` without ``--data`` puts the dataset (evaluated at import; call ``default_root()``
#: to honour a later change of ``$SCNET_CACHE``).
DEFAULT_ROOT = default_root()


# ----------------------------------------------------------------------------------------------------- shapes
def _polygon(n: int) -> np.ndarray:
    a = np.arange(n) * (2 * math.pi / n) + math.pi / 2
    return np.stack([np.cos(a), np.sin(a)], 1)


def _star(rng: np.random.Generator) -> np.ndarray:
    inner = rng.uniform(0.38, 0.5)
    a = np.arange(10) * (math.pi / 5) + math.pi / 2
    r = np.where(np.arange(10) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(a), r * np.sin(a)], 1)


def _cross(rng: np.random.Generator) -> np.ndarray:
    w = rng.uniform(0.28, 0.38)               # half-width of the arms; arm ends touch the unit circle
    e = math.sqrt(1 - w * w)
    pts = [(w, e), (w, w), (e, w), (e, -w), (w, -w), (w, -e), (-w, -e), (-w, -w), (-e, -w), (-e, w), (-w, w),
           (-w, e)]
    return np.array(pts, dtype=np.float64)


def _heart(rng: np.random.Generator) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, _CURVE_POINTS, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    pts = np.stack([x, -y], 1)
    pts -= (pts.max(0) + pts.min(0)) / 2
    return pts / np.linalg.norm(pts, axis=1).max()


def _unit_outline(cls: str, rng: np.random.Generator) -> np.ndarray:
    """The closed outline of ``cls`` as vertices inside the unit circle, touching it."""
    if cls == 'circle':
        return _polygon(_CURVE_POINTS)
    if cls == 'triangle':
        return _polygon(3)
    if cls == 'square':
        return _polygon(4)
    if cls == 'pentagon':
        return _polygon(5)
    if cls == 'hexagon':
        return _polygon(6)
    if cls == 'star':
        return _star(rng)
    if cls == 'cross':
        return _cross(rng)
    if cls == 'heart':
        return _heart(rng)
    raise ValueError(f'unknown class {cls!r}')


# -------------------------------------------------------------------------------------------------- rendering
def _distractor(rng: np.random.Generator, size: float) -> List[np.ndarray]:
    """A short stroke anywhere: a segment, an arc or a corner (the local pieces every outline is made of)."""
    kind = rng.integers(3)
    length = rng.uniform(0.15, 0.3) * size
    start = rng.uniform(0, size, 2)
    heading = rng.uniform(0, 2 * math.pi)
    if kind == 0:                                   # segment
        end = start + length * np.array([math.cos(heading), math.sin(heading)])
        return [np.stack([start, end])]
    if kind == 1:                                   # arc of a circle, as curved as the outlines' curves
        radius = rng.uniform(0.2, 0.45) * size
        span = length / radius
        a = heading + np.linspace(0, span, 8)
        centre = start - radius * np.array([math.cos(heading), math.sin(heading)])
        return [centre + radius * np.stack([np.cos(a), np.sin(a)], 1)]
    angle = rng.uniform(math.radians(30), math.radians(150))   # corner: two segments meeting at a vertex
    d1 = np.array([math.cos(heading), math.sin(heading)])
    d2 = np.array([math.cos(heading + angle), math.sin(heading + angle)])
    return [np.stack([start + d1 * length / 2, start, start + d2 * length / 2])]


def render_image(cls: str, rng: np.random.Generator, size: int = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """One ``size`` x ``size`` RGB uint8 image of class ``cls``, drawn with ``rng``."""
    s = _SUPERSAMPLE
    # the outline: circumradius, centre (fully inside the image), rotation, aspect, all class-independent
    radius = rng.uniform(0.26, 0.44) * size
    aspect = math.exp(rng.uniform(-0.15, 0.15))
    rot = rng.uniform(0, 2 * math.pi)
    pts = _unit_outline(cls, rng) * np.array([aspect, 1 / aspect])
    c, sn = math.cos(rot), math.sin(rot)
    pts = pts @ np.array([[c, sn], [-sn, c]]) * radius
    margin = 1.0
    pts *= min(1.0, 0.999 * (size - 2 * margin) / float((pts.max(0) - pts.min(0)).max()))   # always fits
    lo, hi = pts.min(0), pts.max(0)
    centre = np.array([rng.uniform(margin - lo[i], size - margin - hi[i]) for i in range(2)])
    strokes = [np.concatenate([pts, pts[:1]]) + centre]
    strokes += [p for _ in range(rng.integers(*_DISTRACTORS)) for p in _distractor(rng, size)]
    # one pen for everything: same width, same colour
    width = rng.uniform(*_PEN_WIDTH) * s
    canvas = Image.new('L', (size * s, size * s), 0)
    draw = ImageDraw.Draw(canvas)
    for p in strokes:
        draw.line([tuple(q) for q in (p * s).tolist()], fill=255, width=max(1, round(width)), joint='curve')
    alpha = np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.float32)[..., None] / 255.0
    # ink on paper: a light, slightly tinted paper with a smooth shading field, a dark, slightly tinted ink
    paper = rng.uniform(0.62, 0.95) + rng.normal(0, 0.04, 3)
    ink = rng.uniform(0.0, 0.35) + rng.normal(0, 0.06, 3)
    grid = np.clip(paper + rng.normal(0, 0.06, (3, 3, 3)), 0, 1).astype(np.float32)
    field = np.asarray(Image.fromarray((grid * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR),
                       dtype=np.float32) / 255.0
    pen = np.clip(ink, 0, 1)
    img = field * (1 - alpha) + pen.astype(np.float32) * alpha
    img += rng.normal(0, rng.uniform(0.02, 0.08), img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLITS.index(split), index])


# ----------------------------------------------------------------------------------------------- the folder
def _description(seed: int, train_per_class: int, val_per_class: int, image_size: int) -> Dict:
    return {
        'name': EMBEDDED_NAME,
        'generator_version': GENERATOR_VERSION,
        'task': 'name the shape whose outline is drawn among distractor strokes of the same pen',
        'classes': list(CLASSES),
        'image_size': image_size,
        'channels': 3,
        'format': 'png',
        'seed': seed,
        'train_per_class': train_per_class,
        'val_per_class': val_per_class,
        'counts': {'train': train_per_class * len(CLASSES), 'val': val_per_class * len(CLASSES)},
        'layout': '<split>/<class>/NNNNN.png',
    }


def read_description(root: Union[str, Path]) -> Optional[Dict]:
    """The ``dataset.json`` of ``root``, or None when it is missing or unreadable."""
    try:
        with open(Path(root) / 'dataset.json', encoding='utf-8') as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_complete(root: Union[str, Path], description: Dict) -> bool:
    """Whether ``root`` holds exactly the dataset ``description`` describes (its json and every file)."""
    root = Path(root)
    found = read_description(root)
    if found is None or {k: v for k, v in found.items() if k != 'created'} != description:
        return False
    expected = {'train': description['train_per_class'], 'val': description['val_per_class']}
    try:
        for split, n in expected.items():
            if sorted(p.name for p in (root / split).iterdir()) != sorted(CLASSES):
                return False
            names = {f'{i:05d}.png' for i in range(n)}
            if any({p.name for p in (root / split / cls).iterdir()} != names for cls in CLASSES):
                return False
    except OSError:             # a split or class that is missing or not a folder
        return False
    return True


def _write_range(folder: Path, split: str, ci: int, per_class: int, first: int, stop: int, seed: int,
                 size: int) -> int:
    """Render and write images ``first .. stop - 1`` of class ``ci`` of ``split``; returns how many."""
    cls = CLASSES[ci]
    for j in range(first, stop):
        arr = render_image(cls, _image_rng(seed, split, ci * per_class + j), size)
        Image.fromarray(arr).save(folder / split / cls / f'{j:05d}.png', compress_level=1)
    return stop - first


def _generation_processes(images: int) -> int:
    """Processes that share a build: one per usable core (at most 8), forked (Linux only), for large builds."""
    if images < _PARALLEL_FROM or not sys.platform.startswith('linux'):
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def _write_images(folder: Path, counts: Dict[str, int], seed: int, size: int,
                  report: Optional[Callable[[str], None]], destination: Path) -> None:
    """Render and write every image; ``report`` hears the expected time after the first few, and the end.

    Every image depends only on ``(seed, split, index)``, so how the work is shared does not change a byte:
    the first images are drawn here (and timed, for the expected time), the rest in chunks by one forked
    process per core. Forked workers run only NumPy and PIL, never PyTorch.
    """
    total = sum(counts.values()) * len(CLASSES)
    start = time.perf_counter()
    chunks = []                                     # (split, class index, per_class, first, stop)
    for split, per_class in counts.items():
        for ci, cls in enumerate(CLASSES):
            (folder / split / cls).mkdir(parents=True)
            chunks += [(split, ci, per_class, j, min(j + _CHUNK, per_class)) for j in range(0, per_class, _CHUNK)]
    # the first chunk's first images, timed after a few untimed ones (first calls cost more): how long a build
    # takes on this machine
    split, ci, per_class, first, stop = chunks[0]
    untimed = min(8, stop - first)
    timed = min(_TIMED_IMAGES, stop - first - untimed)
    _write_range(folder, split, ci, per_class, first, first + untimed, seed, size)
    lap = time.perf_counter()
    _write_range(folder, split, ci, per_class, first + untimed, first + untimed + timed, seed, size)
    done = untimed + timed
    chunks[0] = (split, ci, per_class, first + done, stop)
    processes = _generation_processes(total)
    if report is not None:
        now = time.perf_counter()
        per_image = (now - lap) / max(1, timed)
        expected = now - start + per_image * (total - done) / processes
        report(f'building the embedded dataset: {total:,} images of {size} px into {destination} '
               f'(expected {expected:.1f} s on this machine, {processes} process{"es" if processes > 1 else ""})')
    if processes == 1:
        for chunk in chunks:
            _write_range(folder, *chunk, seed, size)
    else:
        context = multiprocessing.get_context('fork')
        with concurrent.futures.ProcessPoolExecutor(processes, mp_context=context) as pool:
            jobs = [pool.submit(_write_range, folder, *chunk, seed, size) for chunk in chunks]
            for job in concurrent.futures.as_completed(jobs):
                job.result()                        # a worker's error stops the build (and removes tmp)
    if report is not None:
        report(f'built the embedded dataset in {time.perf_counter() - start:.1f} s')


_IMAGE_NAME = re.compile(r'\d{5}\.png')


def _foreign_entries(path: Path) -> List[str]:
    """What in ``path`` an embedded dataset (complete or not, of any parameters) would not hold: entries other
    than ``train``, ``val`` and ``dataset.json``, class folders other than the shapes', files other than
    ``NNNNN.png``. A user's own ImageFolder set has the same top-level names, so the class folders and file
    names are what tell them apart."""
    foreign = [p.name for p in path.iterdir() if p.name not in ('train', 'val', 'dataset.json')]
    for split in ('train', 'val'):
        folder = path / split
        if not folder.exists():
            continue
        if not folder.is_dir():
            foreign.append(split)
            continue
        for cls in folder.iterdir():
            if cls.name not in CLASSES or not cls.is_dir():
                foreign.append(f'{split}/{cls.name}')
                continue
            foreign += [f'{split}/{cls.name}/{f.name}' for f in cls.iterdir() if not _IMAGE_NAME.fullmatch(f.name)]
    description = read_description(path) if (path / 'dataset.json').exists() else None
    if (path / 'dataset.json').exists() and not (isinstance(description, dict)
                                                and description.get('name') == EMBEDDED_NAME):
        foreign.append('dataset.json')
    return sorted(foreign)


def _refuse_foreign_folder(path: Path) -> None:
    """A ``FileExistsError`` unless ``path`` holds nothing but (parts of) an embedded dataset."""
    foreign = _foreign_entries(path)
    if foreign:
        shown = ', '.join(foreign[:3]) + (f' and {len(foreign) - 3} more' if len(foreign) > 3 else '')
        raise FileExistsError(f'{path} is not an embedded dataset folder (it holds {shown}); refusing to replace '
                              'it: pass another root or empty it')


def _remove_dataset_folder(path: Path) -> None:
    """Delete a folder only if it holds nothing but (parts of) an embedded dataset."""
    _refuse_foreign_folder(path)
    shutil.rmtree(path)


def build_embedded_dataset(root: Union[str, Path, None] = None, *, seed: int = DEFAULT_SEED,
                           train_per_class: int = DEFAULT_TRAIN_PER_CLASS,
                           val_per_class: int = DEFAULT_VAL_PER_CLASS,
                           image_size: int = DEFAULT_IMAGE_SIZE,
                           report: Optional[Callable[[str], None]] = None) -> Path:
    """Write the embedded dataset to ``root`` (default ``default_root()``) unless it is already there; return root.

    A complete folder with the same ``dataset.json`` is reused untouched. Anything else at ``root`` that is an
    (incomplete, older, other-parameter) embedded dataset is replaced; a folder holding other files is refused.
    ``report`` (e.g. ``print``), when a build is needed, receives a line with its expected time (measured on
    the first images) and one with its actual time.
    """
    root = Path(root).expanduser() if root is not None else default_root()
    for name, v, least in (('train_per_class', train_per_class, 1), ('val_per_class', val_per_class, 1),
                           ('image_size', image_size, 8)):
        if int(v) != v or v < least:
            raise ValueError(f'{name} must be an integer >= {least}, got {v!r}')
    description = _description(int(seed), int(train_per_class), int(val_per_class), int(image_size))
    if is_complete(root, description):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    if root.exists() and not root.is_dir():
        raise FileExistsError(f'{root} exists and is not a folder')
    if root.is_dir():
        _refuse_foreign_folder(root)  # before the build, not after it: a user's folder is never a candidate
    _remove_stale_temporaries(root)
    tmp = root.parent / f'.{root.name}.tmp-{os.getpid()}'
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        _write_images(tmp, {'train': int(train_per_class), 'val': int(val_per_class)}, int(seed), int(image_size),
                      report, root)
        with open(tmp / 'dataset.json', 'w', encoding='utf-8') as f:   # written last: marks completeness
            json.dump({**description, 'created': time.strftime('%Y-%m-%dT%H:%M:%S%z')}, f, indent=2)
        if root.exists():
            if is_complete(root, description):      # another process finished the same dataset meanwhile
                shutil.rmtree(tmp)
                return root
            _remove_dataset_folder(root)
        try:
            os.replace(tmp, root)                   # atomic: root is either absent or complete
        except OSError:
            if not is_complete(root, description):  # lost a race to another process: keep its copy
                raise
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _remove_stale_temporaries(root: Path) -> None:
    """Delete temporary folders that killed generations of ``root`` left behind (their process is gone)."""
    for tmp in root.parent.glob(f'.{root.name}.tmp-*'):
        try:
            pid = int(tmp.name.rsplit('-', 1)[1])
            os.kill(pid, 0)                         # raises if no such process
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, PermissionError, OSError):
            pass                                    # not ours to judge: another user's or an odd name

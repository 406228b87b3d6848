"""Top-down pose data: person crops, Gaussian heatmap targets, augmentation, decoding and flip test.

Coordinates. Every position is in pixel units with pixel centres at integers (pixel ``i`` spans
``[i - 0.5, i + 0.5]``), in the image, in the network's input crop and in the heatmaps alike. A heatmap is the
crop's region at ``1 / stride`` of its resolution, so heatmap pixel ``j`` is centred on crop coordinate
``(j + 0.5) * stride - 0.5``. With this aligned grid a horizontally flipped crop has exactly flipped heatmaps
(``j -> width - 1 - j``), which is what flip test relies on: simple-baselines, whose grid puts heatmap pixel
``j`` on crop pixel ``j * stride``, shifts the flipped heatmaps by one pixel to make up for its grid; here no
shift is needed, and one would be an error.

Crops (simple-baselines): a person box is grown to the input's aspect ratio around its centre and padded
1.25x; that region, optionally scaled, rotated and mirrored, is warped to the input size (bilinear, PIL).
Targets: a Gaussian of ``sigma`` heatmap pixels (2 at 64x48) at each labelled keypoint's sub-pixel position;
the weight of a keypoint is 0 when it is not labelled (``v=0``) or its Gaussian lies wholly outside the map.
Augmentation (training): half-body crops, scale, rotation, horizontal flip with left/right keypoints swapped.
Decoding: the heatmap maximum moved a quarter pixel towards the higher neighbour, mapped back to the image.
"""
from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from scnet.data.folders import BadImageError, decode_rgb
from scnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from scnet.tasks.coco_files import CocoDataError, read_json

__all__ = ['KeypointSpec', 'Instance', 'box_to_region', 'crop_matrix', 'warp', 'heatmap_targets',
           'decode_heatmaps', 'heatmap_to_crop', 'flip_average', 'PoseTrainSet', 'PoseCropSet', 'Augment',
           'gt_instances', 'load_detections', 'complete_annotations', 'COCO_SIGMAS']

#: COCO's per-keypoint OKS constants (pycocotools), by keypoint name.
COCO_SIGMAS = {'nose': .026, 'left_eye': .025, 'right_eye': .025, 'left_ear': .035, 'right_ear': .035,
               'left_shoulder': .079, 'right_shoulder': .079, 'left_elbow': .072, 'right_elbow': .072,
               'left_wrist': .062, 'right_wrist': .062, 'left_hip': .107, 'right_hip': .107, 'left_knee': .087,
               'right_knee': .087, 'left_ankle': .089, 'right_ankle': .089}
_DEFAULT_SIGMA = round(float(np.mean(list(COCO_SIGMAS.values()))), 4)  # 0.0669, for names COCO does not have
_LOWER_BODY = ('hip', 'knee', 'ankle', 'foot', 'heel', 'toe')
# the words of a keypoint name: runs of capitals before another capital or the end (L in LShoulder), words
# with at most one leading capital, digits; separators (_ - . space) fall between them
_WORDS = re.compile(r'[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+')
_SIDES = {'left': 'right', 'right': 'left', 'l': 'r', 'r': 'l'}


def mirror_name(name: str) -> Optional[str]:
    """``name`` with its side word swapped (``left``/``right``, or ``l``/``r`` as a word of its own, in the
    name's own case: ``left_eye``, ``l_eye``, ``LShoulder``, ``RightHand``), or None when no word of it names a
    side (``nose``, and ``upright_tip``, whose ``right`` is inside a word)."""
    for word in _WORDS.finditer(name):
        other = _SIDES.get(word.group().lower())
        if other is None:
            continue
        text = word.group()
        other = other.upper() if text.isupper() else other.capitalize() if text[0].isupper() else other
        return name[:word.start()] + other + name[word.end():]
    return None


# --------------------------------------------------------------------------------------------- keypoints

@dataclass
class KeypointSpec:
    """The keypoints of the person category: names, skeleton (0-based pairs), mirror permutation, OKS sigmas."""

    names: List[str]
    skeleton: List[Tuple[int, int]] = field(default_factory=list)
    category_id: int = 1

    @property
    def num(self) -> int:
        return len(self.names)

    @property
    def flip_permutation(self) -> List[int]:
        """Index of each keypoint's mirror image, found by name (``mirror_name``): ``left_eye`` <->
        ``right_eye``, ``l_eye`` <-> ``r_eye``, ``LShoulder`` <-> ``RShoulder``; others map to themselves."""
        index = {n.lower(): i for i, n in enumerate(self.names)}
        return [index.get((mirror_name(name) or name).lower(), i) for i, name in enumerate(self.names)]

    def unpaired_sides(self) -> List[str]:
        """Names that say a side (``mirror_name`` finds one) but whose mirror is not among the keypoints: a
        flip (augmentation, flip test) would leave them on the wrong side."""
        names = {n.lower() for n in self.names}
        return [n for n in self.names if mirror_name(n) is not None and mirror_name(n).lower() not in names]

    @property
    def sigmas(self) -> np.ndarray:
        """COCO's OKS constants where the name is one of COCO's keypoints, else their mean (0.067)."""
        return np.array([COCO_SIGMAS.get(n.lower(), _DEFAULT_SIGMA) for n in self.names])

    @property
    def lower_body(self) -> List[int]:
        return [i for i, n in enumerate(self.names) if any(part in n.lower() for part in _LOWER_BODY)]

    @classmethod
    def from_coco(cls, coco, source: str) -> 'KeypointSpec':
        """The category of ``coco`` that lists keypoint names (COCO's ``person``)."""
        cats = [c for c in coco.dataset['categories'] if isinstance(c.get('keypoints'), list) and c['keypoints']]
        if not cats:
            raise CocoDataError(f'{source}: no category lists "keypoints" names; not a keypoint annotation file')
        if len(cats) > 1:
            person = [c for c in cats if c.get('name') == 'person']
            if len(person) != 1:
                raise CocoDataError(f'{source}: {len(cats)} categories with keypoints '
                                    f'({", ".join(str(c.get("name")) for c in cats)}); pose training takes one')
            cats = person
        cat = cats[0]
        names = [str(n) for n in cat['keypoints']]
        skeleton = []
        for pair in cat.get('skeleton') or []:
            if isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(v, int) for v in pair) and \
                    all(1 <= v <= len(names) for v in pair):
                skeleton.append((pair[0] - 1, pair[1] - 1))
            else:
                raise CocoDataError(f'{source}: category {cat.get("name")!r}: skeleton entry {pair!r} is not a pair of '
                                    f'1-based keypoint indices (1..{len(names)})')
        spec = cls(names, skeleton, cat['id'])
        unpaired = spec.unpaired_sides()
        if unpaired:
            warnings.warn(f'{source}: keypoint(s) {", ".join(unpaired[:5])} name a side but their mirror is not '
                          'among the keypoints: flips (augmentation, flip test) leave them in place; name each '
                          'pair alike (left_x/right_x, l_x/r_x, Lx/Rx), or turn flips off (flip: false in the recipe, '
                          '--no-flip-test)', stacklevel=2)
        return spec

    def to_dict(self) -> Dict[str, Any]:
        return {'names': self.names, 'skeleton': [list(p) for p in self.skeleton], 'category_id': self.category_id}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> 'KeypointSpec':
        return cls(list(d['names']), [tuple(p) for p in d.get('skeleton', [])], int(d.get('category_id', 1)))


def complete_annotations(coco) -> None:
    """Fill what pycocotools' keypoint evaluation needs and some COCO-format files leave out, in place:
    ``iscrowd`` (0), ``num_keypoints`` (labelled keypoints counted) and ``area`` (the box's)."""
    for ann in coco.dataset['annotations']:
        ann.setdefault('iscrowd', 0)
        if 'num_keypoints' not in ann and isinstance(ann.get('keypoints'), list):
            ann['num_keypoints'] = int(sum(1 for v in ann['keypoints'][2::3] if v > 0))
        if 'area' not in ann:
            ann['area'] = float(ann['bbox'][2] * ann['bbox'][3])


# ------------------------------------------------------------------------------------------------ crops

@dataclass
class Instance:
    """One person to crop: its image, box region and (for training) keypoints."""

    image_id: int
    path: str
    centre: np.ndarray            # (2,) region centre, image pixels
    size: np.ndarray              # (2,) region width, height (aspect ratio of the input, padding included)
    score: float = 1.0            # box score (1 for ground-truth boxes)
    keypoints: Optional[np.ndarray] = None   # (K, 3): x, y, v


def box_to_region(box: Sequence[float], aspect: float, padding: float = 1.25) -> Tuple[np.ndarray, np.ndarray]:
    """COCO box ``[x, y, w, h]`` -> region centre and (width, height) with width / height = ``aspect``."""
    x, y, w, h = (float(v) for v in box)
    centre = np.array([x + w / 2 - 0.5, y + h / 2 - 0.5])
    if w > aspect * h:
        h = w / aspect
    else:
        w = h * aspect
    return centre, np.array([w, h]) * padding


def crop_matrix(centre: np.ndarray, size: np.ndarray, out_size: Tuple[int, int], rotation: float = 0.0,
                flip: bool = False) -> np.ndarray:
    """3x3 matrix taking image coordinates to crop coordinates (``out_size`` = height, width): the region
    ``size`` around ``centre`` rotated by ``rotation`` degrees (counter-clockwise on screen) onto the crop,
    mirrored left-right when ``flip``."""
    out_h, out_w = out_size
    s = out_w / float(size[0])
    a = math.radians(rotation)
    c, si = math.cos(a), math.sin(a)
    m = np.array([[s * c, s * si, 0.0], [-s * si, s * c, 0.0], [0.0, 0.0, 1.0]])
    m[:2, 2] = -m[:2, :2] @ np.asarray(centre, dtype=np.float64) + np.array([out_w / 2 - 0.5, out_h / 2 - 0.5])
    if flip:
        m = np.array([[-1.0, 0.0, out_w - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ m
    return m


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``matrix`` (3x3) applied to ``points`` (..., 2)."""
    return points @ matrix[:2, :2].T + matrix[:2, 2]


def warp(image: Image.Image, matrix: np.ndarray, out_size: Tuple[int, int]) -> Image.Image:
    """The crop of ``image`` that ``matrix`` (image -> crop) describes, bilinear, zeros outside the image."""
    inv = np.linalg.inv(matrix)
    # PIL maps output pixel edges to input pixel edges: shift the centre-based matrix by half a pixel
    shift, unshift = np.eye(3), np.eye(3)
    shift[:2, 2], unshift[:2, 2] = 0.5, -0.5
    coeffs = (shift @ inv @ unshift)[:2].ravel()
    return image.transform((out_size[1], out_size[0]), Image.Transform.AFFINE, tuple(coeffs),
                           resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))


def to_tensor(image: Image.Image, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    # NumPy, not torch: tiny torch ops in a busy data-loading process can cost far more in threading than their work
    x = (np.asarray(image, dtype=np.float32) - np.float32(255) * np.asarray(mean, np.float32)) / \
        (np.float32(255) * np.asarray(std, np.float32))
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def crop_to_heatmap(points: np.ndarray, stride: int) -> np.ndarray:
    return (points + 0.5) / stride - 0.5


def heatmap_to_crop(points, stride: int):
    return (points + 0.5) * stride - 0.5


def heatmap_targets(points: np.ndarray, labelled: np.ndarray, heatmap_size: Tuple[int, int],
                    sigma: float) -> Tuple[np.ndarray, np.ndarray]:
    """Gaussians at ``points`` (K, 2; heatmap coordinates) -> (K, H, W) targets and (K,) weights."""
    h, w = heatmap_size
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    targets = np.zeros((len(points), h, w), dtype=np.float32)
    weights = labelled.astype(np.float32).copy()
    reach = 3 * sigma
    for k, (x, y) in enumerate(points):
        if not labelled[k]:
            continue
        if x + reach < -0.5 or y + reach < -0.5 or x - reach > w - 0.5 or y - reach > h - 0.5:
            weights[k] = 0.0       # the whole Gaussian is outside the map
            continue
        targets[k] = np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma ** 2))
    return targets, weights


def decode_heatmaps(heatmaps: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(N, K, H, W) -> positions (N, K, 2; heatmap x, y) and scores (N, K): the maximum, moved a quarter
    pixel towards its higher neighbour along each axis (simple-baselines' refinement)."""
    n, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, -1).float()
    scores, index = flat.max(dim=2)
    x, y = (index % w), torch.div(index, w, rounding_mode='floor')
    hm = heatmaps.float()
    xi, yi = x.clamp(1, max(w - 2, 1)), y.clamp(1, max(h - 2, 1))

    def at(yy, xx):
        return hm.reshape(n, k, -1).gather(2, (yy * w + xx).clamp(0, h * w - 1).unsqueeze(2)).squeeze(2)

    dx = torch.where((x > 0) & (x < w - 1), at(y, xi + 1) - at(y, xi - 1), torch.zeros_like(scores))
    dy = torch.where((y > 0) & (y < h - 1), at(yi + 1, x) - at(yi - 1, x), torch.zeros_like(scores))
    positions = torch.stack([x.float() + 0.25 * torch.sign(dx), y.float() + 0.25 * torch.sign(dy)], dim=2)
    return positions, scores


def flip_average(heatmaps: torch.Tensor, flipped: torch.Tensor, flip_permutation: Sequence[int]) -> torch.Tensor:
    """Average of the heatmaps of a crop and those of its mirror image (mirrored back, left/right swapped)."""
    return (heatmaps + flipped.flip(-1)[:, list(flip_permutation)]) / 2


# ----------------------------------------------------------------------------------------- augmentation

@dataclass
class Augment:
    """Training augmentation of simple-baselines / HRNet."""

    scale_factor: float = 0.3      # region size x clip(1 + N(0, f), 1 - f, 1 + f)
    rotation_factor: float = 40.0  # degrees: clip(N(0, f), -2f, 2f), with probability rotation_prob
    rotation_prob: float = 0.6
    flip: bool = True              # mirror half the crops (left/right keypoints swapped)
    half_body_prob: float = 0.3    # crop the upper or the lower body alone ...
    half_body_min_joints: int = 8  # ... of people with more labelled keypoints than this


def _half_body(kps: np.ndarray, spec: KeypointSpec, aspect: float, rng: np.random.Generator):
    lower = set(spec.lower_body)
    visible = kps[:, 2] > 0
    upper_pts = [kps[i, :2] for i in range(spec.num) if visible[i] and i not in lower]
    lower_pts = [kps[i, :2] for i in range(spec.num) if visible[i] and i in lower]
    chosen = upper_pts if (rng.random() < 0.5 and len(upper_pts) > 2) or not lower_pts else lower_pts
    if len(chosen) < 2:
        return None
    pts = np.array(chosen)
    lo, hi = pts.min(0), pts.max(0)
    w, h = hi - lo
    if w > aspect * h:
        h = w / aspect
    else:
        w = h * aspect
    return pts.mean(0), np.array([w, h]) * 1.5


# ------------------------------------------------------------------------------------------------ data sets

class _ImageCache:
    """The last image decoded (crops of one image come in a row in evaluation)."""

    def __init__(self, exif_orientation: bool = False) -> None:
        self.path, self.image, self.exif_orientation = None, None, exif_orientation

    def get(self, path: str) -> Image.Image:
        if path != self.path:
            try:
                self.image = decode_rgb(path, exif_orientation=self.exif_orientation)
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
                raise BadImageError(f'{path}: unreadable image ({e}); fix or remove it') from None
            self.path = path
        return self.image


class PoseTrainSet(Dataset):
    """Augmented crops of annotated people with their heatmap targets.

    The augmentation of item ``i`` in epoch ``e`` draws from a generator seeded by (seed, e, i) only, so any
    process, worker or resumed run produces the same crop (what makes ``--resume`` exact)."""

    def __init__(self, instances: List[Instance], spec: KeypointSpec, input_size: Tuple[int, int], stride: int,
                 sigma: float, augment: Optional[Augment], *, seed: int = 0, mean=IMAGENET_MEAN,
                 std=IMAGENET_STD) -> None:
        self.instances, self.spec, self.input_size, self.stride = instances, spec, tuple(input_size), stride
        self.heatmap_size = (self.input_size[0] // stride, self.input_size[1] // stride)
        self.sigma, self.augment, self.seed, self.epoch = sigma, augment, seed, 0
        self.mean, self.std = mean, std
        self.cache = _ImageCache()
        self.perm = spec.flip_permutation

    def __len__(self) -> int:
        return len(self.instances)

    def __getitem__(self, index: int):
        inst = self.instances[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        centre, size, rotation, flip = inst.centre, inst.size.copy(), 0.0, False
        kps = inst.keypoints.copy()
        aug = self.augment
        aspect = self.input_size[1] / self.input_size[0]
        if aug is not None:
            if aug.half_body_prob > 0 and (kps[:, 2] > 0).sum() > aug.half_body_min_joints and \
                    rng.random() < aug.half_body_prob:
                half = _half_body(kps, self.spec, aspect, rng)
                if half is not None:
                    centre, size = half
            sf, rf = aug.scale_factor, aug.rotation_factor
            size = size * float(np.clip(rng.normal() * sf + 1, 1 - sf, 1 + sf))
            if rng.random() < aug.rotation_prob:
                rotation = float(np.clip(rng.normal() * rf, -2 * rf, 2 * rf))
            flip = aug.flip and rng.random() < 0.5
        matrix = crop_matrix(centre, size, self.input_size, rotation, flip)
        crop = warp(self.cache.get(inst.path), matrix, self.input_size)
        points = crop_to_heatmap(apply(matrix, kps[:, :2]), self.stride)
        labelled = kps[:, 2] > 0
        if flip:
            points, labelled = points[self.perm], labelled[self.perm]
        targets, weights = heatmap_targets(points, labelled, self.heatmap_size, self.sigma)
        return to_tensor(crop, self.mean, self.std), torch.from_numpy(targets), torch.from_numpy(weights)


class PoseCropSet(Dataset):
    """Unaugmented crops for evaluation and prediction: (image tensor, index into ``instances``).
    ``exif_orientation``: images turned as their EXIF says (prediction on photos, see ``decode_rgb``)."""

    def __init__(self, instances: List[Instance], input_size: Tuple[int, int], *, mean=IMAGENET_MEAN,
                 std=IMAGENET_STD, exif_orientation: bool = False) -> None:
        self.instances, self.input_size, self.mean, self.std = instances, tuple(input_size), mean, std
        self.cache = _ImageCache(exif_orientation)

    def __len__(self) -> int:
        return len(self.instances)

    def matrix(self, index: int) -> np.ndarray:
        inst = self.instances[index]
        return crop_matrix(inst.centre, inst.size, self.input_size)

    def __getitem__(self, index: int):
        crop = warp(self.cache.get(self.instances[index].path), self.matrix(index), self.input_size)
        return to_tensor(crop, self.mean, self.std), index


# ---------------------------------------------------------------------------------------- instance lists

def _clip_box(box, width: float, height: float) -> Optional[List[float]]:
    x, y, w, h = (float(v) for v in box)
    x0, y0 = max(0.0, x), max(0.0, y)
    x1, y1 = min(float(width), x + max(0.0, w)), min(float(height), y + max(0.0, h))
    if x1 <= x0 or y1 <= y0:
        return None
    return [x0, y0, x1 - x0, y1 - y0]


def gt_instances(coco, images_dir: Path, spec: KeypointSpec, aspect: float, padding: float = 1.25,
                 with_keypoints: bool = True) -> List[Instance]:
    """The annotated people of ``coco`` (not crowds, at least one labelled keypoint), as simple-baselines
    trains and evaluates with ground-truth boxes."""
    out = []
    for image_id in sorted(coco.imgs):
        img = coco.imgs[image_id]
        for ann in coco.imgToAnns.get(image_id, []):
            if ann.get('category_id') != spec.category_id or ann.get('iscrowd', 0):
                continue
            kps = np.asarray(ann['keypoints'], dtype=np.float64).reshape(-1, 3)
            if not (kps[:, 2] > 0).any():
                continue
            box = _clip_box(ann['bbox'], img['width'], img['height'])
            if box is None:
                continue
            centre, size = box_to_region(box, aspect, padding)
            out.append(Instance(image_id, str(Path(images_dir) / img['file_name']), centre, size, 1.0,
                                kps if with_keypoints else None))
    return out


def load_detections(path: Path, coco, spec: KeypointSpec, aspect: float, images_dir: Path, *,
                    score_thresh: float = 0.0, padding: float = 1.25) -> List[Instance]:
    """Person boxes from a detector, in COCO's results format (``[{"image_id", "category_id", "bbox",
    "score"}, ...]``), for the images of ``coco``: other categories and scores below ``score_thresh`` dropped.
    Problems (not JSON, entries without those fields, unknown images, boxes without area or outside their
    image) are reported together, before any work starts."""
    path = Path(path)
    data = read_json(path, what='detection-results file', expected='COCO detection results '
                     '[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]')
    if not isinstance(data, list):
        raise CocoDataError(f'{path}: not COCO detection results: the top level is a {type(data).__name__}, not a '
                            'list of {"image_id", "category_id", "bbox", "score"}')
    problems: Dict[str, List[str]] = {}

    def problem(kind, detail):
        problems.setdefault(kind, []).append(detail)

    out = []
    for i, det in enumerate(data):
        if not isinstance(det, dict) or not {'image_id', 'category_id', 'bbox', 'score'} <= set(det):
            problem('entries without image_id/category_id/bbox/score', f'#{i}: {str(det)[:60]}')
            continue
        if det['category_id'] != spec.category_id:
            continue
        img = coco.imgs.get(det['image_id']) if isinstance(det['image_id'], (int, str)) else None
        if img is None:
            problem('boxes of images not in the annotation file', f'#{i}: image_id {det["image_id"]}')
            continue
        box = det['bbox']
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            problem('boxes that are not [x, y, w, h]', f'#{i}: {box!r}')
            continue
        if box[2] <= 0 or box[3] <= 0:
            problem('boxes with zero or negative area', f'#{i} (image {det["image_id"]}): {box}')
            continue
        if not isinstance(det['score'], (int, float)):
            problem('scores that are not numbers', f'#{i}: {det["score"]!r}')
            continue
        clipped = _clip_box(box, img['width'], img['height'])
        if clipped is None:
            problem('boxes outside their image', f'#{i} (image {det["image_id"]}, {img["width"]}x{img["height"]}): '
                    f'{box}')
            continue
        if det['score'] < score_thresh:
            continue
        centre, size = box_to_region(clipped, aspect, padding)
        out.append(Instance(det['image_id'], str(Path(images_dir) / img['file_name']), centre, size,
                            float(det['score'])))
    if problems:
        raise CocoDataError(f'{path}: ' + ' | '.join(
            f'{len(v)} {k}: ' + '; '.join(v[:5]) + (f'; ... ({len(v) - 5} more)' if len(v) > 5 else '')
            for k, v in problems.items()))
    out.sort(key=lambda inst: (inst.image_id, -inst.score))
    return out

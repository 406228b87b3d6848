"""A small COCO-format person-keypoint data set drawn from scratch: stick figures on noise, for tests and demos.

``make_people_coco(root, num_train=..., num_val=..., image_size=..., seed=...)`` writes::

    root/train/000000.jpg ...          root/val/000000.jpg ...
    root/person_keypoints_train.json   root/person_keypoints_val.json

Each image holds 1-3 front-facing figures (the person's left on the image's right, as for a person facing the
camera) with COCO's 17 keypoints: a head (filled disc with two eyes, a nose and ears on its sides), a torso,
arms and legs as thick limbs with round hands and feet. Pose (torso lean, every joint angle), height (30-95%
of the image), position, colour and the whole figure's tilt vary; figures may leave the frame.

Annotations follow COCO's rules:

* ``keypoints``: ``[x, y, v] * 17`` in pixel coordinates (pixel centres at integers). ``v=2`` labelled and
  visible; ``v=1`` labelled but hidden (under a figure drawn later or under an occluding block); ``v=0`` not
  labelled, with ``x=y=0``: outside the image, or an ear left unlabelled (as COCO's annotators often do).
* ``num_keypoints``: the number of labelled keypoints (``v>0``).
* ``bbox``: the extent of the figure's visible pixels; ``area``: their count (the figure's segment area,
  which COCO's OKS uses as the person's scale).
* the ``person`` category carries the 17 keypoint names and COCO's skeleton.

Everything depends only on ``seed`` (and the arguments): the same call writes the same files.
``make_detections(ann_file, out_file, seed=...)`` writes a COCO detection-results JSON for a split: every
ground-truth person's box jittered, with a score, plus a few low-scoring false alarms and a few boxes of
another category, which a keypoint evaluation must ignore; ``scnet pose eval --boxes`` reads it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw

__all__ = ['COCO_KEYPOINTS', 'COCO_SKELETON', 'make_people_coco', 'make_detections', 'person_category']

#: COCO's 17 person keypoints, in COCO's order.
COCO_KEYPOINTS = ('nose', 'left_eye', 'right_eye', 'left_ear', 'right_ear', 'left_shoulder', 'right_shoulder',
                  'left_elbow', 'right_elbow', 'left_wrist', 'right_wrist', 'left_hip', 'right_hip', 'left_knee',
                  'right_knee', 'left_ankle', 'right_ankle')
#: COCO's skeleton: pairs of 1-based keypoint indices, as in COCO's annotation files.
COCO_SKELETON = ((16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9),
                 (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7))

_K = {name: i for i, name in enumerate(COCO_KEYPOINTS)}
PathLike = Union[str, Path]


def person_category() -> Dict:
    return {'id': 1, 'name': 'person', 'supercategory': 'person', 'keypoints': list(COCO_KEYPOINTS),
            'skeleton': [list(p) for p in COCO_SKELETON]}


def _rot(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def _limb(start: np.ndarray, angle: float, length: float) -> np.ndarray:
    """The end of a segment of ``length`` from ``start`` at ``angle`` (radians, 0 = straight down, y down)."""
    return start + length * np.array([math.sin(angle), math.cos(angle)])


def _pose(rng: np.random.Generator, height: float) -> Tuple[np.ndarray, Dict[str, float]]:
    """17 keypoints (x, y) of a figure ``height`` tall, centred on its mid-hip at the origin, and its widths."""
    h = height
    deg = math.radians
    lean = deg(rng.uniform(-15, 15))                       # upper body leaning sideways
    up = _rot(lean)
    neck = up @ np.array([0.0, -0.29 * h])
    kp = np.zeros((17, 2))
    # the person's left is on the image's right (front view)
    kp[_K['left_shoulder']] = neck + up @ np.array([0.13 * h, 0.0])
    kp[_K['right_shoulder']] = neck + up @ np.array([-0.13 * h, 0.0])
    head = neck + up @ np.array([0.0, -0.11 * h])
    turn = rng.uniform(-0.25, 0.25)                        # head turned a little: the face shifts sideways
    kp[_K['nose']] = head + up @ np.array([turn * 0.05 * h, 0.012 * h])
    kp[_K['left_eye']] = head + up @ np.array([(0.028 + turn * 0.04) * h, -0.014 * h])
    kp[_K['right_eye']] = head + up @ np.array([(-0.028 + turn * 0.04) * h, -0.014 * h])
    kp[_K['left_ear']] = head + up @ np.array([(0.062 - max(turn, 0) * 0.03) * h, -0.004 * h])
    kp[_K['right_ear']] = head + up @ np.array([(-0.062 - min(turn, 0) * 0.03) * h, -0.004 * h])
    kp[_K['left_hip']] = np.array([0.08 * h, 0.0])
    kp[_K['right_hip']] = np.array([-0.08 * h, 0.0])
    for side, sign in (('left', 1.0), ('right', -1.0)):
        # arms: abduction from hanging down (0) to raised (160 deg), elbow bent either way
        shoulder_angle = lean + sign * deg(rng.uniform(-25, 160))
        elbow_angle = shoulder_angle + sign * deg(rng.uniform(-40, 130))
        kp[_K[f'{side}_elbow']] = _limb(kp[_K[f'{side}_shoulder']], shoulder_angle, 0.17 * h)
        kp[_K[f'{side}_wrist']] = _limb(kp[_K[f'{side}_elbow']], elbow_angle, 0.15 * h)
        hip_angle = sign * deg(rng.uniform(-12, 45))
        knee_angle = hip_angle - sign * deg(rng.uniform(0, 70)) * (1 if rng.random() < 0.7 else -0.5)
        kp[_K[f'{side}_knee']] = _limb(kp[_K[f'{side}_hip']], hip_angle, 0.24 * h)
        kp[_K[f'{side}_ankle']] = _limb(kp[_K[f'{side}_knee']], knee_angle, 0.23 * h)
    widths = {'head': 0.075 * h, 'arm': max(2.0, 0.05 * h), 'leg': max(2.0, 0.07 * h), 'hand': 0.035 * h,
              'foot': 0.04 * h, 'eye': max(1.0, 0.012 * h), 'ear': max(1.0, 0.016 * h), 'head_centre': head}
    return kp, widths


def _draw_figure(draw: ImageDraw.ImageDraw, kp: np.ndarray, w: Dict, body, skin, feature) -> None:
    def pt(name):
        return tuple(float(v) for v in kp[_K[name]])

    def disc(centre, radius, colour):
        x, y = centre
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)

    mono = isinstance(body, int)                       # a mask: every part in one value
    darker = body if mono else tuple(int(c * 0.75) for c in body)
    # legs first (behind the torso), then torso, arms, head
    for side in ('left', 'right'):
        draw.line([pt(f'{side}_hip'), pt(f'{side}_knee'), pt(f'{side}_ankle')], fill=darker, width=int(w['leg']),
                  joint='curve')
        disc(pt(f'{side}_knee'), w['leg'] / 2, darker)
        disc(pt(f'{side}_ankle'), w['foot'], feature)
    torso = [pt('left_shoulder'), pt('right_shoulder'), pt('right_hip'), pt('left_hip')]
    draw.polygon(torso, fill=body)
    for side in ('left', 'right'):
        disc(pt(f'{side}_shoulder'), w['arm'] * 0.7, body)
        disc(pt(f'{side}_hip'), w['leg'] / 2, body)
        draw.line([pt(f'{side}_shoulder'), pt(f'{side}_elbow'), pt(f'{side}_wrist')], fill=body,
                  width=int(w['arm']), joint='curve')
        disc(pt(f'{side}_elbow'), w['arm'] / 2, body)
        disc(pt(f'{side}_wrist'), w['hand'], skin)
    head = tuple(float(v) for v in w['head_centre'])
    disc(head, w['head'], skin)
    for side in ('left', 'right'):
        disc(pt(f'{side}_ear'), w['ear'], skin if mono else tuple(int(c * 0.8) for c in skin))
        disc(pt(f'{side}_eye'), w['eye'], feature)
    disc(pt('nose'), w['eye'] * 1.2, feature if mono else (200, 40, 40))


def _colour(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> Tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi, 3))


def _background(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    base = rng.integers(40, 200, 3).astype(np.float32)
    ramp = np.linspace(-30, 30, width, dtype=np.float32)[None, :, None] * rng.uniform(-1, 1)
    noise = rng.normal(0, 18, (height, width, 3)).astype(np.float32)
    image = Image.fromarray(np.clip(base + ramp + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 7))):           # clutter: lines and blocks of random colours
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
        x1, y1 = x0 + rng.uniform(-0.4, 0.4) * width, y0 + rng.uniform(-0.4, 0.4) * height
        if rng.random() < 0.5:
            draw.line([(x0, y0), (x1, y1)], fill=_colour(rng), width=int(rng.integers(1, 6)))
        else:
            draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=_colour(rng),
                           width=int(rng.integers(1, 4)))
    return image


def _render_image(rng: np.random.Generator, height: int, width: int, min_keypoints: int = 6):
    """One image and its people: (PIL image, [(keypoints (17,3), bbox, area)])."""
    image = _background(rng, height, width)
    draw = ImageDraw.Draw(image)
    masks: List[np.ndarray] = []
    poses: List[np.ndarray] = []
    count = int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.2]))
    placed_boxes: List[Tuple[float, float, float, float]] = []
    for _ in range(count):
        for _attempt in range(20):
            fig_h = rng.uniform(0.3, 0.95) * height / (1 + 0.25 * (count - 1))
            kp, widths = _pose(rng, fig_h)
            tilt = _rot(math.radians(rng.uniform(-20, 20)))
            kp = kp @ tilt.T
            widths['head_centre'] = tilt @ widths['head_centre']
            lo, hi = kp.min(0) - widths['head'], kp.max(0) + widths['head']
            # mostly inside the frame: the figure's centre within the image, at most ~25% of it outside
            offset = np.array([rng.uniform(-lo[0] - 0.15 * (hi[0] - lo[0]), width - hi[0] + 0.15 * (hi[0] - lo[0])),
                               rng.uniform(-lo[1] - 0.2 * (hi[1] - lo[1]), height - hi[1] + 0.2 * (hi[1] - lo[1]))])
            box = (lo[0] + offset[0], lo[1] + offset[1], hi[0] + offset[0], hi[1] + offset[1])
            if all(_iou(box, other) < 0.25 for other in placed_boxes):
                break
        kp = kp + offset
        widths['head_centre'] = widths['head_centre'] + offset
        placed_boxes.append(box)
        mask_image = Image.new('L', (width, height), 0)
        body, skin = _colour(rng, 20, 236), _colour(rng, 120, 256)
        _draw_figure(draw, kp, widths, body, skin, _colour(rng, 0, 70))
        _draw_figure(ImageDraw.Draw(mask_image), kp, widths, 255, 255, 255)
        mask = np.asarray(mask_image) > 0
        for earlier in masks:                         # this figure hides what it covers of earlier ones
            earlier &= ~mask
        masks.append(mask)
        poses.append(kp)
    occluders = []
    if rng.random() < 0.35:                           # a block in front of someone
        target = poses[int(rng.integers(len(poses)))]
        centre = target[int(rng.integers(17))]
        size = rng.uniform(0.08, 0.22) * height
        x0, y0 = centre + rng.uniform(-0.5, 0.5, 2) * size
        occluders.append((x0, y0, x0 + size * rng.uniform(0.6, 1.4), y0 + size * rng.uniform(0.6, 1.4)))
        draw.rectangle(occluders[-1], fill=_colour(rng))
        block = Image.new('L', (width, height), 0)
        ImageDraw.Draw(block).rectangle(occluders[-1], fill=255)
        covered = np.asarray(block) > 0
        for mask in masks:
            mask &= ~covered
    people = []
    for i, (kp, mask) in enumerate(zip(poses, masks)):
        hidden = np.zeros((height, width), bool)
        for later in masks[i + 1:]:
            hidden |= later
        for x0, y0, x1, y1 in occluders:
            rows = slice(max(0, int(math.ceil(y0))), max(0, int(y1) + 1))
            hidden[rows, max(0, int(math.ceil(x0))):max(0, int(x1) + 1)] = True
        out = np.zeros((17, 3))
        for k, (x, y) in enumerate(kp):
            xi, yi = int(round(x)), int(round(y))
            if not (0 <= xi < width and 0 <= yi < height):
                continue                               # outside the image: not labelled
            if COCO_KEYPOINTS[k].endswith('ear') and rng.random() < 0.2:
                continue                               # unlabelled ear
            out[k] = (round(float(x), 2), round(float(y), 2), 1 if hidden[yi, xi] else 2)
        ys, xs = np.nonzero(mask)
        if len(xs) < 20 or (out[:, 2] > 0).sum() < min_keypoints:
            continue                                   # hardly visible: not annotated (an unlabelled person)
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        people.append((out, [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], float(len(xs))))
    return image, people


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _split(root: Path, split: str, count: int, size: Tuple[int, int], rng: np.random.Generator) -> Path:
    height, width = size
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    image_id = 0
    while image_id < count:
        image, people = _render_image(rng, height, width)
        if not people:
            continue
        image_id += 1
        name = f'{image_id:06d}.jpg'
        image.save(folder / name, quality=92)
        images.append({'id': image_id, 'file_name': name, 'width': width, 'height': height})
        for kp, bbox, area in people:
            annotations.append({'id': len(annotations) + 1, 'image_id': image_id, 'category_id': 1,
                                'iscrowd': 0, 'bbox': bbox, 'area': area,
                                'keypoints': [float(v) if j % 3 < 2 else int(v) for j, v in enumerate(kp.ravel())],
                                'num_keypoints': int((kp[:, 2] > 0).sum())})
    ann_file = root / f'person_keypoints_{split}.json'
    ann_file.write_text(json.dumps({'info': {'description': 'scnet synthetic people (stick figures)'},
                                    'images': images, 'annotations': annotations,
                                    'categories': [person_category()]}))
    return ann_file


def make_people_coco(root: PathLike, *, num_train: int = 200, num_val: int = 50,
                     image_size: Union[int, Sequence[int]] = 256, seed: int = 0) -> Dict[str, Path]:
    """Write the data set under ``root`` (see the module docstring); returns the paths of its parts:
    ``train_ann``, ``train_images``, ``val_ann``, ``val_images``. ``image_size``: side, or (height, width)."""
    root = Path(root)
    size = (int(image_size), int(image_size)) if isinstance(image_size, (int, np.integer)) else \
        tuple(int(v) for v in image_size)
    if len(size) != 2 or min(size) < 32:
        raise ValueError(f'image_size must be a side >= 32 or (height, width), got {image_size!r}')
    train_rng, val_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    return {'train_ann': _split(root, 'train', num_train, size, train_rng), 'train_images': root / 'train',
            'val_ann': _split(root, 'val', num_val, size, val_rng), 'val_images': root / 'val'}


def make_detections(ann_file: PathLike, out_file: PathLike, *, seed: int = 0, jitter: float = 0.08,
                    false_alarms: float = 0.3, other_category: Optional[int] = 2) -> Path:
    """A person detector's output for the split of ``ann_file``, in COCO's detection-results format
    (``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]``).

    Each ground-truth box moved and resized by up to ``jitter`` of its size (score 0.6-1.0, higher for small
    moves); about ``false_alarms`` false alarms per image (score below 0.3); with ``other_category``, one box
    per image of that category (not people: to be filtered out)."""
    rng = np.random.default_rng(seed)
    data = json.loads(Path(ann_file).read_text())
    sizes = {img['id']: (img['width'], img['height']) for img in data['images']}
    detections = []
    for ann in data['annotations']:
        x, y, w, h = ann['bbox']
        move = rng.uniform(-jitter, jitter, 4)
        nx, ny = x + move[0] * w, y + move[1] * h
        nw, nh = w * (1 + move[2]), h * (1 + move[3])
        width, height = sizes[ann['image_id']]
        nx, ny = max(0.0, nx), max(0.0, ny)
        nw, nh = min(nw, width - nx), min(nh, height - ny)
        score = 1.0 - float(np.abs(move).mean()) / max(jitter, 1e-9) * 0.4
        detections.append({'image_id': ann['image_id'], 'category_id': ann['category_id'],
                           'bbox': [round(v, 2) for v in (nx, ny, nw, nh)], 'score': round(score, 4)})
    for image_id, (width, height) in sizes.items():
        for _ in range(int(rng.poisson(false_alarms))):
            w, h = rng.uniform(0.1, 0.4) * width, rng.uniform(0.2, 0.6) * height
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            detections.append({'image_id': image_id, 'category_id': 1, 'bbox': [round(v, 2) for v in (x, y, w, h)],
                               'score': round(float(rng.uniform(0.05, 0.3)), 4)})
        if other_category is not None:
            detections.append({'image_id': image_id, 'category_id': other_category,
                               'bbox': [0.0, 0.0, width / 2, height / 2], 'score': 0.9})
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(detections))
    return out_file

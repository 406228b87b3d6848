"""COCO-format annotation files, checked before any training starts.

pycocotools reads the files and computes the metrics; what it does not do is tell a user, before hours of
training, that the file is not COCO JSON, that images it lists are missing, that two images (annotations,
categories) share an id (pycocotools' index keeps the last, silently), that a box is outside its image or has
no area, or that a keypoint array has the wrong length, values that are not numbers, a visibility other than
0, 1, 2 or a labelled keypoint outside its image. ``load_coco`` checks all of that up front and reports every
problem found (the first few of each kind, with counts) in one ``CocoDataError``. ``check_images`` then opens
the header of every image listed, for detection and pose alike.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Type

from scnet.data.folders import DataError
from scnet.errors import ScnetError

__all__ = ['CocoDataError', 'TASKS', 'load_coco', 'check_images', 'resize_problem', 'read_coco_json', 'read_json']

#: What an annotation file is used for: boxes, boxes and masks, or person keypoints.
TASKS = ('bbox', 'segm', 'keypoints')
_SHOWN = 5          # problems of one kind shown in the message
_EDGE_SLACK = 1.0   # pixels a box may pass the image border (rounding in converters is common)


class CocoDataError(DataError):
    """An annotation file or image folder that cannot be used."""


def read_json(path: Path, *, what: str, expected: str = '', error: Type[ScnetError] = CocoDataError) -> Any:
    """The parsed JSON file ``path`` (a ``what``: 'annotation file'), or an ``error`` saying that it does not
    exist or is not JSON (followed by ``expected``: what it should hold)."""
    path = Path(path)
    if not path.is_file():
        raise error(f'{path}: no such {what}')
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f'{path}: not JSON ({e}){"; expected " + expected if expected else ""}') from None


def read_coco_json(path: Path) -> Dict:
    """The parsed file, or a ``CocoDataError`` saying why it is not COCO JSON."""
    path = Path(path)
    data = read_json(path, what='annotation file', expected='a COCO annotation file')
    if not isinstance(data, dict):
        raise CocoDataError(f'{path}: not COCO JSON: the top level is a {type(data).__name__}, not an object with '
                            '"images", "annotations" and "categories"')
    missing = [k for k in ('images', 'annotations', 'categories') if not isinstance(data.get(k), list)]
    if missing:
        raise CocoDataError(f'{path}: not COCO JSON: no list "{missing[0]}"'
                            + (f' (also missing: {", ".join(missing[1:])})' if missing[1:] else ''))
    return data


class _Problems:
    def __init__(self) -> None:
        self.by_kind: Dict[str, List[str]] = defaultdict(list)

    def add(self, kind: str, detail: str) -> None:
        self.by_kind[kind].append(detail)

    def raise_if_any(self, path: Path) -> None:
        if not self.by_kind:
            return
        parts = []
        for kind, details in self.by_kind.items():
            shown = '; '.join(details[:_SHOWN]) + (f'; ... ({len(details) - _SHOWN} more)' if len(details) > _SHOWN
                                                   else '')
            parts.append(f'{len(details)} {kind}: {shown}')
        raise CocoDataError(f'{path}: ' + ' | '.join(parts))


def _check_keypoint_categories(data: Dict, problems: _Problems) -> Dict[Any, List[str]]:
    """The keypoint names of each category that lists some, by category id."""
    names_of = {}
    for cat in data['categories']:
        names = cat.get('keypoints') if isinstance(cat, dict) else None
        if isinstance(names, list) and names and _is_id(cat.get('id')):
            names_of[cat['id']] = [str(n) for n in names]
    if not names_of:
        problems.add('keypoint definitions missing', 'no category lists "keypoints" names')
    return names_of


def _is_number(value: Any) -> bool:
    """A finite number (Python's json reads NaN and Infinity, which every comparison of a check lets through)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_id(value: Any) -> bool:
    """A usable id: an integer, as COCO's are (pycocotools' evaluation and torchvision's targets need them)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _segmentation_problem(segmentation: Any, img: Dict) -> Optional[str]:
    """What is wrong with an annotation's ``segmentation`` for pycocotools (None: nothing): polygons are lists
    of at least 3 points (6 numbers, an even count), an RLE has ``counts`` and the image's ``size`` [h, w]."""
    if isinstance(segmentation, list):
        for polygon in segmentation:
            if not (isinstance(polygon, list) and len(polygon) >= 6 and len(polygon) % 2 == 0
                    and all(_is_number(v) for v in polygon)):
                return f'polygon {str(polygon)[:40]} is not a list of at least 3 x, y points'
        return None
    if isinstance(segmentation, dict):
        size = segmentation.get('size')
        if not isinstance(segmentation.get('counts'), (str, list)):
            return 'RLE without "counts"'
        if size != [img['height'], img['width']]:
            return f'RLE of size {size!r}, the image is {img["height"]}x{img["width"]} ([h, w])'
        return None
    return f'{type(segmentation).__name__} {str(segmentation)[:30]!r} is neither polygons nor an RLE'


def _check_keypoints(ann: Dict, img: Dict, names: List[str], problems: _Problems) -> None:
    """An annotation's ``keypoints``: 3 numbers per keypoint, visibility 0, 1 or 2, labelled ones in the image."""
    aid, kps, expected = ann['id'], ann.get('keypoints'), 3 * len(names)
    if not isinstance(kps, list) or len(kps) != expected:
        found = f'{len(kps)} values' if isinstance(kps, list) else 'no "keypoints" list'
        problems.add('keypoint arrays of the wrong length',
                     f'annotation {aid}: {found}, expected {expected} (x, y, visibility per keypoint)')
        return
    bad = [(j, v) for j, v in enumerate(kps) if not _is_number(v)]
    if bad:
        j, v = bad[0]
        problems.add('keypoint arrays with values that are not numbers',
                     f'annotation {aid}: {v!r} at position {j} ({"xyv"[j % 3]} of {names[j // 3]})')
        return
    for k, name in enumerate(names):
        x, y, v = kps[3 * k:3 * k + 3]
        if v not in (0, 1, 2):
            problems.add('keypoints with a visibility other than 0 (not labelled), 1 (hidden), 2 (visible)',
                         f'annotation {aid}: {name} has v={v}')
        elif v > 0 and (x < -_EDGE_SLACK or y < -_EDGE_SLACK or x > img['width'] + _EDGE_SLACK or
                        y > img['height'] + _EDGE_SLACK):
            problems.add('labelled keypoints outside their image',
                         f'annotation {aid} in {img["file_name"]} ({img["width"]}x{img["height"]}): {name} at '
                         f'({x}, {y})')


def load_coco(annotation_file: Path, images_dir: Optional[Path] = None, *, task: str = 'bbox'):
    """Check ``annotation_file`` (and that ``images_dir`` holds every image it lists) and return a
    ``pycocotools.coco.COCO`` over it. ``task`` decides what annotations must carry (see ``TASKS``)."""
    from pycocotools.coco import COCO

    if task not in TASKS:
        raise ValueError(f'task must be one of {TASKS}, got {task!r}')
    path = Path(annotation_file)
    data = read_coco_json(path)
    problems = _Problems()
    images = {}
    for img in data['images']:
        if not isinstance(img, dict) or not {'id', 'file_name', 'width', 'height'} <= set(img):
            problems.add('images without id/file_name/width/height', str(img)[:80])
            continue
        if not _is_id(img['id']) or not (_is_number(img['width']) and _is_number(img['height'])):
            problems.add('images whose id is not an integer or whose width/height are not numbers', str(img)[:80])
            continue
        if img['id'] in images:
            problems.add('duplicate image ids (give each image its own)',
                         f'id {img["id"]}: {images[img["id"]]["file_name"]} and {img["file_name"]}')
            continue
        images[img['id']] = img
        if images_dir is not None and not (Path(images_dir) / img['file_name']).is_file():
            problems.add(f'images listed but missing from {images_dir}', str(img['file_name']))
    categories = set()
    for cat in data['categories']:
        cid = cat.get('id') if isinstance(cat, dict) else None
        if not _is_id(cid):
            problems.add('categories without an integer "id"', str(cat)[:80])
        elif cid in categories:
            problems.add('duplicate category ids', f'id {cid} ({cat.get("name")})')
        else:
            categories.add(cid)
    listed = sorted(categories, key=str)
    unknown_category = ('annotations of categories the file does not list (it lists ' +
                        (', '.join(map(str, listed[:10])) + (' ...' if len(listed) > 10 else '') if listed else 'none')
                        + ')')
    keypoint_names = _check_keypoint_categories(data, problems) if task == 'keypoints' else {}
    annotation_ids: Dict[Any, Any] = {}
    for ann in data['annotations']:
        if not isinstance(ann, dict):
            problems.add('annotations that are not objects', str(ann)[:80])
            continue
        aid = ann.get('id')
        if aid is None:
            problems.add('annotations without an "id"', str(ann)[:80])
            continue
        if not _is_id(aid):
            problems.add('annotations whose "id" is not an integer', str(ann)[:80])
            continue
        if aid in annotation_ids:
            problems.add('duplicate annotation ids (give each annotation its own)',
                         f'id {aid} (images {annotation_ids[aid]} and {ann.get("image_id")})')
            continue
        annotation_ids[aid] = ann.get('image_id')
        img = images.get(ann.get('image_id')) if _is_id(ann.get('image_id')) else None
        if img is None:
            problems.add('annotations of images the file does not list',
                         f'annotation {aid} -> image_id {ann.get("image_id")!r}')
            continue
        known_category = _is_id(ann.get('category_id')) and ann['category_id'] in categories
        if not known_category:
            problems.add(unknown_category, f'annotation {aid} -> category_id {ann.get("category_id")!r}')
        box = ann.get('bbox')
        if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
            problems.add('annotations without a [x, y, w, h] bbox of finite numbers', f'annotation {aid}: {box!r}')
        else:
            x, y, w, h = box
            if w <= 0 or h <= 0:
                problems.add('boxes with zero or negative area', f'annotation {aid} in {img["file_name"]}: {box}')
            elif x < -_EDGE_SLACK or y < -_EDGE_SLACK or x + w > img['width'] + _EDGE_SLACK or \
                    y + h > img['height'] + _EDGE_SLACK:
                problems.add('boxes outside their image', f'annotation {aid} in {img["file_name"]} '
                             f'({img["width"]}x{img["height"]}): {box}')
        if task == 'segm':
            if not ann.get('segmentation'):
                problems.add('annotations without a segmentation', f'annotation {aid}')
            else:
                wrong = _segmentation_problem(ann['segmentation'], img)
                if wrong:
                    problems.add('segmentations pycocotools cannot read', f'annotation {aid}: {wrong}')
        if task == 'keypoints' and known_category and ann['category_id'] in keypoint_names:
            _check_keypoints(ann, img, keypoint_names[ann['category_id']], problems)
    problems.raise_if_any(path)
    if not data['annotations']:  # COCO's metrics of no ground truth are -1, a table that looks like a result
        raise CocoDataError(f'{path}: no annotations: nothing to train on or to score against; give the file '
                            'with the objects (or people) of its images')
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    return coco


def resize_problem(width: int, height: int, resize: Optional[Tuple[int, int]]) -> Optional[str]:
    """Why a detector resizing images to short side ``min_size``, long side at most ``max_size`` (``resize``)
    cannot take a ``width`` x ``height`` image, or None: torchvision's transform scales both sides by
    ``min(min_size / short, max_size / long)`` and floors them, and a side of 0 pixels fails inside
    ``interpolate``."""
    if resize is None:
        return None
    min_size, max_size = resize
    short, long = min(width, height), max(width, height)
    if short >= 1 and math.floor(short * min(min_size / short, max_size / long)) >= 1:
        return None
    return (f'{width}x{height} pixels, which the detector\'s resize (short side {min_size}, long side at most '
            f'{max_size}) makes 0 pixels {"wide" if width < height else "high"}; crop or pad it to at most '
            f'{max_size}:1')


def check_images(coco, images_dir: Path, annotation_file: str, threads: int = 8, *,
                 resize: Optional[Tuple[int, int]] = None) -> None:
    """Open the header of every image ``coco`` lists (no decoding, so it is cheap) and raise one
    ``CocoDataError`` naming those that are not images or not of the size the annotation file gives (or, with
    ``resize``, that a detector's resize makes 0 pixels across), so that such a file stops the run before
    training, not in the middle of an epoch."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    def problem(info: Dict) -> Optional[Tuple[str, str]]:
        path = Path(images_dir) / info['file_name']
        try:
            with Image.open(path) as image:
                size = image.size
        except Exception as e:
            return 'files that are not readable images', f'{path} ({type(e).__name__})'
        if size != (info['width'], info['height']):
            return ('images of another size than the annotation file says',
                    f'{path} is {size[0]}x{size[1]} pixels, the file says {info["width"]}x{info["height"]}')
        thin = resize_problem(size[0], size[1], resize)
        if thin:
            return 'images too thin to resize', f'{path} is {thin}'
        return None

    with ThreadPoolExecutor(threads) as pool:
        found = [p for p in pool.map(problem, coco.dataset['images']) if p]
    if found:
        kinds: Dict[str, List[str]] = {}
        for kind, detail in found:
            kinds.setdefault(kind, []).append(detail)
        parts = [f'{len(d)} {k}: ' + '; '.join(d[:5]) + (f'; ... ({len(d) - 5} more)' if len(d) > 5 else '')
                 for k, d in kinds.items()]
        raise CocoDataError(f'{annotation_file}: ' + ' | '.join(parts))

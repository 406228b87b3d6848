"""Keypoints drawn on one's own images: each person (a box of a file, or the whole image) found and drawn
with its skeleton, one PNG per image, and ``keypoints.json``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from scnet.tasks.coco_files import read_json
from scnet.tasks.image_files import decoded_sizes, drawing_paths, image_files
from scnet.tasks.pose.checkpoint import load_pose_checkpoint
from scnet.tasks.pose.data import Instance, PoseCropSet, _clip_box, box_to_region
from scnet.tasks.pose.evaluate import predict_keypoints
from scnet.tasks.pose.recipe import PoseError
from scnet.train import distributed

__all__ = ['predict_pose']

_SHOWN = 5  # names or boxes shown in a message


def _read_person_boxes(path: Path) -> Dict[str, List[Tuple[List[float], float]]]:
    """{file name: [(box, score)]} from ``{"name.jpg": [[x, y, w, h(, score)], ...]}``,
    ``[{"file_name": "name.jpg", "bbox": [x, y, w, h], "score": s}, ...]``, or the ``predictions.json`` of
    ``scnet detect predict`` (``[{"image": ..., "detections": [{"category", "score", "bbox"}]}]``: its ``person``
    detections where it has that category, else all of them), so that a detector's output feeds pose directly."""
    path = Path(path)
    data = read_json(path, what='box file', error=PoseError)
    out: Dict[str, List[Tuple[List[float], float]]] = {}

    def add(name, box, score, where):
        if not (isinstance(box, (list, tuple)) and len(box) in (4, 5) and
                all(isinstance(v, (int, float)) for v in box)):
            raise PoseError(f'{path}: {where}: a box is [x, y, w, h] or [x, y, w, h, score], got {box!r}')
        if box[2] <= 0 or box[3] <= 0:
            raise PoseError(f'{path}: {where}: box {list(box)} has zero or negative area')
        out.setdefault(str(name), []).append(([float(v) for v in box[:4]], float(box[4] if len(box) == 5 else score)))

    if isinstance(data, dict):
        for name, boxes in data.items():
            if not isinstance(boxes, list):
                raise PoseError(f'{path}: {name}: expected a list of boxes')
            out.setdefault(str(name), [])   # an image listed without boxes: known, no one to draw
            for box in boxes:
                add(name, box, 1.0, name)
    elif isinstance(data, list) and data and all(isinstance(item, dict) and isinstance(item.get('detections'), list)
                                                 and 'image' in item for item in data):
        categories = {det.get('category') for item in data for det in item['detections'] if isinstance(det, dict)}
        for i, item in enumerate(data):
            out.setdefault(str(item['image']), [])   # an image without detections: known, no one to draw
            for det in item['detections']:
                if not isinstance(det, dict) or 'bbox' not in det:
                    raise PoseError(f'{path}: entry #{i} ({item["image"]}): a detection without a "bbox"')
                if 'person' not in categories or det.get('category') == 'person':
                    add(item['image'], det['bbox'], float(det.get('score', 1.0)), f'entry #{i}')
    elif isinstance(data, list):
        for i, item in enumerate(data):
            name = item.get('file_name', item.get('image')) if isinstance(item, dict) else None
            if name is None or 'bbox' not in item:
                raise PoseError(f'{path}: entry #{i}: expected {{"file_name", "bbox": [x, y, w, h], "score"}}')
            add(name, item['bbox'], float(item.get('score', 1.0)), f'entry #{i}')
    else:
        raise PoseError(f'{path}: expected {{"image.jpg": [[x, y, w, h], ...]}} or a list of '
                        '{"file_name", "bbox", "score"}')
    return out


def _boxes_of_images(path: Path, person_boxes: Dict[str, List[Tuple[List[float], float]]], files: Sequence[Path],
                     sizes: Sequence[Tuple[int, int]]) -> List[List[Tuple[List[float], float]]]:
    """The boxes of each of ``files`` (a file's entry: its path as found, else its file name), clipped to the
    image as the boxes of a detection-results file are, so that a box a detector let pass the border a little
    crops the person it found.

    A ``PoseError`` for a box wholly outside its image (no person to crop), and for names of the box file
    that are none of the images while some image has no entry: that is a file keyed by other names (paths
    where the images are given by name, other extensions ...), which would otherwise draw no one at all.
    Entries for images not given are fine when every image given has its own (a file of a whole set, drawn
    for a few of its images)."""
    known = {key for f in files for key in (str(f), f.name)}
    unknown = [name for name in person_boxes if name not in known]
    out, outside = [], []
    for f, (width, height) in zip(files, sizes):
        entries = person_boxes.get(str(f), person_boxes.get(f.name))
        if entries is None:
            out.append(None)
            continue
        clipped = []
        for box, score in entries:
            inside = _clip_box(box, width, height)
            if inside is None:
                outside.append(f'{f.name} ({width}x{height}): {box}')
            else:
                clipped.append((inside, score))
        out.append(clipped)
    without = [f.name for f, entries in zip(files, out) if entries is None]
    if unknown and without:
        more = f' ... ({len(unknown) - _SHOWN} more)' if len(unknown) > _SHOWN else ''
        raise PoseError(f'{path}: {len(unknown)} name(s) match none of the images: {", ".join(unknown[:_SHOWN])}'
                        f'{more}; and {len(without)} image(s) have no boxes: {", ".join(without[:_SHOWN])}'
                        f'{" ..." if len(without) > _SHOWN else ""}. Key the boxes by file name (e.g. '
                        f'{files[0].name!r}) or by the path as given to --images')
    if outside:
        more = f'; ... ({len(outside) - _SHOWN} more)' if len(outside) > _SHOWN else ''
        raise PoseError(f'{path}: {len(outside)} box(es) [x, y, w, h] wholly outside their image: '
                        f'{"; ".join(outside[:_SHOWN])}{more}; boxes are in the pixels of the image itself')
    return [entries or [] for entries in out]


def predict_pose(checkpoint: Path, inputs: Sequence[str], output: Path, *, boxes: Optional[Path] = None,
                 kpt_thresh: float = 0.2, box_score_thresh: float = 0.0, flip_test: bool = True,
                 device: str = 'auto', batch_size: int = 16) -> List[Path]:
    """Draw the keypoints and skeleton of every person on each image; PNGs (and keypoints.json) in ``output``.
    People: the boxes of ``boxes`` for each image (by file name, clipped to the image), or the whole image as
    one person. Every image and box is checked before anything is written (see ``_boxes_of_images``)."""
    from PIL import Image
    from torchvision.utils import draw_bounding_boxes, draw_keypoints

    from scnet.data.folders import decode_rgb

    ck = load_pose_checkpoint(checkpoint)
    files = image_files(inputs)
    drawings = drawing_paths(files, output)
    person_boxes = _read_person_boxes(boxes) if boxes else None
    sizes = decoded_sizes(files, exif_orientation=True)   # every image readable before anything is written
    if person_boxes is not None:
        person_boxes = _boxes_of_images(Path(boxes), person_boxes, files, sizes)
    h, w = ck.input_size
    instances: List[Instance] = []
    for i, f in enumerate(files):
        if person_boxes is None:
            entries = [([0.0, 0.0, float(sizes[i][0]), float(sizes[i][1])], 1.0)]
        else:
            entries = person_boxes[i]
        for box, score in entries:
            if score < box_score_thresh:
                continue
            centre, size = box_to_region(box, w / h, ck.box_padding)
            instances.append(Instance(i, str(f), centre, size, score))
    dataset = PoseCropSet(instances, ck.input_size, exif_orientation=True)  # photos as a viewer shows them
    ctx = distributed.Context(0, 1, 0, distributed._device(device, 0))
    ck.model.to(ctx.device)
    crops = predict_keypoints(ck.model, dataset, ck.spec, ctx, flip_test=flip_test, batch_size=batch_size,
                              stride=ck.stride, progress=False, all_crops=True) if instances else []
    people: Dict[int, List[Dict[str, Any]]] = {}
    for crop in crops:
        inst = instances[crop['index']]
        people.setdefault(inst.image_id, []).append({'keypoints': crop['keypoints'], 'score': inst.score,
                                                     'centre': inst.centre, 'size': inst.size})
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    written, record = [], []
    for i, (f, drawing) in enumerate(zip(files, drawings)):
        image = torch.from_numpy(np.array(decode_rgb(str(f), exif_orientation=True))).permute(2, 0, 1).contiguous()
        found = people.get(i, [])
        side = min(image.shape[1:])
        if found:
            kps = torch.tensor(np.stack([p['keypoints'] for p in found]), dtype=torch.float32)
            box_xyxy = torch.tensor([[*(p['centre'] - p['size'] / 2 / ck.box_padding),
                                      *(p['centre'] + p['size'] / 2 / ck.box_padding)] for p in found],
                                    dtype=torch.float32)
            if person_boxes is not None:
                image = draw_bounding_boxes(image, box_xyxy, colors='yellow', width=max(1, side // 200))
            image = draw_keypoints(image, kps[..., :2], connectivity=ck.spec.skeleton or None, colors='red',
                                   radius=max(2, side // 80), width=max(1, side // 150),
                                   visibility=kps[..., 2] > kpt_thresh)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(drawing)
        written.append(drawing)
        record.append({'image': str(f), 'drawing': drawing.name, 'people': [
            {'score': round(p['score'], 4), 'keypoints': {n: [round(float(v), 2) for v in p['keypoints'][j]]
                                                           for j, n in enumerate(ck.spec.names)}}
            for p in found]})
    (output / 'keypoints.json').write_text(json.dumps(record, indent=1))
    return written

"""COCO-format images and annotations as the inputs and targets of torchvision's Faster / Mask R-CNN.

The annotation file has been checked by ``scnet.tasks.coco_files.load_coco`` and the image headers by
``scnet.tasks.coco_files.check_images`` (a file that is not an image, or not of the size the annotation file gives) before anything is
built; what is left to find at reading time is an image whose data is damaged past its header, which stops the
run with the file named (the last epoch's ``last.pt`` is kept).

Resizing is not done here: the detector's own ``GeneralizedRCNNTransform`` resizes every image (short side
``min_size``, long side at most ``max_size``, boxes and masks with it), normalises it, and maps its
predictions back to the image's own pixels, which is what COCO evaluation compares with the annotations.
Training adds a horizontal flip with probability 1/2 (image, boxes and masks together, by
``torchvision.transforms.v2``); whether image ``i`` is flipped in epoch ``e`` depends on (seed, e, i) only,
so a resumed run and a K-process run see the same flips as an uninterrupted single-process one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from scnet.data.folders import BadImageError, decode_rgb
from scnet.tasks.coco_files import CocoDataError

__all__ = ['CocoDetectionSet', 'collate', 'category_labels', 'matched_categories']


def category_labels(coco) -> List[Dict]:
    """The categories of a COCO file as ``[{'id', 'name'}, ...]`` sorted by id: label ``k`` of the detector
    (1-based; 0 is the background) is entry ``k - 1``."""
    return [{'id': int(c['id']), 'name': str(c.get('name', c['id']))}
            for c in sorted(coco.dataset['categories'], key=lambda c: c['id'])]


def matched_categories(model_categories: Sequence[Dict], coco, source: str) -> Dict[int, int]:
    """``{detector label: category id of coco}``, matching by id and name, or by name when the ids differ.

    Every category of ``coco`` must be one the detector knows (a name it was trained on); the detector may
    know more (they are simply never in this file's ground truth)."""
    theirs = category_labels(coco)
    by_id = {c['id']: c['name'] for c in theirs}
    by_name = {c['name']: c['id'] for c in theirs}
    known = {c['name'] for c in model_categories}
    unknown = [c['name'] for c in theirs if c['name'] not in known]
    if unknown:
        raise CocoDataError(f'{source}: categories the detector was not trained on: {", ".join(unknown[:10])}'
                            f'{" ..." if len(unknown) > 10 else ""} (it knows: '
                            f'{", ".join(c["name"] for c in model_categories[:20])})')
    mapping = {}
    for label, cat in enumerate(model_categories, start=1):
        if by_id.get(cat['id']) == cat['name']:
            mapping[label] = cat['id']
        elif cat['name'] in by_name:
            mapping[label] = by_name[cat['name']]
    return mapping


def collate(batch):
    """Lists of images and targets (detection images differ in size; the model batches them itself)."""
    return tuple(zip(*batch))


class CocoDetectionSet(Dataset):
    """Images of a checked ``COCO`` with their targets: ``boxes`` (x0, y0, x1, y1 in pixels), ``labels``
    (1..K in ``categories`` order), ``masks`` (N x H x W uint8, for ``with_masks``) and ``image_id``.

    Crowd annotations (``iscrowd`` 1) are left out of the targets, as torchvision's and Detectron's COCO
    training does (COCO evaluation ignores detections matched to them). ``with_targets=False`` reads
    images only (evaluation and prediction)."""

    def __init__(self, coco, images_dir: Path, categories: Sequence[Dict], *, annotation_file: str = '',
                 with_masks: bool = False, with_targets: bool = True, train: bool = False, flip: bool = True,
                 seed: int = 0, image_ids: Optional[Sequence[int]] = None) -> None:
        self.coco = coco
        self.images_dir = Path(images_dir)
        self.annotation_file = annotation_file
        self.label_of = {c['id']: label for label, c in enumerate(categories, start=1)}
        self.with_masks = with_masks
        self.with_targets = with_targets
        self.train = train
        self.flip = flip
        self.seed = seed
        self.epoch = 0
        self.ids = list(image_ids) if image_ids is not None else sorted(coco.getImgIds())

    def __len__(self) -> int:
        return len(self.ids)

    def read_image(self, image_id: int) -> torch.Tensor:
        info = self.coco.imgs[image_id]
        path = self.images_dir / info['file_name']
        try:
            image = decode_rgb(str(path))
        except FileNotFoundError:
            raise BadImageError(f'{path}: image listed in {self.annotation_file or "the annotations"} is missing') \
                from None
        except Exception as e:  # PIL raises several kinds for truncated or foreign files
            raise BadImageError(f'{path}: cannot decode the image ({e})') from None
        if image.size != (info['width'], info['height']):
            raise CocoDataError(f'{path}: the image is {image.size[0]}x{image.size[1]} pixels but '
                                f'{self.annotation_file or "its annotation file"} says {info["width"]}x'
                                f'{info["height"]}; the boxes and masks would not fit it')
        return tv_tensors.Image(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))

    def _target(self, image_id: int, height: int, width: int) -> Dict:
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if not a.get('iscrowd', 0)]
        boxes, labels, masks = [], [], []
        for a in anns:
            x, y, w, h = a['bbox']
            x0, y0 = max(0.0, float(x)), max(0.0, float(y))
            x1, y1 = min(float(width), float(x + w)), min(float(height), float(y + h))
            if x1 - x0 < 1e-3 or y1 - y0 < 1e-3:  # a box only touching the border (load_coco allows 1 px slack)
                continue
            boxes.append([x0, y0, x1, y1])
            labels.append(self.label_of[a['category_id']])
            if self.with_masks:
                masks.append(self.coco.annToMask(a))
        target = {
            'boxes': tv_tensors.BoundingBoxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                              format='XYXY', canvas_size=(height, width)),
            'labels': torch.tensor(labels, dtype=torch.int64),
            'image_id': int(image_id),
        }
        if self.with_masks:
            stacked = np.stack(masks) if masks else np.zeros((0, height, width), dtype=np.uint8)
            target['masks'] = tv_tensors.Mask(torch.from_numpy(stacked))
        return target

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, Dict]:
        image_id = self.ids[index]
        image = self.read_image(image_id)
        target = self._target(image_id, *image.shape[-2:]) if self.with_targets else {'image_id': int(image_id)}
        if self.train and self.flip:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 10_007 + index)
            if torch.rand(1, generator=g).item() < 0.5:
                image, target = _flip(image, target)
        image = TF.to_dtype(image, torch.float32, scale=True).as_subclass(torch.Tensor)
        target = {k: v.as_subclass(torch.Tensor) if isinstance(v, torch.Tensor) else v for k, v in target.items()}
        return image, target


def _flip(image, target):
    flipped = {k: TF.horizontal_flip(v) if isinstance(v, (tv_tensors.BoundingBoxes, tv_tensors.Mask)) else v
               for k, v in target.items()}
    return TF.horizontal_flip(image), flipped

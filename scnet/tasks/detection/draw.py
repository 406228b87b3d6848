"""Detections drawn on one's own images: PNGs with boxes, labels, scores (and masks), and a JSON list."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from scnet.tasks.detection.checkpoint import load_detector
from scnet.tasks.detection.evaluate import mask_rle
from scnet.tasks.image_files import decoded_sizes, drawing_paths, image_files
from scnet.train import distributed

__all__ = ['draw_detections', 'predict']

_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
            (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180)]


def draw_detections(image: torch.Tensor, output: Dict[str, torch.Tensor], names: Sequence[str], *,
                    score_threshold: float = 0.5) -> Tuple[torch.Tensor, int]:
    """``image`` (uint8, 3 x H x W) with the boxes, labels, scores and (translucent) masks of the detections
    scoring at least ``score_threshold``; also returns how many were drawn."""
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    keep = output['scores'] >= score_threshold
    boxes, labels, scores = output['boxes'][keep], output['labels'][keep], output['scores'][keep]
    colours = [_PALETTE[(int(label) - 1) % len(_PALETTE)] for label in labels]
    if 'masks' in output and len(boxes):
        image = draw_segmentation_masks(image, output['masks'][keep][:, 0] > 0.5, alpha=0.45, colors=colours)
    if len(boxes):
        texts = [f'{names[int(label) - 1]} {float(score):.2f}' for label, score in zip(labels, scores)]
        image = draw_bounding_boxes(image, boxes, labels=texts, colors=colours, width=2)
    return image, int(len(boxes))


@torch.no_grad()
def predict(checkpoint: Path, inputs: Sequence[Path], output: Path, *, score_threshold: float = 0.5,
            device: str = 'auto', image_size: Optional[int] = None, progress: bool = False) -> List[Dict[str, Any]]:
    """Detect on each image of ``inputs`` (files or folders), write ``output/<name>.png`` (the image at its
    own size with the detections drawn) and ``output/predictions.json`` (every detection above the
    threshold: category, score, box [x, y, w, h] in the image's pixels and, for Mask R-CNN, its mask as COCO's
    RLE under ``segmentation``); returns that list.

    Every image is decoded once before anything is written: a damaged one stops the command with nothing
    written, rather than after some drawings and without ``predictions.json``."""
    from PIL import Image

    from scnet.data.folders import BadImageError, decode_rgb
    from scnet.tasks.coco_files import resize_problem

    files = image_files(inputs)
    drawings = drawing_paths(files, output)
    dev = distributed._device(device, 0)
    model, info = load_detector(checkpoint, device=str(dev), image_size=image_size)
    thin = [f'{path} is {problem}' for path, (width, height) in zip(files, decoded_sizes(files))
            for problem in [resize_problem(width, height, (info.min_size, info.max_size))] if problem]
    if thin:
        raise BadImageError(f'{len(thin)} image(s) too thin to resize: {"; ".join(thin[:5])} (nothing was written)')
    names = [c['name'] for c in info.categories]
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    summary = []
    for path, drawing in tqdm(list(zip(files, drawings)), desc='predict', unit='image',
                              disable=None if progress else True, leave=False):
        try:
            picture = decode_rgb(str(path), exif_orientation=True)  # photos as a viewer shows them
        except Exception as e:
            raise BadImageError(f'{path}: cannot decode the image ({e})') from None
        image = torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1)
        result = model([image.to(dev, torch.float32) / 255])[0]
        result = {k: v.cpu() for k, v in result.items()}
        drawn, count = draw_detections(image, result, names, score_threshold=score_threshold)
        tmp = output / f'.{drawing.name}.partial'
        Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(tmp, format='PNG')
        tmp.replace(drawing)
        keep = result['scores'] >= score_threshold
        detections = [{'category': names[int(label) - 1], 'score': round(float(score), 4),
                       'bbox': [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2),
                                round(float(y1 - y0), 2)]}
                      for (x0, y0, x1, y1), label, score in zip(result['boxes'][keep], result['labels'][keep],
                                                                 result['scores'][keep])]
        if 'masks' in result:
            for detection, mask in zip(detections, (result['masks'][keep][:, 0] > 0.5).numpy()):
                detection['segmentation'] = mask_rle(mask)
        summary.append({'image': str(path), 'output': str(drawing), 'width': picture.width,
                        'height': picture.height, 'detections': detections})
    (output / 'predictions.json').write_text(json.dumps(summary, indent=2))
    return summary

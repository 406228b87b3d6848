"""COCO metrics of a detector: pycocotools' AP, AP50, AP75, APs, APm, APl of the boxes and, for Mask R-CNN,
of the masks, in percent as in the paper's Table 4 (-1 where the evaluated set has no object of that size:
pycocotools' convention).

Every validation image is evaluated exactly once whatever the number of processes: process k takes images
k, k+K, ...; the detections are gathered to process 0, which runs pycocotools.
"""
from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Subset

from scnet.files import write_json_atomic
from scnet.tasks.coco_files import check_images, load_coco
from scnet.tasks.detection.data import CocoDetectionSet, collate, matched_categories
from scnet.tasks.eval_report import EvalReport
from scnet.train import distributed
from scnet.train.engine import batches
from scnet.train.preemption import main_process_sigterm_only

__all__ = ['METRICS', 'coco_metrics', 'complete_ground_truth', 'evaluate_detector', 'evaluate_checkpoint', 'mask_rle']

#: The six numbers of the paper's Table 4, in pycocotools' ``stats`` order.
METRICS = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl')


def coco_metrics(coco_gt, detections: List[Dict], iou_types: Sequence[str],
                 image_ids: Optional[Sequence[int]] = None) -> Dict[str, float]:
    """pycocotools' COCOeval of ``detections`` (COCO result dicts with ``bbox`` and, for ``segm``,
    ``segmentation``) over ``image_ids`` (default: all images of ``coco_gt``): ``{type}_AP`` ...
    ``{type}_APl`` in percent, -1 where no object of the size range exists. pycocotools' printing is kept
    off stdout."""
    from pycocotools.cocoeval import COCOeval

    out: Dict[str, float] = {}
    ids = sorted(coco_gt.getImgIds()) if image_ids is None else list(image_ids)
    for iou_type in iou_types:
        key = 'bbox' if iou_type == 'bbox' else 'segmentation'
        results = [{'image_id': d['image_id'], 'category_id': d['category_id'], 'score': d['score'], key: d[key]}
                   for d in detections if key in d]
        if not results:  # loadRes cannot take an empty list; no detection means every AP is 0
            out.update({f'{iou_type}_{name}': 0.0 for name in METRICS})
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = coco_gt.loadRes(results)
            evaluator = COCOeval(coco_gt, coco_dt, iou_type)
            evaluator.params.imgIds = ids
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        for name, value in zip(METRICS, evaluator.stats[:6]):
            out[f'{iou_type}_{name}'] = round(float(value) * 100, 4) if value >= 0 else -1.0
    return out


def complete_ground_truth(coco, task: str) -> None:
    """Fill what pycocotools' evaluation reads but COCO files sometimes leave out: ``area`` (of the mask
    for segm files, of the box otherwise) and ``iscrowd`` (0)."""
    from pycocotools import mask as mask_utils

    for ann in coco.dataset['annotations']:
        ann.setdefault('iscrowd', 0)
        if 'area' not in ann:
            if task == 'segm' and ann.get('segmentation'):
                ann['area'] = float(mask_utils.area(coco.annToRLE(ann)))
            else:
                ann['area'] = float(ann['bbox'][2] * ann['bbox'][3])


def mask_rle(mask: np.ndarray) -> Dict[str, Any]:
    """A binary ``(H, W)`` mask as COCO's RLE (``{"size": [H, W], "counts": str}``), JSON-ready."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle['counts'] = rle['counts'].decode('ascii')
    return rle


def _to_results(output: Dict[str, torch.Tensor], image_id: int, label_to_category: Dict[int, int],
                masks: bool) -> List[Dict]:
    boxes = output['boxes'].cpu().tolist()
    scores = output['scores'].cpu().tolist()
    labels = output['labels'].cpu().tolist()
    binary = (output['masks'][:, 0] > 0.5).cpu().numpy().astype(np.uint8) if masks and 'masks' in output else None
    results = []
    for i, ((x0, y0, x1, y1), score, label) in enumerate(zip(boxes, scores, labels)):
        if label not in label_to_category:
            continue
        r = {'image_id': int(image_id), 'category_id': label_to_category[label],
             'bbox': [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)], 'score': round(score, 5)}
        if binary is not None:
            r['segmentation'] = mask_rle(binary[i])
        results.append(r)
    return results


@torch.no_grad()
def evaluate_detector(model: nn.Module, dataset: CocoDetectionSet, label_to_category: Dict[int, int], *,
                      task: str, ctx: Optional[distributed.Context] = None, batch_size: int = 2, workers: int = 0,
                      progress: bool = False, desc: str = 'val',
                      results_out: Optional[List[Dict]] = None) -> Dict[str, Any]:
    """COCO metrics of ``model`` on every image of ``dataset`` (a ``CocoDetectionSet`` over the checked
    ground truth), each image evaluated once whatever the number of processes; every process gets the
    same dict: ``val_images``, ``val_detections`` and ``bbox_AP`` ... (``segm_AP`` ... for ``segm``).
    ``results_out``: a list that process 0 extends with the detections in COCO's results format (boxes
    ``[x, y, w, h]``, RLE masks for ``segm``), the file ``pose eval --boxes`` reads."""
    ctx = ctx or distributed.Context(0, 1, 0, next(model.parameters()).device)
    model.eval()
    share = Subset(dataset, range(ctx.rank, len(dataset), ctx.world_size))
    loader = DataLoader(share, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                        worker_init_fn=main_process_sigterm_only())  # a job's SIGTERM: the run stops after it
    results: List[Dict] = []
    for images, targets in batches(loader, ctx, progress=progress, desc=desc):
        outputs = model([image.to(ctx.device) for image in images])
        for output, target in zip(outputs, targets):
            results.extend(_to_results(output, target['image_id'], label_to_category, masks=task == 'segm'))
    if ctx.distributed:
        gathered: List[Optional[List[Dict]]] = [None] * ctx.world_size
        dist.all_gather_object(gathered, results)
        results = [r for part in gathered for r in part]
    metrics: List[Optional[Dict]] = [None]
    if ctx.is_main:
        if results_out is not None:
            results_out.extend(results)
        iou_types = ('bbox', 'segm') if task == 'segm' else ('bbox',)
        metrics[0] = {'val_images': len(dataset), 'val_detections': len(results),
                      **coco_metrics(dataset.coco, results, iou_types, image_ids=dataset.ids)}
    if ctx.distributed:
        dist.broadcast_object_list(metrics, src=0)
    return metrics[0]


def evaluate_checkpoint(checkpoint: Path, val_ann: Path, val_images: Path, *, batch_size: int = 2,
                        workers: int = 0, device: str = 'auto', image_size: Optional[int] = None,
                        progress: bool = False, results_file: Optional[Path] = None) -> Dict[str, Any]:
    """COCO metrics of a detection checkpoint on a COCO-format set (one process or, under torchrun, many), as
    an ``EvalReport`` dict: ``metrics`` holds ``bbox_AP`` ... (and ``segm_AP`` ... for Mask R-CNN).
    ``results_file``: also write the detections there, in COCO's results format (what ``scnet pose eval
    --boxes`` takes, and the COCO evaluation server)."""
    from scnet.tasks.detection.checkpoint import load_detector

    ctx = distributed.setup(device)
    try:
        model, info = load_detector(checkpoint, device=str(ctx.device), image_size=image_size)
        coco = load_coco(Path(val_ann), Path(val_images), task=info.task)
        check_images(coco, Path(val_images), str(val_ann), resize=(info.min_size, info.max_size))
        label_to_category = matched_categories(info.categories, coco, str(val_ann))
        complete_ground_truth(coco, info.task)
        dataset = CocoDetectionSet(coco, Path(val_images), info.categories, with_targets=False,
                                   annotation_file=str(val_ann))
        start = time.perf_counter()
        results: List[Dict] = []
        metrics = evaluate_detector(model, dataset, label_to_category, task=info.task, ctx=ctx,
                                    batch_size=batch_size, workers=workers, progress=progress, results_out=results)
        if ctx.is_main and results_file:
            write_json_atomic(results, Path(results_file))
        return EvalReport(
            task=info.task, checkpoint=str(checkpoint), backbone=info.backbone, annotations=str(val_ann),
            images=metrics['val_images'],
            metrics={k: v for k, v in metrics.items() if k.startswith(('bbox_', 'segm_'))},
            counts={'detections': metrics['val_detections']},
            settings={'min_size': info.min_size, 'max_size': info.max_size},
            eval_time_s=round(time.perf_counter() - start, 3)).to_dict()
    finally:
        distributed.teardown()

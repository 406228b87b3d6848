"""Keypoints of every person crop and COCO's OKS metrics over them, the way simple-baselines evaluates.

Per crop: heatmaps (averaged with those of the mirrored crop under flip test), decoded to image coordinates,
each keypoint scored by its heatmap maximum. Per person: the box score times the mean score of its keypoints
above ``kpt_score_thresh`` (0.2). Per image: OKS non-maximum suppression (0.9), which removes the duplicates
of overlapping detections. Then pycocotools' ``COCOeval(iouType='keypoints')``: AP (OKS 0.50:0.95), AP50,
AP75, APm, APl and the same five ARs, reported in percent as ``kpt_AP``, ``kpt_AP50``, ... (-1 where the data
has no person of that size range, as pycocotools and ``scnet detect`` report it).

Under torchrun each process takes every ``world_size``-th crop; the results are gathered on every process
(``all_gather_object``), so each crop counts exactly once.
"""
from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from scnet.tasks.pose.data import (KeypointSpec, PoseCropSet, apply, decode_heatmaps, flip_average,
                                   heatmap_to_crop)
from scnet.tasks.eval_report import EvalReport
from scnet.train import distributed
from scnet.train.distributed import Context
from scnet.train.engine import batches
from scnet.train.preemption import main_process_sigterm_only
from scnet.train.sampling import StridedSampler

__all__ = ['METRICS', 'predict_keypoints', 'person_results', 'oks_nms', 'coco_keypoint_metrics', 'evaluate_pose',
           'evaluate_pose_checkpoint']

#: pycocotools' ``stats`` of a keypoint evaluation, in order, under the names used in logs and JSON.
METRICS = ('kpt_AP', 'kpt_AP50', 'kpt_AP75', 'kpt_APm', 'kpt_APl', 'kpt_AR', 'kpt_AR50', 'kpt_AR75', 'kpt_ARm',
           'kpt_ARl')


@torch.no_grad()
def predict_keypoints(model: nn.Module, dataset: PoseCropSet, spec: KeypointSpec, ctx: Context, *,
                      flip_test: bool = True, batch_size: int = 32, workers: int = 0, stride: int = 4,
                      progress: bool = True, desc: str = 'val', all_crops: bool = False) -> List[Dict[str, Any]]:
    """Keypoints (K, 3: x, y, score) of this process's share of ``dataset`` (all of it with ``all_crops``),
    one dict per crop with the crop's index."""
    model.eval()
    rank, world = (0, 1) if all_crops else (ctx.rank, ctx.world_size)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                        sampler=StridedSampler(len(dataset), rank=rank, world_size=world),
                        pin_memory=ctx.device.type == 'cuda',
                        worker_init_fn=main_process_sigterm_only())  # a job's SIGTERM: the run stops after it
    perm = spec.flip_permutation
    out = []
    for images, indices in batches(loader, ctx, progress=progress, desc=desc):
        images = images.to(ctx.device, non_blocking=True)
        heatmaps = model(images).float()
        if flip_test:
            heatmaps = flip_average(heatmaps, model(images.flip(-1)).float(), perm)
        positions, scores = decode_heatmaps(heatmaps)
        positions = heatmap_to_crop(positions.cpu().double().numpy(), stride)
        scores = scores.cpu().double().numpy()
        for j, index in enumerate(indices.tolist()):
            inverse = np.linalg.inv(dataset.matrix(index))
            xy = apply(inverse, positions[j])
            out.append({'index': index, 'keypoints': np.concatenate([xy, scores[j][:, None]], axis=1)})
    return out


def _gather(items: List[Any], ctx: Context) -> List[Any]:
    if not (ctx.distributed and dist.is_initialized()):
        return items
    parts: List[Optional[List[Any]]] = [None] * ctx.world_size
    dist.all_gather_object(parts, items)
    return [item for part in parts for item in (part or [])]


def oks_nms(people: List[Dict[str, Any]], sigmas: np.ndarray, thresh: float) -> List[int]:
    """Indices of ``people`` kept by greedy OKS suppression (highest score first), as simple-baselines."""
    if not people:
        return []
    order = np.argsort([-p['score'] for p in people], kind='stable')
    kps = np.stack([p['keypoints'] for p in people])
    areas = np.array([p['area'] for p in people])
    variances = (2 * sigmas) ** 2
    keep = []
    while len(order):
        i, rest = order[0], order[1:]
        keep.append(int(i))
        if not len(rest):
            break
        d2 = ((kps[rest, :, :2] - kps[i, None, :, :2]) ** 2).sum(-1)
        e = d2 / variances[None] / ((areas[i] + areas[rest])[:, None] / 2 + np.spacing(1)) / 2
        oks = np.exp(-e).mean(1)
        order = rest[oks <= thresh]
    return keep


def person_results(crops: List[Dict[str, Any]], dataset: PoseCropSet, spec: KeypointSpec, *,
                   kpt_score_thresh: float = 0.2, nms_thresh: float = 0.9) -> List[Dict[str, Any]]:
    """Rescored, OKS-suppressed people in COCO's keypoint results format."""
    by_image: Dict[int, List[Dict[str, Any]]] = {}
    for crop in crops:
        inst = dataset.instances[crop['index']]
        kps = crop['keypoints']
        confident = kps[:, 2] > kpt_score_thresh
        kpt_score = float(kps[confident, 2].mean()) if confident.any() else 0.0
        by_image.setdefault(inst.image_id, []).append(
            {'keypoints': kps, 'score': inst.score * kpt_score, 'area': float(np.prod(inst.size))})
    results = []
    for image_id in sorted(by_image):
        people = by_image[image_id]
        for i in oks_nms(people, spec.sigmas, nms_thresh) if nms_thresh < 1 else range(len(people)):
            p = people[i]
            results.append({'image_id': image_id, 'category_id': spec.category_id,
                            'keypoints': [round(float(v), 3) for v in p['keypoints'].ravel()],
                            'score': round(float(p['score']), 6)})
    return results


def coco_keypoint_metrics(coco_gt, results: List[Dict[str, Any]], spec: KeypointSpec) -> Dict[str, float]:
    """``METRICS`` (percent) of ``results`` against ``coco_gt`` with pycocotools, over all its images."""
    from pycocotools.cocoeval import COCOeval

    if not results:
        return {name: 0.0 for name in METRICS}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and its table
        coco_dt = coco_gt.loadRes([dict(r) for r in results])
        evaluator = COCOeval(coco_gt, coco_dt, iouType='keypoints')
        evaluator.params.kpt_oks_sigmas = spec.sigmas
        evaluator.params.imgIds = sorted(coco_gt.getImgIds())
        evaluator.params.catIds = [spec.category_id]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: (round(100.0 * float(v), 4) if v >= 0 else -1.0) for name, v in zip(METRICS, evaluator.stats)}


def evaluate_pose(model: nn.Module, dataset: PoseCropSet, coco_gt, spec: KeypointSpec, ctx: Context, *,
                  flip_test: bool = True, batch_size: int = 32, workers: int = 0, stride: int = 4,
                  kpt_score_thresh: float = 0.2, nms_thresh: float = 0.9, progress: bool = True,
                  desc: str = 'val') -> Dict[str, Any]:
    """Metrics (every process gets them; process 0 computes them) and, in process 0, the COCO results list
    under ``results``."""
    crops = predict_keypoints(model, dataset, spec, ctx, flip_test=flip_test, batch_size=batch_size,
                              workers=workers, stride=stride, progress=progress, desc=desc)
    crops = _gather(crops, ctx)
    if len(crops) != len(dataset):
        raise RuntimeError(f'evaluation covered {len(crops)} of {len(dataset)} crops')
    results: List[Dict[str, Any]] = []
    metrics: Optional[Dict[str, Any]] = None
    if ctx.is_main:
        results = person_results(crops, dataset, spec, kpt_score_thresh=kpt_score_thresh, nms_thresh=nms_thresh)
        metrics = dict(coco_keypoint_metrics(coco_gt, results, spec), val_crops=len(dataset),
                       val_people=len(results))
    if ctx.distributed and dist.is_initialized():
        box = [metrics]
        dist.broadcast_object_list(box, src=0)
        metrics = box[0]
    return {'metrics': metrics, 'results': results}


def evaluate_pose_checkpoint(checkpoint: Path, val_ann: Path, val_images: Path, *, boxes: Optional[Path] = None,
                             box_score_thresh: float = 0.0, flip_test: bool = True, batch_size: int = 32,
                             workers: int = 2, device: str = 'auto', progress: bool = True,
                             results_file: Optional[Path] = None) -> Dict[str, Any]:
    """OKS metrics of ``checkpoint`` on a COCO keypoint annotation file (person boxes: ground truth, or a
    detection-results file ``boxes``), as an ``EvalReport`` dict: ``metrics`` holds ``kpt_AP`` ..."""
    from scnet.tasks.pose.checkpoint import load_pose_checkpoint
    from scnet.tasks.pose.recipe import PoseRecipe
    from scnet.tasks.pose.splits import check_same_keypoints, load_split, val_instances

    ck = load_pose_checkpoint(checkpoint)
    coco, spec = load_split(str(val_ann), str(val_images))
    check_same_keypoints(ck.spec, spec, 'the checkpoint\'s', str(val_ann))
    settings = PoseRecipe(image_size=ck.input_size, box_score_thresh=box_score_thresh, box_padding=ck.box_padding)
    dataset = PoseCropSet(val_instances(coco, spec, settings, str(val_images), str(boxes) if boxes else None),
                          ck.input_size)
    ctx = distributed.setup(device)
    try:
        ck.model.to(ctx.device)
        start = time.perf_counter()
        evaluation = evaluate_pose(ck.model, dataset, coco, spec, ctx, flip_test=flip_test, batch_size=batch_size,
                                   workers=workers, stride=ck.stride, progress=progress, desc='eval')
        elapsed = time.perf_counter() - start
        if ctx.is_main and results_file:
            Path(results_file).write_text(json.dumps(evaluation['results']))
    finally:
        distributed.teardown()
    metrics = evaluation['metrics']
    return EvalReport(
        task='pose', checkpoint=str(checkpoint), backbone=ck.backbone, annotations=str(val_ann),
        images=len(coco.getImgIds()), metrics={k: metrics[k] for k in METRICS},
        counts={'crops': metrics['val_crops'], 'people': metrics['val_people']},
        settings={'image_size': list(ck.input_size), 'boxes': str(boxes) if boxes else 'ground truth',
                  'flip_test': flip_test},
        eval_time_s=round(elapsed, 3)).to_dict()

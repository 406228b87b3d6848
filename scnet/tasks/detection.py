"""Object detection and instance segmentation with a zoo backbone (the paper's section 4.3, Table 4).

torchvision's Faster R-CNN (``task='bbox'``) or Mask R-CNN (``task='segm'``) on an FPN over the four stages
of any zoo model (``scnet.tasks.backbone.build_fpn_backbone``), trained on COCO-format files and evaluated
with pycocotools: AP, AP50, AP75, APs, APm, APl of the boxes and, for Mask R-CNN, of the masks, in percent
as in the paper's Table 4 (-1 where the evaluated set has no object of that size: pycocotools' convention).

Recipes (``DetectionRecipe``, YAML files in ``scnet/recipes/detection/``) are this module's own small
dataclass, read like the classification recipes (``base:``, flags override). ``faster_rcnn_2x`` and
``mask_rcnn_2x`` are the paper's (mmdetection's) 2x schedule: short side 800 (long side at most 1333), batch 16
with lr 0.02 (scaled linearly with the batch), SGD momentum 0.9, weight decay 1e-4, linear warm-up over 500
iterations, 24 epochs with the lr divided by 10 after epochs 16 and 22 (a run of N epochs decays at the same
fractions of N). ``shapes`` is a small recipe for the rendered-shapes set on a CPU (a narrow SCNet-26 from
scratch, 128-px images, light heads, gradients clipped).

Backbone weights (``backbone_checkpoint``: a classification ``model.safetensors`` of ``scnet train``, an
authors' checkpoint in their layout, or ``pretrained``: the authors' / timm's ImageNet weights) get the usual
detection fine-tuning: batch-norm statistics frozen and the stem plus stage 1 frozen (``trainable_layers``
3). A backbone without weights is trained from scratch: every stage trainable and batch norm learning
(torchvision's rule for untrained backbones; frozen random statistics would switch residual branches off).

The run's folder (``scnet.train.run_folder.RunFolder``): ``config.json``; ``metrics.jsonl`` with, per epoch,
``epoch``, ``lr``, ``train_loss`` and each torchvision loss (``train_loss_classifier``, ``train_loss_box_reg``,
``train_loss_objectness``, ``train_loss_rpn_box_reg``, ``train_loss_mask``), ``bbox_AP`` ... ``bbox_APl``
and ``segm_AP`` ... ``segm_APl``; ``tensorboard/``; ``last.pt`` every epoch (atomic; ``--resume``); the final
``model.safetensors`` with everything needed to rebuild the detector in its metadata.

Many processes: ``torchrun --nproc_per_node=K -m scnet detect train ...``: DistributedDataParallel, the global
batch split over the processes, and every validation image evaluated exactly once (process k takes images
k, k+K, ...; the detections are gathered to process 0, which runs pycocotools).
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, Subset
from tqdm import tqdm

from scnet.errors import CheckpointError, ScnetError
from scnet.tasks.coco_files import CocoDataError, load_coco
from scnet.tasks.detection_data import (CocoDetectionSet, category_labels, check_images, collate,
                                        matched_categories)
from scnet.train import distributed
from scnet.train.state import seed_everything
from scnet.train.recipe import RecipeError, RecipeReader, check_settings, device_check
from scnet.train.run_folder import RunError, RunFolder
from scnet.train.schedule import lr_schedule
from scnet.weights.io import read_metadata

__all__ = ['TASKS', 'METRICS', 'DetectionRecipe', 'load_detection_recipe', 'list_detection_recipes',
           'build_detector', 'train_detector', 'evaluate_detector', 'coco_metrics', 'load_detector',
           'evaluate_checkpoint', 'predict', 'DETECTION_RECIPES_DIR']

TASKS = ('bbox', 'segm')
#: The six numbers of the paper's Table 4, in pycocotools' ``stats`` order.
METRICS = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl')
DETECTION_RECIPES_DIR = Path(__file__).resolve().parent.parent / 'recipes' / 'detection'
#: Settings that define the detector's modules (recorded in model.safetensors to rebuild it).
ARCH_KEYS = ('fpn_channels', 'box_head_dim', 'mask_head_dim', 'anchor_sizes', 'rpn_pre_nms_test',
             'rpn_post_nms_test', 'box_score_thresh', 'box_detections_per_img')
#: What a run's config.json records beside its recipe.
RUN_RECORD_KEYS = ('categories', 'world_size', 'peak_lr', 'backbone_weights', 'resolved_trainable_layers',
                   'resolved_frozen_bn')
PRETRAINED = 'pretrained'


# ------------------------------------------------------------------------------------------------- recipe


@dataclass
class DetectionRecipe:
    """Every setting of a detection run (what its ``config.json`` records)."""

    task: str = 'bbox'                     # 'bbox': Faster R-CNN; 'segm': Mask R-CNN
    backbone: str = 'scnet50'
    backbone_kwargs: Dict[str, Any] = field(default_factory=dict)
    backbone_checkpoint: Optional[str] = None   # a file, 'pretrained', or None (from scratch)
    trainable_layers: int = 3              # with backbone weights: stages trained (3: stem + stage 1 frozen)
    frozen_bn: bool = True                 # with backbone weights: BN statistics and affine frozen
    train_ann: Optional[str] = None
    train_images: Optional[str] = None
    val_ann: Optional[str] = None
    val_images: Optional[str] = None
    epochs: int = 24
    lr_steps: List[float] = field(default_factory=lambda: [16, 22])  # epochs after which lr x lr_gamma
    lr_gamma: float = 0.1
    batch_size: int = 16                   # global, over all processes
    lr: Optional[float] = None             # None: base_lr x batch_size / 16
    base_lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1.0e-4
    warmup_iters: int = 500
    warmup_factor: float = 0.001
    grad_clip: Optional[float] = None      # clip the gradients' global L2 norm to this (None: no clipping)
    min_size: int = 800                    # short side
    max_size: int = 1333                   # long side at most
    flip: bool = True                      # horizontal flips (p = 1/2) for training
    fpn_channels: int = 256
    box_head_dim: int = 1024
    mask_head_dim: int = 256
    anchor_sizes: List[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])
    rpn_pre_nms_train: int = 2000
    rpn_post_nms_train: int = 2000
    rpn_pre_nms_test: int = 1000
    rpn_post_nms_test: int = 1000
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 512
    box_score_thresh: float = 0.05
    box_detections_per_img: int = 100
    eval_every: int = 1                    # evaluate every N epochs (and always after the last)
    eval_batch_size: int = 2               # images per process and forward pass in evaluation
    seed: int = 0
    workers: int = 4
    device: str = 'auto'

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else self.base_lr * self.batch_size / 16

    def validate(self) -> 'DetectionRecipe':
        from scnet.models import list_models

        checks = [
            (self.task in TASKS, f'task must be one of {", ".join(TASKS)}, got {self.task!r}'),
            (self.backbone in list_models(), f'unknown backbone {self.backbone!r}; zoo: {", ".join(list_models())}'),
            (self.epochs >= 1, f'epochs must be >= 1, got {self.epochs}'),
            (self.batch_size >= 1, f'batch_size must be >= 1, got {self.batch_size}'),
            (self.peak_lr > 0, f'lr must be > 0, got {self.peak_lr}'),
            (all(0 < s <= self.epochs for s in self.lr_steps),
             f'lr_steps must lie within 1..epochs ({self.epochs}), got {self.lr_steps}'),
            (0 <= self.trainable_layers <= 5, f'trainable_layers must be within 0..5, got {self.trainable_layers}'),
            (self.min_size >= 32 and self.max_size >= self.min_size,
             f'min_size must be >= 32 and max_size >= min_size, got {self.min_size} / {self.max_size}'),
            (len(self.anchor_sizes) == 5, f'anchor_sizes needs 5 sizes (P2-P6), got {self.anchor_sizes}'),
            (self.eval_every >= 1 and self.eval_batch_size >= 1, 'eval_every and eval_batch_size must be >= 1'),
            (self.grad_clip is None or self.grad_clip > 0, f'grad_clip must be > 0 or null, got {self.grad_clip}'),
            (self.workers >= 0, f'workers must be >= 0, got {self.workers}'),
            device_check(self.device),
        ]
        check_settings(checks)
        return self

    def require_data(self) -> 'DetectionRecipe':
        flags = {'train_ann': '--train-ann', 'train_images': '--train-images', 'val_ann': '--val-ann',
                 'val_images': '--val-images'}
        missing = [flag for key, flag in flags.items() if not getattr(self, key)]
        if missing:
            raise RecipeError(f'no data: pass {", ".join(missing)} (COCO-format annotation JSON and image folders)')
        return self

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def arch(self) -> Dict[str, Any]:
        return {k: getattr(self, k) for k in ARCH_KEYS}


_READER = RecipeReader(DetectionRecipe, DETECTION_RECIPES_DIR, RUN_RECORD_KEYS, label='detection recipe')


def list_detection_recipes() -> List[str]:
    return _READER.names()


def load_detection_recipe(config: Optional[str] = None, **overrides: Any) -> DetectionRecipe:
    """The recipe of ``config`` (a YAML path, a shipped name, or a run's config.json) with ``overrides``
    (those not None) on top. ``epochs`` given without ``lr_steps`` moves the decay points in proportion;
    ``backbone`` other than the file's, given without ``backbone_kwargs``, drops the file's backbone options."""
    settings = _READER.read(config)
    overrides = _READER.overrides(overrides)
    if 'backbone' in overrides and 'backbone_kwargs' not in overrides and \
            overrides['backbone'] != settings.get('backbone', DetectionRecipe.backbone):
        overrides['backbone_kwargs'] = {}  # the file's options (e.g. narrower stages) belong to its backbone
    base_epochs = settings.get('epochs', DetectionRecipe.epochs)
    if 'epochs' in overrides and 'lr_steps' not in overrides and overrides['epochs'] != base_epochs:
        steps = settings.get('lr_steps', [16, 22])
        overrides['lr_steps'] = [round(s * overrides['epochs'] / base_epochs, 4) for s in steps]
    return _READER.build({**settings, **overrides})


# ------------------------------------------------------------------------------------------------- model


def build_detector(task: str, backbone: str, num_classes: int, min_size: int = 800, max_size: int = 1333, *,
                   backbone_checkpoint: Optional[str] = None, pretrained_backbone: bool = False,
                   backbone_kwargs: Optional[Dict[str, Any]] = None, trainable_layers: Optional[int] = None,
                   frozen_bn: Optional[bool] = None, fpn_channels: int = 256, box_head_dim: int = 1024,
                   mask_head_dim: int = 256, anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512),
                   rpn_pre_nms_test: int = 1000, rpn_post_nms_test: int = 1000, box_score_thresh: float = 0.05,
                   box_detections_per_img: int = 100, **rcnn_kwargs) -> nn.Module:
    """torchvision's ``FasterRCNN`` (``task='bbox'``) or ``MaskRCNN`` (``'segm'``) over an FPN on zoo model
    ``backbone``.

    ``num_classes`` counts object categories only (80 for COCO); the detector adds the background class.
    ``trainable_layers`` / ``frozen_bn`` left ``None``: 3 / True when the backbone gets weights
    (``backbone_checkpoint`` or ``pretrained_backbone``), 5 / False when it is trained from scratch.
    The other arguments are those of torchvision's ``FasterRCNN``; the defaults are the paper's detectors.
    """
    from torchvision.models.detection import FasterRCNN, MaskRCNN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.models.detection.rpn import AnchorGenerator, RPNHead
    from torchvision.ops import MultiScaleRoIAlign

    from scnet.tasks.backbone import build_fpn_backbone

    if task not in TASKS:
        raise ValueError(f'task must be one of {TASKS}, got {task!r}')
    if len(anchor_sizes) != 5:
        raise ValueError(f'anchor_sizes needs one size per level P2-P6 (5), got {list(anchor_sizes)}')
    has_weights = bool(backbone_checkpoint) or pretrained_backbone
    trainable_layers = (3 if has_weights else 5) if trainable_layers is None else trainable_layers
    frozen_bn = has_weights if frozen_bn is None else frozen_bn
    body = build_fpn_backbone(backbone, checkpoint=backbone_checkpoint, pretrained=pretrained_backbone,
                              trainable_layers=trainable_layers, frozen_bn=frozen_bn, out_channels=fpn_channels,
                              **(backbone_kwargs or {}))
    anchors = AnchorGenerator(tuple((int(s),) for s in anchor_sizes), ((0.5, 1.0, 2.0),) * len(anchor_sizes))
    levels = ['0', '1', '2', '3']
    common = dict(
        num_classes=None, min_size=min_size, max_size=max_size, rpn_anchor_generator=anchors,
        rpn_head=RPNHead(fpn_channels, anchors.num_anchors_per_location()[0]),
        box_roi_pool=MultiScaleRoIAlign(levels, output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(fpn_channels * 7 * 7, box_head_dim),
        box_predictor=FastRCNNPredictor(box_head_dim, num_classes + 1),
        rpn_pre_nms_top_n_test=rpn_pre_nms_test, rpn_post_nms_top_n_test=rpn_post_nms_test,
        box_score_thresh=box_score_thresh, box_detections_per_img=box_detections_per_img, **rcnn_kwargs)
    if task == 'bbox':
        return FasterRCNN(body, **common)
    return MaskRCNN(body, mask_roi_pool=MultiScaleRoIAlign(levels, output_size=14, sampling_ratio=2),
                    mask_head=MaskRCNNHeads(fpn_channels, (mask_head_dim,) * 4, 1),
                    mask_predictor=MaskRCNNPredictor(mask_head_dim, mask_head_dim, num_classes + 1), **common)


def _resolve_backbone(recipe: DetectionRecipe) -> Tuple[Optional[str], bool, Dict[str, Any]]:
    """(checkpoint file, pretrained, backbone kwargs) of the recipe; kwargs of a ``scnet train`` checkpoint
    (its metadata's ``model_kwargs``, e.g. narrower channels) are adopted."""
    ckpt = recipe.backbone_checkpoint
    if not ckpt:
        return None, False, dict(recipe.backbone_kwargs)
    if ckpt == PRETRAINED and not Path(ckpt).exists():
        return None, True, dict(recipe.backbone_kwargs)
    if not Path(ckpt).is_file():
        raise CheckpointError(f'{ckpt}: no such backbone checkpoint (a classification model.safetensors, an '
                              f'authors\' .pth, or "{PRETRAINED}" for the ImageNet weights)')
    meta = read_metadata(ckpt)
    if 'task' in meta:
        raise CheckpointError(f'{ckpt} is a detection checkpoint ({meta["task"]}), not a classification one; '
                              'resume a detection run with --resume')
    if meta.get('model') and meta['model'] != recipe.backbone:
        raise CheckpointError(f'{ckpt} holds a {meta["model"]}, not a {recipe.backbone}: pass --backbone '
                              f'{meta["model"]} or another checkpoint')
    kwargs = {**json.loads(meta.get('model_kwargs') or '{}'), **recipe.backbone_kwargs}
    return ckpt, False, kwargs


# ------------------------------------------------------------------------------------------------- metrics


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


def _complete_ground_truth(coco, task: str) -> None:
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


def _to_results(output: Dict[str, torch.Tensor], image_id: int, label_to_category: Dict[int, int],
                masks: bool) -> List[Dict]:
    from pycocotools import mask as mask_utils

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
            rle = mask_utils.encode(np.asfortranarray(binary[i]))
            rle['counts'] = rle['counts'].decode('ascii')
            r['segmentation'] = rle
        results.append(r)
    return results


def _unwrap_worker_error(e: ScnetError) -> ScnetError:
    """An error raised in a DataLoader worker arrives with a traceback in its message: keep its own line."""
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    if len(lines) <= 1:
        return e
    last = lines[-1]
    for prefix in (f'{type(e).__module__}.{type(e).__name__}: ', f'{type(e).__name__}: '):
        if last.startswith(prefix):
            last = last[len(prefix):]
    return type(e)(last)


def _single_process(device: str = 'cpu') -> distributed.Context:
    return distributed.Context(0, 1, 0, torch.device(device))


@torch.no_grad()
def evaluate_detector(model: nn.Module, dataset: CocoDetectionSet, label_to_category: Dict[int, int], *,
                      task: str, ctx: Optional[distributed.Context] = None, batch_size: int = 2, workers: int = 0,
                      progress: bool = False, desc: str = 'val') -> Dict[str, Any]:
    """COCO metrics of ``model`` on every image of ``dataset`` (a ``CocoDetectionSet`` over the checked
    ground truth), each image evaluated once whatever the number of processes; every process gets the
    same dict: ``val_images``, ``val_detections`` and ``bbox_AP`` ... (``segm_AP`` ... for ``segm``)."""
    ctx = ctx or _single_process(str(next(model.parameters()).device))
    model.eval()
    share = Subset(dataset, range(ctx.rank, len(dataset), ctx.world_size))
    loader = DataLoader(share, batch_size=batch_size, num_workers=workers, collate_fn=collate)
    results: List[Dict] = []
    bar = tqdm(loader, desc=desc, unit='batch', disable=None if (progress and ctx.is_main) else True,
               dynamic_ncols=True, leave=False)
    try:
        for images, targets in bar:
            outputs = model([image.to(ctx.device) for image in images])
            for output, target in zip(outputs, targets):
                results.extend(_to_results(output, target['image_id'], label_to_category, masks=task == 'segm'))
    except ScnetError as e:
        raise _unwrap_worker_error(e) from None
    if ctx.distributed:
        gathered: List[Optional[List[Dict]]] = [None] * ctx.world_size
        dist.all_gather_object(gathered, results)
        results = [r for part in gathered for r in part]
    metrics: List[Optional[Dict]] = [None]
    if ctx.is_main:
        iou_types = ('bbox', 'segm') if task == 'segm' else ('bbox',)
        metrics[0] = {'val_images': len(dataset), 'val_detections': len(results),
                      **coco_metrics(dataset.coco, results, iou_types, image_ids=dataset.ids)}
    if ctx.distributed:
        dist.broadcast_object_list(metrics, src=0)
    return metrics[0]


# ------------------------------------------------------------------------------------------------- training


class NonFiniteDetectionLoss(ScnetError):
    """A detection loss became NaN or infinite."""


def _lr_factor(recipe: DetectionRecipe, steps_per_epoch: int):
    """Linear warm-up from ``warmup_factor`` over ``warmup_iters`` steps, then x ``lr_gamma`` at each of
    ``lr_steps`` (epochs, fractional ones allowed, counted in steps)."""
    return lr_schedule(warmup_steps=min(recipe.warmup_iters, recipe.epochs * steps_per_epoch),
                       warmup_start=recipe.warmup_factor, gamma=recipe.lr_gamma,
                       milestones=[int(round(s * steps_per_epoch)) for s in recipe.lr_steps])


def _train_one_epoch(model: nn.Module, loader: DataLoader, optimizer, scheduler, ctx: distributed.Context, *,
                     epoch: int, epochs: int, progress: bool, grad_clip: Optional[float] = None) -> Dict[str, Any]:
    model.train()
    sums: Dict[str, float] = defaultdict(float)
    images_seen = 0
    last_lr = optimizer.param_groups[0]['lr']
    bar = tqdm(total=len(loader), desc=f'epoch {epoch}/{epochs} train', unit='step',
               disable=None if (progress and ctx.is_main) else True, dynamic_ncols=True, leave=False)
    start = time.perf_counter()
    iterator = iter(loader)
    step = 0
    while True:
        try:
            images, targets = next(iterator)
        except StopIteration:
            break
        except ScnetError as e:
            raise _unwrap_worker_error(e) from None
        step += 1
        images = [image.to(ctx.device, non_blocking=True) for image in images]
        targets = [{k: v.to(ctx.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                    for k, v in t.items()} for t in targets]
        try:
            losses = model(images, targets)
        except ValueError as e:
            if 'more than 1 value per channel' not in str(e):
                raise
            raise ScnetError('batch norm learning from scratch needs at least 2 images per process where a map is '
                             '1 x 1 (the GE gates, or stage 4 of small images): use a --batch-size of at least 2 '
                             'per process, or backbone weights (--backbone-checkpoint), which freeze batch norm') \
                from None
        total = sum(losses.values())
        values = torch.stack([total.detach()] + [v.detach() for v in losses.values()]).double().cpu()
        # every process checks the same summed value, so all stop together on a bad step
        if not math.isfinite(float(distributed.all_reduce_sum(values[:1])[0])):
            raise NonFiniteDetectionLoss(f'the loss became non-finite at epoch {epoch}, step {step} ('
                                         + ', '.join(f'{k} {float(v):.4g}' for k, v in zip(losses, values[1:]))
                                         + ')')
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group['params']], grad_clip)
        last_lr = optimizer.param_groups[0]['lr']
        optimizer.step()
        scheduler.step()
        n = len(images)
        images_seen += n
        sums['train_loss'] += float(values[0]) * n
        for key, value in zip(losses, values[1:]):
            sums[f'train_{key}'] += float(value) * n
        if ctx.is_main:
            bar.update(1)
            bar.set_postfix_str(f'loss {sums["train_loss"] / images_seen:.3f}  lr {last_lr:.3g}')
    bar.close()
    elapsed = time.perf_counter() - start
    keys = sorted(sums)
    totals = distributed.all_reduce_sum(torch.tensor([sums[k] for k in keys] + [images_seen], dtype=torch.float64))
    n = max(float(totals[-1]), 1.0)
    row: Dict[str, Any] = {'lr': last_lr}
    row.update({k: float(v) / n for k, v in zip(keys, totals[:-1])})
    row.update(train_images=int(totals[-1]), images_per_sec=float(totals[-1]) / max(elapsed, 1e-9),
               epoch_time_s=elapsed)
    return row


def _open_data(recipe: DetectionRecipe):
    """Both annotation files checked (every problem named before anything is built) and their categories."""
    recipe.require_data()
    train_coco = load_coco(Path(recipe.train_ann), Path(recipe.train_images), task=recipe.task)
    val_coco = load_coco(Path(recipe.val_ann), Path(recipe.val_images), task=recipe.task)
    check_images(train_coco, Path(recipe.train_images), recipe.train_ann)
    check_images(val_coco, Path(recipe.val_images), recipe.val_ann)
    categories = category_labels(train_coco)
    if not categories:
        raise CocoDataError(f'{recipe.train_ann}: no categories')
    if not any(not a.get('iscrowd', 0) for a in train_coco.dataset['annotations']):
        raise CocoDataError(f'{recipe.train_ann}: no (non-crowd) annotations to train on')
    label_to_category = matched_categories(categories, val_coco, recipe.val_ann)
    _complete_ground_truth(val_coco, recipe.task)
    return train_coco, val_coco, categories, label_to_category


def _epoch_line(row: Dict[str, Any], epochs: int) -> str:
    text = f"epoch {row['epoch']}/{epochs}  lr {row['lr']:.4g}  train loss {row['train_loss']:.4f}"
    for kind in ('bbox', 'segm'):
        if f'{kind}_AP' in row:
            text += (f"  {kind} AP {row[f'{kind}_AP']:.1f} AP50 {row[f'{kind}_AP50']:.1f} "
                     f"AP75 {row[f'{kind}_AP75']:.1f}")
    return text + f"  {row['images_per_sec']:.1f} img/s  {row['epoch_time_s']:.1f}s"


def _metadata(config: Dict[str, Any]) -> Dict[str, str]:
    return {'format': 'scnet-detection', 'task': config['task'], 'backbone': config['backbone'],
            'backbone_kwargs': json.dumps(config['backbone_kwargs']), 'categories': json.dumps(config['categories']),
            'min_size': str(config['min_size']), 'max_size': str(config['max_size']),
            'frozen_bn': json.dumps(config['resolved_frozen_bn']),
            'trainable_layers': str(config['resolved_trainable_layers']),
            'detector': json.dumps({k: config[k] for k in ARCH_KEYS})}


def train_detector(recipe: DetectionRecipe, output: Path, *, resume: bool = False,
                   progress: bool = True) -> Dict[str, Any]:
    """Train and evaluate ``recipe`` into ``output`` (see the module docstring); returns the last row."""
    from scnet.train.state import restore_rng_states
    from scnet.weights import save_state_dict

    output = Path(output)
    if not resume:  # (a resume without its run says so first)
        recipe.require_data()
    existed = output.exists()
    ctx = distributed.setup(recipe.device)
    try:
        run = RunFolder(output, resume=resume, is_main=ctx.is_main, final_files=('model.safetensors',))
        state = run.state
        try:
            train_coco, val_coco, categories, label_to_category = _open_data(recipe)
        except ScnetError:
            if ctx.is_main and not resume and not existed and output.is_dir() and not any(output.iterdir()):
                output.rmdir()  # bad data: leave no empty run folder behind
            raise
        if state is not None:
            saved = state['config']
            if state['categories'] != categories or saved['task'] != recipe.task or \
                    saved['backbone'] != recipe.backbone:
                raise RunError(f'{output}: last.pt is a {saved["task"]} run of {saved["backbone"]} on categories '
                               f'{[c["name"] for c in state["categories"]][:8]}; resume it with the same task, '
                               'backbone and training categories')
        if recipe.batch_size % ctx.world_size:
            raise RecipeError(f'batch_size {recipe.batch_size} does not split over {ctx.world_size} processes')
        per_process = recipe.batch_size // ctx.world_size
        segm = recipe.task == 'segm'
        train_set = CocoDetectionSet(train_coco, Path(recipe.train_images), categories, with_masks=segm, train=True,
                                     flip=recipe.flip, seed=recipe.seed, annotation_file=recipe.train_ann)
        val_set = CocoDetectionSet(val_coco, Path(recipe.val_images), categories, with_targets=False,
                                   annotation_file=recipe.val_ann)
        sampler = DistributedSampler(train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                     seed=recipe.seed)
        batch_sampler = BatchSampler(sampler, per_process, drop_last=False)

        if state is None:
            checkpoint, pretrained, backbone_kwargs = _resolve_backbone(recipe)
            has_weights = bool(checkpoint) or pretrained
            trainable = recipe.trainable_layers if has_weights else 5
            frozen = recipe.frozen_bn if has_weights else False
            weights = checkpoint or (PRETRAINED if pretrained else None)
            if ctx.is_main and not has_weights:
                print(f'note: no backbone weights (--backbone-checkpoint): {recipe.backbone} is trained from '
                      'scratch, every stage trainable and batch norm learning', file=sys.stderr)
        else:  # the architecture the run was started with; the weights come from last.pt
            saved = state['config']
            checkpoint, pretrained, backbone_kwargs = None, False, saved['backbone_kwargs']
            trainable, frozen = saved['resolved_trainable_layers'], saved['resolved_frozen_bn']
            weights = saved['backbone_weights']
        seed_everything(recipe.seed)  # the same initial heads in every process
        model = build_detector(recipe.task, recipe.backbone, len(categories), recipe.min_size, recipe.max_size,
                               backbone_checkpoint=checkpoint, pretrained_backbone=pretrained,
                               backbone_kwargs=backbone_kwargs, trainable_layers=trainable, frozen_bn=frozen,
                               rpn_pre_nms_top_n_train=recipe.rpn_pre_nms_train,
                               rpn_post_nms_top_n_train=recipe.rpn_post_nms_train,
                               rpn_batch_size_per_image=recipe.rpn_batch_size_per_image,
                               box_batch_size_per_image=recipe.box_batch_size_per_image, **recipe.arch())
        model.to(ctx.device)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=recipe.peak_lr, momentum=recipe.momentum,
                                    weight_decay=recipe.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(recipe, len(batch_sampler)))
        if state is not None:
            model.load_state_dict(state['model'])
            optimizer.load_state_dict(state['optimizer'])
            scheduler.load_state_dict(state['scheduler'])
            restore_rng_states(state['rng'])
        train_model = model
        if ctx.distributed:
            train_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[ctx.device.index] if ctx.device.type == 'cuda' else None)

        backbone_kwargs = dict(backbone_kwargs)
        # absolute paths, so that --resume works from any folder
        paths = {k: str(Path(getattr(recipe, k)).resolve()) for k in ('train_ann', 'train_images', 'val_ann',
                                                                       'val_images')}
        if weights and weights != PRETRAINED and state is None:
            weights = str(Path(weights).resolve())
        config = dict(recipe.to_dict(), **paths, backbone_kwargs=backbone_kwargs, categories=categories,
                      world_size=ctx.world_size, peak_lr=recipe.peak_lr, backbone_weights=weights,
                      resolved_trainable_layers=trainable, resolved_frozen_bn=frozen)
        run.start(config)

        for epoch in range(run.start_epoch + 1, recipe.epochs + 1):
            # randomness of an epoch (order, flips, RPN / RoI sampling) depends on (seed, epoch, process) only
            torch.manual_seed(recipe.seed * 100_003 + epoch * 1_009 + ctx.rank)
            sampler.set_epoch(epoch)
            train_set.epoch = epoch
            loader = DataLoader(train_set, batch_sampler=batch_sampler, num_workers=recipe.workers,
                                collate_fn=collate, pin_memory=ctx.device.type == 'cuda')
            try:
                row = _train_one_epoch(train_model, loader, optimizer, scheduler, ctx, epoch=epoch,
                                       epochs=recipe.epochs, progress=progress, grad_clip=recipe.grad_clip)
            except NonFiniteDetectionLoss as e:
                kept = f'{output / "last.pt"} (epoch {epoch - 1})' if epoch > 1 else 'none yet'
                raise NonFiniteDetectionLoss(f'{e}; nothing of this epoch was saved, last good checkpoint: {kept}. '
                                             'Lower the learning rate (--lr) or check the data') from None
            distributed.broadcast_buffers(model)
            row = {'epoch': epoch, **row}
            if epoch % recipe.eval_every == 0 or epoch == recipe.epochs:
                row.update(evaluate_detector(model, val_set, label_to_category, task=recipe.task, ctx=ctx,
                                             batch_size=recipe.eval_batch_size, workers=recipe.workers,
                                             progress=progress))
            run.end_epoch(row, {'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
                                'scheduler': scheduler.state_dict(), 'categories': categories, 'config': config})
            if ctx.is_main:
                print(_epoch_line(row, recipe.epochs), flush=True)
            distributed.barrier()

        if ctx.is_main:
            save_state_dict(model.state_dict(), output / 'model.safetensors', metadata=_metadata(config))
        run.close()
        return run.history[-1] if run.history else {}
    finally:
        distributed.teardown()


# ------------------------------------------------------------------------------------------------- checkpoints


def load_detector(checkpoint: Path, *, device: str = 'cpu',
                  image_size: Optional[int] = None) -> Tuple[nn.Module, Dict[str, Any]]:
    """The detector of a ``model.safetensors`` or ``last.pt`` written by ``scnet detect train``, in eval
    mode, and its description (``task``, ``backbone``, ``categories``, ``min_size``, ``max_size``, ...).
    ``image_size`` replaces the short side it was trained with (the long side scales with it)."""
    from scnet.train.state import load_state
    from scnet.weights import read_state_dict

    path = Path(checkpoint)
    if path.is_dir():
        path = path / 'model.safetensors'
    if not path.is_file():
        raise CheckpointError(f'{path}: no such checkpoint (model.safetensors or last.pt of scnet detect train)')
    meta = read_metadata(str(path))
    if meta:
        if meta.get('format') != 'scnet-detection':
            raise CheckpointError(f'{path}: not a detection checkpoint of scnet detect train (its metadata has no '
                                  'task); a classification checkpoint goes to --backbone-checkpoint')
        info = {'task': meta['task'], 'backbone': meta['backbone'],
                'backbone_kwargs': json.loads(meta['backbone_kwargs']), 'categories': json.loads(meta['categories']),
                'min_size': int(meta['min_size']), 'max_size': int(meta['max_size']),
                'frozen_bn': json.loads(meta['frozen_bn']), 'trainable_layers': int(meta['trainable_layers']),
                'detector': json.loads(meta['detector'])}
        state_dict = read_state_dict(path)
    else:
        state = load_state(path)
        if not isinstance(state, dict) or 'config' not in state or 'categories' not in state.get('config', {}):
            raise CheckpointError(f'{path}: not a detection checkpoint of scnet detect train')
        c = state['config']
        info = {'task': c['task'], 'backbone': c['backbone'], 'backbone_kwargs': c['backbone_kwargs'],
                'categories': c['categories'], 'min_size': c['min_size'], 'max_size': c['max_size'],
                'frozen_bn': c['resolved_frozen_bn'], 'trainable_layers': c['resolved_trainable_layers'],
                'detector': {k: c[k] for k in ARCH_KEYS}}
        state_dict = state['model']
    if image_size:
        info['max_size'] = max(image_size, round(image_size * info['max_size'] / info['min_size']))
        info['min_size'] = image_size
    model = build_detector(info['task'], info['backbone'], len(info['categories']), info['min_size'],
                           info['max_size'], backbone_kwargs=info['backbone_kwargs'],
                           trainable_layers=info['trainable_layers'], frozen_bn=info['frozen_bn'], **info['detector'])
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        raise CheckpointError(f'{path}: does not fit the detector it describes ({str(e).splitlines()[0]})') from None
    return model.to(torch.device(device)).eval(), info


def evaluate_checkpoint(checkpoint: Path, val_ann: Path, val_images: Path, *, batch_size: int = 2,
                        workers: int = 0, device: str = 'auto', image_size: Optional[int] = None,
                        progress: bool = False) -> Dict[str, Any]:
    """COCO metrics of a detection checkpoint on a COCO-format set (one process or, under torchrun, many)."""
    ctx = distributed.setup(device)
    try:
        model, info = load_detector(checkpoint, device=str(ctx.device), image_size=image_size)
        coco = load_coco(Path(val_ann), Path(val_images), task=info['task'])
        check_images(coco, Path(val_images), str(val_ann))
        label_to_category = matched_categories(info['categories'], coco, str(val_ann))
        _complete_ground_truth(coco, info['task'])
        dataset = CocoDetectionSet(coco, Path(val_images), info['categories'], with_targets=False,
                                   annotation_file=str(val_ann))
        metrics = evaluate_detector(model, dataset, label_to_category, task=info['task'], ctx=ctx,
                                    batch_size=batch_size, workers=workers, progress=progress)
        result: Dict[str, Any] = {'checkpoint': str(checkpoint), 'task': info['task'], 'backbone': info['backbone'],
                                  'min_size': info['min_size'], 'max_size': info['max_size'],
                                  'images': metrics['val_images'], 'detections': metrics['val_detections']}
        for kind in ('bbox', 'segm'):
            if f'{kind}_AP' in metrics:
                result[kind] = {name: metrics[f'{kind}_{name}'] for name in METRICS}
        result.update({k: v for k, v in metrics.items() if k.startswith(('bbox_', 'segm_'))})
        return result
    finally:
        distributed.teardown()


# ------------------------------------------------------------------------------------------------- predict

_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
            (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180)]


def _image_files(inputs: Sequence[Path]) -> List[Path]:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    files: List[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob('*') if p.is_file() and p.name.lower().endswith(IMG_EXTENSIONS))
            if not found:
                raise ScnetError(f'{item}: no image files in this folder ({", ".join(IMG_EXTENSIONS)})')
            files.extend(found)
        elif item.is_file():
            files.append(item)
        else:
            raise ScnetError(f'{item}: no such image file or folder')
    return files


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
    threshold: category, score, box [x, y, w, h] in the image's pixels); returns that list."""
    from PIL import Image

    from scnet.data.folders import BadImageError, decode_rgb

    files = _image_files(inputs)
    dev = distributed._device(device, 0)
    model, info = load_detector(checkpoint, device=str(dev), image_size=image_size)
    names = [c['name'] for c in info['categories']]
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    used: Dict[str, int] = {}
    summary = []
    for path in tqdm(files, desc='predict', unit='image', disable=None if progress else True, leave=False):
        try:
            picture = decode_rgb(str(path))
        except Exception as e:
            raise BadImageError(f'{path}: cannot decode the image ({e})') from None
        image = torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1)
        result = model([image.to(dev, torch.float32) / 255])[0]
        result = {k: v.cpu() for k, v in result.items()}
        drawn, count = draw_detections(image, result, names, score_threshold=score_threshold)
        stem = path.stem
        used[stem] = used.get(stem, 0) + 1
        name = f'{stem}.png' if used[stem] == 1 else f'{stem}_{used[stem] - 1}.png'
        tmp = output / f'.{name}.partial'
        Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(tmp, format='PNG')
        tmp.replace(output / name)
        keep = result['scores'] >= score_threshold
        detections = [{'category': names[int(label) - 1], 'score': round(float(score), 4),
                       'bbox': [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2),
                                round(float(y1 - y0), 2)]}
                      for (x0, y0, x1, y1), label, score in zip(result['boxes'][keep], result['labels'][keep],
                                                                 result['scores'][keep])]
        summary.append({'image': str(path), 'output': str(output / name), 'width': picture.width,
                        'height': picture.height, 'detections': detections})
    (output / 'predictions.json').write_text(json.dumps(summary, indent=2))
    return summary

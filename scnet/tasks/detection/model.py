"""The detector: torchvision's Faster / Mask R-CNN over an FPN on the four stages of a zoo model.

Backbone weights (``backbone_checkpoint``: a classification ``model.safetensors`` of ``scnet train``, an
authors' checkpoint in their layout, or ``pretrained``: the authors' / timm's ImageNet weights) get the usual
detection fine-tuning: batch-norm statistics frozen and the stem plus stage 1 frozen (``trainable_layers``
3). A backbone without weights is trained from scratch: every stage trainable and batch norm learning
(torchvision's rule for untrained backbones; frozen random statistics would switch residual branches off).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

from torch import nn

from scnet.errors import CheckpointError, InvalidArgumentError
from scnet.tasks.backbone import options_for_weights
from scnet.tasks.detection.recipe import PRETRAINED, TASKS, DetectionRecipe
from scnet.weights.io import checkpoint_file, read_metadata

__all__ = ['build_detector', 'resolve_backbone']


#: The smallest short side a detector takes: the FPN's coarsest level (stride 64 with P6) needs a map.
MIN_IMAGE_SIZE = 32


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
    for name, value, least in (('num_classes', num_classes, 1), ('min_size', min_size, MIN_IMAGE_SIZE),
                               ('max_size', max_size, max(MIN_IMAGE_SIZE, min_size if _whole(min_size) else 0))):
        if not _whole(value) or value < least:
            raise InvalidArgumentError(f'{name} must be a whole number >= {least}, got {value!r}'
                                       + (' (the object categories, without the background)'
                                          if name == 'num_classes' else ' (pixels; max_size >= min_size)'))
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


def resolve_backbone(recipe: DetectionRecipe, *, quiet: bool = False) -> Tuple[Optional[str], bool, Dict[str, Any]]:
    """(checkpoint file, pretrained, backbone kwargs) of the recipe; the model options a ``scnet train``
    checkpoint records (e.g. narrower channels) replace the recipe's (``options_for_weights``), with a note on
    stderr unless ``quiet``."""
    ckpt = recipe.backbone_checkpoint
    if not ckpt:
        return None, False, dict(recipe.backbone_kwargs)
    if ckpt == PRETRAINED and not Path(ckpt).exists():
        return None, True, dict(recipe.backbone_kwargs)
    if Path(ckpt).is_dir():  # a run of scnet train: its model.safetensors (else last.pt)
        ckpt = str(checkpoint_file(ckpt))
    if not Path(ckpt).is_file():
        raise CheckpointError(f'{ckpt}: no such backbone checkpoint (a classification model.safetensors, an '
                              f'authors\' .pth, or "{PRETRAINED}" for the ImageNet weights)')
    meta = read_metadata(ckpt)
    if 'keypoints' in meta:  # a pose checkpoint records its keypoints (and a task-like backbone entry)
        raise CheckpointError(f'{ckpt} is a pose checkpoint, not a classification one: --backbone-checkpoint '
                              'takes the model.safetensors of scnet train or the authors\' .pth')
    if 'task' in meta:
        raise CheckpointError(f'{ckpt} is a detection checkpoint ({meta["task"]}), not a classification one; '
                              'resume a detection run with --resume')
    kwargs, note = options_for_weights(ckpt, recipe.backbone, dict(recipe.backbone_kwargs))
    if note and not quiet:
        print(note, file=sys.stderr)
    return ckpt, False, kwargs

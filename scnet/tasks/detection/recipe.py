"""Every setting of a detection run in one dataclass, read like the classification recipes.

``DetectionRecipe`` files live in ``scnet/recipes/detection/`` and are read by ``scnet.train.recipe.RecipeReader``
(``base:`` chains, unknown settings refused, flags on top, a run's ``config.json`` read back). ``faster_rcnn_2x``
and ``mask_rcnn_2x`` are the paper's (mmdetection's) 2x schedule: short side 800 (long side at most 1333), batch
16 with lr 0.02 (scaled linearly with the batch), SGD momentum 0.9, weight decay 1e-4, linear warm-up over 500
iterations, 24 epochs with the lr divided by 10 after epochs 16 and 22 (a run of N epochs decays at the same
fractions of N). ``shapes`` is a small recipe for the rendered-shapes set on a CPU (a narrow SCNet-26 from
scratch, 128-px images, light heads, gradients clipped).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from scnet.cli.recipe_flags import cli_flag
from scnet.train.recipe import (RECIPES_DIR, RecipeError, RecipeReader, check_settings, optimizer_checks,
                                run_checks)

__all__ = ['TASKS', 'DetectionRecipe', 'load_detection_recipe', 'list_detection_recipes', 'DETECTION_RECIPES_DIR',
           'ARCH_KEYS', 'PRETRAINED']

TASKS = ('bbox', 'segm')
DETECTION_RECIPES_DIR = RECIPES_DIR / 'detection'
#: Settings that define the detector's modules (recorded in model.safetensors to rebuild it).
ARCH_KEYS = ('fpn_channels', 'box_head_dim', 'mask_head_dim', 'anchor_sizes', 'rpn_pre_nms_test',
             'rpn_post_nms_test', 'box_score_thresh', 'box_detections_per_img')
#: What a run's config.json records beside its recipe.
RUN_RECORD_KEYS = ('categories', 'world_size', 'peak_lr', 'backbone_weights', 'resolved_backbone_kwargs',
                   'resolved_trainable_layers', 'resolved_frozen_bn')
#: ``backbone_checkpoint`` value that asks for the published ImageNet weights.
PRETRAINED = 'pretrained'


@dataclass
class DetectionRecipe:
    """Every setting of a detection run (what its ``config.json`` records)."""

    task: str = field(default='bbox', metadata=cli_flag(
        'bbox: Faster R-CNN; segm: Mask R-CNN (boxes + masks)', choices=TASKS))
    backbone: str = field(default='scnet50', metadata=cli_flag('zoo model name (see `scnet models`)'))
    backbone_kwargs: Dict[str, Any] = field(default_factory=dict)
    backbone_checkpoint: Optional[str] = field(default=None, metadata=cli_flag(   # None: from scratch
        f"classification checkpoint for the backbone, or '{PRETRAINED}'"))
    trainable_layers: int = 3              # with backbone weights: stages trained (3: stem + stage 1 frozen)
    frozen_bn: bool = True                 # with backbone weights: BN statistics and affine frozen
    train_ann: Optional[str] = field(default=None, metadata=cli_flag('COCO annotation JSON of the training set'))
    train_images: Optional[str] = field(default=None, metadata=cli_flag('folder of the training images'))
    val_ann: Optional[str] = field(default=None, metadata=cli_flag('COCO annotation JSON of the validation set'))
    val_images: Optional[str] = field(default=None, metadata=cli_flag('folder of the validation images'))
    epochs: int = field(default=24, metadata=cli_flag('number of epochs'))
    lr_steps: List[float] = field(default_factory=lambda: [16, 22])  # epochs after which lr x lr_gamma
    lr_gamma: float = 0.1
    batch_size: int = field(default=16, metadata=cli_flag(
        'global batch size (images per step over all processes)'))
    lr: Optional[float] = field(default=None, metadata=cli_flag('peak learning rate (default: 0.02 x batch / 16)'))
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
            *run_checks(self.epochs, self.batch_size, self.peak_lr, self.workers, self.device, self.seed),
            (all(0 < s <= self.epochs for s in self.lr_steps),
             f'lr_steps must lie within 1..epochs ({self.epochs}), got {self.lr_steps}'),
            (0 <= self.trainable_layers <= 5, f'trainable_layers must be within 0..5, got {self.trainable_layers}'),
            (self.min_size >= 32 and self.max_size >= self.min_size,
             f'min_size must be >= 32 and max_size >= min_size, got {self.min_size} / {self.max_size}'),
            (len(self.anchor_sizes) == 5, f'anchor_sizes needs 5 sizes (P2-P6), got {self.anchor_sizes}'),
            (self.eval_every >= 1 and self.eval_batch_size >= 1, 'eval_every and eval_batch_size must be >= 1'),
            (self.grad_clip is None or self.grad_clip > 0, f'grad_clip must be > 0 or null, got {self.grad_clip}'),
            *optimizer_checks(self.momentum, self.weight_decay, self.lr_gamma),
            (self.warmup_iters >= 0, f'warmup_iters must be >= 0, got {self.warmup_iters}'),
            (0 < self.warmup_factor <= 1, f'warmup_factor (the first step\'s share of the lr) must be in (0, 1], '
                                          f'got {self.warmup_factor}'),
            (0 <= self.box_score_thresh < 1, f'box_score_thresh must be in [0, 1), got {self.box_score_thresh}'),
            (min(self.fpn_channels, self.box_head_dim, self.mask_head_dim, self.rpn_pre_nms_train,
                 self.rpn_post_nms_train, self.rpn_pre_nms_test, self.rpn_post_nms_test, self.rpn_batch_size_per_image,
                 self.box_batch_size_per_image, self.box_detections_per_img) >= 1,
             'fpn_channels, box_head_dim, mask_head_dim and the proposal, sampling and detection counts must be >= 1'),
            (all(a > 0 for a in self.anchor_sizes), f'anchor_sizes must be > 0, got {self.anchor_sizes}'),
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


def check_resumed_detection_config(saved: Path, config: str, **overrides: Any) -> None:
    """On ``--resume``, refuse a ``--config`` that changes a setting of the run (its config.json, ``saved``)
    which no flag sets now: the run's own settings are the base (``RecipeReader.check_repeats``). The file is
    read as a fresh run would read it with these flags, so the same command line with ``--resume`` added passes."""
    _READER.check_repeats(saved, config, overrides, load_detection_recipe, reread_run=True)


def load_detection_recipe(config: Optional[str] = None, **overrides: Any) -> DetectionRecipe:
    """The recipe of ``config`` (a YAML path, a shipped name, or a run's config.json) with ``overrides``
    (those not None) on top. ``epochs`` given without ``lr_steps`` moves the decay points in proportion;
    ``backbone`` other than the file's, given without ``backbone_kwargs``, drops the file's backbone options.
    A file over its ``base:`` is read by the same rules as the flags over the file."""
    settings: Dict[str, Any] = {}
    for layer in [*_READER.layers(config), _READER.overrides(overrides)]:
        settings = {**settings, **_over(settings, dict(layer))}
    return _READER.build(settings)


def _over(before: Dict[str, Any], layer: Dict[str, Any]) -> Dict[str, Any]:
    """``layer`` (a file's settings, or the flags) as it applies over the settings ``before`` it."""
    if 'backbone' in layer and 'backbone_kwargs' not in layer and \
            layer['backbone'] != before.get('backbone', DetectionRecipe.backbone):
        layer['backbone_kwargs'] = {}  # the earlier options (e.g. narrower stages) belong to their backbone
    base_epochs = before.get('epochs', DetectionRecipe.epochs)
    if 'epochs' in layer and 'lr_steps' not in layer and layer['epochs'] != base_epochs:
        steps = before.get('lr_steps', [16, 22])
        try:
            layer['lr_steps'] = [round(s * layer['epochs'] / base_epochs, 4) for s in steps]
        except TypeError:
            pass  # a setting of the wrong type: the recipe's type checks name it
    return layer

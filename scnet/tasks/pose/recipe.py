"""Every setting of a top-down keypoint run in one dataclass (simple-baselines, ``scnet/recipes/pose/``).

The shipped recipes are simple-baselines' (Xiao et al. 2018, the paper's Table 5): Adam, lr 1e-3, 140 epochs,
lr x 0.1 after epochs 90 and 120 (``lr_steps``, written for ``schedule_epochs`` epochs and scaled to
``epochs``: ``--epochs 14`` decays after 9 and 12), batch 32 per GPU on 4 GPUs (``batch_size`` is global), the
whole backbone fine-tuned with BN statistics updated.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from scnet.cli.recipe_flags import cli_flag
from scnet.errors import ScnetError
from scnet.tasks.pose.data import Augment
from scnet.train import schedule
from scnet.train.recipe import (RECIPES_DIR, RecipeError, RecipeReader, check_settings, optimizer_checks,
                                run_checks)

__all__ = ['PoseError', 'PoseRecipe', 'POSE_RECIPES_DIR', 'list_pose_recipes', 'load_pose_recipe',
           'parse_image_size', 'size_problem']

POSE_RECIPES_DIR = RECIPES_DIR / 'pose'
#: What a run's config.json records beside its recipe (left out when it is read back as a recipe).
RUN_RECORD_KEYS = ('keypoints', 'world_size', 'heatmap_size', 'stride', 'mean', 'std', 'resolved_backbone_kwargs')


class PoseError(ScnetError):
    """A pose setting, checkpoint or input that cannot be used."""


def parse_image_size(value: Union[int, str, Sequence[int]]) -> List[int]:
    """``256`` (height; width = 3/4 of it) | ``'256x192'`` (height x width) | ``[256, 192]`` -> [h, w]."""
    if isinstance(value, str):
        parts = value.lower().replace(',', 'x').split('x')
        try:
            numbers = [int(p) for p in parts]
        except ValueError:
            raise RecipeError(f'image size {value!r}: expected HEIGHTxWIDTH (e.g. 256x192) or a height') from None
        return parse_image_size(numbers[0] if len(numbers) == 1 else numbers)
    if isinstance(value, (int, np.integer)):
        return [int(value), int(value) * 3 // 4]
    values = [int(v) for v in value]
    if len(values) != 2:
        raise RecipeError(f'image size {value!r}: expected [height, width]')
    return values


def size_problem(image_size: Sequence[int], stride: int, backbone: str) -> str:
    """What is wrong with a crop size that is not made of multiples of ``stride``, with the nearest one that is."""
    h, w = image_size
    return (f'image size {h}x{w}: height and width must be multiples of {stride}, the stride of {backbone}\'s last '
            f'stage (e.g. {stride * max(1, round(h / stride))}x{stride * max(1, round(w / stride))})')


@dataclass
class PoseRecipe:
    """Every setting of a keypoint run (what its ``config.json`` records)."""

    backbone: str = field(default='scnet50', metadata=cli_flag('zoo model name (see `scnet models`)'))
    backbone_kwargs: Dict[str, Any] = field(default_factory=dict)
    backbone_checkpoint: Optional[str] = field(default=None, metadata=cli_flag(
        'ImageNet weights for the backbone (ours or the authors\' layout)'))
    pretrained: bool = field(default=False, metadata=cli_flag(
        'start from the published ImageNet weights (downloaded once)', negatable=True))
    frozen_bn: bool = False
    trainable_layers: int = 5                   # 5: everything, stem included
    deconv_layers: Optional[int] = None         # None: up to stride 4 (3 on stride-32 backbones)
    deconv_channels: int = 256
    deconv_kernel: int = 4
    train_ann: Optional[str] = field(default=None, metadata=cli_flag(
        'COCO keypoint annotation file of the training set'))
    train_images: Optional[str] = field(default=None, metadata=cli_flag('folder of the training images'))
    val_ann: Optional[str] = field(default=None, metadata=cli_flag(
        'COCO keypoint annotation file of the validation set'))
    val_images: Optional[str] = field(default=None, metadata=cli_flag('folder of the validation images'))
    val_boxes: Optional[str] = field(default=None, metadata=cli_flag(   # None: ground-truth boxes
        'person boxes for validation: a COCO detection-results JSON ([{"image_id", "category_id", "bbox", '
        '"score"}, ...]); default: ground-truth boxes', flag='--boxes'))
    box_score_thresh: float = field(default=0.0, metadata=cli_flag('drop detected boxes scoring below this '
                                                                   '(default 0)'))
    image_size: Any = field(default_factory=lambda: [256, 192], metadata=cli_flag(   # height, width
        'input crop: HEIGHTxWIDTH (256x192, 384x288) or a height (width = 3/4)'))
    sigma: float = 2.0                          # Gaussian of the targets, in heatmap pixels
    box_padding: float = 1.25
    epochs: int = field(default=140, metadata=cli_flag('number of epochs (the lr steps scale with it)'))
    batch_size: int = field(default=128, metadata=cli_flag(   # 32 per GPU x 4 GPUs
        'global batch size (over all processes)'))
    optimizer: str = 'adam'
    lr: float = field(default=1e-3, metadata=cli_flag('learning rate (Adam; default 1e-3)'))
    momentum: float = 0.9                       # sgd only
    weight_decay: float = 0.0
    lr_steps: List[int] = field(default_factory=lambda: [90, 120])
    lr_gamma: float = 0.1
    schedule_epochs: Optional[int] = None       # the run length lr_steps are written for (None: epochs)
    scale_factor: float = 0.3
    rotation_factor: float = 40.0
    rotation_prob: float = 0.6
    flip: bool = True
    half_body_prob: float = 0.3
    half_body_min_joints: int = 8
    flip_test: bool = field(default=True, metadata=cli_flag('evaluate without averaging with mirrored crops'))
    kpt_score_thresh: float = 0.2
    nms_thresh: float = 0.9
    eval_every: int = field(default=1, metadata=cli_flag('evaluate every N epochs (and after the last)'))
    eval_batch_size: Optional[int] = None       # per process; None: the training batch per process
    seed: int = 0
    workers: int = 4
    device: str = 'auto'
    amp: bool = field(default=False, metadata=cli_flag('mixed precision'))

    def __post_init__(self) -> None:
        self.image_size = parse_image_size(self.image_size)

    @property
    def nominal_stride(self) -> int:
        """The stride of the backbone's last stage, known without building it (``build_for_recipe`` checks
        the network's own): 8 for the CIFAR-stem networks, 32 for the others, less with ``output_stride``.
        The crop must be at least that, so an image size too small is refused before the data is read."""
        stride = 8 if str(self.backbone).endswith('_cifar') else 32
        return min(stride, int((self.backbone_kwargs or {}).get('output_stride') or stride))

    @property
    def milestones(self) -> List[int]:
        span = self.schedule_epochs or self.epochs
        return [max(1, int(round(s * self.epochs / span))) for s in self.lr_steps]

    def lr_factor(self, finished_epochs: int) -> float:
        return schedule.lr_factor(finished_epochs, milestones=self.milestones, gamma=self.lr_gamma)

    @property
    def augment(self) -> Augment:
        return Augment(self.scale_factor, self.rotation_factor, self.rotation_prob, self.flip, self.half_body_prob,
                       self.half_body_min_joints)

    def validate(self) -> 'PoseRecipe':
        checks = [
            *run_checks(self.epochs, self.batch_size, self.lr, self.workers, self.device, self.seed),
            (self.optimizer in ('adam', 'sgd'), f"optimizer must be adam or sgd, got {self.optimizer!r}"),
            (self.sigma > 0, f'sigma must be > 0, got {self.sigma}'),
            (min(self.image_size) >= self.nominal_stride,
             size_problem(self.image_size, self.nominal_stride, self.backbone)),
            (0 <= self.scale_factor < 1, f'scale_factor must be within [0, 1), got {self.scale_factor}'),
            (self.eval_every >= 1, f'eval_every must be >= 1, got {self.eval_every}'),
            (self.deconv_layers is None or self.deconv_layers >= 0,
             f'deconv_layers must be >= 0, got {self.deconv_layers}'),
            (self.box_padding >= 1, f'box_padding must be >= 1, got {self.box_padding}'),
            *optimizer_checks(self.momentum, self.weight_decay, self.lr_gamma),
            (0 <= self.trainable_layers <= 5, f'trainable_layers must be within 0..5, got {self.trainable_layers}'),
            (self.deconv_kernel in (2, 3, 4), f'deconv_kernel must be 2, 3 or 4, got {self.deconv_kernel}'),
            (self.deconv_channels >= 1, f'deconv_channels must be >= 1, got {self.deconv_channels}'),
            (0 <= self.rotation_prob <= 1 and 0 <= self.half_body_prob <= 1,
             f'rotation_prob and half_body_prob must be in [0, 1], got {self.rotation_prob}, {self.half_body_prob}'),
            (self.rotation_factor >= 0, f'rotation_factor must be >= 0 (degrees), got {self.rotation_factor}'),
            (self.eval_batch_size is None or self.eval_batch_size >= 1,
             f'eval_batch_size must be >= 1 (or left out), got {self.eval_batch_size}'),
            (0 <= self.kpt_score_thresh < 1 and 0 < self.nms_thresh <= 1,
             f'kpt_score_thresh must be in [0, 1) and nms_thresh in (0, 1], got {self.kpt_score_thresh}, '
             f'{self.nms_thresh}'),
            (0 <= self.box_score_thresh < 1, f'box_score_thresh must be in [0, 1), got {self.box_score_thresh}'),
        ]
        check_settings(checks)
        return self

    def require_data(self) -> 'PoseRecipe':
        missing = [n for n in ('train_ann', 'train_images', 'val_ann', 'val_images') if not getattr(self, n)]
        if missing:
            flags = ', '.join('--' + n.replace('_', '-') for n in missing)
            raise PoseError(f'missing {flags} (or the same settings in the --config recipe)')
        return self

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


_READER = RecipeReader(PoseRecipe, POSE_RECIPES_DIR, RUN_RECORD_KEYS, label='pose recipe')


def list_pose_recipes() -> List[str]:
    return _READER.names()


def check_resumed_pose_config(saved: Path, config: str, **overrides: Any) -> None:
    """On ``--resume``, refuse a ``--config`` that changes a setting of the run (its config.json, ``saved``)
    which no flag sets now: the run's own settings are the base (``RecipeReader.check_repeats``). The file is
    read as a fresh run would read it with these flags, so the same command line with ``--resume`` added passes."""
    _READER.check_repeats(saved, config, overrides, load_pose_recipe, reread_run=True)


def load_pose_recipe(config: Optional[str] = None, **overrides: Any) -> PoseRecipe:
    """The recipe of ``config`` (a YAML file, a run's config.json or a shipped name) with ``overrides`` (not
    None) on top. ``lr_steps`` of a file are kept relative to its ``epochs``: ``--epochs`` rescales them."""
    settings: Dict[str, Any] = {}
    written_for = PoseRecipe.epochs   # the run length the lr_steps in effect were written for (the defaults': 140)
    for layer in _READER.layers(config):
        settings.update(layer)
        if 'lr_steps' in layer:   # a file's steps are written for its own epochs (with its bases')
            written_for = settings.get('epochs', PoseRecipe.epochs)
    if settings.get('schedule_epochs') is None:
        # a file that changes only its base's epochs rescales the base's steps, as --epochs does
        settings['schedule_epochs'] = written_for
    return _READER.build({**settings, **_READER.overrides(overrides)})

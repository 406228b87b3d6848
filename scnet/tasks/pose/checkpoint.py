"""What a pose checkpoint says about itself, and the network rebuilt from it.

``model.safetensors`` carries a ``PoseMetadata`` in its metadata (how to rebuild and run the network:
backbone, keypoint names and skeleton, input and heatmap sizes, head shape, normalisation); ``last.pt``
carries the same under ``checkpoint``. Files written before the keys were unified said ``input_size`` for
``image_size``, and had no ``trainable_layers`` / ``frozen_bn`` (the recipe's defaults then).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from scnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from scnet.errors import CheckpointError
from scnet.tasks.pose.data import KeypointSpec
from scnet.tasks.pose.model import SimplePose, build_for_recipe
from scnet.tasks.pose.recipe import PoseRecipe
from scnet.weights.fit import misfit, unreadable_safetensors
from scnet.train.checkpoint_meta import CheckpointMetadata, read_task_checkpoint

__all__ = ['PoseMetadata', 'PoseCheckpoint', 'load_pose_checkpoint']


@dataclass
class PoseMetadata(CheckpointMetadata):
    """The pose network of a checkpoint and how its crops are made; the field names are the recipe's."""

    OLD_KEYS = {'input_size': 'image_size'}

    backbone: str
    backbone_kwargs: Dict[str, Any]
    keypoints: Dict[str, Any]             # KeypointSpec.to_dict(): names, skeleton, category id
    image_size: List[int]                 # height, width of the input crop
    heatmap_size: List[int]
    stride: int
    deconv_layers: int
    deconv_channels: int
    deconv_kernel: int
    sigma: float = 2.0
    box_padding: float = 1.25
    trainable_layers: int = 5
    frozen_bn: bool = False
    mean: List[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: List[float] = field(default_factory=lambda: list(IMAGENET_STD))
    task: str = 'pose'

    @classmethod
    def of_run(cls, recipe: PoseRecipe, spec: KeypointSpec, model: SimplePose,
               backbone_kwargs: Dict[str, Any]) -> 'PoseMetadata':
        """The description of a run of ``recipe``, whose backbone was built with ``backbone_kwargs``."""
        h, w = recipe.image_size
        return cls(backbone=recipe.backbone, backbone_kwargs=backbone_kwargs, keypoints=spec.to_dict(),
                   image_size=[h, w], heatmap_size=[h // model.stride, w // model.stride], stride=model.stride,
                   deconv_layers=model.deconv_layers, deconv_channels=recipe.deconv_channels,
                   deconv_kernel=recipe.deconv_kernel, sigma=recipe.sigma, box_padding=recipe.box_padding,
                   trainable_layers=recipe.trainable_layers, frozen_bn=recipe.frozen_bn)

    @classmethod
    def from_old_state(cls, state: Dict[str, Any]) -> Optional['PoseMetadata']:
        """From a ``last.pt`` written before it carried its metadata: its settings have the same names (None:
        not one of a pose run)."""
        if 'keypoints' not in state:
            return None
        return cls.from_record({**state['config'], 'keypoints': state['keypoints']})

    def recipe(self) -> PoseRecipe:
        """The recipe settings that rebuild the network."""
        return PoseRecipe(backbone=self.backbone, backbone_kwargs=self.backbone_kwargs, image_size=self.image_size,
                          deconv_layers=self.deconv_layers, deconv_channels=self.deconv_channels,
                          deconv_kernel=self.deconv_kernel, box_padding=self.box_padding,
                          trainable_layers=self.trainable_layers, frozen_bn=self.frozen_bn)


@dataclass
class PoseCheckpoint:
    model: SimplePose
    spec: KeypointSpec
    input_size: List[int]
    stride: int
    backbone: str
    box_padding: float = 1.25


def load_pose_checkpoint(path: Path) -> PoseCheckpoint:
    """The network of a ``scnet pose train`` checkpoint: its ``model.safetensors`` or its ``last.pt``."""
    try:
        info, weights, path = read_task_checkpoint(path, PoseMetadata, task='pose', command='scnet pose train',
                                                   is_task=lambda meta: meta.get('task') == 'pose')
    except CheckpointError:
        damaged = unreadable_safetensors(path)  # damaged, not "not a pose checkpoint"
        if damaged is None:
            raise
        raise damaged from None
    recipe = info.recipe()
    model = build_for_recipe(recipe, len(info.keypoints['names']), with_weights=False)
    try:
        model.load_state_dict(weights)
    except RuntimeError:   # torch's message opens with a line that names no key: say which, in one line
        raise misfit(path, 'the pose network its metadata describes', model.state_dict(), weights,
                     'the file was damaged or edited; give the model.safetensors or last.pt its run wrote') from None
    model.eval()
    return PoseCheckpoint(model, KeypointSpec.from_dict(info.keypoints), recipe.image_size, model.stride,
                          recipe.backbone, recipe.box_padding)

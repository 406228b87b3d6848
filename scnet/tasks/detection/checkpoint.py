"""What a detection checkpoint says about itself, and the detector rebuilt from it.

``model.safetensors`` carries a ``DetectionMetadata`` (everything ``build_detector`` needs) in its metadata;
``last.pt`` carries the same under ``checkpoint``, so either file can be evaluated or drawn with.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from scnet.errors import CheckpointError, InvalidArgumentError
from scnet.tasks.detection.model import MIN_IMAGE_SIZE, build_detector
from scnet.tasks.detection.recipe import ARCH_KEYS, TASKS
from scnet.weights.fit import misfit, unreadable_safetensors
from scnet.train.checkpoint_meta import CheckpointMetadata, read_task_checkpoint

__all__ = ['DetectionMetadata', 'load_detector']

FORMAT = 'scnet-detection'


@dataclass
class DetectionMetadata(CheckpointMetadata):
    """The detector of a checkpoint: its task, backbone (as built: the resolved trainable stages and batch-norm
    mode), categories, image sizes and head shapes (``ARCH_KEYS``)."""

    task: str                      # bbox: Faster R-CNN; segm: Mask R-CNN
    backbone: str
    backbone_kwargs: Dict[str, Any]
    trainable_layers: int
    frozen_bn: bool
    categories: List[Dict[str, Any]]
    min_size: int
    max_size: int
    detector: Dict[str, Any]       # the ARCH_KEYS settings
    format: str = FORMAT

    def build(self) -> nn.Module:
        return build_detector(self.task, self.backbone, len(self.categories), self.min_size, self.max_size,
                              backbone_kwargs=self.backbone_kwargs, trainable_layers=self.trainable_layers,
                              frozen_bn=self.frozen_bn, **self.detector)

    @classmethod
    def from_old_state(cls, state: Dict[str, Any]) -> Optional['DetectionMetadata']:
        """From the run settings of a ``last.pt`` written before it carried its metadata (None: not one of a
        detection run)."""
        config = state['config']
        if 'categories' not in config or 'resolved_frozen_bn' not in config:
            return None
        built = config.get('resolved_backbone_kwargs', config['backbone_kwargs'])
        return cls(task=config['task'], backbone=config['backbone'], backbone_kwargs=built,
                   trainable_layers=config['resolved_trainable_layers'], frozen_bn=config['resolved_frozen_bn'],
                   categories=config['categories'], min_size=config['min_size'], max_size=config['max_size'],
                   detector={k: config[k] for k in ARCH_KEYS})


def load_detector(checkpoint: Path, *, device: str = 'cpu',
                  image_size: Optional[int] = None) -> Tuple[nn.Module, DetectionMetadata]:
    """The detector of a ``model.safetensors`` or ``last.pt`` written by ``scnet detect train`` (or its run
    folder), in eval mode, and its ``DetectionMetadata``. ``image_size`` replaces the short side it was
    trained with (the long side scales with it)."""
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int)
                                   or image_size < MIN_IMAGE_SIZE):
        raise InvalidArgumentError(f'image_size (--image-size, the short side) must be a whole number >= '
                                   f'{MIN_IMAGE_SIZE}, got {image_size!r}')
    try:
        info, state_dict, path = read_task_checkpoint(
            checkpoint, DetectionMetadata, task='detection', command='scnet detect train',
            is_task=lambda meta: meta.get('format') == FORMAT and meta.get('task') in TASKS)
    except CheckpointError:
        damaged = unreadable_safetensors(checkpoint)  # damaged, not "not a detection checkpoint"
        if damaged is None:
            raise
        raise damaged from None
    if image_size:
        info.max_size = max(image_size, round(image_size * info.max_size / info.min_size))
        info.min_size = image_size
    model = info.build()
    try:
        model.load_state_dict(state_dict)
    except RuntimeError:   # torch's message opens with a line that names no key: say which, in one line
        raise misfit(path, f'the {info.task} detector its metadata describes', model.state_dict(), state_dict,
                     'the file was damaged or edited; give the model.safetensors or last.pt its run wrote') from None
    return model.to(torch.device(device)).eval(), info

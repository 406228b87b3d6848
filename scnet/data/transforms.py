"""The paper's input pipelines, as torchvision ``transforms.v2`` compositions.

Training (section 4.1, as ResNeXt): a random-resized crop of ``image_size`` and a horizontal flip. Evaluation:
resize the short side to ``eval_resize`` (256) and take the centre ``image_size`` (224) crop. Small images
(32-64 px) use the CIFAR-style pad-and-crop instead, since cropping 8-100% of a 32-px image destroys it.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torchvision.transforms import v2

__all__ = ['AUGMENTATIONS', 'IMAGENET_MEAN', 'IMAGENET_STD', 'train_transform', 'eval_transform']

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Training augmentations: ``random-resized-crop`` (ImageNet), ``pad-crop`` (small images), ``flip`` (only).
AUGMENTATIONS = ('random-resized-crop', 'pad-crop', 'flip')


def _to_normalised_tensor(mean: Sequence[float], std: Sequence[float]):
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]


def train_transform(image_size: int, augment: str = 'random-resized-crop', mean=IMAGENET_MEAN,
                    std=IMAGENET_STD) -> v2.Compose:
    if augment == 'random-resized-crop':
        geometry = [v2.RandomResizedCrop(image_size, antialias=True)]
    elif augment == 'pad-crop':
        geometry = [v2.Resize((image_size, image_size), antialias=True),
                    v2.RandomCrop(image_size, padding=max(1, image_size // 8), padding_mode='reflect')]
    elif augment == 'flip':
        geometry = [v2.Resize((image_size, image_size), antialias=True)]
    else:
        raise ValueError(f'unknown augmentation {augment!r}; choose one of {", ".join(AUGMENTATIONS)}')
    return v2.Compose([*geometry, v2.RandomHorizontalFlip(), *_to_normalised_tensor(mean, std)])


def eval_transform(image_size: int, eval_resize: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> v2.Compose:
    """Resize the short side to ``eval_resize``, centre-crop ``image_size`` (equal sizes: resize only)."""
    if eval_resize == image_size:
        geometry = [v2.Resize((image_size, image_size), antialias=True)]
    else:
        geometry = [v2.Resize(eval_resize, antialias=True), v2.CenterCrop(image_size)]
    return v2.Compose([*geometry, *_to_normalised_tensor(mean, std)])

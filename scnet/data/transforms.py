"""The paper's input pipelines, as torchvision ``transforms.v2`` compositions, plus timm's modern augmentations.

Training (section 4.1, as ResNeXt): a random-resized crop of ``image_size`` and a horizontal flip. Evaluation:
resize the short side to ``eval_resize`` (256) and take the centre ``image_size`` (224) crop. Small images
(32-64 px) use the CIFAR-style pad-and-crop instead, since cropping 8-100% of a 32-px image destroys it.

Modern recipes add, after the flip, an automatic augmentation policy and, after normalisation, random erasing.
The policies are timm's (RandAugment ``rand-m9-mstd0.5-inc1``, AutoAugment ``original``/``v0``, AugMix
``augmix-m5-w4-d2``), and torchvision's ``TrivialAugmentWide`` for ``trivial``, which timm lacks.
"""
from __future__ import annotations

import random
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torchvision.transforms import v2

__all__ = ['AUGMENTATIONS', 'IMAGENET_MEAN', 'IMAGENET_STD', 'train_transform', 'eval_transform',
           'auto_augment_transform', 'check_auto_augment']

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Training augmentations: ``random-resized-crop`` (ImageNet), ``pad-crop`` (small images), ``flip`` (only).
AUGMENTATIONS = ('random-resized-crop', 'pad-crop', 'flip')
#: The families of ``auto_augment`` policies (timm's policy strings, and ``trivial``).
AUTO_AUGMENT_FAMILIES = ('rand-...', 'augmix-...', 'original', 'originalr', 'v0', 'v0r', '3a', 'trivial')


class SeededFromTorch:
    """Run a transform that draws from Python's ``random`` and NumPy with both seeded from torch's generator.

    Why: the data sets seed only torch's generator per image (``CheckedImageFolder.augment_seed``), which is
    what makes resumed and multi-process runs exact; timm's policies and random erasing draw from Python's and
    NumPy's generators, so each call seeds those from one torch draw and puts their states back afterwards.
    """

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, x):
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        py_state, np_state = random.getstate(), np.random.get_state()
        random.seed(seed)
        np.random.seed(seed)
        try:
            return self.transform(x)
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.transform!r})'


def auto_augment_transform(policy: str, image_size: int, mean=IMAGENET_MEAN) -> Callable:
    """The PIL-image transform of ``policy`` (timm's policy string, or ``trivial``); ValueError if unknown."""
    if policy == 'trivial':
        return v2.TrivialAugmentWide()
    from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform as timm_auto
    from timm.data.auto_augment import rand_augment_transform

    # what timm.data.create_transform passes its policies
    hparams = dict(translate_const=int(image_size * 0.45), img_mean=tuple(min(255, round(255 * m)) for m in mean))
    try:
        if policy.startswith('rand'):
            if '-mmax' not in policy:
                # timm's increasing posterize keeps 0 bits at magnitude 10, which Pillow >= 11 refuses (an error
                # in a worker, mid-epoch); a bound just below 10 keeps 1 bit and otherwise changes nothing visible
                hparams['magnitude_max'] = 9.99
            return rand_augment_transform(policy, hparams)
        if policy.startswith('augmix'):
            return augment_and_mix_transform(policy, dict(hparams, translate_pct=0.3))
        return timm_auto(policy, hparams)
    except (AssertionError, KeyError, ValueError, IndexError) as e:
        raise ValueError(f'unknown auto_augment policy {policy!r} ({e or type(e).__name__}); use timm\'s policy '
                         f'strings such as rand-m9-mstd0.5-inc1, original, augmix-m5-w4-d2, or trivial') from None


def check_auto_augment(policy: Optional[str]) -> bool:
    """True when ``policy`` is empty or builds (what a recipe's ``validate`` checks)."""
    if not policy:
        return True
    try:
        auto_augment_transform(policy, 224)
    except ValueError:
        return False
    return True


def _size(name: str, value) -> int:
    """``value`` as a pixel size, or a ``ValueError`` naming ``name`` (torchvision's own would come at the
    first image, from inside a worker)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'{name} must be a whole number of pixels >= 1, got {value!r}')
    return value


def _to_normalised_tensor(mean: Sequence[float], std: Sequence[float]):
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]


def train_transform(image_size: int, augment: str = 'random-resized-crop', mean=IMAGENET_MEAN,
                    std=IMAGENET_STD, auto_augment: Optional[str] = None, reprob: float = 0.0) -> v2.Compose:
    """The training pipeline: ``augment``'s geometry, a flip, then ``auto_augment``'s policy (``None``: none),
    normalisation, and timm's random erasing with probability ``reprob`` (per-pixel normal noise, as in RSB)."""
    image_size = _size('image_size', image_size)
    if isinstance(reprob, bool) or not isinstance(reprob, (int, float)) or not 0 <= reprob <= 1:
        raise ValueError(f'reprob (the probability of random erasing) must be in [0, 1], got {reprob!r}')
    if augment == 'random-resized-crop':
        geometry = [v2.RandomResizedCrop(image_size, antialias=True)]
    elif augment == 'pad-crop':
        geometry = [v2.Resize((image_size, image_size), antialias=True),
                    v2.RandomCrop(image_size, padding=max(1, image_size // 8), padding_mode='reflect')]
    elif augment == 'flip':
        geometry = [v2.Resize((image_size, image_size), antialias=True)]
    else:
        raise ValueError(f'unknown augmentation {augment!r}; choose one of {", ".join(AUGMENTATIONS)}')
    steps = [*geometry, v2.RandomHorizontalFlip()]
    if auto_augment:
        policy = auto_augment_transform(auto_augment, image_size, mean)
        # timm's policies work on PIL images; the decoders may hand over uint8 tensors (PIL passes through)
        steps += [v2.ToPILImage(), SeededFromTorch(policy) if auto_augment != 'trivial' else policy]
    steps += _to_normalised_tensor(mean, std)
    if reprob > 0:
        from timm.data.random_erasing import RandomErasing

        steps.append(SeededFromTorch(RandomErasing(reprob, mode='pixel', device='cpu')))
    return v2.Compose(steps)


def eval_transform(image_size: int, eval_resize: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> v2.Compose:
    """Resize the short side to ``eval_resize``, centre-crop ``image_size`` (equal sizes: resize only)."""
    image_size, eval_resize = _size('image_size', image_size), _size('eval_resize', eval_resize)
    if eval_resize < image_size:  # torchvision would pad the crop with black
        raise ValueError(f'eval_resize {eval_resize} is smaller than the crop {image_size}: the short side is '
                         'resized first and the centre crop taken from it; give eval_resize >= image_size')
    if eval_resize == image_size:
        geometry = [v2.Resize((image_size, image_size), antialias=True)]
    else:
        geometry = [v2.Resize(eval_resize, antialias=True), v2.CenterCrop(image_size)]
    return v2.Compose([*geometry, *_to_normalised_tensor(mean, std)])

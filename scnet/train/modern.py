"""The modern training options of a recipe, each built from timm's maintained parts (nothing here re-implements
them): the optimiser with its parameter groups, the loss, mixup/cutmix, and the EMA of the weights.

With a recipe's defaults these give exactly the paper's training: SGD with momentum and weight decay on every
parameter, cross-entropy (with the recipe's label smoothing), no mixing, no EMA.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from scnet.train.recipe import Recipe

__all__ = ['build_optimizer', 'build_criterion', 'build_mixup', 'build_ema']


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """``timm.optim.create_optimizer_v2``: SGD (timm's ``momentum``/``nesterov``), AdamW or LAMB at the peak lr.

    ``decay_norm_and_bias: false`` puts norm weights and biases in a group without weight decay (timm's
    groups, as RSB trains); the paper decays every parameter.
    """
    from timm.optim import create_optimizer_v2

    opt = {'sgd': 'nesterov' if recipe.nesterov else 'momentum'}.get(recipe.optimizer, recipe.optimizer)
    kwargs = {'momentum': recipe.momentum} if recipe.optimizer == 'sgd' else {}
    return create_optimizer_v2(model, opt=opt, lr=recipe.peak_lr, weight_decay=recipe.weight_decay,
                               filter_bias_and_bn=not recipe.decay_norm_and_bias, **kwargs)


def build_criterion(recipe: Recipe) -> Optional[Callable]:
    """The training loss, or None for plain cross-entropy (``F.cross_entropy`` with ``label_smoothing``).

    With mixup/cutmix the targets arrive as soft distributions in which ``timm.data.Mixup`` has already put the
    label smoothing, so the loss takes them as they are.
    """
    from timm.loss import BinaryCrossEntropy, SoftTargetCrossEntropy

    if recipe.loss == 'bce':
        smoothing = 0.0 if recipe.mixes else recipe.label_smoothing
        return BinaryCrossEntropy(smoothing=smoothing, target_threshold=recipe.bce_target_thresh)
    if recipe.mixes:
        return SoftTargetCrossEntropy()
    return None


def build_mixup(recipe: Recipe, num_classes: int) -> Optional[Callable]:
    """``timm.data.Mixup`` (mixup, cutmix or a switch between them, per batch), or None when both are off.

    It draws its mixing ratios from NumPy's global generator, which the trainer reseeds from (seed, epoch,
    process) at each epoch: a resumed run draws the same ratios as an uninterrupted one.
    """
    if not recipe.mixes:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=recipe.mixup, cutmix_alpha=recipe.cutmix, prob=recipe.mixup_prob,
                 switch_prob=recipe.mixup_switch_prob, label_smoothing=recipe.label_smoothing,
                 num_classes=num_classes)


def build_ema(net: nn.Module, recipe: Recipe):
    """``timm.utils.ModelEmaV3`` of ``net`` (its copy is in ``.module``), or None when ``ema_decay`` is 0."""
    if recipe.ema_decay <= 0:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(net, decay=recipe.ema_decay)

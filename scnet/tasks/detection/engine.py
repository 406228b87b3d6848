"""One epoch of detector training: torchvision's loss dict summed, SGD with warm-up and step decay.

The shared rules (worker errors, the finite-loss guard, the progress bar) are ``scnet.train.engine``'s; what
is the detector's own is its loss dict (logged per loss) and optional gradient clipping.
"""
from __future__ import annotations

import time
from collections import defaultdict
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader

from scnet.errors import ScnetError, is_single_value_batch
from scnet.tasks.detection.recipe import DetectionRecipe
from scnet.train import distributed
from scnet.train.engine import batches, check_finite, progress_bar
from scnet.train.schedule import lr_schedule

__all__ = ['lr_factor', 'train_one_epoch']


def lr_factor(recipe: DetectionRecipe, steps_per_epoch: int):
    """Linear warm-up from ``warmup_factor`` over ``warmup_iters`` steps, then x ``lr_gamma`` at each of
    ``lr_steps`` (epochs, fractional ones allowed, counted in steps)."""
    return lr_schedule(warmup_steps=min(recipe.warmup_iters, recipe.epochs * steps_per_epoch),
                       warmup_start=recipe.warmup_factor, gamma=recipe.lr_gamma,
                       milestones=[int(round(s * steps_per_epoch)) for s in recipe.lr_steps])


def _losses(model: nn.Module, images, targets) -> Dict[str, torch.Tensor]:
    try:
        return model(images, targets)
    except ValueError as e:
        if not is_single_value_batch(e):
            raise
        raise ScnetError('batch norm learning from scratch needs at least 2 images per process where a map is '
                         '1 x 1 (the GE gates, or stage 4 of small images): use a --batch-size of at least 2 '
                         'per process, or backbone weights (--backbone-checkpoint), which freeze batch norm') from None


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer, scheduler, ctx: distributed.Context, *,
                    epoch: int, epochs: int, progress: bool, grad_clip: Optional[float] = None,
                    after_step: Optional[Callable[[int], None]] = None) -> Dict[str, Any]:
    """Train one pass of ``loader``; the epoch's row: ``lr``, ``train_loss`` and ``train_<loss>`` per loss of
    torchvision's dict (averaged over the images of all processes), ``images_per_sec``, ``epoch_time_s``.
    ``after_step(step)`` runs after each optimiser step (``EpochStops``: SIGTERM)."""
    model.train()
    sums: Dict[str, float] = defaultdict(float)
    images_seen = 0
    last_lr = optimizer.param_groups[0]['lr']
    bar = progress_bar(ctx, progress, total=len(loader), desc=f'epoch {epoch}/{epochs} train')
    start = time.perf_counter()
    for step, (images, targets) in enumerate(batches(loader), start=1):
        images = [image.to(ctx.device, non_blocking=True) for image in images]
        targets = [{k: v.to(ctx.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                    for k, v in t.items()} for t in targets]
        losses = _losses(model, images, targets)
        total = sum(losses.values())
        values = torch.stack([total.detach()] + [v.detach() for v in losses.values()]).double().cpu()
        check_finite(values[1:], epoch=epoch, step=step, names=list(losses))
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
        if after_step is not None:
            after_step(step)
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

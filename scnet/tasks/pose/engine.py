"""One epoch of keypoint training: heatmap regression with simple-baselines' weighted MSE.

The shared rules (worker errors, the finite-loss guard, autocast, the progress bar) are
``scnet.train.engine``'s; the heatmap loss is this task's own.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn

from scnet.train import distributed
from scnet.train.engine import autocast, batches, check_finite, progress_bar

__all__ = ['heatmap_loss', 'train_one_epoch']


def heatmap_loss(heatmaps: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """simple-baselines' JointsMSELoss with target weights: 0.5 x mean over keypoints of the MSE of
    weighted heatmaps (a keypoint of weight 0 contributes nothing)."""
    w = weights[:, :, None, None]
    return 0.5 * ((heatmaps.float() * w - targets * w) ** 2).mean()


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, ctx: distributed.Context, *,
                    epoch: int, amp: bool = False, scaler: Optional[torch.amp.GradScaler] = None,
                    progress: bool = True, after_step: Optional[Callable[[int], None]] = None) -> Dict[str, Any]:
    """Train one pass of ``loader``; the epoch's row: ``train_loss`` (averaged over the crops of all
    processes), ``train_crops``, ``crops_per_sec``, ``epoch_time_s``. ``after_step(step)`` runs after each
    optimiser step (``EpochStops``: SIGTERM)."""
    model.train()
    sums = torch.zeros(2, dtype=torch.float64)   # loss x crops, crops
    bar = progress_bar(ctx, progress, total=len(loader), desc=f'epoch {epoch} train')
    start = time.perf_counter()
    for step, (images, targets, weights) in enumerate(batches(loader), start=1):
        images = images.to(ctx.device, non_blocking=True)
        targets, weights = targets.to(ctx.device, non_blocking=True), weights.to(ctx.device, non_blocking=True)
        with autocast(ctx.device, amp):
            loss = heatmap_loss(model(images), targets, weights)
        check_finite(loss, epoch=epoch, step=step)
        optimizer.zero_grad(set_to_none=True)
        if scaler:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        sums += torch.tensor([float(loss.detach()) * len(images), len(images)], dtype=torch.float64)
        if after_step is not None:
            after_step(step)
        if ctx.is_main:
            bar.update(1)
            bar.set_postfix_str(f'loss {sums[0] / max(sums[1], 1):.3e}')
    bar.close()
    elapsed = time.perf_counter() - start
    total = distributed.all_reduce_sum(sums)
    n = max(float(total[1]), 1.0)
    return {'train_loss': float(total[0]) / n, 'train_crops': int(total[1]),
            'crops_per_sec': float(total[1]) / max(elapsed, 1e-9), 'epoch_time_s': elapsed}

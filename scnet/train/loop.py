"""One epoch of training and one pass of evaluation, exact over any number of processes.

Sums (loss x images, correct predictions, images) are accumulated per process and added up across processes,
so the numbers logged are those of the whole data set, not of process 0's share.
"""
from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from scnet.errors import InvalidArgumentError
from scnet.train.distributed import Context, all_reduce_sum
from scnet.train.engine import NonFiniteLossError, autocast, batches, check_finite, progress_bar

__all__ = ['NonFiniteLossError', 'StepSettings', 'train_one_epoch', 'evaluate', 'topk_correct']


@dataclass
class StepSettings:
    """How ``train_one_epoch`` takes its steps: micro-batches per optimiser step, the side-output loss weight,
    the loss, mixed precision and memory layout, and what runs after each step."""

    accum_steps: int = 1
    aux_weight: float = 0.0
    label_smoothing: float = 0.0
    amp: bool = False
    channels_last: bool = False
    # the modern options (scnet.train.modern builds them from timm's parts); None: the paper's training
    criterion: Optional[Callable] = None   # (logits, targets) -> loss; None: cross-entropy, label_smoothing
    mixup: Optional[Callable] = None       # timm.data.Mixup: (images, targets) -> (mixed images, soft targets)
    on_step: Optional[Callable[[], None]] = None  # after each optimiser step (the EMA's update)
    grad_clip: Optional[float] = None      # clip the gradients' global L2 norm to this before each step

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The training loss of a batch, in float32 (under autocast too): ``criterion``, else cross-entropy
        with ``label_smoothing``."""
        if self.criterion is None:
            return F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)
        return self.criterion(logits.float(), targets)


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks=(1, 5)) -> torch.Tensor:
    """Number of samples whose target is among the top-k logits, for each k (k capped at the class count)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == targets[:, None]
    return torch.stack([hits[:, :k].any(dim=1).sum() for k in ks]).to(torch.float64)


def _split_outputs(outputs):
    return outputs if isinstance(outputs, tuple) else (outputs, None)


def _unpack(batch) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """``(images, targets, skipped)`` of a batch: ``collate_skipping_bad``'s three, or a default collate's
    ``(images, targets)`` (nothing skipped)."""
    if isinstance(batch, (list, tuple)) and len(batch) in (2, 3):
        images, targets = batch[0], batch[1]
        skipped = int(batch[2]) if len(batch) == 3 else 0
        if isinstance(images, torch.Tensor) and isinstance(targets, torch.Tensor):
            return images, targets, skipped
    shown = f'{type(batch).__name__} of {len(batch)}' if isinstance(batch, (list, tuple)) else type(batch).__name__
    raise InvalidArgumentError(f'a batch must be (images, targets) or (images, targets, skipped) tensors, as '
                               f'the default collate or scnet.data.folders.collate_skipping_bad give, got a {shown}')


def _check_classes(targets: torch.Tensor, logits: torch.Tensor) -> None:
    """A one-line error when a target names a class the model has no output for (``targets`` on the CPU, as
    the loader gives them: no device synchronisation)."""
    if targets.numel() and targets.device.type == 'cpu' and not targets.is_floating_point():
        top, bottom = int(targets.max()), int(targets.min())
        if bottom < 0:
            raise InvalidArgumentError(f'the data has a negative class index ({bottom}): targets are class indices '
                                       f'0 to {logits.shape[1] - 1} (an unlabelled split cannot be trained or scored)')
        if top >= logits.shape[1]:
            raise InvalidArgumentError(f'the data has class index {top} (at least {top + 1} classes) but the model '
                                       f'gives {logits.shape[1]} outputs: build it with num_classes equal to the '
                                       'number of classes of the data')


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, scheduler, ctx: Context,
                    settings: StepSettings, *, epoch: int, scaler: Optional[torch.amp.GradScaler] = None,
                    progress: bool = True, sums: Optional[torch.Tensor] = None) -> Dict[str, float]:
    """Train for one epoch (one pass of ``loader``'s micro-batches); returns the epoch's averages.

    A batch is ``(images, targets)`` or ``(images, targets, skipped)`` (``collate_skipping_bad``'s, which counts
    the damaged images it left out). Every ``settings.accum_steps`` micro-batches make one optimiser step, so a
    loader of known length must give a multiple of it. ``sums``: the epoch's running sums to continue and
    update in place (``scnet.train.preemption`` saves them mid-epoch and gives them back to a resumed run);
    None: from zero."""
    try:
        micro_batches = len(loader)
    except TypeError:  # an iterable without a length
        micro_batches = None
    if micro_batches is not None and micro_batches % settings.accum_steps:
        raise InvalidArgumentError(
            f'the loader gives {micro_batches} micro-batches, not a multiple of accum_steps {settings.accum_steps}: '
            f'the last {micro_batches % settings.accum_steps} would be computed and never applied; drop the '
            'remainder (drop_last=True, or a sampler of whole steps) or change accum_steps')
    model.train()
    device = ctx.device
    # loss x n, correct@1, images, aux loss x n, skipped
    sums = torch.zeros(5, dtype=torch.float64) if sums is None else sums
    step_images = torch.zeros(1, dtype=torch.float64)
    steps = None if micro_batches is None else micro_batches // settings.accum_steps
    bar = progress_bar(ctx, progress, total=steps, desc=f'epoch {epoch} train')
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    micro = 0
    for batch in batches(loader):
        images, targets, skipped = _unpack(batch)
        micro += 1
        sums[4] += skipped
        last_micro = micro % settings.accum_steps == 0
        if len(targets):
            cpu_targets = targets
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            if settings.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            labels = targets
            if settings.mixup is not None:
                if len(targets) % 2:  # timm's Mixup pairs each image with another: an odd one sits out
                    images, targets, labels = images[:-1], targets[:-1], targets[:-1]
                images, targets = settings.mixup(images, targets)
            sync = contextlib.nullcontext() if last_micro or not hasattr(model, 'no_sync') else model.no_sync()
            with sync:
                with autocast(device, settings.amp):
                    logits, side = _split_outputs(model(images))
                    _check_classes(cpu_targets, logits)
                    loss = settings.loss(logits, targets)
                    total = loss
                    if side is not None:
                        side_loss = settings.loss(side, targets)
                        total = loss + settings.aux_weight * side_loss
                        sums[3] += side_loss.detach().double().cpu() * len(targets)
                scaled = total / settings.accum_steps
                (scaler.scale(scaled) if scaler else scaled).backward()
            sums[0] += loss.detach().double().cpu() * len(labels)
            sums[1] += topk_correct(logits.detach(), labels, ks=(1,)).cpu()[0]
            sums[2] += len(labels)
        if not last_micro:
            continue
        check_finite(sums[[0, 3]], epoch=epoch, step=micro // settings.accum_steps)
        if settings.grad_clip:
            if scaler:
                scaler.unscale_(optimizer)  # the norm of the true gradients, not of the loss-scaled ones
            nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group['params']],
                                     settings.grad_clip)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        if settings.on_step is not None:
            settings.on_step()
        step_images += 1
        if ctx.is_main:
            bar.update(1)
            elapsed = time.perf_counter() - start
            bar.set_postfix_str(f'loss {sums[0] / max(sums[2], 1):.3f}  '
                                f'{sums[2] * ctx.world_size / max(elapsed, 1e-9):.0f} img/s')
    bar.close()
    if micro % settings.accum_steps:  # (a loader without a length): gradients that no step applied
        optimizer.zero_grad(set_to_none=True)
        warnings.warn(f'the loader gave {micro} micro-batches, not a multiple of accum_steps {settings.accum_steps}: '
                      f'the gradients of the last {micro % settings.accum_steps} were not applied', stacklevel=2)
    elapsed = time.perf_counter() - start
    total = all_reduce_sum(sums)
    _check_some_images_read(int(total[2]), int(total[4]), 'training')
    n = max(float(total[2]), 1.0)
    result = {'train_loss': float(total[0]) / n, 'train_top1': 100.0 * float(total[1]) / n,
              'images_per_sec': float(total[2]) / max(elapsed, 1e-9), 'epoch_time_s': elapsed,
              'skipped_images': int(total[4]), 'train_images': int(total[2])}
    if float(total[3]) > 0:
        result['aux_train_loss'] = float(total[3]) / n
    return result


def _check_some_images_read(used: int, skipped: int, what: str) -> None:
    """With ``--skip-bad-images``, a pass in which every image was unreadable gave a loss of 0 and an accuracy
    of 0 as if measured, and a run that learnt nothing ended as a success."""
    if used == 0 and skipped > 0:
        from scnet.data.folders import DataError

        raise DataError(f'every {what} image of this pass was unreadable ({skipped} skipped with --skip-bad-images): '
                        'there is nothing to learn from or score; check the files (`file IMAGE` tells what one is)')


@torch.no_grad()
def evaluate(model: nn.Module, loader, ctx: Context, *, amp: bool = False, channels_last: bool = False,
             progress: bool = True, desc: str = 'val', stop: Optional[Callable[[], bool]] = None) -> Dict[str, float]:
    """Loss, top-1 and top-5 (percent) over every image of ``loader``'s data set, counted once. A batch is
    ``(images, targets)`` or ``(images, targets, skipped)``, as for ``train_one_epoch``.

    ``stop``: checked before each batch (in this process only: no collective); when it is true the evaluation
    ends there, and its result counts the batches seen so far (a run stopped by SIGTERM discards it)."""
    model.eval()
    # loss x n, correct@1, correct@5, images, side correct@1, side correct@5, skipped
    sums = torch.zeros(7, dtype=torch.float64)
    has_side = False
    for batch in batches(loader, ctx, progress=progress, desc=desc):
        if stop is not None and stop():
            break
        images, targets, skipped = _unpack(batch)
        sums[6] += skipped
        if not len(targets):
            continue
        cpu_targets = targets
        images, targets = images.to(ctx.device), targets.to(ctx.device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(ctx.device, amp):
            logits, side = _split_outputs(model(images))
        _check_classes(cpu_targets, logits)
        logits = logits.float()
        sums[0] += F.cross_entropy(logits, targets, reduction='sum').double().cpu()
        sums[1:3] += topk_correct(logits, targets).cpu()
        sums[3] += len(targets)
        if side is not None:
            has_side = True
            sums[4:6] += topk_correct(side.float(), targets).cpu()
    total = all_reduce_sum(sums)
    _check_some_images_read(int(total[3]), int(total[6]), 'validation')
    n = max(float(total[3]), 1.0)
    result = {'val_loss': float(total[0]) / n, 'val_top1': 100.0 * float(total[1]) / n,
              'val_top5': 100.0 * float(total[2]) / n, 'val_images': int(total[3]),
              'val_skipped_images': int(total[6])}
    if has_side:
        result.update(aux_val_top1=100.0 * float(total[4]) / n, aux_val_top5=100.0 * float(total[5]) / n)
    return result

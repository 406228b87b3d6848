"""The expected duration of a training run, printed when it starts: measured on this machine, not guessed.

Before the first epoch a copy of the model takes a few training steps (forward, backward, optimiser step) on a
random micro-batch of the run's shape, and evaluates one; a few images of each split go through the data
pipeline. Those times, scaled by the run's number of steps and images, give the estimate: on a loaded machine
the probe is slowed like the run, on a fast one it is fast like the run. The probe is a few steps, so it
costs a small fraction of a run.

The copy leaves the run untouched: the model, its optimiser and every random stream train the same with or
without the estimate (the probe draws from a forked generator and steps its own optimiser).

What the estimate does not see: the first step's one-off costs in the run itself (the probe pays them on its
copy), ``torch.compile`` (the probe runs eagerly; compiling adds its own time), checkpoint writing, and load
that comes or goes during the run. The run prints its actual time when it ends.
"""
from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from scnet.train.engine import autocast

__all__ = ['DurationEstimate', 'probe_train_step', 'probe_eval_batch', 'probe_load', 'estimate_duration',
           'measure_and_estimate', 'format_seconds']

#: The probe's micro-batch on CPU is capped (the estimate scales linearly beyond it): three steps of a
#: large model at batch 256 would take minutes on a CPU.
CPU_PROBE_BATCH = 64


@dataclass
class DurationEstimate:
    """Seconds a run is expected to take, and the measurements behind them."""

    seconds: float                # the whole remaining run: training steps and validation passes
    epochs: int                   # epochs still to run
    steps_per_epoch: int          # optimiser steps per epoch
    step_s: float                 # one optimiser step: compute (all micro-batches) and, without workers, loading
    val_images: int               # validation images each process evaluates per epoch
    val_s: float                  # one validation pass of this process

    def line(self, machine: str = '') -> str:
        where = f' on this machine ({machine})' if machine else ' on this machine'
        return (f'expected duration: {format_seconds(self.seconds)} ({self.epochs} epoch'
                f'{"s" if self.epochs != 1 else ""} x {self.steps_per_epoch} steps at {self.step_s:.3g} s, '
                f'validation {format_seconds(self.val_s)} an epoch; measured{where})')


def format_seconds(seconds: float) -> str:
    """``'42 s'``, ``'3 min 20 s'``, ``'2 h 05 min'``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f'{max(seconds, 0):.2g} s' if seconds < 9.5 else f'{s} s'
    if s < 3600:
        return f'{s // 60} min {s % 60:02d} s'
    return f'{s // 3600} h {(s % 3600) // 60:02d} min'


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> float:
    """The median time of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _probe_input(model: nn.Module, batch: int, image_size: int, device: torch.device, channels_last: bool,
                 num_classes: int):
    images = torch.randn(batch, 3, image_size, image_size, device=device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, torch.randint(0, max(1, num_classes), (batch,), device=device)


def _probe_batch(batch: int, device: torch.device) -> int:
    return batch if device.type == 'cuda' else max(1, min(batch, CPU_PROBE_BATCH))


def probe_train_step(model: nn.Module, batch: int, image_size: int, num_classes: int, *,
                     optimizer: Optional[torch.optim.Optimizer] = None, amp: bool = False,
                     channels_last: bool = False, warmup: int = 2, repeats: int = 3) -> float:
    """Seconds of one training micro-step of ``batch`` images (forward, backward, an SGD step with
    ``optimizer``'s settings), measured on a copy of ``model``; ``model`` and the random streams are left as they
    were. On CPU the probe runs at most ``CPU_PROBE_BATCH`` images and scales linearly to ``batch``."""
    device = next(model.parameters()).device
    probe = _probe_batch(batch, device)
    with torch.random.fork_rng(devices=[device] if device.type == 'cuda' else []):
        twin = copy.deepcopy(model).train()
        params = [p for p in twin.parameters() if p.requires_grad]
        # the run's SGD settings (the same arithmetic per step) at lr 0: the copy's weights stay as they were
        settings = {k: v for k, v in (optimizer.defaults if optimizer is not None else {}).items()
                    if k in ('momentum', 'nesterov', 'weight_decay', 'dampening')}
        opt = torch.optim.SGD(params, lr=0.0, **settings)
        images, targets = _probe_input(twin, probe, image_size, device, channels_last, num_classes)

        def step() -> None:
            with autocast(device, amp):
                out = twin(images)
                logits = out[0] if isinstance(out, tuple) else out
                # cross-entropy, spelled out: the run's own calls of F.cross_entropy are not the probe's
                loss = F.nll_loss(F.log_softmax(logits.float(), dim=1), targets)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        seconds = _timed(step, device, warmup, repeats)
        del twin, opt
    return seconds * batch / probe


@torch.no_grad()
def probe_eval_batch(model: nn.Module, batch: int, image_size: int, *, amp: bool = False,
                     channels_last: bool = False, warmup: int = 1, repeats: int = 2) -> float:
    """Seconds of one evaluation forward pass of ``batch`` images, on a copy of ``model`` in eval mode."""
    device = next(model.parameters()).device
    probe = _probe_batch(batch, device)
    with torch.random.fork_rng(devices=[device] if device.type == 'cuda' else []):
        twin = copy.deepcopy(model).eval()
        images, _ = _probe_input(twin, probe, image_size, device, channels_last, 1)

        def forward() -> None:
            with autocast(device, amp):
                twin(images)

        seconds = _timed(forward, device, warmup, repeats)
        del twin
    return seconds * batch / probe


def probe_load(dataset, samples: int = 8) -> float:
    """Seconds to read and transform one image of ``dataset`` (median over ``samples`` spread over it)."""
    n = len(dataset)
    if n == 0:
        return 0.0
    picks = sorted({round(i * (n - 1) / max(1, samples - 1)) for i in range(min(samples, n))})
    times = []
    with torch.random.fork_rng(devices=[]):
        for i in picks:
            start = time.perf_counter()
            try:
                dataset[i]
            except Exception:       # a bad image is the run's to report, with its path; not the estimate's
                continue
            times.append(time.perf_counter() - start)
    return statistics.median(times) if times else 0.0


def _overlapped(compute_s: float, load_s: float, workers: int) -> float:
    """One batch's time: loading adds to compute in the training process; loader workers run beside it."""
    if workers <= 0:
        return compute_s + load_s
    return max(compute_s, load_s / workers)


def estimate_duration(*, epochs: int, steps_per_epoch: int, micro_batch: int, accum_steps: int,
                      micro_step_s: float, load_image_s: float, val_images: int, val_batch: int,
                      val_batch_s: float, val_load_image_s: float, workers: int) -> DurationEstimate:
    """Scale measured times to a run: ``epochs`` x (``steps_per_epoch`` optimiser steps, each of
    ``accum_steps`` micro-batches of ``micro_batch`` images) plus a pass over ``val_images``."""
    step_s = accum_steps * _overlapped(micro_step_s, load_image_s * micro_batch, workers)
    val_batches = -(-val_images // max(1, val_batch)) if val_images else 0
    per_image = val_batch_s / max(1, val_batch)
    val_s = _overlapped(per_image * val_images, val_load_image_s * val_images, workers) if val_batches else 0.0
    total = max(0, epochs) * (steps_per_epoch * step_s + val_s)
    return DurationEstimate(total, max(0, epochs), steps_per_epoch, step_s, val_images, val_s)


def measure_and_estimate(model: nn.Module, optimizer: torch.optim.Optimizer, *, train_set, val_set,
                         epochs: int, steps_per_epoch: int, micro_batch: int, accum_steps: int,
                         val_images: int, val_batch: int, image_size: int, num_classes: int, workers: int,
                         amp: bool = False, channels_last: bool = False) -> DurationEstimate:
    """Measure this machine with the run's model and data (see the module docstring) and scale to the run."""
    micro_step_s = probe_train_step(model, micro_batch, image_size, num_classes, optimizer=optimizer, amp=amp,
                                    channels_last=channels_last)
    val_batch_s = probe_eval_batch(model, val_batch, image_size, amp=amp, channels_last=channels_last) \
        if val_images else 0.0
    return estimate_duration(epochs=epochs, steps_per_epoch=steps_per_epoch, micro_batch=micro_batch,
                             accum_steps=accum_steps, micro_step_s=micro_step_s,
                             load_image_s=probe_load(train_set), val_images=val_images, val_batch=val_batch,
                             val_batch_s=val_batch_s, val_load_image_s=probe_load(val_set) if val_images else 0.0,
                             workers=workers)

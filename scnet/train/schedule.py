"""Learning-rate schedules: the multiplier of the peak learning rate at each step, for ``LambdaLR``.

One rule serves the classification, detection and pose runs; each fills in its own numbers:

* linear warm-up over the first ``warmup_steps`` steps, from ``warmup_start`` up to the peak;
* then cosine annealing from the peak down to 0 at step ``cosine_steps``, or, without ``cosine_steps``,
  step decay: the lr times ``gamma`` at each of ``milestones`` passed.

A "step" is whatever the caller steps the scheduler by: an optimiser step (classification, detection) or an
epoch (pose). Step decay applies during warm-up too (the warm-up scales the scheduled lr).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

__all__ = ['lr_factor', 'lr_schedule']


def lr_factor(step: float, *, warmup_steps: float = 0.0, warmup_start: float = 0.0,
              warmup_counts_current: bool = False, cosine_steps: Optional[float] = None,
              milestones: Sequence[float] = (), gamma: float = 0.1) -> float:
    """The lr multiplier at ``step`` (0-based).

    Warm-up (``step < warmup_steps``): ``warmup_start * (1 - done) + done`` where ``done`` is the fraction of the
    warm-up done before this step (``step / warmup_steps``: ``warmup_start`` at step 0, the peak at step
    ``warmup_steps``), or, with ``warmup_counts_current``, after it (``(step + 1) / warmup_steps``: the last
    warm-up step is already at the peak).

    Decay: with ``cosine_steps``, ``0.5 * (1 + cos(pi * p))`` where ``p`` runs from 0 at the end of the warm-up
    to 1 at ``cosine_steps`` (and stays 1 after); otherwise ``gamma ** n`` with ``n`` the number of
    ``milestones`` (in steps) at or before ``step``.
    """
    ramp = 1.0
    if step < warmup_steps:
        done = (step + (1 if warmup_counts_current else 0)) / warmup_steps
        ramp = warmup_start * (1 - done) + done
    if cosine_steps is not None:
        progress = max(0.0, min(1.0, (step - warmup_steps) / max(1.0, cosine_steps - warmup_steps)))
        return ramp * (0.5 * (1 + math.cos(math.pi * progress)))
    return ramp * gamma ** sum(1 for m in milestones if step >= m)


def lr_schedule(**settings) -> Callable[[int], float]:
    """``lr_factor`` with ``settings`` fixed: the ``lr_lambda`` of ``torch.optim.lr_scheduler.LambdaLR``."""
    def factor(step: int) -> float:
        return lr_factor(step, **settings)
    return factor

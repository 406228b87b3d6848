"""The run skeleton that classification, detection and pose training share, written once.

Each task keeps what is its own (the batches it reads, the losses it computes, the metrics it reports); the
pieces every one of their epoch loops needs live here, so that the guarantees they carry are the same in all
three: the randomness of an epoch depends on (seed, epoch, process) only, which is what makes a resumed run
and a K-process run exact; an error raised in a DataLoader worker reaches the user as its own one line; a
non-finite loss stops every process at the same step and names the last good checkpoint; a resumed run
restores its optimiser, schedule, loss scaler and random generators the same way.

Nothing here exists in PyTorch or a maintained training library in this form: the skeletons of timm's
``train.py`` or Lightning's ``Trainer`` own the whole loop, where these tasks need their own loops (gradient
accumulation with mixup, torchvision's loss dicts, heatmap targets) around a shared set of small rules.
"""
from __future__ import annotations

import contextlib
import math
import random
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from scnet.errors import ScnetError
from scnet.train.distributed import Context, all_reduce_sum
from scnet.train.state import restore_rng_states

__all__ = ['NonFiniteLossError', 'seed_epoch', 'progress_bar', 'batches', 'unwrap_worker_error', 'check_finite',
           'check_state_finite', 'keep_last_good', 'autocast', 'grad_scaler', 'wrap_ddp', 'restore_training',
           'epoch_line', 'finish_run']


class NonFiniteLossError(ScnetError):
    """The loss became NaN or infinite."""


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed torch's, Python's and NumPy's generators for ``epoch`` of process ``rank``.

    Seeded from (seed, epoch, rank) rather than carried over from the previous epoch, so that a run resumed
    after a kill replays the lost epochs exactly; Python's and NumPy's generators are what timm's Mixup draws
    from.
    """
    value = seed * 100_003 + epoch * 1_009 + rank
    torch.manual_seed(value)
    random.seed(value)
    np.random.seed(value % 2**32)


def progress_bar(ctx: Context, progress: bool, *, total: Optional[int] = None, desc: str = '',
                 unit: str = 'step', iterable: Optional[Iterable] = None) -> tqdm:
    """A transient tqdm bar shown by process 0 only (and only on a terminal, tqdm's ``disable=None``)."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=None if (progress and ctx.is_main) else True,
                dynamic_ncols=True, leave=False)


def unwrap_worker_error(e: ScnetError) -> ScnetError:
    """An error raised in a DataLoader worker arrives with the worker's traceback in its message: the same
    error with its own last line only."""
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    if len(lines) <= 1:
        return e
    last = lines[-1]
    for prefix in (f'{type(e).__module__}.{type(e).__name__}: ', f'{type(e).__name__}: '):
        if last.startswith(prefix):
            last = last[len(prefix):]
    return type(e)(last)


def batches(loader: Iterable, ctx: Optional[Context] = None, *, progress: bool = False,
            desc: Optional[str] = None, unit: str = 'batch') -> Iterator[Any]:
    """The batches of ``loader``, with a bar of ``desc`` when given (advanced per batch) and the errors of its
    workers (``ScnetError``: a bad image, a bad annotation) unwrapped to one line."""
    bar = progress_bar(ctx, progress, total=len(loader), desc=desc, unit=unit) if desc and ctx else None
    iterator = iter(loader)
    try:
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except ScnetError as e:
                raise unwrap_worker_error(e) from None
            yield batch
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()


def check_finite(values: torch.Tensor, *, epoch: int, step: int, names: Sequence[str] = ()) -> None:
    """Raise ``NonFiniteLossError`` when any of ``values`` (losses), summed over the processes, is not finite.

    Every process checks the same all-reduced numbers, so all of them stop together on a bad step (none is
    left waiting in a collective). ``names`` label the values in the message.
    """
    summed = all_reduce_sum(values.detach().reshape(-1).double().cpu())
    if all(math.isfinite(v) for v in summed.tolist()):
        return
    detail = f' ({", ".join(f"{n} {v:.4g}" for n, v in zip(names, summed.tolist()))})' if names else ''
    raise NonFiniteLossError(f'the loss became non-finite at epoch {epoch}, step {step}{detail}')


def _floating_tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point():
            yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _floating_tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _floating_tensors(value)


def check_state_finite(state: Any, *, where: str) -> None:
    """Raise ``NonFiniteLossError`` when a floating tensor of a training state (weights, EMA weights, optimiser
    moments; nested dicts and lists) is NaN or infinite on any process. Called before a state is saved: the
    losses are checked before each optimiser step, so the step after the last check can still diverge, and its
    state must not replace the last good ``last.pt``. ``where`` says when (``epoch 3, step 40``)."""
    by_device: Dict[torch.device, list] = {}
    for t in _floating_tensors(state):
        by_device.setdefault(t.device, []).append(torch.isfinite(t).all())
    bad = sum(0.0 if bool(torch.stack(flags).all()) else 1.0 for flags in by_device.values())
    if float(all_reduce_sum(torch.tensor([bad], dtype=torch.float64))[0]) > 0:
        raise NonFiniteLossError(f'the weights became non-finite at {where} (the losses before were finite)')


@contextlib.contextmanager
def keep_last_good(output: Path, epoch: int, *, state: Optional[Callable[[], Any]] = None,
                   saved_step: Optional[Callable[[], int]] = None) -> Iterator[None]:
    """Around an epoch's training: a ``NonFiniteLossError`` also says which checkpoint is the last good one and
    what to change. ``state`` (the training state the epoch will save) is checked to be finite when the epoch's
    training ends (``check_state_finite``); ``saved_step``: the step of this epoch that ``last.pt`` holds (0:
    it holds the end of the epoch before), for runs that save mid-epoch."""
    try:
        yield
        if state is not None:
            check_state_finite(state(), where=f'the end of epoch {epoch}')
    except NonFiniteLossError as e:
        step = saved_step() if saved_step is not None else 0
        last = Path(output) / 'last.pt'
        if step:
            kept = f'the state of step {step} of this epoch was saved, last good checkpoint: {last} (epoch {epoch}, ' \
                   f'step {step})'
        else:
            kept = 'nothing of this epoch was saved, last good checkpoint: ' + \
                   (f'{last} (epoch {epoch - 1})' if epoch > 1 else 'none yet')
        raise NonFiniteLossError(f'{e}; {kept}. Lower the learning rate (--lr) or check the data') from None


def autocast(device: torch.device, enabled: bool):
    """Mixed precision when ``enabled``: bfloat16 on CPUs (float16 has no fast CPU kernels), float16 on GPUs."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if device.type == 'cpu' else torch.float16)


def grad_scaler(device: torch.device, amp: bool) -> Optional[torch.amp.GradScaler]:
    """The loss scaler float16 needs on GPUs; None on CPUs (bfloat16 needs none) or without ``amp``."""
    return torch.amp.GradScaler('cuda') if amp and device.type == 'cuda' else None


def wrap_ddp(model: nn.Module, ctx: Context) -> nn.Module:
    """``model`` under DistributedDataParallel when the run has several processes; itself otherwise."""
    if not ctx.distributed:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == 'cuda'
                                               else None)


def restore_training(state: Dict[str, Any], optimizer: torch.optim.Optimizer, scheduler,
                     scaler: Optional[torch.amp.GradScaler] = None) -> None:
    """Continue ``last.pt``'s ``state``: optimiser, schedule, loss scaler and every random generator (the
    model's weights are the caller's: each task checks that they fit its network).

    What the optimiser and the schedule carry over is their progress (momentum buffers, the steps done); their
    settings are the ones given now (``optimizer`` and ``scheduler`` as built from the run's recipe, flags
    given on resume included). Loading the saved state alone would bring back the saved learning rate, weight
    decay and momentum, so that a resumed run records ``--lr 0.3`` in its config.json and trains at the old
    rate, and a run extended with ``--epochs`` keeps the lr its schedule had ended at (0 for cosine) until the
    first step. Here each group's settings are those of the fresh optimiser, the peak learning rate that of
    the recipe, and the learning rate that of the (rebuilt) schedule at the step reached: an extended cosine
    run continues on the curve of the longer run. An unchanged run gets exactly the saved values back.
    """
    fresh = [{k: v for k, v in group.items() if k not in ('params', 'lr')} for group in optimizer.param_groups]
    optimizer.load_state_dict(state['optimizer'])
    scheduler.load_state_dict(state['scheduler'])
    for group, settings in zip(optimizer.param_groups, fresh):
        group.update(settings)
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        scheduler.base_lrs = [group['initial_lr'] for group in optimizer.param_groups]
        lrs = [base * factor(scheduler.last_epoch) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
        for group, lr in zip(optimizer.param_groups, lrs):
            group['lr'] = lr
        scheduler._last_lr = lrs
    if scaler is not None and state.get('scaler'):
        scaler.load_state_dict(state['scaler'])
    restore_rng_states(state['rng'])


def epoch_line(row: Dict[str, Any], epochs: int, results: str = '', *, loss_format: str = '.4f',
               speed: Tuple[str, str, str] = ('images_per_sec', 'img/s', '.0f'), extra: str = '') -> str:
    """The line printed after each epoch: ``epoch E/N  lr  train loss`` + the task's ``results`` + speed
    (``(row key, unit, format)``) and time + ``extra``."""
    key, unit, fmt = speed
    return (f"epoch {row['epoch']}/{epochs}  lr {row['lr']:.4g}  train loss {row['train_loss']:{loss_format}}"
            f"{results}  {row[key]:{fmt}} {unit}  {row['epoch_time_s']:.1f}s{extra}")


def finish_run(run, ctx: Context, model: nn.Module, metadata: Dict[str, str]) -> Dict[str, Any]:
    """The end of a run (``run``: its ``RunFolder``): process 0 writes the final weights, ``model.safetensors``
    with the checkpoint's ``metadata``; the logs are closed. Returns the last epoch's row."""
    from scnet.weights import save_state_dict

    if ctx.is_main:
        save_state_dict(model.state_dict(), run.path / 'model.safetensors', metadata=metadata)
    run.close()
    return run.history[-1] if run.history else {}

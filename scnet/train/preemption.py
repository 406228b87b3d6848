"""Runs that survive preemption: the state saved every N optimiser steps and on SIGTERM, and a resume that
continues in the middle of an epoch exactly where the saved state left it.

A scheduler that preempts a job sends SIGTERM, then SIGKILL some seconds later; an ImageNet epoch takes
hours on few GPUs, so a run that saves only after each epoch loses up to that much. Here:

* ``checkpoint_every`` N (``--checkpoint-every``): after every N-th optimiser step of the run, process 0
  rewrites ``last.pt`` (atomically, ``scnet.train.state.save_atomic``) with the full state plus the position
  in the epoch (``step``), the epoch's running sums (so its logged loss is the whole epoch's) and the random
  generators of every process.
* SIGTERM: the next optimiser step saves the state and the run stops with ``Preempted`` (the CLI exits with
  143, the status of a process ended by SIGTERM). Every process agrees on the step to stop at (the flag is
  summed over the processes), so none is left waiting in a collective.
* Resuming such a state: the sampler skips the steps already done (the data order is a function of seed and
  epoch, ``scnet.train.sampling``), the augmentation of an image depends on (seed, epoch, index) only
  (``CheckedImageFolder``), and the generators the training steps draw from (dropout, stochastic depth,
  mixup) are restored as they were after the saved step: the resumed run ends with the same weights as an
  uninterrupted one (on CPU, bit for bit).
* Under ``torchrun --max-restarts K``, the elastic agents restart every worker after one fails, the failed
  node's with ``TORCHELASTIC_RESTART_COUNT`` above 0; ``resume_requested`` then resumes every process from
  the folder's ``last.pt`` by itself (the restarted command line has no ``--resume``).

PyTorch's elastic agent restarts processes but leaves saving and resuming to the training script, and the
libraries that do both (Lightning's fault-tolerant training, torchtnt) own the whole training loop; what a
run needs from them is the short logic here.
"""
from __future__ import annotations

import functools
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
import torch.distributed as dist

from scnet.errors import ScnetError
from scnet.train.distributed import Context, all_reduce_sum
from scnet.train.engine import check_state_finite
from scnet.train.run_folder import RunError, RunFolder
from scnet.train.state import restore_rng_states, rng_states

__all__ = ['Preempted', 'PREEMPTED_EXIT_STATUS', 'resume_requested', 'ignore_sigterm', 'main_process_sigterm_only',
           'check_epoch_length', 'StepCheckpoints', 'EpochStops']

#: Exit status of a run stopped by SIGTERM after saving its state (128 + SIGTERM, as the shell reports it).
PREEMPTED_EXIT_STATUS = 128 + signal.SIGTERM


class Preempted(ScnetError):
    """The run received SIGTERM and stopped, saying what is saved: not an error, so the ``scnet`` command prints
    it without one and exits with ``exit_status``."""

    exit_status = PREEMPTED_EXIT_STATUS


def resume_requested(output: Path, resume: bool) -> bool:
    """``resume``, or True when torchrun's elastic agent restarted this run's workers and ``output`` holds a
    saved state to continue (a restarted worker runs the first command line again, without ``--resume``).

    On several nodes each agent counts only its own workers' failures in ``TORCHELASTIC_RESTART_COUNT``: a
    node restarted because another node's worker failed starts its workers with the count unchanged (0 the
    first time). So the decision is the group's: when any process was restarted, every process resumes. Under
    torchrun every process must call this after ``scnet.train.distributed.setup`` (it is a collective).
    """
    restarted = torch.tensor([float(int(os.environ.get('TORCHELASTIC_RESTART_COUNT', '0') or 0) > 0)])
    restarted = bool(all_reduce_sum(restarted).item() > 0)
    return resume or (restarted and (Path(output) / 'last.pt').is_file())


def ignore_sigterm(worker_id: int, main_process: Optional[int] = None) -> None:
    """``worker_init_fn`` of a run's DataLoaders (training and validation): a SIGTERM sent to the whole process
    group leaves the loader's workers running until the main process has saved its state (it stops them
    itself); a validation worker killed by it would stop the run with a DataLoader error, its epoch unsaved.

    Only a SIGTERM from another process is ignored: one from the main process still ends the worker. PyTorch
    stops workers with it where they do not exit when asked (after a worker's error), and so does
    ``multiprocessing`` at exit; a worker ignoring it outright kept the run from ever exiting after a damaged
    image had stopped it. The sender is known only to ``sigwaitinfo``, so SIGTERM is blocked and a thread waits
    for it. (Without ``sigwaitinfo``, on macOS, SIGTERM keeps its default: the workers end with it.)

    ``main_process``: the process id of the loader's process (``functools.partial(ignore_sigterm,
    main_process=os.getpid())``, as ``main_process_sigterm_only`` builds it); the worker's parent when not given,
    which is that process only where workers are forked (under ``forkserver``, Python 3.14's default on Linux,
    it is the fork server)."""
    if not hasattr(signal, 'sigwaitinfo'):
        return
    main_process = os.getppid() if main_process is None else main_process
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    def wait_for_the_main_process() -> None:
        while signal.sigwaitinfo({signal.SIGTERM}).si_pid != main_process:
            pass
        os._exit(0)  # (an orderly stop, asked for: a status of 0, which PyTorch does not report as a failure)

    threading.Thread(target=wait_for_the_main_process, name='sigterm-from-main', daemon=True).start()


def main_process_sigterm_only() -> Callable[[int], None]:
    """``ignore_sigterm`` for the loaders of this process: the ``worker_init_fn`` to give them."""
    return functools.partial(ignore_sigterm, main_process=os.getpid())


def check_epoch_length(state: Dict[str, Any], steps_per_epoch: int, output: Path) -> None:
    """Refuse to continue a ``state`` saved mid-epoch when the data now gives another number of steps an epoch
    (images added or removed, or other images given with ``--data-moved``): the epoch's order is a permutation
    of the images it had, so it cannot be continued in it, and a saved step past the new epoch's end raised a
    ``ValueError`` from the sampler."""
    step, saved = int(state.get('step') or 0), state.get('steps_per_epoch')
    if step and (step > steps_per_epoch or (saved is not None and int(saved) != steps_per_epoch)):
        raise RunError(f'{output}: last.pt was saved at step {step} of epoch {int(state["epoch"]) + 1}, an epoch of '
                       f'{saved if saved is not None else f"at least {step}"} steps, and the data now gives '
                       f'{steps_per_epoch} steps an epoch (other images): the epoch cannot be continued in its '
                       f'order. Resume with the images it was saved with, or start a new run from its weights '
                       f'(--init {Path(output) / "last.pt"})')


class _SigtermFlag:
    """SIGTERM noted rather than obeyed, for a run to stop where it can say what is saved: the handler is set
    (from the main thread only, where Python runs handlers) until ``close`` gives back the previous one."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._signalled = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame) -> None:
        self._signalled = True

    @property
    def signalled(self) -> bool:
        """Whether SIGTERM came to this process (no collective: what a loop may check at every batch)."""
        return self._signalled

    def _stop_requested(self) -> bool:
        """Whether SIGTERM came to any process (a collective under torchrun: all stop at the same step)."""
        flag = torch.tensor([1.0 if self._signalled else 0.0], dtype=torch.float64)
        return bool(all_reduce_sum(flag)[0] > 0) if self.ctx.distributed else self._signalled

    def close(self) -> None:
        """Give SIGTERM back to the handler it had before."""
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


class StepCheckpoints(_SigtermFlag):
    """Saves the state every ``every`` optimiser steps (0: only at the end of each epoch) and on SIGTERM.

    ``state`` returns the training state to save (model, optimiser, schedule, ...); ``run`` writes it.
    The epoch loop calls ``begin_epoch`` before building its loader (the steps to skip), passes ``sums`` to
    ``train_one_epoch`` (which adds to them in place), calls ``after_step`` after each optimiser step,
    ``finish_epoch`` on the epoch's metrics, ``after_evaluation`` after evaluating the epoch (``signalled`` cuts
    the evaluation short) and ``end_epoch`` after saving them. ``close`` restores the
    previous SIGTERM handler.
    """

    def __init__(self, run: RunFolder, ctx: Context, *, every: int, steps_per_epoch: int,
                 state: Callable[[], Dict[str, Any]]) -> None:
        super().__init__(ctx)
        self.run, self.every, self.steps_per_epoch, self.state = run, every, steps_per_epoch, state
        self.epoch = 0
        self.epoch_lr = 0.0
        self.step = 0                        # optimiser steps done in the current epoch
        self.saved_step = 0                  # the step of the current epoch that last.pt holds (0: none)
        self.resumed_images = 0.0            # images of the current epoch trained before a resume
        self.resumed_seconds = 0.0           # and the seconds they took (None: a state that does not record them)
        self._started = time.perf_counter()  # when this process began the epoch's training
        self._trained_seconds: Optional[float] = None  # the epoch's training time, once its training is done
        self.sums = torch.zeros(5, dtype=torch.float64)
        self._saved = run.state if run.state is not None and run.state.get('step') else None

    def begin_epoch(self, epoch: int, *, lr: float) -> int:
        """Start ``epoch`` (``lr``: the learning rate now); returns the optimiser steps of it already done (those
        of a state saved mid-epoch). ``epoch_lr`` is then the learning rate the epoch began with."""
        self.epoch, self.step, self.saved_step, self.resumed_images, self.epoch_lr = epoch, 0, 0, 0.0, lr
        self.resumed_seconds, self._started, self._trained_seconds = 0.0, time.perf_counter(), None
        self.sums = torch.zeros(5, dtype=torch.float64)
        saved, self._saved = self._saved, None
        if saved is None or int(saved['epoch']) + 1 != epoch:
            return 0
        self.step, self.epoch_lr = int(saved['step']), float(saved['epoch_lr'])
        self.saved_step = self.step
        if self.ctx.is_main:  # the sums of the whole run so far, counted once
            self.sums = saved['epoch_sums'].clone()
        self.resumed_images = float(saved['epoch_sums'][2])
        self.resumed_seconds = saved.get('epoch_seconds')
        generators = saved.get('rng_ranks') or []
        if len(generators) == self.ctx.world_size:  # (another number of processes: the data order differs anyway)
            restore_rng_states(generators[self.ctx.rank])
        return self.step

    def after_step(self) -> None:
        """Count an optimiser step; save the state when ``every`` steps are done or SIGTERM came (then raise
        ``Preempted``, after the save)."""
        self.step += 1
        stop = self._stop_requested()
        global_step = (self.epoch - 1) * self.steps_per_epoch + self.step
        if stop or (self.every and global_step % self.every == 0 and self.step < self.steps_per_epoch):
            self._save()
        if stop:
            raise Preempted(f'stopped by SIGTERM at epoch {self.epoch}, step {self.step}/{self.steps_per_epoch}, '
                            f'state saved in {self.run.path / "last.pt"}: continue with scnet train --output '
                            f'{self.run.path} --resume')

    def finish_epoch(self, row: Dict[str, Any]) -> Dict[str, Any]:
        """``row`` (``train_one_epoch``'s result) with the epoch's own training time and speed where it was
        resumed: the seconds the state records for the steps before the resume added to this process's. (A
        state of an earlier version records none: the speed is then that of the images trained since the resume.)
        """
        if self.resumed_seconds is None:
            self._trained_seconds = row['epoch_time_s']
            if self.resumed_images:
                row = dict(row, images_per_sec=(row['train_images'] - self.resumed_images) /
                           max(row['epoch_time_s'], 1e-9))
            return row
        self._trained_seconds = self.resumed_seconds + row['epoch_time_s']
        if self.resumed_images:
            row = dict(row, epoch_time_s=self._trained_seconds,
                       images_per_sec=row['train_images'] / max(self._trained_seconds, 1e-9))
        return row

    def after_evaluation(self) -> None:
        """After the epoch's evaluation, before its state is saved: when SIGTERM came during the evaluation
        (which ``signalled`` cut short), save the epoch's training as a state at its last step and raise
        ``Preempted``; the resumed run evaluates the epoch again. A scheduler's grace time (torchrun's agent
        kills its workers soon after passing SIGTERM on) is shorter than a large evaluation."""
        if self._stop_requested():
            self._save()
            raise Preempted(f'stopped by SIGTERM while evaluating epoch {self.epoch}, its training saved in '
                            f'{self.run.path / "last.pt"} (the evaluation is done again on resume): continue '
                            f'with scnet train --output {self.run.path} --resume')

    def end_epoch(self) -> None:
        """After the epoch's state was saved: stop if SIGTERM came meanwhile (while saving it)."""
        if self._stop_requested():
            raise Preempted(f'stopped by SIGTERM after epoch {self.epoch}, state saved in '
                            f'{self.run.path / "last.pt"}: continue with scnet train --output {self.run.path} '
                            '--resume')

    def _save(self) -> None:
        """Write the state mid-epoch, unless the step just taken made it non-finite (a ``NonFiniteLossError``;
        the good ``last.pt`` stays)."""
        state = self.state()
        check_state_finite(state, where=f'epoch {self.epoch}, step {self.step}')
        sums = all_reduce_sum(self.sums.clone())
        generators = rng_states()
        if self.ctx.distributed:
            gathered: list = [None] * self.ctx.world_size
            dist.all_gather_object(gathered, generators)
            generators_of_ranks = gathered
        else:
            generators_of_ranks = [generators]
        trained = self._trained_seconds  # (its training done: evaluating) else the training so far
        if trained is None:
            trained = (self.resumed_seconds or 0.0) + time.perf_counter() - self._started
        self.run.save_mid_epoch(state, epoch=self.epoch, step=self.step, epoch_sums=sums,
                                rng_ranks=generators_of_ranks, epoch_lr=self.epoch_lr,
                                steps_per_epoch=self.steps_per_epoch, epoch_seconds=trained)
        self.saved_step = self.step


class EpochStops(_SigtermFlag):
    """SIGTERM for the runs that save at epoch ends only (``scnet detect train``, ``scnet pose train``): the run
    stops at the next optimiser step, or once the epoch being saved is saved, with a ``Preempted`` that says
    what ``last.pt`` holds and the command that continues it, instead of the signal's silent kill. The epoch cut
    short is trained again on resume (its sampler, augmentation and heads' random state are not saved mid-epoch,
    as ``StepCheckpoints`` saves them for classification). ``close`` gives SIGTERM back to its previous handler.
    Every process checks together (one all-reduce a step under torchrun), so all stop at the same step."""

    def __init__(self, ctx: Context, output: Path, command: str) -> None:
        super().__init__(ctx)
        self.output, self.command = Path(output), command

    def after_step(self, epoch: int, step: int, steps: int) -> None:
        """Stop (raise ``Preempted``) when SIGTERM came: the epoch's steps so far are not saved."""
        if self._stop_requested():
            raise Preempted(f'stopped by SIGTERM at epoch {epoch}, step {step}/{steps}; {self.output / "last.pt"} '
                            f'holds the run up to epoch {epoch - 1} (epoch {epoch} is trained again): continue with '
                            f'{self.command} --output {self.output} --resume')

    def after_epoch(self, epoch: int) -> None:
        """Stop when SIGTERM came while ``epoch`` was evaluated or saved (it is saved: nothing is lost)."""
        if self._stop_requested():
            raise Preempted(f'stopped by SIGTERM after epoch {epoch}, saved in {self.output / "last.pt"}: continue '
                            f'with {self.command} --output {self.output} --resume')

"""The output folder of a run (classification, detection or pose): what a long run needs from its disk.

* An existing run is never overwritten: starting again into a folder that holds one is an error that says
  to pass ``--resume``; ``--resume`` without a ``last.pt`` is an error too.
* After every epoch (and, with ``--checkpoint-every``, within it: ``scnet.train.preemption``), in process 0:
  ``last.pt`` (the full training state plus the metrics history, written
  atomically by ``scnet.train.state.save_atomic``), ``metrics.jsonl`` rewritten from that history (one JSON
  line per epoch; a resumed run rewrites it, so it never holds epochs that ``last.pt`` does not) and
  TensorBoard scalars under ``tensorboard/``.
* One run at a time: process 0 holds an exclusive ``fcntl.flock`` on ``DIR/run.lock`` (its process id and
  host written in it) from the start of the run to its end, so a second run into the folder is refused at
  once, naming the holder, instead of both writing the same files. The operating system releases the lock
  when its process dies, however it dies, so the file a killed run leaves behind never blocks ``--resume``.
  Written here because the lock-file libraries on the package index (filelock, portalocker) add nothing
  over the twenty lines ``fcntl`` needs and would not record the holder.
"""
from __future__ import annotations

import json
import os
import socket
import weakref
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from scnet.errors import ScnetError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
from scnet.train.state import STATE_KEYS, load_state, rng_states, save_atomic

__all__ = ['RunError', 'RunFolder', 'LOCK_NAME']

#: The file in a run folder that process 0 of the run holding it keeps locked.
LOCK_NAME = 'run.lock'


class RunError(ScnetError):
    """An output folder or resume request that does not fit."""


class RunFolder:
    """Open ``path`` for a new run or, with ``resume``, for continuing the one it holds."""

    def __init__(self, path: Path, *, resume: bool, is_main: bool = True,
                 final_files: tuple = ('model.safetensors',)) -> None:
        self.path = Path(path)
        self.is_main = is_main
        self.writer = None
        if self.path.exists() and not self.path.is_dir():
            raise RunError(f'{self.path} is a file, not a run folder: give --output a folder (new, empty or a run\'s)')
        last = self.path / 'last.pt'
        if resume and not last.is_file():
            raise RunError(f'{self.path}: nothing to resume (no last.pt); start the run without --resume')
        holds_run = last.is_file() or any((self.path / name).is_file() for name in final_files)
        foreign = [] if resume or holds_run else _foreign_files(self.path, ('last.pt', *final_files))
        if foreign:  # before the lock, which would leave its file among them
            raise RunError(f'{self.path} holds files that are not a run\'s ({", ".join(foreign[:3])}'
                           f'{", ..." if len(foreign) > 3 else ""}), which a new run would write among or replace '
                           '(config.json, metrics.jsonl); choose a new or empty --output')
        # the lock first: the checks below and every write after them are this run's alone
        self._release = weakref.finalize(self, _unlock, *_lock(self.path)) if is_main else None
        try:
            self._check(resume, last, final_files)
        except BaseException:
            self.close()
            raise
        self.history: List[Dict[str, Any]] = list(self.state['history']) if self.state else []

    def _check(self, resume: bool, last: Path, final_files: tuple) -> None:
        if resume:
            if not last.is_file():
                raise RunError(f'{self.path}: nothing to resume (no last.pt); start the run without --resume')
            self.state: Optional[Dict[str, Any]] = load_state(last, STATE_KEYS)
        else:
            if last.is_file() or any((self.path / name).is_file() for name in final_files):
                raise RunError(f'{self.path} already holds a run: pass --resume to continue it, or choose another '
                               '--output')
            self.state = None

    @property
    def start_epoch(self) -> int:
        """The last finished epoch (0 for a new run)."""
        return int(self.state['epoch']) if self.state else 0

    def check_epochs(self, epochs: int) -> None:
        """Refuse ``epochs`` (the run's length asked for now) below the epochs a resumed run has trained: it would
        end at once, leaving its records saying fewer epochs than its metrics hold."""
        if epochs < self.start_epoch:
            raise RunError(f'{self.path}: the run has trained {self.start_epoch} epochs already; --epochs {epochs} '
                           f'would end it before them: give --epochs {self.start_epoch} or more')

    @property
    def start_step(self) -> int:
        """The optimiser steps of the next epoch already done (a state saved mid-epoch; else 0)."""
        return int(self.state.get('step') or 0) if self.state else 0

    def start(self, config: Dict[str, Any]) -> None:
        """Record the run's settings and open the logs (process 0 only)."""
        if not self.is_main:
            return
        (self.path / 'config.json').write_text(json.dumps(config, indent=2))
        self._write_metrics()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.path / 'tensorboard'), purge_step=self.start_epoch + 1)

    def end_epoch(self, row: Dict[str, Any], state: Dict[str, Any]) -> None:
        """Log ``row`` (the epoch's metrics, with its ``epoch``) and save ``state`` as ``last.pt``."""
        self.history.append(row)
        if not self.is_main:
            return
        save_atomic({**state, 'epoch': row['epoch'], 'rng': rng_states(), 'history': self.history},
                    self.path / 'last.pt')
        self._write_metrics()
        for key, value in row.items():
            if key != 'epoch' and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, row['epoch'])
        self.writer.flush()

    def save_mid_epoch(self, state: Dict[str, Any], *, epoch: int, step: int, **extra: Any) -> None:
        """Save ``state`` as ``last.pt`` after ``step`` optimiser steps of ``epoch`` (process 0 only), with
        ``extra`` (what continuing the epoch needs: ``scnet.train.preemption``)."""
        if self.is_main:
            save_atomic({**state, 'epoch': epoch - 1, 'step': step, 'rng': rng_states(), 'history': self.history,
                         **extra}, self.path / 'last.pt')

    def close(self) -> None:
        """Close the logs and release the folder (also done when the object is collected, e.g. after an error)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self._release is not None:
            self._release()

    def _write_metrics(self) -> None:
        tmp = self.path / '.metrics.jsonl.partial'
        tmp.write_text(''.join(json.dumps(row) + '\n' for row in self.history))
        tmp.replace(self.path / 'metrics.jsonl')


#: What a run started in a folder may find there from an earlier start that stopped before its first
#: checkpoint: its own records, the lock and an interrupted atomic write. Anything else belongs to someone else.
_RUN_RECORDS = ('config.json', 'metrics.jsonl', 'tensorboard', LOCK_NAME)


#: Settings every run's ``config.json`` holds (classification, detection and pose recipes alike).
_RUN_SETTINGS = ('epochs', 'batch_size', 'seed')


def _json_values(path: Path, *, per_line: bool = False) -> Optional[List[Any]]:
    """The JSON value of ``path`` (``per_line``: of each of its lines), as a list; None where it is not JSON or
    not a readable text file."""
    try:
        text = path.read_text(encoding='utf-8')
        return [json.loads(line) for line in text.splitlines() if line.strip()] if per_line else [json.loads(text)]
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _foreign_files(folder: Path, checkpoints: Tuple[str, ...]) -> List[str]:
    """Names in ``folder`` that no run wrote (``checkpoints`` are a run's too, refused apart as a run to resume):
    a new run must not mix its records with (or replace) them. A run's own records are told by their content:
    ``config.json`` a JSON object with a run's settings (``_RUN_SETTINGS``), ``metrics.jsonl`` one JSON object
    with an ``epoch`` per line, ``tensorboard/`` event files only; a file of the same name written by anyone
    else (an application's ``config.json``, someone's notes) is named, never replaced."""
    if not folder.is_dir():
        return []
    own = (*_RUN_RECORDS, *checkpoints)
    foreign = sorted(p.name for p in folder.iterdir()
                     if p.name not in own and not (p.name.startswith('.') and p.name.endswith('.partial')))
    config, metrics, events = folder / 'config.json', folder / 'metrics.jsonl', folder / 'tensorboard'
    if config.exists():
        settings = _json_values(config) if config.is_file() else None
        if not (settings and isinstance(settings[0], dict) and all(k in settings[0] for k in _RUN_SETTINGS)):
            foreign.insert(0, 'config.json (not a run\'s)')
    if metrics.exists():
        rows = _json_values(metrics, per_line=True) if metrics.is_file() else None
        if rows is None or not all(isinstance(row, dict) and 'epoch' in row for row in rows):
            foreign.insert(0, 'metrics.jsonl (not a run\'s)')
    if events.exists() and (not events.is_dir() or any(not p.name.startswith('events.out.tfevents.')
                                                      for p in events.iterdir())):
        foreign.insert(0, 'tensorboard (not a run\'s)')
    return foreign


def _lock(path: Path) -> Tuple[int, Path, bool]:
    """Take ``path``'s lock, creating the folder; returns what ``_unlock`` needs (file descriptor, folder,
    whether this call created it).

    Released by ``RunFolder.close``, or when the ``RunFolder`` is collected (an error between the start and
    the end of a run in a long-lived Python process), or by the operating system when the process dies.
    """
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:  # (Windows has no flock: runs there are not guarded)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 200, 0).decode(errors='replace').strip() or 'an unknown process'
        os.close(fd)
        raise RunError(f'{path} is in use by another run ({holder}): wait for it to end, stop it, or choose '
                       'another --output') from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f'process {os.getpid()} on {socket.gethostname()}\n'.encode(), 0)
    return fd, path, created


def _unlock(fd: int, path: Path, created: bool) -> None:
    """Release the lock; a folder that this run created and left holding nothing but the lock goes too (a
    run stopped by bad data leaves no empty folder behind)."""
    try:
        if created and os.listdir(path) == [LOCK_NAME]:
            os.unlink(path / LOCK_NAME)
            os.rmdir(path)
    except OSError:
        pass
    finally:
        os.close(fd)

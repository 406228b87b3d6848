"""The output folder of a run (classification, detection or pose): what a long run needs from its disk.

* An existing run is never overwritten: starting again into a folder that holds one is an error that says
  to pass ``--resume``; ``--resume`` without a ``last.pt`` is an error too.
* After every epoch, in process 0: ``last.pt`` (the full training state plus the metrics history, written
  atomically by ``scnet.train.state.save_atomic``), ``metrics.jsonl`` rewritten from that history (one JSON
  line per epoch; a resumed run rewrites it, so it never holds epochs that ``last.pt`` does not) and
  TensorBoard scalars under ``tensorboard/``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from scnet.errors import ScnetError
from scnet.train.state import load_state, rng_states, save_atomic

__all__ = ['RunError', 'RunFolder']


class RunError(ScnetError):
    """An output folder or resume request that does not fit."""


class RunFolder:
    """Open ``path`` for a new run or, with ``resume``, for continuing the one it holds."""

    def __init__(self, path: Path, *, resume: bool, is_main: bool = True,
                 final_files: tuple = ('model.safetensors',)) -> None:
        self.path = Path(path)
        self.is_main = is_main
        self.writer = None
        last = self.path / 'last.pt'
        if resume:
            if not last.is_file():
                raise RunError(f'{self.path}: nothing to resume (no last.pt); start the run without --resume')
            self.state: Optional[Dict[str, Any]] = load_state(last)
        else:
            if last.is_file() or any((self.path / name).is_file() for name in final_files):
                raise RunError(f'{self.path} already holds a run: pass --resume to continue it, or choose another '
                               '--output')
            self.state = None
        self.history: List[Dict[str, Any]] = list(self.state['history']) if self.state else []
        if is_main:
            self.path.mkdir(parents=True, exist_ok=True)

    @property
    def start_epoch(self) -> int:
        """The last finished epoch (0 for a new run)."""
        return int(self.state['epoch']) if self.state else 0

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

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def _write_metrics(self) -> None:
        tmp = self.path / '.metrics.jsonl.partial'
        tmp.write_text(''.join(json.dumps(row) + '\n' for row in self.history))
        tmp.replace(self.path / 'metrics.jsonl')

"""The full training state in ``DIR/last.pt``, written so that a kill at any moment leaves a readable file.

Written to a temporary file in the same folder, flushed to disk, then renamed over the previous one: a rename
within a file system is atomic, so ``last.pt`` is always either the previous complete state or the new one.
Read back with ``weights_only=True``: only tensors and plain Python values, nothing that runs code.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any, Dict, Sequence

import numpy as np
import torch

from scnet.errors import CheckpointError
from scnet.files import give_usual_permissions

__all__ = ['save_atomic', 'load_state', 'check_state', 'STATE_KEYS', 'rng_states', 'restore_rng_states',
           'seed_everything']


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators: the same initial weights in every process of a run."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save_atomic(state: Dict[str, Any], path: Path) -> None:
    """``torch.save`` ``state`` to ``path`` through a temporary file beside it and a rename: a kill mid-write
    leaves the previous file whole, never half of a new one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.partial', dir=path.parent)
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        give_usual_permissions(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


#: What every training state holds (``scnet.train.run_folder`` writes them); each task's run needs more.
STATE_KEYS = ('epoch', 'history')
_WAY_OUT = ('nothing in it can be continued: start the run again into a new --output (or, where it was given as '
            'a checkpoint, give another)')


def load_state(path: Path, required: Sequence[str] = (), *, mmap: bool = False) -> Dict[str, Any]:
    """The training state in ``path``; a ``CheckpointError`` (one line: the problem and the way out) for a file
    that is empty, damaged or, with ``required`` (e.g. ``STATE_KEYS``), not a training state (a mapping holding
    those keys), rather than the ``IndexError`` or ``KeyError`` its first use would raise.

    ``mmap``: map the file's tensors instead of reading them (``torch.load(mmap=True)``), for a caller that
    wants the run's settings or only some tensors: a ``last.pt`` also holds the optimiser's state and the EMA
    weights, read for nothing otherwise. Files in PyTorch's legacy format cannot be mapped and are read whole."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise CheckpointError(f'{path}: an empty file (0 bytes), not a training state (scnet writes last.pt '
                              f'whole: it was cut by a copy or a full disk); {_WAY_OUT}')
    try:
        state = _torch_load(path, mmap)
    except Exception as e:
        lines = str(e).strip().splitlines()
        detail = lines[0] if lines else type(e).__name__
        if 'weights only load failed' in detail.lower():  # torch's advice to unpickle without limits: not for this
            detail = 'not a file of plain tensors that torch.load can read safely'
        raise CheckpointError(f'{path}: cannot read the training state ({detail}); the file is damaged or not a '
                              f'scnet training checkpoint: {_WAY_OUT}') from None
    if required:
        check_state(state, path, required)
    return state


def _torch_load(path: Path, mmap: bool) -> Any:
    if mmap:
        try:
            return torch.load(path, map_location='cpu', weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001 - a legacy-format file, a file system without mmap, a damaged file: the
            pass           # plain read below reads the first two and reports the third in its own words
    return torch.load(path, map_location='cpu', weights_only=True)


def check_state(state: Any, path: Path, required: Sequence[str]) -> None:
    """``CheckpointError`` unless ``state`` is a mapping holding every key of ``required``."""
    if not isinstance(state, dict):
        raise CheckpointError(f'{path}: not a scnet training state (it holds a {type(state).__name__}, not the '
                              f'mapping scnet training writes); {_WAY_OUT}')
    missing = [key for key in required if key not in state]
    if missing:
        raise CheckpointError(f'{path}: not a scnet training state (no {", ".join(map(repr, missing))} in it); '
                              f'{_WAY_OUT}')


def rng_states() -> Dict[str, Any]:
    """Every random generator a run draws from (Python, NumPy, torch CPU and CUDA)."""
    states = {'python': random.getstate(), 'numpy': torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
              'numpy_pos': int(np.random.get_state()[2]), 'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: Dict[str, Any]) -> None:
    """Set every random generator back to what ``rng_states`` recorded (CUDA's where both have a GPU)."""
    version, internal, gauss = states['python']
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(('MT19937', states['numpy'].numpy().astype(np.uint32), states['numpy_pos'], 0, 0.0))
    torch.set_rng_state(states['torch'])
    if 'cuda' in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states['cuda'])

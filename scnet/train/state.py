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
from typing import Any, Dict

import numpy as np
import torch

from scnet.errors import CheckpointError

__all__ = ['save_atomic', 'load_state', 'rng_states', 'restore_rng_states', 'seed_everything']


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators: the same initial weights in every process of a run."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save_atomic(state: Dict[str, Any], path: Path) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.partial', dir=path.parent)
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_state(path: Path) -> Dict[str, Any]:
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise CheckpointError(f'{path}: cannot read the training state ({str(e).splitlines()[0]}); the file is '
                              'damaged or not a scnet training checkpoint') from None


def rng_states() -> Dict[str, Any]:
    """Every random generator a run draws from (Python, NumPy, torch CPU and CUDA)."""
    states = {'python': random.getstate(), 'numpy': torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
              'numpy_pos': int(np.random.get_state()[2]), 'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: Dict[str, Any]) -> None:
    version, internal, gauss = states['python']
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(('MT19937', states['numpy'].numpy().astype(np.uint32), states['numpy_pos'], 0, 0.0))
    torch.set_rng_state(states['torch'])
    if 'cuda' in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states['cuda'])

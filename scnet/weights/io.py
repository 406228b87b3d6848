"""Reading and writing weights safely, and fitting them to a model with a report by key name.

Nothing here unpickles arbitrary objects: ``.safetensors`` files hold only tensors, and every other file
goes through ``torch.load(weights_only=True)``, which refuses pickles that would import or call code. A
refused file raises ``CheckpointError`` saying so instead of a pickle traceback.
"""
from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as _load_safetensors
from safetensors.torch import save_file as _save_safetensors
from torch import nn

from scnet.errors import CheckpointError

__all__ = ['StateDict', 'read_state_dict', 'save_state_dict', 'load_into']

StateDict = Dict[str, torch.Tensor]
PathLike = Union[str, os.PathLike]

# Containers that training scripts wrap a state dict in (ours, timm's, torchvision's, Lightning's).
_CONTAINER_KEYS = ('state_dict', 'model', 'model_state_dict', 'state_dict_ema', 'model_ema', 'net')


def _is_safetensors(path: Path) -> bool:
    """safetensors files start with an 8-byte little-endian header length, then a JSON object."""
    with open(path, 'rb') as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b'{' and int.from_bytes(head[:8], 'little') < 100_000_000


def _unwrap(obj: object, path: Path) -> StateDict:
    if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in _CONTAINER_KEYS:
            if isinstance(obj.get(key), Mapping):
                return _unwrap(obj[key], path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f'{path}: expected a state dict (a mapping of names to tensors), found '
                              f'{type(obj).__name__}')
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f'{path}: holds no tensors; known wrappers are {", ".join(_CONTAINER_KEYS)}')
    # DistributedDataParallel and torch.compile prefix every name; strip the prefix they add.
    for prefix in ('module.', '_orig_mod.'):
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors


def read_state_dict(path: PathLike) -> StateDict:
    """Read a state dict from a ``.safetensors`` or PyTorch file, without running any code it may carry.

    Training checkpoints that wrap the weights (``{'model': ..., 'optimizer': ...}``, ``{'state_dict': ...}``)
    are unwrapped, and a ``module.`` prefix left by DistributedDataParallel is removed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'{path}: no such checkpoint file')
    if _is_safetensors(path):
        try:
            return _load_safetensors(str(path), device='cpu')
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f'{path}: not a readable safetensors file ({e}); re-export or re-download it')
    try:
        obj = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f'{path}: refused to load: the file asks to run code or build Python objects while unpickling, '
            f'and scnet loads only plain tensors (weights_only). If you trust where it came from, load it '
            f'yourself and save its state dict with safetensors. Detail: {str(e).splitlines()[0]}') from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f'{path}: not a readable PyTorch checkpoint (truncated or corrupt?): '
                              f'{str(e).splitlines()[0] if str(e) else type(e).__name__}') from None
    return _unwrap(obj, path)


def save_state_dict(state_dict: Mapping[str, torch.Tensor], path: PathLike,
                    metadata: Optional[Mapping[str, str]] = None) -> Path:
    """Write tensors to ``path`` as safetensors, atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    fd, tmp = tempfile.mkstemp(prefix=path.name + '.', suffix='.partial', dir=path.parent)
    os.close(fd)
    try:
        _save_safetensors(tensors, tmp, metadata=dict(metadata or {}))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _names(keys: Iterable[str], limit: int = 12) -> str:
    keys = sorted(keys)
    shown = ', '.join(keys[:limit])
    return shown + (f', ... ({len(keys) - limit} more)' if len(keys) > limit else '')


def load_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str = 'checkpoint',
              ignore_missing_head: bool = True) -> None:
    """Copy ``state_dict`` into ``model``, or raise ``CheckpointError`` naming every key that does not fit.

    Missing keys, unexpected keys and shape mismatches are all reported together. A classifier in the
    checkpoint that the model lacks (a ``features_only`` backbone) is ignored when ``ignore_missing_head``.
    """
    own = model.state_dict()
    state_dict = dict(state_dict)
    if ignore_missing_head and 'fc.weight' not in own:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith('fc.')}
    missing = set(own) - set(state_dict)
    unexpected = set(state_dict) - set(own)
    mismatched = {k: (tuple(state_dict[k].shape), tuple(own[k].shape))
                  for k in set(own) & set(state_dict) if state_dict[k].shape != own[k].shape}
    if missing or unexpected or mismatched:
        lines = [f'{source} does not fit the model:']
        if mismatched:
            lines.append('  shape mismatch (checkpoint vs model): ' + _names(
                f'{k} {tuple(a)} vs {tuple(b)}' for k, (a, b) in mismatched.items()))
        if missing:
            lines.append('  missing from the checkpoint: ' + _names(missing))
        if unexpected:
            lines.append('  not in the model: ' + _names(unexpected))
        if 'fc.weight' in mismatched:
            n = mismatched['fc.weight'][0][0]
            lines.append(f'  the checkpoint has {n} classes: build the model with num_classes={n}')
        else:
            lines.append('  check that the model name matches the checkpoint (see `scnet models`)')
        raise CheckpointError('\n'.join(lines))
    model.load_state_dict(state_dict)

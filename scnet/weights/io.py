"""Reading and writing weights safely, and fitting them to a model with a report by key name.

Nothing here unpickles arbitrary objects: ``.safetensors`` files hold only tensors, and every other file
goes through ``torch.load(weights_only=True)``, which refuses pickles that would import or call code. A
refused file raises ``CheckpointError`` saying so instead of a pickle traceback.
"""
from __future__ import annotations

import argparse
import os
import pickle
import pickletools
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Union

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file as _load_safetensors
from safetensors.torch import save_file as _save_safetensors
from torch import nn

from scnet.errors import CheckpointError, InvalidArgumentTypeError
from scnet.files import give_usual_permissions
from scnet.weights.fit import adapt_first_conv, check_fit

__all__ = ['StateDict', 'checkpoint_file', 'read_state_dict', 'read_metadata', 'read_shape', 'save_state_dict',
           'load_into', 'loadable']

StateDict = Dict[str, torch.Tensor]
PathLike = Union[str, os.PathLike]

# Harmless classes that training scripts store beside the weights (timm saves its argparse arguments).
_SAFE_GLOBALS = [argparse.Namespace]

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


def _pickle_bytes(path: Path) -> bytes:
    """The pickle stream of a legacy ``torch.save`` file, or of the ``data.pkl`` inside a zip checkpoint."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            member = next((n for n in archive.namelist() if n.endswith('data.pkl')), None)
            return archive.read(member) if member else b''
    return path.read_bytes()


def _foreign_imports(path: Path) -> List[str]:
    """Names outside torch and the standard containers that a pickle would import when loaded.

    Read with ``pickletools.genops``, which decodes opcodes without executing any of them: this only tells
    the user *why* a file was refused, the refusal itself is ``weights_only``'s.
    """
    names: List[str] = []
    strings: List[str] = []
    try:
        for op, arg, _ in pickletools.genops(_pickle_bytes(path)):
            if op.name in ('GLOBAL', 'INST'):
                names.append(str(arg).replace(' ', '.'))
            elif op.name == 'STACK_GLOBAL' and len(strings) >= 2:
                names.append(f'{strings[-2]}.{strings[-1]}')
            if isinstance(arg, str):
                strings.append(arg)
    except Exception:  # not a pickle at all: nothing to report
        pass
    allowed = ('torch.', 'collections.OrderedDict', '_codecs.encode', 'builtins.set', 'argparse.Namespace')
    return list(dict.fromkeys(n for n in names if not n.startswith(allowed)))


def checkpoint_file(path: PathLike) -> Path:
    """``path``, or for the folder of a training run the checkpoint in it: ``model.safetensors`` (the finished
    run's weights), else ``last.pt`` (an unfinished run's), as ``scnet cam`` and the detection and pose tools take
    a run folder. A folder with neither is a ``CheckpointError`` naming what it lacks."""
    path = Path(path)
    if path.is_dir():
        for name in ('model.safetensors', 'last.pt'):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f'{path} is a folder with neither model.safetensors nor last.pt (the files of a '
                              'training run); give a checkpoint file')
    return path


def read_state_dict(path: PathLike) -> StateDict:
    """Read a state dict from a ``.safetensors`` or PyTorch file (or a training run's folder, see
    ``checkpoint_file``), without running any code it may carry.

    Training checkpoints that wrap the weights (``{'model': ..., 'optimizer': ...}``, ``{'state_dict': ...}``)
    are unwrapped, and a ``module.`` prefix left by DistributedDataParallel is removed.
    """
    path = checkpoint_file(path)
    if not path.is_file():
        raise CheckpointError(f'{path}: no such checkpoint file')
    if _is_safetensors(path):
        try:
            return _load_safetensors(str(path), device='cpu')
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f'{path}: not a readable safetensors file ({e}); re-export or re-download it')
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            obj = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError:
        imports = _foreign_imports(path)
        if imports:
            raise CheckpointError(
                f'{path}: refused to load: unpickling it would import {", ".join(imports[:5])}, i.e. run code. '
                'scnet loads only plain tensors (weights_only). If you trust where the file came from, load it '
                'yourself and save its state dict with safetensors') from None
        raise CheckpointError(f'{path}: not a readable PyTorch checkpoint (corrupt, or not a checkpoint at all); '
                              'weights_only unpickling rejected it') from None
    except Exception as e:  # torch.load raises many types on damaged files: all mean the same to a user
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f'{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {detail}') \
            from None
    return _unwrap(obj, path)


def read_metadata(path: PathLike) -> Dict[str, str]:
    """The string metadata of a ``.safetensors`` file (what ``scnet`` runs record with their weights); ``{}`` for
    any other file (of a training run's folder: of its checkpoint, see ``checkpoint_file``)."""
    try:
        with safe_open(str(checkpoint_file(path)), framework='pt') as f:
            return dict(f.metadata() or {})
    except Exception:  # not safetensors (a .pt / .pth), or unreadable: no metadata
        return {}


def read_shape(path: PathLike, key: str) -> Optional[List[int]]:
    """The shape of the tensor ``key`` of a ``.safetensors`` file, from its header alone (no tensor is read);
    None where the file has no such tensor or is not a readable safetensors file (read it whole instead)."""
    try:
        with safe_open(str(checkpoint_file(path)), framework='pt') as f:
            return list(f.get_slice(key).get_shape()) if key in f.keys() else None
    except Exception:  # not safetensors (a .pt / .pth), or unreadable: the caller reads the file its own way
        return None


def save_state_dict(state_dict: Mapping[str, torch.Tensor], path: PathLike,
                    metadata: Optional[Mapping[str, str]] = None) -> Path:
    """Write tensors to ``path`` as safetensors, atomically (a temporary file renamed into place).

    ``state_dict``: names to tensors (``model.state_dict()``); tensors that share memory (a module used under
    two names) are written as copies, since safetensors stores each tensor once. ``metadata``: strings to
    strings (``json.dumps`` other values)."""
    if isinstance(state_dict, nn.Module):
        raise InvalidArgumentTypeError(f'save_state_dict takes the tensors, not the {type(state_dict).__name__}: '
                                       'pass model.state_dict()')
    if not isinstance(state_dict, Mapping):
        raise InvalidArgumentTypeError(f'save_state_dict takes a mapping of names to tensors, got '
                                       f'{type(state_dict).__name__}')
    not_tensors = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise InvalidArgumentTypeError(f'save_state_dict writes tensors only; {not_tensors[0]!r} is a '
                                       f'{type(state_dict[not_tensors[0]]).__name__}: put other values in metadata '
                                       '(as strings) or leave them out')
    bad_meta = [k for k, v in (metadata or {}).items() if not (isinstance(k, str) and isinstance(v, str))]
    if bad_meta:
        raise InvalidArgumentTypeError(f'metadata maps strings to strings; {bad_meta[0]!r} is not one: '
                                       'json.dumps the value')
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors, seen = {}, set()
    for k, v in state_dict.items():
        t = v.detach().cpu().contiguous()
        shared = t.untyped_storage().data_ptr() in seen if t.numel() else False
        seen.add(t.untyped_storage().data_ptr())
        tensors[k] = t.clone() if shared else t
    fd, tmp = tempfile.mkstemp(prefix=path.name + '.', suffix='.partial', dir=path.parent)
    os.close(fd)
    try:
        _save_safetensors(tensors, tmp, metadata=dict(metadata or {}))
        give_usual_permissions(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str = 'checkpoint',
              new_head: bool = False) -> None:
    """Copy ``state_dict`` into ``model``, or raise ``CheckpointError`` saying in one line how it does not fit
    (``scnet.weights.fit.misfit``: the way out, then missing keys, unexpected keys and shape mismatches counted,
    with an example of each). The checkpoint's classifier
    (``fc.*``) is left out when the model has none (a ``features_only`` backbone) or when ``new_head`` asks
    to keep the model's own, freshly initialised one (fine-tuning on other classes). The first convolution is
    adapted to a model built for other input channels (``in_chans``), as timm adapts pretrained weights.
    """
    model.load_state_dict(loadable(model, state_dict, source=source, new_head=new_head), strict=not new_head)


def loadable(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str = 'checkpoint',
             new_head: bool = False) -> Dict[str, torch.Tensor]:
    """What ``load_into`` copies into ``model`` (the first convolution adapted, the classifier left out where
    it would be), after the same check; nothing is copied, so ``model`` may live on the meta device."""
    own = model.state_dict()
    state_dict = adapt_first_conv(model, dict(state_dict), own)
    if new_head or 'fc.weight' not in own:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith('fc.')}
        own = {k: v for k, v in own.items() if not k.startswith('fc.')}
    check_fit(source, 'the model', own, state_dict)
    return state_dict

"""How weights do not fit a network, in one line, and a damaged file told apart from one of another kind.

Every loader (``scnet.weights.load_into``, the commands' checkpoint readers) reports a misfit through
``misfit``: the problem and the way out first, then how many keys of each kind differ, with the first of
each. A command prints its error as one line, and the full list of names only makes that line longer without
helping to choose the right checkpoint or ``--model``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Union

import torch

from scnet.errors import CheckpointError

__all__ = ['WeightsMismatchError', 'misfit', 'not_a_classifier', 'unreadable_safetensors']


class WeightsMismatchError(CheckpointError):
    """Weights whose keys or shapes do not fit a network (as opposed to a file that cannot be read). It keeps
    its parts, so that a command that knows a better way out (``--model``, ``--init``, ``--backbone-checkpoint``)
    says it with ``with_way_out`` instead of reading the file and building the network again to compare."""

    def __init__(self, source: Union[str, Path], name: str, way_out: str, keys: str) -> None:
        super().__init__(f'{source} does not fit {name}: {way_out}; keys: {keys}')
        self.source, self.name, self.way_out, self.keys = source, name, way_out, keys

    def with_way_out(self, way_out: str, name: Optional[str] = None) -> 'WeightsMismatchError':
        """The same mismatch, of the network ``name`` (default: as before), with ``way_out`` as the advice."""
        return WeightsMismatchError(self.source, name or self.name, way_out, self.keys)


def misfit(source: Union[str, Path], name: str, own: Mapping[str, torch.Tensor],
           theirs: Mapping[str, torch.Tensor], way_out: str) -> WeightsMismatchError:
    """The error for the weights ``theirs`` of ``source`` that do not fit the state dict ``own`` of network
    ``name``: one line, ``way_out`` right after the problem, then the differing keys counted."""
    missing = sorted(set(own) - set(theirs))
    unexpected = sorted(set(theirs) - set(own))
    shapes = sorted(f'{k} {tuple(theirs[k].shape)} vs {tuple(own[k].shape)}' for k in set(own) & set(theirs)
                    if tuple(theirs[k].shape) != tuple(own[k].shape))
    parts = [f'{len(keys)} {label} (e.g. {keys[0]})' for keys, label in (
        (shapes, 'of another shape (checkpoint vs network)'), (missing, 'missing from the checkpoint'),
        (unexpected, 'not in the network')) if keys]
    return WeightsMismatchError(source, name, way_out, ', '.join(parts) or 'none differ')


def unreadable_safetensors(path: Union[str, Path]) -> Optional[CheckpointError]:
    """The ``CheckpointError`` for a ``.safetensors`` file (or a run folder holding ``model.safetensors``) that
    safetensors cannot open, else None: a damaged or truncated file, which a reader that only looks at the
    metadata takes for one of another kind (no metadata of its task) and reports as such."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        path = path / 'model.safetensors'
    if path.suffix != '.safetensors' or not path.is_file():
        return None
    try:
        with safe_open(str(path), framework='pt'):
            return None
    except Exception as e:  # safetensors raises its own error, OSError or ValueError on a damaged file
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        return CheckpointError(f'{path}: not a readable safetensors file, damaged or truncated ({detail}); '
                               'copy it again, or give the model.safetensors or last.pt its training run wrote')


def not_a_classifier(path: Union[str, Path], meta: Mapping[str, object]) -> Optional[CheckpointError]:
    """The ``CheckpointError`` for a detection or pose checkpoint (``meta``: its recorded description) given
    where a classifier's is expected, else None. Its weights hold a backbone and heads, so a classifier built
    from it would only report keys that do not fit, and the file records no classifier model name: the error
    names the command that runs it instead."""
    if 'backbone' not in meta:
        return None
    if 'keypoints' in meta:
        task, command = 'pose', f'scnet pose predict --checkpoint {path} --images ... --output ...'
    elif 'task' in meta:
        task, command = 'detection', f'scnet detect predict --checkpoint {path} --images ... --output ...'
    else:
        return None
    return CheckpointError(f'{path} is a {task} checkpoint (backbone {meta["backbone"]}), not a classifier: '
                           f'`{command}` runs it; the classification tools (scnet eval, cam, features, export, '
                           'train --init, create_model) take the model.safetensors of `scnet train`')

"""What a task's checkpoint says about itself, in one dataclass per task that writes and reads itself.

safetensors metadata is a flat str -> str mapping. A task's description (its backbone, image size, heads ...)
is a dataclass whose fields are the keys, written and read back under the same names: plain strings as they
are, everything else as JSON. A file written before a key was renamed is still read, through the class's
``OLD_KEYS``; a key added since is taken from the field's default when an older file lacks it.

``read_task_checkpoint`` reads either file a task's run leaves: ``model.safetensors`` (the description in its
metadata) or ``last.pt`` (the same description under ``checkpoint``).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, Mapping, Optional, Tuple, Type, TypeVar, Union

import torch

from scnet.errors import CheckpointError

__all__ = ['CheckpointMetadata', 'read_task_checkpoint']

M = TypeVar('M', bound='CheckpointMetadata')


def _is_text(field: dataclasses.Field) -> bool:
    return field.type in (str, 'str')


class CheckpointMetadata:
    """Mixin of a task's checkpoint dataclass: ``to_metadata`` and ``from_metadata`` (see the module)."""

    #: Keys that files of older versions used, mapped to the field they now are.
    OLD_KEYS: ClassVar[Dict[str, str]] = {}

    def to_metadata(self) -> Dict[str, str]:
        return {f.name: getattr(self, f.name) if _is_text(f) else json.dumps(getattr(self, f.name))
                for f in dataclasses.fields(self)}

    @classmethod
    def from_metadata(cls: Type[M], meta: Mapping[str, str], source: Union[str, Path] = 'checkpoint') -> M:
        """The description in ``meta`` (keys it does not know are ignored); a ``CheckpointError`` naming
        ``source`` when one it needs is missing or unreadable."""
        meta = {**{cls.OLD_KEYS[k]: v for k, v in meta.items() if k in cls.OLD_KEYS}, **meta}
        values: Dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in meta:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise CheckpointError(f'{source}: its metadata has no {f.name!r}; it was not written by scnet '
                                          'or is damaged: give the checkpoint its training run wrote')
                continue
            try:
                values[f.name] = meta[f.name] if _is_text(f) else json.loads(meta[f.name])
            except json.JSONDecodeError:
                raise CheckpointError(f'{source}: its metadata {f.name!r} is not readable ({meta[f.name][:40]!r}); '
                                      'the file is damaged') from None
        return cls(**values)

    @classmethod
    def from_state(cls: Type[M], state: Mapping[str, Any], source: Union[str, Path] = 'last.pt') -> Optional[M]:
        """The description a ``last.pt`` state carries under ``checkpoint`` or, in one written before it did,
        what ``from_old_state`` makes of its run settings (None: not a state of this task)."""
        if 'checkpoint' in state:
            return cls.from_metadata(state['checkpoint'], source)
        return cls.from_old_state(state)

    @classmethod
    def from_old_state(cls: Type[M], state: Mapping[str, Any]) -> Optional[M]:
        return None

    @classmethod
    def from_record(cls: Type[M], record: Mapping[str, Any]) -> M:
        """The description from plain values (a run's settings), under the same field names."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in names})


def read_task_checkpoint(path: Union[str, Path], meta_type: Type[M], *, task: str, command: str,
                         is_task: Callable[[Mapping[str, str]], bool]) -> Tuple[M, Dict[str, torch.Tensor], Path]:
    """(description, weights, file) of the checkpoint ``path`` of ``command`` (``scnet pose train``): its
    ``model.safetensors``, its ``last.pt`` or the run folder holding them.

    ``is_task``: whether a safetensors file's metadata is of this task.
    """
    from scnet.train.state import load_state
    from scnet.weights.io import checkpoint_file, read_metadata, read_state_dict

    path = checkpoint_file(path)  # a run folder: its model.safetensors, else its last.pt
    if not path.is_file():
        raise CheckpointError(f'{path}: no such checkpoint file (model.safetensors or last.pt of `{command}`)')
    not_ours = CheckpointError(f'{path}: not a {task} checkpoint (nothing in it says how to build the {task} '
                               f'network); give the model.safetensors or last.pt of `{command}`')
    meta = read_metadata(path)
    if meta or path.suffix == '.safetensors':
        if not is_task(meta):
            raise not_ours
        return meta_type.from_metadata(meta, path), read_state_dict(path), path
    state = load_state(path, mmap=True)  # the weights and settings: the optimiser's state is never read
    if not isinstance(state, dict) or 'model' not in state or 'config' not in state:
        raise not_ours
    if isinstance(state.get('checkpoint'), dict) and not is_task(state['checkpoint']):
        raise not_ours  # another task's run (its description would lack this task's fields)
    info = meta_type.from_state(state, path)
    if info is None:
        raise not_ours
    return info, state['model'], path

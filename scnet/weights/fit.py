"""How weights do not fit a network, in one line, and a damaged file told apart from one of another kind.

Every loader (``scnet.weights.load_into``, the commands' checkpoint readers) reports a misfit through
``misfit``: the problem and the way out first, then how many keys of each kind differ, with the first of
each. A command prints its error as one line, and the full list of names only makes that line longer without
helping to choose the right checkpoint or ``--model``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch

from scnet.errors import CheckpointError

__all__ = ['WeightsMismatchError', 'adapt_first_conv', 'check_fit', 'misfit', 'misfit_way_out',
           'not_a_classifier', 'unreadable_safetensors']


class WeightsMismatchError(CheckpointError):
    """Weights whose keys or shapes do not fit a network (as opposed to a file that cannot be read). It keeps
    its parts, so that a command that knows a better way out (``--model``, ``--init``, ``--backbone-checkpoint``)
    says it with ``with_way_out`` instead of reading the file and building the network again to compare."""

    def __init__(self, source: Union[str, Path], name: str, way_out: str, keys: str,
                 fitting_options: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(f'{source} does not fit {name}: {way_out}; keys: {keys}')
        self.source, self.name, self.way_out, self.keys = source, name, way_out, keys
        #: model options with which the same network fits the weights exactly (``{'channels': (...)}``), where
        #: they were found: a command says how to pass them its own way.
        self.fitting_options = fitting_options

    def with_way_out(self, way_out: str, name: Optional[str] = None) -> 'WeightsMismatchError':
        """The same mismatch, of the network ``name`` (default: as before), with ``way_out`` as the advice."""
        return WeightsMismatchError(self.source, name or self.name, way_out, self.keys, self.fitting_options)


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


def _first_conv_key(model: torch.nn.Module) -> Optional[str]:
    """The weight of the convolution that reads the image, as the model's ``pretrained_cfg`` names it."""
    first = (getattr(model, 'pretrained_cfg', None) or {}).get('first_conv')
    return f'{first}.weight' if isinstance(first, str) else None


def _differs_in_input_channels_only(theirs: torch.Tensor, own: torch.Tensor) -> bool:
    return (theirs.dim() == own.dim() == 4 and theirs.shape[1] != own.shape[1]
            and theirs.shape[0] == own.shape[0] and theirs.shape[2:] == own.shape[2:])


def adapt_first_conv(model: torch.nn.Module, theirs: Dict[str, torch.Tensor],
                     own: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``theirs`` with the first convolution's weight adapted to the model's input channels (``in_chans=1`` for
    grey images sums the colour channels; more channels repeat them, scaled), as timm adapts pretrained weights
    (``timm.models.adapt_input_conv``), so that a checkpoint of RGB images initialises a network of other inputs
    by ``checkpoint=`` as by ``pretrained=True``. Anything else is left for the comparison of shapes."""
    key = _first_conv_key(model)
    if key and key in theirs and key in own and _differs_in_input_channels_only(theirs[key], own[key]):
        from timm.models import adapt_input_conv

        theirs = dict(theirs)
        theirs[key] = adapt_input_conv(own[key].shape[1], theirs[key], base_chans=theirs[key].shape[1])
    return theirs


def misfit_way_out(own: Mapping[str, torch.Tensor], theirs: Mapping[str, torch.Tensor]) -> str:
    """What to change when ``theirs`` does not fit ``own``: the class count where only the classifier's rows
    differ, else the network (name, widths, stem), since a different body is never fixed by ``num_classes``."""
    body = [k for k in set(own) | set(theirs) if not k.startswith('fc.')
            and (k not in own or k not in theirs or tuple(own[k].shape) != tuple(theirs[k].shape))]
    fc_theirs, fc_own = theirs.get('fc.weight'), own.get('fc.weight')
    if not body and fc_theirs is not None and fc_own is not None and fc_theirs.shape[0] != fc_own.shape[0] \
            and fc_theirs.shape[1:] == fc_own.shape[1:]:
        return f'the checkpoint has {fc_theirs.shape[0]} classes: build the model with num_classes={fc_theirs.shape[0]}'
    return ('check that the model name and its arguments (channels=, stem, in_chans) match the checkpoint\'s '
            '(see `scnet models`)')


def check_fit(source: Union[str, Path], name: str, own: Mapping[str, torch.Tensor],
              theirs: Mapping[str, torch.Tensor]) -> None:
    """Raise the ``misfit`` error, with ``misfit_way_out``'s advice, unless ``theirs`` has exactly the keys and
    shapes of ``own``: the one comparison behind ``load_into`` and the zoo's check of timm's pretrained loading.
    BatchNorms' ``num_batches_tracked`` counters may be missing (older and third-party files lack them, and
    ``load_state_dict`` accepts that: the counter only matters for ``momentum=None``)."""
    own = {k: v for k, v in own.items() if k in theirs or not k.endswith('num_batches_tracked')}
    if set(own) != set(theirs) or any(tuple(theirs[k].shape) != tuple(own[k].shape) for k in own):
        raise misfit(source, name, own, theirs, misfit_way_out(own, theirs))


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

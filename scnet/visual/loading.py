"""Models to look at: ``NAME[:CHECKPOINT]`` specs, their input pipeline and their class names.

A spec is what ``scnet cam --models`` and its siblings take:

``scnet50``                    the zoo model with random weights (seeded; see below)
``scnet50:run/model.safetensors``  the model with a checkpoint (ours or the authors', either layout)
``scnet50:run``                the same, for a run directory of ``scnet train`` (its ``model.safetensors``,
                               else the ``last.pt`` of a run still going)
``run`` or ``run/model.safetensors``  a checkpoint of ``scnet train``: the model name comes from its metadata
``scnet50:pretrained``         the authors' ImageNet weights (downloaded once; timm's for the baselines)

A checkpoint written by ``scnet train`` carries its class names, input size, resize, mean/std and model options
(``model_kwargs``) in its metadata; they are used. Without them the model is an ImageNet model: 224-px centre
crop of the image resized to 256, ImageNet mean/std, and for 1000 classes the ImageNet class names that timm
ships (``timm.data.ImageNetInfo``), shown after the index (``#281 tabby``).

Random weights. timm initialises the last BN of every residual block to zero ("zero-init-last"), which
switches every residual branch off until training turns it on: scnet50 and resnet50 would then be the same
shortcut-only network and an SC-Conv would get no gradient. A model without a checkpoint is therefore built
with ``zero_init_last=False`` (those BNs start at 1, like all others), from ``torch.manual_seed(seed)``.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from scnet.errors import ScnetError, UnknownModelError
from scnet.visual.images import Preprocessing

__all__ = ['ClassError', 'LoadedModel', 'parse_model_spec', 'load_model', 'load_models', 'imagenet_class_names']

PRETRAINED = 'pretrained'


class ClassError(ScnetError, ValueError):
    """A ``--class`` that is not an index or a name of the model's classes."""


def imagenet_class_names() -> List[str]:
    """The 1000 ImageNet-1k class descriptions in index order (``'tabby, tabby cat'``), from timm."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(info.num_classes())]


@dataclass
class LoadedModel:
    """A network in eval mode with what is needed to feed it and to name its outputs."""

    name: str                          # zoo name
    label: str                         # how figures name it: the name, plus the checkpoint when given
    model: nn.Module
    preprocessing: Preprocessing
    num_classes: int
    class_names: Optional[List[str]] = None   # the checkpoint's, or ImageNet's for 1000-class models
    names_from_checkpoint: bool = False
    checkpoint: Optional[Path] = None
    weights: str = 'random'            # 'random', 'checkpoint' or 'pretrained'
    meta: dict = field(default_factory=dict)

    def class_label(self, index: int, short: bool = True) -> str:
        """``'#281 tabby'`` (ImageNet names: the first synonym), ``'cat'`` (the checkpoint's), or ``'#7'``."""
        index = int(index)
        if self.class_names is None or not 0 <= index < len(self.class_names):
            return f'#{index}'
        name = self.class_names[index]
        if self.names_from_checkpoint:
            return name
        return f'#{index} {name.split(",")[0].strip() if short else name}'

    def resolve_class(self, value: object) -> int:
        """A ``--class`` value as an index: an integer in range, or a class name (the checkpoint's; for
        ImageNet models any of a class's comma-separated synonyms, or its WordNet id like ``n02123045``)."""
        text = str(value).strip()
        n = self.num_classes
        try:
            index = int(text)
        except ValueError:
            index = None
        if index is not None:
            if not 0 <= index < n:
                raise ClassError(f'class {index} is out of range for {self.label}: it has {n} classes '
                                 f'(indices 0-{n - 1})')
            return index
        if self.class_names is None:
            raise ClassError(f'class {text!r}: {self.label} has no class names (its checkpoint records none); '
                             f'give an index 0-{n - 1}')
        wanted = text.lower()
        for i, name in enumerate(self.class_names):
            synonyms = [name] if self.names_from_checkpoint else [s.strip() for s in name.split(',')]
            if wanted in (s.lower() for s in synonyms):
                return i
        if not self.names_from_checkpoint and n == 1000:
            from timm.data import ImageNetInfo

            info = ImageNetInfo()
            for i in range(n):
                if info.index_to_label_name(i) == wanted:
                    return i
        pool = self.class_names if self.names_from_checkpoint else [
            s.strip() for name in self.class_names for s in name.split(',')]
        close = difflib.get_close_matches(text, pool, n=3, cutoff=0.6)
        hint = f' Did you mean {", ".join(repr(c) for c in close)}?' if close else ''
        shown = ', '.join(self.class_names[:12]) + (', ...' if len(self.class_names) > 12 else '')
        raise ClassError(f'class {text!r} is not a class of {self.label}.{hint} Give an index 0-{n - 1} or a '
                         f'name: {shown}')


def parse_model_spec(spec: str) -> Tuple[Optional[str], Optional[str]]:
    """``(model name or None, checkpoint or 'pretrained' or None)`` of a ``NAME[:CHECKPOINT]`` spec; a bare
    existing path is a checkpoint whose model name comes from its metadata."""
    from scnet.models import list_models

    spec = str(spec).strip()
    if not spec:
        raise UnknownModelError('empty model spec; give NAME or NAME:CHECKPOINT (`scnet models` lists names)')
    names = list_models()
    if spec in names:
        return spec, None
    head, sep, tail = spec.partition(':')
    if sep and head in names:
        if not tail:
            raise UnknownModelError(f'{spec!r}: nothing after the colon; give NAME or NAME:CHECKPOINT')
        return head, tail
    if Path(spec).exists():
        return None, spec
    close = difflib.get_close_matches(head, names, n=3, cutoff=0.5)
    hint = f' Did you mean {", ".join(close)}?' if close else ''
    raise UnknownModelError(f'{spec!r} is neither a model of the zoo nor an existing checkpoint or run directory.'
                            f'{hint} Give NAME or NAME:CHECKPOINT, NAME from `scnet models`')


def _checkpoint_file(path: str) -> Path:
    """The checkpoint file of ``path``: the file itself or, for a training run's folder, its
    ``model.safetensors`` (else the ``last.pt`` of a run still going), as everywhere a checkpoint is read."""
    from scnet.weights.io import checkpoint_file

    p = checkpoint_file(path)
    if not p.exists():
        raise ScnetError(f'{p}: no such checkpoint file or run directory')
    return p


def load_model(spec: str, *, image_size: Optional[int] = None, resize: Optional[int] = None,
               seed: int = 0, model_kwargs: Optional[dict] = None) -> LoadedModel:
    """Build the model of ``spec`` (see the module docstring) in eval mode, with its input pipeline and class
    names. ``image_size``/``resize`` override the checkpoint's (default 224/256). Random weights are drawn
    after ``torch.manual_seed(seed)`` (the global generator's state is restored afterwards)."""
    from scnet.models import create_model
    from scnet.train.checkpoint_eval import checkpoint_metadata

    name, ckpt = parse_model_spec(spec)
    kwargs = dict(model_kwargs or {})
    meta: dict = {}
    checkpoint: Optional[Path] = None
    weights = 'random'
    if ckpt == PRETRAINED and not Path(ckpt).exists():
        weights = PRETRAINED
    elif ckpt is not None:
        checkpoint = _checkpoint_file(ckpt)
        meta = checkpoint_metadata(checkpoint)
        weights = 'checkpoint'
        saved = meta.get('model')
        if name is None:
            if not saved:
                raise UnknownModelError(f'{checkpoint}: its metadata names no model; give NAME:{ckpt}')
            name = saved
        kwargs = {**meta.get('model_kwargs', {}), **kwargs}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if weights == 'random':
            kwargs.setdefault('zero_init_last', False)
        model = create_model(name, pretrained=weights == PRETRAINED,
                             checkpoint=str(checkpoint) if checkpoint else None, **kwargs)
    model.eval()
    num_classes = int(getattr(model, 'num_classes', 0) or 0)
    names, from_ckpt = meta.get('classes'), False
    if names is not None and len(names) == num_classes:
        names, from_ckpt = [str(n) for n in names], True
    elif num_classes == 1000:
        names = imagenet_class_names()
    else:
        names = None
    if checkpoint is None:
        label = name if weights == 'random' else f'{name} ({weights})'
    else:
        shown = checkpoint.parent.name if checkpoint.name in ('model.safetensors', 'last.pt') else checkpoint.name
        label = f'{name} ({shown})' if shown != name else f'{name} (checkpoint)'
    return LoadedModel(name=name, label=label, model=model,
                       preprocessing=Preprocessing.from_metadata(meta, image_size, resize),
                       num_classes=num_classes, class_names=names, names_from_checkpoint=from_ckpt,
                       checkpoint=checkpoint, weights=weights, meta=meta)


def as_list(value) -> list:
    """The models, images or runs a tool takes, as a list: one name, path or loaded model is a list of one (a
    string is never taken for the sequence of its characters)."""
    if isinstance(value, (str, bytes, os.PathLike, LoadedModel)):
        return [value]
    return list(value)


def load_models(specs: Sequence[str], **kwargs) -> List[LoadedModel]:
    """:func:`load_model` for each spec; two specs with the same label get ``#2``, ``#3``... added."""
    models = [load_model(s, **kwargs) for s in specs]
    seen: dict = {}
    for m in models:
        seen[m.label] = seen.get(m.label, 0) + 1
        if seen[m.label] > 1:
            m.label = f'{m.label} #{seen[m.label]}'
    return models

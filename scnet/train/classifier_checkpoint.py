"""What a classifier's checkpoint says about itself: ``ClassifierMetadata``, the classification counterpart of
``scnet.tasks.detection.checkpoint.DetectionMetadata`` and ``scnet.tasks.pose.checkpoint.PoseMetadata``.

``scnet train`` writes it into the metadata of ``model.safetensors`` (and of ``model_ema.safetensors`` and
``side_head.safetensors``); ``scnet eval``, ``scnet cam`` and the other tools read it back, under the same
field names, from that file or from a ``last.pt`` (whose run settings hold the same values). Files written by
other tools (``scnet convert``: only ``model``; the authors' ``.pth``: nothing) leave the fields they lack as
None, and every reader falls back to its own default for those.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from scnet.train.checkpoint_meta import CheckpointMetadata

__all__ = ['ClassifierMetadata', 'read_classifier_metadata', 'other_model_message', 'TRAINING_ONLY_OPTIONS']

#: Model options that only act in training (timm's dropout and stochastic depth rates): not what the weights
#: need, so ``scnet train`` does not record them and they are not read back from files that have them (runs of
#: earlier versions), where a network built from the checkpoint (``--init``, ``create_model(checkpoint=)``)
#: would otherwise train with the old run's stochastic depth whatever the new one asks.
TRAINING_ONLY_OPTIONS = ('drop_rate', 'drop_path_rate', 'drop_block_rate')


@dataclass
class ClassifierMetadata(CheckpointMetadata):
    model: str = ''                                   # the zoo name it was trained as ('': not recorded)
    classes: Optional[List[str]] = None               # class names, in the classifier's order
    image_size: Optional[int] = None                  # the size to evaluate at
    eval_resize: Optional[int] = None                 # short side before the centre crop
    mean: Optional[List[float]] = None                # normalisation
    std: Optional[List[float]] = None
    model_kwargs: Optional[Dict[str, Any]] = None     # create_model options the weights need
    initial_weights: Optional[Dict[str, str]] = None  # where a fine-tuning run started from, with its sha256
    train_image_size: Optional[int] = None            # the training size, when below image_size

    @classmethod
    def from_run_config(cls, config: Dict[str, Any]) -> 'ClassifierMetadata':
        """The description a run's settings (``last.pt``'s ``config``, ``config.json``) give: the evaluation
        size is the recipe's ``eval_image_size`` where it set one."""
        meta = cls.from_record(config)
        eval_size = config.get('eval_image_size')
        if eval_size and eval_size != config.get('image_size'):
            meta.image_size, meta.train_image_size = eval_size, config.get('image_size')
        return meta

    def known(self) -> Dict[str, Any]:
        """The fields the checkpoint recorded (those that are not None, ``model`` when not empty)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, '')}


def read_classifier_metadata(path: Union[str, Path]) -> ClassifierMetadata:
    """The description recorded with the checkpoint at ``path``: a ``.safetensors`` file's metadata, a
    ``last.pt``'s run settings; every field None for a file that records none (the authors' ``.pth``).
    A ``CheckpointError`` naming the command to use for a detection or pose checkpoint."""
    meta = _recorded(Path(path))
    if meta.model_kwargs:
        meta.model_kwargs = {k: v for k, v in meta.model_kwargs.items() if k not in TRAINING_ONLY_OPTIONS}
    return meta


def _recorded(path: Path) -> ClassifierMetadata:
    from scnet.weights.fit import not_a_classifier
    from scnet.weights.io import read_metadata

    raw = read_metadata(path)
    other_task = not_a_classifier(path, raw)
    if other_task:
        raise other_task
    if raw:
        return ClassifierMetadata.from_metadata(raw, path)
    if path.suffix != '.pt':
        return ClassifierMetadata()
    from scnet.train.state import load_state

    state = load_state(path, mmap=True)  # the settings alone: no tensor is read
    if not isinstance(state, dict):  # e.g. a bare state dict saved with torch.save: records nothing
        return ClassifierMetadata()
    other_task = not_a_classifier(path, state.get('checkpoint') or {})  # a detection or pose run's last.pt
    if other_task:
        raise other_task
    return ClassifierMetadata.from_run_config(state.get('config') or {})


def other_model_message(checkpoint: Union[str, Path], recorded: Optional[str], name: str,
                        way_out: str) -> Optional[str]:
    """The message for a checkpoint that records another model (``recorded``) than the one asked for
    (``name``), ending in the caller's ``way_out``; None when they agree or nothing is recorded. One wording
    for ``create_model``, ``scnet eval`` and ``scnet export``, each raising its own error."""
    if not recorded or recorded == name:
        return None
    return f'{checkpoint} holds weights of {recorded} (recorded in it), not of {name}: {way_out}'

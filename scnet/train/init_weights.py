"""Where a fine-tuning run's first weights come from: the authors' release, timm's, or a checkpoint.

``--pretrained`` takes the authors' ImageNet weights for scnet50, scnet50_v1d and scnet101 through
``scnet.weights`` (the download code users already rely on: cached, sha256-checked, ``$SCNET_WEIGHTS_MIRROR``)
and timm's for the baselines. ``--init CHECKPOINT`` reads a file in either layout (this package's
``model.safetensors`` or ``last.pt``, the authors' ``.pth``). When the class count differs from the data's,
the classifier is left out and the model keeps its freshly initialised one.

The origin and its sha256 go into the run's ``config.json`` and the final weights' metadata, so that a
fine-tuned model says what it was fine-tuned from. A resumed run reads its weights from ``last.pt`` and never
comes here again.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

from torch import nn

from scnet.errors import CheckpointError
from scnet.weights import StateDict
from scnet.weights.download import sha256_of_file

__all__ = ['InitialWeights', 'find_initial_weights', 'apply_initial_weights']


@dataclass
class InitialWeights:
    state_dict: StateDict
    source: str          # 'authors', 'timm' or 'checkpoint'
    location: str        # the address or path it was read from
    sha256: str          # of the file, or for timm's weights of the tensors (``hashed``)
    hashed: str = 'file'
    recorded: Any = None  # a checkpoint's ClassifierMetadata (the model and options a run of scnet train records)

    def record(self) -> Dict[str, Any]:
        """What config.json and the weights' metadata say about these weights."""
        return {'source': self.source, 'location': self.location, 'sha256': self.sha256, 'sha256_of': self.hashed}


def _sha256_tensors(state_dict: StateDict) -> str:
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        digest.update(key.encode())
        digest.update(state_dict[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def find_initial_weights(model: str, *, pretrained: bool = False, init: Optional[str] = None,
                         progress: bool = True) -> Optional[InitialWeights]:
    """The weights a run of ``model`` starts from (None: random), read and hashed; CheckpointError if none."""
    from scnet.models.factory import BASELINES
    from scnet.weights import OFFICIAL_WEIGHTS, fetch, official_url, read_checkpoint
    from scnet.weights.io import checkpoint_file

    if init:
        path = checkpoint_file(init)  # a run folder: its model.safetensors (or last.pt)
        if not path.is_file():
            raise CheckpointError(f'{init}: no such checkpoint file (--init takes a model.safetensors, a last.pt '
                                  'or the authors\' .pth)')
        from scnet.train.classifier_checkpoint import read_classifier_metadata

        state_dict = read_checkpoint(path)
        return InitialWeights(state_dict, 'checkpoint', str(path.resolve()), sha256_of_file(path),
                              recorded=read_classifier_metadata(path))
    if not pretrained:
        return None
    if model in OFFICIAL_WEIGHTS:
        url = official_url(model)
        path = fetch(url, progress=progress)
        return InitialWeights(read_checkpoint(path), 'authors', url, sha256_of_file(path))
    if model in BASELINES:
        import timm

        if not timm.is_model_pretrained(model):
            raise CheckpointError(f'timm has no pretrained weights for {model}')
        try:
            net = timm.create_model(model, pretrained=True)
        except Exception as e:  # no network, no cache: say so in one line
            raise CheckpointError(f'{model}: cannot get timm\'s pretrained weights ({str(e).splitlines()[0]}); '
                                  'download them where there is network (they are cached by Hugging Face Hub), '
                                  'or pass --init CHECKPOINT') from None
        state_dict = net.state_dict()
        cfg = net.pretrained_cfg
        location = f"hf-hub:{cfg['hf_hub_id']}" if cfg.get('hf_hub_id') else cfg.get('url', model)
        return InitialWeights(state_dict, 'timm', location, _sha256_tensors(state_dict), hashed='state_dict')
    raise CheckpointError(f'no pretrained weights for {model}: the authors released {", ".join(OFFICIAL_WEIGHTS)}, '
                          f'timm has {", ".join(n for n in BASELINES)}; start from a file with --init CHECKPOINT')


def apply_initial_weights(net: nn.Module, weights: InitialWeights, num_classes: int,
                          report: Callable[[str], None] = print, model_name: str = 'the model') -> None:
    """Load ``weights`` into ``net`` (the network ``model_name``), all but the classifier when its class count
    is not ``num_classes``; weights that do not fit are a one-line ``CheckpointError`` (how many keys of each
    kind, the first of each) naming this command's way out, which ``load_into``'s own cannot."""
    from scnet.weights import load_into
    from scnet.weights.fit import WeightsMismatchError

    saved = weights.state_dict.get('fc.weight')
    new_head = saved is not None and saved.shape[0] != num_classes
    holds = getattr(weights.recorded, 'model', '') or ''
    try:
        load_into(net, weights.state_dict, source=weights.location, new_head=new_head)
    except WeightsMismatchError as e:
        other = f'--model {holds}, the model it holds (recorded in it)' if holds and holds != model_name else \
            'the --model it holds'
        raise e.with_way_out(f'start from a checkpoint of {model_name} (--init), or train {other}',
                             name=model_name) from None
    if new_head:
        report(f'{weights.location} has {saved.shape[0]} classes, the data {num_classes}: its classifier is left '
               'out and a new one is trained from random initial weights')

"""Any zoo model as an FPN backbone for torchvision's detection models.

torchvision's ``BackboneWithFPN`` takes the four stage outputs (``layer1``..``layer4``, strides 4-32) of a
network whose stages are direct children, which timm's ResNet family (and so every zoo model) is. What this
adds is the usual detection fine-tuning setup of the paper's detectors: the classification weights of any
checkpoint (ours or the authors', detected), batch-norm statistics frozen (every BN, SC-Conv's inner ones
included, becomes a ``FrozenBatchNorm2d``), and the stem plus the first ``5 - trainable_layers`` stages frozen.

Weights that cannot come are reported in seconds, with the way out a training command offers
(``--backbone-checkpoint PATH``): ImageNet weights that are not cached and whose server cannot be reached
(Hugging Face's client would retry for about a minute before a message that names no flag), and a checkpoint
whose keys do not fit the backbone (one line, not a page of key names).
"""
from __future__ import annotations

import os
import socket
from typing import Any, Dict, Optional, Sequence, Tuple
from urllib.parse import urlparse

from timm.layers import freeze_batch_norm_2d
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from scnet.errors import CheckpointError, InvalidArgumentError
from scnet.models import create_model
from scnet.weights.fit import WeightsMismatchError

__all__ = ['STAGES', 'build_fpn_backbone', 'build_backbone', 'check_pretrained_reachable', 'options_for_weights']

STAGES = ('layer1', 'layer2', 'layer3', 'layer4')
_TRAINABLE_ORDER = ('layer4', 'layer3', 'layer2', 'layer1', 'conv1')
_PROBE_TIMEOUT = 5.0   # seconds to wait for the weights' server to answer a connection
_PROXY_VARIABLES = ('https_proxy', 'HTTPS_PROXY', 'http_proxy', 'HTTP_PROXY', 'all_proxy', 'ALL_PROXY')


def _pretrained_location(name: str) -> Optional[Tuple[str, bool]]:
    """(address, cached) of the ImageNet weights ``create_model(name, pretrained=True)`` loads; None where it
    has none (``create_model`` says so itself) or the address is not a server."""
    from scnet.models.zoo import ZOO_ARCHITECTURES
    from scnet.weights.download import cache_dir
    from scnet.weights.official import OFFICIAL_WEIGHTS, official_url

    if name in OFFICIAL_WEIGHTS:   # the authors' files, through scnet.weights.download (a mirror if set)
        url = official_url(name)
        return url, (cache_dir() / os.path.basename(urlparse(url).path)).is_file()
    if name in ZOO_ARCHITECTURES:
        return None
    from timm.models import get_pretrained_cfg   # a baseline: timm's weights, from the Hugging Face Hub

    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        import huggingface_hub
        from huggingface_hub import constants

        cached = any(isinstance(huggingface_hub.try_to_load_from_cache(cfg.hf_hub_id, f), str)
                     for f in ('model.safetensors', 'pytorch_model.bin', cfg.hf_hub_filename) if f)
        if constants.HF_HUB_OFFLINE and not cached:
            raise _unreachable(name, f'{constants.ENDPOINT}/{cfg.hf_hub_id}', 'HF_HUB_OFFLINE is set')
        return f'{constants.ENDPOINT}/{cfg.hf_hub_id}', cached
    if cfg.url:
        return cfg.url, (cache_dir() / os.path.basename(urlparse(cfg.url).path)).is_file()
    return None


def _unreachable(name: str, address: str, reason: str) -> CheckpointError:
    return CheckpointError(
        f'{name}: its ImageNet weights are not cached here and cannot be downloaded from {address} ({reason}); '
        f'without network access, pass a local copy with --backbone-checkpoint PATH (a .safetensors or .pth of '
        f'{name}, fetched where the address is reachable), or leave out --pretrained / --backbone-checkpoint '
        'pretrained to train the backbone from scratch')


def check_pretrained_reachable(name: str) -> None:
    """A ``CheckpointError`` in seconds when the ImageNet weights of ``name`` are neither cached nor on a server
    that accepts a connection (behind a proxy, which the probe does not use, the download itself decides)."""
    location = _pretrained_location(name)
    if location is None or location[1]:
        return
    url = urlparse(location[0])
    if url.scheme not in ('http', 'https') or not url.hostname or any(os.environ.get(v) for v in _PROXY_VARIABLES):
        return
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == 'https' else 80)),
                                 timeout=_PROBE_TIMEOUT).close()
    except OSError as e:
        raise _unreachable(name, location[0], e.strerror or str(e) or type(e).__name__) from None


def _as_lists(value: Any) -> Any:
    return [_as_lists(v) for v in value] if isinstance(value, (list, tuple)) else value


def options_for_weights(checkpoint: str, backbone: str,
                        recipe_kwargs: Dict[str, Any]) -> Tuple[Dict[str, Any], Optional[str]]:
    """The backbone options to build ``backbone`` with for the classification weights of ``checkpoint``: the
    recipe's ``backbone_kwargs`` with the model options the checkpoint records in their place; and a note to
    print where that replaced recipe values (else None). Why the checkpoint's win: they are what the weights
    were trained as (a recipe's narrow widths belong to the backbone it trains from scratch, and would not fit
    them). A checkpoint that records another model is refused, naming the ``--backbone`` it holds."""
    from scnet.train.classifier_checkpoint import other_model_message, read_classifier_metadata

    recorded = read_classifier_metadata(checkpoint)
    other = other_model_message(checkpoint, recorded.model, backbone, f'pass --backbone {recorded.model} or another '
                                'checkpoint')
    if other:
        raise CheckpointError(other)
    options = recorded.model_kwargs or {}
    replaced = {k: v for k, v in recipe_kwargs.items() if k in options and _as_lists(v) != _as_lists(options[k])}
    kwargs = {**recipe_kwargs, **options}
    note = (f'note: {backbone} is built as {checkpoint} records it, {kwargs}, not with the recipe\'s {replaced}'
            if replaced else None)
    return kwargs, note


def build_backbone(name: str, *, checkpoint: Optional[str] = None, pretrained: bool = False,
                   trainable_layers: int = 3, frozen_bn: bool = True, **model_kwargs):
    """The zoo model ``name`` without classifier, with frozen BN and frozen early stages."""
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f'trainable_layers must be within 0..5, got {trainable_layers}')
    if pretrained and not checkpoint:
        check_pretrained_reachable(name)
    try:
        model = create_model(name, pretrained=pretrained, checkpoint=checkpoint, num_classes=0, **model_kwargs)
    except WeightsMismatchError as e:
        raise e.with_way_out(f'give --backbone-checkpoint a checkpoint of {name}, or the --backbone it holds '
                             '(`scnet models` lists them)', name=name) from None
    if frozen_bn:
        model = freeze_batch_norm_2d(model)
    trainable = _TRAINABLE_ORDER[:trainable_layers] + (('bn1',) if trainable_layers == 5 else ())
    for param_name, param in model.named_parameters():
        if not param_name.startswith(trainable):
            param.requires_grad_(False)
    return model


def build_fpn_backbone(name: str, *, checkpoint: Optional[str] = None, pretrained: bool = False,
                       trainable_layers: int = 3, frozen_bn: bool = True, out_channels: int = 256,
                       returned_layers: Sequence[int] = (1, 2, 3, 4), **model_kwargs) -> BackboneWithFPN:
    """A ``BackboneWithFPN`` (P2-P5 plus a max-pooled P6, ``out_channels`` each) over zoo model ``name``.

    ``returned_layers``: the stages (1-4, ``layer1``-``layer4``) the FPN takes, as in torchvision's
    ``resnet_fpn_backbone`` (e.g. ``(2, 3, 4)`` for RetinaNet-style P3-P5); its outputs are named ``'0'``,
    ``'1'``, ... in that order, plus ``'pool'``."""
    stages = list(returned_layers) if isinstance(returned_layers, (list, tuple, range)) else None
    if not stages or any(isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= len(STAGES) for s in stages) \
            or stages != sorted(set(stages)):
        raise InvalidArgumentError(f'returned_layers must be increasing stage numbers from 1 to {len(STAGES)} '
                                   f'(e.g. (2, 3, 4)), got {returned_layers!r}')
    model = build_backbone(name, checkpoint=checkpoint, pretrained=pretrained, trainable_layers=trainable_layers,
                           frozen_bn=frozen_bn, **model_kwargs)
    channels = {info['module']: info['num_chs'] for info in model.feature_info}
    chosen = [STAGES[s - 1] for s in stages]
    return BackboneWithFPN(model, return_layers={stage: str(i) for i, stage in enumerate(chosen)},
                           in_channels_list=[channels[s] for s in chosen], out_channels=out_channels,
                           extra_blocks=LastLevelMaxPool())

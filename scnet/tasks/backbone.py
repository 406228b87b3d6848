"""Any zoo model as an FPN backbone for torchvision's detection models.

torchvision's ``BackboneWithFPN`` takes the four stage outputs (``layer1``..``layer4``, strides 4-32) of a
network whose stages are direct children, which timm's ResNet family (and so every zoo model) is. What this
adds is the usual detection fine-tuning setup of the paper's detectors: the classification weights of any
checkpoint (ours or the authors', detected), batch-norm statistics frozen (every BN, SC-Conv's inner ones
included, becomes a ``FrozenBatchNorm2d``), and the stem plus the first ``5 - trainable_layers`` stages frozen.
"""
from __future__ import annotations

from typing import Optional

from timm.layers import freeze_batch_norm_2d
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from scnet.models import create_model

__all__ = ['STAGES', 'build_fpn_backbone', 'build_backbone']

STAGES = ('layer1', 'layer2', 'layer3', 'layer4')
_TRAINABLE_ORDER = ('layer4', 'layer3', 'layer2', 'layer1', 'conv1')


def build_backbone(name: str, *, checkpoint: Optional[str] = None, pretrained: bool = False,
                   trainable_layers: int = 3, frozen_bn: bool = True, **model_kwargs):
    """The zoo model ``name`` without classifier, with frozen BN and frozen early stages."""
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f'trainable_layers must be within 0..5, got {trainable_layers}')
    model = create_model(name, pretrained=pretrained, checkpoint=checkpoint, num_classes=0, **model_kwargs)
    if frozen_bn:
        model = freeze_batch_norm_2d(model)
    trainable = _TRAINABLE_ORDER[:trainable_layers] + (('bn1',) if trainable_layers == 5 else ())
    for param_name, param in model.named_parameters():
        if not param_name.startswith(trainable):
            param.requires_grad_(False)
    return model


def build_fpn_backbone(name: str, *, checkpoint: Optional[str] = None, pretrained: bool = False,
                       trainable_layers: int = 3, frozen_bn: bool = True, out_channels: int = 256,
                       **model_kwargs) -> BackboneWithFPN:
    """A ``BackboneWithFPN`` (P2-P5 plus a max-pooled P6, ``out_channels`` each) over zoo model ``name``."""
    model = build_backbone(name, checkpoint=checkpoint, pretrained=pretrained, trainable_layers=trainable_layers,
                           frozen_bn=frozen_bn, **model_kwargs)
    channels = {info['module']: info['num_chs'] for info in model.feature_info}
    return BackboneWithFPN(model, return_layers={stage: str(i) for i, stage in enumerate(STAGES)},
                           in_channels_list=[channels[s] for s in STAGES], out_channels=out_channels,
                           extra_blocks=LastLevelMaxPool())

"""The "simple baselines" pose network (Xiao, Wu, Wei; ECCV 2018) over any zoo backbone, as in Table 5 of the paper.

A backbone's last stage (stride 32), then three deconvolution layers (4x4, stride 2, 256 channels, each followed
by BN and ReLU), then a 1x1 convolution to one heatmap per keypoint: heatmaps at 1/4 of the input (64x48 for a
256x192 crop). Initialisation as the original: deconvolution and final weights from N(0, 0.001), BN 1 / 0,
final bias 0. The backbone is fine-tuned whole (all stages, BN in training mode), as simple-baselines does.

``deconv_layers`` defaults to as many as bring the heatmaps to stride 4: three for every network of the paper
(stride 32), one for the CIFAR-stem networks (stride 8). ``deconv_channels`` exists for small CPU runs; the
paper's network is the default.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from scnet.tasks.pose.recipe import PoseError, PoseRecipe, size_problem

__all__ = ['SimplePose', 'build_pose_model', 'build_for_recipe', 'heatmap_size', 'backbone_stride']


class SimplePose(nn.Module):
    """``backbone`` (a zoo model without classifier) -> deconvolution head -> ``num_keypoints`` heatmaps."""

    def __init__(self, backbone: nn.Module, num_keypoints: int, *, deconv_layers: Optional[int] = None,
                 deconv_channels: int = 256, deconv_kernel: int = 4) -> None:
        super().__init__()
        if deconv_layers is None:   # up to stride 4: three for the usual stride-32 networks, one for CIFAR stems
            deconv_layers = max(0, int(math.log2(max(backbone_stride(backbone) // 4, 1))))
        if deconv_kernel not in (2, 3, 4):
            raise ValueError(f'deconv_kernel must be 2, 3 or 4, got {deconv_kernel}')
        padding, output_padding = {4: (1, 0), 3: (1, 1), 2: (0, 0)}[deconv_kernel]
        self.backbone = backbone
        in_channels = backbone.feature_info[-1]['num_chs']
        layers = []
        for _ in range(deconv_layers):
            layers += [nn.ConvTranspose2d(in_channels, deconv_channels, deconv_kernel, stride=2, padding=padding,
                                          output_padding=output_padding, bias=False),
                       nn.BatchNorm2d(deconv_channels), nn.ReLU(inplace=True)]
            in_channels = deconv_channels
        self.deconv = nn.Sequential(*layers)
        self.final = nn.Conv2d(in_channels, num_keypoints, 1)
        self.num_keypoints = num_keypoints
        self.deconv_layers = deconv_layers
        self.stride = backbone_stride(backbone) // 2 ** deconv_layers
        self._init_head()

    def _init_head(self) -> None:
        for m in self.deconv.modules():
            if isinstance(m, nn.ConvTranspose2d):
                nn.init.normal_(m.weight, std=0.001)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.final.weight, std=0.001)
        nn.init.zeros_(self.final.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.final(self.deconv(self.backbone.forward_features(images)))


def backbone_stride(backbone: nn.Module) -> int:
    return int(backbone.feature_info[-1]['reduction'])


def heatmap_size(input_size: Sequence[int], stride: int) -> Tuple[int, int]:
    return input_size[0] // stride, input_size[1] // stride


def build_pose_model(backbone: str, num_keypoints: int, *, checkpoint: Optional[str] = None,
                     pretrained: bool = False, backbone_kwargs: Optional[Dict[str, Any]] = None,
                     frozen_bn: bool = False, trainable_layers: int = 5, deconv_layers: Optional[int] = None,
                     deconv_channels: int = 256, deconv_kernel: int = 4) -> SimplePose:
    """The pose network over zoo model ``backbone``; ``checkpoint`` / ``pretrained``: the backbone's
    ImageNet weights (either layout; the classifier is dropped). Defaults: everything trained, BN live, heatmaps
    at stride 4."""
    from scnet.tasks.backbone import build_backbone

    net = build_backbone(backbone, checkpoint=checkpoint, pretrained=pretrained, trainable_layers=trainable_layers,
                         frozen_bn=frozen_bn, **(backbone_kwargs or {}))
    return SimplePose(net, num_keypoints, deconv_layers=deconv_layers, deconv_channels=deconv_channels,
                      deconv_kernel=deconv_kernel)


def build_for_recipe(recipe: PoseRecipe, num_keypoints: int, *, with_weights: bool = True,
                     backbone_kwargs: Optional[Dict[str, Any]] = None) -> SimplePose:
    """The network of ``recipe`` (its backbone weights only ``with_weights``), its image size checked against
    the backbone's stride. ``backbone_kwargs``: the backbone's options where they are not the recipe's (those
    its ``backbone_checkpoint`` records, ``scnet.tasks.backbone.options_for_weights``)."""
    from scnet.models.factory import validate_model_name

    validate_model_name(recipe.backbone)
    try:
        model = build_pose_model(recipe.backbone, num_keypoints,
                                 checkpoint=recipe.backbone_checkpoint if with_weights else None,
                                 pretrained=recipe.pretrained and with_weights and not recipe.backbone_checkpoint,
                                 backbone_kwargs=recipe.backbone_kwargs if backbone_kwargs is None else backbone_kwargs,
                                 frozen_bn=recipe.frozen_bn,
                                 trainable_layers=recipe.trainable_layers, deconv_layers=recipe.deconv_layers,
                                 deconv_channels=recipe.deconv_channels, deconv_kernel=recipe.deconv_kernel)
    except TypeError as e:
        raise PoseError(f'backbone {recipe.backbone}: {e}') from None
    stride = backbone_stride(model.backbone)
    h, w = recipe.image_size
    if h % stride or w % stride:
        raise PoseError(size_problem(recipe.image_size, stride, recipe.backbone))
    if stride % 2 ** model.deconv_layers:
        raise PoseError(f'{model.deconv_layers} deconvolution layers up-sample {recipe.backbone}\'s stride-{stride} '
                        'features beyond the input resolution; use fewer')
    return model

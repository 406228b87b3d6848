"""Side-output score maps at res3, as the paper's Fig. 4.

A run of ``scnet train --aux-weight W`` keeps, beside ``RUN_DIR/model.safetensors``, the side classifier it
trained on the output of the second stage (``layer2``, the paper's res3) in ``RUN_DIR/side_head.safetensors``:
a 1x1 convolution giving a score per class at each position of that map (:class:`SideOutputHead`). The
average of a class's score map is the side classifier's logit, so the map shows where at res3 the evidence
for the class lies. The paper uses these maps to show that SC-Conv's larger field of view lets res3 already
cover the whole object.

:func:`side_output_maps` gives the map of the side head's top class (or a chosen one), upsampled bilinearly to
the input and scaled to [0, 1] between its own minimum and maximum (scores are signed); ``scnet cam
--side-output`` draws them with the same grid as Grad-CAM (:func:`scnet.visual.cam.compare_models`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import torch
import torch.nn.functional as F

from scnet.errors import CheckpointError, ScnetError
from scnet.train.side_output import SIDE_STAGE, SideOutputHead
from scnet.visual.cam import ClassMaps, frozen, target_classes
from scnet.visual.loading import LoadedModel
from scnet.visual.targets import capture, image_batch, spatial_output

__all__ = ['SIDE_LAYER', 'SIDE_HEAD_FILE', 'load_side_head', 'side_output_maps']

SIDE_LAYER = SIDE_STAGE
SIDE_HEAD_FILE = 'side_head.safetensors'


def load_side_head(m: LoadedModel) -> SideOutputHead:
    """The side head saved beside ``m``'s checkpoint (``side_head.safetensors`` in the same directory)."""
    from scnet.weights import read_checkpoint

    if m.checkpoint is None:
        raise ScnetError(f'{m.label}: side outputs need a run of `scnet train --aux-weight W`: give '
                         'NAME:RUN_DIR or RUN_DIR (random or pretrained weights have no side head)')
    path = Path(m.checkpoint).parent / SIDE_HEAD_FILE
    if not path.is_file():
        raise ScnetError(f'{m.label}: no {SIDE_HEAD_FILE} beside {m.checkpoint}; side outputs need a run trained '
                         'with `scnet train --aux-weight W` (it writes RUN_DIR/side_head.safetensors)')
    state = read_checkpoint(str(path))
    weight = state.get('score.weight')
    if weight is None or weight.dim() != 4:
        raise CheckpointError(f'{path}: not a side head (expected a 1x1 convolution score.weight)')
    head = SideOutputHead(weight.shape[1], weight.shape[0])
    try:
        head.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f'{path}: does not fit a side head: {str(e).splitlines()[0]}') from None
    if weight.shape[0] != m.num_classes:
        raise CheckpointError(f'{path}: the side head has {weight.shape[0]} classes, the model {m.num_classes}; '
                              'they must come from the same run')
    return head.eval()


def side_output_maps(m: LoadedModel, head: SideOutputHead, inputs: torch.Tensor,
                     classes: Union[None, int, Sequence[int]] = None) -> ClassMaps:
    """Score maps of ``head`` on ``m``'s res3 output: the map of each image's top side class (or of
    ``classes``), each scaled to [0, 1] between its minimum and maximum. ``raw`` keeps the scores. ``inputs``:
    ``(N, 3, H, W)`` normalised images, or one ``(3, H, W)`` image."""
    x = image_batch(m.model, inputs, m.label)
    with frozen(m.model), torch.no_grad(), capture(m.model, [SIDE_LAYER], stop_after=SIDE_LAYER,
                                                   model_label=m.label) as store:
        m.model(x)
    features = spatial_output(store, SIDE_LAYER, m.label)
    expected = head.score.in_channels
    if features.shape[1] != expected:
        raise CheckpointError(f'{m.label}: res3 has {features.shape[1]} channels, the side head expects {expected}')
    with torch.no_grad():
        scores = head.to(features.device, features.dtype).score_maps(features)  # (N, classes, h, w)
        logits = scores.mean(dim=(2, 3))
        probs = logits.softmax(1)
        predicted = probs.argmax(1)
        target = target_classes(classes, logits)           # checked as Grad-CAM's
        raw = scores[torch.arange(len(x)), target]         # (N, h, w)
        up = F.interpolate(raw[:, None], size=x.shape[-2:], mode='bilinear', align_corners=False)[:, 0]
        lo = up.flatten(1).amin(1)[:, None, None]
        hi = up.flatten(1).amax(1)[:, None, None]
        maps = torch.where(hi > lo, (up - lo) / (hi - lo).clamp_min(1e-30), torch.zeros_like(up))
    return ClassMaps(maps=maps, raw=raw, classes=target, probs=probs.gather(1, target[:, None])[:, 0],
                     predicted=predicted, predicted_probs=probs.gather(1, predicted[:, None])[:, 0],
                     layer=SIDE_LAYER)

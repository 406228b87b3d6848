"""Other implementations of SCNet-50, as model factories the benchmark can build (also in a fresh process).

* ``authors_scnet``: the authors' network structure (``tests/authors_reference.py``: their two half-width
  1x1 convs with separate BNs, ``nn.Sequential`` K2/K3/K4 with their own BNs and ReLU, nearest up-sampling
  by ``F.interpolate``), pinned to their released checkpoints' tensor list by the tests.
* ``literal_scnet``: scnet-torch's network with every ``SCConv2d`` computing equations 2-5 as the tests'
  literal reference writes them (``tests/reference.py``: pooling and nearest up-sampling as explicit loops
  over output cells), with the same weights and the same batch norms (so it also trains).
* ``mmpose_scnet``: a second published implementation, OpenMMLab's (``mmpose.models.backbones.SCNet``, whose
  inference speed table set SCNet-50 at 0.63x ResNet-50), run as it is installed (``bash
  benchmarks/install_contenders.sh`` puts it in ``.contenders/``), with a global pool and a 1000-way ``fc`` on
  top of its last stage, as the authors' classifier has. It structures the block as the authors do.

The first two need the repository checkout (they import ``tests``), which is why they live here and not in the
package.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
#: Where ``benchmarks/install_contenders.sh`` installs mmpose and what its backbone imports, apart from the
#: project's environment.
CONTENDERS_DIR = os.path.join(ROOT, '.contenders')
MMPOSE_VERSION = '1.3.2'

from scnet import SCConv2d, create_model  # noqa: E402
from tests import reference  # noqa: E402
from tests.authors_reference import build_reference  # noqa: E402


def authors_scnet(name: str = 'scnet50') -> nn.Module:
    """The authors' structure of ``name`` (scnet50, scnet50_v1d, scnet101, scnet101_v1d)."""
    return build_reference(name)


class LiteralSCConv2d(nn.Module):
    """Equations 2-5 literally, over the parameters of an ``SCConv2d`` (shared, not copied)."""

    def __init__(self, layer: SCConv2d) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sc = self.layer
        half = x.shape[1] // 2
        x2, x1 = x[:, :half], x[:, half:]
        y2 = sc.k1(x2)                                                            # path 2
        t1 = reference.pool_r(x1, sc.pooling_r, sc.pool)                         # (2)
        x1_prime = reference.upsample_nearest(sc.k2_norm(sc.k2(t1)), x1.shape[-2:])  # (3)
        y1_prime = sc.k3_norm(sc.k3(x1)) * torch.sigmoid(x1 + x1_prime)          # (4)
        return torch.cat([y2, sc.k4(y1_prime)], dim=1)                           # (5)


def literal_scnet(name: str = 'scnet50') -> nn.Module:
    """``create_model(name)`` with each SC-Conv replaced by its literal twin (same weights)."""
    model = create_model(name)
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, SCConv2d):
                if child.upsample != 'nearest' or child.pooling_r < 2:
                    raise ValueError('the literal twin covers nearest up-sampling with pooling_r >= 2')
                setattr(parent, child_name, LiteralSCConv2d(child))
    return model


def literal_key(key: str) -> str:
    """Name in the ``literal_scnet`` twin of a zoo model's parameter or buffer (``conv2.`` -> ``conv2.layer.``)."""
    parts = key.split('.')
    for i in range(len(parts) - 1):
        if parts[i] == 'conv2' and parts[i + 1] in ('k1', 'k2', 'k2_norm', 'k3', 'k3_norm', 'k4'):
            parts.insert(i + 1, 'layer')
            break
    return '.'.join(parts)


def ours_to_literal_state(model: nn.Module) -> dict:
    """State dict of a zoo model, keyed for its ``literal_scnet`` twin."""
    return {literal_key(k): v for k, v in model.state_dict().items()}


class MissingContender(RuntimeError):
    """A contender's package is not installed; the message says how to install it."""


def mmpose_available() -> bool:
    """Whether ``mmpose_scnet`` can be built here."""
    try:
        _mmpose_scnet_module()
    except MissingContender:
        return False
    return True


def _mmpose_scnet_module() -> types.ModuleType:
    """mmpose's ``models/backbones/scnet.py``, imported without running mmpose's package ``__init__`` files.

    Why around them: ``mmpose/__init__.py`` pins mmcv below 2.2 and ``mmpose/models/__init__.py`` imports every
    dataset and evaluator, and through them xtcocotools, whose wheels are built against numpy 1 (this
    environment has numpy 2). The backbone itself needs only ``mmcv.cnn``, ``mmengine`` and its registry.
    ``.contenders/`` goes to the end of ``sys.path``: the project's own packages keep precedence.
    """
    if os.path.isdir(CONTENDERS_DIR) and CONTENDERS_DIR not in sys.path:
        sys.path.append(CONTENDERS_DIR)
    name = 'mmpose.models.backbones.scnet'
    if name in sys.modules:
        return sys.modules[name]
    package = sys.modules.get('mmpose')   # mmpose itself, or the stub of an earlier call
    spec = importlib.util.find_spec('mmpose') if package is None else None
    if package is None and (spec is None or not spec.submodule_search_locations):
        raise MissingContender(f'mmpose is not installed: run `bash benchmarks/install_contenders.sh` (mmpose '
                               f'{MMPOSE_VERSION} and what its SCNet imports, into {CONTENDERS_DIR})')
    root = list(package.__path__ if package is not None else spec.submodule_search_locations)[0]
    for package, folder in (('mmpose', ''), ('mmpose.models', 'models'), ('mmpose.models.backbones',
                                                                           os.path.join('models', 'backbones'))):
        if package not in sys.modules:
            stub = types.ModuleType(package)
            stub.__path__ = [os.path.join(root, folder)]
            sys.modules[package] = stub
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise MissingContender(f"mmpose's SCNet cannot be imported ({e}): run `bash "
                               f"benchmarks/install_contenders.sh`") from e


class MMPoseClassifier(nn.Module):
    """mmpose's SCNet backbone (last stage only) with the authors' head: global average pool and ``fc``."""

    def __init__(self, depth: int, num_classes: int = 1000) -> None:
        super().__init__()
        self.backbone = _mmpose_scnet_module().SCNet(depth=depth, out_indices=(3,))
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)[-1]
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(features, 1), 1))


def mmpose_scnet(name: str = 'scnet50') -> nn.Module:
    """mmpose's SCNet-``depth`` as a classifier (scnet50, scnet101; mmpose has no v1d variants)."""
    depths = {'scnet50': 50, 'scnet101': 101}
    if name not in depths:
        raise ValueError(f'mmpose builds {sorted(depths)}, not {name!r}')
    return MMPoseClassifier(depths[name])


#: The authors' block names that mmpose spells differently (the rest match, stem and shortcuts included).
_AUTHORS_TO_MMPOSE = {'conv1_a': 'conv1', 'bn1_a': 'bn1', 'conv1_b': 'conv2', 'bn1_b': 'bn2'}


def authors_to_mmpose_state(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A state dict of the authors' structure (``authors_scnet``), keyed for ``mmpose_scnet``."""
    out = {}
    for key, value in state.items():
        if key.startswith('fc.'):
            out[key] = value
            continue
        parts = key.split('.')
        if len(parts) > 2 and parts[0].startswith('layer'):
            parts[2] = _AUTHORS_TO_MMPOSE.get(parts[2], parts[2])
        out['backbone.' + '.'.join(parts)] = value
    return out

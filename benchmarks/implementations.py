"""Other implementations of SCNet-50, as model factories the benchmark can build (also in a fresh process).

* ``authors_scnet``: the authors' network structure (``tests/authors_reference.py``: their two half-width
  1x1 convs with separate BNs, ``nn.Sequential`` K2/K3/K4 with their own BNs and ReLU, nearest up-sampling
  by ``F.interpolate``), pinned to their released checkpoints' tensor list by the tests.
* ``literal_scnet``: scnet-torch's network with every ``SCConv2d`` computing equations 2-5 as the tests'
  literal reference writes them (``tests/reference.py``: pooling and nearest up-sampling as explicit loops
  over output cells), with the same weights and the same batch norms (so it also trains).

Both need the repository checkout (they import ``tests``), which is why they live here and not in the package.
"""
from __future__ import annotations

import os
import sys

import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

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

"""The authors' released ImageNet checkpoints: where they are, and how their layout maps onto ours.

Their bottleneck has two 1x1 convs (``conv1_a``/``conv1_b``, half the width each, each with its BN), a plain
path ``k1`` (conv, BN) and ``scconv.k2/k3/k4`` (pool-conv-BN, conv-BN, conv-BN). Ours is timm's bottleneck
with ``conv2`` an ``SCConv2d``. The mapping, exact because BN and ReLU act per channel:

==============================================  ==========================================
authors'                                        ours
==============================================  ==========================================
``conv1_a`` ++ ``conv1_b`` (output channels)    ``conv1``
``bn1_a`` ++ ``bn1_b``                          ``bn1``
``k1.0``                                        ``conv2.k1``
``scconv.k2.1`` / ``scconv.k2.2``               ``conv2.k2`` / ``conv2.k2_norm``
``scconv.k3.0`` / ``scconv.k3.1``               ``conv2.k3`` / ``conv2.k3_norm``
``scconv.k4.0``                                 ``conv2.k4``
``k1.1`` ++ ``scconv.k4.1``                     ``bn2`` (path 2 first, as their ``conv3`` reads)
==============================================  ==========================================

Stem, ``conv3``/``bn3``, shortcut and ``fc`` keep their names (the v1d deep stem and ``avg_down`` shortcut
are timm's, key for key).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, Mapping, Tuple

import torch

from scnet.errors import CheckpointError
from scnet.weights.download import fetch
from scnet.weights.fit import not_a_classifier
from scnet.weights.io import StateDict, read_metadata, read_state_dict

__all__ = ['OFFICIAL_WEIGHTS', 'is_authors_layout', 'convert_authors_state_dict', 'official_url',
           'pretrained_state_dict', 'read_checkpoint']

#: model name -> the authors' download address (the name carries a sha256 prefix, checked on download).
OFFICIAL_WEIGHTS: Dict[str, str] = {
    'scnet50': 'https://backseason.oss-cn-beijing.aliyuncs.com/scnet/scnet50-dc6a7e87.pth',
    'scnet50_v1d': 'https://backseason.oss-cn-beijing.aliyuncs.com/scnet/scnet50_v1d-4109d1e1.pth',
    'scnet101': 'https://backseason.oss-cn-beijing.aliyuncs.com/scnet/scnet101-44c5b751.pth',
}

#: Environment variable naming a mirror (a URL prefix, ``file://`` included) that replaces the authors' host.
MIRROR_ENV = 'SCNET_WEIGHTS_MIRROR'

_BLOCK = re.compile(r'^(layer\d+\.\d+\.)(.+)$')
_RENAMED: Tuple[Tuple[str, str], ...] = (
    ('k1.0.', 'conv2.k1.'),
    ('scconv.k2.1.', 'conv2.k2.'),
    ('scconv.k2.2.', 'conv2.k2_norm.'),
    ('scconv.k3.0.', 'conv2.k3.'),
    ('scconv.k3.1.', 'conv2.k3_norm.'),
    ('scconv.k4.0.', 'conv2.k4.'),
)
_CONCATENATED: Tuple[Tuple[str, str, str], ...] = (
    ('conv1_a.', 'conv1_b.', 'conv1.'),
    ('bn1_a.', 'bn1_b.', 'bn1.'),
    ('k1.1.', 'scconv.k4.1.', 'bn2.'),
)


def is_authors_layout(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True for a state dict in the authors' layout (it has their ``conv1_a`` / ``scconv`` names)."""
    return any(_BLOCK.match(k) and ('.conv1_a.' in k or '.scconv.' in k) for k in state_dict)


def convert_authors_state_dict(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Map a state dict of the authors' SCNet layout onto this package's (see the module docstring)."""
    out: StateDict = {}
    firsts: Dict[str, Tuple[str, str]] = {}  # second-half key expected -> (first-half key, target key)
    seconds = set()
    for key, value in state_dict.items():
        m = _BLOCK.match(key)
        block, rest = m.groups() if m else ('', '')
        renamed = next(((t, o) for t, o in _RENAMED if rest.startswith(t)), None)
        first = next(((f, s, o) for f, s, o in _CONCATENATED if rest.startswith(f)), None)
        if renamed:
            theirs, ours = renamed
            out[block + ours + rest[len(theirs):]] = value
        elif first:
            prefix, partner, ours = first
            tail = rest[len(prefix):]
            firsts[block + partner + tail] = (key, block + ours + tail)
        elif m and any(rest.startswith(s) for _, s, _ in _CONCATENATED):
            seconds.add(key)
        else:
            out[key] = value
    orphans = [f'{firsts[k][0]} (no {k})' for k in sorted(set(firsts) - seconds)]
    orphans += [f'{k} (no first half)' for k in sorted(seconds - set(firsts))]
    if orphans:
        raise CheckpointError("authors' checkpoint is incomplete, halves without their partner: " +
                              ', '.join(orphans[:8]) + (' ...' if len(orphans) > 8 else ''))
    for second_key, (first_key, target) in firsts.items():
        a, b = state_dict[first_key], state_dict[second_key]
        # num_batches_tracked is a scalar counter, equal in both halves: keep one.
        out[target] = a if a.dim() == 0 else torch.cat([a, b], dim=0)
    return out


def official_url(name: str) -> str:
    """The download address of ``name``'s weights, rewritten to the mirror in ``$SCNET_WEIGHTS_MIRROR`` if set
    (an address, or a plain folder, which becomes a ``file://`` address)."""
    if name not in OFFICIAL_WEIGHTS:
        raise CheckpointError(
            f'no pretrained weights for {name!r}: the authors released {", ".join(sorted(OFFICIAL_WEIGHTS))}. '
            f'Build it without them (pretrained=False; on the command line, leave out --pretrained or ":pretrained"), '
            f'or load your own file (checkpoint=PATH; --init PATH to scnet train, --checkpoint PATH elsewhere)')
    url = OFFICIAL_WEIGHTS[name]
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        if '://' not in mirror:  # a folder: urllib takes files only as file:// addresses
            mirror = Path(mirror).expanduser().resolve().as_uri()
        url = mirror.rstrip('/') + '/' + url.rsplit('/', 1)[-1]
    return url


def pretrained_state_dict(name: str, progress: bool = True) -> StateDict:
    """Download (once, cached, hash-checked) the authors' weights of ``name`` and return them in our layout."""
    return read_checkpoint(fetch(official_url(name), progress=progress))


def read_checkpoint(path) -> StateDict:
    """Read a classifier's checkpoint in either layout (the authors' or ours, detected) and return it in ours.
    A detection or pose checkpoint is refused in one line that names the command that runs it (every reader
    of classifier weights comes here: ``create_model``, ``--init``, export, timm's ``pretrained_cfg_overlay``)."""
    other_task = not_a_classifier(path, read_metadata(path))
    if other_task:
        raise other_task
    state_dict = read_state_dict(path)
    return convert_authors_state_dict(state_dict) if is_authors_layout(state_dict) else state_dict

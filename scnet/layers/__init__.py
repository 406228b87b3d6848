"""Layers: the self-calibrated convolution and the Gather-Excite gate of Table 3."""
from scnet.layers.gather_excite import GatherExcite
from scnet.layers.scconv import SCConv2d

__all__ = ['SCConv2d', 'GatherExcite']

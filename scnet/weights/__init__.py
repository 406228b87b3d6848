"""Weights: safe reading and writing, the authors' checkpoints and their layout, downloads."""
from scnet.weights.download import fetch
from scnet.weights.io import StateDict, load_into, read_state_dict, save_state_dict
from scnet.weights.official import (OFFICIAL_WEIGHTS, convert_authors_state_dict, is_authors_layout, official_url,
                                    pretrained_state_dict, read_checkpoint)

__all__ = ['StateDict', 'read_checkpoint', 'read_state_dict', 'save_state_dict', 'load_into', 'fetch',
           'OFFICIAL_WEIGHTS', 'official_url', 'convert_authors_state_dict', 'is_authors_layout',
           'pretrained_state_dict']

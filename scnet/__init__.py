"""scnet: self-calibrated convolutions (Liu et al., CVPR 2020) for PyTorch.

``SCConv2d`` is the layer; ``convert`` puts it into any CNN; ``create_model`` / ``list_models`` build the
paper's networks (registered in timm, so ``timm.create_model('scnet50')`` works once scnet is imported);
``scnet.weights`` loads the authors' checkpoints; ``deploy`` folds the BatchNorms for inference.
"""
from scnet.convert import ConversionReport, convert
from scnet.deploy import DeployError, DeployReport, deploy
from scnet.errors import (CheckpointError, InvalidArgumentError, InvalidArgumentTypeError, ScnetError,
                          UnknownModelError)
from scnet.layers import GatherExcite, SCConv2d
from scnet.models import PAPER_MODELS, create_model, list_models

__version__ = '0.1.0'

__all__ = ['SCConv2d', 'GatherExcite', 'convert', 'ConversionReport', 'create_model', 'list_models',
           'PAPER_MODELS', 'deploy', 'DeployReport', 'DeployError', 'ScnetError', 'UnknownModelError', 'CheckpointError',
           'InvalidArgumentError', 'InvalidArgumentTypeError', '__version__']

"""The model family: the SC bottleneck, the zoo's ResNet class, the named networks and the factory."""
from scnet.models import zoo as _zoo  # registers the zoo in timm  # noqa: F401
from scnet.models.blocks import SCBottleneck
from scnet.models.factory import PAPER_MODELS, create_model, list_models
from scnet.models.resnet import SCResNet

__all__ = ['SCBottleneck', 'SCResNet', 'create_model', 'list_models', 'PAPER_MODELS']

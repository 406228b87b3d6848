"""torch.hub.load from a clone of the repository."""
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def test_torch_hub_load_from_a_clone():
    model = torch.hub.load(str(REPO), 'scnet26_cifar', source='local', num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_every_zoo_model_is_an_entry_point():
    """torch.hub lists the callables of hubconf.py; every zoo name must be one."""
    import importlib.util

    import scnet

    spec = importlib.util.spec_from_file_location('hubconf', REPO / 'hubconf.py')
    hub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hub)
    names = {n for n in dir(hub) if callable(getattr(hub, n)) and not n.startswith('_')}
    assert set(scnet.list_models()) <= names

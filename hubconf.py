"""torch.hub entry points: ``torch.hub.load('<clone or owner/repo>', 'scnet50', pretrained=True)``.

Every name of ``scnet.list_models()`` is an entry point taking ``create_model``'s arguments.
"""
dependencies = ['torch', 'timm', 'safetensors']

import scnet as _scnet  # noqa: E402


def _entry_point(name):
    def build(pretrained=False, **kwargs):
        return _scnet.create_model(name, pretrained=pretrained, **kwargs)

    build.__name__ = name
    build.__doc__ = f'{name} from the scnet zoo; arguments as scnet.create_model.'
    return build


for _name in _scnet.list_models():
    globals()[_name] = _entry_point(_name)

"""Named networks of the paper, registered in timm's model registry.

Importing ``scnet`` runs this module, after which ``timm.create_model('scnet50')`` (and ``features_only=True``,
``output_stride``, ``drop_path_rate``, ... everything timm's ResNet takes) works. The paper's baselines that
timm already has (resnet50, resnext50_32x4d, seresnet50, ...) are timm's own; the two it lacks
(``resnext50_2x40d`` and ``ge_resnet50``) are registered here.

The SC-Conv options of ``SCConv2d`` (``pooling_r``, ``pool``, ``identity``, ``upsample``) are keyword arguments
of every SC model, so each row of Table 2 is one call, e.g. ``create_model('scnet50', pooling_r=2)``.
"""
from __future__ import annotations

import numbers
from functools import partial
from typing import Any, Dict, Optional, Sequence, Tuple

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import Bottleneck

from scnet.errors import InvalidArgumentError, InvalidArgumentTypeError
from scnet.layers.scconv import check_norm_takes_maps
from scnet.models.blocks import SCBottleneck
from scnet.models.resnet import SCResNet, check_out_indices, check_unpooled_head
from scnet.weights.fit import adapt_first_conv, check_fit
from scnet.weights.official import OFFICIAL_WEIGHTS, official_url, pretrained_state_dict, read_checkpoint

__all__ = ['SC_OPTIONS', 'ZOO_ARCHITECTURES', 'check_model_arguments', 'check_stages', 'feature_levels']

#: Keyword arguments of SC models that configure every ``SCConv2d`` of the network.
SC_OPTIONS = ('pooling_r', 'pool', 'identity', 'upsample', 'memory_efficient')

#: name -> SCResNet arguments of every network this module registers.
ZOO_ARCHITECTURES: Dict[str, Dict[str, Any]] = {
    # the paper's SC networks (Tables 1-3)
    'scnet50': dict(block=SCBottleneck, layers=(3, 4, 6, 3)),
    'scnet101': dict(block=SCBottleneck, layers=(3, 4, 23, 3)),
    'scnext50_32x4d': dict(block=SCBottleneck, layers=(3, 4, 6, 3), cardinality=32, base_width=4),
    'scnext101_32x4d': dict(block=SCBottleneck, layers=(3, 4, 23, 3), cardinality=32, base_width=4),
    'se_scnet50': dict(block=SCBottleneck, layers=(3, 4, 6, 3), block_args=dict(attn_layer='se')),
    'se_scnet101': dict(block=SCBottleneck, layers=(3, 4, 23, 3), block_args=dict(attn_layer='se')),
    'ge_scnet50': dict(block=SCBottleneck, layers=(3, 4, 6, 3), gather_excite=True),
    # the authors' released "v1d" networks: deep 32-32-64 stem, avg-pool shortcut, 3x3 avg-pool down-sampling
    'scnet50_v1d': dict(block=SCBottleneck, layers=(3, 4, 6, 3), stem_type='deep', stem_width=32, avg_down=True,
                        block_args=dict(avd=True)),
    'scnet101_v1d': dict(block=SCBottleneck, layers=(3, 4, 23, 3), stem_type='deep', stem_width=64,
                         avg_down=True, block_args=dict(avd=True)),
    # baselines timm lacks
    'resnext50_2x40d': dict(block=Bottleneck, layers=(3, 4, 6, 3), cardinality=2, base_width=40),
    'ge_resnet50': dict(block=Bottleneck, layers=(3, 4, 6, 3), gather_excite=True),
    # small networks for small images and CPUs
    'scnet26': dict(block=SCBottleneck, layers=(2, 2, 2, 2)),
    'scnet26_cifar': dict(block=SCBottleneck, layers=(2, 2, 2, 2), cifar_stem=True, channels=(32, 64, 128, 256)),
    'resnet26_cifar': dict(block=Bottleneck, layers=(2, 2, 2, 2), cifar_stem=True, channels=(32, 64, 128, 256)),
}


def _first_conv(stem_type: str) -> str:
    """The first convolution of a stem of ``stem_type``: timm adapts pretrained weights to ``in_chans`` through it.

    A deep stem (``stem_type='deep'``, the v1d models) is a Sequential of three convs: its first is
    ``conv1.0``, timm's name for its own deep-stem ResNets.
    """
    return 'conv1.0' if 'deep' in stem_type else 'conv1'


def _cfg(name: str, url: str = '', **kwargs) -> Dict[str, Any]:
    return {
        'url': url, 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bilinear', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': _first_conv(ZOO_ARCHITECTURES[name].get('stem_type', '')), 'classifier': 'fc', **kwargs,
    }


def _small_cfg(name: str) -> Dict[str, Any]:
    return _cfg(name, input_size=(3, 32, 32), pool_size=(4, 4), crop_pct=1.0)


_AUTHORS = dict(origin_url='https://github.com/MCG-NKU/SCNet', paper_ids='CVPR 2020', license='other')
default_cfgs = generate_default_cfgs({
    **{f'{name}.authors_in1k': _cfg(name, url, **_AUTHORS) for name, url in OFFICIAL_WEIGHTS.items()},
    **{name: _cfg(name) for name in ('scnext50_32x4d', 'scnext101_32x4d', 'se_scnet50', 'se_scnet101',
                                     'ge_scnet50', 'scnet101_v1d', 'resnext50_2x40d', 'ge_resnet50', 'scnet26')},
    'scnet26_cifar': _small_cfg('scnet26_cifar'),
    'resnet26_cifar': _small_cfg('resnet26_cifar'),
})


#: timm's ResNet defaults for the arguments that set a bottleneck's width.
_RESNET_CHANNELS = (64, 128, 256, 512)


def _sc_width_problem(channels: Sequence[int], base_width: int, cardinality: int) -> Optional[Tuple[int, int]]:
    """(stage, width) of the first stage whose SC-Conv cannot split its width, else None.

    timm's bottleneck is ``width = int(channels * base_width / 64) * cardinality`` wide, and SC-Conv splits it in
    two halves of ``cardinality`` groups each: ``int(channels * base_width / 64)`` must be a positive even number.
    """
    for stage, planes in enumerate(channels, 1):
        per_group = int(planes * (base_width / 64))
        if per_group < 1 or per_group % 2:
            return stage, per_group * cardinality
    return None


def _check_sc_widths(variant: str, model_args: Dict[str, Any]) -> None:
    """A clear error, naming the arguments that set it, for an SC network too narrow for its groups, instead of
    the SCConv2d error of one of its layers (whose channel count the caller never chose directly)."""
    channels = model_args.get('channels', _RESNET_CHANNELS)
    base_width, cardinality = model_args.get('base_width', 64), model_args.get('cardinality', 1)
    if not isinstance(channels, (tuple, list)) or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                                           for v in (*channels, base_width, cardinality)):
        return  # timm reports arguments of the wrong kind itself
    problem = _sc_width_problem(channels, base_width, cardinality)
    if problem is None:
        return
    stage, width = problem
    wider = next((tuple(c * k for c in channels) for k in (2, 4, 8, 16, 32, 64, 128)
                  if _sc_width_problem([c * k for c in channels], base_width, cardinality) is None), None)
    hint = f', e.g. channels={wider}' if wider else ''
    raise InvalidArgumentError(
        f'{variant}: stage {stage} would give SC-Conv a width of {width} channels (int(channels[{stage - 1}]='
        f'{channels[stage - 1]} * base_width={base_width} / 64) * cardinality={cardinality}), but SC-Conv splits '
        f'the width in two halves of cardinality groups each, so int(channels * base_width / 64) must be a '
        f'positive even number in every stage; widen the network with larger channels= or base_width={hint}')


def _count(what: str, value, minimum: int, example: str) -> None:
    """An int of at least ``minimum``; a string or float here would fail deep inside timm or torch."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):  # numpy's ints too
        raise InvalidArgumentTypeError(f'{what} must be an int, got {value!r} ({type(value).__name__}); {example}')
    if value < minimum:
        raise InvalidArgumentError(f'{what} must be at least {minimum}, got {value}; {example}')


#: Integer arguments of timm's ResNet that ``check_model_arguments`` checks, with timm's defaults
#: (``cardinality`` and ``base_width``: ``check_stages``).
_RESNET_COUNTS = {'stem_width': 64, 'block_reduce_first': 1, 'down_kernel_size': 1}

#: ``output_stride`` values timm's ResNet builds (dilating the last stages instead of striding them).
OUTPUT_STRIDES = (8, 16, 32)


def check_model_arguments(kwargs: Dict[str, Any]) -> None:
    """timm's ResNet arguments, checked before anything is built, by ``scnet.create_model`` and by timm's route
    (``timm.create_model``) alike: timm accepts some of them silently and fails at the first forward pass (a drop
    rate of 2, ``in_chans=0``), reads a string as a true flag, divides by zero, or fails with a bare assertion or
    KeyError that names neither the argument nor the values it takes."""
    if kwargs.get('num_classes') is not None:
        _count('num_classes', kwargs['num_classes'], 0, 'e.g. num_classes=10, or 0 for a backbone without classifier')
    if 'in_chans' in kwargs:
        _count('in_chans', kwargs['in_chans'], 1, 'e.g. in_chans=3 for RGB images, 1 for grey ones')
    for count in _RESNET_COUNTS:
        if count in kwargs:  # 0 fails in timm's arithmetic (a division by zero), a string or float further in
            _count(count, kwargs[count], 1, f'timm\'s ResNet default is {_RESNET_COUNTS[count]}')
    for flag in ('avg_down', 'zero_init_last', 'replace_stem_pool', 'cifar_stem', 'gather_excite'):
        value = kwargs.get(flag, False)
        if not isinstance(value, bool) and not (type(value) is int and value in (0, 1)):  # 'no' would read as True
            raise InvalidArgumentTypeError(f'{flag} must be True or False, got {kwargs[flag]!r}')
    for rate in ('drop_rate', 'drop_path_rate', 'drop_block_rate'):
        value = kwargs.get(rate)
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)
                                  or not 0 <= value < 1):
            raise InvalidArgumentError(f'{rate} must be a probability in [0, 1), got {value!r}; e.g. {rate}=0.1')
    pool = kwargs.get('global_pool')
    if pool is not None and not isinstance(pool, str):  # timm fails on it with "'int' object has no attribute 'lower'"
        raise InvalidArgumentTypeError(f"global_pool must be a string, one of 'avg', 'max', 'avgmax', 'catavgmax' or "
                                       f"'' (none), got {pool!r}")
    if 'output_stride' in kwargs and kwargs['output_stride'] not in OUTPUT_STRIDES:
        raise InvalidArgumentError(f'output_stride must be one of {", ".join(map(str, OUTPUT_STRIDES))} (timm\'s '
                                   f'total stride of an ImageNet stem; 8 and 16 dilate the last stages instead of '
                                   f'striding them; the _cifar models\' stem does not down-sample, so their real '
                                   f'stride is a quarter of it), got {kwargs["output_stride"]!r}')


def check_stages(variant: str, model_args: Dict[str, Any]) -> None:
    """``layers`` and ``channels`` as one positive int per stage, four stages (timm's ResNet ``forward`` runs
    ``layer1`` to ``layer4``), and positive ``cardinality`` / ``base_width``: timm builds other values and fails
    later with a message about its internals (``'SCResNet' object has no attribute 'layer3'``, a classifier sized
    for a fifth stage that is never run, a negative tensor size), or builds a stage of 0 blocks that its
    ``feature_info`` misdescribes."""
    integer = (lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool))
    for argument, what, example in (('layers', 'block counts', (2, 2, 2, 2)), ('channels', 'widths', _RESNET_CHANNELS)):
        if argument not in model_args:
            continue
        value = model_args[argument]
        wanted = (f'{argument} is 4 positive ints, the {what} of the 4 stages of timm\'s ResNet, e.g. '
                  f'{argument}={example}')
        if not isinstance(value, (tuple, list)) or not all(integer(v) for v in value):
            raise InvalidArgumentTypeError(f'{variant}: {wanted}; got {value!r}')
        if len(value) != 4 or min(value) < 1:
            raise InvalidArgumentError(f'{variant}: {wanted}; got {tuple(value)}')
    for argument in ('cardinality', 'base_width'):
        value = model_args.get(argument, 1)
        if not integer(value) or value < 1:
            raise InvalidArgumentError(f'{variant}: {argument} must be a positive int, got {value!r}')


def feature_levels(model_args: Dict[str, Any]) -> int:
    """How many feature maps ``features_only`` gives a ResNet built with ``model_args``: the stem's, then one per
    stage (timm builds as many stages as ``layers`` and ``channels`` both have)."""
    layers, channels = model_args.get('layers', (3, 4, 6, 3)), model_args.get('channels', _RESNET_CHANNELS)
    if not isinstance(layers, (tuple, list)) or not isinstance(channels, (tuple, list)):
        return 1 + 4  # timm reports arguments of the wrong kind itself
    return 1 + min(len(layers), len(channels))


def _create(variant: str, pretrained: bool = False, **kwargs) -> SCResNet:
    """Build ``variant`` with timm's builder; SC options go to every block, weights come from scnet.weights."""
    model_args = dict(ZOO_ARCHITECTURES[variant])
    block_args = {**model_args.pop('block_args', {}), **(kwargs.pop('block_args', None) or {})}
    sc_options = {k: kwargs.pop(k) for k in SC_OPTIONS if k in kwargs}
    if sc_options and model_args['block'] is not SCBottleneck:
        raise InvalidArgumentTypeError(f'{variant} has no SC-Conv layers, so it takes none of {", ".join(sc_options)}')
    block_args.update(sc_options)
    overlay = dict(kwargs.pop('pretrained_cfg_overlay', None) or {})
    # the caller's choices (channels, stem_width, ...) override the variant's; checked before any file is read
    model_args.update(kwargs)
    check_model_arguments(kwargs)
    check_stages(variant, model_args)
    if model_args.get('norm_layer') is not None:  # one over the last dimension builds, and fails at the first forward
        check_norm_takes_maps(model_args['norm_layer'], 64, variant)
    check_unpooled_head(variant, model_args.get('global_pool'), model_args.get('num_classes', 1000),
                        bool(model_args.get('features_only')))
    if model_args.get('features_only') and 'out_indices' in model_args:
        check_out_indices(variant, model_args['out_indices'], feature_levels(model_args))
    if model_args['block'] is SCBottleneck:
        _check_sc_widths(variant, model_args)
    source = str(overlay.get('file') or overlay.get('url') or f'the {variant} weights')
    if pretrained and overlay.get('file') and 'state_dict' not in overlay:
        # timm's way to point pretrained=True at a local file; read here so that the authors' layout is
        # converted too (timm would load it as is) and nothing is downloaded
        overlay['state_dict'] = read_checkpoint(overlay['file'])
        classifier = overlay['state_dict'].get('fc.weight')
        if classifier is not None and 'num_classes' not in overlay:
            # the file's class count, so that timm keeps its classifier where the model has as many classes
            # (it drops it, as for any pretrained weights, where the model has another count)
            overlay['num_classes'] = int(classifier.shape[0])
    if pretrained and 'state_dict' not in overlay:
        source = official_url(variant)
        overlay['state_dict'] = pretrained_state_dict(variant)  # download, check, convert
    stem = _first_conv(model_args.get('stem_type', ''))
    if stem != _first_conv(ZOO_ARCHITECTURES[variant].get('stem_type', '')):
        overlay.setdefault('first_conv', stem)  # the caller chose another stem: the config names its conv
    return build_model_with_cfg(SCResNet, variant, pretrained, block_args=block_args,
                                pretrained_cfg_overlay=overlay or None,
                                pretrained_filter_fn=partial(_check_pretrained_fits, source), **model_args)


def _check_pretrained_fits(source: str, state_dict: Dict[str, Any], model: SCResNet) -> Dict[str, Any]:
    """timm's ``pretrained_filter_fn``: weights that do not fit the network raise ``WeightsMismatchError``, as
    ``create_model(checkpoint=)`` does. timm itself loads non-strictly wherever the class count differs, and would
    leave every layer the file lacks randomly initialised with only a log line. The classifier is timm's to keep
    or drop, and the first convolution's input channels its to adapt (``in_chans``)."""
    own = model.state_dict()
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    keeps_classifier = model.num_classes == cfg.get('num_classes')
    theirs = adapt_first_conv(model, state_dict, own)  # compared as timm will load it; timm adapts the original
    if not keeps_classifier:
        own = {k: v for k, v in own.items() if not k.startswith('fc.')}
        theirs = {k: v for k, v in theirs.items() if not k.startswith('fc.')}
    check_fit(source, cfg.get('architecture', 'the model'), own, theirs)
    return state_dict


def _register(name: str) -> None:
    def entrypoint(pretrained: bool = False, **kwargs) -> SCResNet:
        return _create(name, pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f'{name} (scnet zoo): {ZOO_ARCHITECTURES[name]}'
    globals()[name] = register_model(entrypoint)


for _name in ZOO_ARCHITECTURES:
    _register(_name)

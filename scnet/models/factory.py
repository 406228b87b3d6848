"""``create_model`` and ``list_models``: the zoo's front door.

The zoo is the SC networks registered by ``scnet.models.zoo`` plus the paper's baselines, which are timm's own
models where timm has them. Everything is built by ``timm.create_model``; this module adds what a user of
the paper needs on top: a closed list of names with a helpful error, and ``checkpoint=PATH`` that reads
either layout safely and reports keys that do not fit.
"""
from __future__ import annotations

import difflib
import itertools
import os
import warnings
from typing import Iterable, List, Mapping, Optional, Tuple, Union

import timm
import torch
from torch import nn

from scnet.errors import (CheckpointError, InvalidArgumentError, InvalidArgumentTypeError, ScnetError,
                          UnknownModelError)
from scnet.layers.scconv import check_norm_takes_maps
from scnet.models.blocks import SCBottleneck
from scnet.models.resnet import check_unpooled_head
from scnet.models.zoo import (SC_OPTIONS, ZOO_ARCHITECTURES, check_model_arguments, check_out_indices, check_stages,
                              feature_levels)
from scnet.name_patterns import as_patterns, matches_any
from scnet.weights import load_into, read_checkpoint
from scnet.weights.fit import WeightsMismatchError
from scnet.weights.io import loadable

__all__ = ['PAPER_MODELS', 'BASELINES', 'create_model', 'list_models', 'validate_model_name']

#: Baselines of the paper that timm provides (built as timm defines them).
BASELINES = ('resnet50', 'resnet101', 'resnext50_32x4d', 'resnext101_32x4d', 'seresnet50', 'seresnet101',
             'resnet26')

#: Every network named in the paper's tables, SC and baseline.
PAPER_MODELS = ('scnet50', 'scnet101', 'scnext50_32x4d', 'scnext101_32x4d', 'se_scnet50', 'se_scnet101',
                'ge_scnet50', 'scnet50_v1d', 'scnet101_v1d', 'resnet50', 'resnet101', 'resnext50_32x4d',
                'resnext101_32x4d', 'resnext50_2x40d', 'seresnet50', 'seresnet101', 'ge_resnet50')


def list_models(pattern: Union[str, Iterable[str], None] = None, pretrained: bool = False) -> List[str]:
    """Names ``create_model`` accepts: the SC networks, the baselines, and the small networks.

    ``pattern`` (``None``, ``''`` or ``[]`` for every name) filters with shell wildcards, e.g.
    ``list_models('*scnet*')``, or with several (a name matching any of them), e.g.
    ``list_models(['scnet*', 'resnet*'])``, as ``timm.list_models`` takes them.
    ``pretrained=True`` keeps the names ``create_model(name, pretrained=True)`` can load weights for: the SC
    networks the authors released ImageNet weights of, and the baselines timm has weights for.
    """
    names = list(dict.fromkeys([*ZOO_ARCHITECTURES, *BASELINES]))
    if pattern is not None and pattern != '' and not (isinstance(pattern, (list, tuple)) and not pattern):
        # '' and [] filter nothing, as in timm.list_models (`scnet models ''` printed an empty zoo)
        patterns = as_patterns(pattern, lambda bad: InvalidArgumentTypeError(
            f'list_models: pattern must be a shell pattern such as \'scnet*\' or a list of them, got {pattern!r}'))
        names = [n for n in names if matches_any(n, patterns)]
    if pretrained:
        # timm lists "name.tag" for every weight file its registry knows, ours (the authors') included
        with_weights = {n.split('.')[0] for n in timm.list_models(names, pretrained=True)} if names else set()
        names = [n for n in names if n in with_weights]
    return names


def close_model_names(text: str) -> List[str]:
    """Up to three names of ``list_models()`` closest to ``text`` (a misspelt name), for a "did you mean"."""
    return difflib.get_close_matches(text, list_models(), n=3, cutoff=0.5)


def _unknown(name: str) -> UnknownModelError:
    base, dot, tag = name.partition('.')
    if dot and base in list_models():  # timm's "architecture.tag" names a set of weights
        return UnknownModelError(f'{name!r} names a weights file as timm lists them ("{base}" with the {tag!r} '
                                 f'weights); here the name is the architecture: create_model({base!r}, '
                                 'pretrained=True) loads its weights (timm.create_model takes the tagged name too)')
    close = close_model_names(name)
    hint = f' Did you mean {", ".join(close)}?' if close else ''
    return UnknownModelError(f'unknown model {name!r}.{hint} Available: {", ".join(list_models())} '
                             '(`scnet models` lists them; any other timm model: timm.create_model)')


def validate_model_name(name: str) -> str:
    """``name`` if ``create_model`` accepts it, else ``UnknownModelError`` with the closest names."""
    if not isinstance(name, str):
        raise InvalidArgumentTypeError(f'a model name is a string such as \'scnet50\', got {name!r} '
                                       f'({type(name).__name__}); `scnet models` lists them')
    if name not in list_models():
        raise _unknown(name)
    return name


def _check_arguments(pretrained, checkpoint, num_classes, kwargs: dict) -> None:
    """The common arguments checked before anything is built (and before a checkpoint is read); the model's own
    (``check_model_arguments``) are checked again where timm's route builds it."""
    if not isinstance(pretrained, bool):
        raise InvalidArgumentTypeError(f'pretrained must be True or False, got {pretrained!r}')
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise InvalidArgumentTypeError(f'checkpoint must be a path (str or pathlib.Path), got {checkpoint!r} '
                                       f'({type(checkpoint).__name__})')
    check_model_arguments(kwargs if num_classes is None else {**kwargs, 'num_classes': num_classes})


def _layer_name_error(name: str, error: Exception, kwargs: dict) -> Optional[ScnetError]:
    """timm's errors for an argument it could not use (a layer name it does not know, a pooling type), as one
    line naming the argument, else None."""
    if isinstance(error, KeyError) and error.args:
        bad = [k for k, v in kwargs.items() if isinstance(v, str) and v == error.args[0]]
        if bad:
            return InvalidArgumentError(
                f'{name}: {bad[0]}={error.args[0]!r} is not a layer name timm knows; pass a class (e.g. '
                f'nn.BatchNorm2d, nn.ReLU) or one of timm\'s names (e.g. \'batchnorm\', \'groupnorm\', \'relu\', '
                f'\'silu\'; timm.layers.get_norm_layer / get_act_layer resolve them)')
    if isinstance(error, AssertionError):
        detail = str(error).strip() or 'an argument timm\'s ResNet does not accept'
        given = ', '.join(f'{k}={v!r}' for k, v in kwargs.items())
        pools = ("; global_pool is one of 'avg', 'max', 'avgmax', 'catavgmax' or '' (none)"
                 if 'global_pool' in kwargs else '')
        return InvalidArgumentError(f'{name}: {detail} (arguments given: {given or "none"}){pools}')
    return None


#: Arguments timm's builder takes besides the model class's own (``build_model_with_cfg``).
_BUILDER_ARGUMENTS = ('features_only', 'out_indices', 'feature_cls', 'feature_cfg', 'pretrained_cfg',
                      'pretrained_cfg_overlay', 'block_args')


def _unknown_argument(name: str, argument: str, kwargs: dict) -> InvalidArgumentTypeError:
    """A keyword ``name``'s network does not take (timm's bare "ResNet.__init__() got an unexpected keyword
    argument"), with the closest ones it does take: a misspelt ``pooling=2`` or ``num_class=10``."""
    import inspect

    from timm.models.resnet import ResNet

    from scnet.models.resnet import SCResNet

    if argument == 'out_indices' and not kwargs.get('features_only'):
        return InvalidArgumentTypeError(f'{name}: out_indices selects the feature maps of a backbone: pass '
                                        'features_only=True with it')
    known = {*inspect.signature(ResNet.__init__).parameters, *inspect.signature(SCResNet.__init__).parameters,
             *_BUILDER_ARGUMENTS, 'pretrained', 'checkpoint'} - {'self', 'args', 'kwargs'}
    if name not in BASELINES and ZOO_ARCHITECTURES[name]['block'] is SCBottleneck:
        known |= set(SC_OPTIONS)
    close = difflib.get_close_matches(argument, sorted(known), n=3, cutoff=0.6)
    hint = f' Did you mean {", ".join(close)}?' if close else ''
    sc = ', and the SC-Conv options ' + ', '.join(SC_OPTIONS) if set(SC_OPTIONS) <= known else ''
    return InvalidArgumentTypeError(
        f'{name} takes no argument {argument!r}.{hint} It takes timm\'s ResNet arguments (num_classes, in_chans, '
        f'channels, output_stride, drop_path_rate, features_only, ...){sc}; see help(scnet.create_model)')


def _recorded_options(name: str, checkpoint) -> dict:
    """The model options a checkpoint of ``scnet train`` records ({} for other files); an error when it
    records another model than ``name``."""
    from scnet.train.classifier_checkpoint import other_model_message, read_classifier_metadata
    from scnet.weights.io import checkpoint_file

    recorded = read_classifier_metadata(checkpoint_file(checkpoint))
    other = other_model_message(checkpoint, recorded.model, name, f'create_model({recorded.model!r}, checkpoint=...)')
    if other:
        raise InvalidArgumentError(other)
    return dict(recorded.model_kwargs or {})


def _stage_widths(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> Optional[Tuple[int, ...]]:
    """The ``channels`` (per-stage widths) that ``state_dict`` says for a ResNet like ``model``: each stage's
    output width (its first block's last convolution) over the blocks' expansion; None where it does not say."""
    widths = []
    for stage in itertools.count(1):
        block = getattr(model, f'layer{stage}', [None])[0]
        if block is None:
            break
        last = 'conv3' if hasattr(block, 'conv3') else 'conv2'
        weight = state_dict.get(f'layer{stage}.0.{last}.weight')
        expansion = getattr(block, 'expansion', 1)
        if weight is None or weight.dim() != 4 or weight.shape[0] % expansion:
            return None
        widths.append(int(weight.shape[0]) // expansion)
    return tuple(widths) or None


def _widths_that_fit(name: str, model: nn.Module, state_dict: Mapping[str, torch.Tensor], kwargs: dict,
                     num_classes: int, new_head: bool) -> Optional[Tuple[int, ...]]:
    """The other ``channels`` with which ``name`` has exactly the keys and shapes of ``state_dict`` (None: none):
    weights of a network built narrower or wider, saved without the options that built it. Read off the
    weights' stage widths and confirmed by building that network on the meta device (no memory, no init)."""
    widths = _stage_widths(state_dict, model)
    if widths is None or widths == _stage_widths(model.state_dict(), model):
        return None
    try:
        with torch.device('meta'):
            other = timm.create_model(name, num_classes=num_classes, **{**kwargs, 'channels': widths})
        loadable(other, state_dict, new_head=new_head)
    except (ScnetError, TypeError, ValueError, RuntimeError):
        return None
    return widths


def create_model(name: str, pretrained: bool = False, checkpoint: Optional[str] = None,
                 num_classes: Optional[int] = None, **kwargs) -> nn.Module:
    """Build a network of the zoo.

    Args:
        name: a name from ``list_models()``.
        pretrained: load the authors' ImageNet weights (scnet50, scnet50_v1d, scnet101), downloaded once and
            cached; the classifier is dropped when ``num_classes`` is not 1000. Baselines get timm's weights.
        checkpoint: a local ``.safetensors`` or PyTorch file in either layout (the authors' or ours, detected),
            or a training run's folder. Its first convolution is adapted to ``in_chans`` as timm adapts
            pretrained weights (one channel: the sum of the colour filters). The model options a checkpoint of
            ``scnet train`` records (``channels``, ``pooling_r``, ...) are used where ``kwargs`` does not give
            them: some change no tensor's shape, and the weights would load into another network.
        num_classes: classifier outputs (0 for none). Default: the checkpoint's class count, else 1000. A value
            that differs from the checkpoint's gives a new, freshly initialised classifier (fine-tuning).
        **kwargs: any argument of timm's ResNet (``features_only``, ``output_stride``, ``drop_path_rate``,
            ``in_chans``, ``norm_layer`` (a class or a timm name such as ``'groupnorm'``), ...), and for SC models
            the SC-Conv options ``pooling_r``, ``pool``, ``identity``, ``upsample``, ``memory_efficient``.

    Raises:
        UnknownModelError, InvalidArgumentError, InvalidArgumentTypeError (all ``ScnetError``): an unknown name;
            ``num_classes`` or ``in_chans`` that is not a count; a drop rate outside [0, 1), an ``output_stride``
            other than 8, 16 or 32, a layer name timm does not know; ``channels``/``base_width`` too narrow for
            SC-Conv's two halves of ``cardinality`` groups; an argument the model does not take.
        CheckpointError (a ``ScnetError``): a checkpoint that cannot be read, weights that do not fit
            (``WeightsMismatchError``), or a detection or pose checkpoint, naming the command that runs it.
    """
    validate_model_name(name)
    _check_arguments(pretrained, checkpoint, num_classes, kwargs)
    check_unpooled_head(name, kwargs.get('global_pool'), num_classes, bool(kwargs.get('features_only')))
    if name in BASELINES:  # timm's own models: the zoo's checks run in scnet.models.zoo for timm.create_model too
        check_stages(name, kwargs)
        if kwargs.get('norm_layer') is not None:  # one over the last dimension builds, and fails at the first forward
            check_norm_takes_maps(kwargs['norm_layer'], 64, name)
        if kwargs.get('features_only') and 'out_indices' in kwargs:
            check_out_indices(name, kwargs['out_indices'], feature_levels(kwargs))
    if pretrained and checkpoint:
        raise InvalidArgumentError('pass either pretrained=True (the ImageNet weights) or checkpoint=PATH (a file), '
                                   'not both')
    state_dict = read_checkpoint(checkpoint) if checkpoint else None  # fail before building on a bad file
    if checkpoint:
        kwargs = {**_recorded_options(name, checkpoint), **kwargs}
    saved_classes = state_dict['fc.weight'].shape[0] if state_dict and 'fc.weight' in state_dict else None
    new_head = num_classes is not None and saved_classes is not None and num_classes != saved_classes
    if num_classes is None:
        num_classes = saved_classes or 1000
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    except ScnetError:  # already names the problem and the way out
        raise
    except TypeError as e:
        bad = [k for k in kwargs if f"'{k}'" in str(e)]
        if bad and name in BASELINES and set(bad) & set(SC_OPTIONS):
            raise InvalidArgumentTypeError(f'{name} has no SC-Conv layers, so it takes none of {", ".join(bad)}; '
                                           f'SC models: {", ".join(list_models("*sc*"))}') from None
        if 'norm_layer' in kwargs and 'required positional argument' in str(e):  # e.g. nn.GroupNorm itself
            raise InvalidArgumentTypeError(
                f'{name}: norm_layer={kwargs["norm_layer"]!r} cannot be built from a channel count alone ({e}; timm\'s '
                'ResNet keeps only the keyword arguments of a functools.partial); for GroupNorm pass '
                'functools.partial(timm.layers.GroupNorm, num_groups=8) or timm\'s name \'groupnorm\'') from None
        if 'norm_layer' in kwargs and "unexpected keyword argument 'device'" in str(e):
            raise InvalidArgumentTypeError(  # e.g. 'frozenbatchnorm2d', torchvision's FrozenBatchNorm2d
                f'{name}: norm_layer={kwargs["norm_layer"]!r} takes no device argument, which timm\'s ResNet gives '
                'every norm it builds; for frozen BatchNorm build the model with its BatchNorm and freeze it '
                'afterwards: timm.layers.freeze_batch_norm_2d(model)') from None
        if 'aa_layer' in kwargs and 'issubclass()' in str(e):  # timm's ResNet tests the class, takes no name
            raise InvalidArgumentTypeError(
                f'{name}: aa_layer must be a class (anti-aliased downsampling, e.g. timm.layers.BlurPool2d), '
                f'got {kwargs["aa_layer"]!r}') from None
        unexpected = [k for k in bad if 'unexpected keyword argument' in str(e)]
        if unexpected:
            raise _unknown_argument(name, unexpected[0], kwargs) from None
        raise InvalidArgumentTypeError(f'{name}: {e}') from None
    except OSError as e:  # timm's weights of a baseline: no network and no cached copy (Hugging Face Hub's error)
        if not pretrained:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f'{name}: cannot get timm\'s pretrained weights ({first}); download them where there '
                              'is network (Hugging Face Hub caches them), or load a local copy with checkpoint=PATH '
                              'instead of pretrained=True') from None
    except ValueError as e:
        if 'norm_layer' not in kwargs or not any(w in str(e) for w in ('num_groups', 'num_channels')):
            raise
        raise InvalidArgumentError(  # e.g. timm's GroupNorm of 32 groups on the 8-channel stem of a narrow network
            f'{name}: norm_layer={kwargs["norm_layer"]!r} cannot normalise every layer of this network '
            f'({str(e).strip()}); pass a norm that fits them, e.g. functools.partial(timm.layers.GroupNorm, '
            'num_groups=8), or widen the network (larger channels=)') from None
    except (KeyError, AssertionError) as e:
        error = _layer_name_error(name, e, kwargs)
        if error is None:
            raise
        raise error from None
    if state_dict is not None:
        try:
            load_into(model, state_dict, source=str(checkpoint), new_head=new_head)
        except WeightsMismatchError as e:
            widths = _widths_that_fit(name, model, state_dict, kwargs, num_classes, new_head)
            if widths is None:
                raise
            raise WeightsMismatchError(
                e.source, name, f'its stages are channels={widths} wide, where this {name} has '
                f'{_stage_widths(model.state_dict(), model)}, and it records no model options: pass channels={widths}',
                e.keys, {'channels': widths}) from None
        # said once the body has loaded: a checkpoint of another network fails above with its own error, and
        # announcing a fine-tuning head before that error would point the user the wrong way
        if new_head and num_classes:  # num_classes=0 (a backbone) drops the head on purpose
            warnings.warn(f'{checkpoint} has {saved_classes} classes and the model {num_classes}: its classifier '
                          'is not loaded, the new one is freshly initialised (fine-tuning)', stacklevel=2)
    return model

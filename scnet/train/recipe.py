"""Training recipes: every setting of a run in one dataclass, read from YAML files and overridden by flags.

A run's own ``config.json`` reads back as a recipe too (what ``--resume`` continues with: flags given on resume
change it, a recipe file given on resume may only repeat it, ``RecipeReader.load_resumed``). Every setting is
checked to be of its field's type first (``typed_settings``), so ``epochs: two`` is one line, not a traceback.

The files in ``scnet/recipes/`` are the paper's section 4.1 settings, one per row of Tables 1-3 that the zoo
builds. A file may name a ``base:`` file whose settings it extends. ``lr`` left empty means the paper's rule:
0.1 for a batch of 256, scaled linearly with the (global) batch size.

Beyond the paper, a recipe can start from pretrained weights (``pretrained``, ``init``: fine-tuning) and use
the modern options built from timm's parts: ``optimizer`` (SGD, AdamW, LAMB via ``timm.optim``), ``loss``
(cross-entropy or binary cross-entropy, ``timm.loss``), ``auto_augment`` / ``reprob`` (``timm.data``),
``mixup`` / ``cutmix`` (``timm.data.Mixup``), ``ema_decay`` (``timm.utils.ModelEmaV3``), ``drop_path_rate``,
``grad_clip`` (``torch.nn.utils.clip_grad_norm_``) and an evaluation size (``eval_image_size``) above the
training one. Their defaults leave a run as the paper's.

``RecipeReader`` reads every kind of recipe (these, ``scnet.tasks.detection``'s and ``scnet.tasks.pose``'s)
the same way: ``base:`` chains, unknown settings refused, flags on top, a run's ``config.json`` read back.
"""
from __future__ import annotations

import dataclasses
import json
import os
import typing
from collections import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Generic, Iterable, List, Mapping, Optional, Sequence, Tuple, Type, TypeVar

import yaml

from scnet.data.transforms import AUGMENTATIONS, check_auto_augment
from scnet.errors import ScnetError

__all__ = ['Recipe', 'RecipeError', 'RecipeReader', 'RECIPES_DIR', 'list_recipes', 'load_recipe', 'load_resumed_recipe',
           'SCHEDULES', 'check_settings', 'device_check', 'run_checks', 'seed_check', 'optimizer_checks',
           'typed_settings']

RECIPES_DIR = Path(__file__).resolve().parent.parent / 'recipes'
SCHEDULES = ('step', 'cosine')
#: Optimisers (timm.optim.create_optimizer_v2 builds them).
OPTIMIZERS = ('sgd', 'adamw', 'lamb')
#: Losses: cross-entropy (soft-target with mixup/cutmix), binary cross-entropy (timm.loss.BinaryCrossEntropy).
LOSSES = ('ce', 'bce')
#: What a run's config.json records beside its recipe (so that it can be read back as a recipe).
RUN_RECORD_KEYS = ('classes', 'data_root', 'world_size', 'peak_lr', 'mean', 'std', 'initial_weights')
R = TypeVar('R')


class RecipeError(ScnetError):
    """A recipe file or setting that cannot be used."""


def check_settings(checks: Iterable[Tuple[bool, str]]) -> None:
    """Raise one ``RecipeError`` naming every failed ``(ok, message)`` check of a recipe's ``validate``."""
    problems = [message for ok, message in checks if not ok]
    if problems:
        raise RecipeError('invalid settings: ' + '; '.join(problems))


def device_check(device: str) -> Tuple[bool, str]:
    """The ``(ok, message)`` check of a recipe's ``device``: auto, cpu, cuda or cuda:N."""
    return (device in ('auto', 'cpu', 'cuda') or (device.startswith('cuda:') and device[5:].isdigit()),
            f'device must be auto, cpu, cuda or cuda:N, got {device!r}')


def seed_check(seed: int) -> Tuple[bool, str]:
    """The ``(ok, message)`` check of a recipe's ``seed``: what ``--seed`` takes, and NumPy can be seeded with."""
    return 0 <= seed < 2 ** 32, f'seed must be between 0 and {2 ** 32 - 1}, got {seed}'


def run_checks(epochs: int, batch_size: int, lr: float, workers: int, device: str,
               seed: int = 0) -> List[Tuple[bool, str]]:
    """The ``(ok, message)`` checks of the settings every kind of run has: its length, batch, (peak) learning
    rate, data-loading processes, device and random seed."""
    return [(epochs >= 1, f'epochs must be >= 1, got {epochs}'),
            (batch_size >= 1, f'batch_size must be >= 1, got {batch_size}'),
            (lr > 0, f'lr must be > 0, got {lr}'),
            (workers >= 0, f'workers must be >= 0, got {workers}'),
            device_check(device), seed_check(seed)]


def optimizer_checks(momentum: float, weight_decay: float, lr_gamma: float) -> List[Tuple[bool, str]]:
    """The ``(ok, message)`` checks of the optimiser and decay settings every kind of run has: out of range,
    torch's optimisers stop with a ``ValueError`` traceback (momentum, weight decay) or the run silently climbs
    the loss (a negative lr after a decay)."""
    return [(momentum >= 0, f'momentum must be >= 0, got {momentum}'),
            (weight_decay >= 0, f'weight_decay must be >= 0, got {weight_decay}'),
            (lr_gamma > 0, f'lr_gamma must be > 0, got {lr_gamma}')]


@dataclass
class Recipe:
    """Everything that defines a training run (what ``config.json`` of the run records)."""

    model: str = 'scnet50'
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    data: Optional[str] = None            # None: the embedded dataset
    epochs: int = 100
    batch_size: int = 256                 # global: over all processes and accumulation steps
    accum_steps: int = 1
    lr: Optional[float] = None            # None: base_lr * batch_size / 256
    base_lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    schedule: str = 'step'                # 'step': lr x lr_gamma every lr_step epochs; 'cosine'
    lr_step: int = 30
    lr_gamma: float = 0.1
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    image_size: int = 224
    eval_resize: Optional[int] = None     # None: ImageNet's ratio to the evaluation crop, 256 for 224
    augment: str = 'random-resized-crop'
    aux_weight: float = 0.0               # > 0: side classifier after res3 (Fig. 5)
    seed: int = 0
    workers: int = 4
    device: str = 'auto'
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    skip_bad_images: bool = False
    checkpoint_every: int = 0             # > 0: save last.pt every N optimiser steps too (scnet.train.preemption)
    # fine-tuning: the initial weights (at most one of the two)
    pretrained: bool = False              # the authors' ImageNet weights (SC models), timm's (baselines)
    init: Optional[str] = None            # a checkpoint: model.safetensors, last.pt, or the authors' .pth
    # modern options (timm's parts); the defaults are the paper's
    optimizer: str = 'sgd'                # sgd (momentum, nesterov), adamw, lamb
    decay_norm_and_bias: bool = True      # False: no weight decay on norm weights and biases (timm's groups)
    loss: str = 'ce'                      # ce, bce
    bce_target_thresh: Optional[float] = None  # bce: targets above it become 1 (RSB: 0.2)
    auto_augment: Optional[str] = None    # timm policy (rand-m9-mstd0.5-inc1, original, augmix-...) or trivial
    reprob: float = 0.0                   # random erasing probability
    mixup: float = 0.0                    # mixup alpha (0: off)
    cutmix: float = 0.0                   # cutmix alpha (0: off)
    mixup_prob: float = 1.0               # probability that a batch is mixed at all
    mixup_switch_prob: float = 0.5        # with both on: probability of cutmix instead of mixup
    ema_decay: float = 0.0                # > 0: an EMA of the weights, evaluated each epoch, saved beside
    drop_path_rate: float = 0.0           # stochastic depth
    eval_image_size: Optional[int] = None  # None: image_size (RSB trains at 160 and tests at 224)
    grad_clip: Optional[float] = None     # clip the gradients' global L2 norm to this (None: no clipping)

    def __post_init__(self) -> None:
        # a crop of another size keeps ImageNet's resize / crop ratio: a fixed 256 would score the centre
        # eighth of a 32-px image enlarged, and refuse a 320-px crop (other types are left to validate())
        size = self.eval_size
        if self.eval_resize is None and isinstance(size, int) and not isinstance(size, bool):
            self.eval_resize = max(size, round(size * 256 / 224))

    @property
    def eval_size(self) -> int:
        return self.eval_image_size or self.image_size

    @property
    def mixes(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else self.base_lr * self.batch_size / 256

    def validate(self) -> 'Recipe':
        """The recipe itself, or one ``RecipeError`` naming every setting out of its range (``train`` calls
        it, after checking the settings' types)."""
        checks = [
            (self.epochs >= 1, f'epochs must be >= 1, got {self.epochs}'),
            (self.batch_size >= 1, f'batch_size must be >= 1, got {self.batch_size}'),
            (self.accum_steps >= 1, f'accum_steps must be >= 1, got {self.accum_steps}'),
            (self.accum_steps < 1 or self.batch_size % self.accum_steps == 0,
             f'batch_size {self.batch_size} must be divisible by accum_steps {self.accum_steps} (each accumulation '
             'step takes an equal part of the batch): change --batch-size or --accum-steps'),
            (self.peak_lr > 0, f'lr must be > 0, got {self.peak_lr}'),
            (self.schedule in SCHEDULES, f'schedule must be one of {SCHEDULES}, got {self.schedule!r}'),
            (self.lr_step >= 1, f'lr_step must be >= 1 (epochs between lr decays), got {self.lr_step}'),
            *optimizer_checks(self.momentum, self.weight_decay, self.lr_gamma),
            (self.warmup_epochs >= 0, f'warmup_epochs must be >= 0, got {self.warmup_epochs}'),
            (self.warmup_epochs <= self.epochs,
             f'warmup_epochs {self.warmup_epochs} is longer than the run ({self.epochs} epochs): the lr would never '
             f'reach its peak nor decay; give --warmup-epochs {self.epochs} or less (e.g. a tenth of the run)'),
            (0 <= self.label_smoothing < 1, f'label_smoothing must be in [0, 1), got {self.label_smoothing}'),
            (self.augment in AUGMENTATIONS, f'augment must be one of {AUGMENTATIONS}, got {self.augment!r}'),
            (self.aux_weight >= 0, f'aux_weight must be >= 0, got {self.aux_weight}'),
            (self.workers >= 0, f'workers must be >= 0, got {self.workers}'),
            (self.checkpoint_every >= 0, f'checkpoint_every must be >= 0 (0: after each epoch only), got '
                                         f'{self.checkpoint_every}'),
            (self.image_size >= 8, f'image_size must be >= 8, got {self.image_size}'),
            device_check(self.device),
            seed_check(self.seed),
            (not (self.pretrained and self.init), 'pretrained and init both given: start from one of them'),
            (self.optimizer in OPTIMIZERS, f'optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}'),
            (self.loss in LOSSES, f'loss must be one of {LOSSES}, got {self.loss!r}'),
            (check_auto_augment(self.auto_augment), f'auto_augment {self.auto_augment!r} is no timm policy '
                                                    '(e.g. rand-m9-mstd0.5-inc1, original, augmix-m5-w4-d2) '
                                                    'nor trivial'),
            (0 <= self.reprob <= 1, f'reprob must be in [0, 1], got {self.reprob}'),
            (self.mixup >= 0 and self.cutmix >= 0, f'mixup and cutmix must be >= 0, got {self.mixup}, {self.cutmix}'),
            (0 <= self.mixup_prob <= 1 and 0 <= self.mixup_switch_prob <= 1,
             'mixup_prob and mixup_switch_prob must be in [0, 1]'),
            (0 <= self.ema_decay < 1, f'ema_decay must be in [0, 1), got {self.ema_decay}'),
            (0 <= self.drop_path_rate < 1, f'drop_path_rate must be in [0, 1), got {self.drop_path_rate}'),
            (self.eval_image_size is None or self.eval_image_size >= 8,
             f'eval_image_size must be >= 8 (or left out: image_size), got {self.eval_image_size}'),
            (self.eval_resize >= self.eval_size,
             f'eval_resize (the short side before the centre crop) must be >= the evaluation crop '
             f'{self.eval_size} (eval_image_size, else image_size), got {self.eval_resize}: set it too, e.g. '
             f'--eval-resize {max(self.eval_size, round(self.eval_size * 256 / 224))} (ImageNet\'s ratio)'),
            (self.grad_clip is None or self.grad_clip > 0,
             f'grad_clip must be > 0 (or left out), got {self.grad_clip}'),
            (self.bce_target_thresh is None or 0 <= self.bce_target_thresh <= 1,
             f'bce_target_thresh must be in [0, 1], got {self.bce_target_thresh}'),
        ]
        check_settings(checks)
        return self

    def to_dict(self) -> Dict[str, Any]:
        """The settings as plain values (what a run's ``config.json`` records)."""
        return dataclasses.asdict(self)


_TYPE_NAMES = {bool: 'true or false', int: 'an integer', float: 'a number', str: 'a string', dict: 'a mapping',
               list: 'a list'}


def _typed(value: Any, hint: Any) -> Tuple[bool, Any, str]:
    """``(ok, value, expected)``: ``value`` as the type ``hint`` of its field wants it, where it is one.

    A YAML file gives any type for any key (``epochs: two``), and YAML 1.1 reads ``1e-4`` (no dot) as a
    string: the latter is taken as the number it spells; an integral float (``3.0``) as an integer. Types
    that are not plain (a class, a union of several) are left to the recipe's own checks.
    """
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Union:
        if value is None:
            return True, value, ''
        if len(args) != 1:
            return True, value, ''
        ok, value, expected = _typed(value, args[0])
        return ok, value, expected + ' (or null)'
    kind = typing.get_origin(hint) or hint
    kind = {typing.Dict: dict, typing.List: list, typing.Mapping: dict, typing.Sequence: list}.get(kind, kind)
    kind = dict if kind in (dict, abc.Mapping) else list if kind in (list, tuple, abc.Sequence) else kind
    expected = _TYPE_NAMES.get(kind, '')
    if kind is bool:
        return isinstance(value, bool), value, expected
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            return True, int(value), expected
        return isinstance(value, int) and not isinstance(value, bool), value, expected
    if kind is float:
        if isinstance(value, str):
            try:
                return True, float(value), expected
            except ValueError:
                return False, value, expected
        return isinstance(value, (int, float)) and not isinstance(value, bool), value, expected
    if kind is str:
        return isinstance(value, str), value, expected
    if kind is dict:
        return isinstance(value, dict), value, expected
    if kind is list:
        if not isinstance(value, (list, tuple)):
            return False, value, expected
        item = args[0] if len(args) == 1 and args[0] in (int, float) else None
        if item is None:  # a list of anything (or of a type the recipe's own checks read)
            return True, value, expected
        items = [_typed(v, item) for v in value]
        # (lr_steps: [16, 22], not [sixteen]: a comparison of a string with a number would be a TypeError)
        return all(ok for ok, _, _ in items), [v for _, v, _ in items], f'a list of {_LIST_OF[item]}'
    return True, value, ''


_LIST_OF = {int: 'integers', float: 'numbers'}


def typed_settings(recipe_type: type, settings: Mapping[str, Any]) -> Dict[str, Any]:
    """``settings`` checked against the field types of ``recipe_type`` (see ``_typed``): one ``RecipeError``
    naming each setting of the wrong type and the type it takes, rather than a ``TypeError`` traceback from the
    first comparison or arithmetic that meets it."""
    try:
        hints = typing.get_type_hints(recipe_type)
    except Exception:  # a hint that does not resolve: the recipe's own checks stand alone
        return dict(settings)
    typed, problems = {}, []
    for key, value in settings.items():
        ok, typed[key], expected = _typed(value, hints[key]) if key in hints else (True, value, '')
        if not ok:
            problems.append(f'{key} must be {expected}, got {value!r}')
    if problems:
        raise RecipeError('invalid settings: ' + '; '.join(problems))
    return typed


#: A setting that only one training command's runs record, and that command: a run's config.json given to
#: another command (``scnet train --output DET_RUN --resume``) is named as that command's.
_RUN_KINDS = {'anchor_sizes': 'scnet detect train', 'deconv_layers': 'scnet pose train',
              'label_smoothing': 'scnet train'}


class RecipeReader(Generic[R]):
    """How one kind of recipe is read: its dataclass, the folder of its shipped YAML files, and what a run's
    ``config.json`` records beside the recipe (dropped when the run's settings are read back as a recipe).

    A file may name a ``base:`` (a file beside it, or a shipped name) whose settings it extends; ``description:``
    is free text. Unknown settings are refused, naming the file and the known ones.
    """

    def __init__(self, recipe_type: Type[R], directory: Path, run_record_keys: Sequence[str] = (),
                 label: str = 'recipe') -> None:
        self.recipe_type = recipe_type
        self.directory = Path(directory)
        self.run_record_keys = tuple(run_record_keys)
        self.label = label                     # in messages: 'no such recipe file or shipped <label>'
        self.fields = frozenset(f.name for f in dataclasses.fields(recipe_type))

    def names(self) -> List[str]:
        """The shipped recipes (``--config NAME`` finds them)."""
        return sorted(p.stem for p in self.directory.glob('*.yaml'))

    def resolve(self, name_or_path: str, beside: Optional[Path] = None) -> Path:
        """A recipe file: ``name_or_path`` in ``beside`` (a base's folder), as a path, or a shipped name."""
        path = Path(name_or_path)
        if beside is not None and (beside / path).is_file():
            return beside / path
        if path.is_file():
            return path
        if path.parent == Path('.'):
            shipped = self.directory / (path.name if path.suffix == '.yaml' else f'{path.name}.yaml')
            if shipped.is_file():
                return shipped
        raise RecipeError(f'{name_or_path}: no such recipe file or shipped {self.label} (shipped: '
                          f'{", ".join(self.names())})')

    def read(self, config: Optional[str]) -> Dict[str, Any]:
        """The settings that ``config`` (a YAML file, a shipped name or a run's config.json) and its bases give."""
        settings: Dict[str, Any] = {}
        for layer in self.layers(config):
            settings.update(layer)
        return settings

    def layers(self, config: Optional[str]) -> List[Dict[str, Any]]:
        """The settings that ``config`` and each of its bases write, one mapping per file, the furthest base
        first (what ``read`` merges): for a rule that a file applies to its base as a flag applies to its file."""
        return self._read(self.resolve(config)) if config else []

    def _read(self, path: Path, seen: tuple = ()) -> List[Dict[str, Any]]:
        if path in seen:
            raise RecipeError(f'{path}: base recipes form a cycle: {" -> ".join(map(str, seen + (path,)))}')
        try:
            text = path.read_text(encoding='utf-8')
        except UnicodeDecodeError:
            raise RecipeError(f'{path}: a binary file, not a recipe (a YAML file of settings, or a run\'s '
                              'config.json); to start from a checkpoint\'s weights use --init') from None
        try:
            # a run's config.json is read as JSON: YAML 1.1 reads a float without a dot (1e-09) as a string
            data = (json.loads(text) if path.suffix == '.json' else yaml.safe_load(text)) or {}
        except json.JSONDecodeError as e:
            raise RecipeError(f'{path}: not valid JSON ({e})') from None
        except yaml.YAMLError as e:
            mark = getattr(e, 'problem_mark', None)
            where = f' at line {mark.line + 1}, column {mark.column + 1}' if mark is not None else ''
            problem = getattr(e, 'problem', None) or str(e).splitlines()[0]
            raise RecipeError(f'{path}: not valid YAML{where}: {problem}') from None
        if not isinstance(data, dict):
            raise RecipeError(f'{path}: a recipe is a mapping of settings, found {type(data).__name__}')
        if path.suffix == '.json':
            data = {k: v for k, v in data.items() if k not in self.run_record_keys}
        base = data.pop('base', None)
        data.pop('description', None)
        unknown = sorted(set(data) - self.fields)
        started_by = next((command for key, command in _RUN_KINDS.items() if key in data), None)
        if unknown and path.suffix == '.json' and started_by:
            raise RecipeError(f'{path}: the settings of a run of `{started_by}`, which this command cannot '
                              f'continue or start from; continue that run with `{started_by} --output {path.parent} '
                              '--resume`')
        if unknown:
            raise RecipeError(f'{path}: unknown setting(s) {", ".join(unknown)}; known: '
                              f'{", ".join(sorted(self.fields))}')
        if base:
            try:
                base_path = self.resolve(str(base), beside=path.parent)
            except RecipeError as e:
                raise RecipeError(f'{path}: base {e}') from None
            return [*self._read(base_path, seen + (path,)), data]
        return [data]

    def overrides(self, overrides: Mapping[str, Any]) -> Dict[str, Any]:
        """The ``overrides`` that are not None, checked to be settings."""
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = sorted(set(given) - self.fields)
        if unknown:
            raise RecipeError(f'unknown setting(s) {", ".join(unknown)}')
        return given

    def build(self, settings: Mapping[str, Any]) -> R:
        """The validated recipe of ``settings``, each first checked to be of its field's type."""
        settings = typed_settings(self.recipe_type, settings)
        try:
            recipe = self.recipe_type(**settings)
        except TypeError as e:
            raise RecipeError(str(e)) from None
        return recipe.validate()

    def load(self, config: Optional[str], overrides: Mapping[str, Any]) -> R:
        """The recipe of ``config`` with ``overrides`` (those not None) on top."""
        return self.build({**self.read(config), **self.overrides(overrides)})

    def load_resumed(self, saved: Path, config: Optional[str], overrides: Mapping[str, Any],
                     load: Callable[..., R]) -> R:
        """The recipe that continues the run whose settings are ``saved`` (its ``config.json``).

        The run's own settings are the base and ``overrides`` (flags given now) change them. A ``config`` (a
        recipe file) given too may only repeat them (``check_repeats``, which reads it with ``load``). Taking
        the file as the base instead, as a fresh run does, would silently undo what flags changed in the run (an
        ``--epochs`` that extended it ends it early) and reset every setting the file leaves out to its default.
        """
        base = typed_settings(self.recipe_type, self.read(str(saved)))
        given = self.overrides(overrides)
        if config:
            self.check_repeats(saved, config, overrides, load)
        return self.build({**base, **given})

    def check_repeats(self, saved: Path, config: str, overrides: Mapping[str, Any], load: Callable[..., R], *,
                      reread_run: bool = False) -> None:
        """Refuse a recipe file ``config`` given on ``--resume`` that changes a setting of the run (its
        ``config.json``, ``saved``) that no flag (``overrides``) sets now, naming both values.

        The file is read by ``load`` (the loader of this kind of recipe) as a fresh run reads it with the same
        flags (an ``--image-size`` also sets the evaluation resize; a task's ``--epochs`` moves the decay points),
        so the command that started the run, with ``--resume`` added, passes. ``reread_run``: the run's settings
        are read the same way (a task's resume moves the run's decay points with ``--epochs`` too), else as
        saved."""
        fresh = load(config, **overrides).to_dict()
        settings = {k: fresh[k] for k in self.read(config) if k in fresh}
        base = load(str(saved), **overrides).to_dict() if reread_run else \
            typed_settings(self.recipe_type, self.read(str(saved)))
        given = self.overrides(overrides)
        conflicts = [f'{key} {value!r} (the run: {base.get(key)!r})' for key, value in settings.items()
                     if key not in given and not _same_setting(key, value, base.get(key))]
        if conflicts:
            raise RecipeError(f'--config {config} sets {"; ".join(conflicts)}: on --resume the run\'s own '
                              f'settings ({saved}) are the base and flags given now change them; leave out '
                              '--config, or give each change as a flag')


def _same_setting(key: str, a: Any, b: Any) -> bool:
    """Whether two values of setting ``key`` are the same: a ``data`` path given relative to the working
    folder names the same data as the absolute one a run records."""
    if key == 'data' and isinstance(a, str) and isinstance(b, str):
        return os.path.abspath(a) == os.path.abspath(b)
    return a == b


_READER = RecipeReader(Recipe, RECIPES_DIR, RUN_RECORD_KEYS)


def list_recipes() -> List[str]:
    """Names of the recipes shipped in ``scnet/recipes`` (``--config NAME`` finds them)."""
    return _READER.names()


def load_recipe(config: Optional[str] = None, **overrides: Any) -> Recipe:
    """The recipe of ``config`` (a YAML path or a shipped name), with ``overrides`` (not None) on top.

    An evaluation crop changed by ``image_size`` or ``eval_image_size`` without an ``eval_resize`` keeps the
    recipe's ratio of resize to crop (ImageNet's 256 / 224): left at the recipe's 256, a 32-px crop would score
    a small centre patch of a much enlarged image, and a 320-px crop would be refused. The same holds for a
    file that changes its ``base:``'s crop.
    """
    settings: Dict[str, Any] = {}
    # the flags over the file as the file over its base: a file that changes its base's crop keeps its ratio too
    for layer in [*_READER.layers(config), _READER.overrides(overrides)]:
        settings = {**settings, **_keeping_resize_ratio(settings, layer)}
    return _READER.build(settings)


def _keeping_resize_ratio(before: Dict[str, Any], layer: Dict[str, Any]) -> Dict[str, Any]:
    """``layer`` (a file's settings, or the flags) over the settings ``before`` it, with an ``eval_resize`` in
    the ratio to the evaluation crop that ``before`` has, where ``layer`` changes that crop and sets none."""
    if not layer.keys() & {'image_size', 'eval_image_size'} or 'eval_resize' in layer:
        return layer
    try:
        written = Recipe(**typed_settings(Recipe, before))
    except (RecipeError, TypeError):
        return layer  # the checks of the whole recipe name what is wrong
    image_size = layer.get('image_size', written.image_size)
    eval_size = (layer['eval_image_size'] if 'eval_image_size' in layer else written.eval_image_size) or image_size
    if not isinstance(eval_size, int) or isinstance(eval_size, bool) or eval_size == written.eval_size:
        return layer
    return {**layer, 'eval_resize': max(eval_size, round(eval_size * written.eval_resize / written.eval_size))}


def load_resumed_recipe(saved: Path, config: Optional[str] = None, **overrides: Any) -> Recipe:
    """The recipe continuing the run whose ``config.json`` is ``saved``: its settings, ``overrides`` (not None)
    on top; ``config`` only where it repeats them (``RecipeReader.load_resumed``)."""
    return _READER.load_resumed(Path(saved), config, overrides, load_recipe)

"""Training recipes: every setting of a run in one dataclass, read from YAML files and overridden by flags.

A run's own ``config.json`` reads back as a recipe too (what ``--resume`` continues with).

The files in ``scnet/recipes/`` are the paper's section 4.1 settings, one per row of Tables 1-3 that the zoo
builds. A file may name a ``base:`` file whose settings it extends. ``lr`` left empty means the paper's rule:
0.1 for a batch of 256, scaled linearly with the (global) batch size.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import yaml

from scnet.data.transforms import AUGMENTATIONS
from scnet.errors import ScnetError

__all__ = ['Recipe', 'RecipeError', 'RECIPES_DIR', 'list_recipes', 'load_recipe', 'SCHEDULES']

RECIPES_DIR = Path(__file__).resolve().parent.parent / 'recipes'
SCHEDULES = ('step', 'cosine')
#: What a run's config.json records beside its recipe (so that it can be read back as a recipe).
RUN_RECORD_KEYS = ('classes', 'data_root', 'world_size', 'peak_lr', 'mean', 'std')


class RecipeError(ScnetError):
    """A recipe file or setting that cannot be used."""


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
    eval_resize: int = 256
    augment: str = 'random-resized-crop'
    aux_weight: float = 0.0               # > 0: side classifier after res3 (Fig. 5)
    seed: int = 0
    workers: int = 4
    device: str = 'auto'
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    skip_bad_images: bool = False

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else self.base_lr * self.batch_size / 256

    def validate(self) -> 'Recipe':
        checks = [
            (self.epochs >= 1, f'epochs must be >= 1, got {self.epochs}'),
            (self.batch_size >= 1, f'batch_size must be >= 1, got {self.batch_size}'),
            (self.accum_steps >= 1, f'accum_steps must be >= 1, got {self.accum_steps}'),
            (self.peak_lr > 0, f'lr must be > 0, got {self.peak_lr}'),
            (self.schedule in SCHEDULES, f'schedule must be one of {SCHEDULES}, got {self.schedule!r}'),
            (self.augment in AUGMENTATIONS, f'augment must be one of {AUGMENTATIONS}, got {self.augment!r}'),
            (self.aux_weight >= 0, f'aux_weight must be >= 0, got {self.aux_weight}'),
            (self.workers >= 0, f'workers must be >= 0, got {self.workers}'),
            (self.image_size >= 8, f'image_size must be >= 8, got {self.image_size}'),
            (self.device in ('auto', 'cpu', 'cuda') or self.device.startswith('cuda:'),
             f"device must be auto, cpu or cuda, got {self.device!r}"),
        ]
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise RecipeError('invalid settings: ' + '; '.join(problems))
        return self

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = {f.name for f in dataclasses.fields(Recipe)}


def list_recipes() -> list:
    """Names of the recipes shipped in ``scnet/recipes`` (``--config NAME`` finds them)."""
    return sorted(p.stem for p in RECIPES_DIR.glob('*.yaml'))


def _resolve(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.parent == Path('.'):
        shipped = RECIPES_DIR / (path.name if path.suffix == '.yaml' else f'{path.name}.yaml')
        if shipped.is_file():
            return shipped
    raise RecipeError(f'{name_or_path}: no such recipe file or shipped recipe (shipped: {", ".join(list_recipes())})')


def _read(path: Path, seen: tuple = ()) -> Dict[str, Any]:
    if path in seen:
        raise RecipeError(f'{path}: base recipes form a cycle: {" -> ".join(map(str, seen + (path,)))}')
    try:
        data = yaml.safe_load(path.read_text()) or {}  # YAML is a superset of JSON: a run's config.json too
    except yaml.YAMLError as e:
        raise RecipeError(f'{path}: not valid YAML ({e})') from None
    if isinstance(data, dict) and path.suffix == '.json':
        data = {k: v for k, v in data.items() if k not in RUN_RECORD_KEYS}
    if not isinstance(data, dict):
        raise RecipeError(f'{path}: a recipe is a mapping of settings, found {type(data).__name__}')
    base = data.pop('base', None)
    unknown = sorted(set(data) - _FIELDS - {'description'})
    if unknown:
        raise RecipeError(f'{path}: unknown setting(s) {", ".join(unknown)}; known: {", ".join(sorted(_FIELDS))}')
    data.pop('description', None)
    if base:
        base_path = (path.parent / base) if not Path(base).is_absolute() else Path(base)
        return {**_read(_resolve(str(base_path)), seen + (path,)), **data}
    return data


def load_recipe(config: Optional[str] = None, **overrides: Any) -> Recipe:
    """The recipe of ``config`` (a YAML path or a shipped name), with ``overrides`` (not None) on top."""
    settings = _read(_resolve(config)) if config else {}
    settings.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(settings) - _FIELDS)
    if unknown:
        raise RecipeError(f'unknown setting(s) {", ".join(unknown)}')
    try:
        recipe = Recipe(**settings)
    except TypeError as e:
        raise RecipeError(str(e)) from None
    return recipe.validate()

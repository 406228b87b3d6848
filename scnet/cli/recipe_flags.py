"""Command-line flags made from a recipe's fields, and the overrides read back from them.

A training command's flags are recipe settings under another spelling (``--batch-size`` is ``batch_size``).
Writing each flag and then copying each parsed value into the overrides by hand lets the two lists drift
apart (a flag that is parsed and never reaches the recipe); here a flag is declared once, on the recipe
field (``cli_flag`` in the field's metadata: its help and, where needed, its spelling), and the overrides
are every parsed value whose name is a field. argparse has no dataclass support of its own, and the
libraries that add it (simple-parsing, tyro) would own the whole parser, where these commands share
hand-written flags (``--output``, ``--resume``, ...) with the other commands.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Dict, Optional, Sequence

__all__ = ['cli_flag', 'add_recipe_flags', 'recipe_overrides']


def cli_flag(help: str, *, flag: Optional[str] = None, choices: Optional[Sequence[Any]] = None,
             negatable: bool = False) -> Dict[str, Any]:
    """The metadata of a recipe field that is also a flag: ``field(default=..., metadata=cli_flag(...))``.

    ``flag``: its spelling when not ``--`` + the field's name with dashes; ``negatable``: a boolean with both
    ``--x`` and ``--no-x``. The value is parsed as the field's type (int, float, str; text for any other, which
    the recipe's own checks then read, as they read a YAML file's).
    """
    return {'cli': dict(help=help, flag=flag, choices=choices, negatable=negatable)}


def _value_type(hint: Any) -> Any:
    """``Optional[X]`` -> ``X``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) is typing.Union and len(args) == 1 else hint


def add_recipe_flags(p: argparse.ArgumentParser, recipe_type: type, names: Sequence[str], *,
                     required: bool = False) -> None:
    """Add the flags of ``recipe_type``'s fields ``names`` (each declared with ``cli_flag``) to ``p``.

    Left out, a flag is None, so that the recipe's value stands. A boolean field is ``--x`` when it defaults
    to false and ``--no-x`` when it defaults to true (both with ``negatable``).
    """
    hints = typing.get_type_hints(recipe_type)
    fields = {f.name: f for f in dataclasses.fields(recipe_type)}
    for name in names:
        spec = fields[name].metadata['cli']
        kind = _value_type(hints[name])
        flag = spec['flag'] or '--' + name.replace('_', '-')
        if kind is bool:
            if spec['negatable']:
                p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None,
                               help=spec['help'])
            elif fields[name].default is True:
                p.add_argument(spec['flag'] or '--no-' + name.replace('_', '-'), dest=name, action='store_false',
                               default=None, help=spec['help'])
            else:
                p.add_argument(flag, dest=name, action='store_true', default=None, help=spec['help'])
            continue
        metavar = None if spec['choices'] else flag[2:].upper().replace('-', '_')
        p.add_argument(flag, dest=name, metavar=metavar, type=kind if kind in (int, float, str) else str,
                       choices=spec['choices'], required=required, help=spec['help'])


def recipe_overrides(args: argparse.Namespace, recipe_type: type) -> Dict[str, Any]:
    """Every parsed value of ``args`` whose name is a field of ``recipe_type`` (None: not given)."""
    names = {f.name for f in dataclasses.fields(recipe_type)}
    return {k: v for k, v in vars(args).items() if k in names}

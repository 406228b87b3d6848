"""Argument types that refuse impossible values while the command line is parsed.

A batch size of 0, a negative image size or a JSON report aimed at a folder would otherwise surface minutes
later, deep inside a data loader, a transform or ``open()``, after the work they were meant to hold (an
evaluation, a training epoch) is done and lost. argparse calls these types before anything runs and prints
their message as ``scnet CMD: error: argument --flag: ...`` with exit status 2, the way it reports a bad
choice. argparse has range checks for none of this, hence these few functions.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

__all__ = ['positive_int', 'non_negative_int', 'positive_float', 'non_negative_float', 'unit_float', 'seed',
           'report_file', 'output_folder']


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not a whole number') from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not a number') from None
    if value != value or value in (float('inf'), float('-inf')):
        raise argparse.ArgumentTypeError(f'{text!r} is not a finite number')
    return value


def _number(parse: Callable[[str], Any], within: Callable[[Any], bool], requirement: str, doc: str):
    """An argument type: ``parse`` the text, then refuse a value outside ``within`` as "must be <requirement>"."""
    def convert(text: str):
        value = parse(text)
        if not within(value):
            raise argparse.ArgumentTypeError(f'must be {requirement}, got {text.strip()}')
        return value

    convert.__doc__ = doc
    return convert


positive_int = _number(_int, lambda v: v >= 1, 'at least 1',
                       'A count or size that must be at least 1 (batch sizes, epochs, repeats, image sides).')
non_negative_int = _number(_int, lambda v: v >= 0, '0 or more',
                           'A count where 0 means none (data loading workers, warm-up rounds).')
positive_float = _number(_float, lambda v: v > 0, 'above 0', 'A rate or scale that must be above 0 (a learning rate).')
non_negative_float = _number(_float, lambda v: v >= 0, '0 or more',
                             'A weight or alpha where 0 means off (weight decay, mixup alpha, a loss weight).')
seed = _number(_int, lambda v: 0 <= v < 2 ** 32, f'between 0 and {2 ** 32 - 1}',
               'A random seed: what Python, NumPy and torch can all be seeded with (NumPy takes 32 bits).')
unit_float = _number(_float, lambda v: 0.0 <= v <= 1.0, 'between 0 and 1',
                     'A probability, score threshold or opacity: between 0 and 1, both included.')


def _writable(folder: Path) -> Optional[str]:
    """None if a file can be created in the existing ``folder``, else why not. Tried for real (a file created and
    removed at once): permission bits do not tell for root, read-only mounts or immutable folders."""
    try:
        fd, probe = tempfile.mkstemp(prefix='.scnet-write-test-', dir=folder)
    except OSError as e:
        return e.strerror or type(e).__name__
    os.close(fd)
    os.unlink(probe)
    return None


def _check_writable(text: str, folder: Path) -> None:
    """Refuse an output whose nearest existing folder (``folder`` or the first of its parents that exists) takes
    no new file, before the work whose result would be lost."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    problem = _writable(existing) if existing is not None and existing.is_dir() else None
    if problem:
        raise argparse.ArgumentTypeError(f'{text}: cannot write into {existing} ({problem}); choose a folder you '
                                         'can write to')


def report_file(text: str) -> str:
    """A file a command writes its result to, after the work: in a folder that exists and takes new files, not a
    folder itself, and not an existing file other than an earlier JSON report (someone's notes stay)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f'{text} is a folder; give a file name, e.g. {path / "result.json"}')
    folder = path.parent
    if not folder.is_dir():
        what = 'is a file' if folder.exists() else 'does not exist'
        raise argparse.ArgumentTypeError(f'folder {folder} {what}; create the folder first or choose another path')
    _check_writable(text, folder)
    if path.is_file() and not _is_earlier_report(path):
        raise argparse.ArgumentTypeError(f'{text} exists and is not an earlier report of scnet (which the command would '
                                         'replace): choose another file name')
    return text


_DATASET_KEYS = ('images', 'annotations', 'categories')
#: The JSON files of a training run's folder, and the files (with the run's lock) that mark a folder as a run's.
_RUN_FILES = ('config.json', 'metrics.jsonl')
_RUN_MARKERS = ('last.pt', 'model.safetensors')


def _is_earlier_report(path: Path) -> bool:
    """Whether ``path`` holds what a command's report looks like, which a new one may replace: a JSON object
    that is not a COCO dataset, or a list of COCO results (``pose eval --results``). Anything else (notes,
    annotations, a list of something else) is someone's file. Read whole."""
    from scnet.train.run_folder import LOCK_NAME

    if path.suffix == '.jsonl' or (path.name in _RUN_FILES and any((path.parent / name).exists()
                                                                  for name in (*_RUN_MARKERS, LOCK_NAME))):
        return False  # a training run's own record (metrics.jsonl of one epoch is one JSON object)
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, OSError):
        return False
    if isinstance(data, dict):
        return not any(key in data for key in _DATASET_KEYS)
    if isinstance(data, list):
        return all(isinstance(entry, dict) and 'image_id' in entry for entry in data)
    return False


def output_folder(text: str) -> str:
    """A folder a command writes into: refused when it is a file (or lies under one), or when it (or, for a new
    one, the folder it would be made in) takes no new file, since writing would fail only after the work."""
    path = Path(text)
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            what = 'is a file' if p == path else f'lies under {p}, which is a file'
            raise argparse.ArgumentTypeError(f'{text} {what}, not a folder; choose another output folder')
    _check_writable(text, path)
    return text


class ModelKwargs(argparse.Action):
    """``--model-kwargs KEY=VALUE ...``: model options as timm's scripts take them (``timm.utils.ParseKwargs``:
    each value a Python literal, else a string), with a malformed item reported as a usage error naming it
    where timm's action raises a ValueError from inside argparse."""

    def __call__(self, parser, namespace, values, option_string=None):
        from timm.utils import ParseKwargs

        malformed = [v for v in values if '=' not in v or not v.split('=', 1)[0].isidentifier()]
        if malformed:
            raise argparse.ArgumentError(self, f'{malformed[0]!r} is not KEY=VALUE (e.g. channels=16,32,64,128)')
        ParseKwargs(self.option_strings, self.dest)(parser, namespace, values, option_string)


def add_model_kwargs_flag(parser: argparse.ArgumentParser) -> None:
    """``--model-kwargs``: options of the network that its checkpoint does not record (a ``scnet train``
    checkpoint records them; weights saved otherwise do not)."""
    parser.add_argument('--model-kwargs', nargs='+', action=ModelKwargs, default={}, metavar='KEY=VALUE',
                        help='create_model options for weights that do not record them, e.g. channels=16,32,64,128 '
                             '(each value a Python literal; they override what the checkpoint records)')

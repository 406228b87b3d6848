"""Flags that the training and evaluation commands share (``scnet train``, ``scnet eval``, ``scnet detect ...``,
``scnet pose ...``), with the same meaning and help everywhere, and the ``--resume`` rule of the training ones."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

from scnet.cli.arg_types import non_negative_int, output_folder, positive_int, report_file, seed

__all__ = ['DEVICES', 'add_run_flags', 'add_report_flags', 'print_report', 'add_eval_flags', 'add_device_flag',
           'add_quiet_flag', 'run_config', 'write_report', 'check_outputs_are_not_inputs']

DEVICES = ('auto', 'cpu', 'cuda')


def add_run_flags(p: argparse.ArgumentParser, *, output_default: str, seed_help: str) -> None:
    """``--output``, ``--resume``, ``--seed``, ``--workers``, ``--device`` of a training command.

    ``output_default``: the run folder without ``--output`` (for the help); ``seed_help``: what the seed decides.
    Everything left out is None, so that the recipe's value stands.
    """
    p.add_argument('--output', type=output_folder, help=f'run folder (default: {output_default})')
    p.add_argument('--resume', action='store_true', help='continue the run in --output from its last.pt')
    p.add_argument('--seed', type=seed, help=f'random seed ({seed_help})')
    p.add_argument('--workers', type=non_negative_int, help='data loading processes per training process')
    p.add_argument('--device', choices=DEVICES, help='device (default: cuda if available)')


def add_report_flags(p: argparse.ArgumentParser, *, what: str = 'result') -> None:
    """``--format`` (table or json on stdout) and ``--output`` (the ``what`` as a JSON file) of an evaluation."""
    p.add_argument('--format', choices=('table', 'json'), default='table', help='output format')
    p.add_argument('--output', type=report_file, help=f'also write the {what} as JSON to this file')


def print_report(args: argparse.Namespace, result: Dict[str, Any], table: Callable[[Dict[str, Any]], str]) -> int:
    """An evaluation's ``result`` as ``add_report_flags`` asked: also written to ``--output``, printed as JSON or
    as ``table(result)``; under torchrun by process 0 only (every process has the result)."""
    if os.environ.get('RANK', '0') != '0':
        return 0
    # printed first: a --output that cannot be written then loses no evaluation
    print(json.dumps(result, indent=2) if args.format == 'json' else table(result), flush=True)
    if args.output:
        write_report(Path(args.output), result)
    return 0


def check_outputs_are_not_inputs(args: argparse.Namespace, outputs: Dict[str, str], inputs: Dict[str, str]) -> None:
    """Refuse, before any work, an output file (``--output``, ``--results``) that is one of the files the command
    reads (``--boxes``, ``--val-ann``), or two outputs that are one file: the file read would be replaced.
    ``outputs`` and ``inputs`` map each argument's ``dest`` to its flag."""
    from scnet.errors import ScnetError

    def given(flags: Dict[str, str], what: str):
        return [(flag, getattr(args, dest), what) for dest, flag in flags.items() if getattr(args, dest, None)]

    written, read = given(outputs, 'also writes'), given(inputs, 'reads')
    for k, (flag, path, _) in enumerate(written):
        for other, other_path, what in read + written[k + 1:]:
            if Path(path).resolve() == Path(other_path).resolve():
                raise ScnetError(f'{flag} {path} is the file of {other}, which the command {what}: writing {flag} '
                                 f'would replace it; give {flag} another file name')


def write_report(path: Path, result: Dict[str, Any]) -> None:
    """Write ``result`` as JSON to ``path`` (``--output``), after the caller printed it: a path that cannot be
    written is one line (``ScnetError``) saying that the result is above and how to write it, not a traceback."""
    from scnet.errors import ScnetError

    try:
        Path(path).write_text(json.dumps(result, indent=2))
    except OSError as e:
        raise ScnetError(f'--output {path}: cannot write the result ({e.strerror or e}); it is printed above; '
                         'give a writable --output (its folder must exist)') from None


def add_eval_flags(p: argparse.ArgumentParser, *, batch_size: int, batch_help: str, workers: int) -> None:
    """``--batch-size``, ``--workers``, ``--device`` of an evaluation command, with their defaults. The
    workers default to ``workers`` or the machine's CPU count if smaller: an evaluation's result does not depend
    on them, and more loader processes than cores only make PyTorch warn and the machine thrash."""
    p.add_argument('--batch-size', type=positive_int, default=batch_size, help=f'{batch_help} (default {batch_size})')
    p.add_argument('--workers', type=non_negative_int, default=min(workers, os.cpu_count() or 1),
                   help=f'data loading processes (default {workers}, or the CPU count if smaller)')
    add_device_flag(p)


def add_device_flag(p: argparse.ArgumentParser) -> None:
    """``--device`` of a command that runs a checkpoint (default auto: cuda if available)."""
    p.add_argument('--device', choices=DEVICES, default='auto', help='device')


def add_quiet_flag(p: argparse.ArgumentParser, *, bars: bool = False) -> None:
    """``--quiet``: no progress bar (``bars``: the command shows several, e.g. training and evaluation)."""
    p.add_argument('--quiet', action='store_true', help='no progress bars' if bars else 'no progress bar')


def run_config(args: argparse.Namespace, default: Optional[str] = None,
               check_repeats: Optional[Callable[..., None]] = None,
               overrides: Optional[Dict[str, Any]] = None) -> Optional[str]:
    """The recipe a training command reads: ``--config``; with ``--resume``, the run's own ``config.json``
    (flags given now still override it), where a ``--config`` given too may only repeat the run's settings
    (``check_repeats(saved, config, **overrides)`` refuses one that changes them); otherwise ``default``."""
    from scnet.train.run_folder import RunError

    if args.resume:
        if not args.output:
            raise RunError('--resume needs --output DIR, the folder of the run to continue')
        saved = Path(args.output) / 'config.json'
        if saved.is_file() and (args.config is None or check_repeats is not None):
            if args.config is not None:
                check_repeats(saved, args.config, **(overrides or {}))
            return str(saved)  # the run's own settings; flags given now still override them
        return args.config
    return default if args.config is None else args.config


def check_run_config(args: argparse.Namespace, overrides: Dict[str, Any], keys: Sequence[str]) -> None:
    """On ``--resume``, make the run's ``config.json`` the one its ``last.pt`` belongs to, before the recipe is
    read from it (``scnet train``, ``detect train`` and ``pose train``). Without this, a default or damaged
    recipe would be compared with the run's and the difference blamed on flags nobody gave.

    A missing one (only ``last.pt`` copied to another machine) is written back from the copy of the settings
    that ``last.pt`` keeps. One damaged or edited since the run wrote it is refused, naming the file: not JSON,
    not an object, or one of ``keys`` (the settings a run keeps to its end) unlike ``last.pt``'s where no flag
    given now sets it (``overrides``: the flags' values by recipe setting, None where not given)."""
    from scnet.errors import ScnetError
    from scnet.train.run_folder import RunError
    from scnet.train.state import load_state

    if not (getattr(args, 'resume', False) and args.output):
        return
    saved, last = Path(args.output) / 'config.json', Path(args.output) / 'last.pt'
    if not last.is_file():
        return  # nothing to resume: the run folder says so
    way_out = f'delete it (--resume then restores it from {last}) or put back what the run wrote'
    written = None
    if saved.exists() and not saved.is_file():
        return  # not a file: the recipe reader says so
    if saved.is_file():
        try:
            written = json.loads(saved.read_text(encoding='utf-8'))
        except (ValueError, UnicodeDecodeError) as e:
            raise RunError(f'{saved}: not valid JSON ({e}); {way_out}') from None
        if not isinstance(written, dict):
            raise RunError(f'{saved} holds a JSON {type(written).__name__}, not the run\'s settings; {way_out}')
    try:
        recorded = load_state(last, mmap=True).get('config')  # the settings alone: no tensor is read
    except (ScnetError, AttributeError):
        return  # not a training state: the run's own checks say so, in their words
    if not isinstance(recorded, dict) or not recorded:
        return
    if written is None:
        saved.write_text(json.dumps(recorded, indent=2))
        print(f'scnet {args.command}: {saved} was missing: restored from the settings {last} records',
              file=sys.stderr)
        return
    for key in keys:
        if overrides.get(key) is None and key in recorded and written.get(key) != recorded[key]:
            has = f'{key} {written[key]!r}' if key in written else f'no {key}'
            raise RunError(f'{saved} has {has}, the run (last.pt) {recorded[key]!r}: the file was changed after '
                           f'the run wrote it; {way_out}')

"""Entry point of the ``scnet`` command: builds the parser from the sub-command modules and turns scnet's
input errors into one readable line (exit status 2) instead of a traceback."""
from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import sys
from typing import List, Optional

from scnet.allocator import tune_cpu_allocator
from scnet.errors import ScnetError
from scnet.memory_ceiling import memory_ceiling

#: Sub-commands, each a module of ``scnet.cli`` with ``add_parser(subparsers)`` setting ``run``.
COMMANDS = ('models', 'profile', 'convert', 'train', 'eval', 'plot', 'pose', 'cam', 'features', 'erf', 'detect',
            'export', 'benchmark', 'shards')
#: Commands that run one job of the sizes their flags give, where a size beyond the machine should fail with
#: an error rather than the kernel's kill (``scnet.memory_ceiling``). Runs that train or evaluate for long
#: keep the whole machine: memory freed by other processes during the run stays theirs to use.
SIZED_BY_FLAGS = ('profile', 'cam', 'features', 'erf', 'export', 'benchmark')


def build_parser() -> argparse.ArgumentParser:
    from scnet import __version__

    parser = argparse.ArgumentParser(
        prog='scnet', description='Self-calibrated convolutions (SCNet, CVPR 2020): models, weights, complexity.')
    parser.add_argument('--version', action='version', version=f'scnet-torch {__version__}')
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
    for name in COMMANDS:
        importlib.import_module(f'scnet.cli.{name}').add_parser(sub)
    return parser


def _out_of_memory(args: argparse.Namespace, text: str) -> int:
    size_flag = '--input-size' if hasattr(args, 'input_size') else '--image-size'
    print(f'scnet {args.command}: error: out of memory ({text}); use a smaller --batch-size or {size_flag}',
          file=sys.stderr)
    return 2


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    tune_cpu_allocator()  # the command owns its process: freed tensors' memory is reused, not faulted in again
    try:
        with memory_ceiling() if args.command in SIZED_BY_FLAGS else contextlib.nullcontext():
            return int(args.run(args) or 0)
    except (ScnetError, FileNotFoundError) as e:
        stopped = getattr(e, 'exit_status', None)  # a run stopped by SIGTERM (``Preempted``): what it saved
        print(f'scnet {args.command}: {"" if stopped else "error: "}{e}', file=sys.stderr)
        return stopped or 2
    except OSError as e:  # a folder that takes no file, a file where a folder belongs, a full disk
        if e.errno == errno.ENOMEM:
            return _out_of_memory(args, e.strerror or str(e))
        where = ' '.join(str(f) for f in (e.filename, e.filename2) if f)
        print(f'scnet {args.command}: error: {where + ": " if where else ""}{e.strerror or e}; check the paths given '
              'and that their folders can be written', file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not (isinstance(e, MemoryError) or 'out of memory' in text.lower() or "can't allocate" in text):
            raise  # anything else is a bug, and its traceback is what a report needs
        return _out_of_memory(args, text)
    except KeyboardInterrupt:
        print(f'scnet {args.command}: interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())

"""Print, one per line, the uv arguments that name the package sources pip is configured with.

    python scripts/pip_sources.py        # e.g. --extra-index-url / file:///opt/pypi/simple / --find-links / ...

Why: scripts/setup.sh installs with uv where it can, and uv does not read pip's configuration files or PIP_*
variables. Machines that can only reach a mirror, a local index or a folder of wheels say so in that
configuration; this passes the same sources (index-url, extra-index-url, find-links, constraint) to uv, so
both installers see the same packages. The values come from `pip config list` (pip's own reading of its
files and of the environment); a setting in the environment wins over one in a file, and the ``install``
section over ``global``, as in pip.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from typing import Dict, List

#: pip's option -> uv's flag; the values of the multi-valued ones are separated by white space.
OPTIONS = {'index-url': '--index-url', 'extra-index-url': '--extra-index-url', 'find-links': '--find-links',
           'constraint': '--constraint'}
#: Sections of `pip config list`, least specific first.
SECTIONS = ('global', 'install', ':env:')


def parse_config_list(text: str) -> Dict[str, str]:
    """``{option: value}`` from the lines ``section.option='value'`` of ``pip config list``."""
    chosen: Dict[str, tuple] = {}
    for line in text.splitlines():
        key, sep, value = line.partition('=')
        section, _, option = key.strip().rpartition('.')
        if not sep or section not in SECTIONS or option not in OPTIONS:
            continue
        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            value = value.strip().strip('\'"')
        rank = SECTIONS.index(section)
        if option not in chosen or rank >= chosen[option][0]:
            chosen[option] = (rank, str(value))
    return {option: value for option, (_, value) in chosen.items()}


def uv_arguments(config: Dict[str, str]) -> List[str]:
    """The uv flags for pip's configured sources, in ``OPTIONS`` order."""
    args: List[str] = []
    for option, flag in OPTIONS.items():
        for value in config.get(option, '').split():
            args += [flag, value]
    return args


def main() -> int:
    listing = subprocess.run([sys.executable, '-m', 'pip', 'config', 'list'], capture_output=True, text=True)
    if listing.returncode != 0:
        print(f'pip_sources.py: `pip config list` failed: {listing.stderr.strip()}', file=sys.stderr)
        return 1
    args = uv_arguments(parse_config_list(listing.stdout))
    if args:  # nothing configured: no line at all, so that the caller passes no empty argument
        print('\n'.join(args))
    return 0


if __name__ == '__main__':
    sys.exit(main())

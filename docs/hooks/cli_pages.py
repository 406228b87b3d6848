"""MkDocs hook: the generated pages of the docs site, so that none of them can drift from the code.

- ``cli/<command>.md``: one page per ``scnet`` sub-command, rendered from its real argparse parser
  (``scnet.cli.main.build_parser``): usage, description, every flag with its default, choices and help, the
  epilog, and the actions of ``scnet detect`` / ``scnet pose``.
- ``reference/<package>.md``: an mkdocstrings ``::: module`` entry for every module found on disk under
  ``scnet/``, so a module that is split or renamed changes the API reference without an edit here.
- tables of measured figures: a line ``<!-- benchmark-tables -->`` is replaced by the Markdown that
  ``benchmarks/tables.py`` renders from every ``benchmarks/results/*.json`` at build time, and a line
  ``<!-- benchmark-table: NAME.json -->`` by that one file's table.

Written by hand because no maintained MkDocs plugin renders argparse parsers (mkdocs-click is for click,
sphinx-argparse for Sphinx); argparse itself has no public API to walk a parser, so the walk reads its
``_actions`` / ``_action_groups``, which have been stable since Python 3.2.
"""
from __future__ import annotations

import argparse
import functools
import html
import importlib.util
import re
import sys
from pathlib import Path
from typing import Dict, List

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: nav entries (in mkdocs.yml) that the hook expands into a section of generated pages
CLI_INDEX = 'cli/index.md'
API_INDEX = 'reference/index.md'
TABLES_MARKER = '<!-- benchmark-tables -->'
#: one results file's table: ``<!-- benchmark-table: finetune_real.json -->`` (a path under benchmarks/results)
TABLE_MARKER = re.compile(r'<!-- benchmark-table: ([\w./-]+) -->')
#: sub-packages of scnet whose modules the API reference leaves out: the command line has its own pages
API_SKIP = ('scnet.cli',)


def _cell(text) -> str:
    """Text for a Markdown table cell: HTML-escaped, pipes escaped, on one line."""
    return html.escape(' '.join(str(text).split()), quote=False).replace('|', '\\|')


def _flag_row(action: argparse.Action) -> str:
    names = ', '.join(f'`{o}`' for o in action.option_strings) or f'`{action.metavar or action.dest}`'
    if action.option_strings and action.nargs != 0:
        metavar = action.metavar or action.dest.upper()
        if isinstance(metavar, tuple):
            metavar = ' '.join(metavar)
        names += f' `{metavar}`' if not action.choices else ''
    notes = []
    if action.choices and not isinstance(action, argparse._SubParsersAction):
        notes.append('one of ' + ', '.join(f'`{c}`' for c in action.choices))
    if action.nargs in ('*', '+'):
        notes.append('several values')
    if action.default not in (None, False, argparse.SUPPRESS) and action.nargs != 0:
        default = ' '.join(map(str, action.default)) if isinstance(action.default, (list, tuple)) else action.default
        notes.append(f'default `{default}`')
    if action.required and action.option_strings:
        notes.append('required')
    help_text = (action.help or '') % {'default': action.default, 'prog': ''} if action.help else ''
    extra = f' ({"; ".join(notes)})' if notes else ''
    return f'| {names} | {_cell(help_text + extra)} |'


def parser_markdown(parser: argparse.ArgumentParser, level: int = 2) -> str:
    """A parser as Markdown: usage, description, one table per argument group, epilog, then its sub-commands."""
    out: List[str] = ['```text', parser.format_usage().strip(), '```', '']
    if parser.description:
        out += [parser.description, '']
    subcommands: Dict[str, argparse.ArgumentParser] = {}
    for group in parser._action_groups:
        rows = []
        for action in group._group_actions:
            if isinstance(action, argparse._SubParsersAction):
                subcommands.update(action.choices)
                continue
            if action.help == argparse.SUPPRESS or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            rows.append(_flag_row(action))
        if rows:
            title = group.title[0].upper() + group.title[1:] if group.title else 'Options'
            out += [f'{"#" * level} {title}', '', '| argument | what |', '| --- | --- |', *rows, '']
    if parser.epilog:
        out += ['```text', parser.epilog.strip(), '```', '']
    for name, sub in subcommands.items():
        out += [f'{"#" * level} `{sub.prog}`', '', parser_markdown(sub, level + 1)]
    return '\n'.join(out)


def command_pages() -> Dict[str, str]:
    """``{path: markdown}`` of the command line's pages: an index and one page per sub-command."""
    from scnet.cli.main import COMMANDS, build_parser

    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    helps = {a.dest: a.help for a in subparsers._choices_actions}
    index = ['# Command line', '', 'Every command has `--help`; the pages below are generated from the same '
             'parsers. Invalid input prints one line naming the problem and exits with status 2.', '',
             '| command | what |', '| --- | --- |']
    pages = {}
    for name in COMMANDS:
        index.append(f'| [`scnet {name}`]({name}.md) | {_cell(helps.get(name, ""))} |')
        pages[f'cli/{name}.md'] = f'# `scnet {name}`\n\n{_cell(helps.get(name, ""))}\n\n' + parser_markdown(
            subparsers.choices[name])
    pages[CLI_INDEX] = '\n'.join(index) + '\n'
    return pages


def api_modules(package_dir: Path = ROOT / 'scnet') -> Dict[str, List[str]]:
    """``{group: [module, ...]}`` of the public modules on disk: ``scnet`` for its top-level modules, and
    ``scnet.<sub-package>`` for everything under a sub-package, nested packages included."""
    groups: Dict[str, List[str]] = {}
    for path in sorted(package_dir.rglob('*.py')):
        parts = path.relative_to(package_dir.parent).with_suffix('').parts
        if any(p.startswith('_') and p != '__init__' for p in parts):
            continue
        if any(not (d / '__init__.py').is_file() for d in path.parents if package_dir in (d, *d.parents)):
            continue  # a folder that is not (yet) a package: not importable, so not documented
        module = '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)
        if any(module == s or module.startswith(s + '.') for s in API_SKIP):
            continue
        groups.setdefault('.'.join(parts[:2]) if len(parts) > 2 else parts[0], []).append(module)
    return groups


def reference_pages() -> Dict[str, str]:
    """``{path: markdown}`` of the API reference: an index and one page per sub-package of scnet."""
    index = ['# API reference', '', 'Generated from the docstrings of every module on disk (mkdocstrings). '
             'The entry points most code needs are on the first page: `scnet.SCConv2d`, `scnet.convert`, '
             '`scnet.create_model`, `scnet.deploy`.', '']
    pages = {}
    for top, modules in api_modules().items():
        page = f'reference/{top}.md'
        index.append(f'- [`{top}`]({top}.md)')
        body = [f'# `{top}`', '']
        for module in modules:
            body += [f'::: {module}', '']
        pages[page] = '\n'.join(body)
    pages[API_INDEX] = '\n'.join(index) + '\n'
    return pages


def _load_tables_module():
    spec = importlib.util.spec_from_file_location('scnet_benchmark_tables', ROOT / 'benchmarks' / 'tables.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.lru_cache(maxsize=1)
def _generated() -> Dict[str, str]:
    return {**command_pages(), **reference_pages()}


def _expand(nav, index: str, paths: List[str]):
    """The nav with the entry pointing at ``index`` replaced by a section of ``paths`` (index first)."""
    if isinstance(nav, list):
        return [_expand(item, index, paths) for item in nav]
    if isinstance(nav, dict):
        return {k: ([index] + [p for p in paths if p != index] if v == index else _expand(v, index, paths))
                for k, v in nav.items()}
    return nav


def on_startup(command, dirty):
    _generated.cache_clear()  # `mkdocs serve` rebuilds in one process: read the parsers and modules again


def on_config(config):
    _generated.cache_clear()
    pages = _generated()
    for index, prefix in ((CLI_INDEX, 'cli/'), (API_INDEX, 'reference/')):
        config['nav'] = _expand(config['nav'], index, [p for p in pages if p.startswith(prefix)])
    return config


def on_files(files, config):
    for path, content in _generated().items():
        existing = files.get_file_from_path(path)
        if existing is not None:
            files.remove(existing)
        files.append(File.generated(config, path, content=content))
    return files


def on_page_markdown(markdown, page, config, files):
    results = ROOT / 'benchmarks' / 'results'
    if TABLES_MARKER in markdown:
        markdown = markdown.replace(TABLES_MARKER, _load_tables_module().render_all(results))
    for marker in TABLE_MARKER.finditer(markdown):
        path = results / marker.group(1)
        if not path.is_file():
            raise PluginError(f'{page.file.src_uri}: {marker.group(0)} names a file that does not exist: {path}')
        markdown = markdown.replace(marker.group(0), _load_tables_module().render_file(path, marker.group(1)))
    return markdown

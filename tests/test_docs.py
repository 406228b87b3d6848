"""The documentation cannot go stale: the site builds with --strict, its examples run, its command lines parse,
its generated pages cover every flag, and no docstring carries a measured figure (those live in
benchmarks/results/*.json, whose tables benchmarks/tables.py renders)."""
from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import json
import re
import shlex
import tokenize
from pathlib import Path

import pytest
import torch

from scnet.bench.machine import cpu_description

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / 'docs'
PAGES = sorted([ROOT / 'README.md', *DOCS.rglob('*.md')])
#: The line before a ```python block that this test may not run, with the reason in brackets.
SKIP = re.compile(r'^<!-- docs-test: skip \((.+)\) -->$')
MAX_SKIPPED_BLOCKS = 2


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def code_blocks(markdown: str, language: str):
    """``(line, code, skip_reason)`` of each top-level fenced block of ``language`` in ``markdown``."""
    lines = markdown.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = re.match(r'^(`{3,})\s*([\w-]*)', lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith(fence.group(1)))
        if fence.group(2) == language:
            before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), '')
            skip = SKIP.match(before.strip())
            blocks.append((i + 1, '\n'.join(lines[i + 1:end]) + '\n', skip.group(1) if skip else None))
        i = end + 1
    return blocks


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# -- the site -------------------------------------------------------------------------------------------

def test_mkdocs_build_strict(tmp_path, caplog):
    # in this process, where torch and scnet are already imported (what the hook's parsers need)
    from mkdocs.commands.build import build
    from mkdocs.config import load_config
    from mkdocs.exceptions import Abort

    site = tmp_path / 'site'
    config = load_config(str(ROOT / 'mkdocs.yml'), strict=True, site_dir=str(site))
    with caplog.at_level('WARNING'):
        try:
            build(config)
        except Abort as e:
            pytest.fail(f'mkdocs build --strict: {e}\n' + '\n'.join(r.getMessage() for r in caplog.records))
    # the hook's pages are in the site: a command page, the API reference, the generated tables
    train = (site / 'cli' / 'train' / 'index.html').read_text()
    assert '--pretrained' in train and '--auto-augment' in train
    assert 'SCConv2d' in (site / 'reference' / 'scnet.layers' / 'index.html').read_text()
    performance = (site / 'performance' / 'index.html').read_text()
    assert 'instruction set' in performance and 'benchmark-tables' not in performance
    assert 'benchmark-table:' not in (site / 'training' / 'finetuning' / 'index.html').read_text()


# -- examples -------------------------------------------------------------------------------------------

PYTHON_PAGES = [p for p in PAGES if any(r is None for _, _, r in code_blocks(p.read_text(), 'python'))]


@pytest.mark.parametrize('page', PYTHON_PAGES, ids=_rel)
def test_python_examples_run(page, tmp_path, monkeypatch):
    """The ```python blocks of a page run in order, in one namespace, in an empty folder."""
    monkeypatch.chdir(tmp_path)
    namespace = {'__name__': '__docs__'}
    for line, code, skip in code_blocks(page.read_text(), 'python'):
        if skip:
            continue
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(code, f'{_rel(page)}:{line}', 'exec'), namespace)
        except Exception as e:  # the page and line say which example broke
            pytest.fail(f'{_rel(page)}, the python block at line {line}: {type(e).__name__}: {e}')


def test_skipped_examples_are_rare_and_say_why():
    skipped = [(_rel(p), line, reason) for p in PAGES for line, _, reason in code_blocks(p.read_text(), 'python')
               if reason]
    assert len(skipped) <= MAX_SKIPPED_BLOCKS, skipped
    assert all(len(reason) > 10 for _, _, reason in skipped), skipped
    assert len(PYTHON_PAGES) >= 6  # the examples are found at all


def scnet_commands(script: str):
    """The argument lists of the ``scnet`` commands in a shell script (``torchrun ... -m scnet`` included)."""
    script = script.replace('\\\n', ' ')
    commands = []
    for line in script.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
        parts, start = [], 0
        for i, token in enumerate(tokens + [';']):
            if token in ('&&', '||', ';', '|', '&'):
                parts.append(tokens[start:i])
                start = i + 1
        for words in parts:
            while words and re.match(r'^\w+=', words[0]):  # OMP_NUM_THREADS=1 scnet ...
                words.pop(0)
            if words and words[0] in ('scnet', '.venv/bin/scnet'):
                commands.append(words[1:])
            elif words and words[0] == 'torchrun' and 'scnet' in words:
                commands.append(words[words.index('scnet') + 1:])
    return commands


def test_scnet_commands_of_the_docs_parse(capsys):
    from scnet.cli.main import build_parser

    parser = build_parser()
    checked = 0
    for page in PAGES:
        for line, code, _ in code_blocks(page.read_text(), 'bash'):
            for argv in scnet_commands(code):
                try:
                    parser.parse_args(argv)
                except SystemExit:
                    pytest.fail(f'{_rel(page)}, the bash block at line {line}: `scnet {" ".join(argv)}` does not '
                                f'parse: {capsys.readouterr().err.strip().splitlines()[-1]}')
                checked += 1
    assert checked >= 40


def test_command_extraction_sees_every_form():
    script = ('bash scripts/setup.sh && .venv/bin/scnet train\nOMP_NUM_THREADS=1 scnet eval --model m  # note\n'
              'torchrun --nproc_per_node=2 -m scnet detect train \\\n    --task bbox\npip install x\n')
    assert scnet_commands(script) == [['train'], ['eval', '--model', 'm'], ['detect', 'train', '--task', 'bbox']]


def test_files_named_in_the_docs_exist():
    named = {(_rel(page), path) for page in PAGES for path in re.findall(
        r'`((?:scnet|benchmarks|docs|tests|scripts)/[\w/.-]+\.(?:py|yaml|sh|json))`', page.read_text())}
    assert len(named) >= 10
    assert not [(page, path) for page, path in sorted(named) if not (ROOT / path).is_file()]


# -- generated pages ------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def hook():
    return _load('docs_hook_cli_pages', DOCS / 'hooks' / 'cli_pages.py')


def _options(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _options(sub)
        elif action.option_strings and action.help != argparse.SUPPRESS:
            yield from (o for o in action.option_strings if o not in ('-h', '--help'))


def test_every_command_and_flag_has_its_page(hook):
    import argparse

    from scnet.cli.main import COMMANDS, build_parser

    pages = hook.command_pages()
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name in COMMANDS:
        page = pages[f'cli/{name}.md']
        missing = [o for o in _options(subparsers.choices[name]) if f'`{o}`' not in page]
        assert not missing, (name, missing)
        assert f'({name}.md)' in pages['cli/index.md']
    assert '## `scnet detect train`' in pages['cli/detect.md'] and '(one of `bbox`, `segm`)' in pages['cli/detect.md']


def test_api_reference_lists_the_modules_on_disk(hook, tmp_path):
    pages = hook.reference_pages()
    assert '::: scnet.layers.scconv' in pages['reference/scnet.layers.md']
    assert '::: scnet.convert' in pages['reference/scnet.md']
    assert not any('scnet.cli' in text for text in pages.values())
    package = tmp_path / 'pkg'
    (package / 'sub').mkdir(parents=True)
    (package / 'half').mkdir()
    for f in ('__init__.py', 'a.py', '_private.py', 'sub/__init__.py', 'sub/b.py', 'half/c.py'):
        (package / f).write_text('')
    assert hook.api_modules(package) == {'pkg': ['pkg', 'pkg.a'], 'pkg.sub': ['pkg.sub', 'pkg.sub.b']}


# -- README ---------------------------------------------------------------------------------------------

README = (ROOT / 'README.md').read_text()


def test_readme_is_short_and_keeps_the_two_commands():
    assert len(README.encode()) <= 12 * 1024
    assert 'bash scripts/setup.sh && .venv/bin/scnet train' in README
    assert 'bash scripts/setup.sh && .venv/bin/python -m pytest' in README
    assert 'mkdocs serve' in README
    for link in re.findall(r'\]\((docs/[^)#]+)', README):
        assert (ROOT / link).is_file(), link


def test_readme_speed_table_quotes_the_committed_results():
    """Each ratio of the README's speed table is the one its results file holds, so it cannot go stale: the
    first pair of columns from benchmarks/results/, the second from benchmarks/results/zen3/."""
    section = README.split('## Speed', 1)[1].split('\n## ', 1)[0]
    rows = re.findall(r'^\| [^|]+ \| `([\w.]+\.json)` \| ([^|]+) \| (\d+) \| ([\d.]*)x? ?\| ([\d.]*)x? ?\| '
                      r'([\d.]+)x \| ([\d.]*)x? ?\|$', section, re.M)
    assert len(rows) == 8
    quoted = 0
    for folder, columns in (('results', (3, 4)), ('results/zen3', (5, 6))):
        machines = set()
        for row in rows:
            name, model, batch = row[:3]
            speed, memory = (row[i] for i in columns)
            if not speed:
                continue
            report = json.loads((ROOT / 'benchmarks' / folder / name).read_text())
            machines.add(cpu_description(report['machine']))
            [result] = [r for r in report['results'] if r['model'] == model.strip() and r['batch_size'] == int(batch)]
            assert f"{result['speed_ratio']:.2f}" == speed, (folder, name, model, batch)
            if memory:
                assert f"{result['memory_ratio']:.2f}" == memory, (folder, name, model, batch)
            quoted += 1
        # one machine per pair of columns, named as its files record it: core generation and instruction set
        [machine] = machines
        assert '(' in machine and f'on an {machine}, 2 threads' in ' '.join(section.split())
    assert quoted == 16
    from scnet.complexity import profile_model
    madds = re.search(r'\(([\d.]+) G against ([\d.]+) G, as `scnet profile` counts', section).groups()
    assert madds == tuple(f"{profile_model(m)['macs_g']:.2f}" for m in ('scnet50', 'resnet50'))
    ceiling = re.search(r'at most ([\d.]+) / ([\d.]+) = ([\d.]+)x as fast as ResNet-50', section).groups()
    assert ceiling[:2] == madds[::-1]
    assert ceiling[2] == f"{profile_model('resnet50')['macs_g'] / profile_model('scnet50')['macs_g']:.2f}"


def test_readme_other_implementations_quote_the_committed_results():
    """The README's table against the authors' structure and mmpose's SCNet is other_implementations.json's, one
    file per machine."""
    section = README.split('## Speed', 1)[1].split('\n## ', 1)[0]
    rows = re.findall(r'^\| (scnet50[^|]*?) \| (Zen \d) \w+ \| ([\d.]+)x \| ([\d.]+)x \| ([\d.]+)x \| ([\d.]+)x \|$',
                      section, re.M)
    names = ['scnet50', "scnet50 authors' structure", 'scnet50 mmpose 1.3.2']
    assert [(r[0], r[1]) for r in rows] == [(n, 'Zen 4') for n in names] + [(n, 'Zen 3') for n in names]
    for machine, folder in (('Zen 4', 'results'), ('Zen 3', 'results/zen3')):
        report = json.loads((ROOT / 'benchmarks' / folder / 'other_implementations.json').read_text())
        assert f'({machine},' in cpu_description(report['train']['machine'])
        assert report['mmpose'] == '1.3.2' and max(v for k, v in report['same_outputs'].items()
                                                    if k != 'logit_scale') < 1e-5 * report['same_outputs']['logit_scale']

        def result(mode, model, batch):
            [r] = [r for r in report[mode]['results'] if r['model'] == model and r['batch_size'] == batch]
            return r

        for model, _, train, memory, infer1, infer8 in (r for r in rows if r[1] == machine):
            assert f"{result('train', model, 16)['speed_ratio']:.2f}" == train, (machine, model)
            assert f"{result('train', model, 16)['memory_ratio']:.2f}" == memory, (machine, model)
            assert f"{result('infer', model, 1)['speed_ratio']:.2f}" == infer1, (machine, model)
            assert f"{result('infer', model, 8)['speed_ratio']:.2f}" == infer8, (machine, model)


def test_readme_operation_profile_quotes_the_committed_results():
    """The README's table of where SCNet-50's extra time goes is op_profile.json's, row by row."""
    section = README.split('## Speed', 1)[1].split('\n## ', 1)[0]
    report = json.loads((ROOT / 'benchmarks' / 'results' / 'op_profile.json').read_text())
    groups = report['groups']
    header = re.search(r'^\| kind \| (.+) \|$', section, re.M).group(1).split(' | ')
    assert header == [('inference' if g['mode'] == 'infer' else 'training step') + f", batch {g['batch']}"
                      for g in groups]
    rows = {m.group(1): m.group(2).split(' | ') for m in re.finditer(r'^\| ([^|]+?) \| ([-+\d. |]+) \|$', section,
                                                                     re.M)}
    def signed(ms):  # a difference that rounds to zero is written +0.0
        return f'{ms:+.1f}'.replace('-0.0', '+0.0')
    for kind in report['kinds']:
        assert rows[kind] == [signed(g['excess_ms']['scnet50'][kind]) for g in groups], kind

    def model(group, name):
        return next(r for r in group['rows'] if r['model'] == name)
    assert rows['wall time, unprofiled'] == [
        signed(model(g, 'scnet50')['wall_ms'] - model(g, 'resnet50')['wall_ms']) for g in groups]
    assert rows["ResNet-50's wall time"] == [f"{model(g, 'resnet50')['wall_ms']:.1f}" for g in groups]
    eager = json.loads((ROOT / 'benchmarks' / 'results' / 'infer_eager.json').read_text())
    assert cpu_description(report['machine']) == cpu_description(eager['machine'])   # 'same machine'


def test_performance_page_quotes_the_small_networks_arithmetic_and_convolution_times():
    """The small networks' paragraph of docs/performance.md: the MACs as count_complexity counts them, and the
    convolution times (forward plus backward) of each machine's op_profile_small_networks.json."""
    from scnet.complexity import count_complexity
    from scnet.models import create_model

    text = ' '.join((DOCS / 'performance.md').read_text().split())
    paragraph = text.split('The small networks hold more arithmetic', 1)[1].split('\n- ', 1)[0]
    with torch.device('meta'):
        macs = {name: count_complexity(create_model(name, channels=(16, 32, 64, 128), num_classes=8), 32)[1]
                for name in ('scnet26_cifar', 'resnet26_cifar')}
        default_width = [count_complexity(create_model(name), 32)[1] for name in ('scnet26_cifar', 'resnet26_cifar')]
    sc, plain = (f'{macs[n] / 1e6:.1f} M' for n in ('scnet26_cifar', 'resnet26_cifar'))
    assert f'needs {sc} multiply-accumulates against `resnet26_cifar`\'s {plain}' in paragraph
    ratio = f"{macs['scnet26_cifar'] / macs['resnet26_cifar']:.3f}x"
    assert f'{ratio} at any width' in paragraph
    assert f'{default_width[0] / default_width[1]:.3f}x' == ratio
    assert f"`scnet26_cifar` holds {ratio} `resnet26_cifar`'s arithmetic, at any width" in ' '.join(README.split())
    for machine, folder in (('Zen 3', 'results/zen3'), ('Zen 4', 'results')):
        report = json.loads((ROOT / 'benchmarks' / folder / 'op_profile_small_networks.json').read_text())
        assert f'({machine},' in cpu_description(report['machine'])
        rows = {r['model']: r['kinds_ms'] for r in report['groups'][0]['rows']}
        conv = {m: k['convolution, forward'] + k['convolution, forward, small-map path'] + k['convolution, backward']
                for m, k in rows.items()}
        quoted = (f"{conv['scnet26_cifar'] / conv['resnet26_cifar']:.2f}x",
                  f"{conv['scnet26_cifar']:.1f} against {conv['resnet26_cifar']:.1f} ms")
        assert re.search(re.escape(quoted[0]) + r'[^()]*' + re.escape(machine) + r' (?:machine|one) \(' +
                         re.escape(quoted[1]), paragraph), (machine, quoted)


def test_readme_lists_every_command():
    from scnet.cli.main import COMMANDS

    listed = set(re.findall(r'^\| `scnet (\w+)', README, re.M))
    assert listed == set(COMMANDS)


@pytest.mark.parametrize('page', ['README.md', 'docs/zoo.md'])
def test_zoo_tables_quote_the_paper(page):
    """Every zoo model is in the table, with the paper's Table 1 accuracy and the authors' weights marked."""
    import scnet
    from scnet.complexity import PAPER_ROWS
    from scnet.weights import OFFICIAL_WEIGHTS

    paper = {}
    for row in PAPER_ROWS:  # Table 1 first; the GE models are only in Table 3
        paper.setdefault(row.model, row)
    seen = set()
    rows = [[c.strip() for c in line.strip('|').split('|')] for line in (ROOT / page).read_text().splitlines()
            if line.startswith('| `')]
    for names, _, top1, top5, weights in (r for r in rows if len(r) == 5):
        for name in re.findall(r'`(\w+)`', names):
            seen.add(name)
            row = paper.get(name)
            if row is None:
                assert (top1, top5) == ('-', '-'), name
            else:
                assert (float(top1), float(top5)) == (row.top1, row.top5), name
            assert (weights == 'yes') == (name in OFFICIAL_WEIGHTS), name
    assert seen == set(scnet.list_models())


# -- measured figures -----------------------------------------------------------------------------------

#: Units, rates and ratios that a measurement quotes; a CPU's name says where it was measured.
FIGURE = re.compile(r"""
    \d[\d.,]*\s*(?:ms|µs|us|ns|s|sec|seconds?|min|minutes?|MB|MiB|GB|GiB|KB|KiB|kB)\b(?!-)
  | \d[\d.,]*\s*(?:img|images|it|samples)/s\b
  | (?<![\w.])\d+(?:\.\d+)?x(?!\w)
  | \d+(?:\.\d+)?\s*(?:times|%)\s+(?:faster|slower|less|more|smaller|larger)
  | \b(?:EPYC|Xeon|Ryzen|Zen\s\d|on\s\d+\s+cores)\b
""", re.X)
#: Figures that are settings or names, not measurements (matched in their context).
NOT_MEASURED = ('at 64 KiB', 'below 2 GB', 'drawn at 4x', 'padded 1.25x', '2x schedule', '2x recipe',
                '2x deconvolution')


def measured_figures(source: str, suffix: str = '.py'):
    """``(line, figure, context)`` of each measured figure in the docstrings and comments of ``source``
    (for YAML: the whole file, whose descriptions are prose). ``code spans`` are examples, not claims."""
    if suffix == '.py':
        texts = [(node.body[0].lineno, ast.get_docstring(node, clean=False))
                 for node in ast.walk(ast.parse(source))
                 if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
        texts += [(t.start[0], t.string) for t in tokenize.generate_tokens(io.StringIO(source).readline)
                  if t.type == tokenize.COMMENT]
    else:
        texts = list(enumerate(source.splitlines(), 1))
    found = []
    for line, text in texts:
        text = re.sub(r'``.*?``', '``…``', ' '.join((text or '').split()))
        for m in FIGURE.finditer(text):
            context = text[max(0, m.start() - 30):m.end() + 30]
            if not any(ok in context for ok in NOT_MEASURED):
                found.append((line, m.group(0), context))
    return found


def test_no_measured_figure_in_docstrings_or_comments():
    found = [f'{_rel(p)}:{line}: {figure!r} in "...{context}..."'
             for p in sorted((ROOT / 'scnet').rglob('*')) if p.suffix in ('.py', '.yaml')
             for line, figure, context in measured_figures(p.read_text(), p.suffix)]
    assert not found, ('measured figures belong in benchmarks/results/*.json, not in docstrings:\n'
                       + '\n'.join(found))


@pytest.mark.parametrize('text', ['about 0.75 ms an image', 'installs about 350 MB', 'differ by 2x',
                                  'from 1.18x to 1.10x', '480 images/s', '8% faster', 'on 2 cores of an AMD EPYC'])
def test_the_scan_finds_figures(text):
    assert measured_figures(f'def f():\n    """Fast: {text}."""\n')
    assert measured_figures(f'x = 1  # {text}\n')
    assert measured_figures(f'description: {text}\n', '.yaml')


def test_the_scan_leaves_settings_and_code():
    source = '"""A 3x3 conv, ``scnet50_32x4d``, ``\'42 s\'``, faster_rcnn_2x, drawn at 4x, 8 x 8 pixels."""\n'
    assert measured_figures(source) == []


# -- benchmarks/tables.py -------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def tables():
    return _load('benchmark_tables', ROOT / 'benchmarks' / 'tables.py')


def _report(model_rates):
    return {'machine': {'cpu': 'Test CPU 9000', 'cpu_capability': 'AVX2', 'torch_threads': 2, 'logical_cpus': 4,
                        'versions': {'torch': '2.99'}, 'date': '2030-01-02T03:04:05'},
            'settings': {'mode': 'infer', 'device': 'cpu', 'input_size': [32, 32], 'channels_last': True,
                         'repeats': 3, 'warmup': 1},
            'baseline': 'resnet26',
            'results': [{'model': m, 'batch_size': 8, 'images_per_s': r, 'spread_pct': 2.0,
                         'speed_ratio': r / model_rates[0][1], 'memory': {'peak_mb': 10.0}, 'memory_ratio': 1.0}
                        for m, r in model_rates]}


def test_tables_render_every_result_with_its_machine(tables, tmp_path, capsys):
    results = tmp_path / 'results'
    (results / 'loaded').mkdir(parents=True)
    (results / 'infer.json').write_text(json.dumps(_report([('resnet26', 100.0), ('scnet26', 80.0)])))
    paired = _report([('resnet26', 10.0), ('scnet26', 9.0)])
    paired['results'][1]['round_ratio'] = {'q1': 0.86, 'median': 0.9, 'q3': 0.931}
    paired['machine']['cpu_identity'] = {'vendor': 'AuthenticAMD', 'family': 25, 'model': 17, 'generation': 'Zen 4'}
    (results / 'paired.json').write_text(json.dumps(paired))
    nested = _report([('resnet26', 5.0)])
    nested['machine']['cpu_identity'] = {'vendor': 'AuthenticAMD', 'family': 25, 'model': 1, 'generation': 'Zen 3'}
    (results / 'loaded' / 'nested.json').write_text(json.dumps({
        'same_outputs': {'authors_structure': 3.1e-06, 'mmpose': 0.0, 'logit_scale': 12.44}, 'train': nested, 'x': 1}))
    (results / 'finetune.json').write_text(json.dumps({
        'machine': 'Test CPU, 2 threads', 'data': 'digits', 'finetune': {'shots_per_class': 10},
        'runs': [{'seed': 0, 'fine_tuned_top1': 60.0, 'from_scratch_top1': 40.0, 'held_out_images': 5},
                 {'seed': 1, 'fine_tuned_top1': 70.0, 'from_scratch_top1': 42.0, 'held_out_images': 5}],
        'mean_fine_tuned_top1': 65.0}))
    (results / 'other.json').write_text('{"something": 1}')
    text = tables.render_all(results)
    assert text.index('`finetune.json`') < text.index('`infer.json`') < text.index('`loaded/nested.json`')
    assert text.count('Test CPU 9000, instruction set AVX2, 2 threads of 4 logical CPUs') == 1   # an older file
    assert text.count('Test CPU 9000 (Zen 3, family 25 model 1), instruction set AVX2, 2 threads of 4') == 1
    assert '| scnet26 | 8 | 80.0 | 2% | 0.80x | 10 | 1.000x |' in text   # no per-round ratios in this file
    assert '| vs resnet26 | per round | peak memory (MB) |' in text    # ... and in this one
    assert '| resnet26 | 8 | 10.0 | 2% | 1.00x | | 10 | 1.000x |' in text
    assert '| scnet26 | 8 | 9.0 | 2% | 0.90x | 0.86-0.93x | 10 | 1.000x |' in text
    assert '| fine-tuned from the checkpoint | 65.0% |' in text and 'Machine: Test CPU, 2 threads.' in text
    assert '`other.json`\n\nNo table' in text
    assert ('max |logit difference| from scnet50, authors structure 3.1e-06, mmpose 0.0e+00 (logits up to 12.4).'
            in text)
    out = tmp_path / 'tables.md'
    assert tables.main([str(results), '--output', str(out)]) == 0 and out.read_text() == text
    assert tables.main([str(tmp_path / 'nowhere')]) == 2
    assert 'is not a folder' in capsys.readouterr().err
    (tmp_path / 'empty').mkdir()
    assert tables.render_all(tmp_path / 'empty') == 'No results in `empty/` yet.\n'

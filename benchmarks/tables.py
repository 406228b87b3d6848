"""The docs' tables of measured figures, rendered from ``benchmarks/results/**/*.json`` (Markdown).

Figures live in those JSON files, each with the machine it was measured on; the docs never copy a number by
hand. The docs' build (``docs/hooks/cli_pages.py``) calls ``render_all`` for the performance page, so a
re-measured JSON changes the page and a stale table cannot exist.

    python benchmarks/tables.py                        # every results file, as Markdown on stdout
    python benchmarks/tables.py DIR --output tables.md

Three formats are known: the report of ``scnet benchmark --output`` (``machine``, ``settings``, ``results``;
also nested, as in ``other_implementations.json``), that of ``benchmarks/finetune_real.py`` and that of
``benchmarks/layer_profile.py``. Any other JSON gets a line saying it has no table, so a new kind of result
never breaks the docs' build.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

__all__ = ['machine_line', 'benchmark_table', 'finetune_table', 'layer_profile_table', 'render_file', 'render_all',
           'main']


def _num(value: Optional[float], digits: int = 2, suffix: str = '') -> str:
    return '' if value is None else f'{value:.{digits}f}{suffix}'


def machine_line(machine) -> str:
    """What a figure was measured on, in one line: CPU model, instruction set, threads, software, date."""
    if not isinstance(machine, dict):  # older results record a free-text description
        return f'Machine: {machine}.'
    from scnet.bench.machine import cpu_description

    # the name, with the core generation and family/model numbers where the file records them
    parts = [cpu_description({k: v for k, v in machine.items() if k != 'cpu_capability'})]
    if machine.get('cpu_capability'):
        parts.append(f"instruction set {machine['cpu_capability']}")
    if machine.get('gpu'):
        parts.append(str(machine['gpu']))
    if machine.get('torch_threads'):
        parts.append(f"{machine['torch_threads']} threads of {machine.get('logical_cpus', '?')} logical CPUs")
    versions = machine.get('versions') or {}
    parts += [f'{k} {v}' for k, v in versions.items() if k in ('torch', 'timm', 'onnxruntime') and v]
    if machine.get('date'):
        parts.append(f"measured {str(machine['date'])[:10]}")
    return 'Machine: ' + ', '.join(parts) + '.'


def _settings_line(settings: Dict) -> str:
    size = settings.get('input_size')
    words = [f"{settings.get('mode', '?')} on {settings.get('device', '?')}"]
    if size:
        words.append(f'input {size[0]}x{size[1]}' if isinstance(size, list) else f'input {size}')
    words += [flag.replace('_', '-') for flag in ('channels_last', 'compile', 'amp') if settings.get(flag)]
    if settings.get('repeats'):
        words.append(f"median of {settings['repeats']} interleaved repeats after {settings.get('warmup', 0)} "
                     'warm-up rounds')
    return 'Settings: ' + ', '.join(words) + '.'


def benchmark_table(report: Dict) -> str:
    """A ``scnet benchmark`` report: one row per model, variant and batch size, ratios to its baseline."""
    # the per-round ratio's quartiles, where the file has them (files measured before they were kept do not)
    rounds = any(r.get('round_ratio') for r in report['results'])
    lines = [machine_line(report.get('machine')), '', _settings_line(report.get('settings', {})), '',
             f"| model | batch | images/s | spread | vs {report.get('baseline', 'baseline')} "
             + ('| per round ' if rounds else '') + '| peak memory (MB) | memory vs baseline |',
             '| --- ' * (8 if rounds else 7) + '|']
    for r in report['results']:
        memory = r.get('memory') or {}
        q = r.get('round_ratio')
        per_round = (f"| {q['q1']:.2f}-{q['q3']:.2f}x " if q else '| ') if rounds else ''
        lines.append(f"| {r['model']} | {r.get('batch_size', '')} | {_num(r.get('images_per_s'), 1)} "
                     f"| {_num(r.get('spread_pct'), 0, '%')} | {_num(r.get('speed_ratio'), 2, 'x')} {per_round}"
                     f"| {_num(memory.get('peak_mb'), 0)} | {_num(r.get('memory_ratio'), 3, 'x')} |")
    return '\n'.join(lines) + '\n'


def finetune_table(report: Dict) -> str:
    """``benchmarks/finetune_real.py``: held-out top-1 fine-tuned vs from scratch, per seed and on average."""
    runs = report['runs']
    ft = report.get('finetune', {})
    lines = [machine_line(report.get('machine')), '',
             f"Data: {report.get('data', '?')}; {ft.get('shots_per_class', '?')} images per class, "
             f"{ft.get('epochs', '?')} epochs at {ft.get('image_size', '?')} px; scored on "
             f"{runs[0].get('held_out_images', '?')} held-out images.", '',
             '| start | held-out top-1, mean | per seed |', '| --- | --- | --- |']
    for label, key in (('fine-tuned from the checkpoint', 'fine_tuned_top1'), ('from scratch', 'from_scratch_top1')):
        values = [r[key] for r in runs]
        per_seed = ', '.join(f"{v:.1f} (seed {r['seed']})" for v, r in zip(values, runs))
        lines.append(f'| {label} | {sum(values) / len(values):.1f}% | {per_seed} |')
    return '\n'.join(lines) + '\n'


def layer_profile_table(report: Dict) -> str:
    """``benchmarks/layer_profile.py``: per SC-Conv shape of SCNet-50, milliseconds of ResNet-50's 3x3 conv, of
    the layer and (``--tried``) of the designs left out; a last row sums all sixteen conv2 layers."""
    lines = [machine_line(report.get('machine')), '']
    for group in report['groups']:
        names = list(dict.fromkeys(name for row in group['rows'] for name in row['ms']))  # as measured
        lines += [f"{group['mode']}, batch {group['batch']}: milliseconds, minimum of "
                  f"{report.get('settings', {}).get('rounds', '?')} rounds", '',
                  '| width | map | stride | layers | ' + ' | '.join(names) + ' | MACs SC / conv |',
                  '| --- ' * (len(names) + 5) + '|']
        for row in group['rows']:
            macs = row['macs_per_image']
            lines.append(f"| {row['width']} | {row['size']} | {row['stride']} | {row['layers_in_scnet50']} | "
                         + ' | '.join(_num(row['ms'].get(n), 2) for n in names)
                         + f" | {macs['scconv'] / macs['conv']:.2f} |")
        total = group['network_ms']
        lines += ['| all conv2 layers | | | 16 | ' + ' | '.join(_num(total[n], 1) for n in names) + ' | |', '']
    return '\n'.join(lines)


def op_profile_table(report: Dict) -> str:
    """``benchmarks/op_profile.py``: milliseconds per step of each kind of operation (profiler self time), per
    model, and each model's difference to the first."""
    lines = [machine_line(report.get('machine')), '']
    for group in report['groups']:
        rows = group['rows']
        base = rows[0]['model']
        lines += [f"{group['mode']}, batch {group['batch']}: milliseconds per step", '',
                  '| kind | ' + ' | '.join(r['model'] for r in rows)
                  + ''.join(f" | {r['model']} - {base}" for r in rows[1:]) + ' |',
                  '| --- ' * (2 * len(rows)) + '|']
        for kind in report['kinds']:
            lines.append(f'| {kind} | ' + ' | '.join(_num(r['kinds_ms'][kind], 1) for r in rows)
                         + ''.join(f" | {group['excess_ms'][r['model']][kind]:+.1f}" for r in rows[1:]) + ' |')
        totals = [('all, profiled', 'profiled_ms'), ('between operators', 'between_ops_ms'),
                  ('top-level operators', 'operators'), ('wall time, unprofiled', 'wall_ms')]
        for label, key in totals:
            if not all(key in r for r in rows):  # files written before op_profile.py counted operators
                continue
            lines.append(f'| {label} | ' + ' | '.join(_num(r[key], 1) for r in rows)
                         + ''.join(f' | {r[key] - rows[0][key]:+.1f}' for r in rows[1:]) + ' |')
        lines.append('')
    return '\n'.join(lines)


def _is_benchmark(d) -> bool:
    return isinstance(d, dict) and 'results' in d and 'machine' in d and isinstance(d['results'], list)


def _same_outputs_line(data: Dict) -> str:
    """``other_implementations.json``'s check before timing: that the contenders compute the same function."""
    diffs = data.get('same_outputs')
    if not isinstance(diffs, dict):
        return ''
    scale = diffs.get('logit_scale')
    parts = [f"{k.replace('_', ' ')} {v:.1e}" for k, v in diffs.items() if k != 'logit_scale']
    return ('Same outputs, checked before timing: max |logit difference| from scnet50, '
            + ', '.join(parts) + (f' (logits up to {scale:.1f})' if scale else '') + '.\n\n')


def render_file(path: Path, name: str, level: int = 3) -> str:
    """One results file as a titled Markdown section (``name``: how the title refers to it)."""
    data = json.loads(Path(path).read_text())
    title = f"{'#' * level} `{name}`\n\n"
    if _is_benchmark(data):
        return title + benchmark_table(data)
    if isinstance(data, dict) and 'runs' in data and 'mean_fine_tuned_top1' in data:
        return title + finetune_table(data)
    if isinstance(data, dict) and 'groups' in data and 'kinds' in data:
        return title + op_profile_table(data)
    if isinstance(data, dict) and 'groups' in data and 'machine' in data:
        return title + layer_profile_table(data)
    nested = {k: v for k, v in data.items() if _is_benchmark(v)} if isinstance(data, dict) else {}
    if nested:
        return title + _same_outputs_line(data) + '\n'.join(f'{k}:\n\n' + benchmark_table(v)
                                                            for k, v in nested.items())
    return title + 'No table: a format this script does not know.\n'


def render_all(results_dir: Path, level: int = 3) -> str:
    """Every ``*.json`` under ``results_dir`` (sub-folders included), in path order."""
    results_dir = Path(results_dir)
    files = sorted(results_dir.rglob('*.json'))
    if not files:
        return f'No results in `{results_dir.name}/` yet.\n'
    return '\n'.join(render_file(f, f.relative_to(results_dir).as_posix(), level) for f in files)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('results', nargs='?', default=str(Path(__file__).parent / 'results'),
                        help='folder of results JSON files (default: benchmarks/results)')
    parser.add_argument('--output', help='write the Markdown to this file instead of stdout')
    args = parser.parse_args(argv)
    if not Path(args.results).is_dir():
        print(f'tables.py: error: {args.results} is not a folder; pass the folder of results JSON files',
              file=sys.stderr)
        return 2
    text = render_all(Path(args.results))
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == '__main__':
    sys.exit(main())

"""``scnet benchmark``: models timed side by side in one process, with ratios against the first."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List

from scnet.bench.cases import VARIANTS
from scnet.cli.arg_types import report_file, seed
from scnet.cli.formatting import render_table

_DESCRIPTION = """\
Time networks side by side: every round runs each model once, in rotating order, after warm-up rounds;
the median over rounds gives images/s and the inter-quartile range its spread. The first model is the
baseline of the ratio columns; "per round" gives the quartiles of the speed ratio taken round by round (the
two calls of a round share the machine's conditions): the range within which the ratio can be trusted. Peak
memory per step is the CUDA allocator's peak on a GPU, and on the CPU the growth of the resident set of a
fresh process running the same model (so the first model's cached pages do not hide the second's).
Inference rows also give the arithmetic rate (forward FLOPs, counted as `scnet profile` counts them, times
images/s) as a fraction of the machine's float32 (or bf16 with --amp) matrix-multiply rate measured in the
same run: torch.matmul and a 1x1 convolution (oneDNN on the CPU).

Variants: eager (the model as built), deployed (scnet.deploy: batch norm folded into convolutions, honouring
--channels-last and --compile), onnxruntime (the deployed model exported to ONNX, run by onnxruntime on
the CPU) and cuda_graph (the eager model's inference captured once as a CUDA graph and replayed: the GPU's
time without the host's, which bounds eager networks at small batches; --device cuda); rows other than
eager give their largest logit difference from eager.

Examples:
  scnet benchmark --models resnet50 scnet50 --batch-size 1 8
  scnet benchmark --mode train --batch-size 16 --output train.json
  scnet benchmark --variants eager deployed onnxruntime --channels-last
  scnet benchmark --device cuda --amp --channels-last --batch-size 1 --variants eager cuda_graph"""


def add_parser(sub) -> None:
    p = sub.add_parser('benchmark', help='time models side by side (images/s, memory, ratios)',
                       description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', nargs='+', metavar='NAME', default=['resnet50', 'scnet50'],
                   help='zoo names (`scnet models`); the first is the baseline (default: resnet50 scnet50)')
    p.add_argument('--mode', choices=('infer', 'train'), default='infer',
                   help='infer: a forward pass in inference mode; train: forward, cross-entropy, backward and '
                        'an SGD step (default: infer)')
    p.add_argument('--batch-size', nargs='+', type=int, metavar='B', default=None,
                   help='one or more batch sizes, each timed as its own group (default: 1 8 for infer, 16 for '
                        'train)')
    p.add_argument('--input-size', default='224', metavar='N|HxW', help='input resolution (default: 224)')
    p.add_argument('--device', default='cpu', help='cpu or cuda[:N] (default: cpu)')
    p.add_argument('--amp', action='store_true', help='bfloat16 autocast (CPU or GPU)')
    p.add_argument('--channels-last', action='store_true', help='channels-last memory format for models and inputs')
    p.add_argument('--compile', action='store_true', help='torch.compile the models (inductor); compile time is '
                                                          'spent in the warm-up rounds')
    p.add_argument('--variants', nargs='+', choices=VARIANTS, default=['eager'],
                   help='how each model runs (default: eager); several give one row per model and variant')
    p.add_argument('--threads', type=int, default=None, metavar='N',
                   help='torch.set_num_threads(N) for the run (default: PyTorch\'s choice, one per core)')
    p.add_argument('--warmup', type=int, default=3, metavar='N', help='untimed rounds first (default: 3)')
    p.add_argument('--repeats', type=int, default=10, metavar='N', help='timed rounds (default: 10)')
    p.add_argument('--no-memory', action='store_true', help='skip the peak-memory measurement')
    p.add_argument('--seed', type=seed, default=0, help='seed of the random weights and inputs (default: 0)')
    p.add_argument('--format', choices=('table', 'markdown', 'json'), default='table',
                   help='what to print: an aligned table, a Markdown table, or the JSON report')
    p.add_argument('--output', type=report_file, default=None, metavar='FILE',
                   help='also write the full JSON report (machine facts, settings, every timing) to FILE')
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    p.set_defaults(run=run)


def _progress_factory(quiet: bool):
    if quiet:
        return None
    from tqdm import tqdm

    def make(title: str, total: int):
        bar = tqdm(total=total, desc=title, unit='call', leave=False, file=sys.stderr, disable=None)

        def tick(n: int) -> None:
            bar.update(n)
            if bar.n >= total:
                bar.close()
        return tick
    return make


def _fmt(value, spec: str) -> str:
    return '' if value is None else format(value, spec)


def _round_ratio(row: Dict[str, object]) -> str:
    """The per-round ratio's quartiles, ``0.91-0.97x``; empty for the baseline and for reports without them."""
    q = row.get('round_ratio')
    if not q:
        return ''
    return f"{q['q1']:.2f}-{q['q3']:.2f}x"


def render(report: Dict[str, object], markdown: bool = False) -> str:
    """The report's rows as a table, with a line of machine facts and GEMM rates above it."""
    from scnet.bench.machine import cpu_description

    m = report['machine']
    s = report['settings']
    threads = m['torch_threads']
    head = [f"{cpu_description(m)}, {threads} thread{'s' if threads != 1 else ''}, torch {m['versions']['torch']}"
            + (f", GPU {m['gpu']['name']}" if 'gpu' in m else '')
            + f"; {s['mode']} {s['input_size'][0]}x{s['input_size'][1]} on {s['device']}"
            + (', bf16 autocast' if s['amp'] else ', float32') + (', channels-last' if s['channels_last'] else '')
            + (', compiled' if s['compile'] else '')]
    if 'gemm' in report:
        g = report['gemm']
        head.append(f"{g['dtype']} GEMM rate: torch.matmul {g['matmul_gflops']:.0f} GFLOP/s, "
                    f"1x1 conv {g['conv1x1_gflops']:.0f} GFLOP/s")
    headers = ['model', 'batch', 'images/s', 'median ms', 'spread', 'vs ' + report['baseline'], 'per round',
               'peak MiB', 'memory vs', 'GFLOP/s', 'of matmul', 'of conv1x1', 'max |diff|']
    rows: List[List[str]] = []
    for r in report['results']:
        mem = (r.get('memory') or {}).get('peak_mb')
        rows.append([r['model'], r['batch_size'], f"{r['images_per_s']:.2f}", f"{r['median_ms']:.1f}",
                     f"{r['spread_pct']:.0f}%", f"{r['speed_ratio']:.3f}x", _round_ratio(r), _fmt(mem, '.0f'),
                     _fmt(r.get('memory_ratio'), '.3f'), _fmt(r.get('gflops_per_s'), '.0f'),
                     _fmt(r.get('fraction_of_matmul'), '.0%'), _fmt(r.get('fraction_of_conv1x1'), '.0%'),
                     _fmt(r.get('max_abs_diff_vs_eager'), '.1e')])
    keep = [i for i in range(len(headers)) if any(row[i] != '' for row in rows)]  # drop columns empty throughout
    table = render_table([headers[i] for i in keep], [[row[i] for i in keep] for row in rows], markdown=markdown)
    return '\n'.join(head) + '\n\n' + table


def run(args: argparse.Namespace) -> int:
    import torch

    from scnet.bench.cases import BenchmarkError, Contender, Settings
    from scnet.bench.runner import run_benchmark
    from scnet.complexity import parse_input_size
    from scnet.files import write_json_atomic
    from scnet.models.factory import validate_model_name

    if args.threads is not None:
        if args.threads < 1:
            raise BenchmarkError(f'--threads must be at least 1, got {args.threads}')
        torch.set_num_threads(args.threads)
    if args.warmup < 0 or args.repeats < 1:
        raise BenchmarkError('--warmup must be >= 0 and --repeats >= 1')
    for name in args.models:
        validate_model_name(name)
    repeated = sorted({name for name in args.models if args.models.count(name) > 1})
    if repeated:  # the runner's "each contender needs its own label" names nothing the command line can set
        raise BenchmarkError(f'--models names {", ".join(repeated)} more than once; give each model once (--variants '
                             'times one model several ways)')
    sizes = args.batch_size or ([1, 8] if args.mode == 'infer' else [16])
    bad = [b for b in sizes if b < 1]
    if bad:
        raise BenchmarkError(f'--batch-size must be positive, got {bad[0]}')
    if args.mode == 'train' and set(args.variants) != {'eager'}:
        raise BenchmarkError('--mode train times the eager models only; deployed, onnxruntime and cuda_graph are '
                             'inference variants (use --mode infer)')
    settings = Settings(mode=args.mode, batch_size=sizes[0], input_size=parse_input_size(args.input_size),
                        device=args.device, amp=args.amp, channels_last=args.channels_last, compile=args.compile,
                        seed=args.seed)
    contenders = [Contender.zoo(name, variant) for name in args.models for variant in args.variants]
    report = run_benchmark(contenders, settings, batch_sizes=sizes, warmup=args.warmup, repeats=args.repeats,
                           memory=not args.no_memory, progress=_progress_factory(args.quiet))
    if args.output is not None:
        write_json_atomic(report, args.output)
    if args.format == 'json':
        print(json.dumps(report, indent=2))
    else:
        print(render(report, markdown=args.format == 'markdown'))
    return 0

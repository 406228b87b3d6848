"""Where a whole network's time goes, by kind of operation: SCNet-50 against ResNet-50, in inference and in a
training step, from PyTorch's profiler.

    python benchmarks/op_profile.py                 # resnet50 vs scnet50: infer batch 1 and 8, train batch 16
    python benchmarks/op_profile.py --output benchmarks/results/op_profile.json
    python benchmarks/op_profile.py --models resnet26_cifar scnet26_cifar --channels 16 32 64 128 \\
        --input-size 32 --infer-batch --train-batch 64        # the small networks' training step

``benchmarks/layer_profile.py`` times SC-Conv layer by layer; this script answers the question a reader of a
ratio asks next: which operations make up the difference. The models run a few warm-up steps, are timed
without the profiler (median step, the models interleaved), then run ``--infer-steps`` or ``--train-steps``
steps each under ``torch.profiler``. Every ATen operator's *self* time (the time spent in it, not in the
operators it calls) is put into one kind:

* ``convolution, forward`` (oneDNN) and ``convolution, forward, small-map path``: PyTorch sends a float32
  batch-1 convolution of a small map (up to 20480 input values, 3x3 and no groups) to its im2col + GEMM
  kernel instead of oneDNN; SC-Conv's half-width maps of stage 4 and its pooled maps land there;
* ``convolution, backward``; ``batch norm`` (forward and backward); ``pooling``;
* ``copies and concatenation``: ``copy_`` and ``cat`` (a convolution given a channel slice of a batch copies it
  to a contiguous buffer first; SC-Conv's two halves and its output are such slices);
* ``element-wise``: additions, products, activations, sigmoid, fills, the optimiser's updates;
* ``classifier and loss``; and ``framework`` for the rest (allocation, views, autograd's own bookkeeping,
  Python-level autograd functions).

Self times leave out the time *between* operators: Python, module calls and the dispatcher before each
operator starts. Each row therefore also counts the top-level operators a step calls (``operators``) and
sums the idle time between consecutive ones in the profiler's trace (``between_ops_ms``): a network of more,
smaller operators pays it once per operator, and at batch 1 it can decide a ratio.

The per-step milliseconds of each kind, the top operators, and each model's excess over the first model
(the baseline) are written as JSON with the machine's facts; ``benchmarks/tables.py`` renders it.

``--tried`` adds to the inference groups the last model with every SC-Conv computed by ``layer_profile.py``'s
``onednn_direct`` design (each convolution through ``aten.mkldnn_convolution``, past PyTorch's small-map cut-off),
labelled ``<model> onednn_direct``: its outputs are checked against the model's first (random weights and
BatchNorm statistics, so that every branch counts), then it is timed and profiled with the others.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scnet.allocator import tune_cpu_allocator  # noqa: E402
from scnet import SCConv2d, create_model  # noqa: E402
from scnet.bench.machine import machine_facts  # noqa: E402
from scnet.errors import UnknownModelError  # noqa: E402
from scnet.models.factory import validate_model_name  # noqa: E402

import layer_profile  # noqa: E402  (the sibling script: benchmarks/ is on sys.path, above)

#: (kind, pattern on the operator's name), first match wins; anything else is "framework".
KINDS = [
    ('convolution, forward, small-map path', r'^aten::(_slow_conv2d_forward|thnn_conv2d|slow_conv_dilated2d)$'),
    ('convolution, forward', r'^aten::(mkldnn_convolution|_convolution_overrideable|conv_depthwise2d)$'),
    ('convolution, backward', r'^aten::(convolution_backward|_slow_conv2d_backward|mkldnn_convolution_backward'
                              r'|slow_conv_dilated2d_backward)'),
    ('batch norm', r'batch_norm'),
    ('pooling', r'^aten::(max_pool2d|avg_pool2d|adaptive_avg_pool2d|adaptive_max_pool2d|mean)'),
    ('copies and concatenation', r'^aten::(copy_|cat|_to_copy)$'),
    ('classifier and loss', r'^aten::(addmm|mm|_log_softmax|_log_softmax_backward_data|nll_loss)'),
    ('element-wise', r'^aten::(add|add_|sub|sub_|mul|mul_|div|div_|sigmoid|sigmoid_|sigmoid_backward|relu|relu_'
                     r'|clamp_min|clamp_min_|threshold_backward|addcmul|addcmul_|addcdiv|addcdiv_|fill_|zero_|lerp_'
                     r'|neg|where|sum|_foreach_\w+)$'),
]
FRAMEWORK = 'framework'
ORDER = [kind for kind, _ in KINDS] + [FRAMEWORK]
_PATTERNS = [(kind, re.compile(pattern)) for kind, pattern in KINDS]


def kind_of(op_name: str) -> str:
    """The kind an operator's self time is counted under (see the module doc)."""
    for kind, pattern in _PATTERNS:
        if pattern.search(op_name):
            return kind
    return FRAMEWORK


TRIED_SUFFIX = ' onednn_direct'


def build(label: str, size: int = 224, **kwargs) -> torch.nn.Module:
    """The zoo model ``label`` names (``kwargs`` to ``create_model``), or (``<model> onednn_direct``) that model
    with every ``SCConv2d`` computed by ``layer_profile.onednn_direct``, checked against its own output first."""
    if not label.endswith(TRIED_SUFFIX):
        return create_model(label, **kwargs)
    import functools

    from tests.authors_reference import randomize_
    model = randomize_(create_model(label[:-len(TRIED_SUFFIX)], **kwargs)).eval()
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
        layers = [m for m in model.modules() if isinstance(m, SCConv2d)]
        if not layers:
            raise ValueError(f'{label}: the model has no SCConv2d layer to compute another way')
        for layer in layers:
            layer.forward = functools.partial(layer_profile.onednn_direct, layer)
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    return model


def _step_fn(model: torch.nn.Module, mode: str, batch: int, size: int, channels_last: bool) -> Callable[[], None]:
    """One inference batch (under ``no_grad``) or one SGD training step, on fixed random data."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        model.to(memory_format=torch.channels_last)
    if mode == 'infer':
        model.eval()

        def infer() -> None:
            with torch.no_grad():
                model(x)
        return infer
    model.train()
    target = torch.randint(0, 1000, (batch,), generator=gen) % model.num_classes
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def train() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), target).backward()
        opt.step()
    return train


def _called_by_an_operator(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith('aten::'):
            return True
        parent = parent.cpu_parent
    return False


def between_operators(events, steps: int) -> Dict[str, float]:
    """``{'operators': top-level operators per step, 'between_ops_ms': idle time between consecutive ones per
    step}``, from a profiler's events. Top-level: an ATen operator that no other ATen operator called (the
    backward's, which autograd's engine calls, included), on the thread that ran the most of them (the main
    thread; a CPU backward runs there too)."""
    top = [e for e in events if e.name.startswith('aten::') and not _called_by_an_operator(e)]
    if not top:
        return {'operators': 0.0, 'between_ops_ms': 0.0}
    threads = statistics.multimode(e.thread for e in top)
    top = sorted((e for e in top if e.thread == threads[0]), key=lambda e: e.time_range.start)
    idle_us = sum(max(0.0, b.time_range.start - a.time_range.end) for a, b in zip(top, top[1:]))
    return {'operators': round(len(top) / steps, 2), 'between_ops_ms': round(idle_us / 1e3 / steps, 3)}


def profile_models(names: List[str], mode: str, batch: int, *, size: int = 224, steps: int = 3, warmup: int = 2,
                   channels_last: bool = False, top: int = 10, **kwargs) -> List[Dict[str, object]]:
    """Per model: the median step time without the profiler (the models interleaved step by step, so that a
    machine's drift reaches all of them alike), then under the profiler the per-step self time and number of
    calls of each kind, and the top operators."""
    fns, params = [], []
    for name in names:
        torch.manual_seed(0)
        model = build(name, size, **kwargs)
        params.append(sum(p.numel() for p in model.parameters()))
        fns.append(_step_fn(model, mode, batch, size, channels_last))
    for fn in fns:
        for _ in range(warmup):
            fn()
    wall: List[List[float]] = [[] for _ in names]
    for _ in range(steps):
        for times, fn in zip(wall, fns):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    rows = []
    for name, fn, times, count in zip(names, fns, wall, params):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                fn()
        kinds = {kind: 0.0 for kind in ORDER}
        calls = {kind: 0.0 for kind in ORDER}
        ops = []
        for event in prof.key_averages():
            kind, ms, n = kind_of(event.key), event.self_cpu_time_total / 1e3 / steps, event.count / steps
            kinds[kind] += ms
            calls[kind] += n
            ops.append({'op': event.key, 'kind': kind, 'ms': round(ms, 3), 'calls': round(n, 2)})
        ops.sort(key=lambda op: -op['ms'])
        rows.append({'model': name, 'mode': mode, 'batch': batch, 'parameters': count,
                     'wall_ms': round(statistics.median(times) * 1e3, 2),
                     'profiled_ms': round(sum(kinds.values()), 2),
                     **between_operators(prof.events(), steps),
                     'kinds_ms': {k: round(v, 3) for k, v in kinds.items()},
                     'kinds_calls': {k: round(v, 2) for k, v in calls.items()}, 'top_ops': ops[:top]})
    return rows


def excess(rows: List[Dict[str, object]]) -> Dict[str, Dict[str, float]]:
    """Per model after the first: milliseconds per kind above (or below) the first model's, in one group."""
    base = rows[0]['kinds_ms']
    return {row['model']: {kind: round(row['kinds_ms'][kind] - base[kind], 3) for kind in ORDER}
            for row in rows[1:]}


def _print_group(group: Dict[str, object]) -> None:
    rows = group['rows']
    print(f"\n{group['mode']}, batch {group['batch']}: ms per step (self time by kind; wall time unprofiled)")
    width = max(len(kind) for kind in ORDER)
    print(f'{"":<{width}} ' + ' '.join(f'{row["model"]:>12}' for row in rows))
    for kind in ORDER:
        print(f'{kind:<{width}} ' + ' '.join(f'{row["kinds_ms"][kind]:>12.2f}' for row in rows))
    print(f'{"all (profiled)":<{width}} ' + ' '.join(f'{row["profiled_ms"]:>12.2f}' for row in rows))
    print(f'{"top-level operators":<{width}} ' + ' '.join(f'{row["operators"]:>12.0f}' for row in rows))
    print(f'{"between operators":<{width}} ' + ' '.join(f'{row["between_ops_ms"]:>12.2f}' for row in rows))
    print(f'{"wall, unprofiled":<{width}} ' + ' '.join(f'{row["wall_ms"]:>12.2f}' for row in rows))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', nargs='+', default=['resnet50', 'scnet50'],
                        help='zoo models; the first is the baseline of the excess (default: resnet50 scnet50)')
    parser.add_argument('--infer-batch', type=int, nargs='*', default=[1, 8], help='inference batch sizes')
    parser.add_argument('--train-batch', type=int, nargs='*', default=[16], help='training batch sizes')
    parser.add_argument('--input-size', type=int, default=224, help='square input size in pixels (default: 224)')
    parser.add_argument('--infer-steps', type=int, default=40,
                        help='timed and profiled inference batches per model (default: 40)')
    parser.add_argument('--train-steps', type=int, default=8,
                        help='timed and profiled training steps per model (default: 8)')
    parser.add_argument('--warmup', type=int, default=2, help='untimed steps first (default: 2)')
    parser.add_argument('--threads', type=int, default=2, help='torch.set_num_threads (default: 2)')
    parser.add_argument('--channels', type=int, nargs=4, metavar='C',
                        help="the four stages' widths (timm's ResNet `channels`): e.g. 16 32 64 128 with the "
                             '*_cifar models, the small networks of benchmarks/small_networks.py')
    parser.add_argument('--channels-last', action='store_true', help='weights and inputs channels-last')
    parser.add_argument('--tried', action='store_true',
                        help="also profile, in inference, the last model with layer_profile.py's onednn_direct "
                             'design in every SC-Conv (see above)')
    parser.add_argument('--output', metavar='FILE', help='write the JSON report here')
    args = parser.parse_args(argv)
    tune_cpu_allocator()  # as the scnet command does, so that figures match what it measures
    if min(args.infer_steps, args.train_steps, args.threads, args.input_size) < 1 or args.warmup < 0:
        parser.error('--infer-steps, --train-steps, --threads and --input-size must be at least 1, '
                     '--warmup at least 0')
    if any(b < 1 for b in args.infer_batch + args.train_batch) or not args.infer_batch + args.train_batch:
        parser.error('give at least one batch size, each at least 1')
    for name in args.models:
        try:
            validate_model_name(name)
        except UnknownModelError as e:
            parser.error(str(e))
    if len(set(args.models)) != len(args.models):
        parser.error(f'--models: give each model once (got {" ".join(args.models)})')
    if args.channels and (min(args.channels) < 2 or any(c % 2 for c in args.channels)):
        parser.error('--channels must be even widths (SC-Conv splits each in two halves)')
    widths = {'channels': tuple(args.channels)} if args.channels else {}
    if args.tried and not any(isinstance(m, SCConv2d) for m in create_model(args.models[-1], **widths).modules()):
        parser.error(f'--tried computes SC-Conv another way: the last model, {args.models[-1]}, has no SC-Conv '
                     '(put an SC model last)')
    torch.set_num_threads(args.threads)
    report = {'machine': machine_facts(), 'settings': vars(args), 'kinds': ORDER, 'groups': []}
    for mode, batches, steps in (('infer', args.infer_batch, args.infer_steps),
                                 ('train', args.train_batch, args.train_steps)):
        models = args.models + [args.models[-1] + TRIED_SUFFIX] if args.tried and mode == 'infer' else args.models
        for batch in batches:
            rows = profile_models(models, mode, batch, size=args.input_size, steps=steps,
                                  warmup=args.warmup, channels_last=args.channels_last, **widths)
            group = {'mode': mode, 'batch': batch, 'rows': rows, 'excess_ms': excess(rows)}
            report['groups'].append(group)
            _print_group(group)
    layer_profile.finish_report(report, args.threads, args.output)
    return 0


if __name__ == '__main__':
    sys.exit(main())

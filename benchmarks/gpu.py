"""The GPU run of the performance issue: one script, under 8 minutes on one GPU, one JSON report.

    bash benchmarks/gpu.sh                            # one CUDA GPU: benchmarks/results/gpu.json (~7.5 min)
    bash benchmarks/gpu.sh --dry-run --output-dir D   # any machine, CPU only, tiny sizes: D/gpu_dry_run.json
    bash benchmarks/gpu.sh --output-dir "$OUT" --log-dir "$OUT/logs"   # on a lent machine: report and logs
                                                                       # where they come back from

Sections, in this order, each in its own process with its own time limit (the whole run is capped at 450 s),
so that a failure, a hang or an out-of-memory in one is recorded in the report and the others still run:

* ``compile_warmup`` (in the background from the start, until 165 s): one process per network and mode
  ``torch.compile``-s resnet50, scnet50 and the authors' structure (batch dimension dynamic; once more at batch
  1 for inference), and one runs every Triton specialisation of the gate kernels: this fills Inductor's and
  Triton's on-disk caches, so the timing sections below find them warm. (``scnet benchmark --compile`` builds
  and compiles every model once per batch size, which three networks, two modes and three batch sizes cannot
  afford in 8 minutes.)
* ``train_amp``: one short ``scnet train --amp --channels-last`` epoch of scnet50 on generated images (64 px).
* ``ddp``: one process of ``DistributedDataParallel`` over NCCL, started by ``torchrun``: scnet50 training
  steps at batch 32, bfloat16 autocast, channels-last, and an all-reduce check. It and ``train_amp`` run beside
  the compile warm-up: they check that these paths work; their speeds are not comparable (the report says so).
* ``gate_op``: the fused SC-Conv gate (``scnet.layers.gate_op``, Triton on CUDA) against the eager reference
  (``F.interpolate``/``sigmoid``/``mul``) and the layer's own eager path (``calibrated_product``), float32 and
  bfloat16, channels-last and NCHW, at every SC-Conv shape of scnet50 at batch 32: microseconds per call
  (forward; forward + backward), summed per network pass, and the largest error of each against a float64
  reference on the same inputs (outputs and the three gradients). Then, with time left in the section
  (``in_graphs``): BN3 and the gate ``torch.compile``-d both ways, with the operator in the graph and with the
  plain operations Inductor fuses (what the layer hands graphs), on the shape most SC layers share.
* ``models_eager``: resnet50, scnet50 and the authors' structure (``benchmarks/implementations.py``),
  inference at batch 1, 32 and 256 and training step at 32 and 256 (training at batch 1 cannot run: layer4's
  7x7 maps pool to a 1x1 SC context whose batch norm needs two values a channel), bfloat16 autocast,
  channels-last, cuDNN autotuning on: ``scnet.bench.runner.run_benchmark`` (what ``scnet benchmark --device
  cuda --amp --channels-last`` runs): images/s, peak memory (``torch.cuda.max_memory_allocated``), ratios
  against resnet50. Then, with time left, batch-1 inference once more, each network captured as a CUDA graph
  and replayed (``scnet benchmark --variants cuda_graph``, ``scnet.bench.cuda_graph``): eager networks at batch
  1 are bound by the host, which spends time on every operator, and SCNet-50 calls more than twice ResNet-50's
  operators; the replays time the GPU's work alone.
* ``models_compiled``: the same networks and settings, ``torch.compile``-d once per network and mode, at batch 32
  and 256 (both modes) and then 1: resnet50 and scnet50 timed interleaved, then the authors' structure on its
  own (``timed_separately``; a cold compile of it cannot cost the issue's ratio), with peak memory, ratios and
  each network's first-call seconds (a warm cache makes them short). The last section, it gets whatever time
  is left.

The report holds the machine (GPU name, CUDA, cuDNN, torch, triton), the settings, every section's status
(``ok``, ``failed``, ``timeout``, ``skipped``), its seconds and result or error (with the log's tail), and a
summary of the scnet50/resnet50 ratios against the issue's targets (>= 1.0x at batch 32 and 256, >= 0.9x at
batch 1). It is rewritten after every section, so a run stopped early keeps what it measured.

``--dry-run`` (or ``SCNET_GPU_DRY_RUN=1``) runs every section on the CPU at tiny sizes (batch 1-2, 128 px for
the networks, the smallest the authors' structure accepts, one SC shape for the gate, gloo instead of NCCL,
``torch.compile`` under the ``force_eager`` stance, the Triton kernels under Triton's interpreter, the lighter
sections inside the driver) in about 30 s: tests/test_gpu_script.py runs it, so the script cannot rot.
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

SECTIONS = ('compile_warmup', 'train_amp', 'ddp', 'gate_op', 'models_eager', 'models_compiled')
MODELS = (('resnet50', 'resnet50', 'scnet.models.factory:create_model'),
          ('scnet50', 'scnet50', 'scnet.models.factory:create_model'),
          ("scnet50 authors' structure", 'scnet50', 'implementations:authors_scnet'))
TARGETS = {1: 0.9, 32: 1.0, 256: 1.0}  # scnet50 / resnet50 images/s, from the issue

# Every size and limit of a run. Budgets are seconds of wall-clock, each section's capped by what is left of the
# total (450 s: 8 minutes less room for start-up); the compile warm-up overlaps train_amp and ddp.
GPU_PROFILE: Dict[str, Any] = {
    # training at batch 1 is impossible for SC-Convs at 224 px: layer4's 7x7 maps pool to a 1x1 context whose
    # batch norm needs more than one value per channel
    'device': 'cuda', 'image_size': 224, 'batches': {'infer': [1, 32, 256], 'train': [32, 256]},
    'graph_batches': [1],  # inference replayed from a CUDA graph: batch 1 without the host's share
    'compiled_batches': {'infer': [32, 256, 1], 'train': [32, 256]},
    'warm_batches': {'infer': [32, 1], 'train': [32]}, 'warm_pairs': None,
    'warmup': 3, 'repeats': 15, 'memory': True, 'compile_backend': 'inductor', 'compile_stance': None,
    'gate': {'batch': 32, 'image_size': 224, 'dtypes': ['float32', 'bfloat16'], 'layouts': ['channels_last', 'nchw'],
             'max_shapes': None, 'warmup': 10, 'iters': 50, 'rounds': 3},
    'train_amp': {'model': 'scnet50', 'model_kwargs': {}, 'image_size': 64, 'batch_size': 32, 'classes': 4,
                  'train_per_class': 32, 'val_per_class': 8, 'workers': 2, 'channels_last': True},
    'ddp': {'model': 'scnet50', 'model_kwargs': {}, 'image_size': 224, 'batch_size': 32, 'warmup': 3, 'steps': 10},
    'inline': [],
    'total_budget': 450, 'budgets': {'compile_warmup': 165, 'train_amp': 70, 'ddp': 70, 'gate_op': 60,
                                     'models_eager': 105, 'models_compiled': 135},
}
DRY_PROFILE: Dict[str, Any] = {
    # 128 px: the smallest input the authors' structure runs (its layer4 pools a 4x4 map with r = 4)
    'device': 'cpu', 'image_size': 128, 'batches': {'infer': [1, 2], 'train': [2]}, 'graph_batches': [1],
    'compiled_batches': {'infer': [2, 1], 'train': [2]}, 'warm_batches': {'infer': [2], 'train': [2]},
    'warm_pairs': [['scnet50', 'infer']], 'warmup': 0, 'repeats': 1, 'memory': False,
    'compile_backend': 'eager', 'compile_stance': 'force_eager',
    'gate': {'batch': 1, 'image_size': 32, 'dtypes': ['float32', 'bfloat16'], 'layouts': ['channels_last', 'nchw'],
             'max_shapes': 1, 'warmup': 0, 'iters': 1, 'rounds': 1},
    'train_amp': {'model': 'scnet26_cifar', 'model_kwargs': {'channels': [8, 16, 32, 64]}, 'image_size': 16,
                  'batch_size': 8, 'classes': 3, 'train_per_class': 8, 'val_per_class': 2, 'workers': 0,
                  'channels_last': False},
    'ddp': {'model': 'scnet26_cifar', 'model_kwargs': {'channels': [8, 16, 32, 64]}, 'image_size': 32,
            'batch_size': 2, 'warmup': 1, 'steps': 2},
    # the dry run runs gate_op and ddp as background processes (Triton's interpreter needs a fresh process,
    # ddp needs torchrun) and every other section inside the driver: process start-up is most of its time
    'inline': ['compile_warmup', 'train_amp', 'models_eager', 'models_compiled'],
    # limits, not durations: a 2-core AVX2 machine running the test suite beside it needs about 140 s in all
    'total_budget': 400, 'budgets': {'compile_warmup': 120, 'train_amp': 120, 'ddp': 120, 'gate_op': 120,
                                     'models_eager': 120, 'models_compiled': 120},
}


# ------------------------------------------------------------------------------------------------------ helpers

def _write_json(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(json.dumps(obj, indent=2, default=str) + '\n')
    os.replace(tmp, path)


def _error_text(e: BaseException) -> str:
    text = str(e).strip()
    return f'{type(e).__name__}: {text.splitlines()[0] if text else ""}'[:500]


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors='replace')[-chars:]
    except OSError:
        return ''


def _contenders():
    from scnet.bench.cases import Contender
    return [Contender(label, kwargs={'name': name}, factory=factory) for label, name, factory in MODELS]


def _sync(device) -> None:
    import torch
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)


class _Partial:
    """A worker's result, rewritten to its file after every piece, so a section killed at its time limit still
    reports what it finished."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: Dict[str, Any] = {}

    def save(self) -> None:
        _write_json(self.data, self.path)


# ---------------------------------------------------------------------------------------------- gate_op worker

def sc_layer_shapes(model_name: str, image_size: int, batch: int) -> List[Dict[str, Any]]:
    """Every distinct (channels, map size, context size) the gate of ``model_name``'s SC-Convs sees, with how
    many layers share it. Shapes only: the network runs on the meta device, and each layer's gate shapes follow
    from its input and its public attributes (half the input channels at the input's size; the context pooled
    by ``pooling_r`` with the window clamped to the map, as ``scnet.layers.calibration.pool_context`` does)."""
    import torch
    from scnet import create_model
    from scnet.layers.scconv import SCConv2d

    with torch.device('meta'):
        model = create_model(model_name).eval()
    seen: List[Dict[str, Any]] = []

    def record(module, args):
        _, cin, hh, ww = args[0].shape
        r = module.pooling_r
        wh, wr = min(r, hh), min(r, ww)
        seen.append({'channels': cin // 2, 'size': [hh, ww], 'context': [hh // wh, ww // wr],
                     'identity': module.identity, 'upsample': module.upsample})

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, SCConv2d)]
    with torch.no_grad():
        model(torch.empty(1, 3, image_size, image_size, device='meta'))
    for h in hooks:
        h.remove()
    shapes: Dict[str, Dict[str, Any]] = {}
    for e in seen:
        key = json.dumps(e, sort_keys=True)
        if key not in shapes:
            shapes[key] = {'batch': batch, **e, 'layers': 0}
        shapes[key]['layers'] += 1
    return list(shapes.values())


def _time_us(fn: Callable[[], Any], device, warmup: int, iters: int, rounds: int) -> float:
    """Median over ``rounds`` of the mean microseconds per call of ``iters`` back-to-back calls."""
    import torch
    for _ in range(warmup):
        fn()
    _sync(device)
    per_call = []
    for _ in range(rounds):
        if torch.device(device).type == 'cuda':
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            per_call.append(start.elapsed_time(end) * 1e3 / iters)
        else:
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            per_call.append((time.perf_counter() - t0) * 1e6 / iters)
    return statistics.median(per_call)


@contextlib.contextmanager
def _layer_without_fused_gate():
    """The layer's own eager path (broadcast over blocks, in-place sigmoid and product): ``calibrated_product``
    hands every tensor that can take the Triton kernels to them, on a GPU every tensor, so for the
    ``layer_eager`` column it is told that none can."""
    from unittest import mock

    from scnet.layers import calibration

    with mock.patch.object(calibration, 'gate_op_available', lambda tensor: False):
        yield


def worker_gate_op(cfg: Dict[str, Any], out: _Partial) -> None:
    import torch
    from scnet.layers import gate_op
    from scnet.layers.calibration import calibrated_product

    g = cfg['gate']
    device = torch.device(cfg['device'])
    probe = torch.empty(0, device=device)
    kernels = gate_op.gate_op_available(probe)
    out.data.update({
        'triton_importable': gate_op.HAS_TRITON,
        'triton_version': getattr(gate_op.triton, '__version__', None),
        'kernels': 'triton' if kernels and device.type == 'cuda' else
                   'triton interpreter (CPU; times meaningless)' if kernels else None,
        'device': str(device),
    })
    if not kernels:
        out.data['skipped_kernels'] = ('triton does not import here' if not gate_op.HAS_TRITON else
                                       f'{gate_op.triton_unavailable_reason(device)} (the ATen path ran instead)')
    shapes = sc_layer_shapes('scnet50', g['image_size'], g['batch'])
    out.data['shapes'] = shapes
    if g.get('max_shapes'):
        shapes = shapes[:g['max_shapes']]
        out.data['shapes_timed'] = len(shapes)
    rows: List[Dict[str, Any]] = []
    out.data['rows'] = rows
    gen = torch.Generator().manual_seed(0)
    for dtype_name in g['dtypes']:
        dtype = getattr(torch, dtype_name)
        for layout in g['layouts']:
            fmt = torch.channels_last if layout == 'channels_last' else torch.contiguous_format
            for shape in shapes:
                n, c, (hh, ww), (h, w) = shape['batch'], shape['channels'], shape['size'], shape['context']
                identity = shape['identity']
                f, x = (torch.randn(n, c, hh, ww, generator=gen).to(device, dtype).contiguous(memory_format=fmt)
                        for _ in range(2))
                ctx = torch.randn(n, c, h, w, generator=gen).to(device, dtype).contiguous(memory_format=fmt)
                grad = torch.randn(n, c, hh, ww, generator=gen).to(device, dtype).contiguous(memory_format=fmt)
                row: Dict[str, Any] = {'dtype': dtype_name, 'layout': layout, 'batch': n, 'channels': c,
                                       'size': [hh, ww], 'context': [h, w], 'identity': identity,
                                       'layers': shape['layers']}
                # float64 reference on the very same (rounded) inputs
                leaves64 = [t.detach().double().requires_grad_() for t in (f, x, ctx)]
                ref = gate_op.reference_gated_product(*leaves64, identity)
                ref_grads = torch.autograd.grad(ref, leaves64, grad.double())
                ref = ref.detach()
                with torch.no_grad():
                    fused = torch.ops.scnet.gated_product(f, x, ctx, identity)
                    eager = gate_op.reference_gated_product(f, x, ctx, identity)
                row['max_abs_error'] = {'fused': float((fused.double() - ref).abs().max()),
                                        'eager': float((eager.double() - ref).abs().max())}
                leaves = [t.detach().requires_grad_() for t in (f, x, ctx)]
                fused_grads = torch.autograd.grad(gate_op.gated_product(*leaves, identity), leaves, grad)
                eager_grads = torch.autograd.grad(gate_op.reference_gated_product(*leaves, identity), leaves, grad)
                names = ('features', 'x1', 'context')
                row['max_abs_grad_error'] = {
                    'fused': {k: float((a.double() - b).abs().max()) for k, a, b in zip(names, fused_grads, ref_grads)},
                    'eager': {k: float((a.double() - b).abs().max()) for k, a, b in zip(names, eager_grads, ref_grads)},
                }

                def fwd(fn):
                    def call():
                        with torch.no_grad():
                            fn(f, x, ctx, identity)
                    return call

                def fwd_bwd(fn):
                    def call():
                        y = fn(*leaves, identity)
                        torch.autograd.grad(y, leaves, grad)
                    return call

                def timed(call):
                    try:
                        return _time_us(call, device, warmup=g['warmup'], iters=g['iters'], rounds=g['rounds'])
                    except Exception as e:  # noqa: BLE001 - the layer's own path may change; say so, go on
                        row.setdefault('errors', []).append(_error_text(e))
                        return None

                layer = lambda a, b, cc, i: calibrated_product(a, b, cc, i, 'nearest')  # noqa: E731
                row['forward_us'] = {'fused': timed(fwd(gate_op.gated_product)),  # as the layer calls it
                                     'eager': timed(fwd(gate_op.reference_gated_product))}
                row['forward_backward_us'] = {'fused': timed(fwd_bwd(gate_op.gated_product)),
                                              'eager': timed(fwd_bwd(gate_op.reference_gated_product))}
                with _layer_without_fused_gate():
                    row['forward_us']['layer_eager'] = timed(fwd(layer))
                    row['forward_backward_us']['layer_eager'] = timed(fwd_bwd(layer))
                for kind in ('forward_us', 'forward_backward_us'):
                    us = row[kind]
                    if us['fused'] and us['eager']:
                        row[kind.replace('_us', '_speedup_vs_eager')] = us['eager'] / us['fused']
                rows.append(row)
                out.save()
    # per network pass: every SC layer once (the shapes' layer counts)
    totals: Dict[str, Any] = {}
    for r in rows:
        key = f"{r['dtype']} {r['layout']}"
        t = totals.setdefault(key, {'forward_us': {}, 'forward_backward_us': {}})
        for kind in ('forward_us', 'forward_backward_us'):
            for impl, us in r[kind].items():
                if us is not None:
                    t[kind][impl] = t[kind].get(impl, 0.0) + us * r['layers']
    out.data['per_network_pass'] = totals
    out.save()
    out.data['in_graphs'] = {}
    _gate_in_graphs(cfg, out, max(shapes, key=lambda shape: shape['layers']))


def _gate_in_graphs(cfg: Dict[str, Any], out: _Partial, shape: Dict[str, Any]) -> None:
    """Which gate the layer should hand ``torch.compile``: the fused operator, one Triton kernel that Inductor
    cannot fuse into, or the plain operations, which Inductor fuses with the BatchNorm that made ``features``
    (what ``scnet.layers.calibration.calibrated_product`` does in graphs). Both compiled behind BN3 in its
    inference form, on the shape most SC layers share, in bfloat16 (the networks' autocast dtype; else the
    settings' first dtype) and the settings' first layout: microseconds per call, forward and forward +
    backward. Run only with time left in the section."""
    import torch
    from scnet.layers import gate_op
    from scnet.layers.calibration import calibrated_product

    result = out.data['in_graphs']
    g = cfg['gate']
    if cfg['deadline'] - time.time() < 20:
        result['skipped'] = ['time budget spent']
        out.save()
        return
    device = torch.device(cfg['device'])
    dtype_name = 'bfloat16' if 'bfloat16' in g['dtypes'] else g['dtypes'][0]
    dtype = getattr(torch, dtype_name)
    fmt = torch.channels_last if g['layouts'][0] == 'channels_last' else torch.contiguous_format
    n, c, (hh, ww), (h, w) = shape['batch'], shape['channels'], shape['size'], shape['context']
    gen = torch.Generator().manual_seed(1)
    z, x1, grad = (torch.randn(n, c, hh, ww, generator=gen).to(device, dtype).contiguous(memory_format=fmt)
                   for _ in range(3))
    ctx = torch.randn(n, c, h, w, generator=gen).to(device, dtype).contiguous(memory_format=fmt)
    scale, shift = (torch.randn(1, c, 1, 1, generator=gen).to(device, dtype) for _ in range(2))
    result.update({'dtype': dtype_name, 'layout': g['layouts'][0], 'batch': n, 'channels': c,
                   'size': [hh, ww], 'context': [h, w], 'backend': cfg['compile_backend'],
                   'forward_us': {}, 'forward_backward_us': {}})

    def gate(operator: bool):
        def bn_gate(z, x1, ctx):
            features = z * scale + shift
            if operator:
                return gate_op.gated_product(features, x1, ctx, True)
            return calibrated_product(features, x1, ctx, True, 'nearest')
        return bn_gate

    with _compile_context(cfg):
        for kind in ('forward_us', 'forward_backward_us'):
            for name, operator in (('operator', True), ('plain_operations', False)):
                if cfg['deadline'] - time.time() < 15:  # a compilation and its timing, before the section's limit
                    result.setdefault('skipped', []).append(f'{kind} {name}: time budget spent')
                    continue
                torch._dynamo.reset()
                compiled = torch.compile(gate(operator), backend=cfg['compile_backend'], dynamic=False)
                leaves = [t.detach().requires_grad_(kind == 'forward_backward_us') for t in (z, x1, ctx)]

                def call():
                    if kind == 'forward_us':
                        with torch.no_grad():
                            return compiled(*leaves)
                    return torch.autograd.grad(compiled(*leaves), leaves, grad)
                try:
                    t0 = time.perf_counter()
                    call()
                    _sync(device)
                    result.setdefault('compile_s', {})[f'{kind} {name}'] = time.perf_counter() - t0
                    result[kind][name] = _time_us(call, device, warmup=g['warmup'], iters=g['iters'],
                                                  rounds=g['rounds'])
                except Exception as e:  # noqa: BLE001 - recorded; the section's rows are already saved
                    result.setdefault('errors', []).append(f'{kind} {name}: {_error_text(e)}')
                out.save()
        for kind in ('forward_us', 'forward_backward_us'):
            us = result[kind]
            if us.get('operator') and us.get('plain_operations'):
                # above 1: the operator is faster, and the layer should hand it to graphs after all
                result[kind.replace('_us', '_operator_speedup')] = us['plain_operations'] / us['operator']
    out.save()


# ------------------------------------------------------------------------------------------------ model workers

def worker_models_eager(cfg: Dict[str, Any], out: _Partial) -> None:
    import torch
    from scnet.bench.cases import Settings
    from scnet.bench.rates import gemm_rates
    from scnet.bench.runner import run_benchmark

    if cfg['device'] == 'cuda':
        torch.backends.cudnn.benchmark = True
    out.data['cudnn_benchmark'] = torch.backends.cudnn.benchmark
    try:
        out.data['gemm_bf16'] = gemm_rates(cfg['device'], torch.bfloat16)
    except Exception as e:  # noqa: BLE001 - a rate is a nicety
        out.data['gemm_bf16'] = {'error': _error_text(e)}
    runs: List[Dict[str, Any]] = []
    out.data['runs'] = runs
    s = cfg['image_size']
    # small batches first: the cheap answers arrive before any time limit; the replays from CUDA graphs, which
    # no target names, come last and only with time left
    plan = sorted(((b, m, 'eager') for m in ('infer', 'train') for b in cfg['batches'][m]), key=lambda p: p[0])
    plan += [(b, 'infer', 'cuda_graph') for b in cfg['graph_batches']]
    for batch, mode, variant in plan:
        run: Dict[str, Any] = {'mode': mode, 'batch_size': batch, 'variant': variant}
        runs.append(run)
        if variant == 'cuda_graph' and cfg['device'] != 'cuda':
            run['skipped'] = 'CUDA graphs need a CUDA GPU (this run is on the CPU)'
            continue
        # six builds (three for the logit check against eager), the captures, the timing
        if variant == 'cuda_graph' and time.time() > cfg['deadline'] - 30:
            run['skipped'] = 'time budget spent'
            continue
        settings = Settings(mode=mode, batch_size=batch, input_size=(s, s), device=cfg['device'], amp=True,
                            channels_last=True)
        t0 = time.perf_counter()
        try:
            contenders = [dataclasses.replace(c, variant=variant) for c in _contenders()]  # the same labels
            report = run_benchmark(contenders, settings, batch_sizes=[batch], warmup=cfg['warmup'],
                                   repeats=cfg['repeats'], memory=cfg['memory'], rates=False)
            run.update({'seconds': time.perf_counter() - t0, 'results': report['results'],
                        'settings': report['settings']})
        except Exception as e:  # noqa: BLE001 - recorded, the next batch still runs
            run['error'] = _error_text(e)
        if cfg['device'] == 'cuda':
            torch.cuda.empty_cache()
        out.save()


class _CompiledNet:
    """One network compiled once for one mode; ``step(batch)`` gives a callable running one batch through it
    (the batch dimension is marked dynamic above 1, so one compilation serves every batch > 1)."""

    def __init__(self, contender, mode: str, cfg: Dict[str, Any]) -> None:
        import torch
        from scnet.bench.cases import build_model

        self.device = torch.device(cfg['device'])
        self.mode = mode
        self.size = cfg['image_size']
        model = build_model(contender, seed=0).to(self.device).to(memory_format=torch.channels_last)
        model.train(mode == 'train')
        self.model = model
        self.compiled = torch.compile(model, backend=cfg['compile_backend'])
        self.optimizer = (torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
                          if mode == 'train' else None)

    def step(self, batch: int) -> Callable[[], Any]:
        import torch
        import torch.nn.functional as F

        g = torch.Generator().manual_seed(batch)
        x = torch.randn(batch, 3, self.size, self.size, generator=g).to(self.device)
        x = x.contiguous(memory_format=torch.channels_last)
        if batch > 1:
            torch._dynamo.maybe_mark_dynamic(x, 0)
        target = torch.randint(0, 1000, (batch,), generator=g).to(self.device)
        autocast = lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)  # noqa: E731

        if self.mode == 'infer':
            def run():
                with torch.inference_mode(), autocast():
                    return self.compiled(x)
            return run

        def run():
            self.optimizer.zero_grad(set_to_none=True)
            with autocast():
                logits = self.compiled(x)
            loss = F.cross_entropy(logits.float(), target)
            loss.backward()
            self.optimizer.step()
        return run


class _StepLike:
    """What ``scnet.bench.memory.cuda_step_peak`` expects of a step."""

    def __init__(self, fn: Callable[[], Any], device) -> None:
        self.fn, self.device = fn, device

    def __call__(self):
        return self.fn()

    def sync(self) -> None:
        _sync(self.device)


def _inductor_counters() -> Dict[str, int]:
    try:
        from torch._dynamo.utils import counters
        return {k: int(v) for k, v in counters['inductor'].items() if 'cache' in k}
    except Exception:  # noqa: BLE001
        return {}


def _compile_context(cfg: Dict[str, Any]):
    """Dynamo's recompile limits raised (``compile_headroom``) and, in the dry run, the ``force_eager`` stance
    (``torch.compile`` wraps the networks, nothing is traced: tracing three ResNet-50s takes a minute on a
    small CPU)."""
    import torch
    from scnet.deploy import compile_headroom

    stack = contextlib.ExitStack()
    stack.enter_context(compile_headroom())
    if cfg.get('compile_stance'):
        stack.enter_context(torch.compiler.set_stance(cfg['compile_stance']))
    return stack


def worker_compile_warm(cfg: Dict[str, Any], out: _Partial) -> None:
    """Compile networks (``warm_models``: label, name, factory, mode) at the warm-up batches, which fills
    Inductor's on-disk caches for the timing section."""
    import torch
    from scnet.bench.cases import Contender

    if cfg['device'] == 'cuda':
        torch.backends.cudnn.benchmark = True  # as in the timing process
    out.data['compile_s'] = {}
    with _compile_context(cfg):
        for label, name, factory, mode in cfg['warm_models']:
            times = out.data['compile_s'][f'{label} {mode}'] = {}
            net = _CompiledNet(Contender(label, kwargs={'name': name}, factory=factory), mode, cfg)
            for batch in cfg['warm_batches'][mode]:
                t0 = time.perf_counter()
                net.step(batch)()
                _sync(net.device)
                times[str(batch)] = time.perf_counter() - t0
                out.save()
            del net
    out.data['inductor_cache'] = _inductor_counters()


def worker_models_compiled(cfg: Dict[str, Any], out: _Partial) -> None:
    import torch
    from scnet.bench.memory import cuda_step_peak
    from scnet.bench.runner import add_ratios
    from scnet.bench.timing import summarize, time_interleaved

    if cfg['device'] == 'cuda':
        torch.backends.cudnn.benchmark = True
    out.data.update({'backend': cfg['compile_backend'], 'stance': cfg.get('compile_stance'), 'runs': []})
    deadline = cfg['deadline']
    # the targets first (batch 32 and 256, both modes); batch 1 last
    plan = [(m, b) for b in (32, 256, 2) for m in ('infer', 'train') if b in cfg['compiled_batches'][m]]
    plan += [(m, b) for m in ('infer', 'train') for b in cfg['compiled_batches'][m] if (m, b) not in plan]
    nets: Dict[str, Dict[str, _CompiledNet]] = {}
    with _compile_context(cfg):
        for mode, batch in plan:
            run: Dict[str, Any] = {'mode': mode, 'batch_size': batch}
            out.data['runs'].append(run)
            if time.time() > deadline - 10:
                run['skipped'] = 'time budget spent'
                out.save()
                continue
            run['first_call_s'] = {}
            rows: List[Dict[str, Any]] = []
            run['results'] = rows

            def timed_group(labels: List[str]) -> None:
                """Compile (or load from the warm caches) and time ``labels`` interleaved; rows and ratios
                saved at once."""
                steps = {label: nets[mode][label].step(batch) for label in labels}
                for label, step in steps.items():
                    t0 = time.perf_counter()
                    step()
                    _sync(cfg['device'])
                    run['first_call_s'][label] = time.perf_counter() - t0
                    out.save()
                times = time_interleaved(steps, warmup=cfg['warmup'], repeats=cfg['repeats'],
                                         sync=lambda: _sync(cfg['device']))
                separately = bool(rows)  # not interleaved with resnet50
                for label in steps:
                    row = {'model': label, 'variant': 'compiled', 'batch_size': batch, 'mode': mode,
                           **summarize(times[label], batch)}
                    row['images_per_s'] = row.pop('items_per_s')
                    if separately:
                        row['timed_separately'] = True
                    if cfg['memory'] and cfg['device'] == 'cuda':
                        row['memory'] = cuda_step_peak(_StepLike(steps[label], torch.device(cfg['device'])))
                    rows.append(row)
                add_ratios(rows)
                out.save()

            try:
                if mode not in nets:
                    nets[mode] = {c.label: _CompiledNet(c, mode, cfg) for c in _contenders()}
                labels = list(nets[mode])
                # resnet50 and scnet50 first, interleaved: the ratio is kept even if a cold compile of
                # the authors' structure then runs out of time; that one is timed after them, on its own
                timed_group(labels[:2])
                for label in labels[2:]:
                    if time.time() > deadline - 20:
                        run.setdefault('skipped_models', []).append(label)
                        continue
                    timed_group([label])
            except Exception as e:  # noqa: BLE001
                run['error'] = _error_text(e)
            out.data['inductor_cache'] = _inductor_counters()
            out.save()


# ------------------------------------------------------------------------------------- train_amp and ddp workers

def _write_images(root: Path, classes: int, per_split: Dict[str, int], size: int, seed: int = 0) -> None:
    """Learnable little images: noise with a class-specific bright stripe (rows, columns or a diagonal)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in per_split.items():
        for k in range(classes):
            folder = root / split / f'class{k}'
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                img = (rng.random((size, size, 3)) * 90).astype(np.uint8)
                pos = (k * size) // max(classes, 1)
                if k % 3 == 0:
                    img[pos:pos + max(1, size // 8), :] = 255
                elif k % 3 == 1:
                    img[:, pos:pos + max(1, size // 8)] = 255
                else:
                    idx = np.arange(size)
                    img[idx, (idx + pos) % size] = 255
                Image.fromarray(img).save(folder / f'{i:03d}.png')


def worker_train_amp(cfg: Dict[str, Any], out: _Partial) -> None:
    from scnet.cli.main import main

    t = cfg['train_amp']
    work = Path(cfg['work_dir']) / 'train_amp'
    data, run = work / 'data', work / 'run'
    _write_images(data, t['classes'], {'train': t['train_per_class'], 'val': t['val_per_class']}, t['image_size'])
    recipe = work / 'recipe.yaml'
    recipe.write_text('\n'.join([
        f"model: {t['model']}", f"model_kwargs: {json.dumps(t['model_kwargs'])}", 'epochs: 1',
        f"batch_size: {t['batch_size']}", 'base_lr: 0.1', 'weight_decay: 1.0e-4', 'schedule: cosine',
        f"image_size: {t['image_size']}", f"eval_resize: {t['image_size']}", 'augment: flip',
        f"workers: {t['workers']}", '']))
    args = ['train', '--data', str(data), '--config', str(recipe), '--output', str(run), '--amp', '--quiet',
            '--device', cfg['device']]
    if t['channels_last']:
        args.append('--channels-last')
    out.data['command'] = 'scnet ' + ' '.join(args)
    t0 = time.perf_counter()
    rc = main(args)
    out.data['seconds'] = time.perf_counter() - t0
    out.data['exit_status'] = rc
    metrics = run / 'metrics.jsonl'
    if metrics.exists():
        out.data['metrics'] = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    if rc != 0:
        raise RuntimeError(f'scnet train exited with status {rc}')
    if not out.data.get('metrics'):
        raise RuntimeError('scnet train wrote no metrics.jsonl row')


def worker_ddp(cfg: Dict[str, Any], out: _Partial) -> None:
    """Run by torchrun: DistributedDataParallel training steps over NCCL (gloo on the CPU)."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel

    from scnet import create_model

    d = cfg['ddp']
    cuda = cfg['device'] == 'cuda'
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    device = torch.device('cuda', local_rank) if cuda else torch.device('cpu')
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(backend='nccl' if cuda else 'gloo')
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        model = create_model(d['model'], **d['model_kwargs']).to(device).to(memory_format=torch.channels_last)
        ddp = DistributedDataParallel(model, device_ids=[local_rank] if cuda else None)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9)
        g = torch.Generator().manual_seed(rank)
        x = torch.randn(d['batch_size'], 3, d['image_size'], d['image_size'], generator=g).to(device)
        x = x.contiguous(memory_format=torch.channels_last)
        target = torch.randint(0, int(getattr(model, 'num_classes', 1000)), (d['batch_size'],), generator=g).to(device)
        losses: List[float] = []

        def step():
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                logits = ddp(x)
            loss = F.cross_entropy(logits.float(), target)
            loss.backward()
            optimizer.step()
            return loss

        for _ in range(d['warmup']):
            losses.append(float(step()))
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(d['steps']):
            loss = step()
        _sync(device)
        seconds = time.perf_counter() - t0
        losses.append(float(loss))
        probe = torch.full((1,), float(rank + 1), device=device)
        dist.all_reduce(probe)
        if rank == 0:
            out.data.update({
                'backend': dist.get_backend(), 'world_size': world, 'model': d['model'],
                'batch_size_per_process': d['batch_size'], 'image_size': d['image_size'],
                'images_per_s': d['steps'] * d['batch_size'] * world / seconds, 'losses': losses,
                'finite': all(l == l and abs(l) != float('inf') for l in losses),
                'all_reduce_ok': float(probe) == world * (world + 1) / 2,
                'nccl_version': '.'.join(map(str, torch.cuda.nccl.version())) if cuda else None,
            })
            out.save()
            if not out.data['finite'] or not out.data['all_reduce_ok']:
                raise RuntimeError('DDP step gave a non-finite loss or a wrong all-reduce')
    finally:
        dist.destroy_process_group()


WORKERS = {'gate_op': worker_gate_op, 'models_eager': worker_models_eager, 'models_compiled': worker_models_compiled,
           'compile_warm': worker_compile_warm, 'train_amp': worker_train_amp, 'ddp': worker_ddp}


def run_worker(name: str, config_path: Path, out_path: Path) -> int:
    cfg = json.loads(config_path.read_text())
    out = _Partial(out_path)
    try:
        WORKERS[name](cfg, out)
    except BaseException as e:  # noqa: BLE001 - reported in the JSON, then the exit status says it failed
        out.data['error'] = _error_text(e)
        out.data['traceback'] = traceback.format_exc()[-4000:]
        out.save()
        return 1
    out.save()
    return 0


# ------------------------------------------------------------------------------------------------- orchestrator

class _Proc:
    """A worker process in its own process group (so a time limit ends its children too: torchrun's workers,
    Inductor's compile workers)."""

    running: List['_Proc'] = []  # every process started, ended when the driver ends

    def __init__(self, name: str, cmd: List[str], env: Dict[str, str], work: Path, tag: str, log_dir: Path) -> None:
        self.name, self.tag = name, tag
        self.out = work / f'{tag}.json'
        self.log = log_dir / f'{tag}.log'
        self.started = time.time()
        self.ended: Optional[float] = None
        with open(self.log, 'w') as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT),
                                         start_new_session=True)
        _Proc.running.append(self)

    def poll(self) -> None:
        """Note when the process ended (for a background process waited for later)."""
        if self.ended is None and self.proc.poll() is not None:
            self.ended = time.time()

    def wait(self, timeout: float) -> Dict[str, Any]:
        status = 'ok'
        try:
            rc = self.proc.wait(timeout=max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            self.kill()
            rc, status = None, 'timeout'
        self.poll()
        seconds = (self.ended or time.time()) - self.started
        result: Dict[str, Any] = {}
        if self.out.exists():
            try:
                result = json.loads(self.out.read_text())
            except ValueError:
                result = {}
        record: Dict[str, Any] = {'status': status, 'seconds': round(seconds, 2), 'exit_status': rc}
        if status == 'ok' and rc != 0:
            record['status'] = 'failed'
        if 'error' in result:
            record['error'] = result.pop('error')
            record['traceback'] = result.pop('traceback', None)
        elif record['status'] == 'timeout':
            record['error'] = f'stopped at its time limit ({timeout:.0f} s); partial results kept'
        elif record['status'] == 'failed':
            record['error'] = f'exit status {rc}'
        if record['status'] != 'ok':
            record['log_tail'] = _tail(self.log)
        record['result'] = result
        return record

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.proc.wait()


def _machine(device: str) -> Dict[str, Any]:
    import torch
    from scnet.bench.machine import machine_facts
    from scnet.layers import gate_op

    facts = machine_facts(device)
    facts['versions']['triton'] = getattr(gate_op.triton, '__version__', None)
    facts['cuda_available'] = torch.cuda.is_available()
    facts['torch_cuda'] = torch.version.cuda
    if torch.cuda.is_available():
        facts['gpus'] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return facts


def _summary(sections: Dict[str, Any]) -> Dict[str, Any]:
    """scnet50 and the authors' structure against resnet50, per variant, mode and batch, with the targets."""
    table: List[Dict[str, Any]] = []
    for section, variant in (('models_eager', 'eager'), ('models_compiled', 'compiled')):
        for run in (sections.get(section, {}).get('result') or {}).get('runs', []):
            rows = {r['model']: r for r in run.get('results') or []}
            if 'resnet50' not in rows:
                continue
            entry: Dict[str, Any] = {'variant': run.get('variant', variant), 'mode': run['mode'],
                                     'batch_size': run['batch_size'],
                                     'resnet50_images_per_s': rows['resnet50']['images_per_s']}
            for label, key in (('scnet50', 'scnet50'), ("scnet50 authors' structure", 'authors')):
                if label in rows:
                    entry[f'{key}_speed_ratio'] = rows[label]['speed_ratio']
                    if rows[label].get('round_ratio'):
                        entry[f'{key}_speed_ratio_per_round'] = rows[label]['round_ratio']
                    if rows[label].get('memory_ratio') is not None:
                        entry[f'{key}_memory_ratio'] = rows[label]['memory_ratio']
            target = TARGETS.get(run['batch_size'])
            if target is not None and 'scnet50_speed_ratio' in entry:
                entry['target'] = target
                entry['meets_target'] = entry['scnet50_speed_ratio'] >= target
            table.append(entry)
    gate = (sections.get('gate_op', {}).get('result') or {}).get('per_network_pass')
    return {'scnet50_vs_resnet50': table, 'gate_op_per_network_pass_us': gate,
            'section_status': {name: s.get('status') for name, s in sections.items()}}


def _inline(name: str, cfg: Dict[str, Any], work: Path) -> Dict[str, Any]:
    """A section run inside this process (the dry run): the same worker, the same record, no time limit."""
    out = _Partial(work / f'{name}.json')
    t0 = time.time()
    record: Dict[str, Any] = {'status': 'ok', 'in_process': True}
    try:
        WORKERS[name if name != 'compile_warmup' else 'compile_warm'](cfg, out)
    except Exception as e:  # noqa: BLE001 - recorded; the next section still runs
        record.update(status='failed', error=_error_text(e), traceback=traceback.format_exc()[-4000:])
    record['seconds'] = round(time.time() - t0, 2)
    record['result'] = out.data
    return record


def _combine_warm(records: Dict[str, Dict[str, Any]], seconds: float) -> Dict[str, Any]:
    statuses = {r['status'] for r in records.values()}
    status = 'ok' if statuses <= {'ok'} else ('timeout' if 'timeout' in statuses else 'failed')
    return {'status': status, 'seconds': round(seconds, 2), 'result': records}


def orchestrate(dry_run: bool, output_dir: Path, total_budget: Optional[float], only: Optional[List[str]],
                log_dir: Optional[Path] = None) -> int:
    profile = dict(DRY_PROFILE if dry_run else GPU_PROFILE)
    start = time.time()
    total = total_budget or profile['total_budget']
    deadline = start + total
    output_dir.mkdir(parents=True, exist_ok=True)
    report_path = output_dir / ('gpu_dry_run.json' if dry_run else 'gpu.json')
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([str(ROOT), str(HERE)] + ([env['PYTHONPATH']] if env.get('PYTHONPATH') else []))
    import torch
    if dry_run:  # one thread a process: several run at once, and OpenMP's waiting threads crawl when crowded
        env['OMP_NUM_THREADS'] = '1'
        torch.set_num_threads(1)
    if not dry_run and not torch.cuda.is_available():
        print('benchmarks/gpu.py: PyTorch sees no CUDA GPU here; --dry-run rehearses the run on the CPU',
              file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix='scnet-gpu-'))  # configs, logs and partial results of the workers
    atexit.register(shutil.rmtree, work, True)
    if log_dir is not None:  # written there as they run, so a run killed from outside keeps them too
        log_dir.mkdir(parents=True, exist_ok=True)
    if not dry_run:  # what made Dynamo compile again, in the logs
        env.setdefault('TORCH_LOGS', 'recompiles')

    report: Dict[str, Any] = {'dry_run': dry_run, 'machine': _machine(profile['device']),
                              'settings': {**profile, 'total_budget': total}, 'sections': {}}
    sections: Dict[str, Any] = report['sections']
    wanted = [s for s in SECTIONS if only is None or s in only]
    for name in SECTIONS:
        if name not in wanted:
            sections[name] = {'status': 'skipped', 'reason': 'not asked for (--sections)'}

    def save() -> None:
        report['elapsed_s'] = round(time.time() - start, 2)
        report['summary'] = _summary(sections)
        _write_json(report, report_path)

    def log(name: str) -> None:
        rec = sections[name]
        print(f"[{time.time() - start:6.1f} s] {name}: {rec['status']}"
              + (f" ({rec.get('error')})" if rec.get('error') else ''), flush=True)

    def limit(name: str) -> float:
        """A section's own budget, or for the last section run whatever time is left."""
        if name == wanted[-1]:
            return max(1.0, deadline - time.time())
        return max(1.0, min(profile['budgets'][name], deadline - time.time()))

    def config(extra: Dict[str, Any], tag: str) -> Path:
        path = work / f'{tag}.config.json'
        _write_json({**profile, **extra, 'work_dir': str(work)}, path)
        return path

    def spawn(name: str, tag: str, extra: Dict[str, Any], extra_env: Optional[Dict[str, str]] = None,
              torchrun: bool = False) -> _Proc:
        tail = [str(HERE / 'gpu.py'), '--worker', name, '--config', str(config(extra, tag)),
                '--out', str(work / f'{tag}.json')]
        # (--log-dir: torchrun's agent keeps a folder of its own, by default a new torchelastic_* one in /tmp)
        head = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node', '1',
                '--log-dir', str(work / f'{tag}.torchrun')] if torchrun else [sys.executable]
        return _Proc(name, head + tail, dict(env, **(extra_env or {})), work, tag, log_dir or work)

    def warm_models() -> List[List[str]]:
        pairs = profile.get('warm_pairs')
        return [[label, name, factory, mode] for label, name, factory in MODELS for mode in ('infer', 'train')
                if pairs is None or [label, mode] in pairs]

    # the Triton kernels on CPU tensors in the dry run: Triton's interpreter, which needs a fresh process
    gate_env = {'TRITON_INTERPRET': '1', 'SCNET_GATE_OP_INTERPRET': '1'} if dry_run else {}
    if dry_run:
        gate_env['CUDA_VISIBLE_DEVICES'] = ''
    torchrun = {'ddp': True}
    envs = {'gate_op': gate_env}

    def run_section(name: str) -> None:
        if name not in wanted:
            return
        if deadline - time.time() < 5:
            sections[name] = {'status': 'skipped', 'reason': 'total time budget spent'}
        elif name in profile['inline']:
            sections[name] = _inline(name, {**profile, 'work_dir': str(work), 'deadline': time.time() + limit(name),
                                            'warm_models': warm_models()}, work)
        else:
            proc = spawn(name, name, {'deadline': time.time() + limit(name)}, envs.get(name),
                         torchrun=torchrun.get(name, False))
            sections[name] = proc.wait(limit(name))
        for proc in background.values():
            proc.poll()
        log(name)
        save()

    save()
    background: Dict[str, _Proc] = {}
    warm: Dict[str, _Proc] = {}
    if dry_run:  # the two sections that need their own process run alongside the others
        for name in ('gate_op', 'ddp'):
            if name in wanted:
                background[name] = spawn(name, name, {'deadline': start + profile['budgets'][name]}, envs.get(name),
                                         torchrun=torchrun.get(name, False))
    if 'compile_warmup' in wanted and 'compile_warmup' not in profile['inline']:
        # one process per network and mode, compiling in parallel with train_amp and ddp
        for label, name, factory, mode in warm_models():
            tag = 'warm_' + re.sub(r'\W+', '_', f'{label} {mode}')
            warm[tag] = spawn('compile_warm', tag, {'warm_models': [[label, name, factory, mode]]},
                              {'TORCHINDUCTOR_COMPILE_THREADS': os.environ.get('TORCHINDUCTOR_COMPILE_THREADS', '2')})
        if 'gate_op' in wanted:  # every Triton specialisation of the gate kernels, into Triton's disk cache
            warm['warm_gate_op'] = spawn('gate_op', 'warm_gate_op',
                                         {'gate': {**profile['gate'], 'warmup': 0, 'iters': 1, 'rounds': 1}})

    run_section('train_amp')
    if 'ddp' not in background:
        run_section('ddp')
    if warm:
        for name in ('train_amp', 'ddp'):
            if name in sections and sections[name].get('status') != 'skipped':
                sections[name]['note'] = ('timed while the compile warm-up ran beside it on the same GPU and '
                                          'CPUs: a check that it runs, its speed not comparable with models_eager')
        t_warm = start + profile['budgets']['compile_warmup']
        sections['compile_warmup'] = _combine_warm(
            {tag: p.wait(min(t_warm, deadline) - time.time()) for tag, p in warm.items()}, time.time() - start)
        log('compile_warmup')
        save()
    elif 'compile_warmup' in profile['inline']:
        run_section('compile_warmup')
    if 'gate_op' not in background:
        run_section('gate_op')
    run_section('models_eager')
    run_section('models_compiled')
    for name, proc in background.items():
        sections[name] = proc.wait(start + profile['budgets'][name] - time.time())
        log(name)
    save()
    print(f'wrote {report_path} in {time.time() - start:.0f} s')
    for entry in report['summary']['scnet50_vs_resnet50']:
        print(f"  {entry['variant']:10s} {entry['mode']:5s} batch {entry['batch_size']:3d}: scnet50/resnet50 "
              f"{entry.get('scnet50_speed_ratio', float('nan')):.3f}x"
              + (f" (target {entry['target']}x: {'met' if entry['meets_target'] else 'NOT met'})"
                 if 'target' in entry else ''))
    in_graphs = (sections['gate_op'].get('result') or {}).get('in_graphs') or {}
    for kind in ('forward', 'forward_backward'):
        if f'{kind}_operator_speedup' in in_graphs:
            print(f"  gate in compiled graphs, {kind}: the operator {in_graphs[f'{kind}_operator_speedup']:.2f}x "
                  'the plain operations (above 1: graphs should get the operator)')
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--dry-run', action='store_true', default=os.environ.get('SCNET_GPU_DRY_RUN') == '1',
                   help='every section on the CPU at tiny sizes (also SCNET_GPU_DRY_RUN=1)')
    p.add_argument('--output-dir', type=Path, default=ROOT / 'benchmarks' / 'results',
                   help='where the JSON report goes: gpu.json, or gpu_dry_run.json with --dry-run '
                        '(default: benchmarks/results)')
    p.add_argument('--total-budget', type=float, default=None, metavar='S',
                   help='seconds for the whole run (default: 450 on the GPU, 400 for the dry run)')
    p.add_argument('--sections', nargs='+', choices=SECTIONS, default=None, help='run only these sections')
    p.add_argument('--log-dir', type=Path, default=None, metavar='DIR',
                   help="keep every worker's log here, written as it runs (default: a temporary folder, removed "
                        "at the end; a failed section keeps its log's tail in the report)")
    p.add_argument('--worker', choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument('--config', type=Path, help=argparse.SUPPRESS)
    p.add_argument('--out', type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return run_worker(args.worker, args.config, args.out)
    try:
        import scnet  # noqa: F401 - torch, torchvision, timm, safetensors, ...
    except ImportError as e:
        print(f'benchmarks/gpu.py: cannot import scnet here ({e}); install its dependencies (pip install -e .) '
              f'or bring them as wheels', file=sys.stderr)
        return 2
    # a SIGTERM (a time limit from outside) ends the run like an exception: the finally below ends the workers,
    # which run in their own sessions and would otherwise outlive the driver
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        return orchestrate(args.dry_run, args.output_dir, args.total_budget, args.sections, args.log_dir)
    finally:  # interrupted or not, no worker outlives the driver
        for proc in _Proc.running:
            proc.kill()


if __name__ == '__main__':
    sys.exit(main())

"""A whole comparison: contenders timed side by side under shared settings, as one JSON-ready report.

For every batch size the contenders are built, checked (one call each, so a model that cannot run these
settings fails with its name before any timing), timed interleaved (``scnet.bench.timing``), optionally
measured for peak memory (``scnet.bench.memory``), and set against the first contender, the baseline:
``speed_ratio`` is its images/s over the baseline's (medians over rounds), ``round_ratio`` the quartiles of the
same ratio taken round by round (``scnet.bench.timing.round_ratios``; each row keeps its per-round times in
``round_ms``), ``memory_ratio`` its peak over the baseline's. Inference
rows also carry the model's arithmetic rate (forward FLOPs as ``scnet profile`` counts them, times
images/s) as a fraction of the machine's GEMM rates measured in the same run, and variants other than
eager carry their largest logit difference from the eager model on the same batch.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, List, Optional, Sequence

import torch

from scnet.bench.cases import BenchmarkError, Contender, Settings, Step, build_step, forward_macs
from scnet.bench.machine import machine_facts
from scnet.bench.memory import cpu_step_peak, cuda_step_peak
from scnet.bench.rates import gemm_rates
from scnet.bench.timing import round_ratios, summarize, time_interleaved
from scnet.deploy import compile_headroom
from scnet.errors import is_single_value_batch

__all__ = ['run_benchmark']


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _check(step: Step) -> None:
    """Run one call, turning a failure into an error that names the contender and a likely way out."""
    try:
        step()
        step.sync()
    except (RuntimeError, ValueError) as e:
        hint = ''
        if is_single_value_batch(e):
            hint = ' (training batch norm needs a batch of at least 2 where feature maps are 1x1: --batch-size 2)'
        raise BenchmarkError(f'{step.contender.label} cannot run {step.settings.mode} at batch '
                             f'{step.settings.batch_size}, input {step.settings.input_size}: {_first_line(e)}{hint}') from e


def run_benchmark(contenders: Sequence[Contender], settings: Settings, *, batch_sizes: Sequence[int] = (),
                  warmup: int = 3, repeats: int = 10, memory: bool = True, memory_steps: int = 2,
                  rates: bool = True, progress: Optional[Callable[[str, int], Callable[[int], None]]] = None,
                  ) -> Dict[str, object]:
    """Time ``contenders`` side by side; the first is the baseline of the ratios.

    ``batch_sizes`` (default: ``settings.batch_size``) each get their own interleaved group. ``progress(title,
    total)`` may return a callable told of finished calls (the CLI draws a bar with it).
    """
    if not contenders:
        raise BenchmarkError('nothing to benchmark: give at least one model')
    labels = [c.label for c in contenders]
    if len(set(labels)) != len(labels):
        raise BenchmarkError(f'each contender needs its own label, got {labels}')
    sizes = list(batch_sizes) or [settings.batch_size]
    # compiled contenders share code objects: see compile_headroom
    with compile_headroom() if settings.compile else contextlib.nullcontext():
        return _run(contenders, settings, sizes, warmup, repeats, memory, memory_steps, rates, progress)


def _run(contenders, settings, sizes, warmup, repeats, memory, memory_steps, rates, progress):
    labels = [c.label for c in contenders]
    report: Dict[str, object] = {
        'machine': machine_facts(settings.device),
        'settings': {**settings.as_dict(), 'batch_sizes': sizes, 'warmup': warmup, 'repeats': repeats},
        'baseline': contenders[0].label,
    }
    compute_dtype = torch.bfloat16 if settings.amp else torch.float32
    if rates:
        report['gemm'] = gemm_rates(settings.device, compute_dtype)
    rows: List[Dict[str, object]] = []
    macs: Dict[str, int] = {}
    for batch in sizes:
        s = Settings(**{**settings.as_dict(), 'batch_size': batch, 'input_size': tuple(settings.input_size)})
        steps: Dict[str, Step] = {}
        try:
            for c in contenders:
                steps[c.label] = build_step(c, s)
                _check(steps[c.label])
            diffs = _differences(steps) if s.mode == 'infer' else {}
            tick = progress(f'{s.mode} batch {batch}', (warmup + repeats) * len(steps)) if progress else None
            times = time_interleaved(steps, warmup=warmup, repeats=repeats,
                                     sync=steps[labels[0]].sync, progress=tick)
            for c in contenders:
                row: Dict[str, object] = {'model': c.label, 'variant': c.variant, 'batch_size': batch,
                                          'mode': s.mode, **summarize(times[c.label], batch)}
                row['images_per_s'] = row.pop('items_per_s')
                row['round_ms'] = [t * 1e3 for t in times[c.label]]
                if c.label in diffs:
                    row['max_abs_diff_vs_eager'] = diffs[c.label]
                if s.mode == 'infer':
                    if c.label not in macs:
                        macs[c.label] = forward_macs(steps[c.label].model, s.input_size)
                    gflops = 2 * macs[c.label] * row['images_per_s'] / 1e9
                    row['forward_gmacs'] = macs[c.label] / 1e9
                    row['gflops_per_s'] = gflops
                    if rates:
                        row['fraction_of_matmul'] = gflops / report['gemm']['matmul_gflops']
                        row['fraction_of_conv1x1'] = gflops / report['gemm']['conv1x1_gflops']
                if memory:
                    if steps[c.label].captured_memory is not None:  # graph replays allocate nothing
                        row['memory'] = steps[c.label].captured_memory
                    elif s.device.startswith('cuda'):
                        row['memory'] = cuda_step_peak(steps[c.label], memory_steps)
                    else:
                        row['memory'] = cpu_step_peak(c, s, memory_steps, threads=torch.get_num_threads())
                rows.append(row)
        finally:
            for step in steps.values():
                step.close()
        add_ratios([r for r in rows if r['batch_size'] == batch])
    report['results'] = rows
    return report


def _differences(steps: Dict[str, Step]) -> Dict[str, float]:
    """Largest |logit - eager logit| of each non-eager variant, against the eager contender of the same model."""
    eager = {}
    for step in steps.values():
        if step.contender.variant == 'eager':
            eager[repr(sorted(step.contender.kwargs.items())) + step.contender.factory] = step
    out = {}
    for label, step in steps.items():
        if step.contender.variant == 'eager':
            continue
        key = repr(sorted(step.contender.kwargs.items())) + step.contender.factory
        reference = eager.get(key)
        if reference is None:  # no eager twin in the comparison: build one only for the check
            reference = build_step(Contender(label=label + ' (eager check)', kwargs=step.contender.kwargs,
                                             factory=step.contender.factory), step.settings)
        out[label] = float((step.output() - reference.output()).abs().max())
        if reference not in steps.values():
            reference.close()
    return out


def add_ratios(rows: List[Dict[str, object]]) -> None:
    """Speed (and, where measured, memory) ratio of each row to the first row; with per-round times, the
    quartiles of the round-by-round speed ratio too (not for the first row: 1.0 in every round)."""
    base = rows[0]
    for row in rows:
        row['speed_ratio'] = row['images_per_s'] / base['images_per_s']
        if row is not base and row.get('round_ms') and base.get('round_ms'):
            row['round_ratio'] = round_ratios(base['round_ms'], row['round_ms'])
        peak, base_peak = (row.get('memory') or {}).get('peak_mb'), (base.get('memory') or {}).get('peak_mb')
        if peak is not None and base_peak:
            row['memory_ratio'] = peak / base_peak

"""Interleaved timing: every round runs each contender once, in a rotating order.

Why interleave instead of timing one model after the other: on a shared or thermally throttled machine the
speed drifts over minutes, and a sequential comparison folds that drift into the ratio. Rounds that run each
contender once, back to back, expose all of them to the same conditions, and rotating who goes first removes
the advantage of running right after a particular neighbour (warm caches, a just-woken thread pool). The
median over rounds ignores the odd round hit by a background job; the spread says how much to trust it.

The ratio of two contenders is taken a second way, round by round (``round_ratios``): the two calls of one
round ran back to back, so a slow spell of the machine slows both and leaves their ratio nearly unchanged,
where it widens each contender's own spread. The quartiles of the per-round ratios say how far the ratio
itself can be trusted: a target that lies between them is neither met nor missed by that run, but tied.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List, Mapping, Optional, Tuple

__all__ = ['time_interleaved', 'summarize', 'round_ratios']

Step = Callable[[], None]


def time_interleaved(steps: Mapping[str, Step], *, warmup: int = 3, repeats: int = 10,
                     sync: Optional[Callable[[], None]] = None,
                     progress: Optional[Callable[[int], None]] = None) -> Dict[str, List[float]]:
    """Seconds per call of each step, ``repeats`` rounds after ``warmup`` rounds that are not recorded.

    ``sync`` runs after each call before the clock stops (``torch.cuda.synchronize`` on a GPU, where calls
    only queue work). ``progress(n)`` is told when n more calls are done (for a progress bar).
    """
    if warmup < 0 or repeats < 1:
        raise ValueError(f'warmup must be >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}')
    names = list(steps)
    times: Dict[str, List[float]] = {name: [] for name in names}
    for round_index in range(warmup + repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            steps[name]()
            if sync is not None:
                sync()
            elapsed = time.perf_counter() - start
            if round_index >= warmup:
                times[name].append(elapsed)
            if progress is not None:
                progress(1)
    return times


def summarize(seconds: List[float], items_per_call: int = 1) -> Dict[str, float]:
    """Median, extremes and spread of per-call times, and the throughput at the median.

    ``spread_pct`` is the inter-quartile range over the median, in percent: a robust "how noisy was this".
    """
    if not seconds:
        raise ValueError('no timings to summarize')
    ordered = sorted(seconds)
    q1, median, q3 = _quartiles(ordered)
    return {
        'median_ms': median * 1e3,
        'min_ms': ordered[0] * 1e3,
        'max_ms': ordered[-1] * 1e3,
        'spread_pct': (q3 - q1) / median * 100.0 if median > 0 else 0.0,
        'items_per_s': items_per_call / median if median > 0 else float('inf'),
        'repeats': len(ordered),
    }


def round_ratios(baseline_times: List[float], times: List[float]) -> Dict[str, float]:
    """Quartiles of the per-round speed ratio ``baseline time / time`` (above 1: faster than the baseline), the
    i-th time of each list being from the same round of ``time_interleaved`` (in any one unit)."""
    if len(baseline_times) != len(times) or not times:
        raise ValueError(f'per-round ratios need the same number of rounds from both contenders, got '
                         f'{len(baseline_times)} and {len(times)}')
    q1, median, q3 = _quartiles(sorted(b / t for b, t in zip(baseline_times, times)))
    return {'q1': q1, 'median': median, 'q3': q3}


def _quartiles(ordered: List[float]) -> Tuple[float, float, float]:
    """First quartile, median and third quartile of sorted values (inclusive method); with fewer than four
    values, the extremes stand in for the quartiles."""
    median = statistics.median(ordered)
    if len(ordered) >= 4:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method='inclusive')
        return q1, median, q3
    return ordered[0], median, ordered[-1]

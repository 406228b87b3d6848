"""The machine's matrix-multiply rate, measured in the same run as the models it is compared with.

Two figures, because on some CPUs they differ widely: ``matmul`` is ``torch.matmul`` (the BLAS PyTorch links,
MKL on x86 wheels, which on AMD CPUs runs its AVX2 kernels), ``conv1x1`` is a 1x1 convolution over a large
map, a plain GEMM that goes through oneDNN (the library that runs the networks' convolutions, AVX-512 where
the CPU has it). A network's "fraction of the matmul rate" is quoted against both so that neither flatters.
"""
from __future__ import annotations

import time
from typing import Dict, Optional

import torch
import torch.nn.functional as F

__all__ = ['matmul_gflops', 'conv1x1_gflops', 'gemm_rates']


def _best_seconds(fn, repeats: int, sync) -> float:
    fn()
    sync()
    best = float('inf')
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def _sync_for(device: torch.device):
    return torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)


#: A size whose single call takes this long is large enough to time: bigger would only add seconds.
_ENOUGH_SECONDS = 0.05


def _first_timeable(sizes, seconds_at) -> int:
    """The first of ``sizes`` (growing) whose one call takes ``_ENOUGH_SECONDS``, else the last. Where a dtype
    has no fast kernel (bfloat16 on a CPU without AVX-512 BF16, where one 2048 matmul takes seconds), the rate
    is then read from a small size in well under a second instead of a minute at the large one."""
    for n in sizes[:-1]:
        if seconds_at(n) >= _ENOUGH_SECONDS:
            return n
    return sizes[-1]


def matmul_gflops(device: str = 'cpu', dtype: torch.dtype = torch.float32, size: Optional[int] = None,
                  repeats: int = 5) -> float:
    """GFLOP/s of a ``size x size`` by ``size x size`` ``torch.matmul`` (2 size^3 FLOPs), best of ``repeats``.

    Default size: up to 2048 on CPU (large enough to be compute-bound, small enough to take well under a
    second), 8192 on a GPU; smaller where one call already takes long enough (``_first_timeable``).
    """
    dev = torch.device(device)
    sync = _sync_for(dev)

    def operands(n: int):
        return (torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype))

    def seconds_at(n: int) -> float:
        a, b = operands(n)
        return _best_seconds(lambda: torch.matmul(a, b), 1, sync)

    n = size or _first_timeable((8192,) if dev.type == 'cuda' else (256, 512, 1024, 2048), seconds_at)
    a, b = operands(n)
    seconds = _best_seconds(lambda: torch.matmul(a, b), repeats, sync)
    return 2 * n ** 3 / seconds / 1e9


def conv1x1_gflops(device: str = 'cpu', dtype: torch.dtype = torch.float32, channels: int = 512,
                   spatial: int = 56, repeats: int = 5) -> float:
    """GFLOP/s of a bias-free 1x1 convolution ``channels -> channels`` on a ``spatial^2`` map, channels-last:
    a GEMM of (spatial^2 x channels) by (channels x channels) run by the convolution library."""
    dev = torch.device(device)
    x = torch.randn(1, channels, spatial, spatial, device=dev, dtype=dtype).to(memory_format=torch.channels_last)
    w = torch.randn(channels, channels, 1, 1, device=dev, dtype=dtype).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        seconds = _best_seconds(lambda: F.conv2d(x, w), repeats, _sync_for(dev))
    return 2 * channels * channels * spatial * spatial / seconds / 1e9


def gemm_rates(device: str = 'cpu', dtype: torch.dtype = torch.float32) -> Dict[str, float]:
    """``{'matmul': GFLOP/s, 'conv1x1': GFLOP/s, 'dtype': ...}`` for ``device`` and ``dtype``."""
    return {'matmul_gflops': matmul_gflops(device, dtype), 'conv1x1_gflops': conv1x1_gflops(device, dtype),
            'dtype': str(dtype).replace('torch.', '')}

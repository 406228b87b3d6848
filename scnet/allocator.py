"""Keep freed memory in the process: glibc's allocator settings for PyTorch on the CPU.

Why: PyTorch allocates CPU tensors with ``malloc`` and frees them with ``free``; it keeps no cache of its own on
the CPU. glibc returns freed memory at the top of its heap to the kernel once more than the trim threshold is
free, and serves each block above the mmap threshold (which it moves as it goes) with a fresh ``mmap``. A
training step frees and allocates its activations again every step, so every step page-faults the same
gigabytes back in, zeroed by the kernel: on small cloud machines a large share of a training step's time, and
a share that depends on what the process ran before, so that two networks timed in one process trade places.
docs/performance.md ("Memory the process keeps") has the measurements.

``tune_cpu_allocator`` raises the trim threshold to ``2 GiB``, pads each heap growth by ``64 MiB`` and fixes the
mmap threshold at the largest value glibc accepts on 64-bit machines, ``32 MiB``, through ``mallopt``: freed
memory is reused from the heap instead of being faulted in again, with the same results bit for bit. The
process keeps the memory it has used until it exits, up to its peak, which a training run reaches every step
anyway. The ``scnet`` command applies it for the process it runs; library code does not change a process-wide
setting on import, so a program of its own calls it (or sets glibc's ``MALLOC_*`` variables). jemalloc or
tcmalloc through ``LD_PRELOAD`` (what ``torch.backends.xeon.run_cpu`` arranges) do the same where they are
installed; with one of them preloaded, or with ``SCNET_CPU_ALLOCATOR=default``, or with the user's own
``MALLOC_*`` / ``GLIBC_TUNABLES`` malloc settings, nothing is changed. No library offers this for glibc; it is
three ``mallopt`` calls.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from typing import Optional

__all__ = ['tune_cpu_allocator', 'allocator_state', 'OPT_OUT', 'TRIM_THRESHOLD', 'TOP_PAD', 'MMAP_THRESHOLD']

#: Environment variable that, set to ``default``, leaves the allocator as it is.
OPT_OUT = 'SCNET_CPU_ALLOCATOR'
#: Free memory kept at the top of the heap before it goes back to the kernel (the largest C ``int``).
TRIM_THRESHOLD = 2 ** 31 - 1
#: Extra memory requested with each growth of the heap.
TOP_PAD = 64 * 2 ** 20
#: Blocks at least this large get their own ``mmap``: the most glibc accepts on 64-bit machines.
MMAP_THRESHOLD = 32 * 2 ** 20

# mallopt's parameter numbers (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_PRELOADED = ('jemalloc', 'tcmalloc', 'mimalloc')

_state: Optional[str] = None


def _why_not() -> Optional[str]:
    """Why the allocator is left as it is, or ``None`` when it can be tuned."""
    if os.environ.get(OPT_OUT, '').lower() == 'default':
        return f'{OPT_OUT}=default'
    preloaded = [name for name in _PRELOADED if name in os.environ.get('LD_PRELOAD', '')]
    if preloaded:
        return f'{preloaded[0]} preloaded'
    own = [k for k in ('MALLOC_TRIM_THRESHOLD_', 'MALLOC_TOP_PAD_', 'MALLOC_MMAP_THRESHOLD_') if k in os.environ]
    if own or 'glibc.malloc' in os.environ.get('GLIBC_TUNABLES', ''):
        return 'malloc settings from the environment'
    if not sys.platform.startswith('linux'):
        return f'not glibc ({sys.platform})'
    return None


def tune_cpu_allocator() -> str:
    """Make glibc keep and reuse freed memory (see the module doc); returns what the allocator now is.

    Idempotent. Returns ``'glibc <version>, tuned (...)'`` when applied, else ``'as configured (<why>)'``: opted
    out, another allocator preloaded, the user's own malloc settings, not glibc.
    """
    global _state
    if _state is not None:
        return _state
    reason = _why_not()
    if reason is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
            mallopt, version = libc.mallopt, libc.gnu_get_libc_version
        except (OSError, AttributeError):
            reason = 'not glibc'
        else:
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            done = [mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD), mallopt(_M_TOP_PAD, TOP_PAD),
                    mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)]
            version.restype = ctypes.c_char_p
            glibc = f'glibc {version().decode()}'
            if all(done):
                _state = f'{glibc}, tuned (trim threshold 2 GiB, top pad 64 MiB, mmap threshold 32 MiB)'
                return _state
            reason = f'{glibc} refused mallopt'
    return f'as configured ({reason})'


def allocator_state() -> str:
    """What ``tune_cpu_allocator`` did in this process, for reports: tuned, or the reason it was not."""
    return _state if _state is not None else f'as configured ({_why_not() or "not tuned"})'

"""An allocation beyond the machine's free memory fails in Python, instead of the kernel killing the process.

Why: Linux hands out memory it does not have (overcommit) and, once the pages are touched, its OOM killer ends
the process with SIGKILL: no message, exit status 137, and whatever the command held is lost. A size a
user types (``scnet export --input-size 5000``, ``scnet benchmark --batch-size 100000``) can ask for tens of
gigabytes in one tensor. With a ceiling on the process's address space (``RLIMIT_AS``) at what it maps now
plus the memory that is free, such an allocation fails at once: PyTorch's allocator raises its "can't
allocate memory" error, and the command reports it in one line with the sizes to change. No library sets
such a ceiling; it is one ``setrlimit`` call, and the free memory is read from the kernel's own figures.

The ceiling counts address space, not pages in use: what the process has reserved but never touched is
already in what it maps now, and each thread that starts later may reserve one glibc malloc arena, so the
ceiling sits one arena's reservation per CPU (``SLACK_PER_CPU``) above the free memory, and no more: address
space allowed beyond that could be filled, and the kernel would kill the process before the allocator failed.
Only on Linux and only without CUDA: the CUDA driver reserves far more address space than memory (a
ceiling would stop it starting), and a GPU's own allocator already raises its out-of-memory error.
``SCNET_MEMORY_CEILING=off`` leaves the process as it is; so does a lower ceiling the user set.
"""
from __future__ import annotations

import contextlib
import os
import resource
import sys
from typing import Iterator, Optional, Tuple

__all__ = ['OPT_OUT', 'SLACK_PER_CPU', 'free_memory_bytes', 'memory_ceiling']

#: Environment variable that, set to ``off``, leaves the address space unlimited.
OPT_OUT = 'SCNET_MEMORY_CEILING'
#: Address space allowed above the free memory per CPU: one glibc malloc arena's reservation, never all touched.
SLACK_PER_CPU = 64 * 2 ** 20


def _fields(path: str) -> dict:
    """``name: bytes`` of the ``Name:  value kB`` lines of a ``/proc`` file ({} where there is none)."""
    try:
        with open(path) as f:
            lines = [line.split() for line in f]
    except OSError:
        return {}
    return {w[0].rstrip(':'): int(w[1]) * 1024 for w in lines if len(w) == 3 and w[2] == 'kB' and w[1].isdigit()}


def _cgroup_room() -> Optional[int]:
    """Bytes the process's cgroup (v2) may still use, when it has a memory limit."""
    try:
        with open('/proc/self/cgroup') as f:
            group = next(line.split('::', 1)[1].strip() for line in f if line.startswith('0::'))
        folder = os.path.join('/sys/fs/cgroup', group.lstrip('/'))
        with open(os.path.join(folder, 'memory.max')) as f:
            limit = f.read().strip()
        with open(os.path.join(folder, 'memory.current')) as f:
            used = int(f.read())
    except (OSError, StopIteration, ValueError):
        return None
    return None if limit == 'max' else max(0, int(limit) - used)


def free_memory_bytes() -> Optional[int]:
    """Memory this process could still get: the kernel's available memory plus free swap, within its cgroup's
    limit; None where the kernel does not say (not Linux)."""
    info = _fields('/proc/meminfo')
    if 'MemAvailable' not in info:
        return None
    free = info['MemAvailable'] + info.get('SwapFree', 0)
    room = _cgroup_room()
    return free if room is None else min(free, room)


def _ceiling() -> Tuple[Optional[int], str]:
    """The address-space ceiling to set (None: none) and what it is, in words."""
    if os.environ.get(OPT_OUT, '').lower() == 'off':
        return None, f'none ({OPT_OUT}=off)'
    if not sys.platform.startswith('linux'):
        return None, f'none (not Linux: {sys.platform})'
    import torch

    if torch.cuda.is_available():
        return None, 'none (CUDA reserves address space beyond memory)'
    free, mapped = free_memory_bytes(), _fields('/proc/self/status').get('VmSize')
    if free is None or mapped is None:
        return None, 'none (the kernel gives no memory figures)'
    ceiling = mapped + free + SLACK_PER_CPU * (os.cpu_count() or 1)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        ceiling = min(ceiling, hard)
    if soft != resource.RLIM_INFINITY and soft <= ceiling:
        return None, f'{soft / 2 ** 30:.1f} GiB address space (set before)'
    return ceiling, f'{ceiling / 2 ** 30:.1f} GiB address space ({free / 2 ** 30:.1f} GiB free)'


@contextlib.contextmanager
def memory_ceiling() -> Iterator[str]:
    """Within the block, this process's address space is capped at what it maps now plus the free memory (see
    the module doc), so that an allocation beyond it raises; the previous limit comes back after it. Yields
    what was set, in words. It does not start CUDA; do not start CUDA inside the block."""
    ceiling, what = _ceiling()
    if ceiling is None:
        yield what
        return
    before = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (ceiling, before[1]))
    try:
        yield what
    finally:
        resource.setrlimit(resource.RLIMIT_AS, before)

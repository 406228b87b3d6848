"""Peak memory of a step: the CUDA allocator's peak on a GPU, the resident set's peak on the CPU.

On a GPU PyTorch's caching allocator keeps exact books (``max_memory_allocated``), so the figure is measured in
the timing process. On the CPU there are no such books by default, and the resident set size of a process
that has already run other models holds their freed-but-cached pages. So each CPU measurement runs in a
fresh process that builds the same contender (same factory, same seed), resets
the kernel's high-water mark (``/proc/self/clear_refs``) once the model, input and optimizer exist, runs the
steps, and reports ``VmHWM - VmRSS`` before the steps: what the steps themselves added at their peak
(activations saved for backward, gradients, optimizer state, workspaces).

The fresh processes come from ``multiprocessing``'s fork server, which imports PyTorch and scnet once
(``set_forkserver_preload``) and forks a clean child per measurement; where there is no fork server
(Windows) each child is spawned and imports them itself. Either way the child has run no model before.

The child puts glibc's mmap threshold at 64 KiB (``mallopt``) before it builds anything: every tensor buffer is
then its own mapping, returned to the kernel when freed, so the resident set follows the live tensors instead
of glibc's caching of freed heap (which made repeated measurements of one model differ by some 5%).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import resource
from typing import Dict, Optional

import torch

from scnet.bench.cases import BenchmarkError, Contender, Settings, Step

__all__ = ['cuda_step_peak', 'cuda_peak_since', 'cpu_step_peak']

_MB = 2 ** 20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)


def cuda_step_peak(step: Step, steps: int = 2) -> Dict[str, object]:
    """Peak bytes the CUDA allocator held above its level before ``steps`` calls of ``step``, in MiB."""
    step()
    step.sync()
    torch.cuda.reset_peak_memory_stats(step.device)
    before = torch.cuda.memory_allocated(step.device)
    for _ in range(steps):
        step()
    step.sync()
    return cuda_peak_since(step.device, before)


def cuda_peak_since(device, before: int, method: str = 'cuda allocator') -> Dict[str, object]:
    """The CUDA allocator's peak (since its last reset) above ``before`` bytes, as a report's memory entry."""
    peak = torch.cuda.max_memory_allocated(device)
    return {'peak_mb': (peak - before) / _MB, 'process_peak_mb': peak / _MB, 'baseline_mb': before / _MB,
            'method': method}


def _status_kib(field: str) -> Optional[int]:
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_high_water_mark() -> bool:
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def _map_every_buffer() -> None:
    """Give every allocation at 64 KiB and above its own mapping (glibc only; elsewhere nothing changes)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
    except (OSError, AttributeError):  # no glibc: the allocator's own policy, measurements a little noisier
        pass


def _context():
    """The fork server, with PyTorch and scnet imported once, where the platform has one; else spawn."""
    if 'forkserver' in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context('forkserver')
        ctx.set_forkserver_preload([__name__])  # the server imports this module, so torch and scnet
        return ctx
    return multiprocessing.get_context('spawn')


def _child(conn, contender: Contender, settings: Settings, steps: int, threads: int) -> None:
    try:
        _map_every_buffer()
        torch.set_num_threads(threads)
        step = Step(contender, settings)
        before = _status_kib('VmRSS')
        reset = _reset_high_water_mark()
        for _ in range(steps):
            step()
        step.close()
        if before is not None and reset:
            peak = _status_kib('VmHWM')
            conn.send({'peak_mb': (peak - before) / 1024, 'process_peak_mb': peak / 1024,
                       'baseline_mb': before / 1024, 'method': 'rss high-water mark'})
        else:  # no /proc: the process's lifetime peak, start-up included
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            conn.send({'peak_mb': None, 'process_peak_mb': peak / 1024, 'baseline_mb': None,
                       'method': 'ru_maxrss (no step peak on this OS)'})
    except Exception as e:  # reported to the parent, which names the contender
        conn.send({'error': f'{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ""}'})
    finally:
        conn.close()


def cpu_step_peak(contender: Contender, settings: Settings, steps: int = 2,
                  threads: Optional[int] = None) -> Dict[str, object]:
    """Peak resident memory the steps of ``contender`` add, measured in a fresh process, in MiB."""
    ctx = _context()
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, contender, settings, steps, threads or torch.get_num_threads()),
                       daemon=True)
    proc.start()
    child.close()
    try:
        result = parent.recv()
    except EOFError:
        proc.join()
        result = {'error': f'the measuring process died (exit code {proc.exitcode}); out of memory?'}
    proc.join()
    if 'error' in result:
        raise BenchmarkError(f'{contender.label}: memory measurement failed: {result["error"]}')
    return result

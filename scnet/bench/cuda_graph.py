"""An inference call replayed from one captured CUDA graph: the GPU's work of a step without the host's.

At batch 1 on a GPU an eager network is bound by the host: every operator costs Python, module-call and
dispatcher time before its kernel starts, and SCNet-50 calls more than twice as many operators per image as
ResNet-50, so an eager comparison at batch 1 measures the host, not the network. A CUDA graph records the
kernels of one call and replays them with a single launch; that is how batch-1 serving on a GPU removes the
host's share, and the ``cuda_graph`` variant of ``scnet benchmark`` times networks that way.

PyTorch gives the parts (``torch.cuda.CUDAGraph``, ``torch.cuda.graph``) and documents the recipe; what is
written here is that recipe for one inference call, so that the benchmark runs it the same way every time:
warm-up calls on a side stream first (cuDNN's algorithm search, Triton's first compilations and every lazy
initialisation happen outside the capture, where they are not allowed), then one call captured (the caller
turns autocast's cast cache off, ``cache_enabled=False``, as PyTorch's notes on graphed callables ask of
autocast), then replays that return the same output tensor, overwritten by each replay.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import torch

from scnet.bench.memory import cuda_peak_since

__all__ = ['capture_inference']


def capture_inference(call: Callable[[], Any], device: torch.device, warmup: int = 3,
                      ) -> Tuple[Callable[[], Any], Dict[str, object]]:
    """Capture ``call`` (no arguments; its inputs are fixed tensors) as a CUDA graph on ``device``.

    Returns ``replay`` (runs the graph and returns the captured call's output, the same tensor every time,
    overwritten by each replay) and the memory the capture took: the CUDA allocator's peak above its level
    before, while the call ran once inside the capture. Replays allocate nothing; this is the memory the
    graph keeps for its intermediate tensors, comparable with an eager step's peak.
    """
    current = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device)
    side.wait_stream(current)
    with torch.cuda.stream(side):
        for _ in range(warmup):
            call()
    current.wait_stream(side)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = call()
    memory = cuda_peak_since(device, before, 'cuda allocator, during the capture (replays allocate nothing)')

    def replay() -> Any:
        graph.replay()
        return output
    return replay, memory

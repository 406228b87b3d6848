"""Facts about the machine and the software that a timing depends on, recorded with every benchmark.

A speed figure without them cannot be compared or reproduced: the CPU model and how many cores this process
may use, the thread count PyTorch runs with, the instruction set its kernels dispatch to, the library
versions, and the GPU when one is used.
"""
from __future__ import annotations

import datetime
import os
import platform
from importlib import metadata
from typing import Dict, Optional

import torch

__all__ = ['machine_facts', 'cpu_model_name']


def cpu_model_name() -> str:
    """The CPU's marketing name from ``/proc/cpuinfo`` (Linux), else ``platform.processor()``."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.lower().startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> Optional[str]:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_facts(device: str = 'cpu') -> Dict[str, object]:
    """A JSON-ready description of this machine and software for a run on ``device``."""
    try:
        usable_cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable_cpus = os.cpu_count()
    facts: Dict[str, object] = {
        'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'platform': platform.platform(),
        'python': platform.python_version(),
        'cpu': cpu_model_name(),
        'logical_cpus': os.cpu_count(),
        'usable_cpus': usable_cpus,
        'torch_threads': torch.get_num_threads(),
        'cpu_capability': torch.backends.cpu.get_cpu_capability(),
        'mkldnn': torch.backends.mkldnn.is_available(),
        'mkl': torch.backends.mkl.is_available(),
        'env': {k: os.environ[k] for k in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'CUDA_VISIBLE_DEVICES')
                if k in os.environ},
        'versions': {name: _version(dist) for name, dist in (
            ('scnet', 'scnet-torch'), ('torch', 'torch'), ('torchvision', 'torchvision'), ('timm', 'timm'),
            ('onnxruntime', 'onnxruntime'))},
    }
    if device.startswith('cuda') and torch.cuda.is_available():
        index = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(index)
        facts['gpu'] = {'name': props.name, 'capability': f'{props.major}.{props.minor}',
                        'memory_gib': round(props.total_memory / 2 ** 30, 1), 'cuda': torch.version.cuda,
                        'cudnn': torch.backends.cudnn.version()}
    return facts

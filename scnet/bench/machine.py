"""Facts about the machine and the software that a timing depends on, recorded with every benchmark.

A speed figure without them cannot be compared or reproduced: the CPU model and how many cores this process
may use, the thread count PyTorch runs with, the instruction set its kernels dispatch to, the library
versions, and the GPU when one is used.

Which CPU: cloud machines often report a bare product-line name (``model name: AMD EPYC``) that says
nothing of the core generation, though generations sold under one name differ widely in speed.
``cpu_identity`` reads the vendor, family and model numbers (which virtual machines pass through) and names
the core generation from them. Why by numbers and not ``archspec`` (the ecosystem's CPU naming library): it
names a microarchitecture by its full feature set, and hypervisors mask some features (``clzero`` on our
2-core CI machines), so there it reports a generic ``x86_64_v4`` where the numbers name the generation.
"""
from __future__ import annotations

import datetime
import os
import platform
from importlib import metadata
from typing import Dict, Optional

import torch

from scnet.allocator import allocator_state

__all__ = ['machine_facts', 'cpu_model_name', 'cpu_identity', 'cpu_description', 'core_generation']

#: The instruction-set extensions that change which kernels PyTorch and oneDNN run, as /proc/cpuinfo names
#: them (x86 ``flags``, Arm ``Features``).
KERNEL_FLAGS = ('avx2', 'fma', 'avx512f', 'avx512_vnni', 'avx512_bf16', 'avx512_fp16', 'avx_vnni',
                'amx_tile', 'amx_bf16', 'amx_int8', 'asimd', 'sve', 'sve2', 'bf16', 'i8mm')

# AMD: (family, first model, last model, generation). Families 0x17-0x1A as AMD's revision guides number them.
_AMD = (
    (0x17, 0x00, 0x2F, 'Zen / Zen+'),
    (0x17, 0x30, 0xFF, 'Zen 2'),
    (0x19, 0x00, 0x0F, 'Zen 3'),
    (0x19, 0x10, 0x1F, 'Zen 4'),
    (0x19, 0x20, 0x5F, 'Zen 3'),
    (0x19, 0x60, 0x7F, 'Zen 4'),
    (0x19, 0xA0, 0xAF, 'Zen 4'),
    (0x1A, 0x00, 0x4F, 'Zen 5'),
    (0x1A, 0x60, 0x7F, 'Zen 5'),
)
# Intel family 6: model -> generation (server parts, and the client parts with the same cores).
_INTEL = {
    0x3F: 'Haswell', 0x4F: 'Broadwell', 0x55: 'Skylake-SP / Cascade Lake', 0x6A: 'Ice Lake-SP', 0x6C: 'Ice Lake-SP',
    0x7E: 'Ice Lake', 0x8C: 'Tiger Lake', 0x8D: 'Tiger Lake', 0x8F: 'Sapphire Rapids', 0xCF: 'Emerald Rapids',
    0xAD: 'Granite Rapids', 0xAE: 'Granite Rapids', 0xAF: 'Sierra Forest', 0x97: 'Alder Lake',
    0x9A: 'Alder Lake', 0xB7: 'Raptor Lake', 0xBA: 'Raptor Lake', 0xBF: 'Raptor Lake',
}


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


def _first_processor(cpuinfo: str) -> Dict[str, str]:
    """The ``key: value`` lines of /proc/cpuinfo's first processor block."""
    fields: Dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, sep, value = line.partition(':')
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    return fields


def _int(text: Optional[str]) -> Optional[int]:
    """A decimal (x86's family and model) or ``0x`` hexadecimal (Arm's part numbers) field, else ``None``."""
    if text is None:
        return None
    try:
        return int(text, 16) if text.lower().startswith('0x') else int(text)
    except ValueError:
        return None


def core_generation(vendor: Optional[str], family: Optional[int], model: Optional[int]) -> Optional[str]:
    """The core generation (``'Zen 4'``, ``'Sapphire Rapids'``) of an x86 CPU's vendor, family and model
    numbers, or ``None`` where the table does not know them."""
    if family is None or model is None:
        return None
    if vendor == 'AuthenticAMD':
        return next((name for fam, first, last, name in _AMD if fam == family and first <= model <= last), None)
    if vendor == 'GenuineIntel' and family == 6:
        return _INTEL.get(model)
    return None


def cpu_identity(cpuinfo: Optional[str] = None) -> Dict[str, object]:
    """Vendor, family, model and stepping numbers, the core generation named from them (``None`` if unknown),
    and the kernel-relevant instruction-set extensions present (``KERNEL_FLAGS``).

    ``cpuinfo`` is the text of /proc/cpuinfo (read when ``None``; empty facts where there is none).
    """
    if cpuinfo is None:
        try:
            with open('/proc/cpuinfo') as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ''
    fields = _first_processor(cpuinfo)
    vendor = fields.get('vendor_id') or fields.get('cpu implementer')
    family, model = _int(fields.get('cpu family')), _int(fields.get('model'))
    flags = set((fields.get('flags') or fields.get('features') or '').split())
    return {
        'vendor': vendor,
        'family': family,
        'model': model,
        'stepping': _int(fields.get('stepping')),
        'generation': core_generation(vendor, family, model),
        'flags': [flag for flag in KERNEL_FLAGS if flag in flags],
    }


def cpu_description(facts: Optional[Dict[str, object]] = None) -> str:
    """One line naming the CPU for a speed figure: ``'AMD EPYC (Zen 4, family 25 model 17), AVX512'``.

    ``facts`` is a ``machine_facts`` record (``None``: this machine's CPU facts alone); records written before
    the identity was recorded give the name and instruction set only.
    """
    if facts is None:
        facts = {'cpu': cpu_model_name(), 'cpu_identity': cpu_identity(),
                 'cpu_capability': torch.backends.cpu.get_cpu_capability()}
    name = str(facts.get('cpu') or 'unknown CPU')
    ident = facts.get('cpu_identity') or {}
    inner = []
    if ident.get('generation'):
        inner.append(str(ident['generation']))
    if ident.get('family') is not None and ident.get('model') is not None:
        inner.append(f"family {ident['family']} model {ident['model']}")
    if inner:
        name += f" ({', '.join(inner)})"
    return f"{name}, {facts['cpu_capability']}" if facts.get('cpu_capability') else name


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
        'cpu_identity': cpu_identity(),
        'logical_cpus': os.cpu_count(),
        'usable_cpus': usable_cpus,
        'torch_threads': torch.get_num_threads(),
        'cpu_capability': torch.backends.cpu.get_cpu_capability(),
        'mkldnn': torch.backends.mkldnn.is_available(),
        'mkl': torch.backends.mkl.is_available(),
        'env': {k: os.environ[k] for k in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'CUDA_VISIBLE_DEVICES')
                if k in os.environ},
        'allocator': allocator_state(),
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

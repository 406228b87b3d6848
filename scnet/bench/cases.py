"""What one timed step is: a model built the same way every time, its input, and the call that runs a batch.

A ``Contender`` names how to build a model (an importable factory and its keyword arguments, so that a fresh
process can build the very same model to measure memory) and how to run it: ``eager`` (the model as
``create_model`` returns it), ``deployed`` (``scnet.deploy``: BN folded into the convolutions),
``onnxruntime`` (the deployed model exported to ONNX and run by onnxruntime) or ``cuda_graph`` (the eager
model's inference captured once as a CUDA graph and replayed: ``scnet.bench.cuda_graph``). ``Settings`` are
what all contenders of a comparison share. ``build_step`` turns both into a callable that runs one batch.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from scnet.errors import ScnetError

__all__ = ['MODES', 'VARIANTS', 'Settings', 'Contender', 'BenchmarkError', 'build_model', 'build_step',
           'Step', 'forward_macs']

MODES = ('infer', 'train')
VARIANTS = ('eager', 'deployed', 'onnxruntime', 'cuda_graph')


class BenchmarkError(ScnetError, ValueError):
    """Settings that cannot be benchmarked together, or a contender that fails to run."""


@dataclass
class Settings:
    """What every contender of one comparison shares."""

    mode: str = 'infer'
    batch_size: int = 1
    input_size: Tuple[int, int] = (224, 224)
    device: str = 'cpu'
    amp: bool = False            # bfloat16 autocast (CPU and GPU)
    channels_last: bool = False
    compile: bool = False        # torch.compile (inductor)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise BenchmarkError(f'mode must be one of {MODES}, got {self.mode!r}')
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise BenchmarkError(f'batch size must be a positive integer, got {self.batch_size!r}')
        try:
            dev = torch.device(self.device)
        except RuntimeError:
            dev = None
        if dev is None or dev.type not in ('cpu', 'cuda'):
            raise BenchmarkError(f'device must be cpu or cuda[:N], got {self.device!r}')
        if dev.type == 'cuda' and not torch.cuda.is_available():
            raise BenchmarkError(f'device {self.device!r} asked for, but PyTorch sees no CUDA GPU here; '
                                 'use --device cpu')

    def as_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d['input_size'] = list(self.input_size)
        return d


@dataclass
class Contender:
    """A model to time: ``factory`` is ``'module:function'`` called with ``kwargs``; run as ``variant``."""

    label: str
    kwargs: Dict[str, Any] = field(default_factory=dict)
    factory: str = 'scnet.models.factory:create_model'
    variant: str = 'eager'

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise BenchmarkError(f'variant must be one of {VARIANTS}, got {self.variant!r}')

    @classmethod
    def zoo(cls, name: str, variant: str = 'eager') -> 'Contender':
        """A network of ``scnet.list_models()`` by name."""
        label = name if variant == 'eager' else f'{name} [{variant}]'
        return cls(label=label, kwargs={'name': name}, variant=variant)


def build_model(contender: Contender, seed: int = 0) -> nn.Module:
    """The contender's model with weights drawn from ``seed``: the same weights in every process."""
    module_name, _, attr = contender.factory.partition(':')
    factory = getattr(importlib.import_module(module_name), attr)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory(**contender.kwargs)


def forward_macs(model: nn.Module, input_size: Tuple[int, int]) -> int:
    """Multiply-accumulates of one image's forward pass, counted as ``scnet profile`` counts them."""
    from scnet.complexity import count_complexity
    return count_complexity(model, input_size)[1]


class Step:
    """One batch of a contender: ``step()`` runs it; ``model`` is the eager model (for checks and FLOPs);
    ``output()`` is the logits of the benchmark batch (inference), for comparing variants."""

    def __init__(self, contender: Contender, settings: Settings) -> None:
        self.contender = contender
        self.settings = settings
        self.device = torch.device(settings.device)
        self._cleanup: List[Callable[[], None]] = []
        self.captured_memory: Optional[Dict[str, object]] = None  # the cuda_graph variant's peak, at capture
        self.model = build_model(contender, settings.seed).to(self.device)
        h, w = settings.input_size
        g = torch.Generator().manual_seed(settings.seed)
        x = torch.randn(settings.batch_size, 3, h, w, generator=g)
        self.target = torch.randint(0, max(1, _classes(self.model)), (settings.batch_size,), generator=g)
        self.x = x.to(self.device)
        self.target = self.target.to(self.device)
        if settings.channels_last:
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self._run = self._train_step() if settings.mode == 'train' else self._infer_step()

    def _autocast(self, cache: bool = True):
        if not self.settings.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=cache)

    def _infer_step(self) -> Callable[[], Any]:
        s, variant = self.settings, self.contender.variant
        self.model.eval()
        if variant == 'eager':
            runner: Callable = self.model
            if s.channels_last:
                runner = runner.to(memory_format=torch.channels_last)
            if s.compile:
                runner = torch.compile(runner)
        elif variant == 'deployed':
            from scnet.deploy import deploy
            runner = deploy(self.model, channels_last=s.channels_last, compile=s.compile)
        elif variant == 'cuda_graph':
            return self._cuda_graph()
        else:
            runner = self._onnxruntime()

        def step():
            with torch.inference_mode(), self._autocast():
                return runner(self.x)
        return step

    def _cuda_graph(self) -> Callable[[], Any]:
        s = self.settings
        if s.compile:
            raise BenchmarkError('the cuda_graph variant captures the eager model: drop --compile (compiled '
                                 'networks reach CUDA graphs through torch.compile(mode="reduce-overhead"))')
        if self.device.type != 'cuda':
            raise BenchmarkError('the cuda_graph variant replays a captured CUDA graph: it needs --device cuda')
        from scnet.bench.cuda_graph import capture_inference
        model = self.model.to(memory_format=torch.channels_last) if s.channels_last else self.model

        def call():
            with torch.inference_mode(), self._autocast(cache=False):
                return model(self.x)
        replay, self.captured_memory = capture_inference(call, self.device)
        return replay

    def _onnxruntime(self) -> Callable:
        s = self.settings
        if self.device.type != 'cpu' or s.amp or s.compile:
            raise BenchmarkError('the onnxruntime variant runs float32 on the CPU: drop --amp, --compile and '
                                 '--device cuda for it')
        from scnet.deploy import deploy
        from scnet.export import export_model, load_exported
        folder = tempfile.mkdtemp(prefix='scnet-bench-')
        path = os.path.join(folder, 'model.onnx')

        def remove():
            for name in os.listdir(folder):
                os.remove(os.path.join(folder, name))
            os.rmdir(folder)
        self._cleanup.append(remove)
        example = self.x.contiguous()
        export_model(deploy(self.model, channels_last=False), 'onnx', path, example)
        session = load_exported(path, 'onnx')
        return lambda x: session(x.contiguous())

    def _train_step(self) -> Callable[[], Any]:
        s = self.settings
        if self.contender.variant != 'eager':
            raise BenchmarkError(f'{self.contender.label}: only the eager variant trains; '
                                 f'{self.contender.variant!r} is for inference (--mode infer)')
        model = self.model.train()
        if s.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        runner = torch.compile(model) if s.compile else model

        def step():
            optimizer.zero_grad(set_to_none=True)
            with self._autocast():
                logits = runner(self.x)
            loss = F.cross_entropy(logits.float(), self.target)
            loss.backward()
            optimizer.step()
        return step

    def __call__(self) -> Any:
        return self._run()

    def output(self) -> torch.Tensor:
        """Logits of the benchmark batch (inference only), float32 on the CPU."""
        return self._run().float().cpu()

    def sync(self) -> None:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)

    def close(self) -> None:
        for fn in self._cleanup:
            with contextlib.suppress(OSError):
                fn()
        self._cleanup.clear()


def _classes(model: nn.Module) -> int:
    head = getattr(model, 'num_classes', None)
    return int(head) if head else 1000


def build_step(contender: Contender, settings: Settings) -> Step:
    """Build ``contender`` under ``settings``; errors name the contender and how to fix the settings."""
    try:
        return Step(contender, settings)
    except ScnetError:
        raise
    except (RuntimeError, TypeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BenchmarkError(f'{contender.label}: cannot be built for this benchmark: {first}') from e

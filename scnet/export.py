"""Writing a network to a file another runtime can load (ONNX, TorchScript, ``torch.export``), loading it back,
and checking that the loaded file computes what the network computes.

Why three formats: ONNX runs without PyTorch (onnxruntime, TensorRT, OpenVINO, browsers); TorchScript still
loads in C++ libtorch deployments (``torch.jit.trace`` is deprecated upstream but works in PyTorch 2.14, and
its FutureWarning is silenced here); ``torch.export``'s ``.pt2`` is PyTorch's own successor to both.
All three trace the network on ``example_input``, so only the batch dimension stays free (``dynamic_batch``):
the spatial size is fixed by the example, as SCConv2d's pooling window depends on it.

Files are written atomically: to a temporary file in the target directory, renamed into place once
complete, so an interrupted export never leaves a half-written file under the requested name.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Union

import torch
from torch import nn

from scnet.errors import ScnetError
from scnet.files import give_usual_permissions

__all__ = ['FORMATS', 'ExportError', 'LoadedModel', 'export_model', 'load_exported', 'check_parity',
           'write_json']

#: Formats ``export_model`` writes, with the runtime ``load_exported`` loads them with.
FORMATS = {'onnx': 'onnxruntime (CPU)', 'torchscript': 'torch.jit', 'exported': 'torch.export'}

PathLike = Union[str, os.PathLike]


class ExportError(ScnetError, ValueError):
    """An export that cannot be done as asked: unknown format, missing directory, unsuitable model."""


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ExportError(f'unknown export format {fmt!r}; choose one of {", ".join(FORMATS)}')
    return fmt


@contextlib.contextmanager
def _jit_deprecation_silenced():
    """Silence torch.jit's deprecation notices (this module uses it on purpose) and the tracer's warnings that
    the input's spatial size becomes a constant (it does, by design: see the module docstring)."""
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message=r'.*torch\.jit.*deprecated', category=FutureWarning)
        warnings.filterwarnings('ignore', category=torch.jit.TracerWarning)
        yield


def _write_atomically(output: Path, write: Callable[[Path], None]) -> None:
    """Call ``write`` on a temporary file beside ``output``, then rename it into place (or remove it on error).

    The file gets the permissions a plain ``open(output, 'w')`` would give (``mkstemp`` makes it private).
    """
    if output.is_dir():
        raise ExportError(f'{output} is a directory; give a file name to write, e.g. {output / "model.onnx"}')
    try:
        fd, tmp = tempfile.mkstemp(prefix=f'.{output.name}.', suffix='.partial', dir=output.parent)
    except OSError as e:
        raise ExportError(f'{output}: cannot write there ({e.strerror}); choose another location') from None
    os.close(fd)
    try:
        write(Path(tmp))
        give_usual_permissions(tmp)
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: PathLike, data: object) -> Path:
    """Write ``data`` as indented JSON to ``path``, atomically (the reports that go with exported files)."""
    path = Path(path)

    def write(tmp: Path) -> None:
        tmp.write_text(json.dumps(data, indent=2) + '\n')
    _write_atomically(path, write)
    return path


def _trace(model: nn.Module, fmt: str, x: torch.Tensor, dynamic_shapes) -> Callable[[Path], None]:
    """Trace ``model`` on ``x`` with the exporter of ``fmt``; returns the function that writes the result."""
    if fmt == 'onnx':
        with torch.no_grad():
            program = torch.onnx.export(model, (x,), dynamo=True, input_names=['input'], output_names=['output'],
                                        dynamic_shapes=dynamic_shapes, verbose=False)
        return lambda tmp: program.save(str(tmp), external_data=False)  # one file (fine below 2 GB)
    if fmt == 'torchscript':
        with _jit_deprecation_silenced(), torch.no_grad():
            traced = torch.jit.trace(model, x, check_trace=False)

        def save_script(tmp: Path) -> None:
            with _jit_deprecation_silenced():
                torch.jit.save(traced, str(tmp))
        return save_script
    with torch.no_grad():
        program = torch.export.export(model, (x,), dynamic_shapes=dynamic_shapes)

    def save_program(tmp: Path) -> None:
        with open(tmp, 'wb') as f:  # a file object: torch.export would warn about a name not ending .pt2
            torch.export.save(program, f)
    return save_program


def export_model(model: nn.Module, fmt: str, output: PathLike, example_input: torch.Tensor, *,
                 dynamic_batch: bool = True) -> Path:
    """Write ``model`` to ``output`` in format ``fmt`` and return the path.

    Args:
        model: a network in eval mode, or what ``scnet.deploy`` returns (its folded ``.module`` is exported;
            the channels-last and compile options of a deployment are runtime choices, not part of the file).
        fmt: ``'onnx'`` (``torch.onnx.export(dynamo=True)``, weights inside the file), ``'torchscript'``
            (``torch.jit.trace`` + ``torch.jit.save``) or ``'exported'`` (``torch.export.export`` +
            ``torch.export.save``; ``.pt2`` is the customary suffix).
        output: file to write; its directory must exist. An existing file is replaced (atomically).
        example_input: an input of the shape to serve (fixes channels and spatial size).
        dynamic_batch: let the batch size vary. ``torch.export`` specialises a batch of 1, so an example of
            batch 1 is traced as a batch of 2 (the same image twice); the file accepts any batch size.
    """
    _check_format(fmt)
    from scnet.deploy import DeployedModel

    if isinstance(model, DeployedModel):
        model = model.module
    if not isinstance(model, nn.Module):
        raise ExportError(f'export_model takes an nn.Module, got {type(model).__name__}')
    if model.training:
        raise ExportError('the model is in training mode: call model.eval() (or scnet.deploy(model)) before '
                          'exporting, so BatchNorm and dropout export their inference behaviour')
    output = Path(output)
    if not output.parent.is_dir():
        raise ExportError(f'{output.parent}: no such directory; create it first or choose another --output')
    if output.is_dir():
        raise ExportError(f'{output} is a directory; give a file name to write, e.g. {output / "model.onnx"}')
    if not isinstance(example_input, torch.Tensor) or example_input.dim() < 1:
        raise ExportError('example_input must be a batched tensor, e.g. torch.randn(1, 3, 224, 224)')
    if example_input.shape[0] == 0:
        raise ExportError(f'example_input holds no image (shape {tuple(example_input.shape)}); give a batch of at '
                          'least one, e.g. torch.randn(1, 3, 224, 224)')
    x = example_input.detach()
    if dynamic_batch and fmt != 'torchscript' and x.shape[0] < 2:
        x = x.expand(2, *x.shape[1:]).contiguous()
    dynamic_shapes = ({0: torch.export.Dim('batch')},) if dynamic_batch else None

    try:
        save = _trace(model, fmt, x, dynamic_shapes)
    except Exception as e:  # the exporters raise many types, with pages of detail: one line, the cause chained
        first = str(e).strip().splitlines()[0] if str(e).strip() else ''
        raise ExportError(f'{fmt} export of {type(model).__name__} failed ({type(e).__name__}: {first[:300]}); '
                          'try another format, or export without scnet.deploy') from e
    try:
        _write_atomically(output, save)
    except OSError as e:
        raise ExportError(f'{output}: cannot write ({e}); check the space and permissions there') from None
    return output


class LoadedModel:
    """An exported file loaded back: call it with a tensor, get the output tensor (on the CPU).

    ``fmt``, ``path`` and ``runtime`` say what it is.
    """

    def __init__(self, path: Path, fmt: str, run: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.path, self.fmt, self.runtime, self._run = path, fmt, FORMATS[fmt], run

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The file's output for ``x``; an input it cannot take is one ``ExportError`` (the runtimes' own errors
        are a guard's assertion, an interpreter trace or an ONNX Runtime status)."""
        if not isinstance(x, torch.Tensor):
            raise ExportError(f'{self.path}: the exported model takes a tensor, got {type(x).__name__}')
        try:
            return self._run(x)
        except Exception as e:
            detail = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise ExportError(f'{self.path} ({self.fmt}) cannot run an input of shape {tuple(x.shape)} and dtype '
                              f'{str(x.dtype).replace("torch.", "")} ({type(e).__name__}: {detail}); it takes the '
                              'channels, image size and dtype it was exported with (only the batch may change: see '
                              'the input_shape of its .json report)') from None

    def __repr__(self) -> str:
        return f'LoadedModel({str(self.path)!r}, fmt={self.fmt!r}, runtime={self.runtime!r})'


def load_exported(path: PathLike, fmt: str, *, num_threads: int = 0) -> LoadedModel:
    """Load a file written by ``export_model`` in its runtime: onnxruntime's CPU InferenceSession for ``onnx``,
    ``torch.jit.load`` for ``torchscript``, ``torch.export.load(...).module()`` for ``exported``.

    ``num_threads`` sets onnxruntime's intra-op threads (0: as many as ``torch.get_num_threads()``, so the two
    runtimes compare on the same cores); the torch formats use torch's own setting.
    """
    _check_format(fmt)
    path = Path(path)
    if not path.is_file():
        raise ExportError(f'{path}: no such file to load')
    try:
        if fmt == 'onnx':
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = num_threads or torch.get_num_threads()
            # no busy-waiting between runs: spinning threads would steal the cores from whatever runs next
            # in this process (torch, in a parity check or an interleaved benchmark)
            options.add_session_config_entry('session.intra_op.allow_spinning', '0')
            session = onnxruntime.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
            name = session.get_inputs()[0].name

            def run(x: torch.Tensor) -> torch.Tensor:
                array = x.detach().cpu().contiguous().numpy()
                return torch.from_numpy(session.run(None, {name: array})[0])
        elif fmt == 'torchscript':
            with _jit_deprecation_silenced():
                module = torch.jit.load(str(path), map_location='cpu').eval()

            def run(x: torch.Tensor) -> torch.Tensor:
                with torch.no_grad():
                    return module(x)
        else:
            with open(path, 'rb') as f:
                module = torch.export.load(f).module()

            def run(x: torch.Tensor) -> torch.Tensor:
                with torch.no_grad():
                    return module(x)
    except ExportError:
        raise
    except Exception as e:  # the runtimes raise many types on a wrong or damaged file: one line each
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f'{path}: cannot be loaded as {fmt} ({first}); was it written with --format {fmt}?') \
            from None
    return LoadedModel(path, fmt, run)


def check_parity(model: nn.Module, loaded: Callable[[torch.Tensor], torch.Tensor], example_input: torch.Tensor
                 ) -> float:
    """Largest absolute difference between ``model(example_input)`` and ``loaded(example_input)``. ``model``
    must be in eval mode, as exported: in training mode its outputs would use batch statistics (and its
    forward would update the running ones), which is not what the file computes."""
    if model.training:
        raise ExportError('check_parity compares the exported file with the model in eval mode: call model.eval() '
                          'first (in training mode batch norm would use, and change, batch statistics)')
    with torch.no_grad():
        expected = model(example_input)
    actual = loaded(example_input)
    if not isinstance(expected, torch.Tensor) or not isinstance(actual, torch.Tensor):
        raise ExportError('check_parity compares models that return one tensor')
    if expected.shape != actual.shape:
        raise ExportError(f'the exported model returns shape {tuple(actual.shape)}, the model '
                          f'{tuple(expected.shape)}')
    return float((expected.float().cpu() - actual.float().cpu()).abs().max()) if expected.numel() else 0.0

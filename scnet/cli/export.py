"""``scnet export``: a zoo network (with its checkpoint) as an ONNX, TorchScript or ``torch.export`` file, checked.

Why a command: an exported file is only useful if it computes what the network computes. This one builds,
folds (``scnet.deploy``), exports (``scnet.export``), loads the file back in its own runtime, compares it
with the eager network on the same input and times both, so the file comes with the evidence.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

from scnet.cli.arg_types import add_model_kwargs_flag

_DESCRIPTION = """\
Build a network of the zoo (optionally with a checkpoint), fold its BatchNorms into the convolutions
(scnet.deploy; --no-deploy exports it as built), export it, load the file back in its runtime and compare
it with the eager eval-mode network on one random batch. Prints format, file size, max abs difference and
the time per batch of torch eager and of the exported file's runtime, and writes the same as JSON to
OUTPUT.json.

Formats:
  onnx         torch.onnx.export(dynamo=True), weights inside the file; run by onnxruntime (CPU).
  torchscript  torch.jit.trace + torch.jit.save; run by torch.jit.load. (torch.jit is deprecated upstream
               but works in PyTorch 2.14.)
  exported     torch.export.export + torch.export.save (a .pt2 archive); run by torch.export.load.

The batch size of the file is dynamic; its input size is fixed at --input-size."""

_EPILOG = """\
examples:
  scnet export --model scnet50 --format onnx --output scnet50.onnx
  scnet export --model scnet26_cifar --checkpoint runs/<run>/model.safetensors --format exported --output net.pt2
  python -c "import onnxruntime as ort; print(ort.InferenceSession('scnet50.onnx').get_inputs()[0])\""""

#: Largest accepted difference to the eager network, relative to the output's scale (as scnet.deploy).
TOLERANCE = 1e-4


def add_parser(sub) -> None:
    from scnet.export import FORMATS

    p = sub.add_parser('export', help='export a network to ONNX / TorchScript / torch.export, with a parity check',
                       description=_DESCRIPTION, epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', required=True, metavar='NAME', help='zoo network to export (`scnet models` lists them)')
    p.add_argument('--checkpoint', metavar='PATH',
                   help='weights to load: .safetensors or .pth, in the authors\' layout or ours (default: random '
                        'initialisation, enough to try the pipeline)')
    p.add_argument('--num-classes', type=int, metavar='N',
                   help="classifier outputs (default: the checkpoint's, else 1000)")
    p.add_argument('--format', required=True, choices=tuple(FORMATS), help='file format (see above)')
    p.add_argument('--output', required=True, metavar='FILE',
                   help='file to write; its directory must exist; the report goes to FILE.json')
    p.add_argument('--input-size', metavar='N|HxW',
                   help="input resolution the file is fixed to: N for NxN or HxW (default: the checkpoint's "
                        "recorded size, else the model's: 224 for ImageNet networks, 32 for the _cifar ones)")
    p.add_argument('--batch-size', type=int, default=1, metavar='B',
                   help='batch of the parity check and the timings (default: 1; the file accepts any batch)')
    p.add_argument('--repeats', type=int, default=5, metavar='R',
                   help='timed runs per runtime after one warm-up, median reported (default: 5)')
    p.add_argument('--no-deploy', action='store_true',
                   help='export the network as built, without folding its BatchNorms into the convolutions')
    p.add_argument('--force', action='store_true', help='replace FILE (and FILE.json) if they exist')
    add_model_kwargs_flag(p)
    p.set_defaults(run=run)


def _median_ms(runners: Dict[str, Callable[[], object]], repeats: int) -> Dict[str, float]:
    """Median wall time per call, runners interleaved (so a busy moment of the machine hits all of them)."""
    times: Dict[str, List[float]] = {name: [] for name in runners}
    for fn in runners.values():  # warm-up: first-call allocation, onnxruntime's lazy init
        fn()
    for _ in range(repeats):
        for name, fn in runners.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(t) for name, t in times.items()}


def _size(n_bytes: int) -> str:
    return f'{n_bytes / 2 ** 20:.1f} MiB'


def _build(name: str, checkpoint, num_classes, meta, model_kwargs=None):
    """The network with its checkpoint's weights, built with the model options the checkpoint records
    (``meta``: what ``scnet train`` wrote beside the weights, as ``scnet eval`` reads it).

    The options matter even where no tensor's shape shows them (``pooling_r``, ``pool``, ``identity``): built
    without them, the network would load the weights and compute something else, and the parity check, run
    against that same network, would pass. A checkpoint of another model than ``--model`` is refused.

    A checkpoint whose classifier has another number of classes than ``--num-classes`` (not 0) is refused:
    ``create_model`` would give the network a new, randomly initialised classifier (fine-tuning's start, with
    only a warning), and the exported file would classify at random while its parity check passes. Weights
    that do not fit the network say so with this command's way out (``--model``)."""
    from scnet.export import ExportError
    from scnet.models import create_model
    from scnet.train.checkpoint_eval import model_kwargs_way_out
    from scnet.train.classifier_checkpoint import other_model_message
    from scnet.weights.fit import WeightsMismatchError

    other = other_model_message(checkpoint, meta.get('model'), name, f'pass --model {meta.get("model")}')
    if other:
        raise ExportError(other)
    model_kwargs = {**(meta.get('model_kwargs') or {}), **(model_kwargs or {})}  # --model-kwargs over the record

    if checkpoint and num_classes:
        from scnet.weights import read_checkpoint
        from scnet.weights.io import read_shape

        shape = read_shape(checkpoint, 'fc.weight')  # a safetensors header says it: no second read of the weights
        if shape is None:  # another format (the authors' .pth), or no classifier: read it whole
            weights = read_checkpoint(checkpoint)
            shape = list(weights['fc.weight'].shape) if 'fc.weight' in weights else None
        saved = shape[0] if shape else None
        if saved is not None and saved != num_classes:
            raise ExportError(f'{checkpoint} has {saved} classes, not {num_classes}: its classifier would be replaced '
                              f'by a random one; pass --num-classes {saved} or leave it out (--num-classes 0 exports '
                              'the features, without classifier)')
    try:
        return create_model(name, checkpoint=checkpoint, num_classes=num_classes, **model_kwargs)
    except TypeError as e:  # options recorded with the weights that this network does not take
        raise ExportError(f'{checkpoint}: its model options {model_kwargs} do not fit {name} ({e}); pass the '
                          '--model it was trained as') from None
    except WeightsMismatchError as e:
        raise e.with_way_out(model_kwargs_way_out(e) or f'pass the --model it was trained as (`scnet models` lists '
                             f'them), or a checkpoint of {name}', name=name) from None


def run(args: argparse.Namespace) -> int:
    import torch

    from scnet.cli.formatting import render_table
    from scnet.complexity import parse_input_size
    from scnet.deploy import DeployError, deploy
    from scnet.errors import ScnetError
    from scnet.export import check_parity, export_model, load_exported, write_json

    output = Path(args.output)
    report_path = output.with_name(output.name + '.json')
    if not output.parent.is_dir():
        raise ScnetError(f'{output.parent}: no such directory; create it first or choose another --output')
    if output.is_dir():
        raise ScnetError(f'{output} is a directory; --output takes a file name, e.g. {output / "model.onnx"}')
    for path in (output, report_path):
        if path.exists() and not args.force:
            raise ScnetError(f'{path} exists; pass --force to replace it, or choose another --output')
    if args.batch_size < 1 or args.repeats < 1:
        raise ScnetError(f'--batch-size and --repeats must be positive, got {args.batch_size} and {args.repeats}')
    if args.num_classes is not None and args.num_classes < 0:
        raise ScnetError(f'--num-classes must be 0 (no classifier) or more, got {args.num_classes}')

    from scnet.train.checkpoint_eval import checkpoint_metadata
    from scnet.weights.io import checkpoint_file

    meta = checkpoint_metadata(checkpoint_file(args.checkpoint)) if args.checkpoint else {}
    model = _build(args.model, args.checkpoint, args.num_classes, meta, args.model_kwargs).eval()
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    recorded_size = (meta['image_size'],) * 2 if meta.get('image_size') else None
    h, w = parse_input_size(args.input_size) if args.input_size else (
        recorded_size or tuple(cfg.get('input_size', (3, 224, 224))[1:]))
    channels = int(getattr(model, 'in_chans', 3))  # timm's in_chans (grey or 4-channel inputs), else RGB
    x = torch.randn(args.batch_size, channels, h, w, generator=torch.Generator().manual_seed(0))

    deploy_report = None
    exported = model
    if not args.no_deploy:
        try:
            deployed = deploy(model, channels_last=False, compile=False, example_input=x)
        except DeployError as e:  # its advice is the Python API's example_input=: here the input comes from flags
            if e.failed_probe is None:
                raise
            shape, detail = e.failed_probe
            raise ScnetError(f'the model failed on the probe input of shape {shape} ({detail}); the example input is '
                             'made from --batch-size and --input-size: choose sizes the network runs (and the memory '
                             'holds)') from None
        exported, deploy_report = deployed.module, deployed.report
    export_model(exported, args.format, output, x, dynamic_batch=True)
    loaded = load_exported(output, args.format)
    diff = check_parity(model, loaded, x)
    with torch.no_grad():
        reference = model(x)
        out_shape, scale = tuple(reference.shape), max(1.0, float(reference.abs().max()))
        ms = _median_ms({'eager': lambda: model(x), 'exported': lambda: loaded(x)}, args.repeats)
    ok = diff <= TOLERANCE * scale
    classes = int(getattr(model, 'num_classes', out_shape[-1]))

    data = {
        'model': args.model, 'checkpoint': args.checkpoint, 'model_kwargs': args.model_kwargs,
        'format': args.format, 'output': str(output),
        'file_bytes': output.stat().st_size, 'runtime': loaded.runtime, 'input_shape': list(x.shape),
        'dynamic_batch': True, 'deployed': not args.no_deploy,
        'folded_bns': deploy_report.folded_count if deploy_report else 0,
        'unfolded_bns': [u.name for u in deploy_report.unfolded] if deploy_report else None,
        'num_classes': classes, 'classifier': classes > 0, 'output_shape': list(out_shape),
        'max_abs_diff': diff, 'tolerance': TOLERANCE * scale, 'parity_ok': ok,
        'ms_per_batch': {'torch_eager': ms['eager'], 'exported': ms['exported']},
        'repeats': args.repeats, 'threads': torch.get_num_threads(), 'torch': torch.__version__,
    }
    if args.format == 'onnx':
        import onnxruntime

        data['onnxruntime'] = onnxruntime.__version__
    write_json(report_path, data)

    folded = (f'{deploy_report.folded_count} BatchNorms folded, {len(deploy_report.unfolded)} left'
              if deploy_report else 'not deployed (--no-deploy)')
    # num_classes 0 is timm's network without classifier: say so, as the file's output is not class scores
    head = f'{classes} classes' if classes else \
        f'no classifier (--num-classes 0): outputs {out_shape[-1]} pooled features per image'
    print(f'{output}: {args.model}, input {tuple(x.shape)}, {head}, {folded}; report in {report_path}')
    print(render_table(
        ['format', 'runtime', 'file size', 'max abs diff', 'torch eager ms/batch', 'exported ms/batch'],
        [[args.format, loaded.runtime, _size(data['file_bytes']), f'{diff:.2e}', f"{ms['eager']:.1f}",
          f"{ms['exported']:.1f}"]]))
    if not ok:
        print(f'scnet export: error: the exported file differs from the eager network by {diff:.3g}, more than '
              f'{TOLERANCE * scale:.3g}; it is written, but check it before use (try --no-deploy)', file=sys.stderr)
        return 1
    return 0

"""``scnet convert``: rewrite a checkpoint of either layout as a safetensors file in this package's layout.

Why a command: the authors' checkpoints are pickles in their own layout. Converting once gives a file that
loads without unpickling anything, with the names ``scnet.create_model`` uses, which any safetensors reader
can open; ``--model`` checks the result against a network before anyone relies on it.
"""
from __future__ import annotations

import argparse
from pathlib import Path

_DESCRIPTION = """\
Read a checkpoint in either layout, convert it to this package's layout, and write it as safetensors.

Layouts (detected from the tensor names):
  authors  the authors' release (github.com/MCG-NKU/SCNet, e.g. scnet50-dc6a7e87.pth): each block has two
           half-width 1x1 convs conv1_a/conv1_b with BNs bn1_a/bn1_b, path 2 k1 (conv, BN) and path 1
           scconv.k2/k3/k4. They are concatenated and renamed: conv1, bn1, conv2.k1..k4, conv2.k2_norm,
           conv2.k3_norm, and bn2 (= k1's BN followed by k4's BN). The result computes the same function.
  scnet    this package's (timm's ResNet names, conv2 an SCConv2d): written unchanged.

IN may be a .pth/.pt pickle (read with torch.load(weights_only=True): a file that would run code when
unpickled is refused), or a .safetensors file. Wrappers such as {'state_dict': ...} or {'model': ...} and a
'module.' prefix are removed. OUT is always safetensors; its metadata records the source file name, the
layout detected and, with --model, the model name, after the metadata of a safetensors IN (what `scnet train`,
`scnet detect train` and `scnet pose train` record: model, options, classes), which is kept. An existing OUT is
replaced only with --force, and never when it is IN itself or not a regular file."""

_EPILOG = """\
examples:
  scnet convert scnet50-dc6a7e87.pth scnet50.safetensors --model scnet50
  python -c "import scnet; scnet.create_model('scnet50', checkpoint='scnet50.safetensors')\""""

#: Buffers of BatchNorm: tensors of a state dict that are not parameters.
_BUFFER_SUFFIXES = ('.running_mean', '.running_var', '.num_batches_tracked')


def add_parser(sub) -> None:
    p = sub.add_parser('convert', help="convert a checkpoint (the authors' or ours) to a safetensors file",
                       description=_DESCRIPTION, epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('input', metavar='IN', help="checkpoint to read: the authors' .pth or ours (.pth or .safetensors)")
    p.add_argument('output', metavar='OUT', help='safetensors file to write')
    p.add_argument('--force', action='store_true', help='replace OUT if it exists (a regular file other than IN)')
    p.add_argument('--model', metavar='NAME',
                   help='also build NAME (see `scnet models`) and check that every tensor fits it; the number '
                        'of classes is taken from the checkpoint')
    p.set_defaults(run=run)


def check_fits(name: str, state_dict, source: str) -> int:
    """Build ``name`` with the checkpoint's number of classes and raise ``CheckpointError`` (one line) unless
    ``state_dict`` fits it exactly. Returns the number of classes.

    The model is built on the meta device: only names and shapes matter, so nothing is allocated.
    """
    import warnings

    import torch

    from scnet.models import create_model
    from scnet.weights import load_into

    fc = state_dict.get('fc.weight')
    num_classes = int(fc.shape[0]) if fc is not None and fc.dim() == 2 else 0
    with torch.device('meta'):
        model = create_model(name, num_classes=num_classes)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # "copying from a non-meta parameter to a meta parameter is a no-op"
        load_into(model, state_dict, source=source)  # CheckpointError: one line saying how it does not fit
    return num_classes


def _check_output(source: Path, target: Path, force: bool) -> None:
    """OUT may be written: not IN itself (even with --force: IN is read while OUT is written, and the original
    would be gone), not a folder or a device, and not an existing file unless --force."""
    from scnet.errors import ScnetError

    if target.exists() and source.exists() and target.resolve() == source.resolve():
        raise ScnetError(f'{target} is IN itself; write the converted checkpoint to another file')
    if target.is_dir():
        raise ScnetError(f'{target} is a folder; give OUT as a file name, e.g. {target / "model.safetensors"}')
    if target.exists() and not target.is_file():
        raise ScnetError(f'{target} is not a regular file (a device or a pipe); give OUT as a file name')
    if target.exists() and not force:
        raise ScnetError(f'{target} exists; pass --force to replace it, or choose another OUT')


def run(args: argparse.Namespace) -> int:
    from scnet.errors import CheckpointError
    from scnet.weights import convert_authors_state_dict, is_authors_layout, read_state_dict, save_state_dict
    from scnet.weights.io import read_metadata

    source, target = Path(args.input), Path(args.output)
    _check_output(source, target, args.force)
    state_dict = read_state_dict(source)
    layout = 'authors' if is_authors_layout(state_dict) else 'scnet'
    if layout == 'authors':
        state_dict = convert_authors_state_dict(state_dict)
    fits = ''
    if args.model:
        num_classes = check_fits(args.model, state_dict, str(source))
        fits = f'; fits {args.model} ({num_classes} classes)' if num_classes else f'; fits {args.model} (no classifier)'
    # a run's checkpoint keeps what its run recorded (model, options, classes, task), or it no longer loads by
    # its folder or in the detection and pose commands
    metadata = {**read_metadata(source), 'format': 'pt', 'source': source.name, 'layout': layout}
    if args.model:
        metadata['model'] = args.model
    try:
        save_state_dict(state_dict, target, metadata=metadata)
    except OSError as e:
        raise CheckpointError(f'{target}: cannot write ({e})') from None
    params = sum(t.numel() for k, t in state_dict.items() if not k.endswith(_BUFFER_SUFFIXES))
    origin = "the authors' layout (converted)" if layout == 'authors' else "scnet's layout (unchanged)"
    print(f'{target}: {len(state_dict)} tensors, {params:,} parameters, from {origin}{fits}')
    return 0

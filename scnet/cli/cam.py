"""``scnet cam``: Grad-CAM of one or more models on one or more images, side by side (Figs. 1 and 6);
with ``--side-output``, the res3 side-output score maps of runs trained with ``--aux-weight`` (Fig. 4)."""
from __future__ import annotations

import argparse

from scnet.cli.arg_types import output_folder, positive_int, seed, unit_float
from scnet.errors import ScnetError

_DESCRIPTION = """\
Grad-CAM (Selvaraju et al. 2017) of each model on each image, overlaid on the crop the model sees,
as one PNG grid: a row per image (the input first), a column per model, each cell captioned with the
class its map explains and the model's prediction. Writes DIR/gradcam.png and DIR/gradcam.json
(per image and model: class, probability, where the map peaks).

Models are NAME[:CHECKPOINT]:
  scnet50                       random weights (seeded by --seed; say so in any figure you publish)
  scnet50:RUN_DIR               a run of `scnet train` (its model.safetensors; class names, input size
  RUN_DIR                       and model options come from its metadata)
  scnet50:weights.pth           any checkpoint of the model, ours or the authors' layout
  scnet50:pretrained            the authors' ImageNet weights (downloaded once; timm's for baselines)

With --side-output, the models must be runs trained with `scnet train --aux-weight W`: each cell shows
the res3 (layer2) score map of the side classifier's class (RUN_DIR/side_head.safetensors), as the
paper's Fig. 4; it writes DIR/side_output.png and .json. The side accuracy curves (Fig. 5) are drawn by
`scnet plot RUN_DIR...` (dashed lines in accuracy.png).

Layers: conv1, layer1..layer4 (or res2..res5), blocks like layer4.2 or layer4.-1 (the last), convs like
layer4.-1.conv2 (the last block's 3x3 / SC-Conv). --list-layers prints every module with its output shape."""


def add_parser(sub) -> None:
    p = sub.add_parser('cam', help='Grad-CAM (or res3 side-output maps) of models on images, side by side (PNG)',
                       description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', '--model', nargs='+', required=True, metavar='NAME[:CHECKPOINT]',
                   help='one column each, in this order')
    p.add_argument('--images', '--image', nargs='+', metavar='FILE', help='one row each (any format PIL reads)')
    p.add_argument('--output', '-o', metavar='DIR', type=output_folder, help='where to write the PNG and the JSON')
    p.add_argument('--target-layer', '--layer', default=None, metavar='L',
                   help='layer whose output Grad-CAM weighs (default: layer4, the last stage)')
    p.add_argument('--class', dest='target_class', default=None, metavar='C',
                   help="explain this class (an index, or a class name: the checkpoint's, or ImageNet's for "
                        '1000-class models) instead of each image\'s predicted class')
    p.add_argument('--side-output', action='store_true',
                   help='show the res3 side-output score maps of runs trained with --aux-weight (Fig. 4)')
    p.add_argument('--image-size', type=positive_int, default=None, help="crop size (default: the checkpoint's, else 224)")
    p.add_argument('--resize', type=positive_int, default=None,
                   help="short side before the centre crop (default: the checkpoint's, else 256 for 224)")
    p.add_argument('--alpha', type=unit_float, default=0.5, help='opacity of the map over the image (default 0.5)')
    p.add_argument('--cmap', default='jet', help='matplotlib colour map (default jet)')
    p.add_argument('--seed', type=seed, default=0, help='seed of random weights (default 0)')
    p.add_argument('--list-layers', action='store_true',
                   help='print every layer of the (first) model with its output shape, and exit')
    p.set_defaults(run=run)


def list_layers(spec: str, image_size=None) -> int:
    from scnet.cli.formatting import render_table
    from scnet.visual.loading import load_model
    from scnet.visual.targets import layer_choices, layer_table

    m = load_model(spec, image_size=image_size)
    size = m.preprocessing.image_size
    print(render_table(['layer', 'module', f'output (C x H x W) at {size} px'], layer_table(m.model, size)))
    print(f'\nusual choices: {", ".join(layer_choices(m.model))} (res2..res5 = layer1..layer4; '
          'a negative block index counts from the end: layer4.-1.conv2)')
    return 0


def run(args: argparse.Namespace) -> int:
    if args.list_layers:
        return list_layers(args.models[0], args.image_size)
    if not args.images:
        raise ScnetError('give the images with --images FILE [FILE ...]')
    if not args.output:
        raise ScnetError('give the output directory with --output DIR')
    if not 0.0 <= args.alpha <= 1.0:
        raise ScnetError(f'--alpha must be between 0 and 1, got {args.alpha}')
    from matplotlib import colormaps

    if args.cmap not in colormaps:
        raise ScnetError(f'--cmap {args.cmap!r} is not a matplotlib colour map (e.g. jet, inferno, viridis, turbo)')
    if args.side_output and args.target_layer:
        raise ScnetError('--side-output reads the side head at res3 (layer2): --target-layer does not apply')
    from scnet.cli.formatting import render_table
    from scnet.visual.cam import compare_models

    result = compare_models(args.models, args.images, args.output, layer=args.target_layer,
                            target_class=args.target_class, side_output=args.side_output,
                            image_size=args.image_size, resize=args.resize, seed=args.seed, alpha=args.alpha,
                            cmap=args.cmap)
    rows = []
    for rec in result['records']:
        for label, r in rec['models'].items():
            peak = '{:.2f},{:.2f}'.format(*r['peak_relative_yx'])
            rows.append([rec['image'], label, r['class_name'], f"{100 * r['prob']:.1f}", r['predicted_name'],
                         f"{100 * r['predicted_prob']:.1f}", peak])
    print(render_table(['image', 'model', 'class shown', 'p (%)', 'predicted', 'p (%)', 'peak (y,x)'], rows))
    print(f"wrote {result['png']} and {result['json']} ({result['seconds']:.1f} s)")
    return 0

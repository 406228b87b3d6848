"""``scnet features``: the strongest channels of a layer's feature maps for an image (the paper's Fig. 3)."""
from __future__ import annotations

import argparse

from scnet.cli.arg_types import output_folder, positive_int, seed
from scnet.errors import ScnetError

_DESCRIPTION = """\
Run the image through each model up to LAYER and draw the TOP channels of the layer's output with
the largest mean magnitude (mean over positions of |activation|), strongest first, each divided by
its own maximum and overlaid on the crop the model sees (--no-overlay: the map alone, at the layer's
resolution). A row per model. Writes DIR/features_<layer>.png and .json (channels and strengths).

The default layer is the last block's 3x3 convolution, layer4.-1.conv2, as in the paper's Fig. 3 (an
SC-Conv in SC models). Models are NAME[:CHECKPOINT] as for `scnet cam` (see `scnet cam --help`);
--list-layers prints every layer with its output shape."""


def add_parser(sub) -> None:
    p = sub.add_parser('features', help="a layer's strongest feature maps for an image (PNG), one row per model",
                       description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', '--models', dest='models', nargs='+', required=True, metavar='NAME[:CHECKPOINT]',
                   help='one row each')
    p.add_argument('--image', metavar='FILE', help='the image')
    p.add_argument('--layer', default=None, metavar='L',
                   help='layer to look at (default layer4.-1.conv2: the last 3x3 conv, as Fig. 3)')
    p.add_argument('--output', '-o', metavar='DIR', type=output_folder, help='where to write the PNG and the JSON')
    p.add_argument('--top', type=positive_int, default=8, help='how many channels (default 8)')
    p.add_argument('--no-overlay', action='store_true', help='draw the maps alone at their own resolution')
    p.add_argument('--image-size', type=positive_int, default=None, help="crop size (default: the checkpoint's, else 224)")
    p.add_argument('--resize', type=positive_int, default=None, help="short side before the crop (default 256 for 224)")
    p.add_argument('--seed', type=seed, default=0, help='seed of random weights (default 0)')
    p.add_argument('--list-layers', action='store_true',
                   help='print every layer of the (first) model with its output shape, and exit')
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.list_layers:
        from scnet.cli.cam import list_layers
        return list_layers(args.models[0], args.image_size)
    if not args.image:
        raise ScnetError('give the image with --image FILE')
    if not args.output:
        raise ScnetError('give the output directory with --output DIR')
    from scnet.visual.features import compare_features

    result = compare_features(args.models, args.image, args.output, layer=args.layer, top=args.top,
                              use_overlay=not args.no_overlay, image_size=args.image_size, resize=args.resize,
                              seed=args.seed)
    for rec in result['records']:
        chans = ', '.join(f"{t['channel']} ({t['mean_abs']:.3g})" for t in rec['top'])
        print(f"{rec['label']}  {rec['layer']} {rec['channels']}x{rec['map_size'][0]}x{rec['map_size'][1]}: "
              f"strongest channels {chans}")
    print(f"wrote {result['png']} and {result['json']} ({result['seconds']:.1f} s)")
    return 0

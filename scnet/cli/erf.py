"""``scnet erf``: effective receptive field of each stage, models side by side (PNG + JSON)."""
from __future__ import annotations

import argparse
import json

from scnet.cli.arg_types import output_folder, positive_int, seed

_DESCRIPTION = """\
Measure the effective receptive field (Luo et al. 2016) of the centre unit of each stage
(layer1..layer4 = res2..res5): the gradient of that unit (summed over channels) with respect to the
input, |.| summed over colours and averaged over SAMPLES inputs (random normal images, or the crops
of --images), as a mass distribution. Radius r50 / r95: half-width in input pixels of the smallest
square window around the mass's centre of gravity holding 50% / 95% of it; r100: all of it (the
receptive field wired in; for a plain CNN the theoretical one, clipped by the image).

Writes DIR/erf.json (per model and stage: r50, r95, per seed and mean), DIR/erf.png (heat maps, a row
per model, a column per stage, log scale, r50/r95 squares) and DIR/erf_mass.png (mass within r).

Random weights (a model given without checkpoint) are measured with each block's last BN at 1 (timm
starts it at 0, which turns every residual branch off) and BN statistics calibrated on the inputs
(--no-bn-calibration: keep the defaults, mean 0 / variance 1). Each seed draws new weights and inputs.
Models are NAME[:CHECKPOINT] as for `scnet cam`."""


def add_parser(sub) -> None:
    p = sub.add_parser('erf', help='effective receptive field per stage, models side by side (PNG + JSON)',
                       description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', '--model', nargs='+', default=['resnet50', 'scnet50'], metavar='NAME[:CHECKPOINT]',
                   help='models to compare (default: resnet50 scnet50)')
    p.add_argument('--output', '-o', metavar='DIR', required=True, type=output_folder, help='where to write erf.json and the PNGs')
    p.add_argument('--input-size', type=positive_int, default=224, help='input side in pixels (default 224)')
    p.add_argument('--samples', type=positive_int, default=8, help='inputs averaged per seed (default 8)')
    p.add_argument('--seeds', type=seed, nargs='+', default=[0], help='seeds: weights and inputs (default 0)')
    p.add_argument('--batch-size', type=positive_int, default=8, help='inputs per forward pass (default 8)')
    p.add_argument('--images', nargs='+', metavar='FILE', default=(),
                   help='average over the crops of these images instead of random inputs')
    p.add_argument('--stages', nargs='+', default=None, metavar='STAGE',
                   help='stage outputs to measure (default layer1 layer2 layer3 layer4; res2..res5 accepted)')
    p.add_argument('--no-bn-calibration', action='store_true',
                   help='random weights: keep the default BN statistics instead of calibrating them on the inputs')
    p.add_argument('--format', choices=('table', 'markdown', 'json'), default='table', help='what to print')
    p.add_argument('--quiet', action='store_true', help='no per-seed progress lines')
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import sys
    import time

    from scnet.cli.formatting import render_table
    from scnet.visual.erf import measure_models, report_json, write_erf
    from scnet.visual.targets import STAGES

    start = time.perf_counter()
    progress = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    result = measure_models(args.models, input_size=args.input_size, samples=args.samples, seeds=args.seeds,
                            batch_size=args.batch_size, image_paths=args.images or (),
                            calibrate_bn=not args.no_bn_calibration, stages=args.stages or STAGES,
                            progress=progress)
    paths = write_erf(result, args.output)
    if args.format == 'json':
        print(json.dumps(report_json(result), indent=2))
    else:
        rows = []
        for m in result['models']:
            for stage, rec in m['stages'].items():
                paper = f" ({rec['paper_name']})" if rec['paper_name'] else ''
                spread = len(args.seeds) > 1
                rows.append([m['label'], stage + paper, f"{rec['map_size'][0]}x{rec['map_size'][1]}",
                             f"{rec['r50']:.1f}" + (f" ± {rec['r50_std']:.1f}" if spread else ''),
                             f"{rec['r95']:.1f}" + (f" ± {rec['r95_std']:.1f}" if spread else ''),
                             f"{rec['r100']:.1f}"])
        print(render_table(['model', 'stage', 'map', 'r50 (px)', 'r95 (px)', 'r100: all (px)'], rows,
                           markdown=args.format == 'markdown'))
    print(f"wrote {paths['json']}, {paths['png']}, {paths['mass_png']} ({time.perf_counter() - start:.1f} s)",
          file=sys.stderr if args.format == 'json' else sys.stdout)
    return 0

"""``scnet plot``: PNG curves (loss, accuracy, learning rate, throughput) of ``scnet train`` runs."""
from __future__ import annotations

import argparse
from pathlib import Path

from scnet.cli.arg_types import output_folder

_DESCRIPTION = """\
Draw the training curves of one or more runs of `scnet train` from their RUN_DIR/metrics.jsonl
(one JSON line per finished epoch) and write, into the output directory:

  loss.png        training loss (res3 auxiliary head dashed, when the run has one) and validation loss
                  (the EMA of the weights dotted, with --ema-decay)
  accuracy.png    validation top-1 and top-5 (%); the res3 auxiliary head dashed, as in the paper's Fig. 5,
                  and the EMA of the weights dotted
  lr.png          learning rate per epoch (log axis when it spans a factor of 10 or more)
  throughput.png  images/s per epoch
  summary.json    per run: best val top-1/top-5 (and aux, EMA) with its epoch, last values, mean images/s

Several runs share the axes, one colour each, labelled with the model of their config.json (else
the folder name) or with --labels. A run still being written can be plotted: an incomplete last
line of metrics.jsonl is ignored."""


def add_parser(sub) -> None:
    p = sub.add_parser('plot', help='draw the training curves of runs (PNG) and summarise them',
                       description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('run_dirs', nargs='+', metavar='RUN_DIR', help='run directory holding metrics.jsonl')
    p.add_argument('--output', '-o', metavar='DIR', default=None, type=output_folder,
                   help='where to write the figures (default: the run directory for one run, ./plots for several)')
    p.add_argument('--labels', nargs='+', metavar='LABEL', default=None,
                   help='legend labels, one per RUN_DIR in the same order (put this option after the RUN_DIRs)')
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from scnet.visual.curves import MetricsError, plot_runs

    if args.labels is not None and len(args.labels) != len(args.run_dirs):
        raise MetricsError(f'--labels: {len(args.labels)} label(s) given for {len(args.run_dirs)} run '
                           f'director{"y" if len(args.run_dirs) == 1 else "ies"}; give one per RUN_DIR')
    if args.output is not None:
        output = Path(args.output)
    elif len(args.run_dirs) == 1:
        output = Path(args.run_dirs[0])
    else:
        output = Path('plots')
    for path in plot_runs(args.run_dirs, output, labels=args.labels):
        print(path)
    return 0

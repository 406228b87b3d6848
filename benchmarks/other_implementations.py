"""SCNet-50 of scnet-torch against other implementations, timed side by side on this machine.

    python benchmarks/other_implementations.py                       # train batch 16, infer batch 1 and 8
    python benchmarks/other_implementations.py --mode train --batch-size 16 --repeats 5 --output other.json

Contenders (see benchmarks/implementations.py): resnet50 (timm, the baseline of the ratios), scnet50
(scnet-torch), the authors' structure, mmpose's SCNet-50 (a second published implementation; left out, with a
note, unless ``bash benchmarks/install_contenders.sh`` has installed it) and the literal equations 2-5 of the
tests. Before timing, the outputs are compared in eval mode on the benchmark batch: scnet-torch against the
literal twin with the same weights, and against the authors' structure and mmpose's, their state converted to
ours (random weights and BN statistics in the authors' network, converted by
``scnet.weights.convert_authors_state_dict``, and renamed for mmpose's): "same outputs" is a measured
max |difference|.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import implementations  # noqa: E402  (puts the repository root on sys.path)

from scnet.allocator import tune_cpu_allocator  # noqa: E402
from scnet import create_model  # noqa: E402
from scnet.bench.cases import Contender, Settings  # noqa: E402
from scnet.bench.runner import run_benchmark  # noqa: E402
from scnet.cli.benchmark import render  # noqa: E402
from scnet.files import write_json_atomic  # noqa: E402
from scnet.weights import convert_authors_state_dict  # noqa: E402
from tests.authors_reference import randomize_  # noqa: E402

MMPOSE = Contender(f'scnet50 mmpose {implementations.MMPOSE_VERSION}', kwargs={'name': 'scnet50'},
                   factory='implementations:mmpose_scnet')
CONTENDERS = [
    Contender('resnet50', kwargs={'name': 'resnet50'}),
    Contender('scnet50', kwargs={'name': 'scnet50'}),
    Contender("scnet50 authors' structure", kwargs={'name': 'scnet50'}, factory='implementations:authors_scnet'),
    MMPOSE,
    Contender('scnet50 literal eqs 2-5', kwargs={'name': 'scnet50'}, factory='implementations:literal_scnet'),
]


def contenders(with_mmpose: bool) -> list:
    """The contenders to time: all of ``CONTENDERS``, or all but mmpose's."""
    return [c for c in CONTENDERS if with_mmpose or c is not MMPOSE]


def output_differences(size: int = 224, batch: int = 2, with_mmpose: bool = False) -> dict:
    """Max |logit difference| of scnet-torch's scnet50 against the literal twin, the authors' structure and
    (``with_mmpose``) mmpose's SCNet-50."""
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    ours = randomize_(create_model('scnet50')).eval()
    literal = implementations.literal_scnet('scnet50').eval()
    literal.load_state_dict(implementations.ours_to_literal_state(ours))
    authors = randomize_(implementations.authors_scnet('scnet50'), seed=1).eval()
    converted = create_model('scnet50').eval()
    converted.load_state_dict(convert_authors_state_dict(authors.state_dict()))
    with torch.no_grad():
        y, y_converted = ours(x), converted(x)
        diffs = {'literal_eqs_2_5': float((literal(x) - y).abs().max()),
                 'authors_structure': float((authors(x) - y_converted).abs().max()),
                 'logit_scale': float(y.abs().max())}
        if with_mmpose:
            mmpose = implementations.mmpose_scnet('scnet50').eval()
            mmpose.load_state_dict(implementations.authors_to_mmpose_state(authors.state_dict()))
            diffs['mmpose'] = float((mmpose(x) - y_converted).abs().max())
    return diffs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--mode', choices=('infer', 'train', 'both'), default='both')
    p.add_argument('--batch-size', type=int, nargs='+', default=None,
                   help='default: 16 for train, 1 8 for infer')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--repeats', type=int, default=7)
    p.add_argument('--no-memory', action='store_true')
    p.add_argument('--no-mmpose', action='store_true',
                   help="leave mmpose's SCNet-50 out even where it is installed")
    p.add_argument('--output', default=None, metavar='FILE', help='JSON report of every run')
    args = p.parse_args(argv)
    tune_cpu_allocator()  # as the scnet command does, so that figures match what it measures
    torch.set_num_threads(args.threads)
    with_mmpose = not args.no_mmpose and implementations.mmpose_available()
    if not with_mmpose and not args.no_mmpose:
        print("mmpose's SCNet-50 is left out: it is not installed (bash benchmarks/install_contenders.sh)",
              file=sys.stderr)
    report = {'same_outputs': output_differences(with_mmpose=with_mmpose),
              'mmpose': implementations.MMPOSE_VERSION if with_mmpose else 'not installed'}
    print('max |logit difference| vs scnet-torch:', json.dumps(report['same_outputs']))
    modes = ['train', 'infer'] if args.mode == 'both' else [args.mode]
    for mode in modes:
        sizes = args.batch_size or ([16] if mode == 'train' else [1, 8])
        r = run_benchmark(contenders(with_mmpose), Settings(mode=mode, batch_size=sizes[0]), batch_sizes=sizes,
                          warmup=args.warmup, repeats=args.repeats, memory=not args.no_memory)
        report[mode] = r
        print(render(r, markdown=True), flush=True)
    if args.output:
        write_json_atomic(report, args.output)
    return 0


if __name__ == '__main__':
    sys.exit(main())

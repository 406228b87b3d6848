"""The small networks' training step: scnet26_cifar against resnet26_cifar at the same widths, with SC-Conv's
one-map training path (``memory_efficient=True``, the default) and with plain autograd.

    python benchmarks/small_networks.py                      # channels 16-32-64-128, 32 px, batch 64
    python benchmarks/small_networks.py --output benchmarks/results/small_networks.json
    python benchmarks/small_networks.py --models resnet50 scnet50 --channels 64 128 256 512 --input-size 224 \\
        --batch-size 16 --output benchmarks/results/recompute_scnet50.json     # the same choice on SCNet-50

The embedded dataset's network is this size: the issue's target is scnet26_cifar's step at most 1.1x
resnet26_cifar's. Timed as `scnet benchmark` times (interleaved rounds, median, peak memory of a fresh
process), with the channel widths the CLI cannot set. ``--models`` runs the same comparison on another pair (at
its own widths: 64 128 256 512 are ResNet-50's), so that the default of ``memory_efficient`` rests on both.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from scnet.allocator import tune_cpu_allocator  # noqa: E402
from scnet.errors import UnknownModelError  # noqa: E402
from scnet.models.factory import validate_model_name  # noqa: E402
from scnet.bench.cases import Contender, Settings  # noqa: E402
from scnet.bench.runner import run_benchmark  # noqa: E402
from scnet.cli.benchmark import render  # noqa: E402
from scnet.files import write_json_atomic  # noqa: E402


def contenders(channels, models=('resnet26_cifar', 'scnet26_cifar')):
    """The plain network, its SC twin as built and the twin with plain autograd, at ``channels`` widths."""
    widths = {'channels': tuple(channels), 'num_classes': 8}
    base, sc = models
    return [
        Contender(base, kwargs={'name': base, **widths}),
        Contender(sc, kwargs={'name': sc, **widths}),
        Contender(f'{sc} plain autograd', kwargs={'name': sc, 'memory_efficient': False, **widths}),
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', nargs=2, default=['resnet26_cifar', 'scnet26_cifar'], metavar=('PLAIN', 'SC'),
                   help='the plain network and its SC twin (default: resnet26_cifar scnet26_cifar)')
    p.add_argument('--channels', type=int, nargs=4, default=[16, 32, 64, 128], metavar='C',
                   help='widths of the four stages (default: 16 32 64 128)')
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--input-size', type=int, default=32)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--repeats', type=int, default=15)
    p.add_argument('--channels-last', action='store_true',
                   help='weights and inputs channels-last (as the embedded recipe trains)')
    p.add_argument('--no-memory', action='store_true', help='skip the peak-memory measurement')
    p.add_argument('--output', metavar='FILE', help='write the JSON report here')
    args = p.parse_args(argv)
    tune_cpu_allocator()  # as the scnet command does, so that figures match what it measures
    if min(args.channels) < 2 or any(c % 2 for c in args.channels):
        p.error('--channels must be even widths (SC-Conv splits each in two halves)')
    for name in args.models:
        try:
            validate_model_name(name)
        except UnknownModelError as e:
            p.error(str(e))
    torch.set_num_threads(args.threads)
    settings = Settings(mode='train', batch_size=args.batch_size, input_size=(args.input_size, args.input_size),
                        channels_last=args.channels_last)
    report = run_benchmark(contenders(args.channels, args.models), settings, warmup=args.warmup, repeats=args.repeats,
                           memory=not args.no_memory, rates=False)
    print(render(report, markdown=True))
    if args.output:
        write_json_atomic(report, args.output)
    return 0


if __name__ == '__main__':
    sys.exit(main())

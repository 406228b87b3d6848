"""How many images per second one DataLoader worker decodes and augments for training, per decoder.

    python benchmarks/input_pipeline.py                                  # 500x375 and 1024x768, workers 0 1 2
    python benchmarks/input_pipeline.py --data /imagenet/train --workers 0 4 8 --json pipeline.json
    python benchmarks/input_pipeline.py --readers folder shards          # image files against tar shards

Runs ``scnet.bench.pipeline.measure_pipeline`` over photo-like synthetic JPEGs (or the class folders of
``--data``) in ``--rounds`` rounds, rotating which decoder goes first in each, and reports the median of the
rounds: on a shared machine the speed drifts, and rounds expose every decoder to the same drift. The table
ends with the workers one GPU needs (``workers_needed``) at ``--gpu-images-per-s``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import PIL
import torch
import torchvision

from scnet.allocator import tune_cpu_allocator
from scnet.bench.machine import machine_facts
from scnet.bench.pipeline import measure_pipeline, workers_needed, write_photo_like_jpegs
from scnet.data.folders import available_decoders

#: ResNet-50 training on one A100 80GB with mixed precision: 2,470 images/s (NVIDIA DeepLearningExamples,
#: ResNet50 v1.5 for PyTorch, DALI loader). An H100 is faster; pass its measured rate.
A100_RESNET50_AMP = 2470.0


def _size(text: str):
    try:
        width, height = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected WIDTHxHEIGHT, e.g. 500x375, got {text!r}') from None
    return width, height


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data', type=Path, help='a folder of class folders (e.g. DATA/train) instead of '
                        'synthetic JPEGs')
    parser.add_argument('--source-size', type=_size, nargs='+', default=[(500, 375), (1024, 768)],
                        metavar='WxH', help='synthetic JPEG sizes (default: 500x375 1024x768)')
    parser.add_argument('--decoders', nargs='+', default=[d for d in ('pil', 'torchvision', 'torchcodec')
                                                         if d in available_decoders()],
                        help=f'decoders to compare (available here: {", ".join(available_decoders())})')
    parser.add_argument('--workers', type=int, nargs='+', default=[0, 1, 2],
                        help='DataLoader worker counts; 0 = in the main process (default: 0 1 2)')
    parser.add_argument('--images', type=int, default=256, help='images timed per setting (default 256)')
    parser.add_argument('--image-size', type=int, default=224, help='training crop size (default 224)')
    parser.add_argument('--rounds', type=int, default=3, help='rounds; the median is reported (default 3)')
    parser.add_argument('--gpu-images-per-s', type=float, default=A100_RESNET50_AMP,
                        help=f'training rate of the GPU to feed (default {A100_RESNET50_AMP:g}: ResNet-50, '
                             'A100, mixed precision)')
    parser.add_argument('--readers', nargs='+', choices=('folder', 'shards'), default=['folder'],
                        help='read the image files (folder) and/or the same images from WebDataset tar shards '
                             '(shards) (default: folder)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--json', type=Path, help='write the rows and the machine facts here')
    return parser


def _median_rows(rounds):
    """One row per (reader, decoder, workers): the median over rounds of each rate, the rest from the first
    round."""
    merged = {}
    for rows in rounds:
        for row in rows:
            merged.setdefault((row.get('reader', 'folder'), row['decoder'], row['workers']), []).append(row)
    out = []
    for same in merged.values():
        row = dict(same[0])
        for key in ('seconds', 'images_per_s', 'images_per_s_per_worker', 'decode_images_per_s'):
            row[key] = round(statistics.median(r[key] for r in same), 6 if key == 'seconds' else 1)
        row['rounds'] = len(same)
        out.append(row)
    return out


def _measure(root, source, args):
    rounds = []
    for r in range(args.rounds):
        shift = r % len(args.decoders)
        for decoder in args.decoders[shift:] + args.decoders[:shift]:
            rounds.append(measure_pipeline(root, decoders=(decoder,), image_size=args.image_size,
                                           images=args.images, workers=tuple(args.workers), seed=args.seed,
                                           source_size=source, readers=tuple(args.readers)))
    return sorted(_median_rows(rounds), key=lambda row: (args.readers.index(row['reader']),
                                                         args.decoders.index(row['decoder']), row['workers']))


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    tune_cpu_allocator()  # as the scnet command does, so that figures match what it measures
    unknown = [d for d in args.decoders if d not in available_decoders()]
    if unknown:
        print(f'error: decoder(s) not available here: {", ".join(unknown)} '
              f'(available: {", ".join(available_decoders())})', file=sys.stderr)
        return 2
    load_before = os.getloadavg()
    results = []
    if args.data is not None:
        results += _measure(args.data, None, args)
    else:
        for source in args.source_size:
            folder = Path(tempfile.mkdtemp(prefix='scnet-pipeline-'))
            try:
                write_photo_like_jpegs(folder, args.images, size=source, seed=args.seed)
                results += _measure(folder, source, args)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
    header = (f'{"source":>9} {"KiB":>5} {"reader":>7} {"decoder":>11} {"workers":>7} {"images/s":>9} '
              f'{"per worker":>10} {"decode only":>11} {"workers/GPU":>11}')
    print(f'decode + training transforms at {args.image_size} px, median of {args.rounds} round(s); '
          f'workers/GPU: to feed {args.gpu_images_per_s:g} images/s')
    print(header)
    for row in results:
        source = 'x'.join(str(v) for v in row['source_size'])
        need = workers_needed(args.gpu_images_per_s, row['images_per_s_per_worker'])
        print(f'{source:>9} {row["mean_file_kib"]:5.0f} {row["reader"]:>7} {row["decoder"]:>11} {row["workers"]:7d} '
              f'{row["images_per_s"]:9.0f} {row["images_per_s_per_worker"]:10.0f} '
              f'{row["decode_images_per_s"]:11.0f} {need:11d}')
    load_after = os.getloadavg()
    print(f'load average before / after: {load_before[0]:.2f} / {load_after[0]:.2f} on {os.cpu_count()} CPUs '
          '(other work on the machine lowers the rates)')
    if args.json is not None:
        report = {'rows': results, 'gpu_images_per_s': args.gpu_images_per_s, 'rounds': args.rounds,
                  'machine': {**machine_facts(), 'cpu_count': os.cpu_count(),
                              'versions': {'torch': torch.__version__, 'torchvision': torchvision.__version__,
                                           'pillow': PIL.__version__},
                              'load_average_before': load_before, 'load_average_after': load_after}}
        args.json.write_text(json.dumps(report, indent=2) + '\n')
        print(f'wrote {args.json}')
    return 0


if __name__ == '__main__':
    sys.exit(main())

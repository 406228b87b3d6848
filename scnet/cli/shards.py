"""``scnet shards``: an ImageNet-layout folder written as WebDataset tar shards for streamed training."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scnet.cli.arg_types import output_folder, seed
from scnet.cli.run_flags import add_quiet_flag


def add_parser(sub) -> None:
    p = sub.add_parser('shards', help='write an image folder as WebDataset tar shards',
                       description='Write SRC/train/<class>/* and SRC/val/<class>/* as tar shards in the WebDataset '
                                   'layout into OUT, with OUT/index.json (images per shard and per class) and '
                                   'OUT/classes.txt. Each shard appears only when complete; run the same command '
                                   'again to finish an interrupted one. Train on them with scnet train --data OUT '
                                   '(or a brace pattern of the shards, local or pipe:).')
    p.add_argument('src', metavar='SRC', help='ImageNet-layout folder with train/ and val/')
    p.add_argument('out', metavar='OUT', type=output_folder, help='output folder (new or empty, or the one an interrupted run left)')
    p.add_argument('--shard-size', default='1GB', help='bytes of images per shard: 1GB (default), 500MB, 64MiB...')
    p.add_argument('--shuffle', action='store_true',
                   help='write the images in a random order (recommended for training: a reader\'s shuffle '
                        'buffer cannot mix a shard that holds one class)')
    p.add_argument('--seed', type=seed, default=0, help='seed of --shuffle (default 0)')
    p.add_argument('--skip-bad-images', action='store_true',
                   help='leave images that do not decode out of the shards (listed in OUT/index.json) instead of '
                        'stopping; every image is decoded once before the shards are written')
    add_quiet_flag(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from scnet.data.shards import parse_size, write_shards

    index = write_shards(Path(args.src), Path(args.out), shard_size=parse_size(args.shard_size),
                         shuffle=args.shuffle, seed=args.seed, progress=not args.quiet,
                         skip_bad_images=args.skip_bad_images)
    parts = [f"{split}: {info['images']} images in {len(info['shards'])} shards"
             for split, info in index['splits'].items()]
    print(f"{'; '.join(parts)}; {len(index['classes'])} classes; index in {Path(args.out) / 'index.json'}")
    if len(index['classes']) == 1:  # a valid set (evaluation, features), but `scnet train` would refuse it later
        print(f"note: one class ({index['classes'][0]}): `scnet train` needs at least 2 classes to learn to tell "
              'apart; add class folders to the source and run this command again for a training set', file=sys.stderr)
    return 0

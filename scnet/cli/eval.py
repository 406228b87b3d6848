"""``scnet eval``: single-crop top-1 / top-5 of a checkpoint on a folder of images."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scnet.cli.arg_types import add_model_kwargs_flag, positive_int
from scnet.cli.formatting import render_table
from scnet.cli.run_flags import add_eval_flags, add_quiet_flag, add_report_flags, write_report


def add_parser(sub) -> None:
    p = sub.add_parser('eval', help='top-1 / top-5 of a checkpoint on an image folder',
                       description='Evaluate a checkpoint (ours or the authors\') on DIR/val/<class>/* or '
                                   'DIR/<class>/*: resize, centre crop, single-crop top-1 and top-5.')
    p.add_argument('--model', help='zoo model name the checkpoint belongs to (default: the one a checkpoint of '
                                   'scnet train records; required for other files)')
    p.add_argument('--checkpoint', required=True, help='model.safetensors, last.pt, or an authors\' .pth')
    p.add_argument('--data', required=True,
                   help='image folder (DIR/val/<class>/* or DIR/<class>/*), or the validation split of shards '
                        '(a folder of scnet shards, a brace pattern, pipe:...) or of a Hugging Face dataset')
    add_report_flags(p)
    add_eval_flags(p, batch_size=64, batch_help='images per batch', workers=4)
    p.add_argument('--image-size', type=positive_int, help='crop size (default: the checkpoint\'s, else 224)')
    p.add_argument('--resize', type=positive_int,
                   help='short side before the crop (default: the checkpoint\'s, else 256; scaled with a '
                        'changed --image-size: 37 for 32 where the checkpoint has 256 for 224)')
    p.add_argument('--skip-bad-images', action='store_true', help='skip unreadable images instead of stopping')
    add_model_kwargs_flag(p)
    add_quiet_flag(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from scnet.train.checkpoint_eval import evaluate_checkpoint

    result = evaluate_checkpoint(args.model, Path(args.checkpoint), Path(args.data), batch_size=args.batch_size,
                                 workers=args.workers, device=args.device, image_size=args.image_size,
                                 eval_resize=args.resize, skip_bad_images=args.skip_bad_images,
                                 progress=not args.quiet, model_kwargs=args.model_kwargs)
    # printed first: a --output that cannot be written then loses no evaluation
    if args.format == 'json':
        print(json.dumps(result, indent=2), flush=True)
    else:
        print(render_table(['model', 'images', 'top-1 (%)', 'top-5 (%)', 'loss'],
                           [[result['model'], result['images'], f"{result['top1']:.2f}", f"{result['top5']:.2f}",
                             f"{result['loss']:.4f}"]]))
        if result['skipped_images']:
            print(f"skipped {result['skipped_images']} unreadable images")
        sys.stdout.flush()
    if args.output:
        write_report(Path(args.output), result)
    return 0

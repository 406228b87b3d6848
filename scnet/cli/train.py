"""``scnet train``: train a zoo model with a recipe, on one CPU or, under torchrun, on many processes."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from scnet.cli.run_flags import add_quiet_flag, add_run_flags, run_config

_EPILOG = """\
recipes: --config takes a YAML file or the name of a shipped recipe (scnet/recipes/: one per row of the
paper's Tables 1-3, e.g. scnet50, scnet50_r2, scnet50_300ep). Flags override the recipe. Without --data the
run uses the embedded dataset (built on first use) and the 'embedded' recipe; with --data and no --config,
the paper's ImageNet recipe (imagenet_100ep). --lr left out: 0.1 x batch / 256.

many processes: torchrun --nproc_per_node=K -m scnet train ...  (NCCL on GPUs, gloo on CPUs); --batch-size
is the global batch, split evenly over processes and accumulation steps.

output: DIR/metrics.jsonl (a line per epoch), DIR/tensorboard/, DIR/last.pt (full state, every epoch, written
atomically), DIR/model.safetensors (final weights). --resume continues DIR/last.pt with DIR's settings."""


def add_parser(sub) -> None:
    p = sub.add_parser('train', help='train a classifier with the paper\'s recipe',
                       description='Train a model of the zoo on an ImageNet-layout folder (train/ and val/, one '
                                   'folder per class), or on the embedded dataset.',
                       epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', help='zoo model name (see `scnet models`)')
    p.add_argument('--data', help='dataset folder with train/ and val/ (default: the embedded dataset)')
    p.add_argument('--config', help='recipe: a YAML file or a shipped recipe name')
    p.add_argument('--epochs', type=int, help='number of epochs')
    p.add_argument('--batch-size', type=int, help='global batch size')
    p.add_argument('--lr', type=float, help='peak learning rate (default: 0.1 x batch / 256)')
    add_run_flags(p, output_default='runs/<model>-<date>-<time>',
                  seed_help='initial weights, data order, augmentation')
    p.add_argument('--amp', action='store_true', default=None,
                   help='mixed precision (bfloat16 autocast on CPU, float16 on CUDA)')
    p.add_argument('--channels-last', action='store_true', default=None, help='channels_last memory format')
    p.add_argument('--compile', action='store_true', default=None, help='torch.compile the model')
    p.add_argument('--aux-weight', type=float, help='weight of the side classifier loss after res3 (Fig. 5); 0: off')
    p.add_argument('--accum-steps', type=int, help='gradient accumulation steps per optimiser step')
    p.add_argument('--image-size', type=int, help='training and evaluation crop size')
    p.add_argument('--skip-bad-images', action='store_true', default=None,
                   help='skip unreadable images (counted in the log) instead of stopping')
    add_quiet_flag(p, bars=True)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from scnet.models.factory import validate_model_name
    from scnet.train.estimate import format_seconds
    from scnet.train.recipe import load_recipe
    from scnet.train.trainer import train

    overrides = dict(model=args.model, data=args.data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                     seed=args.seed, workers=args.workers, device=args.device, amp=args.amp,
                     channels_last=args.channels_last, compile=args.compile, aux_weight=args.aux_weight,
                     accum_steps=args.accum_steps, image_size=args.image_size,
                     skip_bad_images=args.skip_bad_images)
    config = run_config(args, default='embedded' if args.data is None else 'imagenet_100ep')
    recipe = load_recipe(config, **overrides)
    validate_model_name(recipe.model)
    output = Path(args.output or f'runs/{recipe.model}-{time.strftime("%Y%m%d-%H%M%S")}')
    start = time.perf_counter()
    last = train(recipe, output, resume=args.resume, progress=not args.quiet)
    if last:
        print(f"done in {format_seconds(time.perf_counter() - start)}: val top-1 {last['val_top1']:.2f}%, "
              f"top-5 {last['val_top5']:.2f}%; weights in {output / 'model.safetensors'}, curves: scnet plot {output}")
    return 0

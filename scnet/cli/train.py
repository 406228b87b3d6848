"""``scnet train``: train a zoo model with a recipe, on one CPU or, under torchrun, on many processes."""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from scnet.cli.arg_types import non_negative_float, non_negative_int, positive_float, positive_int, unit_float
from scnet.cli.recipe_flags import recipe_overrides
from scnet.cli.run_flags import add_quiet_flag, add_run_flags, check_run_config, run_config

_EPILOG = """\
recipes: --config takes a YAML file or the name of a shipped recipe (scnet/recipes/: one per row of the
paper's Tables 1-3, e.g. scnet50, scnet50_r2, scnet50_300ep). Flags override the recipe. Without --data the
run uses the embedded dataset (built on first use) and the 'embedded' recipe; with --data and no --config,
the paper's ImageNet recipe (imagenet_100ep), or with --pretrained / --init the 'finetune' recipe. --lr left
out: the recipe's base_lr (0.1 for the paper) x batch / 256. Modern recipes: rsb_a3_resnet50, rsb_a3_scnet50.

fine-tuning: --pretrained (the authors' weights for scnet50, scnet50_v1d, scnet101; timm's for the baselines;
$SCNET_WEIGHTS_MIRROR replaces the download host) or --init CHECKPOINT (model.safetensors, last.pt or the
authors' .pth). Another class count than the checkpoint's gets a new classifier. Their origin and sha256 are
recorded in DIR/config.json and in model.safetensors' metadata.

many processes: torchrun --nproc_per_node=K -m scnet train ...  (NCCL on GPUs, gloo on CPUs); --batch-size
is the global batch, split evenly over processes and accumulation steps.

output: DIR/metrics.jsonl (a line per epoch), DIR/tensorboard/, DIR/last.pt (full state, every epoch, written
atomically), DIR/model.safetensors (final weights), DIR/model_ema.safetensors (with --ema-decay). One run per
DIR at a time (DIR/run.lock names the process holding it).

resume: --resume continues DIR/last.pt with DIR's settings (DIR/config.json); flags given now change them:
--epochs N extends the run (the schedule is rebuilt for N epochs and continues at the step reached), --lr,
--weight-decay and the other optimiser settings apply from the next step. A --config given with --resume may
only repeat the run's settings (a setting it changes is refused: give the change as a flag). Refused, as the
run cannot keep them: another --model, model_kwargs, --optimizer, --batch-size, --aux-weight or --ema-decay on
or off, fewer --epochs than done, and data elsewhere than the run's (its absolute path is recorded; the same
images moved: add --data-moved).

preemption: --checkpoint-every N also saves DIR/last.pt every N optimiser steps; SIGTERM saves it at the next
step and exits with status 143; --resume continues mid-epoch, ending with the weights of an uninterrupted run.
Under torchrun --max-restarts K, restarted workers resume from DIR/last.pt by themselves."""


def add_parser(sub) -> None:
    p = sub.add_parser('train', help='train a classifier with the paper\'s recipe',
                       description='Train a model of the zoo on an ImageNet-layout folder (train/ and val/, one '
                                   'folder per class), or on the embedded dataset.',
                       epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', help='zoo model name (see `scnet models`)')
    p.add_argument('--data', help='dataset folder with train/ and val/; or WebDataset shards: a folder that scnet '
                                  'shards wrote, or a brace pattern of them (DIR/train-{000000..000099}.tar, '
                                  'pipe:curl -s URL/train-{...}.tar); or a Hugging Face dataset saved to disk or '
                                  'as parquet (PATH, or PATH#image=COL,label=COL) (default: the embedded dataset)')
    p.add_argument('--config', help='recipe: a YAML file or a shipped recipe name')
    p.add_argument('--epochs', type=positive_int, help='number of epochs')
    p.add_argument('--batch-size', type=positive_int, help='global batch size')
    p.add_argument('--lr', type=positive_float,
                   help="peak learning rate (default: the recipe's base_lr x batch / 256; the paper's: 0.1 x batch / 256)")
    add_run_flags(p, output_default='runs/<model>-<date>-<time>',
                  seed_help='initial weights, data order, augmentation')
    p.add_argument('--amp', action='store_true', default=None,
                   help='mixed precision (bfloat16 autocast on CPU, float16 on CUDA)')
    p.add_argument('--channels-last', action='store_true', default=None, help='channels_last memory format')
    p.add_argument('--compile', action='store_true', default=None, help='torch.compile the model')
    p.add_argument('--aux-weight', type=non_negative_float, help='weight of the side classifier loss after res3 (Fig. 5); 0: off')
    p.add_argument('--accum-steps', type=positive_int, help='gradient accumulation steps per optimiser step')
    p.add_argument('--image-size', type=positive_int,
                   help='training crop size, and the evaluation one unless --eval-image-size or the recipe sets it')
    p.add_argument('--skip-bad-images', action='store_true', default=None,
                   help='skip unreadable images (counted in the log) instead of stopping')
    p.add_argument('--data-moved', action='store_true',
                   help='with --resume: the run\'s images are now at --data (checked: the same classes)')
    p.add_argument('--checkpoint-every', type=non_negative_int, metavar='N',
                   help='also save DIR/last.pt every N optimiser steps (a preempted run loses at most N steps; '
                        'default: after each epoch only)')
    g = p.add_argument_group('fine-tuning')
    start = g.add_mutually_exclusive_group()
    start.add_argument('--pretrained', action='store_true', default=None,
                       help="start from the authors' ImageNet weights (timm's for the baselines)")
    start.add_argument('--init', metavar='CHECKPOINT',
                       help="start from a checkpoint: model.safetensors, last.pt or the authors' .pth")
    g = p.add_argument_group('modern options (timm)')
    g.add_argument('--optimizer', choices=('sgd', 'adamw', 'lamb'), help='optimiser (default: the recipe\'s, sgd)')
    g.add_argument('--weight-decay', type=non_negative_float, help='weight decay')
    g.add_argument('--no-decay-norm-and-bias', dest='decay_norm_and_bias', action='store_false', default=None,
                   help='no weight decay on norm weights and biases')
    g.add_argument('--schedule', choices=('step', 'cosine'), help='lr schedule')
    g.add_argument('--warmup-epochs', type=non_negative_float, help='linear lr warm-up, in epochs (fractions allowed)')
    g.add_argument('--label-smoothing', type=unit_float, help='label smoothing (the paper: 0.1)')
    g.add_argument('--loss', choices=('ce', 'bce'), help='cross-entropy or binary cross-entropy')
    g.add_argument('--bce-target-thresh', type=unit_float, help='bce: soft targets above it become 1')
    g.add_argument('--auto-augment', metavar='POLICY',
                   help='timm policy: rand-m9-mstd0.5-inc1 (RandAugment), original (AutoAugment), '
                        'augmix-m5-w4-d2; or trivial (TrivialAugment)')
    g.add_argument('--reprob', type=unit_float, help='random erasing probability')
    g.add_argument('--mixup', type=non_negative_float, help='mixup alpha (0: off)')
    g.add_argument('--cutmix', type=non_negative_float, help='cutmix alpha (0: off)')
    g.add_argument('--ema-decay', type=unit_float,
                   help='keep an EMA of the weights with this decay (e.g. 0.9998), evaluated each epoch')
    g.add_argument('--drop-path', dest='drop_path_rate', type=unit_float, help='stochastic depth rate')
    g.add_argument('--grad-clip', type=positive_float, metavar='NORM',
                   help="clip the gradients' global L2 norm to NORM before each optimiser step (default: no clipping)")
    g.add_argument('--eval-image-size', type=positive_int,
                   help='evaluation crop size (default: --image-size; RSB trains at 160 and tests at 224)')
    g.add_argument('--eval-resize', type=positive_int,
                   help='evaluation: resize the short side to this, then centre-crop (default: the recipe\'s, '
                        'scaled with a changed crop size: 256 for 224, 37 for 32)')
    add_quiet_flag(p, bars=True)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from scnet.models.factory import validate_model_name
    from scnet.train.estimate import format_seconds
    from scnet.train.recipe import Recipe, load_recipe, load_resumed_recipe
    from scnet.train.trainer import FIXED_ON_RESUME, train

    overrides = recipe_overrides(args, Recipe)   # every flag named as its recipe setting
    check_run_config(args, overrides, FIXED_ON_RESUME)
    fine_tuning = args.pretrained or args.init
    config = run_config(args, default='embedded' if args.data is None else
                        'finetune' if fine_tuning else 'imagenet_100ep')
    saved = Path(args.output) / 'config.json' if args.resume else None
    # on --resume the run's own settings are the base; a --config given too may only repeat them
    recipe = (load_resumed_recipe(saved, args.config, **overrides) if saved is not None and saved.is_file()
              else load_recipe(config, **overrides))
    validate_model_name(recipe.model)
    output = Path(args.output or f'runs/{recipe.model}-{time.strftime("%Y%m%d-%H%M%S")}')
    start = time.perf_counter()
    last = train(recipe, output, resume=args.resume, progress=not args.quiet, data_moved=args.data_moved)
    if last and os.environ.get('RANK', '0') == '0':  # under torchrun: one summary, not one per process
        print(f"done in {format_seconds(time.perf_counter() - start)}: val top-1 {last['val_top1']:.2f}%, "
              f"top-5 {last['val_top5']:.2f}%; weights in {output / 'model.safetensors'}, curves: scnet plot {output}")
    return 0

"""``scnet detect``: Faster / Mask R-CNN with a zoo backbone on COCO-format data (train, eval, predict, shapes)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from scnet.cli.arg_types import output_folder, positive_int, report_file, seed, unit_float
from scnet.cli.formatting import render_table
from scnet.cli.recipe_flags import add_recipe_flags, recipe_overrides
from scnet.cli.run_flags import (add_device_flag, add_eval_flags, add_quiet_flag, add_report_flags, add_run_flags,
                                 check_outputs_are_not_inputs, check_run_config, print_report,
                                 run_config)

_TRAIN_EPILOG = """\
recipes: --config takes a YAML file or a shipped detection recipe (scnet/recipes/detection/): faster_rcnn_2x
and mask_rcnn_2x are the paper's setting (short side 800, batch 16 with lr 0.02, momentum 0.9, weight decay
1e-4, 24 epochs with lr / 10 after epochs 16 and 22, warm-up); shapes is a CPU-sized recipe for the rendered
shapes of `scnet detect shapes`. Without --config: faster_rcnn_2x for --task bbox, mask_rcnn_2x for segm.
Flags override the recipe; --epochs N moves the lr decay points to the same fractions of N; --lr left out:
0.02 x batch / 16.

backbone weights: --backbone-checkpoint takes a classification model.safetensors of `scnet train`, an
authors' checkpoint (their layout, detected), or 'pretrained' (the authors' / timm's ImageNet weights,
downloaded once). With weights, batch norm is frozen and the stem + stage 1 are not trained; without, the
backbone is trained from scratch (all stages, batch norm learning).

many processes: torchrun --nproc_per_node=K -m scnet detect train ...  (NCCL on GPUs, gloo on CPUs);
--batch-size is the global batch; every validation image is evaluated once.

output: DIR/metrics.jsonl (a line per epoch: lr, losses, bbox_AP ... bbox_APl, segm_AP ... segm_APl),
DIR/tensorboard/, DIR/last.pt (every epoch, written atomically), DIR/model.safetensors (final weights, with
the task, backbone, categories and image sizes in its metadata). --resume continues DIR/last.pt with DIR's
settings (DIR/config.json): flags given now change them; a --config given too may only repeat them.
Under torchrun --max-restarts K, restarted workers resume from DIR/last.pt by themselves."""


def add_parser(sub) -> None:
    from scnet.tasks.detection.recipe import DetectionRecipe

    p = sub.add_parser('detect', help='object detection / instance segmentation with a zoo backbone',
                       description='Faster R-CNN and Mask R-CNN (torchvision) on an FPN over any zoo model, '
                                   'trained and evaluated on COCO-format data with COCO metrics.')
    actions = p.add_subparsers(dest='action', required=True, metavar='ACTION')

    t = actions.add_parser('train', help='train a detector (Faster / Mask R-CNN) on COCO-format data',
                           description='Train Faster R-CNN (--task bbox) or Mask R-CNN (--task segm) with a zoo '
                                       'backbone, evaluating with COCO metrics after each epoch.',
                           epilog=_TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_recipe_flags(t, DetectionRecipe, ('task', 'backbone', 'backbone_checkpoint', 'train_ann', 'train_images',
                                          'val_ann', 'val_images'))
    t.add_argument('--config', help='recipe: a YAML file or a shipped detection recipe name')
    add_recipe_flags(t, DetectionRecipe, ('epochs', 'batch_size', 'lr'))
    t.add_argument('--image-size', type=positive_int,
                   help="short side of the images (the long-side limit scales with it; default: the recipe's)")
    add_run_flags(t, output_default='runs/<task>-<backbone>-<date>-<time>',
                  seed_help='initial heads, data order, flips')
    add_quiet_flag(t, bars=True)
    t.set_defaults(run=run_train)

    e = actions.add_parser('eval', help='COCO metrics of a detection checkpoint',
                           description='Evaluate a checkpoint of `scnet detect train` (model.safetensors or '
                                       'last.pt) on COCO-format data with pycocotools: AP, AP50, AP75, APs, APm, '
                                       'APl (percent) for boxes and, for Mask R-CNN, masks.')
    e.add_argument('--checkpoint', required=True,
                   help='model.safetensors or last.pt of scnet detect train (or the run folder)')
    e.add_argument('--val-ann', required=True, help='COCO annotation JSON')
    e.add_argument('--val-images', required=True, help='folder of its images')
    add_report_flags(e)
    add_eval_flags(e, batch_size=2, batch_help='images per forward pass', workers=2)
    e.add_argument('--image-size', type=positive_int, help="short side (default: the checkpoint's)")
    e.add_argument('--results', type=report_file, help='also write the detections, in COCO results format '
                                                       '(boxes, RLE masks), to this file (what scnet pose eval '
                                                       '--boxes takes)')
    add_quiet_flag(e)
    e.set_defaults(run=run_eval)

    pr = actions.add_parser('predict', help='draw detections on your own images (PNG)',
                            description='Run a detection checkpoint on image files or folders and write each '
                                        'image with its boxes, labels, scores (and masks) drawn as OUTPUT/<name>.png, '
                                        'plus OUTPUT/predictions.json.')
    pr.add_argument('--checkpoint', required=True, help='model.safetensors or last.pt of scnet detect train')
    pr.add_argument('--images', required=True, nargs='+', help='image files and/or folders of images')
    pr.add_argument('--output', required=True, type=output_folder, help='folder for the PNGs and predictions.json')
    pr.add_argument('--score-threshold', type=unit_float, default=0.5, help='draw detections scoring at least this (0.5)')
    add_device_flag(pr)
    pr.add_argument('--image-size', type=positive_int, help="short side (default: the checkpoint's)")
    add_quiet_flag(pr)
    pr.set_defaults(run=run_predict)

    s = actions.add_parser('shapes', help='write a small COCO-format set of rendered shapes',
                           description='Render squares, discs and triangles on noise, with COCO JSON (boxes, '
                                       'polygon masks, areas): DIR/instances_{train,val}.json, DIR/{train,val}/.')
    s.add_argument('output', type=output_folder, help='folder to write')
    s.add_argument('--num-train', type=positive_int, default=64, help='training images (64)')
    s.add_argument('--num-val', type=positive_int, default=16, help='validation images (16)')
    s.add_argument('--image-size', type=positive_int, default=128, help='image side in pixels (128)')
    s.add_argument('--seed', type=seed, default=0, help='random seed (0)')
    s.set_defaults(run=run_shapes)


def run_train(args: argparse.Namespace) -> int:
    from scnet.tasks.detection import DetectionRecipe, load_detection_recipe, train_detector
    from scnet.tasks.detection.recipe import check_resumed_detection_config

    overrides = recipe_overrides(args, DetectionRecipe)
    check_run_config(args, overrides, ('task', 'backbone', 'batch_size', 'seed'))
    default = 'mask_rcnn_2x' if args.task == 'segm' else 'faster_rcnn_2x'
    if args.image_size:  # the short side, the long side's limit kept in the recipe's proportion: as flags, so
        # that a --config given on --resume is read with them (the command that started the run resumes it)
        saved = Path(args.output) / 'config.json' if args.resume and args.output else None
        shape = load_detection_recipe(args.config or (str(saved) if saved and saved.is_file() else default),
                                      **overrides)
        overrides['max_size'] = max(args.image_size, round(args.image_size * shape.max_size / shape.min_size))
        overrides['min_size'] = args.image_size
    config = run_config(args, default=default, check_repeats=check_resumed_detection_config, overrides=overrides)
    recipe = load_detection_recipe(config, **overrides)
    output = Path(args.output or f'runs/{recipe.task}-{recipe.backbone}-{time.strftime("%Y%m%d-%H%M%S")}')
    last = train_detector(recipe, output, resume=args.resume, progress=not args.quiet)
    if last:
        scores = '  '.join(f"{kind} AP {last[f'{kind}_AP']:.1f}" for kind in ('bbox', 'segm') if f'{kind}_AP' in last)
        print(f"done: {scores}; weights in {output / 'model.safetensors'}; "
              f"scnet detect eval --checkpoint {output / 'model.safetensors'} --val-ann ... --val-images ...")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from scnet.tasks.detection import evaluate_checkpoint

    check_outputs_are_not_inputs(args, {'results': '--results', 'output': '--output'}, {'val_ann': '--val-ann'})
    result = evaluate_checkpoint(Path(args.checkpoint), Path(args.val_ann), Path(args.val_images),
                                 batch_size=args.batch_size, workers=args.workers, device=args.device,
                                 image_size=args.image_size, progress=not args.quiet, results_file=args.results)
    return print_report(args, result, _table)


def _table(result) -> str:
    from scnet.tasks.detection import METRICS

    metrics = result['metrics']
    rows = [[kind, *(f"{metrics[f'{kind}_{m}']:.1f}" for m in METRICS)] for kind in ('bbox', 'segm')
            if f'{kind}_AP' in metrics]
    return (f"{result['task']} checkpoint of {result['backbone']}, {result['images']} images, short side "
            f"{result['settings']['min_size']} (AP in percent; -1: no object of that size)\n"
            + render_table(['', *METRICS], rows))


def run_predict(args: argparse.Namespace) -> int:
    from scnet.tasks.detection import predict

    summary = predict(Path(args.checkpoint), [Path(p) for p in args.images], Path(args.output),
                      score_threshold=args.score_threshold, device=args.device, image_size=args.image_size,
                      progress=not args.quiet)
    total = sum(len(s['detections']) for s in summary)
    print(f"{len(summary)} image(s), {total} detection(s) at score >= {args.score_threshold}: "
          f"{Path(args.output)}/*.png, {Path(args.output) / 'predictions.json'}")
    return 0


def run_shapes(args: argparse.Namespace) -> int:
    from scnet.errors import ScnetError
    from scnet.tasks.synthetic import dataset_files_held, make_shapes_coco

    root = Path(args.output)
    held = dataset_files_held(root, ['instances_train.json', 'instances_val.json'])
    if held:
        raise ScnetError(f'{root} already holds a data set ({", ".join(held)}); choose another output folder')
    try:
        paths = make_shapes_coco(args.output, num_train=args.num_train, num_val=args.num_val,
                                 image_size=args.image_size, seed=args.seed)
    except ValueError as e:
        raise ScnetError(str(e)) from None
    print(f'wrote {args.num_train} + {args.num_val} images of shapes to {paths.root}; train on them with:')
    print('  scnet detect train --config shapes --task bbox ' + ' '.join(paths.cli_args())
          + ' --output runs/shapes')
    return 0

"""``scnet pose train | eval | predict``: top-down keypoints with a zoo backbone (simple baselines, Table 5)."""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from scnet.cli.arg_types import output_folder, positive_int, report_file, seed, unit_float
from scnet.cli.formatting import render_table
from scnet.cli.recipe_flags import add_recipe_flags, recipe_overrides
from scnet.cli.run_flags import (add_device_flag, add_eval_flags, add_quiet_flag, add_report_flags, add_run_flags,
                                 check_outputs_are_not_inputs, check_run_config, print_report,
                                 run_config)

_TRAIN_EPILOG = """\
recipe: --config takes a YAML file or a shipped name (scnet/recipes/pose/): simple_baselines_256x192 and
simple_baselines_384x288 (the paper's: Adam lr 1e-3, 140 epochs, lr x0.1 at 90 and 120, global batch 128 =
32 per GPU x 4, flip / scale / rotation / half-body augmentation, sigma 2, flip test, ImageNet-pretrained
backbone), or people (the synthetic set on a CPU). Without --config: the paper's settings with a randomly
initialised backbone (--pretrained or --backbone-checkpoint for ImageNet weights). Flags override the recipe;
--epochs rescales the lr steps (90 and 120 of 140 become 9 and 12 of 14).

many processes: torchrun --nproc_per_node=K -m scnet pose train ... (NCCL on GPUs, gloo on CPUs);
--batch-size is the global batch. Every validation crop is evaluated once.

output: DIR/metrics.jsonl (epoch, lr, train_loss, kpt_AP, kpt_AP50, kpt_AP75, kpt_APm, kpt_APl, kpt_AR..., in
percent; -1 where no person of that size exists), DIR/tensorboard/, DIR/last.pt (every epoch, atomically), DIR/model.safetensors (final weights with
what eval and predict need), DIR/keypoints_val.json. --resume continues DIR/last.pt with DIR's settings
(DIR/config.json): flags given now change them; a --config given too may only repeat them.
Under torchrun --max-restarts K, restarted workers resume from DIR/last.pt by themselves."""


def add_parser(sub) -> None:
    from scnet.tasks.pose.recipe import PoseRecipe

    pose = sub.add_parser('pose', help='top-down human keypoints (simple baselines) with a zoo backbone',
                          description='Train, evaluate (COCO OKS AP) and run a top-down keypoint network: a zoo '
                                      'backbone, three 4x4 deconvolutions, one heatmap per keypoint (Table 5).')
    actions = pose.add_subparsers(dest='pose_command', required=True, metavar='ACTION')

    t = actions.add_parser('train', help='train on a COCO-format keypoint data set',
                           description='Train the simple-baselines pose network over a zoo backbone on COCO-format '
                                       'keypoint annotations; evaluates OKS AP on the validation set every epoch.',
                           epilog=_TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument('--config', help='recipe: a YAML file or a shipped pose recipe name')
    add_recipe_flags(t, PoseRecipe, ('backbone', 'backbone_checkpoint', 'pretrained', 'train_ann', 'train_images',
                                     'val_ann', 'val_images', 'val_boxes', 'box_score_thresh', 'epochs',
                                     'batch_size', 'lr', 'image_size'))
    add_run_flags(t, output_default='runs/pose-<backbone>-<date>-<time>', seed_help='weights, data order, augmentation')
    add_recipe_flags(t, PoseRecipe, ('amp', 'eval_every', 'flip_test'))
    add_quiet_flag(t, bars=True)
    t.set_defaults(run=run_train)

    e = actions.add_parser('eval', help='COCO OKS AP of a checkpoint',
                           description='Keypoint AP, AP50, AP75, APm, APl (and AR) of a `scnet pose train` checkpoint '
                                       'on a COCO-format annotation file, through pycocotools (OKS), in percent '
                                       '(-1 where the data has no person of that size range).')
    e.add_argument('--checkpoint', required=True, help='model.safetensors or last.pt of `scnet pose train` '
                                                       '(or its run folder)')
    add_recipe_flags(e, PoseRecipe, ('val_ann', 'val_images'), required=True)
    add_recipe_flags(e, PoseRecipe, ('val_boxes', 'box_score_thresh'))
    add_report_flags(e, what='metrics')
    e.add_argument('--results', type=report_file, help='write the people found, in COCO keypoint results format, to this file')
    e.add_argument('--no-flip-test', dest='flip_test', action='store_false', help='no flip test')
    add_eval_flags(e, batch_size=32, batch_help='crops per batch', workers=2)
    add_quiet_flag(e)
    e.set_defaults(run=run_eval)

    p = actions.add_parser('predict', help='draw keypoints on your images',
                           description='Find the keypoints of each person and draw them with the skeleton; one PNG '
                                       'per image and keypoints.json in --output. People: the boxes of --boxes, or '
                                       'each whole image as one person.')
    p.add_argument('--checkpoint', required=True, help='model.safetensors or last.pt of `scnet pose train`')
    p.add_argument('--images', required=True, nargs='+', help='image files and/or folders')
    p.add_argument('--output', required=True, type=output_folder, help='folder for the PNGs and keypoints.json')
    p.add_argument('--boxes', help='person boxes: {"image.jpg": [[x, y, w, h(, score)], ...]}, '
                                   '[{"file_name", "bbox", "score"}, ...] or the predictions.json of scnet detect '
                                   'predict (its person detections); default: the whole image')
    p.add_argument('--box-score-thresh', type=unit_float, default=0.0, help='skip boxes scoring below this')
    p.add_argument('--kpt-thresh', type=unit_float, default=0.2, help='draw keypoints scoring above this (default 0.2)')
    p.add_argument('--no-flip-test', dest='flip_test', action='store_false', help='no flip test')
    add_device_flag(p)
    p.set_defaults(run=run_predict)

    s = actions.add_parser('synth', help='write the synthetic people data set (stick figures, COCO format)',
                           description='Render stick figures with COCO\'s 17 keypoints on noisy backgrounds: '
                                       'DIR/train/, DIR/val/, DIR/person_keypoints_{train,val}.json and '
                                       'DIR/detections_val.json (jittered boxes with scores, for --boxes). The same '
                                       'seed writes the same files.')
    where = s.add_mutually_exclusive_group(required=True)  # positional as in `scnet detect shapes DIR`; --output too
    where.add_argument('output', nargs='?', type=output_folder, help='folder to write (must not hold a data set yet)')
    where.add_argument('--output', dest='output_flag', type=output_folder, metavar='OUTPUT',
                       help='the same folder, given as a flag')
    s.add_argument('--num-train', type=positive_int, default=200, help='training images (default 200)')
    s.add_argument('--num-val', type=positive_int, default=50, help='validation images (default 50)')
    s.add_argument('--image-size', type=positive_int, default=256, help='image side in pixels (default 256)')
    s.add_argument('--seed', type=seed, default=0, help='random seed (default 0)')
    s.set_defaults(run=run_synth)


def run_train(args: argparse.Namespace) -> int:
    from scnet.tasks.pose import PoseRecipe, load_pose_recipe, train_pose
    from scnet.tasks.pose.recipe import check_resumed_pose_config

    overrides = recipe_overrides(args, PoseRecipe)
    check_run_config(args, overrides, ('backbone', 'image_size', 'batch_size', 'seed'))
    recipe = load_pose_recipe(run_config(args, check_repeats=check_resumed_pose_config, overrides=overrides),
                              **overrides)
    output = Path(args.output or f'runs/pose-{recipe.backbone}-{time.strftime("%Y%m%d-%H%M%S")}')
    last = train_pose(recipe, output, resume=args.resume, progress=not args.quiet)
    if last and 'kpt_AP' in last and os.environ.get('RANK', '0') == '0':
        print(f"done: keypoint AP {last['kpt_AP']:.2f} (AP50 {last['kpt_AP50']:.2f}, AP75 {last['kpt_AP75']:.2f}); "
              f"weights in {output / 'model.safetensors'}")
    return 0


def _fmt(value) -> str:
    return '-' if value is None or value < 0 else f'{value:.2f}'


def run_eval(args: argparse.Namespace) -> int:
    from scnet.tasks.pose import evaluate_pose_checkpoint

    check_outputs_are_not_inputs(args, {'results': '--results', 'output': '--output'},
                                 {'val_ann': '--val-ann', 'val_boxes': '--boxes'})
    result = evaluate_pose_checkpoint(Path(args.checkpoint), Path(args.val_ann), Path(args.val_images),
                                      boxes=Path(args.val_boxes) if args.val_boxes else None,
                                      box_score_thresh=args.box_score_thresh or 0.0, flip_test=args.flip_test,
                                      batch_size=args.batch_size, workers=args.workers, device=args.device,
                                      progress=not args.quiet, results_file=args.results)
    return print_report(args, result, _table)


def _table(result) -> str:
    from scnet.tasks.pose import METRICS

    boxes = result['settings']['boxes']
    boxes = 'GT' if boxes == 'ground truth' else Path(boxes).name
    return render_table(['backbone', 'boxes', 'crops', *(m.replace('kpt_', '') for m in METRICS)],
                        [[result['backbone'], boxes, result['counts']['crops'],
                          *(_fmt(result['metrics'][m]) for m in METRICS)]])


def run_predict(args: argparse.Namespace) -> int:
    from scnet.tasks.pose import predict_pose

    written = predict_pose(Path(args.checkpoint), args.images, Path(args.output),
                           boxes=Path(args.boxes) if args.boxes else None, kpt_thresh=args.kpt_thresh,
                           box_score_thresh=args.box_score_thresh, flip_test=args.flip_test, device=args.device)
    print(f'{len(written)} image(s) drawn in {args.output} (keypoints in {Path(args.output) / "keypoints.json"})')
    return 0


def run_synth(args: argparse.Namespace) -> int:
    from scnet.tasks.pose import PoseError
    from scnet.tasks.synthetic import dataset_files_held
    from scnet.tasks.synthetic_pose import make_detections, make_people_coco

    root = Path(args.output or args.output_flag)
    held = dataset_files_held(root, [f'person_keypoints_{split}.json' for split in ('train', 'val')])
    if held:
        raise PoseError(f'{root} already holds a data set ({", ".join(held)}); choose another output folder')
    if args.num_train < 1 or args.num_val < 1:
        raise PoseError('--num-train and --num-val must be at least 1')
    if args.image_size < 32:   # (make_people_coco's ValueError, as one line)
        raise PoseError(f'--image-size {args.image_size} is too small for the figures: pass 32 or more')
    paths = make_people_coco(root, num_train=args.num_train, num_val=args.num_val, image_size=args.image_size,
                             seed=args.seed)
    dets = make_detections(paths['val_ann'], root / 'detections_val.json', seed=args.seed)
    print(f"wrote {args.num_train} training and {args.num_val} validation images under {root}:\n"
          f"  --train-ann {paths['train_ann']} --train-images {paths['train_images']}\n"
          f"  --val-ann {paths['val_ann']} --val-images {paths['val_images']}\n  --boxes {dets}")
    return 0

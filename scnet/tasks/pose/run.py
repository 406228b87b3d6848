"""``scnet pose train``: a top-down keypoint run (one process or torchrun) from its recipe into its folder.

A training run's folder (``RunFolder``, as classification)::

    config.json         the recipe, the keypoints, the number of processes
    metrics.jsonl       one line per epoch: epoch, lr, train_loss, kpt_AP, kpt_AP50, kpt_AP75, kpt_APm, kpt_APl,
                        kpt_AR..., train_crops, crops_per_sec, epoch_time_s, eval_time_s
    tensorboard/        the same scalars
    last.pt             the full state after every epoch (model, optimiser, schedule, RNG states, metrics),
                        written atomically; ``--resume`` continues it
    model.safetensors   the final weights; its metadata (``PoseMetadata``) says how to rebuild and run the network
    keypoints_val.json  the last evaluation's people in COCO's keypoint results format

The augmentation of crop ``i`` in epoch ``e`` depends only on (seed, e, i) and the data order on (seed, e), so a
resumed run repeats exactly what an uninterrupted one does (on CPU, bit for bit).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Dict

import torch
from torch.utils.data import DataLoader, DistributedSampler

from scnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from scnet.tasks.backbone import options_for_weights
from scnet.tasks.coco_files import CocoDataError
from scnet.tasks.pose import engine
from scnet.tasks.pose.checkpoint import PoseMetadata
from scnet.tasks.pose.data import KeypointSpec, PoseCropSet, PoseTrainSet, gt_instances
from scnet.tasks.pose.evaluate import evaluate_pose
from scnet.tasks.pose.model import build_for_recipe
from scnet.tasks.pose.recipe import PoseRecipe
from scnet.tasks.pose.splits import check_same_keypoints, load_split, val_instances
from scnet.train import distributed
from scnet.train.engine import (epoch_line, finish_run, grad_scaler, keep_last_good, restore_training, seed_epoch,
                                wrap_ddp)
from scnet.train.preemption import EpochStops, main_process_sigterm_only, resume_requested
from scnet.train.recipe import RecipeError
from scnet.train.run_folder import RunError, RunFolder
from scnet.train.state import seed_everything

__all__ = ['train_pose']


def _epoch_line(row: Dict[str, Any], epochs: int) -> str:
    results = (f"  AP {row['kpt_AP']:.2f}  AP50 {row['kpt_AP50']:.2f}  AP75 {row['kpt_AP75']:.2f}  "
               f"AR {row['kpt_AR']:.2f}") if 'kpt_AP' in row else ''
    extra = f" (+{row['eval_time_s']:.1f}s eval)" if 'eval_time_s' in row else ''
    return epoch_line(row, epochs, results, loss_format='.4e', speed=('crops_per_sec', 'crops/s', '.0f'), extra=extra)


def train_pose(recipe: PoseRecipe, output: Path, *, resume: bool = False, progress: bool = True) -> Dict[str, Any]:
    """Run ``recipe`` into ``output`` (see the module docstring); returns the last epoch's metrics."""
    output = Path(output)
    ctx = distributed.setup(recipe.device)
    resume = resume_requested(output, resume)  # (also in workers that torchrun restarted)
    stops = None
    try:
        run = RunFolder(output, resume=resume, is_main=ctx.is_main, final_files=('model.safetensors',))
        state = run.state
        run.check_epochs(recipe.epochs)
        recipe.require_data()
        # every input is checked before the first step
        train_coco, spec = load_split(recipe.train_ann, recipe.train_images)
        val_coco, val_spec = load_split(recipe.val_ann, recipe.val_images)
        check_same_keypoints(spec, val_spec, f'those of {recipe.train_ann}', recipe.val_ann)
        if state is not None:
            check_same_keypoints(KeypointSpec.from_dict(state['keypoints']), spec, 'the run\'s (last.pt)',
                                 recipe.train_ann)
        h, w = recipe.image_size
        train_instances = gt_instances(train_coco, Path(recipe.train_images), spec, w / h, recipe.box_padding)
        if not train_instances:
            raise CocoDataError(f'{recipe.train_ann}: no person with labelled keypoints to train on')
        val_people = val_instances(val_coco, val_spec, recipe, recipe.val_images, recipe.val_boxes)

        seed_everything(recipe.seed)   # the same initial weights in every process
        if state is not None:  # built as the run was (a resumed run has its own weights)
            backbone_kwargs = state['config'].get('resolved_backbone_kwargs', recipe.backbone_kwargs)
        elif recipe.backbone_checkpoint:  # the options the weights were trained with replace the recipe's
            backbone_kwargs, note = options_for_weights(recipe.backbone_checkpoint, recipe.backbone,
                                                        dict(recipe.backbone_kwargs))
            if recipe.pretrained and ctx.is_main:  # a recipe of ImageNet weights, given a local copy (or others)
                print(f'note: the backbone\'s weights come from {recipe.backbone_checkpoint}; pretrained: true (the '
                      'published weights) is not used', file=sys.stderr)
            if note and ctx.is_main:
                print(note, file=sys.stderr)
        else:
            backbone_kwargs = dict(recipe.backbone_kwargs)
        model = build_for_recipe(recipe, spec.num, with_weights=state is None, backbone_kwargs=backbone_kwargs)
        stride = model.stride
        if recipe.batch_size % ctx.world_size:
            raise RecipeError(f'batch size {recipe.batch_size} is not divisible by the {ctx.world_size} processes')
        per_process = recipe.batch_size // ctx.world_size
        train_set = PoseTrainSet(train_instances, spec, recipe.image_size, stride, recipe.sigma, recipe.augment,
                                 seed=recipe.seed)
        val_set = PoseCropSet(val_people, recipe.image_size)
        sampler = DistributedSampler(train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                     seed=recipe.seed, drop_last=False)
        model.to(ctx.device)
        params = [p for p in model.parameters() if p.requires_grad]
        if recipe.optimizer == 'adam':
            optimizer = torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
        else:
            optimizer = torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum,
                                        weight_decay=recipe.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, recipe.lr_factor)
        scaler = grad_scaler(ctx.device, recipe.amp)
        if state is not None:
            if state['config']['backbone'] != recipe.backbone:
                raise RunError(f'{output}: last.pt is a run of {state["config"]["backbone"]}; resume it with the '
                               'same --backbone')
            try:
                model.load_state_dict(state['model'])
            except RuntimeError as e:
                raise RunError(f'{output}: last.pt does not fit the network of these settings '
                               f'({str(e).splitlines()[0]}); resume with the run\'s own settings') from None
            restore_training(state, optimizer, scheduler, scaler)
        train_model = wrap_ddp(model, ctx)

        config = dict(recipe.to_dict(), resolved_backbone_kwargs=backbone_kwargs, keypoints=spec.to_dict(),
                      world_size=ctx.world_size,
                      heatmap_size=[h // stride, w // stride], stride=stride, mean=list(IMAGENET_MEAN),
                      std=list(IMAGENET_STD))
        run.start(config)
        metadata = PoseMetadata.of_run(recipe, spec, model, backbone_kwargs).to_metadata()
        # the last partial batch is dropped: a batch of one crop cannot train BN (nor SC-Conv's pooled maps)
        drop_last = len(sampler) > per_process
        eval_batch = recipe.eval_batch_size or per_process
        evaluation: Dict[str, Any] = {}
        stops = EpochStops(ctx, output, 'scnet pose train')  # SIGTERM: stop at the next step, say what is saved
        for epoch in range(run.start_epoch + 1, recipe.epochs + 1):
            seed_epoch(recipe.seed, epoch, ctx.rank)
            sampler.set_epoch(epoch)
            train_set.epoch = epoch
            loader = DataLoader(train_set, batch_size=per_process, sampler=sampler, num_workers=recipe.workers,
                                drop_last=drop_last, pin_memory=ctx.device.type == 'cuda',
                                worker_init_fn=main_process_sigterm_only())  # (a job's SIGTERM: see EpochStops)
            lr = optimizer.param_groups[0]['lr']
            with keep_last_good(output, epoch, state=lambda: {'model': model.state_dict(),
                                                            'optimizer': optimizer.state_dict()}):
                row = engine.train_one_epoch(train_model, loader, optimizer, ctx, epoch=epoch, amp=recipe.amp,
                                             scaler=scaler, progress=progress,
                                             after_step=lambda step: stops.after_step(epoch, step, len(loader)))
            scheduler.step()
            row = {'epoch': epoch, 'lr': lr, **row}
            if epoch % recipe.eval_every == 0 or epoch == recipe.epochs:
                distributed.broadcast_buffers(model)
                start = time.perf_counter()
                evaluation = evaluate_pose(model, val_set, val_coco, val_spec, ctx, flip_test=recipe.flip_test,
                                           batch_size=eval_batch, workers=recipe.workers, stride=stride,
                                           kpt_score_thresh=recipe.kpt_score_thresh,
                                           nms_thresh=recipe.nms_thresh, progress=progress)
                row.update(evaluation['metrics'], eval_time_s=time.perf_counter() - start)
            run.end_epoch(row, {'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
                                'scheduler': scheduler.state_dict(),
                                'scaler': scaler.state_dict() if scaler else None, 'keypoints': spec.to_dict(),
                                'config': config, 'checkpoint': metadata})
            if ctx.is_main:
                print(_epoch_line(row, recipe.epochs), flush=True)
                if evaluation.get('results'):
                    (output / 'keypoints_val.json').write_text(json.dumps(evaluation['results']))
            if epoch < recipe.epochs:  # (after the last one the run only writes its final files)
                stops.after_epoch(epoch)
            distributed.barrier()

        return finish_run(run, ctx, model, metadata)
    finally:
        if stops is not None:
            stops.close()
        distributed.teardown()

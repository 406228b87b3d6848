"""``scnet detect train``: a detection run from its recipe into its folder.

The run's folder (``scnet.train.run_folder.RunFolder``): ``config.json``; ``metrics.jsonl`` with, per epoch,
``epoch``, ``lr``, ``train_loss`` and each torchvision loss (``train_loss_classifier``, ``train_loss_box_reg``,
``train_loss_objectness``, ``train_loss_rpn_box_reg``, ``train_loss_mask``), ``bbox_AP`` ... ``bbox_APl``
and ``segm_AP`` ... ``segm_APl``; ``tensorboard/``; ``last.pt`` every epoch (atomic; ``--resume``); the final
``model.safetensors`` with its ``DetectionMetadata`` (everything needed to rebuild the detector).

Many processes: ``torchrun --nproc_per_node=K -m scnet detect train ...``: DistributedDataParallel, the global
batch split over the processes, and every validation image evaluated exactly once.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict

import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

from scnet.errors import ScnetError
from scnet.tasks.coco_files import CocoDataError, check_images, load_coco
from scnet.tasks.detection import engine
from scnet.tasks.detection.checkpoint import DetectionMetadata
from scnet.tasks.detection.data import CocoDetectionSet, category_labels, collate, matched_categories
from scnet.tasks.detection.evaluate import complete_ground_truth, evaluate_detector
from scnet.tasks.detection.model import build_detector, resolve_backbone
from scnet.tasks.detection.recipe import PRETRAINED, DetectionRecipe
from scnet.train import distributed
from scnet.train.engine import epoch_line, finish_run, keep_last_good, restore_training, seed_epoch, wrap_ddp
from scnet.train.preemption import EpochStops, main_process_sigterm_only, resume_requested
from scnet.train.recipe import RecipeError
from scnet.train.run_folder import RunError, RunFolder
from scnet.train.state import seed_everything

__all__ = ['train_detector']


def _open_data(recipe: DetectionRecipe):
    """Both annotation files checked (every problem named before anything is built) and their categories."""
    recipe.require_data()
    train_coco = load_coco(Path(recipe.train_ann), Path(recipe.train_images), task=recipe.task)
    val_coco = load_coco(Path(recipe.val_ann), Path(recipe.val_images), task=recipe.task)
    resize = (recipe.min_size, recipe.max_size)
    check_images(train_coco, Path(recipe.train_images), recipe.train_ann, resize=resize)
    check_images(val_coco, Path(recipe.val_images), recipe.val_ann, resize=resize)
    categories = category_labels(train_coco)
    if not categories:
        raise CocoDataError(f'{recipe.train_ann}: no categories')
    if not any(not a.get('iscrowd', 0) for a in train_coco.dataset['annotations']):
        raise CocoDataError(f'{recipe.train_ann}: no (non-crowd) annotations to train on')
    label_to_category = matched_categories(categories, val_coco, recipe.val_ann)
    complete_ground_truth(val_coco, recipe.task)
    return train_coco, val_coco, categories, label_to_category


def _epoch_line(row: Dict[str, Any], epochs: int) -> str:
    results = ''.join(f"  {k} AP {row[f'{k}_AP']:.1f} AP50 {row[f'{k}_AP50']:.1f} AP75 {row[f'{k}_AP75']:.1f}"
                      for k in ('bbox', 'segm') if f'{k}_AP' in row)
    return epoch_line(row, epochs, results, speed=('images_per_sec', 'img/s', '.1f'))


def train_detector(recipe: DetectionRecipe, output: Path, *, resume: bool = False,
                   progress: bool = True) -> Dict[str, Any]:
    """Train and evaluate ``recipe`` into ``output`` (see the module docstring); returns the last row."""
    output = Path(output)
    if not resume:  # (a resume without its run says so first)
        recipe.require_data()
    existed = output.exists()
    ctx = distributed.setup(recipe.device)
    resume = resume_requested(output, resume)  # (also in workers that torchrun restarted)
    stops = None
    try:
        run = RunFolder(output, resume=resume, is_main=ctx.is_main, final_files=('model.safetensors',))
        state = run.state
        run.check_epochs(recipe.epochs)
        try:
            train_coco, val_coco, categories, label_to_category = _open_data(recipe)
        except ScnetError:
            if ctx.is_main and not resume and not existed and output.is_dir() and not any(output.iterdir()):
                output.rmdir()  # bad data: leave no empty run folder behind
            raise
        if state is not None:
            saved = state['config']
            if state['categories'] != categories or saved['task'] != recipe.task or \
                    saved['backbone'] != recipe.backbone:
                raise RunError(f'{output}: last.pt is a {saved["task"]} run of {saved["backbone"]} on categories '
                               f'{[c["name"] for c in state["categories"]][:8]}; resume it with the same task, '
                               'backbone and training categories')
        if recipe.batch_size % ctx.world_size:
            raise RecipeError(f'batch_size {recipe.batch_size} does not split over {ctx.world_size} processes')
        per_process = recipe.batch_size // ctx.world_size
        segm = recipe.task == 'segm'
        train_set = CocoDetectionSet(train_coco, Path(recipe.train_images), categories, with_masks=segm, train=True,
                                     flip=recipe.flip, seed=recipe.seed, annotation_file=recipe.train_ann)
        val_set = CocoDetectionSet(val_coco, Path(recipe.val_images), categories, with_targets=False,
                                   annotation_file=recipe.val_ann)
        sampler = DistributedSampler(train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                     seed=recipe.seed)
        # a last batch of one image cannot train batch norm (nor SC-Conv's pooled maps): it is left out
        one_left = len(sampler) > per_process and len(sampler) % per_process == 1
        batch_sampler = BatchSampler(sampler, per_process, drop_last=one_left)

        if state is None:
            checkpoint, pretrained, backbone_kwargs = resolve_backbone(recipe, quiet=not ctx.is_main)
            has_weights = bool(checkpoint) or pretrained
            trainable = recipe.trainable_layers if has_weights else 5
            frozen = recipe.frozen_bn if has_weights else False
            weights = checkpoint or (PRETRAINED if pretrained else None)
            if ctx.is_main and not has_weights:
                print(f'note: no backbone weights (--backbone-checkpoint): {recipe.backbone} is trained from '
                      'scratch, every stage trainable and batch norm learning', file=sys.stderr)
        else:  # the architecture the run was started with; the weights come from last.pt
            saved = DetectionMetadata.from_state(state, output / 'last.pt')
            checkpoint, pretrained, backbone_kwargs = None, False, saved.backbone_kwargs
            trainable, frozen = saved.trainable_layers, saved.frozen_bn
            weights = state['config']['backbone_weights']
        seed_everything(recipe.seed)  # the same initial heads in every process
        model = build_detector(recipe.task, recipe.backbone, len(categories), recipe.min_size, recipe.max_size,
                               backbone_checkpoint=checkpoint, pretrained_backbone=pretrained,
                               backbone_kwargs=backbone_kwargs, trainable_layers=trainable, frozen_bn=frozen,
                               rpn_pre_nms_top_n_train=recipe.rpn_pre_nms_train,
                               rpn_post_nms_top_n_train=recipe.rpn_post_nms_train,
                               rpn_batch_size_per_image=recipe.rpn_batch_size_per_image,
                               box_batch_size_per_image=recipe.box_batch_size_per_image, **recipe.arch())
        model.to(ctx.device)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=recipe.peak_lr, momentum=recipe.momentum,
                                    weight_decay=recipe.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, engine.lr_factor(recipe, len(batch_sampler)))
        if state is not None:
            model.load_state_dict(state['model'])
            restore_training(state, optimizer, scheduler)
        train_model = wrap_ddp(model, ctx)

        backbone_kwargs = dict(backbone_kwargs)
        # absolute paths, so that --resume works from any folder
        paths = {k: str(Path(getattr(recipe, k)).resolve()) for k in ('train_ann', 'train_images', 'val_ann',
                                                                       'val_images')}
        if weights and weights != PRETRAINED and state is None:
            weights = str(Path(weights).resolve())
        # the recipe's backbone_kwargs as given (what a --resume with the same --config compares), and those the
        # backbone was built with (a checkpoint's recorded options replace the recipe's)
        config = dict(recipe.to_dict(), **paths, categories=categories, world_size=ctx.world_size,
                      peak_lr=recipe.peak_lr, backbone_weights=weights, resolved_backbone_kwargs=backbone_kwargs,
                      resolved_trainable_layers=trainable, resolved_frozen_bn=frozen)
        run.start(config)
        metadata = DetectionMetadata(task=recipe.task, backbone=recipe.backbone, backbone_kwargs=backbone_kwargs,
                                     trainable_layers=trainable, frozen_bn=frozen, categories=categories,
                                     min_size=recipe.min_size, max_size=recipe.max_size,
                                     detector=recipe.arch()).to_metadata()

        stops = EpochStops(ctx, output, 'scnet detect train')  # SIGTERM: stop at the next step, say what is saved
        for epoch in range(run.start_epoch + 1, recipe.epochs + 1):
            # randomness of an epoch (order, flips, RPN / RoI sampling) depends on (seed, epoch, process) only
            seed_epoch(recipe.seed, epoch, ctx.rank)
            sampler.set_epoch(epoch)
            train_set.epoch = epoch
            loader = DataLoader(train_set, batch_sampler=batch_sampler, num_workers=recipe.workers,
                                collate_fn=collate, pin_memory=ctx.device.type == 'cuda',
                                worker_init_fn=main_process_sigterm_only())  # (a job's SIGTERM: see EpochStops)
            with keep_last_good(output, epoch, state=lambda: {'model': model.state_dict(),
                                                            'optimizer': optimizer.state_dict()}):
                row = engine.train_one_epoch(train_model, loader, optimizer, scheduler, ctx, epoch=epoch,
                                             epochs=recipe.epochs, progress=progress, grad_clip=recipe.grad_clip,
                                             after_step=lambda step: stops.after_step(epoch, step, len(loader)))
            distributed.broadcast_buffers(model)
            row = {'epoch': epoch, **row}
            if epoch % recipe.eval_every == 0 or epoch == recipe.epochs:
                row.update(evaluate_detector(model, val_set, label_to_category, task=recipe.task, ctx=ctx,
                                             batch_size=recipe.eval_batch_size, workers=recipe.workers,
                                             progress=progress))
            run.end_epoch(row, {'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
                                'scheduler': scheduler.state_dict(), 'categories': categories, 'config': config,
                                'checkpoint': metadata})
            if ctx.is_main:
                print(_epoch_line(row, recipe.epochs), flush=True)
            if epoch < recipe.epochs:  # (after the last one the run only writes its final files)
                stops.after_epoch(epoch)
            distributed.barrier()

        return finish_run(run, ctx, model, metadata)
    finally:
        if stops is not None:
            stops.close()
        distributed.teardown()

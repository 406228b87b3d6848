"""A whole training run: data, model, optimiser, schedule, logs and checkpoints in one output folder.

The folder after a run::

    config.json          the recipe, the classes, the number of processes
    metrics.jsonl        one JSON line per epoch (epoch, lr, train_loss, val_top1, val_top5, images_per_sec, ...)
    tensorboard/         the same scalars for TensorBoard
    last.pt              the full state (model, optimiser, schedule, epoch, RNG states, metrics), every epoch
                         and, with checkpoint_every, every N steps and on SIGTERM (scnet.train.preemption)
    run.lock             held by process 0 while the run lives (scnet.train.run_folder)
    model.safetensors    the final weights (classes, input settings and the initial weights' origin in its metadata)
    model_ema.safetensors  the EMA of the weights, when the recipe's ema_decay is on
    side_head.safetensors  the res3 side classifier, when --aux-weight is on

The data: an ImageNet-layout folder, WebDataset shards or a Hugging Face dataset (scnet.data.sources).

Reproducibility: the data order and the augmentation randomness of each epoch are seeded from (seed, epoch,
process), not carried over from the previous epoch, so a run resumed from ``last.pt`` after a kill replays
exactly the epochs it lost and ends with the same weights as an uninterrupted run (on CPU). Python's and
NumPy's generators (what timm's Mixup draws from) are reseeded the same way at each epoch, and the EMA of the
weights travels in ``last.pt``.

Resuming: the run's config.json is the recipe (``scnet.train.recipe.load_resumed_recipe``) and flags given on
resume change it; what they change applies (``scnet.train.engine.restore_training``: an extended run's
schedule is rebuilt for its new length). What the saved state cannot be continued with is refused before
anything is loaded or written (``_check_resumable``: another network, optimiser or batch size, the side
classifier or the EMA switched, fewer epochs than done), and so is data at another location than the one the
run recorded (absolute, so that a resume from another working folder finds it), unless ``data_moved``.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Dict

import torch
from torch import nn
from torch.utils.data import DataLoader

from scnet.data.folders import DataError, collate_skipping_bad
from scnet.data.sources import absolute_spec, open_run_data, same_data
from scnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from scnet.errors import InvalidArgumentTypeError, ScnetError
from scnet.train import distributed, engine
from scnet.train.classifier_checkpoint import TRAINING_ONLY_OPTIONS, ClassifierMetadata
from scnet.train.estimate import measure_and_estimate
from scnet.train.init_weights import apply_initial_weights, find_initial_weights
from scnet.train.loop import StepSettings, evaluate, train_one_epoch
from scnet.train.modern import build_criterion, build_ema, build_mixup, build_optimizer
from scnet.train.preemption import (StepCheckpoints, check_epoch_length, main_process_sigterm_only,
                                     resume_requested)
from scnet.train.recipe import Recipe, RecipeError, typed_settings
from scnet.train.side_output import WithSideOutput
from scnet.train.run_folder import RunError, RunFolder
from scnet.train.schedule import lr_schedule
from scnet.train.state import check_state, seed_everything

__all__ = ['train', 'RunError']


def _lr_factor(recipe: Recipe, steps_per_epoch: int):
    """The lr multiplier after ``step`` optimiser steps: linear warm-up (the first step at 1 / warm-up steps),
    then cosine or x lr_gamma every lr_step epochs."""
    total = recipe.epochs * steps_per_epoch
    period = recipe.lr_step * steps_per_epoch
    return lr_schedule(warmup_steps=recipe.warmup_epochs * steps_per_epoch, warmup_counts_current=True,
                       cosine_steps=total if recipe.schedule == 'cosine' else None,
                       milestones=range(period, total + 1, period), gamma=recipe.lr_gamma)


def _data_root(recipe: Recipe, ctx: distributed.Context) -> str:
    if recipe.data:
        return recipe.data  # made absolute by train()
    from scnet.data.embedded import DEFAULT_ROOT, build_embedded_dataset

    if ctx.is_main:
        build_embedded_dataset(DEFAULT_ROOT, report=_print_line)
    distributed.barrier()
    return str(DEFAULT_ROOT)


def _model_kwargs(recipe: Recipe, announce: bool = True) -> Dict[str, Any]:
    """The recipe's model arguments, less the SC-Conv options when its model has no SC-Conv layers.

    A recipe written for an SC network (the embedded one sets ``memory_efficient``) stays usable with
    ``--model resnet26_cifar`` and the other plain networks: the options that only SC-Conv takes are left out,
    with a note, instead of stopping the run.
    """
    from scnet.models.blocks import SCBottleneck
    from scnet.models.zoo import SC_OPTIONS, ZOO_ARCHITECTURES

    kwargs = dict(recipe.model_kwargs)
    if ZOO_ARCHITECTURES.get(recipe.model, {}).get('block') is SCBottleneck:
        return kwargs
    dropped = [k for k in SC_OPTIONS if k in kwargs]
    for k in dropped:
        del kwargs[k]
    if dropped and announce:
        print(f'{recipe.model} has no SC-Conv layers: the recipe\'s {", ".join(dropped)} left out', flush=True)
    return kwargs


#: The settings a run keeps from its start to its end, with the flag that sets each and why:
#: a resume that changes one is refused (``_check_resumable``).
FIXED_ON_RESUME = {
    'model': ('--model', 'its weights are of this network'),
    'model_kwargs': ('model_kwargs (in the recipe)', 'its weights are of this network'),
    'optimizer': ('--optimizer', 'its saved optimiser state (momentum, moments) is of this optimiser'),
    'decay_norm_and_bias': ('--no-decay-norm-and-bias', 'its saved optimiser state has these parameter groups'),
    'batch_size': ('--batch-size', 'its schedule and a state saved mid-epoch count optimiser steps of this batch'),
    'seed': ('--seed', 'the data order and augmentation of its epochs are drawn from it (a state saved mid-epoch '
                       'continues its epoch\'s order: another seed would train some images twice and skip others)'),
    'init': ('--init', 'it started from those weights, and records them as its origin'),
    'pretrained': ('--pretrained', 'it started from those weights, and records them as its origin'),
}
#: What a classification run's last.pt holds beyond every run's ``STATE_KEYS``.
CLASSIFIER_STATE_KEYS = ('model', 'optimizer', 'scheduler', 'rng', 'classes', 'config')


def _check_resumable(state: Dict[str, Any], recipe: Recipe, output: Path, *, side: bool, ema: bool) -> None:
    """Refuse to continue ``state`` with a recipe it cannot be continued with, naming the setting, the run's
    value and the way out, before anything is loaded (where the mismatch would surface as a ``KeyError`` or
    a ``RuntimeError`` of ``load_state_dict``)."""
    check_state(state, output / 'last.pt', CLASSIFIER_STATE_KEYS)
    saved, now = state['config'], recipe.to_dict()
    way_out = 'resume with the run\'s value (or leave the flag out), or start a new run into another --output'
    with_weights = f' (--init {output / "last.pt"} starts it from these weights)'
    for key, (flag, why) in FIXED_ON_RESUME.items():
        if key in saved and saved[key] != now[key]:
            raise RunError(f'{output}: the run has {key} {saved[key]!r}, this resume {now[key]!r} ({flag}); a '
                           f'run keeps it to its end, since {why}: {way_out}'
                           f'{"" if key in ("model", "model_kwargs", "init", "pretrained") else with_weights}')
    for name, flag, had, has in (('a side classifier', '--aux-weight', state.get('side_head') is not None, side),
                                 ('an EMA of the weights', '--ema-decay', state.get('ema') is not None, ema)):
        if had != has:
            raise RunError(f'{output}: the run was trained {"with" if had else "without"} {name}, this resume is '
                           f'{"with" if has else "without"} ({flag}); {way_out}{with_weights}')


def _note_stream_order_changed(saved: Dict[str, Any], epoch: int, recipe: Recipe, world_size: int,
                               train_set) -> None:
    """Say so when a state saved mid-epoch on shards is resumed with other processes, loader workers or
    accumulation steps. A stream's order within an epoch is a function of them (``scnet.data.streams``), so the
    rest of the epoch is read in the new order: some of its images are trained twice and others not at all (the
    epochs after it are whole). Not refused: a job requeued on fewer GPUs could not continue otherwise."""
    from scnet.data.streams import ShardStream

    if not isinstance(train_set, ShardStream):  # (folders and datasets: the same order for any of them)
        return
    now = {'world_size': world_size, 'workers': recipe.workers, 'accum_steps': recipe.accum_steps}
    flags = {'world_size': 'processes', 'workers': '--workers', 'accum_steps': '--accum-steps'}
    changed = [f'{flags[k]} {saved[k]} -> {v}' for k, v in now.items() if k in saved and saved[k] != v]
    if changed:
        print(f'note: the run was saved in the middle of epoch {epoch} with other settings ({", ".join(changed)}): '
              f'the rest of the epoch is streamed in their new order, so some of its images are trained twice and '
              f'others not at all; resume with the run\'s settings to continue it exactly', file=sys.stderr,
              flush=True)


def _with_recorded_options(recipe: Recipe, recorded: ClassifierMetadata, announce: bool) -> Recipe:
    """``recipe`` with the model options that ``--init``'s checkpoint (a run of ``scnet train``) records, where
    the recipe does not set them: fine-tuning a narrow run starts from a network of its shape, as
    ``create_model(checkpoint=...)`` builds it. Recorded in config.json like the recipe's own."""
    if recorded.model and recorded.model != recipe.model:
        return recipe  # the weights' misfit names the model they are of (apply_initial_weights)
    added = {k: v for k, v in (recorded.model_kwargs or {}).items() if k not in recipe.model_kwargs}
    if not added:
        return recipe
    if announce:
        print(f'--init: the model options recorded with the checkpoint are used: '
              f'{", ".join(f"{k}={v}" for k, v in added.items())}', flush=True)
    return dataclasses.replace(recipe, model_kwargs={**recipe.model_kwargs, **added})


def _build_checked(recipe: Recipe, num_classes: int, model_kwargs: Dict[str, Any]) -> nn.Module:
    """The recipe's network, built and run once on one image of the training size (in eval mode, drawing no
    random numbers), so that model options that do not fit it (``model_kwargs`` with an unknown name, or
    ``channels`` of the wrong length, which builds but fails in its first forward pass) stop the run with one
    line naming them, before the run folder holds anything."""
    from scnet.models import create_model

    try:
        net = create_model(recipe.model, num_classes=num_classes, **model_kwargs)
        net.eval()
        with torch.no_grad():
            net(torch.zeros(1, 3, recipe.image_size, recipe.image_size))
        net.train()
    except Exception as e:  # TypeError, AttributeError, RuntimeError: all mean "these options do not fit"
        lines = str(e).strip().splitlines()
        detail = lines[0] if lines and isinstance(e, ScnetError) else \
            f'{type(e).__name__}: {lines[0]}' if lines else type(e).__name__
        raise RecipeError(f'{recipe.model} cannot be built or run with model_kwargs {recipe.model_kwargs} at '
                          f'image_size {recipe.image_size} ({detail}); fix model_kwargs in the recipe (--config), '
                          'see `scnet models` for the options') from None
    return net


def _print_line(text: str) -> None:
    print(text, flush=True)


def _machine(device: torch.device) -> str:
    """The CPU (or GPU) and the instruction set PyTorch dispatches to, with the thread count."""
    from scnet.bench.machine import cpu_description

    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return f'{cpu_description()}, {torch.get_num_threads()} thread{"s" if torch.get_num_threads() != 1 else ""}'


def _loader(dataset, ctx: distributed.Context, recipe: Recipe, **kwargs) -> DataLoader:
    return DataLoader(dataset, num_workers=recipe.workers, collate_fn=collate_skipping_bad,
                      pin_memory=ctx.device.type == 'cuda', persistent_workers=False, **kwargs)


def train(recipe: Recipe, output: Path, *, resume: bool = False, progress: bool = True,
          data_moved: bool = False) -> Dict[str, Any]:
    """Run ``recipe`` into ``output``; returns the last epoch's metrics. See the module docstring.

    Resuming (``resume``) checks that the run can go on as asked (``_check_resumable``) and that its data is
    the run's: the same absolute location as config.json records, or, with ``data_moved`` (the same images
    moved elsewhere), at least the same classes.
    """
    from scnet.weights import save_state_dict

    if not isinstance(recipe, Recipe):
        raise InvalidArgumentTypeError(f'train() takes a scnet.train.recipe.Recipe (load_recipe builds one), got '
                                       f'{type(recipe).__name__}')
    # a Recipe built by hand has not been through load_recipe's checks: types first, then ranges
    recipe = Recipe(**typed_settings(Recipe, recipe.to_dict())).validate()
    output = Path(output)
    if recipe.data:  # recorded absolute: --resume from another working folder finds the same data
        recipe = dataclasses.replace(recipe, data=absolute_spec(recipe.data))
    ctx = distributed.setup(recipe.device)
    resume = resume_requested(output, resume)  # (also in workers that torchrun restarted)
    checkpoints = None
    try:
        run = RunFolder(output, resume=resume, is_main=ctx.is_main, final_files=('model.safetensors',))
        state = run.state
        if state is not None:
            _check_resumable(state, recipe, output, side=recipe.aux_weight > 0, ema=recipe.ema_decay > 0)
            run.check_epochs(recipe.epochs)
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        spec = _data_root(recipe, ctx)
        recorded = (state or {}).get('config', {}).get('data_root')
        if recorded and not data_moved and not same_data(recorded, spec):
            raise RunError(f'{output}: the run was trained on the data at {recorded}, --data now names {spec}: '
                           f'resume with --data {recorded}, or start a new run into another --output; if the same '
                           'images have moved there, add --data-moved')
        # a folder, shards or a Hugging Face dataset (scnet.data.sources): one interface from here on
        data = open_run_data(spec, recipe, mean=mean, std=std, rank=ctx.rank, world_size=ctx.world_size)
        root, classes, train_set, val_set = data.description, data.classes, data.train_set, data.val_set
        if len(classes) < 2:
            raise DataError(f'{root}: one class ({", ".join(classes)}); a classifier needs at least 2 classes to '
                            'learn to tell apart: add class folders (train/<class>/ and val/<class>/)')
        if state is not None and state['classes'] != classes:
            raise RunError(f'{output}: the run was trained on classes {state["classes"][:5]}..., the data at {root} '
                           f'has {classes[:5]}...: resume with the same data')
        if state is not None:
            check_epoch_length(state, data.steps, output)
        if state is not None and state.get('step') and ctx.is_main:
            _note_stream_order_changed(state['config'], int(state['epoch']) + 1, recipe, ctx.world_size, train_set)
        val_loader = _loader(val_set, ctx, recipe, **data.val_kwargs, worker_init_fn=main_process_sigterm_only())

        if recipe.mixes and data.micro % 2:
            raise RunError(f'mixup/cutmix pair the images of a batch: the batch per process and accumulation step '
                           f'is {data.micro}, make it even (--batch-size, --accum-steps)')
        # a resumed run's weights are in last.pt: the initial ones are only looked up (and checked) for a new run
        initial = None if state is not None else find_initial_weights(
            recipe.model, pretrained=recipe.pretrained, init=recipe.init, progress=progress and ctx.is_main)
        if initial is not None and initial.source == 'checkpoint':
            recipe = _with_recorded_options(recipe, initial.recorded, announce=ctx.is_main)
        seed_everything(recipe.seed)  # same initial weights in every process
        model_kwargs = _model_kwargs(recipe, announce=ctx.is_main)
        if recipe.drop_path_rate > 0:
            model_kwargs['drop_path_rate'] = recipe.drop_path_rate
        net = _build_checked(recipe, len(classes), model_kwargs)
        if initial is not None:
            apply_initial_weights(net, initial, len(classes), report=_print_line if ctx.is_main else lambda _: None,
                                  model_name=recipe.model)
        initial_record = initial.record() if initial else (state or {}).get('config', {}).get('initial_weights')
        model = WithSideOutput(net, len(classes)) if recipe.aux_weight > 0 else net
        side = model.side if isinstance(model, WithSideOutput) else None
        model.to(ctx.device)
        if recipe.channels_last:
            model.to(memory_format=torch.channels_last)
        optimizer = build_optimizer(model, recipe)
        ema = build_ema(net, recipe)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(recipe, data.steps))
        scaler = engine.grad_scaler(ctx.device, recipe.amp)
        if state is not None:
            net.load_state_dict(state['model'])
            if side is not None:
                side.load_state_dict(state['side_head'])
            if ema is not None:
                ema.module.load_state_dict(state['ema'])
            engine.restore_training(state, optimizer, scheduler, scaler)
        train_model = engine.wrap_ddp(model, ctx)
        if recipe.compile:
            train_model = torch.compile(train_model)

        config = dict(recipe.to_dict(), classes=classes, data_root=str(root), world_size=ctx.world_size,
                      peak_lr=recipe.peak_lr, mean=list(mean), std=list(std), initial_weights=initial_record)
        run.start(config)
        if ctx.is_main and run.start_epoch < recipe.epochs:
            estimate = measure_and_estimate(
                model, optimizer, train_set=data.probe_train, val_set=data.probe_val,
                epochs=recipe.epochs - run.start_epoch, steps_per_epoch=data.steps, micro_batch=data.micro,
                accum_steps=recipe.accum_steps, val_images=data.val_images, val_batch=max(1, data.micro),
                image_size=recipe.image_size, num_classes=len(classes),
                workers=recipe.workers, amp=recipe.amp, channels_last=recipe.channels_last)
            print(estimate.line(_machine(ctx.device)), flush=True)

        settings = StepSettings(recipe.accum_steps, recipe.aux_weight, recipe.label_smoothing, recipe.amp,
                                recipe.channels_last, criterion=build_criterion(recipe),
                                mixup=build_mixup(recipe, len(classes)), grad_clip=recipe.grad_clip)

        def training_state() -> Dict[str, Any]:
            return {'model': net.state_dict(), 'side_head': side.state_dict() if side else None,
                    'optimizer': optimizer.state_dict(), 'scheduler': scheduler.state_dict(),
                    'scaler': scaler.state_dict() if scaler else None, 'classes': classes,
                    'ema': ema.module.state_dict() if ema is not None else None, 'config': config}

        # the state every recipe.checkpoint_every steps and on SIGTERM, and the resume mid-epoch
        checkpoints = StepCheckpoints(run, ctx, every=recipe.checkpoint_every, steps_per_epoch=data.steps,
                                      state=training_state)

        def after_step() -> None:
            if ema is not None:
                ema.update(net)
            checkpoints.after_step()

        settings.on_step = after_step
        for epoch in range(run.start_epoch + 1, recipe.epochs + 1):
            # each epoch's randomness depends on (seed, epoch) and, for augmentation, the image index only:
            # what makes a resumed run and a K-process run exact
            engine.seed_epoch(recipe.seed, epoch, ctx.rank)
            data.set_epoch(epoch, checkpoints.begin_epoch(epoch, lr=optimizer.param_groups[0]['lr']))
            # the loader draws its workers' seeds from its own generator, not from the global one that the
            # training steps draw from (which a state saved mid-epoch restores)
            train_loader = _loader(train_set, ctx, recipe, **data.train_kwargs(),
                                   worker_init_fn=main_process_sigterm_only(),
                                   generator=torch.Generator().manual_seed(recipe.seed * 100_003 + epoch))
            lr = checkpoints.epoch_lr  # (that of a resumed epoch as it began)
            saved_step = lambda: checkpoints.saved_step  # noqa: E731 (read when an error comes)
            with engine.keep_last_good(output, epoch, state=training_state, saved_step=saved_step):
                row = train_one_epoch(train_model, train_loader, optimizer, scheduler, ctx, settings, epoch=epoch,
                                      scaler=scaler, progress=progress, sums=checkpoints.sums)
            row = checkpoints.finish_epoch(row)
            distributed.broadcast_buffers(model)
            stop = lambda: checkpoints.signalled  # noqa: E731 (SIGTERM cuts the evaluation short)
            row = {'epoch': epoch, 'lr': lr, **row,
                   **evaluate(model, val_loader, ctx, amp=recipe.amp, channels_last=recipe.channels_last,
                              progress=progress, stop=stop)}
            if ema is not None:
                distributed.broadcast_buffers(ema.module)
                ema_row = evaluate(ema.module, val_loader, ctx, amp=recipe.amp, channels_last=recipe.channels_last,
                                   progress=progress, desc='val (EMA)', stop=stop)
                row.update({f'ema_{k}': v for k, v in ema_row.items() if k in ('val_loss', 'val_top1', 'val_top5')})
            checkpoints.after_evaluation()
            run.end_epoch(row, training_state())
            if ctx.is_main:
                print(_epoch_line(row, recipe.epochs), flush=True)
            checkpoints.end_epoch()
            distributed.barrier()

        # the network's options, not the rates that only act in training: create_model(checkpoint=) and a run
        # started from these weights (--init) build it without the stochastic depth this run trained with
        shape_kwargs = {k: v for k, v in model_kwargs.items() if k not in TRAINING_ONLY_OPTIONS}
        meta = ClassifierMetadata(
            model=recipe.model, classes=classes, image_size=recipe.eval_size, eval_resize=recipe.eval_resize,
            mean=list(mean), std=list(std), model_kwargs=shape_kwargs, initial_weights=initial_record,
            train_image_size=recipe.image_size if recipe.eval_size != recipe.image_size else None,
        ).to_metadata()
        if ctx.is_main:  # beside model.safetensors, which engine.finish_run writes
            if ema is not None:
                save_state_dict(ema.module.state_dict(), output / 'model_ema.safetensors', metadata=meta)
            if side is not None:
                save_state_dict(side.state_dict(), output / 'side_head.safetensors', metadata=meta)
        return engine.finish_run(run, ctx, net, meta)
    finally:
        if checkpoints is not None:
            checkpoints.close()
        distributed.teardown()


def _epoch_line(row: Dict[str, Any], epochs: int) -> str:
    text = engine.epoch_line(row, epochs, f"  val top-1 {row['val_top1']:.2f}%  top-5 {row['val_top5']:.2f}%")
    if 'ema_val_top1' in row:
        text += f"  EMA top-1 {row['ema_val_top1']:.2f}%"
    if 'aux_val_top1' in row:
        text += f"  side top-1 {row['aux_val_top1']:.2f}%"
    if row.get('skipped_images') or row.get('val_skipped_images'):
        text += f"  skipped {row['skipped_images']} train / {row['val_skipped_images']} val images"
    return text

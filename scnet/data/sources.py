"""What ``--data`` names, opened for a run: an ImageNet-layout folder, WebDataset shards or a Hugging Face
dataset, behind the one interface the training loop needs.

* a folder with ``train/`` and ``val/`` (``scnet.data.folders``): random access, the order of
  ``scnet.train.sampling.ShardedBatchSampler``;
* shards (``scnet.data.streams``): a folder that ``scnet shards`` wrote, or a brace pattern of local paths or
  ``pipe:`` commands;
* a Hugging Face dataset saved with ``save_to_disk`` or as parquet files (``scnet.data.hf``): random access,
  the same sampler as folders, so the same images in the same order as a folder run on them.

Each gives its classes (a folder's class folders, the shards' index, the dataset's label feature), which the
run records in its config and its checkpoints as for folders.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List

from torch.utils.data import Dataset

from scnet.data.transforms import eval_transform, train_transform

__all__ = ['RunData', 'open_run_data', 'open_eval_data', 'absolute_spec', 'same_data']


@dataclass
class RunData:
    """A run's data in this process: datasets, how to load them, and the numbers the loop needs."""
    classes: List[str]
    description: str                 # what the run's config records as data_root
    train_set: Any                   # has .epoch (the augmentation of an epoch)
    val_set: Any
    steps: int                       # optimiser steps an epoch
    micro: int                       # images per process and accumulation step
    val_images: int                  # validation images this process evaluates
    probe_train: Dataset             # map-style: what the duration estimate times a load on
    probe_val: Dataset
    train_kwargs: Callable[[], Dict[str, Any]]   # DataLoader arguments of the training set (after set_epoch)
    val_kwargs: Dict[str, Any]
    set_epoch: Callable[[int, int], None]        # (epoch, steps already done)


def absolute_spec(spec: str) -> str:
    """``spec`` (``--data``) with its local path made absolute, so that a run's config.json names its data
    from any working folder (what ``--resume`` from elsewhere reads back, and what it is compared with).

    A folder, a brace pattern of local shards and the path of a Hugging Face spec (``PATH#image=...``) are made
    absolute; ``pipe:`` commands and URLs name their data already and are kept as they are.
    """
    spec = str(spec)
    if spec.startswith('pipe:') or '://' in spec:
        return spec
    path, sep, options = spec.partition('#')
    return os.path.abspath(path) + sep + options


def same_data(a: str, b: str) -> bool:
    """Whether the specs ``a`` and ``b`` name the same data: equal once absolute, or the same real path (one
    of them through a symbolic link)."""
    a, b = absolute_spec(a), absolute_spec(b)
    return a == b or os.path.realpath(a) == os.path.realpath(b)


def _transforms(recipe, mean, std):
    return (train_transform(recipe.image_size, recipe.augment, mean, std, recipe.auto_augment, recipe.reprob),
            eval_transform(recipe.eval_size, recipe.eval_resize, mean, std))


def _random_access(train_set, val_set, classes, description, recipe, rank, world_size) -> RunData:
    from scnet.train.sampling import ShardedBatchSampler, StridedSampler

    train_set.augment_seed = recipe.seed
    sampler = ShardedBatchSampler(len(train_set), recipe.batch_size, rank=rank, world_size=world_size,
                                  accum_steps=recipe.accum_steps, seed=recipe.seed)
    val_sampler = StridedSampler(len(val_set), rank=rank, world_size=world_size)

    def set_epoch(epoch: int, start_step: int = 0) -> None:
        sampler.set_epoch(epoch, start_step)
        train_set.epoch = epoch

    return RunData(classes, description, train_set, val_set, sampler.steps, sampler.micro, len(val_sampler),
                   train_set, val_set, lambda: {'batch_sampler': sampler},
                   {'batch_size': max(1, sampler.micro), 'sampler': val_sampler}, set_epoch)


def _streamed(source, recipe, mean, std, rank, world_size) -> RunData:
    from scnet.data.streams import ShardEvalStream, ShardProbe, ShardStream

    train_tf, eval_tf = _transforms(recipe, mean, std)
    train_set = ShardStream(source.train, train_tf, batch_size=recipe.batch_size, rank=rank, world_size=world_size,
                            accum_steps=recipe.accum_steps, seed=recipe.seed, skip_bad_images=recipe.skip_bad_images,
                            num_classes=len(source.classes))
    train_set.augment_seed = recipe.seed
    val_set = ShardEvalStream(source.val, eval_tf, rank=rank, world_size=world_size,
                              skip_bad_images=recipe.skip_bad_images, num_classes=len(source.classes))

    def set_epoch(epoch: int, start_step: int = 0) -> None:
        train_set.set_epoch(epoch, start_step)

    micro = train_set.micro
    return RunData(source.classes, source.spec, train_set, val_set, train_set.steps, micro, len(val_set),
                   ShardProbe(train_set), ShardProbe(val_set), lambda: {'batch_size': micro},
                   {'batch_size': max(1, micro)}, set_epoch)


def open_run_data(spec: str, recipe, *, mean, std, rank: int = 0, world_size: int = 1) -> RunData:
    """The data that ``spec`` (``--data``; a folder path for the embedded set) names, for process ``rank``."""
    from scnet.data.folders import CheckedImageFolder, split_folders
    from scnet.data.hf import is_hf_spec, open_hf
    from scnet.data.streams import ShardsError, is_shard_spec, open_shards

    spec = str(spec)
    if is_hf_spec(spec):
        train_tf, eval_tf = _transforms(recipe, mean, std)
        data = open_hf(spec)
        train_set = data.split('train', train_tf, skip_bad_images=recipe.skip_bad_images)
        val_set = data.split('val', eval_tf, skip_bad_images=recipe.skip_bad_images)
        return _random_access(train_set, val_set, data.classes, spec, recipe, rank, world_size)
    if is_shard_spec(spec):
        source = open_shards(spec)
        if not source.train.urls:
            raise ShardsError(f'{spec} names validation shards only; training reads the training shards (their '
                              'folder, or the train-*.tar pattern), and validates on the val-*.tar its index lists')
        return _streamed(source, recipe, mean, std, rank, world_size)
    train_dir, val_dir, classes = split_folders(Path(spec))
    train_tf, eval_tf = _transforms(recipe, mean, std)
    train_set = CheckedImageFolder(train_dir, train_tf, classes=classes, skip_bad_images=recipe.skip_bad_images)
    val_set = CheckedImageFolder(val_dir, eval_tf, classes=classes, skip_bad_images=recipe.skip_bad_images)
    return _random_access(train_set, val_set, classes, spec, recipe, rank, world_size)


def open_eval_data(spec: str, transform, *, skip_bad_images: bool = False, rank: int = 0, world_size: int = 1):
    """``(dataset, classes, description, loader arguments)`` of the validation images that ``spec`` names, for
    ``scnet eval``; None for a folder (which ``scnet.train.checkpoint_eval`` reads itself)."""
    from scnet.data.hf import is_hf_spec, open_hf
    from scnet.data.streams import ShardEvalStream, is_shard_spec, open_shards
    from scnet.train.sampling import StridedSampler

    spec = str(spec)
    if is_hf_spec(spec):
        data = open_hf(spec)
        dataset = data.split('val', transform, skip_bad_images=skip_bad_images)
        return dataset, data.classes, spec, {'sampler': StridedSampler(len(dataset), rank=rank,
                                                                       world_size=world_size)}
    if is_shard_spec(spec):
        source = open_shards(spec)
        return (ShardEvalStream(source.val, transform, rank=rank, world_size=world_size,
                                skip_bad_images=skip_bad_images, num_classes=len(source.classes)),
                source.classes, spec, {})
    return None

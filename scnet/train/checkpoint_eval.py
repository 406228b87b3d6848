"""Accuracy of a checkpoint on a folder of images: single-crop top-1 and top-5, as the paper reports them.

The data is a folder, ``DIR/val/<class>/...`` or ``DIR/<class>/...``, or the validation split of shards or
of a Hugging Face dataset (``scnet.data.sources``). The checkpoint's class names (kept in the
metadata of the ``model.safetensors`` that ``scnet train`` writes, or in ``last.pt``) must be the folder's;
a checkpoint without names (the authors' ImageNet files) needs as many class folders as it has classes,
taken in sorted order (the usual ImageNet synset order).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

from torch.utils.data import DataLoader

from scnet.data.folders import CheckedImageFolder, DataError, collate_skipping_bad, find_classes
from scnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from scnet.errors import CheckpointError, InvalidArgumentError
from scnet.train import distributed
from scnet.train.classifier_checkpoint import other_model_message, read_classifier_metadata
from scnet.train.loop import evaluate
from scnet.train.sampling import StridedSampler

__all__ = ['checkpoint_metadata', 'evaluate_checkpoint', 'model_kwargs_way_out']


def checkpoint_metadata(path: Path) -> Dict[str, Any]:
    """Model name, classes, input settings and model options recorded with a checkpoint: the fields of its
    ``ClassifierMetadata`` that it records ({} if none)."""
    return read_classifier_metadata(path).known()


def model_kwargs_way_out(error) -> Optional[str]:
    """The advice for weights that fit their network with other options (``WeightsMismatchError
    .fitting_options``), as the ``--model-kwargs`` of ``scnet eval`` and ``scnet export``; None when none do."""
    if not error.fitting_options:
        return None
    flags = ' '.join(f'{k}=' + (','.join(map(str, v)) if isinstance(v, (tuple, list)) else repr(v))
                     for k, v in error.fitting_options.items())
    found = ', '.join(f'{k}={v}' for k, v in error.fitting_options.items())
    return f'it fits with {found}, which it does not record: pass --model-kwargs {flags}'


def _build(model_name: str, checkpoint: Path, model_kwargs: Dict[str, Any]):
    """``model_name`` with the weights of ``checkpoint``, or a one-line ``CheckpointError`` saying that they do
    not fit and what to pass instead (``create_model``'s own cannot name the --model way out)."""
    from scnet.models import create_model
    from scnet.weights.fit import WeightsMismatchError

    way_out = 'pass the --model it was trained as (`scnet models` lists them)'
    try:
        return create_model(model_name, checkpoint=str(checkpoint), **model_kwargs)
    except TypeError as e:  # options recorded with the weights that this network does not take
        raise CheckpointError(f'{checkpoint}: its model options {model_kwargs} do not fit {model_name} ({e}); '
                              f'{way_out}') from None
    except WeightsMismatchError as e:
        raise e.with_way_out(model_kwargs_way_out(e) or way_out, name=model_name) from None


def _class_folder(data: Path) -> Path:
    data = Path(data)
    return data / 'val' if (data / 'val').is_dir() else data


def evaluate_checkpoint(model_name: Optional[str], checkpoint: Path, data: Path, *, batch_size: int = 64,
                        workers: int = 4, device: str = 'auto', image_size: Optional[int] = None,
                        eval_resize: Optional[int] = None, skip_bad_images: bool = False,
                        progress: bool = True, model_kwargs: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Top-1 / top-5 / loss of ``checkpoint`` (built as ``model_name``; None: the model it records) on the
    images under ``data``. ``model_kwargs``: ``create_model`` options over those the checkpoint records (for
    weights saved without them, e.g. other ``channels``)."""
    from scnet.data.sources import open_eval_data

    for name, value, least in (('batch_size', batch_size, 1), ('workers', workers, 0),
                               ('image_size', image_size, 8), ('eval_resize', eval_resize, 8)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise InvalidArgumentError(f'{name} must be a whole number >= {least}, got {value!r}')
    meta = checkpoint_metadata(checkpoint)
    recorded = meta.get('model')
    if model_name is None:  # the model the checkpoint records
        if not recorded:
            raise CheckpointError(f'{checkpoint} records no model name (not a checkpoint of scnet train): pass --model '
                                  '(`scnet models` lists them)')
        model_name = recorded
    other = other_model_message(checkpoint, recorded, model_name, f'pass --model {recorded}')
    if other:
        raise CheckpointError(other)
    trained_size = meta.get('image_size', 224)
    trained_resize = meta.get('eval_resize', 256 if trained_size == 224 else trained_size)
    size = image_size or trained_size
    # another crop keeps the checkpoint's ratio of resize to crop (as scnet train's recipes do)
    resize = eval_resize or max(size, round(size * trained_resize / trained_size))
    if resize < size:
        raise InvalidArgumentError(f'a resize of {resize} px (--resize) is smaller than the crop of {size} px '
                                   '(--image-size): the centre crop would be mostly padding; resize the short side '
                                   'to at least the crop, or leave --resize out')
    mean, std = meta.get('mean', IMAGENET_MEAN), meta.get('std', IMAGENET_STD)
    transform = eval_transform(size, resize, mean, std)
    ctx = distributed.setup(device)
    try:
        # shards or a Hugging Face dataset: their validation images; else a folder of class folders
        opened = open_eval_data(str(data), transform, skip_bad_images=skip_bad_images, rank=ctx.rank,
                                world_size=ctx.world_size)
        if opened is not None:
            dataset, classes, folder, loader_kwargs = opened
        else:
            folder = _class_folder(data)
            classes = find_classes(folder)
            dataset = CheckedImageFolder(folder, transform, classes=classes, skip_bad_images=skip_bad_images)
            loader_kwargs = {'sampler': StridedSampler(len(dataset), rank=ctx.rank, world_size=ctx.world_size)}
        saved = meta.get('classes')
        if saved is not None and saved != classes:
            only_ckpt = sorted(set(saved) - set(classes))
            only_data = sorted(set(classes) - set(saved))
            raise DataError(f'{folder}: its classes do not match the checkpoint\'s (only in the checkpoint: '
                            f'{", ".join(only_ckpt[:10]) or "-"}; only in the data: '
                            f'{", ".join(only_data[:10]) or "-"})')
        model = _build(model_name, checkpoint, {**meta.get('model_kwargs', {}), **(model_kwargs or {})})
        num_classes = getattr(model, 'num_classes', None)
        if saved is None and num_classes != len(classes):
            raise DataError(f'{folder}: {len(classes)} classes, but the checkpoint has {num_classes} classes '
                            f'and no class names; give data with exactly its {num_classes} classes (sorted order)')
        model.to(ctx.device)
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_skipping_bad,
                            **loader_kwargs)
        result = evaluate(model, loader, ctx, progress=progress, desc='eval')
    finally:
        distributed.teardown()
    return {'model': model_name, 'checkpoint': str(checkpoint), 'data': str(folder),
            'top1': result['val_top1'], 'top5': result['val_top5'], 'loss': result['val_loss'],
            'images': result['val_images'], 'skipped_images': result['val_skipped_images'],
            'classes': len(classes), 'image_size': size, 'eval_resize': resize,
            **({'model_kwargs': model_kwargs} if model_kwargs else {})}

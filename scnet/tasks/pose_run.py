"""Top-down keypoint runs: training (one process or torchrun), evaluation of a checkpoint, drawing predictions.

A training run's folder (``RunFolder``, as classification)::

    config.json         the recipe, the keypoints, the number of processes
    metrics.jsonl       one line per epoch: epoch, lr, train_loss, kpt_AP, kpt_AP50, kpt_AP75, kpt_APm, kpt_APl,
                        kpt_AR..., train_crops, crops_per_sec, epoch_time_s, eval_time_s
    tensorboard/        the same scalars
    last.pt             the full state after every epoch (model, optimiser, schedule, RNG states, metrics),
                        written atomically; ``--resume`` continues it
    model.safetensors   the final weights; the metadata says how to rebuild and run the network (backbone,
                        keypoint names and skeleton, input and heatmap sizes, head shape, normalisation)
    keypoints_val.json  the last evaluation's people in COCO's keypoint results format

Recipe (simple-baselines, ``scnet/recipes/pose/``): Adam, lr 1e-3, 140 epochs, lr x 0.1 after epochs 90 and
120 (``lr_steps``, written for ``schedule_epochs`` epochs and scaled to ``epochs``: ``--epochs 14`` decays after
9 and 12), batch 32 per GPU on 4 GPUs (``batch_size`` is global), the whole backbone fine-tuned with BN
statistics updated. The augmentation of crop ``i`` in epoch ``e`` depends only on (seed, e, i) and the data
order on (seed, e), so a resumed run repeats exactly what an uninterrupted one does (on CPU, bit for bit).
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from scnet.data.folders import BadImageError
from scnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from scnet.errors import CheckpointError, ScnetError
from scnet.tasks.coco_files import CocoDataError, load_coco
from scnet.tasks.pose_data import (Augment, Instance, KeypointSpec, PoseCropSet, PoseTrainSet, box_to_region,
                                   complete_annotations, gt_instances, load_detections)
from scnet.tasks.pose_eval import evaluate_pose, predict_keypoints
from scnet.tasks.pose_model import SimplePose, backbone_stride, build_pose_model
from scnet.train import distributed, schedule
from scnet.train.loop import NonFiniteLossError
from scnet.train.recipe import RECIPES_DIR, RecipeError, RecipeReader, check_settings, device_check
from scnet.train.run_folder import RunError, RunFolder
from scnet.train.state import load_state, restore_rng_states, seed_everything
from scnet.weights.io import read_metadata

__all__ = ['PoseRecipe', 'POSE_RECIPES_DIR', 'list_pose_recipes', 'load_pose_recipe', 'parse_image_size',
           'train_pose', 'load_pose_checkpoint', 'evaluate_pose_checkpoint', 'predict_pose', 'PoseError']

POSE_RECIPES_DIR = RECIPES_DIR / 'pose'
#: What a run's config.json records beside its recipe (left out when it is read back as a recipe).
RUN_RECORD_KEYS = ('keypoints', 'world_size', 'heatmap_size', 'stride', 'mean', 'std')
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff', '.ppm', '.pgm')


class PoseError(ScnetError):
    """A pose setting, checkpoint or input that cannot be used."""


def parse_image_size(value: Union[int, str, Sequence[int]]) -> List[int]:
    """``256`` (height; width = 3/4 of it) | ``'256x192'`` (height x width) | ``[256, 192]`` -> [h, w]."""
    if isinstance(value, str):
        parts = value.lower().replace(',', 'x').split('x')
        try:
            numbers = [int(p) for p in parts]
        except ValueError:
            raise RecipeError(f'image size {value!r}: expected HEIGHTxWIDTH (e.g. 256x192) or a height') from None
        return parse_image_size(numbers[0] if len(numbers) == 1 else numbers)
    if isinstance(value, (int, np.integer)):
        return [int(value), int(value) * 3 // 4]
    values = [int(v) for v in value]
    if len(values) != 2:
        raise RecipeError(f'image size {value!r}: expected [height, width]')
    return values


@dataclass
class PoseRecipe:
    """Every setting of a keypoint run (what its ``config.json`` records)."""

    backbone: str = 'scnet50'
    backbone_kwargs: Dict[str, Any] = field(default_factory=dict)
    backbone_checkpoint: Optional[str] = None   # ImageNet weights for the backbone (either layout)
    pretrained: bool = False                    # the authors' / timm's ImageNet weights (downloaded once)
    frozen_bn: bool = False
    trainable_layers: int = 5                   # 5: everything, stem included
    deconv_layers: Optional[int] = None         # None: up to stride 4 (3 on stride-32 backbones)
    deconv_channels: int = 256
    deconv_kernel: int = 4
    train_ann: Optional[str] = None
    train_images: Optional[str] = None
    val_ann: Optional[str] = None
    val_images: Optional[str] = None
    val_boxes: Optional[str] = None             # detection results for validation; None: ground-truth boxes
    box_score_thresh: float = 0.0
    image_size: Any = field(default_factory=lambda: [256, 192])   # height, width
    sigma: float = 2.0                          # Gaussian of the targets, in heatmap pixels
    box_padding: float = 1.25
    epochs: int = 140
    batch_size: int = 128                       # global: 32 per GPU x 4 GPUs
    optimizer: str = 'adam'
    lr: float = 1e-3
    momentum: float = 0.9                       # sgd only
    weight_decay: float = 0.0
    lr_steps: List[int] = field(default_factory=lambda: [90, 120])
    lr_gamma: float = 0.1
    schedule_epochs: Optional[int] = None       # the run length lr_steps are written for (None: epochs)
    scale_factor: float = 0.3
    rotation_factor: float = 40.0
    rotation_prob: float = 0.6
    flip: bool = True
    half_body_prob: float = 0.3
    half_body_min_joints: int = 8
    flip_test: bool = True
    kpt_score_thresh: float = 0.2
    nms_thresh: float = 0.9
    eval_every: int = 1
    eval_batch_size: Optional[int] = None       # per process; None: the training batch per process
    seed: int = 0
    workers: int = 4
    device: str = 'auto'
    amp: bool = False

    def __post_init__(self) -> None:
        self.image_size = parse_image_size(self.image_size)

    @property
    def milestones(self) -> List[int]:
        span = self.schedule_epochs or self.epochs
        return [max(1, int(round(s * self.epochs / span))) for s in self.lr_steps]

    def lr_factor(self, finished_epochs: int) -> float:
        return schedule.lr_factor(finished_epochs, milestones=self.milestones, gamma=self.lr_gamma)

    @property
    def augment(self) -> Augment:
        return Augment(self.scale_factor, self.rotation_factor, self.rotation_prob, self.flip, self.half_body_prob,
                       self.half_body_min_joints)

    def validate(self) -> 'PoseRecipe':
        checks = [
            (self.epochs >= 1, f'epochs must be >= 1, got {self.epochs}'),
            (self.batch_size >= 1, f'batch_size must be >= 1, got {self.batch_size}'),
            (self.lr > 0, f'lr must be > 0, got {self.lr}'),
            (self.optimizer in ('adam', 'sgd'), f"optimizer must be adam or sgd, got {self.optimizer!r}"),
            (self.sigma > 0, f'sigma must be > 0, got {self.sigma}'),
            (min(self.image_size) >= 16, f'image_size must be at least 16x16, got {self.image_size}'),
            (0 <= self.scale_factor < 1, f'scale_factor must be within [0, 1), got {self.scale_factor}'),
            (self.eval_every >= 1, f'eval_every must be >= 1, got {self.eval_every}'),
            (self.workers >= 0, f'workers must be >= 0, got {self.workers}'),
            (self.deconv_layers is None or self.deconv_layers >= 0,
             f'deconv_layers must be >= 0, got {self.deconv_layers}'),
            (self.box_padding >= 1, f'box_padding must be >= 1, got {self.box_padding}'),
            device_check(self.device),
        ]
        check_settings(checks)
        return self

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


_READER = RecipeReader(PoseRecipe, POSE_RECIPES_DIR, RUN_RECORD_KEYS, label='pose recipe')


def list_pose_recipes() -> List[str]:
    return _READER.names()


def load_pose_recipe(config: Optional[str] = None, **overrides: Any) -> PoseRecipe:
    """The recipe of ``config`` (a YAML file, a run's config.json or a shipped name) with ``overrides`` (not
    None) on top. ``lr_steps`` of a file are kept relative to its ``epochs``: ``--epochs`` rescales them."""
    settings = _READER.read(config)
    if settings.get('schedule_epochs') is None:   # the steps are written for the file's own epochs
        settings['schedule_epochs'] = settings.get('epochs', PoseRecipe.epochs)
    return _READER.build({**settings, **_READER.overrides(overrides)})


# ------------------------------------------------------------------------------------------------ helpers

def _build(recipe: PoseRecipe, num_keypoints: int, *, with_weights: bool = True) -> SimplePose:
    from scnet.models.factory import validate_model_name

    validate_model_name(recipe.backbone)
    try:
        model = build_pose_model(recipe.backbone, num_keypoints,
                                 checkpoint=recipe.backbone_checkpoint if with_weights else None,
                                 pretrained=recipe.pretrained and with_weights and not recipe.backbone_checkpoint,
                                 backbone_kwargs=recipe.backbone_kwargs, frozen_bn=recipe.frozen_bn,
                                 trainable_layers=recipe.trainable_layers, deconv_layers=recipe.deconv_layers,
                                 deconv_channels=recipe.deconv_channels, deconv_kernel=recipe.deconv_kernel)
    except TypeError as e:
        raise PoseError(f'backbone {recipe.backbone}: {e}') from None
    stride = backbone_stride(model.backbone)
    h, w = recipe.image_size
    if h % stride or w % stride:
        raise PoseError(f'image size {h}x{w}: height and width must be multiples of {stride}, the stride of '
                        f'{recipe.backbone}\'s last stage (e.g. {stride * max(1, round(h / stride))}x'
                        f'{stride * max(1, round(w / stride))})')
    if stride % 2 ** model.deconv_layers:
        raise PoseError(f'{model.deconv_layers} deconvolution layers up-sample {recipe.backbone}\'s stride-{stride} '
                        'features beyond the input resolution; use fewer')
    return model


def _require(recipe: PoseRecipe, *names: str) -> None:
    missing = [n for n in names if not getattr(recipe, n)]
    if missing:
        flags = ', '.join('--' + n.replace('_', '-') for n in missing)
        raise PoseError(f'missing {flags} (or the same settings in the --config recipe)')


def _load_split(ann: str, images: str) -> Tuple[Any, KeypointSpec]:
    try:
        coco = load_coco(Path(ann), Path(images), task='keypoints')
    except KeyError as e:   # pycocotools indexes by fields load_coco does not check (an annotation's "id")
        raise CocoDataError(f'{ann}: an image, annotation or category lacks the {e} field that COCO files '
                            'have') from None
    complete_annotations(coco)
    return coco, KeypointSpec.from_coco(coco, ann)


def _check_same_keypoints(spec: KeypointSpec, other: KeypointSpec, what: str, source: str) -> None:
    if spec.names != other.names:
        raise CocoDataError(f'{source}: its keypoints ({other.num}: {", ".join(other.names[:6])}...) differ from '
                            f'{what} ({spec.num}: {", ".join(spec.names[:6])}...)')


def _val_instances(coco, spec: KeypointSpec, recipe_like, images_dir: str, boxes: Optional[str]) -> List[Instance]:
    h, w = recipe_like.image_size
    if boxes:
        out = load_detections(Path(boxes), coco, spec, w / h, Path(images_dir),
                              score_thresh=recipe_like.box_score_thresh, padding=recipe_like.box_padding)
        if not out:
            raise CocoDataError(f'{boxes}: no person boxes (category {spec.category_id}) scoring at least '
                                f'{recipe_like.box_score_thresh} for the images of the annotation file')
        return out
    out = gt_instances(coco, Path(images_dir), spec, w / h, recipe_like.box_padding, with_keypoints=False)
    if not out:
        raise CocoDataError('the validation annotations hold no person with labelled keypoints')
    return out


def _autocast(device: torch.device, enabled: bool):
    import contextlib
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if device.type == 'cpu' else torch.float16)


def heatmap_loss(heatmaps: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """simple-baselines' JointsMSELoss with target weights: 0.5 x mean over keypoints of the MSE of
    weighted heatmaps (a keypoint of weight 0 contributes nothing)."""
    w = weights[:, :, None, None]
    return 0.5 * ((heatmaps.float() * w - targets * w) ** 2).mean()


def _train_epoch(model, loader, optimizer, ctx, recipe: PoseRecipe, epoch: int, scaler, progress: bool):
    model.train()
    sums = torch.zeros(2, dtype=torch.float64)   # loss x crops, crops
    bar = tqdm(total=len(loader), desc=f'epoch {epoch} train', unit='step',
               disable=None if (progress and ctx.is_main) else True, dynamic_ncols=True, leave=False)
    start = time.perf_counter()
    iterator = iter(loader)
    step = 0
    while True:
        try:
            images, targets, weights = next(iterator)
        except StopIteration:
            break
        except BadImageError as e:
            from scnet.tasks.pose_eval import _unwrap_worker_error
            raise _unwrap_worker_error(e) from None
        step += 1
        images = images.to(ctx.device, non_blocking=True)
        targets, weights = targets.to(ctx.device, non_blocking=True), weights.to(ctx.device, non_blocking=True)
        with _autocast(ctx.device, recipe.amp):
            loss = heatmap_loss(model(images), targets, weights)
        check = distributed.all_reduce_sum(loss.detach().double().reshape(1).cpu())
        if not math.isfinite(float(check)):
            raise NonFiniteLossError(f'the loss became non-finite at epoch {epoch}, step {step}')
        optimizer.zero_grad(set_to_none=True)
        if scaler:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        sums += torch.tensor([float(loss.detach()) * len(images), len(images)], dtype=torch.float64)
        if ctx.is_main:
            bar.update(1)
            bar.set_postfix_str(f'loss {sums[0] / max(sums[1], 1):.3e}')
    bar.close()
    elapsed = time.perf_counter() - start
    total = distributed.all_reduce_sum(sums)
    n = max(float(total[1]), 1.0)
    return {'train_loss': float(total[0]) / n, 'train_crops': int(total[1]),
            'crops_per_sec': float(total[1]) / max(elapsed, 1e-9), 'epoch_time_s': elapsed}


def _metadata(recipe: PoseRecipe, spec: KeypointSpec, model: SimplePose) -> Dict[str, str]:
    stride = model.stride
    h, w = recipe.image_size
    return {'task': 'pose', 'backbone': recipe.backbone, 'backbone_kwargs': json.dumps(recipe.backbone_kwargs),
            'keypoints': json.dumps(spec.to_dict()), 'input_size': json.dumps([h, w]),
            'heatmap_size': json.dumps([h // stride, w // stride]), 'stride': str(stride),
            'sigma': str(recipe.sigma), 'box_padding': str(recipe.box_padding),
            'deconv_layers': str(model.deconv_layers), 'deconv_channels': str(recipe.deconv_channels),
            'deconv_kernel': str(recipe.deconv_kernel), 'mean': json.dumps(list(IMAGENET_MEAN)),
            'std': json.dumps(list(IMAGENET_STD))}


def _epoch_line(row: Dict[str, Any], epochs: int) -> str:
    text = f"epoch {row['epoch']}/{epochs}  lr {row['lr']:.3g}  train loss {row['train_loss']:.4e}"
    if 'kpt_AP' in row:
        text += (f"  AP {row['kpt_AP']:.2f}  AP50 {row['kpt_AP50']:.2f}  AP75 {row['kpt_AP75']:.2f}  "
                 f"AR {row['kpt_AR']:.2f}")
    text += f"  {row['crops_per_sec']:.0f} crops/s  {row['epoch_time_s']:.1f}s"
    if 'eval_time_s' in row:
        text += f" (+{row['eval_time_s']:.1f}s eval)"
    return text


# -------------------------------------------------------------------------------------------------- train

def train_pose(recipe: PoseRecipe, output: Path, *, resume: bool = False, progress: bool = True) -> Dict[str, Any]:
    """Run ``recipe`` into ``output`` (see the module docstring); returns the last epoch's metrics."""
    from scnet.weights import save_state_dict

    output = Path(output)
    ctx = distributed.setup(recipe.device)
    try:
        run = RunFolder(output, resume=resume, is_main=ctx.is_main, final_files=('model.safetensors',))
        state = run.state
        _require(recipe, 'train_ann', 'train_images', 'val_ann', 'val_images')
        # every input is checked before the first step
        train_coco, spec = _load_split(recipe.train_ann, recipe.train_images)
        val_coco, val_spec = _load_split(recipe.val_ann, recipe.val_images)
        _check_same_keypoints(spec, val_spec, f'those of {recipe.train_ann}', recipe.val_ann)
        if state is not None:
            _check_same_keypoints(KeypointSpec.from_dict(state['keypoints']), spec, 'the run\'s (last.pt)',
                                  recipe.train_ann)
        h, w = recipe.image_size
        train_instances = gt_instances(train_coco, Path(recipe.train_images), spec, w / h, recipe.box_padding)
        if not train_instances:
            raise CocoDataError(f'{recipe.train_ann}: no person with labelled keypoints to train on')
        val_instances = _val_instances(val_coco, val_spec, recipe, recipe.val_images, recipe.val_boxes)

        seed_everything(recipe.seed)   # the same initial weights in every process
        model = _build(recipe, spec.num, with_weights=state is None)   # a resumed run has its own weights
        stride = model.stride
        if recipe.batch_size % ctx.world_size:
            raise RecipeError(f'batch size {recipe.batch_size} is not divisible by the {ctx.world_size} processes')
        per_process = recipe.batch_size // ctx.world_size
        train_set = PoseTrainSet(train_instances, spec, recipe.image_size, stride, recipe.sigma, recipe.augment,
                                 seed=recipe.seed)
        val_set = PoseCropSet(val_instances, recipe.image_size)
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
        scaler = torch.amp.GradScaler('cuda') if recipe.amp and ctx.device.type == 'cuda' else None
        if state is not None:
            if state['config']['backbone'] != recipe.backbone:
                raise RunError(f'{output}: last.pt is a run of {state["config"]["backbone"]}; resume it with the '
                               'same --backbone')
            try:
                model.load_state_dict(state['model'])
            except RuntimeError as e:
                raise RunError(f'{output}: last.pt does not fit the network of these settings '
                               f'({str(e).splitlines()[0]}); resume with the run\'s own settings') from None
            optimizer.load_state_dict(state['optimizer'])
            scheduler.load_state_dict(state['scheduler'])
            if scaler and state.get('scaler'):
                scaler.load_state_dict(state['scaler'])
            restore_rng_states(state['rng'])
        train_model = model
        if ctx.distributed:
            train_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[ctx.device.index] if ctx.device.type == 'cuda' else None)

        config = dict(recipe.to_dict(), keypoints=spec.to_dict(), world_size=ctx.world_size,
                      heatmap_size=[h // stride, w // stride], stride=stride, mean=list(IMAGENET_MEAN),
                      std=list(IMAGENET_STD))
        run.start(config)
        # the last partial batch is dropped: a batch of one crop cannot train BN (nor SC-Conv's pooled maps)
        drop_last = len(sampler) > per_process
        eval_batch = recipe.eval_batch_size or per_process
        evaluation: Dict[str, Any] = {}
        for epoch in range(run.start_epoch + 1, recipe.epochs + 1):
            torch.manual_seed(recipe.seed * 100_003 + epoch * 1_009 + ctx.rank)
            sampler.set_epoch(epoch)
            train_set.epoch = epoch
            loader = DataLoader(train_set, batch_size=per_process, sampler=sampler, num_workers=recipe.workers,
                                drop_last=drop_last, pin_memory=ctx.device.type == 'cuda')
            lr = optimizer.param_groups[0]['lr']
            try:
                row = _train_epoch(train_model, loader, optimizer, ctx, recipe, epoch, scaler, progress)
            except NonFiniteLossError as e:
                kept = f'{output / "last.pt"} (epoch {epoch - 1})' if epoch > 1 else 'none yet'
                raise NonFiniteLossError(f'{e}; nothing of this epoch was saved, last good checkpoint: {kept}. '
                                         'Lower the learning rate (--lr) or check the data') from None
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
                                'config': config})
            if ctx.is_main:
                print(_epoch_line(row, recipe.epochs), flush=True)
                if evaluation.get('results'):
                    (output / 'keypoints_val.json').write_text(json.dumps(evaluation['results']))
            distributed.barrier()

        if ctx.is_main:
            save_state_dict(model.state_dict(), output / 'model.safetensors',
                            metadata=_metadata(recipe, spec, model))
        run.close()
        return run.history[-1] if run.history else {}
    finally:
        distributed.teardown()


# ----------------------------------------------------------------------------------- checkpoint, eval, predict

@dataclass
class PoseCheckpoint:
    model: SimplePose
    spec: KeypointSpec
    input_size: List[int]
    stride: int
    backbone: str
    box_padding: float = 1.25


def load_pose_checkpoint(path: Path) -> PoseCheckpoint:
    """The network of a ``scnet pose train`` checkpoint: its ``model.safetensors`` or its ``last.pt``."""
    from scnet.weights import read_state_dict

    path = Path(path)
    if path.is_dir():
        path = path / 'model.safetensors' if (path / 'model.safetensors').is_file() else path / 'last.pt'
    if not path.is_file():
        raise CheckpointError(f'{path}: no such checkpoint file')
    meta = read_metadata(path)
    if meta or path.suffix == '.safetensors':   # a .safetensors file without pose metadata is refused here too
        if meta.get('task') != 'pose':
            raise CheckpointError(f'{path}: not a pose checkpoint (its metadata does not say how to build the pose '
                                  'network); give the model.safetensors or last.pt of `scnet pose train`')
        settings = dict(backbone=meta['backbone'], backbone_kwargs=json.loads(meta['backbone_kwargs']),
                        image_size=json.loads(meta['input_size']), deconv_layers=int(meta['deconv_layers']),
                        deconv_channels=int(meta['deconv_channels']), deconv_kernel=int(meta['deconv_kernel']),
                        box_padding=float(meta.get('box_padding', 1.25)))
        spec = KeypointSpec.from_dict(json.loads(meta['keypoints']))
        weights = read_state_dict(path)
    else:
        state = load_state(path)
        if not isinstance(state, dict) or 'keypoints' not in state or 'config' not in state:
            raise CheckpointError(f'{path}: not a pose training state; give the model.safetensors or last.pt of '
                                  '`scnet pose train`')
        cfg = state['config']
        settings = {k: cfg[k] for k in ('backbone', 'backbone_kwargs', 'image_size', 'deconv_layers',
                                         'deconv_channels', 'deconv_kernel', 'box_padding')}
        spec = KeypointSpec.from_dict(state['keypoints'])
        weights = state['model']
    recipe = PoseRecipe(**settings)
    model = _build(recipe, spec.num, with_weights=False)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f'{path}: its weights do not fit the network its metadata describes '
                              f'({str(e).splitlines()[0]})') from None
    model.eval()
    return PoseCheckpoint(model, spec, recipe.image_size, model.stride, recipe.backbone, recipe.box_padding)


def evaluate_pose_checkpoint(checkpoint: Path, val_ann: Path, val_images: Path, *, boxes: Optional[Path] = None,
                             box_score_thresh: float = 0.0, flip_test: bool = True, batch_size: int = 32,
                             workers: int = 2, device: str = 'auto', progress: bool = True,
                             results_file: Optional[Path] = None) -> Dict[str, Any]:
    """OKS metrics of ``checkpoint`` on a COCO keypoint annotation file (person boxes: ground truth, or a
    detection-results file ``boxes``)."""
    ck = load_pose_checkpoint(checkpoint)
    coco, spec = _load_split(str(val_ann), str(val_images))
    _check_same_keypoints(ck.spec, spec, 'the checkpoint\'s', str(val_ann))
    settings = PoseRecipe(image_size=ck.input_size, box_score_thresh=box_score_thresh, box_padding=ck.box_padding)
    instances = _val_instances(coco, spec, settings, str(val_images), str(boxes) if boxes else None)
    dataset = PoseCropSet(instances, ck.input_size)
    ctx = distributed.setup(device)
    try:
        ck.model.to(ctx.device)
        start = time.perf_counter()
        evaluation = evaluate_pose(ck.model, dataset, coco, spec, ctx, flip_test=flip_test, batch_size=batch_size,
                                   workers=workers, stride=ck.stride, progress=progress, desc='eval')
        elapsed = time.perf_counter() - start
        if ctx.is_main and results_file:
            Path(results_file).write_text(json.dumps(evaluation['results']))
    finally:
        distributed.teardown()
    return {'checkpoint': str(checkpoint), 'backbone': ck.backbone, 'val_ann': str(val_ann),
            'boxes': str(boxes) if boxes else 'ground truth', 'flip_test': flip_test,
            'input_size': list(ck.input_size), **evaluation['metrics'], 'eval_time_s': round(elapsed, 3)}


def _image_files(inputs: Sequence[str]) -> List[Path]:
    files: List[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob('*') if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise PoseError(f'{p}: no image files in this folder ({", ".join(IMAGE_SUFFIXES)})')
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise PoseError(f'{p}: no such image file or folder')
    return files


def _read_person_boxes(path: Path) -> Dict[str, List[Tuple[List[float], float]]]:
    """{file name: [(box, score)]} from ``{"name.jpg": [[x, y, w, h(, score)], ...]}`` or
    ``[{"file_name": "name.jpg", "bbox": [x, y, w, h], "score": s}, ...]``."""
    path = Path(path)
    if not path.is_file():
        raise PoseError(f'{path}: no such box file')
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PoseError(f'{path}: not JSON ({e})') from None
    out: Dict[str, List[Tuple[List[float], float]]] = {}

    def add(name, box, score, where):
        if not (isinstance(box, (list, tuple)) and len(box) in (4, 5) and
                all(isinstance(v, (int, float)) for v in box)):
            raise PoseError(f'{path}: {where}: a box is [x, y, w, h] or [x, y, w, h, score], got {box!r}')
        if box[2] <= 0 or box[3] <= 0:
            raise PoseError(f'{path}: {where}: box {list(box)} has zero or negative area')
        out.setdefault(str(name), []).append(([float(v) for v in box[:4]], float(box[4] if len(box) == 5 else score)))

    if isinstance(data, dict):
        for name, boxes in data.items():
            if not isinstance(boxes, list):
                raise PoseError(f'{path}: {name}: expected a list of boxes')
            for box in boxes:
                add(name, box, 1.0, name)
    elif isinstance(data, list):
        for i, item in enumerate(data):
            name = item.get('file_name', item.get('image')) if isinstance(item, dict) else None
            if name is None or 'bbox' not in item:
                raise PoseError(f'{path}: entry #{i}: expected {{"file_name", "bbox": [x, y, w, h], "score"}}')
            add(name, item['bbox'], float(item.get('score', 1.0)), f'entry #{i}')
    else:
        raise PoseError(f'{path}: expected {{"image.jpg": [[x, y, w, h], ...]}} or a list of '
                        '{"file_name", "bbox", "score"}')
    return out


def predict_pose(checkpoint: Path, inputs: Sequence[str], output: Path, *, boxes: Optional[Path] = None,
                 kpt_thresh: float = 0.2, box_score_thresh: float = 0.0, flip_test: bool = True,
                 device: str = 'auto', batch_size: int = 16) -> List[Path]:
    """Draw the keypoints and skeleton of every person on each image; PNGs (and keypoints.json) in ``output``.
    People: the boxes of ``boxes`` for each image (by file name), or the whole image as one person."""
    from PIL import Image
    from torchvision.utils import draw_bounding_boxes, draw_keypoints

    from scnet.data.folders import decode_rgb

    ck = load_pose_checkpoint(checkpoint)
    files = _image_files(inputs)
    person_boxes = _read_person_boxes(boxes) if boxes else None
    h, w = ck.input_size
    instances: List[Instance] = []
    sizes = {}
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                sizes[i] = im.size
        except (OSError, SyntaxError, ValueError) as e:
            raise BadImageError(f'{f}: unreadable image ({e})') from None
        if person_boxes is None:
            entries = [([0.0, 0.0, float(sizes[i][0]), float(sizes[i][1])], 1.0)]
        else:
            entries = person_boxes.get(str(f), person_boxes.get(f.name, []))
        for box, score in entries:
            if score < box_score_thresh:
                continue
            centre, size = box_to_region(box, w / h, ck.box_padding)
            instances.append(Instance(i, str(f), centre, size, score))
    dataset = PoseCropSet(instances, ck.input_size)
    ctx = distributed.Context(0, 1, 0, distributed._device(device, 0))
    ck.model.to(ctx.device)
    crops = predict_keypoints(ck.model, dataset, ck.spec, ctx, flip_test=flip_test, batch_size=batch_size,
                              stride=ck.stride, progress=False, all_crops=True) if instances else []
    people: Dict[int, List[Dict[str, Any]]] = {}
    for crop in crops:
        inst = instances[crop['index']]
        people.setdefault(inst.image_id, []).append({'keypoints': crop['keypoints'], 'score': inst.score,
                                                     'centre': inst.centre, 'size': inst.size})
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    written, record, used = [], [], set()
    for i, f in enumerate(files):
        image = torch.from_numpy(np.array(decode_rgb(str(f)))).permute(2, 0, 1).contiguous()
        found = people.get(i, [])
        side = min(image.shape[1:])
        if found:
            kps = torch.tensor(np.stack([p['keypoints'] for p in found]), dtype=torch.float32)
            box_xyxy = torch.tensor([[*(p['centre'] - p['size'] / 2 / ck.box_padding),
                                      *(p['centre'] + p['size'] / 2 / ck.box_padding)] for p in found],
                                    dtype=torch.float32)
            if person_boxes is not None:
                image = draw_bounding_boxes(image, box_xyxy, colors='yellow', width=max(1, side // 200))
            image = draw_keypoints(image, kps[..., :2], connectivity=ck.spec.skeleton or None, colors='red',
                                   radius=max(2, side // 80), width=max(1, side // 150),
                                   visibility=kps[..., 2] > kpt_thresh)
        stem = f.stem
        name = f'{stem}.png'
        k = 1
        while name in used:
            k += 1
            name = f'{stem}_{k}.png'
        used.add(name)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(output / name)
        written.append(output / name)
        record.append({'image': str(f), 'drawing': name, 'people': [
            {'score': round(p['score'], 4), 'keypoints': {n: [round(float(v), 2) for v in p['keypoints'][j]]
                                                           for j, n in enumerate(ck.spec.names)}}
            for p in found]})
    (output / 'keypoints.json').write_text(json.dumps(record, indent=1))
    return written

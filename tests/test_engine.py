"""The run skeleton the three tasks share (scnet.train.engine), their checkpoint metadata, their evaluation
report and their flags made from the recipes: unit-sized, no training."""
import dataclasses
import json
import random

import numpy as np
import pytest
import torch

from scnet.cli.main import build_parser
from scnet.cli.recipe_flags import recipe_overrides
from scnet.data.folders import BadImageError
from scnet.errors import CheckpointError
from scnet.tasks.detection import DetectionMetadata, DetectionRecipe
from scnet.tasks.eval_report import EvalReport
from scnet.tasks.pose import PoseMetadata, PoseRecipe, load_pose_checkpoint
from scnet.tasks.pose.model import build_pose_model
from scnet.train import engine
from scnet.train.distributed import Context
from scnet.train.recipe import Recipe
from scnet.train.state import save_atomic
from scnet.weights import save_state_dict

CPU = Context(0, 1, 0, torch.device('cpu'))


def test_epoch_seed_depends_on_seed_epoch_and_process_only():
    def draws(seed, epoch, rank):
        torch.manual_seed(123)   # whatever came before
        engine.seed_epoch(seed, epoch, rank)
        return torch.rand(1).item(), random.random(), float(np.random.rand())

    assert draws(0, 3, 0) == draws(0, 3, 0)
    assert len({draws(0, 3, 0), draws(0, 4, 0), draws(0, 3, 1), draws(1, 3, 0)}) == 4


def test_worker_errors_reach_the_user_as_their_own_line():
    wrapped = BadImageError('Caught BadImageError in DataLoader worker process 0.\nOriginal Traceback (most '
                            'recent call last):\n  File "x.py", line 1\nscnet.data.folders.BadImageError: a.png: '
                            'unreadable image')
    e = engine.unwrap_worker_error(wrapped)
    assert type(e) is BadImageError and str(e) == 'a.png: unreadable image'
    plain = BadImageError('b.png: unreadable')
    assert engine.unwrap_worker_error(plain) is plain

    class Loader(list):
        def __iter__(self):
            yield 1
            raise wrapped

    with pytest.raises(BadImageError, match='^a.png: unreadable image$'):
        list(engine.batches(Loader([1, 2]), CPU, desc='val'))
    assert list(engine.batches([1, 2, 3])) == [1, 2, 3]


def test_non_finite_loss_names_the_step_the_losses_and_the_last_good_checkpoint(tmp_path):
    engine.check_finite(torch.tensor([1.0, 2.0]), epoch=1, step=1)
    with pytest.raises(engine.NonFiniteLossError) as e:
        with engine.keep_last_good(tmp_path, epoch=3):
            engine.check_finite(torch.tensor([0.5, float('nan')]), epoch=3, step=7, names=['box', 'mask'])
    message = str(e.value)
    assert message.startswith('the loss became non-finite at epoch 3, step 7 (box 0.5, mask nan)')
    assert f'last good checkpoint: {tmp_path / "last.pt"} (epoch 2)' in message and '--lr' in message
    with pytest.raises(engine.NonFiniteLossError, match='none yet'):
        with engine.keep_last_good(tmp_path, epoch=1):
            engine.check_finite(torch.tensor(float('inf')), epoch=1, step=1)


def test_a_state_with_non_finite_tensors_is_refused_where_it_would_be_saved(tmp_path):
    state = {'model': {'w': torch.ones(2), 'steps': torch.tensor(3)}, 'optimizer': {'state': {0: {
        'momentum_buffer': torch.zeros(2)}}, 'param_groups': [{'lr': 0.1}]}, 'ema': None}
    engine.check_state_finite(state, where='epoch 1, step 1')
    state['optimizer']['state'][0]['momentum_buffer'][1] = float('nan')  # deep inside the optimiser's state
    with pytest.raises(engine.NonFiniteLossError, match=r'^the weights became non-finite at epoch 4, step 2'):
        engine.check_state_finite(state, where='epoch 4, step 2')
    # at the end of the epoch's training, with the step of the epoch that last.pt holds
    with pytest.raises(engine.NonFiniteLossError) as e:
        with engine.keep_last_good(tmp_path, epoch=4, state=lambda: state, saved_step=lambda: 3):
            pass
    assert str(e.value).startswith('the weights became non-finite at the end of epoch 4')
    assert f'the state of step 3 of this epoch was saved, last good checkpoint: {tmp_path / "last.pt"} ' \
           '(epoch 4, step 3)' in str(e.value)
    state['optimizer']['state'][0]['momentum_buffer'][1] = 0.0
    with engine.keep_last_good(tmp_path, epoch=4, state=lambda: state):
        pass


def test_pieces_of_a_single_cpu_process():
    model = torch.nn.Linear(2, 2)
    assert engine.wrap_ddp(model, CPU) is model and engine.grad_scaler(CPU.device, amp=True) is None
    with engine.autocast(CPU.device, True):
        assert model(torch.ones(1, 2)).dtype == torch.bfloat16
    row = {'epoch': 2, 'lr': 0.01, 'train_loss': 0.5, 'images_per_sec': 10.0, 'epoch_time_s': 3.0}
    assert engine.epoch_line(row, 5, '  AP 1.0', extra=' !') == \
        'epoch 2/5  lr 0.01  train loss 0.5000  AP 1.0  10 img/s  3.0s !'


DETECTION = DetectionMetadata(task='segm', backbone='scnet26', backbone_kwargs={'width': 8}, trainable_layers=5,
                              frozen_bn=False, categories=[{'id': 1, 'name': 'disc'}], min_size=96, max_size=160,
                              detector=DetectionRecipe().arch())


def pose_metadata(**changes):
    return dataclasses.replace(PoseMetadata(
        backbone='resnet26_cifar', backbone_kwargs={}, keypoints={'names': ['a', 'b'], 'skeleton': [[0, 1]],
                                                                  'category_id': 1},
        image_size=[32, 24], heatmap_size=[8, 6], stride=4, deconv_layers=1, deconv_channels=8, deconv_kernel=4),
        **changes)


def test_checkpoint_metadata_reads_back_under_the_same_names_in_both_tasks():
    pose = pose_metadata()
    for meta in (DETECTION, pose):
        written = meta.to_metadata()
        assert all(isinstance(v, str) for v in written.values())
        assert set(written) == {f.name for f in dataclasses.fields(meta)}
        assert type(meta).from_metadata(written) == meta
    shared = {'task', 'backbone', 'backbone_kwargs', 'trainable_layers', 'frozen_bn'}
    assert shared <= set(DETECTION.to_metadata()) & set(pose.to_metadata())
    assert DETECTION.to_metadata()['task'] == 'segm' and DETECTION.to_metadata()['frozen_bn'] == 'false'
    # the recipe's name for the crop size, in the recipe and in the checkpoint
    assert 'image_size' in pose.to_metadata() and 'image_size' in {f.name for f in dataclasses.fields(PoseRecipe)}
    with pytest.raises(CheckpointError, match="x.safetensors: its metadata has no 'stride'"):
        PoseMetadata.from_metadata({k: v for k, v in pose.to_metadata().items() if k != 'stride'}, 'x.safetensors')
    # the run settings of a last.pt written before it carried its metadata
    config = dict(DetectionRecipe(task='segm', backbone='scnet26', backbone_kwargs={'width': 8}, min_size=96,
                                  max_size=160).to_dict(), categories=DETECTION.categories,
                  resolved_trainable_layers=5, resolved_frozen_bn=False)
    assert DetectionMetadata.from_old_state({'config': config}) == DETECTION


def test_pose_checkpoints_of_the_old_code_still_load(tmp_path):
    """Files written before the keys were unified: ``input_size`` for ``image_size``, no trainable_layers /
    frozen_bn in model.safetensors, no metadata in last.pt."""
    meta = pose_metadata()
    model = build_pose_model('resnet26_cifar', 2, deconv_layers=1, deconv_channels=8)
    old = {k: v for k, v in meta.to_metadata().items() if k not in ('trainable_layers', 'frozen_bn', 'image_size')}
    old['input_size'] = json.dumps([32, 24])
    save_state_dict(model.state_dict(), tmp_path / 'model.safetensors', metadata=old)
    loaded = load_pose_checkpoint(tmp_path / 'model.safetensors')
    assert loaded.input_size == [32, 24] and loaded.stride == 4 and loaded.spec.names == ['a', 'b']
    config = dict(PoseRecipe(backbone='resnet26_cifar', image_size=[32, 24], deconv_layers=1,
                             deconv_channels=8).to_dict(), heatmap_size=[8, 6], stride=4)
    save_atomic({'model': model.state_dict(), 'config': config, 'keypoints': meta.keypoints}, tmp_path / 'last.pt')
    again = load_pose_checkpoint(tmp_path / 'last.pt')
    assert again.input_size == [32, 24] and again.spec.skeleton == [(0, 1)]
    assert all(torch.equal(a, b) for a, b in zip(loaded.model.state_dict().values(),
                                                 again.model.state_dict().values()))


def test_eval_reports_of_both_tasks_have_one_shape():
    keys = {f.name for f in dataclasses.fields(EvalReport)}
    assert keys == {'task', 'checkpoint', 'backbone', 'annotations', 'images', 'metrics', 'counts', 'settings',
                    'eval_time_s'}
    report = EvalReport('pose', 'c', 'scnet50', 'a.json', 3, {'kpt_AP': 1.0}).to_dict()
    assert set(report) == keys and json.loads(json.dumps(report)) == report


def parse(*argv):
    return build_parser().parse_args(list(argv))


def test_task_flags_are_made_from_the_recipes_and_reach_them():
    args = parse('pose', 'train', '--boxes', 'b.json', '--no-flip-test', '--image-size', '128x96', '--no-pretrained',
                 '--epochs', '3', '--lr', '0.5', '--amp', '--seed', '2')
    got = {k: v for k, v in recipe_overrides(args, PoseRecipe).items() if v is not None}
    assert got == dict(val_boxes='b.json', flip_test=False, image_size='128x96', pretrained=False, epochs=3, lr=0.5,
                       amp=True, seed=2)
    assert PoseRecipe(**got).image_size == [128, 96]
    args = parse('detect', 'train', '--task', 'segm', '--backbone-checkpoint', 'pretrained', '--batch-size', '4',
                 '--image-size', '96')
    got = {k: v for k, v in recipe_overrides(args, DetectionRecipe).items() if v is not None}
    assert got == dict(task='segm', backbone_checkpoint='pretrained', batch_size=4)   # --image-size: min/max
    got = {k: v for k, v in recipe_overrides(parse('train', '--drop-path', '0.1', '--no-decay-norm-and-bias',
                                                   '--init', 'w.pt'), Recipe).items() if v is not None}
    assert got == dict(drop_path_rate=0.1, decay_norm_and_bias=False, init='w.pt')
    eval_args = parse('pose', 'eval', '--checkpoint', 'c', '--val-ann', 'a', '--val-images', 'i', '--boxes', 'b')
    assert (eval_args.val_boxes, eval_args.flip_test) == ('b', True)
    with pytest.raises(SystemExit):
        parse('pose', 'eval', '--checkpoint', 'c')   # --val-ann and --val-images are required there
    with pytest.raises(SystemExit):
        parse('detect', 'train', '--task', 'keypoints')


def test_classifier_metadata_reads_back_what_train_writes_and_old_files(tmp_path):
    from scnet.train.checkpoint_eval import checkpoint_metadata
    from scnet.train.classifier_checkpoint import ClassifierMetadata, read_classifier_metadata

    meta = ClassifierMetadata(model='resnet26_cifar', classes=['a', 'b'], image_size=224, eval_resize=256,
                              mean=[0.5] * 3, std=[0.25] * 3, model_kwargs={'channels': [8, 16, 32, 64]},
                              initial_weights={'source': 'checkpoint', 'location': '/x', 'sha256': '0' * 64,
                                               'sha256_of': 'file'}, train_image_size=160)
    written = meta.to_metadata()
    assert set(written) == {f.name for f in dataclasses.fields(meta)} and written['model'] == 'resnet26_cifar'
    assert ClassifierMetadata.from_metadata(written) == meta
    model = build_pose_model('resnet26_cifar', 2, deconv_layers=1, deconv_channels=8)  # any tensors will do
    save_state_dict(model.state_dict(), tmp_path / 'new.safetensors', metadata=written)
    assert read_classifier_metadata(tmp_path / 'new.safetensors') == meta
    # a file of the code before the dataclass: sizes as plain digits, no initial_weights nor train_image_size
    old = {'model': 'scnet26_cifar', 'classes': '["a", "b"]', 'image_size': '32', 'eval_resize': '32',
           'mean': '[0.5, 0.5, 0.5]', 'std': '[0.25, 0.25, 0.25]', 'model_kwargs': '{}'}
    save_state_dict(model.state_dict(), tmp_path / 'old.safetensors', metadata=old)
    assert checkpoint_metadata(tmp_path / 'old.safetensors') == {
        'model': 'scnet26_cifar', 'classes': ['a', 'b'], 'image_size': 32, 'eval_resize': 32, 'mean': [0.5] * 3,
        'std': [0.25] * 3, 'model_kwargs': {}}
    # `scnet convert`'s files name the model at most; the authors' .pth records nothing
    save_state_dict(model.state_dict(), tmp_path / 'conv.safetensors', metadata={'layout': 'authors',
                                                                                 'model': 'scnet50'})
    assert checkpoint_metadata(tmp_path / 'conv.safetensors') == {'model': 'scnet50'}
    torch.save(model.state_dict(), tmp_path / 'authors.pth')
    assert checkpoint_metadata(tmp_path / 'authors.pth') == {}
    # a last.pt of a run that trains at 160 px and tests at 224: evaluated at 224, like its model.safetensors
    config = dict(Recipe(model='resnet50', image_size=160, eval_image_size=224).to_dict(), classes=['a', 'b'])
    save_atomic({'model': model.state_dict(), 'config': config}, tmp_path / 'last.pt')
    from_state = read_classifier_metadata(tmp_path / 'last.pt')
    assert (from_state.model, from_state.image_size, from_state.train_image_size) == ('resnet50', 224, 160)


def test_the_classifier_loop_takes_plain_batches_and_names_what_does_not_fit():
    """train_one_epoch and evaluate take a default collate's (images, targets) as well as
    collate_skipping_bad's triples; a target the model has no output for, a batch of another form and a
    loader whose micro-batches leave gradients unapplied are one line each."""
    from torch.utils.data import DataLoader, TensorDataset

    from scnet.errors import InvalidArgumentError
    from scnet.train.loop import StepSettings, evaluate, train_one_epoch

    torch.manual_seed(0)
    images, targets = torch.randn(12, 3, 8, 8), torch.arange(12) % 3
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    loader = DataLoader(TensorDataset(images, targets), batch_size=4)
    before = model[1].weight.detach().clone()
    row = train_one_epoch(model, loader, optimizer, scheduler, CPU, StepSettings(), epoch=1, progress=False)
    assert row['train_images'] == 12 and not torch.equal(model[1].weight, before)
    result = evaluate(model, loader, CPU, progress=False)
    assert result['val_images'] == 12 and result['val_skipped_images'] == 0

    with pytest.raises(InvalidArgumentError, match=r'class index 2 \(at least 3 classes\) but the model gives 2 '
                                                   'outputs: build it with num_classes'):
        evaluate(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 2)), loader, CPU, progress=False)
    negative = DataLoader(TensorDataset(images, targets - 1), batch_size=4)
    with pytest.raises(InvalidArgumentError, match=r'a negative class index \(-1\)'):
        evaluate(model, negative, CPU, progress=False)
    with pytest.raises(InvalidArgumentError, match='a batch must be .* got a list of 1'):
        evaluate(model, DataLoader(TensorDataset(images), batch_size=4), CPU, progress=False)
    with pytest.raises(InvalidArgumentError, match='gives 3 micro-batches, not a multiple of accum_steps 2: the '
                                                   'last 1 would be computed and never applied'):
        train_one_epoch(model, loader, optimizer, scheduler, CPU, StepSettings(accum_steps=2), epoch=1,
                        progress=False)

    # grad_clip: each step's gradients are clipped to that global norm (plain SGD at lr 1: the step is the gradient)
    clipped = torch.optim.SGD(model.parameters(), lr=1.0)
    before = [p.detach().clone() for p in model.parameters()]
    train_one_epoch(model, DataLoader(TensorDataset(images, targets), batch_size=12), clipped,
                    torch.optim.lr_scheduler.LambdaLR(clipped, lambda step: 1.0), CPU, StepSettings(grad_clip=1e-3),
                    epoch=1, progress=False)
    moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)]).norm()
    assert 0 < moved <= 1e-3 * (1 + 1e-4)

    def stream():  # no length: the remainder is dropped with a warning, never left in .grad for the next epoch
        yield from loader

    with pytest.warns(UserWarning, match='the gradients of the last 1 were not applied'):
        train_one_epoch(model, stream(), optimizer, scheduler, CPU, StepSettings(accum_steps=2), epoch=1,
                        progress=False)
    assert all(p.grad is None for p in model.parameters())

"""`scnet train` / `scnet eval` end to end on tiny generated folders, through the command line."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from scnet.cli.main import main
from scnet.train.recipe import RecipeError, list_recipes, load_recipe
from scnet.train.sampling import ShardedBatchSampler, StridedSampler

REPO = Path(__file__).resolve().parents[1]
TINY_RECIPE = """
model: scnet26_cifar
model_kwargs: {channels: [8, 16, 32, 64]}
epochs: 3
batch_size: 8
base_lr: 0.5
weight_decay: 5.0e-4
schedule: cosine
image_size: 16
eval_resize: 16
augment: flip
workers: 0
"""


def write_folder(root: Path, classes=('bar', 'dot', 'ring'), per_class=(12, 4), size=16, seed=0):
    """Tiny learnable images: each class a different bright pattern on noise."""
    rng = np.random.default_rng(seed)
    for split, n in zip(('train', 'val'), per_class):
        for ci, name in enumerate(classes):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = (rng.random((size, size, 3)) * 80).astype(np.uint8)
                if ci == 0:
                    img[size // 2 - 1:size // 2 + 1, :] = 255
                elif ci == 1:
                    img[size // 2 - 2:size // 2 + 2, size // 2 - 2:size // 2 + 2] = 255
                else:
                    img[2, :] = img[-3, :] = img[:, 2] = img[:, -3] = 255
                Image.fromarray(img).save(root / split / name / f'{i:03d}.png')
    return root


@pytest.fixture
def data(tmp_path):
    return write_folder(tmp_path / 'data')


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / 'tiny.yaml'
    path.write_text(TINY_RECIPE)
    return path


def train_args(data, recipe, output, *extra):
    return ['train', '--data', str(data), '--config', str(recipe), '--output', str(output), '--quiet', *extra]


def read_metrics(run):
    return [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()]


def test_train_writes_every_artifact_and_eval_reads_it(data, recipe, tmp_path, capsys, monkeypatch):
    run = tmp_path / 'run'
    compiled = []  # --compile: what torch.compile was given (compiling for real takes a minute on a CPU)
    monkeypatch.setattr(torch, 'compile', lambda model, **kw: compiled.append(model) or model)
    # the largest seed --seed takes: each image's augmentation seed (scnet.data.folders.seeded_transform) wraps
    # to 64 bits instead of overflowing
    assert main(train_args(data, recipe, run, '--aux-weight', '0.3', '--seed', '4294967295', '--device', 'cpu',
                           '--channels-last', '--compile')) == 0
    conv = next(m for m in compiled[0].modules() if isinstance(m, torch.nn.Conv2d))
    assert len(compiled) == 1 and conv.weight.is_contiguous(memory_format=torch.channels_last)
    rows = read_metrics(run)
    assert [r['epoch'] for r in rows] == [1, 2, 3]
    for key in ('epoch', 'lr', 'train_loss', 'val_top1', 'val_top5', 'images_per_sec', 'aux_val_top1',
                'aux_val_top5', 'aux_train_loss', 'skipped_images'):
        assert key in rows[-1]
    assert rows[-1]['val_images'] == 12 and rows[-1]['train_images'] == 32  # 36 images, batches of 8
    assert rows[-1]['train_loss'] < rows[0]['train_loss']
    config = json.loads((run / 'config.json').read_text())
    assert config['classes'] == ['bar', 'dot', 'ring'] and config['seed'] == 4294967295 and config['aux_weight'] == 0.3
    assert (config['device'], config['channels_last'], config['compile']) == ('cpu', True, True)
    assert any((run / 'tensorboard').iterdir())
    with safe_open(str(run / 'model.safetensors'), 'pt') as f:
        meta = f.metadata()
    assert json.loads(meta['classes']) == ['bar', 'dot', 'ring'] and meta['image_size'] == '16'
    assert 'score.weight' in load_file(run / 'side_head.safetensors')
    assert 'epoch 3/3' in capsys.readouterr().out

    out_json = tmp_path / 'eval.json'
    assert main(['eval', '--model', 'scnet26_cifar', '--checkpoint', str(run / 'model.safetensors'), '--data',
                 str(data), '--format', 'json', '--workers', '0', '--quiet', '--output', str(out_json)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result == json.loads(out_json.read_text())
    assert result['images'] == 12 and 0 <= result['top1'] <= 100 and result['top5'] == 100.0
    assert result['top1'] == pytest.approx(rows[-1]['val_top1'])
    # a folder of images nobody prepared as train/val: the class folders themselves
    assert main(['eval', '--model', 'scnet26_cifar', '--checkpoint', str(run / 'last.pt'), '--data',
                 str(data / 'train'), '--workers', '0', '--quiet']) == 0
    assert 'top-1 (%)' in capsys.readouterr().out
    # another crop: the checkpoint's resize-to-crop ratio, unless --resize is given; a resize below the crop
    # (mostly padding) is refused, naming both flags
    assert main(['eval', '--model', 'scnet26_cifar', '--checkpoint', str(run), '--data', str(data), '--workers',
                 '0', '--quiet', '--format', 'json', '--image-size', '32']) == 0
    assert json.loads(capsys.readouterr().out)['eval_resize'] == round(32 * int(meta['eval_resize']) / 16)
    assert main(['eval', '--model', 'scnet26_cifar', '--checkpoint', str(run), '--data', str(data), '--workers',
                 '0', '--quiet', '--image-size', '32', '--resize', '8']) == 2
    assert 'a resize of 8 px (--resize) is smaller than the crop of 32 px (--image-size)' in capsys.readouterr().err
    # without --model: the one the checkpoint records (a file that records none says so)
    assert main(['eval', '--checkpoint', str(run), '--data', str(data), '--workers', '0', '--quiet', '--format',
                 'json']) == 0
    assert json.loads(capsys.readouterr().out)['model'] == 'scnet26_cifar'
    bare = tmp_path / 'bare.pt'
    torch.save(load_file(run / 'model.safetensors'), bare)
    assert main(['eval', '--checkpoint', str(bare), '--data', str(data), '--workers', '0', '--quiet']) == 2
    assert 'records no model name (not a checkpoint of scnet train): pass --model' in capsys.readouterr().err


def test_existing_run_is_never_overwritten_and_resume_needs_a_run(data, recipe, tmp_path, capsys):
    run = tmp_path / 'run'
    assert main(train_args(data, recipe, run, '--epochs', '1')) == 0
    before = (run / 'last.pt').read_bytes()
    assert main(train_args(data, recipe, run)) == 2
    assert 'already holds a run: pass --resume' in capsys.readouterr().err
    assert (run / 'last.pt').read_bytes() == before
    assert main(train_args(data, recipe, tmp_path / 'empty', '--resume')) == 2
    assert 'nothing to resume' in capsys.readouterr().err


# run in a child process: `python -m scnet ARGS` whose process sends itself SIGNAL at optimiser step STEP of
# epoch EPOCH, SIGKILL right after that step's state was saved, SIGTERM before the step is taken. A real signal
# at a chosen point: a poller signalling from outside raced runs whose epochs last a fraction of a second (on a
# slow CI machine the run had ended before the poller saw epoch 1's metrics, and the SIGTERM found no handler)
_SIGNAL_ITSELF = """
import os, signal, sys
from scnet.cli.main import main
from scnet.train import preemption

signum, epoch, step, args = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
real = preemption.StepCheckpoints.after_step

def after_step(self):
    due = (self.epoch, self.step + 1) == (epoch, step)
    if due and signum == signal.SIGTERM:
        os.kill(os.getpid(), signum)
    real(self)
    if due:
        os.kill(os.getpid(), signum)

preemption.StepCheckpoints.after_step = after_step
sys.exit(main(args))
"""


def _run_cli_signalling_itself(args, signum, *, epoch, step, tmp):
    # TMPDIR: what a process killed by SIGKILL may leave (multiprocessing's pymp-* folders) lands
    # in the test's tmp folder, which pytest rotates, instead of in /tmp for good
    return subprocess.Popen([sys.executable, '-c', _SIGNAL_ITSELF, str(int(signum)), str(epoch), str(step), *args],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, TMPDIR=str(tmp)))


@pytest.mark.slow
def test_killed_and_resumed_run_ends_with_identical_weights(data, recipe, tmp_path):
    """SIGKILL after epoch 1 (the paper's options plus mixup, cutmix and an EMA, whose random draws and
    averaged weights a resume must restore too), resume: the final weights and the EMA's equal an uninterrupted
    run's, bit for bit. (A kill in the middle of an epoch: tests/test_preemption.py.)"""
    full, killed = tmp_path / 'full', tmp_path / 'killed'
    args = ['--epochs', '3', '--seed', '7', '--mixup', '0.2', '--cutmix', '1.0', '--ema-decay', '0.9']
    # killed as the first step of epoch 2 is taken: last.pt holds epoch 1's end
    victim = _run_cli_signalling_itself(train_args(data, recipe, killed, *args), signal.SIGKILL, epoch=2, step=1,
                                        tmp=tmp_path)
    assert victim.wait() == -signal.SIGKILL, victim.stderr.read()
    state = torch.load(killed / 'last.pt', weights_only=True)  # the checkpoint a kill leaves is readable
    assert state['epoch'] == 1 and not state.get('step') and not (killed / 'model.safetensors').exists()
    # the uninterrupted run and the resume in this process (one thread, like the victim): two starts fewer
    assert main(train_args(data, recipe, full, *args)) == 0
    assert main(['train', '--output', str(killed), '--resume', '--quiet']) == 0
    for name in ('model.safetensors', 'model_ema.safetensors'):
        a, b = load_file(full / name), load_file(killed / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r['epoch'] for r in read_metrics(killed)] == [1, 2, 3]
    assert [r['train_loss'] for r in read_metrics(killed)] == [r['train_loss'] for r in read_metrics(full)]


@pytest.mark.slow
def test_two_processes_follow_the_one_process_loss_curve(data, recipe, tmp_path):
    """Two nodes of one CPU process each (two torchrun agents meeting at a c10d rendezvous on this machine,
    gloo) = 1 process accumulating the same two shards per step; even when process 0 is killed in the middle
    of an epoch and the elastic agents (--max-restarts) restart both, which resume from the last.pt saved every
    step (--checkpoint-every 1) by themselves."""
    from tests.test_preemption import free_port, kill_run_mid_epoch

    one, two = tmp_path / 'one', tmp_path / 'two'
    # (restarted on several nodes, the workers meet at a store of their own: scnet.train.distributed)
    # (TMPDIR: torchrun's agents keep their torchelastic_* log folders, and killed workers their temporary files)
    env = dict(os.environ, OMP_NUM_THREADS='1', TORCH_DISABLE_SHARE_RDZV_TCP_STORE='1', TMPDIR=str(tmp_path))
    port = free_port()
    logs = [(tmp_path / f'node{n}.out', tmp_path / f'node{n}.err') for n in range(2)]
    nodes = [subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', '--nnodes', '2', '--nproc_per_node',
                               '1', '--max-restarts', '3', '--rdzv-backend', 'c10d', '--rdzv-endpoint',
                               f'localhost:{port}', '--rdzv-id', 'two-nodes', '-m', 'scnet',
                               *train_args(data, recipe, two, '--epochs', '2', '--checkpoint-every', '1')],
                              cwd=REPO, stdout=out.open('w'), stderr=err.open('w'), text=True, env=env)
             for out, err in logs]  # (files: a full pipe would stop a node the other waits for)
    kill_run_mid_epoch(two, launchers=nodes)  # (an epoch lasts ~0.4 s: the first mid-epoch state seen)
    # the one-process run here, while the agents restart their workers
    assert main(train_args(data, recipe, one, '--accum-steps', '2', '--epochs', '2')) == 0
    for node, (_, err) in zip(nodes, logs):
        try:  # (a limit, not a duration: ~30 s alone; several times that beside the suite's other subprocesses)
            status = node.wait(timeout=300)
        except subprocess.TimeoutExpired:
            for n in nodes:
                n.kill()
            pytest.fail('the two nodes did not finish in 300 s:\n' + '\n'.join(e.read_text()[-2000:] for _, e in logs))
        assert status == 0, err.read_text()[-3000:]
    out = ''.join(o.read_text() for o, _ in logs)
    errors = ''.join(e.read_text() for _, e in logs)
    assert 'exitcode: -9' in errors
    # the node restarted for the other node's failure (its agent's restart count still 0) resumes as well,
    # rather than refusing the folder and costing the job a second restart
    assert 'already holds a run' not in errors and 'exitcode: 2' not in errors
    assert out.count('epoch 1/2') == 1 and out.count('epoch 2/2') == 1  # restarted once; no epoch reported twice
    a, b = read_metrics(one), read_metrics(two)
    assert json.loads((two / 'config.json').read_text())['world_size'] == 2
    np.testing.assert_allclose([r['train_loss'] for r in a], [r['train_loss'] for r in b], rtol=1e-4)
    assert [r['val_images'] for r in b] == [12, 12]  # every validation image counted once over 2 processes
    assert [r['train_images'] for r in b] == [32, 32]


def test_sharded_batches_partition_each_global_batch():
    one = list(ShardedBatchSampler(40, 8, accum_steps=2, seed=1))
    ranks = [list(ShardedBatchSampler(40, 8, rank=r, world_size=2, seed=1)) for r in (0, 1)]
    assert len(one) == 10 and [len(b) for b in one] == [4] * 10
    assert [b for pair in zip(*ranks) for b in pair] == one  # rank r in step i = micro-batch r of step i
    assert sorted(i for b in one for i in b) == sorted(set(i for b in one for i in b))
    with pytest.raises(ValueError, match='divisible'):
        ShardedBatchSampler(40, 6, world_size=4)
    with pytest.raises(ValueError, match='fewer than one batch'):
        ShardedBatchSampler(5, 8)


def test_strided_eval_sampler_counts_each_image_once():
    parts = [list(StridedSampler(11, rank=r, world_size=3)) for r in range(3)]
    assert sorted(i for p in parts for i in p) == list(range(11))


def test_shipped_recipes_follow_the_paper():
    names = list_recipes()
    assert {'scnet50', 'resnet50', 'scnext101_32x4d', 'scnet50_r2', 'scnet50_300ep', 'embedded'} <= set(names)
    r = load_recipe('scnet50')
    assert (r.epochs, r.batch_size, r.peak_lr, r.momentum, r.weight_decay, r.lr_step, r.lr_gamma) == \
        (100, 256, 0.1, 0.9, 1e-4, 30, 0.1)
    assert (r.image_size, r.eval_resize, r.augment) == (224, 256, 'random-resized-crop')
    assert load_recipe('scnet50', batch_size=64).peak_lr == pytest.approx(0.025)  # linear scaling
    assert load_recipe('scnet50_300ep').epochs == 300
    assert load_recipe('scnet50_r2').model_kwargs == {'pooling_r': 2}
    for name in names:
        assert load_recipe(name).model


def test_recipe_errors_name_the_problem(tmp_path):
    bad = tmp_path / 'bad.yaml'
    bad.write_text('modle: scnet50\n')
    with pytest.raises(RecipeError, match='unknown setting.*modle'):
        load_recipe(str(bad))
    with pytest.raises(RecipeError, match='no such recipe'):
        load_recipe('nonexistent_recipe')
    with pytest.raises(RecipeError, match='epochs must be >= 1'):
        load_recipe('scnet50', epochs=0)
    bad.write_text('lr: [0.1\n')  # one line, with the place, not the parser's five-line report
    with pytest.raises(RecipeError, match=r"bad.yaml: not valid YAML at line 2, column 1: expected ',' or ']'") as e:
        load_recipe(str(bad))
    assert '\n' not in str(e.value)
    config = tmp_path / 'config.json'
    config.write_text('{"lr": ')
    with pytest.raises(RecipeError, match=r'config.json: not valid JSON \(Expecting value'):
        load_recipe(str(config))
    weights = tmp_path / 'last.pt'  # a checkpoint given where the recipe belongs
    weights.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(RecipeError, match=r'last.pt: a binary file, not a recipe .* use --init'):
        load_recipe(str(weights))


def test_a_changed_crop_size_keeps_the_recipes_resize_ratio():
    """--image-size without --eval-resize: validation resizes in the recipe's proportion (256 / 224), not to the
    recipe's 256 px (which would score the centre eighth of an 8x up-scaled 32-px image, and refuse 320 px)."""
    assert (load_recipe('imagenet_100ep').eval_resize, load_recipe('imagenet_100ep', image_size=None).eval_resize) \
        == (256, 256)
    assert load_recipe('imagenet_100ep', image_size=32).eval_resize == 37
    assert load_recipe('imagenet_100ep', image_size=320).eval_resize == 366
    assert load_recipe('imagenet_100ep', image_size=64, eval_image_size=96).eval_resize == 110
    assert load_recipe('imagenet_100ep', image_size=32, eval_resize=40).eval_resize == 40  # given: kept
    assert load_recipe('rsb_a3', image_size=128).eval_resize == 236  # its evaluation crop stays 224
    assert load_recipe('embedded', image_size=40).eval_resize == 40


def test_a_file_that_changes_its_bases_crop_keeps_the_resize_ratio_as_a_flag_does(tmp_path):
    """A file over its base as a flag over its file: before, the child kept the base's 256 (the centre quarter
    of the image scored at 128 px) or was refused (32 px over the embedded recipe's 24-px resize)."""
    child = tmp_path / 'child.yaml'
    for base, size in (('imagenet_100ep', 128), ('embedded', 32)):
        child.write_text(f'base: {base}\nimage_size: {size}\n')
        assert load_recipe(str(child)).eval_resize == load_recipe(base, image_size=size).eval_resize
    child.write_text('base: imagenet_100ep\nimage_size: 128\neval_resize: 160\n')  # given: kept
    assert load_recipe(str(child)).eval_resize == 160
    assert load_recipe(str(child), image_size=64).eval_resize == 80  # and the flag keeps the file's ratio


def test_every_kind_of_recipe_reads_the_same_way(tmp_path):
    """Classification, detection and pose recipes share one reader (scnet.train.recipe.RecipeReader)."""
    from scnet.tasks.detection import load_detection_recipe
    from scnet.tasks.pose import load_pose_recipe

    for load, shipped, kind in ((load_recipe, 'scnet50', 'recipe'), (load_pose_recipe, 'people', 'pose recipe'),
                                (load_detection_recipe, 'shapes', 'detection recipe')):
        child = tmp_path / f'{shipped}_child.yaml'
        child.write_text(f'base: {shipped}\ndescription: a shipped name as base\nseed: 7\n')
        assert load(str(child)).seed == 7 and load(str(child)).to_dict() == load(shipped, seed=7).to_dict()
        child.write_text(f'base: {shipped}\nepocs: 7\n')
        with pytest.raises(RecipeError, match=f'{child}: unknown setting.s. epocs; known: '):
            load(str(child))
        child.write_text('base: missing.yaml\n')
        with pytest.raises(RecipeError, match=f'{child}: base missing.yaml: no such recipe file or shipped {kind} '
                                              rf'\(shipped: .*{shipped}'):
            load(str(child))
        child.write_text(f'base: {child.name}\n')
        with pytest.raises(RecipeError, match='base recipes form a cycle'):
            load(str(child))
        with pytest.raises(RecipeError, match='unknown setting.s. nonsense'):
            load(shipped, nonsense=1)
        child.write_text(f'base: {shipped}\nseed: 99999999999999\n')  # what --seed refuses, a file may not give
        with pytest.raises(RecipeError, match='seed must be between 0 and 4294967295, got 99999999999999'):
            load(str(child))


def test_a_file_that_changes_its_bases_epochs_moves_the_lr_steps_as_the_flag_does(tmp_path):
    """Detection and pose: a child file that sets only epochs rescales its base's lr decay points, as --epochs
    does. Before, the pose child kept steps 90 and 120 in a 20-epoch run (the lr never decayed, silently) and the
    detection child was refused."""
    from scnet.tasks.detection import load_detection_recipe
    from scnet.tasks.pose import load_pose_recipe

    child = tmp_path / 'child.yaml'
    child.write_text('base: simple_baselines_256x192\nepochs: 20\n')
    assert load_pose_recipe(str(child)).milestones == load_pose_recipe('simple_baselines_256x192', epochs=20) \
        .milestones == [13, 17]
    child.write_text('base: faster_rcnn_2x\nepochs: 12\n')
    assert load_detection_recipe(str(child)).lr_steps == load_detection_recipe('faster_rcnn_2x', epochs=12) \
        .lr_steps == [8, 11]
    child.write_text('base: faster_rcnn_2x\nepochs: 12\nlr_steps: [10]\n')  # steps written with it: kept
    assert load_detection_recipe(str(child)).lr_steps == [10]


@pytest.mark.parametrize('kind, settings, message', [
    ('recipe', dict(momentum=-0.5), 'momentum must be >= 0'),
    ('recipe', dict(grad_clip=0.0), r'grad_clip must be > 0 \(or left out\), got 0.0'),
    ('recipe', dict(warmup_epochs=3), r'warmup_epochs 3 is longer than the run \(2 epochs\).* --warmup-epochs 2'),
    ('detection', dict(weight_decay=-1.0), 'weight_decay must be >= 0'),   # torch's ValueError traceback before
    ('detection', dict(momentum=-1.0), 'momentum must be >= 0'),
    ('detection', dict(lr_gamma=-1.0), 'lr_gamma must be > 0'),           # a negative lr after the first decay
    ('detection', dict(warmup_factor=-1.0), r'warmup_factor .* must be in \(0, 1\]'),
    ('detection', dict(box_score_thresh=2.0), r'box_score_thresh must be in \[0, 1\)'),  # silently no boxes
    ('detection', dict(fpn_channels=0), 'fpn_channels, box_head_dim'),
    ('pose', dict(weight_decay=-1.0), 'weight_decay must be >= 0'),
    ('pose', dict(lr_gamma=-1.0), 'lr_gamma must be > 0'),
    ('pose', dict(deconv_kernel=5), 'deconv_kernel must be 2, 3 or 4'),   # the model's ValueError before
    ('pose', dict(trainable_layers=9), r'trainable_layers must be within 0\.\.5'),
    ('pose', dict(rotation_prob=3.0), r'rotation_prob and half_body_prob must be in \[0, 1\]'),
    ('pose', dict(eval_batch_size=0), 'eval_batch_size must be >= 1'),
    # a list's items of the wrong type: a TypeError traceback from the first comparison before
    ('detection', dict(lr_steps=['sixteen']), r"lr_steps must be a list of numbers, got \['sixteen'\]"),
    ('detection', dict(anchor_sizes=[32, 64, 128, 256, None]), 'anchor_sizes must be a list of integers'),
    ('pose', dict(lr_steps=['90']), 'lr_steps must be a list of integers'),
])
def test_out_of_range_settings_are_one_line_before_the_run(kind, settings, message):
    """What torch's optimisers or the models would stop with a traceback, or would train silently wrong."""
    from scnet.tasks.detection import load_detection_recipe
    from scnet.tasks.pose import load_pose_recipe

    load, shipped = {'recipe': (load_recipe, 'embedded'), 'detection': (load_detection_recipe, 'shapes'),
                     'pose': (load_pose_recipe, 'people')}[kind]
    with pytest.raises(RecipeError, match=message) as e:
        load(shipped, **settings)
    assert '\n' not in str(e.value)


# --- bad input -------------------------------------------------------------------------------------------


def test_truncated_image_stops_with_its_path_or_is_skipped_and_counted(data, recipe, tmp_path, capsys):
    bad = data / 'train' / 'dot' / '003.png'
    bad.write_bytes(bad.read_bytes()[:40])
    assert main(train_args(data, recipe, tmp_path / 'a', '--epochs', '1')) == 2
    assert str(bad) in capsys.readouterr().err
    assert main(train_args(data, recipe, tmp_path / 'b', '--epochs', '1', '--skip-bad-images')) == 0
    rows = read_metrics(tmp_path / 'b')
    assert rows[0]['skipped_images'] == 1 and rows[0]['train_images'] == 31
    unreadable = write_folder(tmp_path / 'unreadable')
    for image in (unreadable / 'train').rglob('*.png'):
        image.write_bytes(b'not an image')
    assert main(train_args(unreadable, recipe, tmp_path / 'c', '--epochs', '1', '--skip-bad-images')) == 2
    assert 'every training image of this pass was unreadable (32 skipped' in capsys.readouterr().err
    assert not (tmp_path / 'c' / 'model.safetensors').exists()
    # scnet eval: the same choice (and its --batch-size and --device, which change nothing of the result)
    bad_val = data / 'val' / 'ring' / '001.png'
    bad_val.write_bytes(bad_val.read_bytes()[:40])
    evaluate = ['eval', '--checkpoint', str(tmp_path / 'b'), '--data', str(data), '--workers', '0', '--quiet',
                '--format', 'json', '--batch-size', '5', '--device', 'cpu']
    assert main(evaluate) == 2
    assert str(bad_val) in capsys.readouterr().err
    assert main([*evaluate, '--skip-bad-images']) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result['images'], result['skipped_images']) == (11, 1)
    assert main([*evaluate[:-4], '--skip-bad-images']) == 0  # default batch and device: the same scores
    again = json.loads(capsys.readouterr().out)
    assert (again['top1'], again['top5'], again['images']) == (result['top1'], result['top5'], 11)
    assert again['loss'] == pytest.approx(result['loss'], rel=1e-5)
    # every image unreadable: an error, not a loss of 0 and an accuracy of 0 as if measured
    for image in (data / 'val').rglob('*.png'):
        image.write_bytes(b'not an image')
    assert main([*evaluate, '--skip-bad-images']) == 2
    err = capsys.readouterr().err
    assert 'every validation image of this pass was unreadable (12 skipped with --skip-bad-images)' in err, err


def test_empty_class_folder_and_class_mismatch(data, recipe, tmp_path, capsys):
    (data / 'train' / 'empty').mkdir()
    (data / 'val' / 'empty').mkdir()
    assert main(train_args(data, recipe, tmp_path / 'a')) == 2
    assert 'without images: empty' in capsys.readouterr().err
    (data / 'train' / 'empty').rmdir()
    (data / 'val' / 'empty').rmdir()
    (data / 'val' / 'ring').rename(data / 'val' / 'circle')
    assert main(train_args(data, recipe, tmp_path / 'b')) == 2
    err = capsys.readouterr().err
    assert 'different classes' in err and 'only in train: ring' in err and 'only in val: circle' in err
    for missing, message in ((tmp_path / 'nope', 'nope: no such folder (expected train/ and val/ with one folder'),
                             (recipe, f'{recipe} is a file, not a folder (expected train/ and val/')):
        assert main(train_args(missing, recipe, tmp_path / 'c')) == 2
        assert message in capsys.readouterr().err


@pytest.mark.parametrize('every', [1, 0])
def test_weights_a_diverged_step_made_are_never_saved(data, recipe, tmp_path, capsys, monkeypatch, every):
    """The losses are checked before each step; a step whose update makes the weights infinite is caught before
    its state is saved (mid-epoch with --checkpoint-every, at the epoch's end without), and the message names
    what last.pt really holds."""
    from scnet.train import preemption

    run = tmp_path / 'run'
    real = preemption.StepCheckpoints.after_step
    steps = {'n': 0}
    diverged_at = 6 if every else 8  # 4 steps per epoch: epoch 2, step 2 (or its last step)

    def after_step(self):
        steps['n'] += 1
        if steps['n'] == diverged_at:
            self.state()['model']['conv1.weight'].fill_(float('inf'))
        real(self)

    monkeypatch.setattr(preemption.StepCheckpoints, 'after_step', after_step)
    assert main(train_args(data, recipe, run, '--checkpoint-every', str(every))) == 2
    err = capsys.readouterr().err
    state = torch.load(run / 'last.pt', weights_only=True)
    assert all(torch.isfinite(t).all() for t in state['model'].values() if t.is_floating_point())
    if every:
        assert 'the weights became non-finite at epoch 2, step 2' in err
        assert f'last good checkpoint: {run / "last.pt"} (epoch 2, step 1)' in err
        assert (state['epoch'], state['step']) == (1, 1)  # mid-epoch states count the epochs finished
    else:
        assert 'the weights became non-finite at the end of epoch 2' in err
        assert f'nothing of this epoch was saved, last good checkpoint: {run / "last.pt"} (epoch 1)' in err
        assert state['epoch'] == 1 and not state.get('step')


def test_eval_refuses_a_checkpoint_with_other_classes(data, recipe, tmp_path, capsys):
    run = tmp_path / 'run'
    assert main(train_args(data, recipe, run, '--epochs', '1')) == 0
    other = write_folder(tmp_path / 'other', classes=('cat', 'dog', 'ring'))
    assert main(['eval', '--model', 'scnet26_cifar', '--checkpoint', str(run / 'model.safetensors'), '--data',
                 str(other), '--workers', '0', '--quiet']) == 2
    assert "do not match the checkpoint's" in capsys.readouterr().err


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(data, recipe, tmp_path, capsys, monkeypatch):
    import scnet.train.loop as loop

    run = tmp_path / 'run'
    real = loop.F.cross_entropy
    calls = {'n': 0}

    def exploding(*args, **kwargs):  # 4 steps per epoch: the loss turns NaN in epoch 2
        calls['n'] += 1
        loss = real(*args, **kwargs)
        return loss * float('nan') if calls['n'] > 5 and kwargs.get('reduction') != 'sum' else loss

    monkeypatch.setattr(loop.F, 'cross_entropy', exploding)
    assert main(train_args(data, recipe, run)) == 2
    err = capsys.readouterr().err
    assert 'non-finite at epoch 2' in err and 'last good checkpoint' in err and '(epoch 1)' in err
    assert torch.load(run / 'last.pt', weights_only=True)['epoch'] == 1


def test_train_prints_its_expected_duration_when_it_starts(data, recipe, tmp_path, capsys):
    """The first line of a run is its expected duration, measured on this machine and naming it; the last its
    actual time. The estimate is honest to within a wide factor even for a run of a few seconds."""
    import re

    run = tmp_path / 'run'
    assert main(train_args(data, recipe, run)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith('expected duration: ') and 'measured on this machine (' in lines[0]
    assert torch.backends.cpu.get_cpu_capability() in lines[0]            # the instruction set it ran with
    from scnet.bench.machine import cpu_description
    assert cpu_description() in lines[0]                                    # and the CPU, generation included
    assert '3 epochs x 4 steps' in lines[0]                                 # 36 images, batches of 8
    assert lines[1].startswith('epoch 1/3') and lines[-1].startswith('done in ')
    expected = float(re.match(r'expected duration: ([\d.]+) s', lines[0]).group(1))
    rows = read_metrics(run)
    spent = sum(r['epoch_time_s'] for r in rows)                            # training steps, without validation
    assert 0.2 * spent < expected < 5 * spent + 1.0, (expected, spent)
    # a resumed run expects only the epochs it has left
    assert main(train_args(data, recipe, tmp_path / 'short', '--epochs', '1')) == 0
    capsys.readouterr()
    assert main(train_args(data, recipe, tmp_path / 'short', '--epochs', '2', '--resume')) == 0
    assert '(1 epoch x 4 steps' in capsys.readouterr().out.splitlines()[0]


def test_duration_probe_leaves_the_run_untouched(data):
    """The probe trains a copy: the model's weights and buffers, its optimiser and the random streams stay."""
    from scnet.data.folders import CheckedImageFolder
    from scnet.data.transforms import eval_transform, train_transform
    from scnet.models import create_model
    from scnet.train.estimate import measure_and_estimate

    torch.manual_seed(0)
    model = create_model('scnet26_cifar', num_classes=3, channels=[8, 16, 32, 64])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, nesterov=True, weight_decay=5e-4)
    train_set = CheckedImageFolder(data / 'train', train_transform(16, 'flip'))
    train_set.augment_seed = 0
    val_set = CheckedImageFolder(data / 'val', eval_transform(16, 16))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    estimate = measure_and_estimate(model, optimizer, train_set=train_set, val_set=val_set, epochs=2,
                                    steps_per_epoch=4, micro_batch=8, accum_steps=1, val_images=12, val_batch=8,
                                    image_size=16, num_classes=3, workers=0)
    assert estimate.seconds > 0 and estimate.epochs == 2 and estimate.steps_per_epoch == 4
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not optimizer.state and all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng) and model.training


def test_duration_estimate_scales_the_measurements():
    from scnet.train.estimate import estimate_duration, format_seconds

    common = dict(epochs=3, steps_per_epoch=10, micro_batch=8, accum_steps=1, micro_step_s=0.5, load_image_s=0.01,
                  val_images=100, val_batch=10, val_batch_s=0.2, val_load_image_s=0.001)
    alone = estimate_duration(workers=0, **common)          # loading adds to each step and to validation
    assert alone.step_s == pytest.approx(0.58) and alone.val_s == pytest.approx(2.1)
    assert alone.seconds == pytest.approx(3 * (10 * 0.58 + 2.1))
    beside = estimate_duration(workers=2, **common)         # loader workers run beside the steps
    assert beside.step_s == pytest.approx(0.5) and beside.val_s == pytest.approx(2.0)
    slow_loading = estimate_duration(workers=2, **dict(common, load_image_s=1.0))
    assert slow_loading.step_s == pytest.approx(4.0)        # 8 images / 2 workers: the loader is the bottleneck
    accumulating = estimate_duration(workers=0, **dict(common, accum_steps=4))
    assert accumulating.step_s == pytest.approx(4 * 0.58)
    assert estimate_duration(workers=0, **dict(common, val_images=0)).val_s == 0
    assert [format_seconds(s) for s in (3.14, 42.4, 200, 7325)] == ['3.1 s', '42 s', '3 min 20 s', '2 h 02 min']
    assert alone.line('CPU X, AVX2, 2 threads').startswith('expected duration: 24 s (3 epochs x 10 steps at 0.58 s')


def test_a_plain_model_takes_a_recipe_written_for_sc_conv():
    """The embedded recipe sets memory_efficient (an SC-Conv option): --model resnet26_cifar still runs."""
    from scnet.train.trainer import _model_kwargs

    recipe = load_recipe('embedded')
    assert recipe.model_kwargs == {'channels': [8, 16, 32, 64], 'memory_efficient': False}
    assert _model_kwargs(recipe, announce=False) == recipe.model_kwargs
    plain = load_recipe('embedded', model='resnet26_cifar')
    assert _model_kwargs(plain, announce=False) == {'channels': [8, 16, 32, 64]}


# --- resume: what a run records and what a resume may change -------------------------------------------


def test_resume_continues_the_run_as_recorded_and_refuses_what_it_cannot_honour(data, recipe, tmp_path, capsys,
                                                                                 monkeypatch):
    """The run records its data as an absolute path (a resume from another folder finds it); flags given on
    resume apply (an extended cosine run continues on the longer curve at the new --lr, not at lr 0); a
    --config repeated on resume cannot shorten the run; other data, another optimiser or fewer epochs are
    refused in one line, before anything is written."""
    import math
    import shutil

    run = tmp_path / 'run'
    here = tmp_path / 'here'
    here.mkdir()
    shutil.copy(recipe, here / 'tiny.yaml')
    monkeypatch.chdir(tmp_path)
    assert main(['train', '--data', 'data', '--config', str(recipe), '--output', 'run', '--epochs', '1',
                 '--quiet']) == 0
    config = json.loads((run / 'config.json').read_text())
    assert config['data'] == config['data_root'] == str(data)
    capsys.readouterr()

    monkeypatch.chdir(here)  # another working folder: the run's data is still found
    assert main(['train', '--output', str(run), '--resume', '--epochs', '2', '--lr', '0.3', '--quiet']) == 0
    rows = read_metrics(run)
    assert [r['epoch'] for r in rows] == [1, 2]
    # cosine over 2 epochs x 4 steps at peak 0.3: epoch 2 begins half-way, where the lr is 0.15 (the 1-epoch
    # schedule had ended at 0)
    assert rows[1]['lr'] == pytest.approx(0.3 * 0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert json.loads((run / 'config.json').read_text())['epochs'] == 2
    before = (run / 'last.pt').read_bytes()
    other = write_folder(tmp_path / 'other')  # the same class names, other images
    refused = [
        # the original command again: its recipe says 3 epochs, the run now has 2
        (['--config', 'tiny.yaml'], '--config tiny.yaml sets epochs 3 (the run: 2): on --resume the run\'s own '
                                    'settings'),
        (['--data', str(other), '--epochs', '3'], f'the run was trained on the data at {data}, --data now names '
                                                  f'{other}: resume with --data {data}'),
        (['--optimizer', 'adamw', '--epochs', '3'], "the run has optimizer 'sgd', this resume 'adamw'"),
        (['--batch-size', '4', '--epochs', '3'], 'the run has batch_size 8, this resume 4'),
        (['--seed', '9', '--epochs', '3'], 'the run has seed 0, this resume 9 (--seed)'),
        (['--ema-decay', '0.9', '--epochs', '3'], 'trained without an EMA of the weights'),
        (['--epochs', '1'], 'has trained 2 epochs already; --epochs 1 would end it before them'),
        # a larger crop than the run's evaluation resize: the flag that goes with it is named
        (['--image-size', '64', '--epochs', '3'], 'must be >= the evaluation crop 64 (eval_image_size, else '
                                                  'image_size), got 16: set it too, e.g. --eval-resize 73'),
        # weights to start from are a new run's: a resume would record them as this run's origin
        (['--init', str(tmp_path / 'other.pth'), '--epochs', '3'], 'the run has init None, this resume'),
        (['--pretrained', '--epochs', '3'], 'the run has pretrained False, this resume True (--pretrained)'),
    ]
    for args, message in refused:
        assert main(['train', '--output', str(run), '--resume', '--quiet', *args]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and message in err, (args, err)
    assert (run / 'last.pt').read_bytes() == before
    # the same --config, with the change as a flag, and the same images moved elsewhere: accepted
    assert main(['train', '--output', str(run), '--resume', '--quiet', '--config', 'tiny.yaml', '--epochs', '3',
                 '--data', str(other), '--data-moved']) == 0
    assert [r['epoch'] for r in read_metrics(run)] == [1, 2, 3]
    capsys.readouterr()
    # only last.pt copied to another machine: its own copy of the settings restores config.json
    (run / 'config.json').unlink()
    assert main(['train', '--output', str(run), '--resume', '--quiet', '--epochs', '4']) == 0
    assert f'{run / "config.json"} was missing: restored from the settings' in capsys.readouterr().err
    assert [r['epoch'] for r in read_metrics(run)] == [1, 2, 3, 4]
    assert json.loads((run / 'config.json').read_text())['optimizer'] == 'sgd'
    # a config.json damaged or edited since: the file is named, not a flag nobody gave
    written = (run / 'config.json').read_text()
    for text, message in (('{}', f'{run / "config.json"} has no model, the run (last.pt) \'scnet26_cifar\''),
                          ('[]', 'holds a JSON list, not the run\'s settings'),
                          (written.replace('"batch_size": 8', '"batch_size": 16'),
                           'has batch_size 16, the run (last.pt) 8: the file was changed after the run wrote it'),
                          ('{"model": ', 'not valid JSON')):
        (run / 'config.json').write_text(text)
        assert main(['train', '--output', str(run), '--resume', '--quiet', '--epochs', '5']) == 2
        err = capsys.readouterr().err
        assert message in err and f'delete it (--resume then restores it from {run / "last.pt"})' in err, err
    (run / 'config.json').write_text(written.replace('"batch_size": 8', '"batch_size": 16'))
    assert main(['train', '--output', str(run), '--resume', '--quiet', '--epochs', '5', '--batch-size', '16']) == 2
    assert 'the run has batch_size 8, this resume 16 (--batch-size)' in capsys.readouterr().err  # the flag, named
    assert [r['epoch'] for r in read_metrics(run)] == [1, 2, 3, 4]


def test_bad_settings_and_model_options_stop_before_the_run_folder_holds_anything(data, recipe, tmp_path, capsys):
    """Wrong types, out-of-range values, model options that do not fit the network, a batch that the
    accumulation steps cannot split and a single class: one line each, and no run folder left behind."""
    one_class = write_folder(tmp_path / 'one', classes=('bar',))
    cases = [
        ('epochs: two', (), "epochs must be an integer, got 'two'"),
        ('label_smoothing: 1.5\nwarmup_epochs: -1\nweight_decay: -1\neval_resize: 0\neval_image_size: 0', (),
         'weight_decay must be >= 0, got -1; warmup_epochs must be >= 0, got -1; label_smoothing must be in [0, 1)'),
        ('model_kwargs: {channels: [8, 16]}', (), "scnet26_cifar cannot be built or run with model_kwargs "
                                                  "{'channels': [8, 16]}"),
        ('model_kwargs: {bogus: 1}', (), "scnet26_cifar takes no argument 'bogus'"),
        ('accum_steps: 3', (), 'batch_size 8 must be divisible by accum_steps 3'),
        ('seed: 1', ('--data', str(one_class)), 'one class (bar); a classifier needs at least 2 classes'),
    ]
    for i, (settings, extra, message) in enumerate(cases):
        bad = tmp_path / f'bad{i}.yaml'
        bad.write_text(f'base: {recipe}\n{settings}\n')
        out = tmp_path / f'run{i}'
        assert main([*train_args(data, bad, out), *extra]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and message in err, (settings, err)
        assert 'eval_image_size must be >= 8' in err if 'eval_image_size' in settings else True
        assert not out.exists(), settings
    # the processes, not only the accumulation steps, must split the batch
    from scnet.train.sampling import BatchSizeError
    with pytest.raises(BatchSizeError, match=r'divisible by processes x accumulation steps \(3 x 1 = 3\)'):
        ShardedBatchSampler(36, 8, world_size=3)


def test_damaged_or_foreign_last_pt_is_refused_in_one_line(tmp_path, capsys):
    run = tmp_path / 'run'
    run.mkdir()
    for content, message in ((None, 'an empty file (0 bytes), not a training state'),
                             ({'a': 1}, "not a scnet training state (no 'epoch', 'history' in it)"),
                             ({'epoch': 1, 'history': []}, "not a scnet training state (no 'model', 'optimizer'")):
        if content is None:
            (run / 'last.pt').write_bytes(b'')
        else:
            torch.save(content, run / 'last.pt')
        assert main(['train', '--output', str(run), '--resume', '--quiet']) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and message in err and 'start the run again' in err, err


def test_eval_names_the_model_a_checkpoint_belongs_to_or_says_in_one_line_that_it_does_not_fit(
        data, recipe, tmp_path, capsys, monkeypatch):
    """h, i: a checkpoint of scnet train records its model; one without records says in one line how it does not
    fit. The result is printed before --output is written, so a file that cannot be written loses nothing."""
    from scnet.models import create_model
    from scnet.train.classifier_checkpoint import ClassifierMetadata
    from scnet.weights import save_state_dict

    net = create_model('scnet26_cifar', num_classes=3, channels=[8, 16, 32, 64], memory_efficient=False)
    meta = ClassifierMetadata(model='scnet26_cifar', classes=['bar', 'dot', 'ring'], image_size=16, eval_resize=16,
                              model_kwargs={'channels': [8, 16, 32, 64], 'memory_efficient': False}).to_metadata()
    ours, bare = tmp_path / 'model.safetensors', tmp_path / 'bare.safetensors'
    save_state_dict(net.state_dict(), ours, metadata=meta)
    save_state_dict(net.state_dict(), bare)
    common = ['--data', str(data), '--workers', '0', '--quiet']
    assert main(['eval', '--model', 'resnet26_cifar', '--checkpoint', str(ours), *common]) == 2
    assert capsys.readouterr().err.strip() == (f'scnet eval: error: {ours} holds weights of scnet26_cifar (recorded '
                                               'in it), not of resnet26_cifar: pass --model scnet26_cifar')
    assert main(['eval', '--model', 'resnet26_cifar', '--checkpoint', str(bare), *common]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'scnet eval: error: {bare} does not fit resnet26_cifar: pass the --model it was trained '
                          'as') and len(err.strip().splitlines()) == 1 and 'not in the network (e.g. ' in err
    # the right model, other widths, nothing recorded: the widths are read off the weights, with the flag to pass
    assert main(['eval', '--model', 'scnet26_cifar', '--checkpoint', str(bare), *common]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'scnet eval: error: {bare} does not fit scnet26_cifar: it fits with channels=(8, 16, 32, '
                          '64), which it does not record: pass --model-kwargs channels=8,16,32,64; keys: ')
    assert main(['eval', '--model', 'scnet26_cifar', '--checkpoint', str(bare), '--image-size', '16', '--resize',
                 '16', '--format', 'json', *common, '--model-kwargs', 'channels=8,16,32,64',
                 'memory_efficient=False']) == 0
    with_flag = json.loads(capsys.readouterr().out)
    assert main(['eval', '--model', 'scnet26_cifar', '--checkpoint', str(ours), '--format', 'json', *common]) == 0
    recorded = json.loads(capsys.readouterr().out)
    assert with_flag['model_kwargs'] == {'channels': [8, 16, 32, 64], 'memory_efficient': False}
    assert (with_flag['top1'], with_flag['loss']) == (recorded['top1'], recorded['loss'])
    # --init with weights of another network: the same one line
    assert main(train_args(data, recipe, tmp_path / 'run', '--model', 'resnet26_cifar', '--init', str(ours))) == 2
    err = capsys.readouterr().err
    assert f'{ours} does not fit resnet26_cifar: start from a checkpoint of resnet26_cifar' in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / 'run').exists()

    def full_disk(self, text):
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(Path, 'write_text', full_disk)
    assert main(['eval', '--model', 'scnet26_cifar', '--checkpoint', str(ours), '--format', 'json',
                 '--output', str(tmp_path / 'result.json'), *common]) == 2
    out, err = capsys.readouterr()
    assert json.loads(out)['images'] == 12  # printed before the write failed
    assert err.strip() == (f'scnet eval: error: --output {tmp_path / "result.json"}: cannot write the result (No '
                           'space left on device); it is printed above; give a writable --output (its folder must '
                           'exist)')


def test_a_recipe_built_by_hand_is_checked_before_anything_runs(data, tmp_path):
    """train() takes a Recipe built in Python without load_recipe: its types and ranges are checked first (one
    line each), and an evaluation crop of another size keeps ImageNet's resize ratio."""
    from scnet.errors import InvalidArgumentTypeError
    from scnet.train.recipe import Recipe, RecipeError
    from scnet.train.trainer import train

    assert Recipe().eval_resize == 256 and Recipe(image_size=32).eval_resize == 37
    assert Recipe(image_size=160, eval_image_size=224).eval_resize == 256
    assert Recipe(image_size=32, eval_resize=32).eval_resize == 32
    base = dict(model='scnet26_cifar', model_kwargs={'channels': [8, 16, 32, 64]}, data=str(data), epochs=1,
                batch_size=8, workers=0, image_size=16, augment='flip')
    out = tmp_path / 'run'
    for change, message in ((dict(batch_size=0), 'batch_size must be >= 1'),
                            (dict(label_smoothing=1.5), r'label_smoothing must be in \[0, 1\)'),
                            (dict(lr=-1.0), 'lr must be > 0'),
                            (dict(epochs='2'), "epochs must be an integer, got '2'"),
                            (dict(image_size=-4), 'image_size must be >= 8'),
                            (dict(schedule='linear'), "schedule must be one of .*got 'linear'"),
                            (dict(device='gpu'), 'gpu'),
                            (dict(epochs=0), 'epochs must be >= 1')):
        with pytest.raises(RecipeError, match=message):
            train(Recipe(**{**base, **change}), out, progress=False)
        assert not out.exists()  # refused before the run folder is made
    with pytest.raises(InvalidArgumentTypeError, match='takes a scnet.train.recipe.Recipe'):
        train(base, out)


def test_evaluate_checkpoint_refuses_a_misspelt_device_and_impossible_sizes(data, tmp_path):
    """A misspelt device used to run on the CPU silently; sizes that cannot work are named before the
    checkpoint is read."""
    from scnet.errors import InvalidArgumentError
    from scnet.train import distributed
    from scnet.train.checkpoint_eval import evaluate_checkpoint
    from scnet.train.recipe import Recipe, RecipeError

    for device in ('gpu', 'cuda:x', 'mps'):
        with pytest.raises(InvalidArgumentError, match=f"device must be auto, cpu, cuda or cuda:N, got '{device}'"):
            distributed.setup(device)
    with pytest.raises(RecipeError, match="cuda:N, got 'cuda:x'"):
        Recipe(device='cuda:x').validate()
    ckpt = tmp_path / 'none.safetensors'  # never read: the arguments are refused first
    for kwargs, message in ((dict(batch_size=0), 'batch_size must be a whole number >= 1, got 0'),
                            (dict(image_size=-1), 'image_size must be a whole number >= 8, got -1'),
                            (dict(workers=1.5), 'workers must be a whole number >= 0, got 1.5')):
        with pytest.raises(InvalidArgumentError, match=message):
            evaluate_checkpoint('scnet26_cifar', ckpt, data, **kwargs)


def test_torchrun_variables_that_do_not_fit_are_refused_before_any_work(data, recipe, tmp_path, monkeypatch, capsys):
    """RANK without WORLD_SIZE (left over in a shell) made a lone process rank 1 of 1: not process 0, it trained,
    wrote nothing and exited with 0."""
    from scnet.train import distributed

    for name in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'):
        monkeypatch.delenv(name, raising=False)
    run = tmp_path / 'run'
    for env, message in (({'RANK': '1'}, 'has RANK=1 but no WORLD_SIZE'),
                         ({'WORLD_SIZE': '2'}, 'has WORLD_SIZE=2 but no RANK'),
                         ({'WORLD_SIZE': 'two', 'RANK': '0'}, "WORLD_SIZE='two', not a whole number"),
                         ({'RANK': '2', 'WORLD_SIZE': '2'}, 'a rank must be below the number of processes'),
                         ({'RANK': '0', 'WORLD_SIZE': '2'}, 'no MASTER_ADDR or MASTER_PORT')):
        with monkeypatch.context() as m:
            for name, value in env.items():
                m.setenv(name, value)
            assert main(train_args(data, recipe, run, '--epochs', '1')) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and message in err and 'torchrun' in err, err
            assert not run.exists()
            with pytest.raises(distributed.LaunchError, match=message):
                distributed.setup('cpu')


def test_the_command_that_started_a_run_resumes_it_with_resume_added(data, recipe, tmp_path, capsys):
    """--image-size also sets the evaluation resize (the file's is for its own size): the same command with
    --resume was refused, "--config tiny.yaml sets eval_resize 16 (the run: 24)"."""
    start = train_args(data, recipe, tmp_path / 'run', '--image-size', '24', '--epochs', '1')
    assert main(start) == 0
    config = json.loads((tmp_path / 'run' / 'config.json').read_text())
    assert (config['image_size'], config['eval_resize']) == (24, 24)
    capsys.readouterr()
    assert main([*start, '--resume', '--epochs', '2']) == 0, capsys.readouterr().err
    assert [r['epoch'] for r in read_metrics(tmp_path / 'run')] == [1, 2]

"""Fine-tuning (--pretrained through the real download code against a file:// mirror, --init) and the modern
options built from timm's parts (optimisers, losses, mixup/cutmix, EMA, augmentation policies, sizes)."""
import hashlib
import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from scnet.cli.main import main
from scnet.data.transforms import train_transform
from scnet.models import create_model
from scnet.train.modern import build_criterion, build_mixup, build_optimizer
from scnet.train.recipe import RecipeError, load_recipe
from scnet.weights import official
from tests.test_train import read_metrics, train_args, write_folder  # noqa: F401  (fixtures below)
from tests.test_train import data, recipe  # noqa: F401

TINY = dict(channels=[8, 16, 32, 64])


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def released(tmp_path, monkeypatch):
    """A tiny 'authors' release' of scnet26_cifar with 10 classes, served from a file:// mirror."""
    draft = tmp_path / 'draft.pth'
    torch.manual_seed(1)
    torch.save(create_model('scnet26_cifar', num_classes=10, **TINY).state_dict(), draft)
    server = tmp_path / 'server'
    server.mkdir()
    path = draft.rename(server / f'scnet26_cifar-{sha256(draft)[:8]}.pth')
    monkeypatch.setitem(official.OFFICIAL_WEIGHTS, 'scnet26_cifar', f'https://example.invalid/scnet/{path.name}')
    monkeypatch.setenv('SCNET_WEIGHTS_MIRROR', server.as_uri())
    monkeypatch.setenv('SCNET_CACHE', str(tmp_path / 'cache'))
    return path


def test_pretrained_fine_tunes_records_its_origin_and_resumes_without_reinitialising(
        data, recipe, tmp_path, released, capsys):  # noqa: F811
    run = tmp_path / 'run'
    assert main(train_args(data, recipe, run, '--pretrained', '--epochs', '1', '--lr', '1e-9')) == 0
    out = capsys.readouterr().out
    assert 'has 10 classes, the data 3: its classifier is left out' in out
    record = json.loads((run / 'config.json').read_text())['initial_weights']
    assert record == {'source': 'authors', 'location': f'{released.parent.as_uri()}/{released.name}',
                      'sha256': sha256(released), 'sha256_of': 'file'}
    with safe_open(str(run / 'model.safetensors'), 'pt') as f:
        assert json.loads(f.metadata()['initial_weights']) == record
    tuned, source = load_file(run / 'model.safetensors'), torch.load(released, weights_only=True)
    assert torch.allclose(tuned['layer3.0.conv2.k4.weight'], source['layer3.0.conv2.k4.weight'], atol=1e-6)
    assert tuned['fc.weight'].shape == (3, 256)
    # the mirror and the cache are gone: a resume that looked the weights up again would fail
    shutil.rmtree(released.parent)
    shutil.rmtree(tmp_path / 'cache')
    assert main(['train', '--output', str(run), '--resume', '--epochs', '2', '--quiet']) == 0
    assert json.loads((run / 'config.json').read_text())['initial_weights'] == record
    assert [r['epoch'] for r in read_metrics(run)] == [1, 2]


def test_init_from_a_run_and_one_line_errors(data, recipe, tmp_path, capsys):  # noqa: F811
    first = tmp_path / 'first'
    assert main(train_args(data, recipe, first, '--epochs', '1', '--drop-path', '0.1')) == 0
    # stochastic depth is the run's training setting, not the network's shape: not among the recorded options
    with safe_open(str(first / 'model.safetensors'), 'pt') as f:
        meta = f.metadata()
    assert json.loads(meta['model_kwargs']) == TINY
    two = write_folder(tmp_path / 'two', classes=('a', 'b'), per_class=(4, 2))
    second = tmp_path / 'second'
    assert main(train_args(two, recipe, second, '--init', str(first / 'last.pt'), '--epochs', '1')) == 0
    assert 'has 3 classes, the data 2' in capsys.readouterr().out
    record = json.loads((second / 'config.json').read_text())['initial_weights']
    assert record['source'] == 'checkpoint' and record['sha256'] == sha256(first / 'last.pt')
    # a recipe without the run's model options (the paper's, or any other): the checkpoint's are used
    plain = tmp_path / 'plain.yaml'
    plain.write_text('\n'.join(line for line in recipe.read_text().splitlines() if 'model_kwargs' not in line))
    # a checkpoint that records its stochastic depth among them (as runs did before): not taken over, the new
    # run trains with its own --drop-path (none here), as its config.json says
    save_file(load_file(first / 'model.safetensors'), first / 'model.safetensors',
              metadata={**meta, 'model_kwargs': json.dumps({**TINY, 'drop_path_rate': 0.1})})
    built = create_model('scnet26_cifar', checkpoint=str(first))
    assert not any(type(m).__name__ == 'DropPath' for m in built.modules())
    third = tmp_path / 'third'
    assert main(train_args(two, plain, third, '--init', str(first), '--epochs', '1')) == 0
    assert '--init: the model options recorded with the checkpoint are used: channels=[8, 16, 32, 64]' in \
        capsys.readouterr().out
    assert json.loads((third / 'config.json').read_text())['model_kwargs'] == {'channels': [8, 16, 32, 64]}
    with safe_open(str(third / 'model.safetensors'), 'pt') as f:
        assert json.loads(f.metadata()['model_kwargs']) == TINY
    for args, message in ((['--init', str(tmp_path / 'missing.pt')], 'no such checkpoint file'),
                          (['--init', str(first / 'last.pt'), '--model', 'resnet26_cifar'],
                           'does not fit resnet26_cifar: .* or train --model scnet26_cifar, the model it holds'),
                          (['--pretrained'], 'no pretrained weights for scnet26_cifar'),
                          (['--mixup', '0.2', '--batch-size', '6', '--accum-steps', '2'], 'make it even'),
                          (['--auto-augment', 'bogus'], 'auto_augment .bogus. is no timm policy')):
        assert main(train_args(data, recipe, tmp_path / 'bad', '--epochs', '1', *args)) == 2
        err = capsys.readouterr().err
        assert message.replace('.', '') in err.replace('.', '') or __import__('re').search(message, err), err
        assert len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as e:  # one start only
        main(train_args(data, recipe, tmp_path / 'bad', '--pretrained', '--init', 'x.pt'))
    assert e.value.code == 2


def test_every_modern_option_in_one_run(data, recipe, tmp_path, capsys):  # noqa: F811
    run = tmp_path / 'run'
    assert main(train_args(data, recipe, run, '--epochs', '2', '--mixup', '0.2', '--cutmix', '1.0', '--ema-decay',
                           '0.9', '--optimizer', 'lamb', '--lr', '0.01', '--no-decay-norm-and-bias', '--loss', 'bce',
                           '--bce-target-thresh', '0.2', '--auto-augment', 'rand-m9-mstd0.5-inc1', '--reprob', '0.25',
                           '--drop-path', '0.1', '--eval-image-size', '24', '--eval-resize', '24',
                           '--warmup-epochs', '1', '--label-smoothing', '0.1', '--schedule', 'cosine',
                           '--weight-decay', '0.02', '--grad-clip', '5')) == 0
    assert 'EMA top-1' in capsys.readouterr().out
    rows = read_metrics(run)
    assert all(0 <= r['ema_val_top1'] <= 100 and r['val_images'] == 12 for r in rows)
    config = json.loads((run / 'config.json').read_text())
    assert (config['optimizer'], config['loss'], config['mixup'], config['eval_image_size'],
            config['model_kwargs'], config['grad_clip']) == ('lamb', 'bce', 0.2, 24, TINY, 5.0)
    with safe_open(str(run / 'model_ema.safetensors'), 'pt') as f:
        meta = f.metadata()
    assert (meta['image_size'], meta['train_image_size']) == ('24', '16')
    assert load_file(run / 'model_ema.safetensors').keys() == load_file(run / 'model.safetensors').keys()
    assert torch.load(run / 'last.pt', weights_only=True)['ema'] is not None


def test_recipes_paper_label_smoothing_rsb_a3_and_finetune():
    for name in ('scnet50', 'resnet50', 'scnet101', 'scnet50_300ep', 'scnext50_32x4d'):
        assert load_recipe(name).label_smoothing == 0.1
    from scnet.train.recipe import RECIPES_DIR
    assert 'MCG-NKU/SCNet issue 5' in (RECIPES_DIR / 'imagenet_100ep.yaml').read_text()
    assert 'ResNet strikes back' in (RECIPES_DIR / 'rsb_a3.yaml').read_text()
    for model in ('resnet50', 'scnet50'):
        r = load_recipe(f'rsb_a3_{model}')
        assert (r.model, r.epochs, r.image_size, r.eval_size, r.optimizer, r.loss, r.mixup, r.cutmix) == \
            (model, 100, 160, 224, 'lamb', 'bce', 0.1, 1.0, )
        assert r.auto_augment.startswith('rand-m6') and r.schedule == 'cosine' and r.warmup_epochs == 5
        assert r.peak_lr == pytest.approx(8e-3) and not r.decay_norm_and_bias
    ft = load_recipe('finetune')
    assert ft.warmup_epochs > 0 and ft.epochs < 100 and ft.peak_lr < load_recipe('scnet50', batch_size=64).peak_lr
    assert load_recipe('embedded').label_smoothing == 0.0  # other recipes unchanged
    for bad, message in (({'optimizer': 'adam'}, 'optimizer must be'), ({'loss': 'l1'}, 'loss must be'),
                         ({'pretrained': True, 'init': 'x'}, 'start from one'), ({'ema_decay': 1.0}, 'ema_decay')):
        with pytest.raises(RecipeError, match=message):
            load_recipe('scnet50', **bad)


def test_timm_parts_the_recipe_builds():
    net = create_model('resnet26_cifar', num_classes=3, channels=[8, 16, 32, 64])
    paper = build_optimizer(net, load_recipe('scnet50'))
    assert type(paper) is torch.optim.SGD and len(paper.param_groups) == 1  # decay on every parameter
    assert paper.param_groups[0]['momentum'] == 0.9 and not paper.param_groups[0]['nesterov']
    lamb = build_optimizer(net, load_recipe('rsb_a3_resnet50'))
    assert type(lamb).__name__ == 'Lamb' and sorted(g['weight_decay'] for g in lamb.param_groups) == [0.0, 0.02]
    assert build_criterion(load_recipe('scnet50')) is None and build_mixup(load_recipe('scnet50'), 3) is None
    mix = build_mixup(load_recipe('rsb_a3_scnet50'), 3)
    images, soft = mix(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]))
    assert soft.shape == (4, 3) and torch.allclose(soft.sum(1), torch.ones(4))
    assert build_criterion(load_recipe('rsb_a3_scnet50'))(torch.randn(4, 3), soft) > 0


@pytest.mark.parametrize('policy', ['rand-m9-mstd0.5-inc1', 'original', 'trivial', 'augmix-m5-w4-d2'])
def test_augmentation_policies_draw_only_from_torch_seeded_generators(policy):
    """The data sets seed torch's generator per image: the same seed gives the same augmented image."""
    image = torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8)
    t = train_transform(16, 'flip', auto_augment=policy, reprob=0.5)
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        outs.append(t(image))
    assert outs[0].shape == (3, 16, 16) and torch.equal(*outs)


def test_real_photo_benchmark_script_on_a_tiny_fake_source(tmp_path):
    """benchmarks/finetune_real.py end to end, on a stand-in for scikit-learn's digits (not a CI dependency)."""
    import importlib.util

    import numpy as np
    from PIL import Image

    spec = importlib.util.spec_from_file_location('finetune_real', 'benchmarks/finetune_real.py')
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rng = np.random.default_rng(0)
    for label in range(4):
        (tmp_path / 'src' / str(label)).mkdir(parents=True)
        for i in range(12):
            image = (rng.random((8, 8)) * 60).astype(np.uint8)
            image[label * 2:label * 2 + 2, :] = 255
            Image.fromarray(image).save(tmp_path / 'src' / str(label) / f'{i}.png')
    out = tmp_path / 'result.json'
    args = ['--source', str(tmp_path / 'src'), '--shots', '8', '--pretrain-epochs', '1', '--finetune-epochs', '1',
            '--seeds', '0', '--size', '8', '--output', str(out)]
    assert bench.main(args) == 0
    result = json.loads(out.read_text())
    assert result['finetune']['classes'] == ['2', '3'] and result['runs'][0]['train_images'] == 16
    assert result['runs'][0]['held_out_images'] == 8
    assert 0 <= result['mean_fine_tuned_top1'] <= 100 and 0 <= result['mean_from_scratch_top1'] <= 100
    with pytest.raises(SystemExit, match='exists'):  # nothing overwritten
        bench.main(args)

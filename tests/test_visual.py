"""What the network sees: Grad-CAM, feature maps, side outputs, effective receptive fields (``scnet.visual``,
``scnet cam``, ``scnet features``, ``scnet erf``).

Models are small: zoo networks at 8-16-32-64 channels saved as ``scnet train`` runs (a model.safetensors with its
metadata, and a side head) in temporary directories, and images of a few dozen pixels. One case compares
resnet50 with scnet50, at 64 px.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import scnet
from scnet import create_model
from scnet.cli.main import main
from scnet.data.transforms import eval_transform
from scnet.errors import InvalidArgumentError, InvalidArgumentTypeError
from scnet.train.side_output import WithSideOutput
from scnet.visual import (InputError, LayerError, Preprocessing, effective_receptive_field, feature_maps, grad_cam,
                          load_image, load_model, mass_radius, resolve_layer)
from scnet.visual.erf import calibrate_batch_norm, mass_profile
from scnet.visual.features import FEATURE_CELL_INCHES, strongest_channels
from scnet.visual.images import grid_pixels
from scnet.visual.loading import ClassError, parse_model_spec
from scnet.weights import save_state_dict

CLASSES = ['bar', 'dot', 'ring']
SMALL = {'channels': [8, 16, 32, 64]}


# ------------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """The models here are small: one thread is as fast, and several threads on a busy 2-core machine wait
    for each other (this file took 60 s with 2 threads next to another job, 12 s with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_run(run_dir: Path, model: str, side: bool = True, seed: int = 0) -> Path:
    """A run directory as `scnet train --aux-weight` leaves it: model.safetensors with metadata + side head."""
    torch.manual_seed(seed)
    net = create_model(model, num_classes=len(CLASSES), zero_init_last=False, **SMALL)
    meta = {'model': model, 'classes': json.dumps(CLASSES), 'image_size': '32', 'eval_resize': '32',
            'mean': json.dumps([0.485, 0.456, 0.406]), 'std': json.dumps([0.229, 0.224, 0.225]),
            'model_kwargs': json.dumps(SMALL)}
    save_state_dict(net.state_dict(), run_dir / 'model.safetensors', metadata=meta)
    if side:
        head = WithSideOutput(net, len(CLASSES)).side
        save_state_dict(head.state_dict(), run_dir / 'side_head.safetensors', metadata=meta)
    return run_dir


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp('runs')
    return {'scnet': write_run(root / 'sc_run', 'scnet26_cifar'),
            'resnet': write_run(root / 'res_run', 'resnet26_cifar', seed=1),
            'plain': write_run(root / 'plain_run', 'scnet26_cifar', side=False)}


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    """A photo-like JPEG (not square), a small grayscale PNG, and a file that is not an image."""
    root = tmp_path_factory.mktemp('images')
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:60, 0:90]
    photo = np.stack([128 + 100 * np.sin(xx / 9.0), 128 + 100 * np.cos(yy / 7.0), 255 * rng.random((60, 90))], -1)
    Image.fromarray(photo.clip(0, 255).astype(np.uint8)).save(root / 'scene.jpg', quality=90)
    gray = (rng.random((40, 40)) * 255).astype(np.uint8)
    gray[5:15, 25:35] = 255
    Image.fromarray(gray, mode='L').save(root / 'gray.png')
    (root / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n not really')
    return root


def png_size(path: Path):
    with Image.open(path) as im:
        return im.size


# --------------------------------------------------------------------------- Grad-CAM on a known toy model

class RedGreen(nn.Module):
    """Class 0 = 'red', class 1 = 'green': the evidence of each is where the image is of that colour.

    A 1x1 conv with hand-set weights turns each pixel into a redness and a greenness (ReLU), a 3x3 box
    blur keeps them local, global average pooling and an identity classifier give the logits."""

    def __init__(self):
        super().__init__()
        self.colour = nn.Conv2d(3, 2, 1)
        self.act = nn.ReLU()
        self.blur = nn.Conv2d(2, 2, 3, padding=1, groups=2, bias=False)
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.colour.weight.copy_(torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0]])[:, :, None, None])
            self.colour.bias.zero_()
            self.blur.weight.fill_(1.0 / 9)
            self.fc.weight.copy_(torch.eye(2) * 10)
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.blur(self.act(self.colour(x))).mean(dim=(2, 3)))


def quadrant(yx, size):
    return (int(yx[0] >= size / 2), int(yx[1] >= size / 2))


def where_other(cls, i):
    """The quadrant of the patch of the other class, in image i of the test below."""
    return {(0, 0): (1, 1), (0, 1): (0, 1), (1, 0): (0, 0), (1, 1): (1, 0)}[(cls, i)]


def test_grad_cam_peaks_where_the_evidence_of_the_class_is():
    size = 48
    x = torch.zeros(2, 3, size, size)
    x[:, 0, 4:14, 6:16] = 1.0        # a red patch in the top-left quadrant
    x[:, 1, 32:44, 30:42] = 1.0      # a green patch in the bottom-right one
    x[1] = torch.flip(x[1], dims=(1,))  # second image: red bottom-left, green top-right
    model = RedGreen()
    for cls, where in ((0, [(0, 0), (1, 0)]), (1, [(1, 1), (0, 1)])):
        result = grad_cam(model, x, layer='blur', classes=cls)
        assert result.maps.shape == (2, size, size) and result.layer == 'blur'
        for i in range(2):
            m = result.maps[i]
            assert float(m.max()) == pytest.approx(1.0) and float(m.min()) == 0.0  # not constant
            peak = divmod(int(m.argmax()), size)
            assert quadrant(peak, size) == where[i], (cls, i, peak)
            # and it is zero over the other class's patch (quadrants of the other class: the other corner)
            oy, ox = [(q * size // 2 + size // 4) for q in where_other(cls, i)]
            assert float(m[oy - 3:oy + 3, ox - 3:ox + 3].max()) == 0.0
        assert result.classes.tolist() == [cls, cls]
    # without a class: the larger green patch wins, its map is the green one
    result = grad_cam(model, x, layer='blur')
    assert result.predicted.tolist() == [1, 1] and result.classes.tolist() == [1, 1]


def test_grad_cam_is_the_formula_and_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = create_model('resnet26_cifar', num_classes=5, zero_init_last=False, **SMALL).train()
    x = torch.randn(2, 3, 32, 32)
    result = grad_cam(model, x, layer='layer3', classes=[1, 4])
    assert model.training and all(p.requires_grad for p in model.parameters())
    # by hand: retain the layer's output and backpropagate the class scores
    model.eval()
    feats = {}
    handle = model.layer3.register_forward_hook(lambda m, i, o: feats.setdefault('a', o))
    logits = model(x)
    handle.remove()
    a = feats['a']
    grads, = torch.autograd.grad(logits[0, 1] + logits[1, 4], a)
    cam = torch.relu((grads.mean(dim=(2, 3), keepdim=True) * a).sum(1))
    torch.testing.assert_close(result.raw, cam.detach(), rtol=1e-4, atol=1e-6)
    assert result.maps.shape == (2, 32, 32)
    # a class with evidence somewhere (the predicted one) gives a map from 0 to 1
    for m in grad_cam(model, x, layer='layer3').maps:
        assert float(m.max()) == pytest.approx(1.0) and float(m.std()) > 0.01


# ----------------------------------------------------------------------------------------- the pipeline

def test_preprocessing_is_the_eval_transform_and_images_are_checked(images):
    image = load_image(images / 'scene.jpg')
    pre = Preprocessing(image_size=32, resize=36)
    picture, x = pre(image)
    assert picture.shape == (32, 32, 3) and picture.dtype == np.uint8
    torch.testing.assert_close(x, eval_transform(32, 36)(image), atol=1e-5, rtol=0)
    assert load_image(images / 'gray.png').mode == 'RGB'
    with pytest.raises(Exception, match='broken.png: unreadable image'):
        load_image(images / 'broken.png')
    with pytest.raises(Exception, match='missing.png: no such image file'):
        load_image(images / 'missing.png')


def test_preprocessing_and_load_model_refuse_settings_that_read_as_others():
    """image_size=0 read as "not given" (224), and a standard deviation of 0 gave infinite inputs."""
    from scnet.visual.images import PreprocessingError

    for kwargs, said in ((dict(image_size=0), 'image_size must be a positive number of pixels, got 0'),
                         (dict(resize=-1), 'resize must be a positive number of pixels, got -1')):
        with pytest.raises(PreprocessingError, match=said):
            load_model('scnet26_cifar', model_kwargs=SMALL, **kwargs)
    for kwargs, said in ((dict(std=(0.0, 1.0, 1.0)), 'standard deviation must be positive'),
                         (dict(mean=(0.5, 0.5)), 'give three finite numbers'),
                         (dict(std=(1.0, float('nan'), 1.0)), 'give three finite numbers'),
                         (dict(mean=0.5), 'give three finite numbers')):
        with pytest.raises(PreprocessingError, match=said):
            Preprocessing(32, 32, **kwargs)


def test_one_model_or_image_given_as_a_string_is_one(runs, images, tmp_path):
    """A name or path string is one model or image, not the sequence of its characters."""
    spec, image = str(runs['scnet']), str(images / 'scene.jpg')
    cams = scnet.visual.compare_models(spec, image, tmp_path / 'cam')
    assert len(cams['records']) == 1 and png_size(cams['png'])[0] > 0
    features = scnet.visual.compare_features(spec, image, tmp_path / 'features', top=2)
    assert len(features['records']) == 1
    erf = scnet.visual.measure_models('scnet26_cifar', input_size=32, samples=2, seeds=0, image_paths=image,
                                      stages=('layer1',))
    assert [m['model'] for m in erf['models']] == ['scnet26_cifar'] and erf['settings']['seeds'] == [0]


def test_model_specs_classes_and_layers(runs):
    assert parse_model_spec('scnet50') == ('scnet50', None)
    assert parse_model_spec(f'scnet26_cifar:{runs["scnet"]}') == ('scnet26_cifar', str(runs['scnet']))
    assert parse_model_spec(str(runs['scnet'])) == (None, str(runs['scnet']))
    with pytest.raises(Exception, match="'scnet5O'.*Did you mean"):
        parse_model_spec('scnet5O')
    m = load_model(str(runs['scnet']))  # model name, classes, input size and options from the metadata
    assert m.name == 'scnet26_cifar' and m.class_names == CLASSES and m.preprocessing.image_size == 32
    assert m.label == 'scnet26_cifar (sc_run)' and m.weights == 'checkpoint'
    assert m.resolve_class('ring') == 2 and m.resolve_class('1') == 1 and m.class_label(2) == 'ring'
    with pytest.raises(ClassError, match=r'class 3 is out of range .* 3 classes \(indices 0-2\)'):
        m.resolve_class(3)
    with pytest.raises(ClassError, match="'rng' is not a class.*Did you mean 'ring'"):
        m.resolve_class('rng')
    imagenet = load_model('resnet26')
    assert imagenet.class_label(281) == '#281 tabby' and imagenet.resolve_class('tabby cat') == 281
    assert imagenet.resolve_class('n02123045') == 281  # WordNet id
    # random weights: residual branches switched on (timm would start each block's last BN at 0)
    assert float(imagenet.model.layer4[-1].bn3.weight.detach().abs().sum()) > 0
    # layer names: negative block index, the paper's stage names
    assert resolve_layer(m.model, 'layer4.-1.conv2')[0] == 'layer4.1.conv2'
    assert resolve_layer(m.model, 'res3')[0] == 'layer2'
    with pytest.raises(LayerError, match=r"no layer 'layer9'.*Valid layers include: conv1, .*layer4, "
                                         r"layer4\.1, layer4\.1\.conv1, layer4\.1\.conv2.*--list-layers"):
        resolve_layer(m.model, 'layer9')


def test_a_run_folder_still_training_stands_for_its_last_state(runs, tmp_path):
    """A run folder without model.safetensors (a run still going) gives its last.pt, with its run settings;
    an empty folder names what it lacks."""
    from safetensors.torch import load_file

    from scnet.errors import CheckpointError

    going = tmp_path / 'going'
    going.mkdir()
    weights = load_file(str(runs['scnet'] / 'model.safetensors'))
    config = {'model': 'scnet26_cifar', 'classes': CLASSES, 'image_size': 32, 'eval_resize': 32,
              'model_kwargs': SMALL}
    torch.save({'model': weights, 'config': config}, going / 'last.pt')
    m = load_model(str(going))
    assert m.name == 'scnet26_cifar' and m.class_names == CLASSES and m.label == 'scnet26_cifar (going)'
    for key, value in m.model.state_dict().items():
        torch.testing.assert_close(value, weights[key], rtol=0, atol=0)
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(CheckpointError, match='empty is a folder with neither model.safetensors nor last.pt'):
        load_model(str(empty))


# ----------------------------------------------------------------------------------------------- the CLI

def test_cam_cli_grid_of_models_and_images(runs, images, tmp_path, capsys):
    out = tmp_path / 'cam'
    assert main(['cam', '--models', str(runs['scnet']), f'resnet26_cifar:{runs["resnet"]}', '--images',
                 str(images / 'scene.jpg'), str(images / 'gray.png'), '--output', str(out)]) == 0
    printed = capsys.readouterr().out
    assert 'wrote' in printed and 'scene.jpg' in printed
    # 2 image rows x (input + 2 models) columns, cells of a fixed size
    assert png_size(out / 'gradcam.png') == grid_pixels(2, 3)
    report = json.loads((out / 'gradcam.json').read_text())
    assert report['layer'] == 'layer4' and len(report['images']) == 2
    rec = report['images'][0]['models']['scnet26_cifar (sc_run)']
    assert rec['class'] == rec['predicted'] and rec['class_name'] in CLASSES and rec['input_size'] == [32, 32]
    # the drawn maps are not constant: the model cells differ from the input cell and vary inside
    with Image.open(out / 'gradcam.png') as im:
        pixels = np.asarray(im.convert('RGB')).astype(float)
    assert pixels.std() > 20
    # a chosen class, by name, at another layer
    assert main(['cam', '--models', str(runs['scnet']), '--images', str(images / 'gray.png'), '--output',
                 str(out), '--class', 'ring', '--target-layer', 'layer3.-1.conv2']) == 0
    report = json.loads((out / 'gradcam.json').read_text())
    assert report['layer'] == 'layer3.-1.conv2'
    rec = report['images'][0]['models']['scnet26_cifar (sc_run)']
    assert rec['class'] == 2 and rec['class_name'] == 'ring' and rec['map_size'] == [8, 8]
    assert png_size(out / 'gradcam.png') == grid_pixels(1, 2)


def test_cam_maps_are_not_constant_on_zoo_models(runs, images):
    for spec in (str(runs['scnet']), str(runs['resnet'])):
        m = load_model(spec)
        x = torch.stack([m.preprocessing(load_image(images / f))[1] for f in ('scene.jpg', 'gray.png')])
        for layer in ('layer4', 'layer2', 'layer4.-1.conv2'):
            maps = grad_cam(m.model, x, layer).maps
            assert maps.shape == (2, 32, 32)
            assert all(float(mp.std()) > 1e-3 for mp in maps), (spec, layer)


def test_side_output_cli(runs, images, tmp_path, capsys):
    out = tmp_path / 'side'
    assert main(['cam', '--side-output', '--models', str(runs['scnet']), str(runs['resnet']), '--images',
                 str(images / 'scene.jpg'), '--output', str(out)]) == 0
    capsys.readouterr()
    assert png_size(out / 'side_output.png') == grid_pixels(1, 3)
    report = json.loads((out / 'side_output.json').read_text())
    assert report['method'] == 'side-output' and report['layer'] == 'layer2'
    rec = report['images'][0]['models']['scnet26_cifar (sc_run)']
    assert rec['map_size'] == [16, 16] and not rec['empty']  # res3 of a 32-px input, stride-1 stem
    # a model without side head
    assert main(['cam', '--side-output', '--models', str(runs['plain']), '--images', str(images / 'gray.png'),
                 '--output', str(out)]) == 2
    assert 'no side_head.safetensors beside' in capsys.readouterr().err
    assert main(['cam', '--side-output', '--models', 'resnet26', '--images', str(images / 'gray.png'),
                 '--output', str(out)]) == 2
    assert 'side outputs need a run of `scnet train --aux-weight W`' in capsys.readouterr().err


def test_features_cli(runs, images, tmp_path, capsys):
    out = tmp_path / 'features'
    assert main(['features', '--model', str(runs['scnet']), str(runs['resnet']), '--image',
                 str(images / 'scene.jpg'), '--output', str(out), '--top', '6']) == 0
    assert 'strongest channels' in capsys.readouterr().out
    png = out / 'features_layer4-1-conv2.png'
    assert png_size(png) == grid_pixels(2, 7, cell_inches=FEATURE_CELL_INCHES)
    report = json.loads((out / 'features_layer4-1-conv2.json').read_text())
    for rec in report['models']:
        strengths = [t['mean_abs'] for t in rec['top']]
        assert len(strengths) == 6 and strengths == sorted(strengths, reverse=True) and strengths[-1] > 0
        assert rec['map_size'] == [4, 4] and rec['channels'] == 64
    assert main(['features', '--model', str(runs['scnet']), '--image', str(images / 'gray.png'), '--output',
                 str(out), '--layer', 'res3', '--top', '3', '--no-overlay']) == 0
    assert png_size(out / 'features_layer2.png') == grid_pixels(1, 4, cell_inches=FEATURE_CELL_INCHES)


def test_strongest_channels_order():
    fmap = torch.zeros(4, 3, 3)
    fmap[2] = -5.0  # magnitude counts, not sign
    fmap[0, 1, 1] = 9.0
    fmap[3] = 0.5
    idx, strength = strongest_channels(fmap, 3)
    assert idx.tolist() == [2, 0, 3] and strength.tolist() == pytest.approx([5.0, 1.0, 0.5])


def test_errors_name_the_problem(runs, images, tmp_path, capsys):
    out = str(tmp_path / 'x')
    base = ['cam', '--models', str(runs['scnet']), '--output', out]
    assert main(base + ['--images', str(images / 'gray.png'), '--target-layer', 'layer5']) == 2
    err = capsys.readouterr().err
    assert "no layer 'layer5'" in err and 'Valid layers include: conv1' in err and 'layer4.1.conv2' in err
    assert main(base + ['--images', str(images / 'gray.png'), str(images / 'broken.png')]) == 2
    assert 'broken.png: unreadable image' in capsys.readouterr().err
    assert main(base + ['--images', str(images / 'gray.png'), '--class', '7']) == 2
    assert 'class 7 is out of range' in capsys.readouterr().err
    assert main(base + ['--images', str(images / 'gray.png'), '--target-layer', 'fc']) == 2
    assert 'not a spatial map' in capsys.readouterr().err
    assert main(['features', '--model', 'resnet26', '--image', str(images / 'nope.jpg'), '--output', out]) == 2
    assert 'nope.jpg: no such image file' in capsys.readouterr().err
    assert main(['features', '--model', 'resnet26', '--image', str(images / 'gray.png'), '--output', out,
                 '--layer', 'layer4.9']) == 2
    assert "no layer 'layer4.9'" in capsys.readouterr().err
    assert main(base + ['--images', str(images / 'gray.png'), '--image-size', '64', '--resize', '32']) == 2
    assert 'resize 32 is smaller than the image size 64' in capsys.readouterr().err  # not raised to 64 silently
    assert not Path(out).exists()  # nothing written on an error
    assert main(['cam', '--models', str(runs['scnet']), '--list-layers']) == 0
    listing = capsys.readouterr().out
    assert 'layer4.1.conv2' in listing and 'SCConv2d' in listing and '64x4x4' in listing


# ------------------------------------------------------------------------------------------------- ERF

def test_mass_radius_on_known_masses():
    delta = np.zeros((21, 21))
    delta[10, 10] = 1.0
    assert mass_radius(delta, 0.5) == 0.0 and mass_radius(delta, 0.95) == 0.0
    box = np.zeros((41, 41))
    box[20 - 7:20 + 8, 20 - 7:20 + 8] = 1.0   # a uniform 15x15 square: all of it within radius 7
    assert mass_radius(box, 1.0) == 7.0 and mass_radius(box, 0.95) == 7.0
    # half the mass of a uniform square lies within the window of area 1/2: side 15 / sqrt(2) ~ 10.6 -> r 5
    assert mass_radius(box, 0.5) == 5.0
    radii, cum = mass_profile(box)
    assert np.all(np.diff(radii) > 0) and np.all(np.diff(cum) >= 0) and cum[-1] == pytest.approx(1.0)


def _bn_statistics(model):
    return [b.clone() for m in model.modules() if isinstance(m, nn.BatchNorm2d)
            for b in (m.running_mean, m.running_var, m.num_batches_tracked)]


def test_batch_norm_calibration_counts_every_input_and_keeps_the_statistics_it_is_not_given_inputs_for():
    """Every input is in the statistics, whatever batch_size (a last single image joins the pass before it;
    batch_size 1 passes two at a time, as a 1x1 map needs); bad inputs and a pass that fails leave the trained
    statistics as they were."""
    torch.manual_seed(0)
    x = torch.randn(5, 3, 32, 32)

    def calibrated(batch_size, inputs=x):
        torch.manual_seed(1)  # the same weights each time
        model = create_model('scnet26_cifar', **SMALL).eval()
        calibrate_batch_norm(model, inputs, batch_size=batch_size)
        assert not model.training  # mode and momentum restored
        return _bn_statistics(model)

    for got, want in zip(calibrated(4), calibrated(8)):  # 4 + 1 images: one pass of 5, as batch_size 8
        torch.testing.assert_close(got, want)
    for got, want in zip(calibrated(1, x[:4]), calibrated(2, x[:4])):
        torch.testing.assert_close(got, want)

    model = create_model('scnet26_cifar', **SMALL).eval()
    calibrate_batch_norm(model, x)
    trained = _bn_statistics(model)
    bad = [(x[:0], InvalidArgumentError, 'no inputs'), (x, InvalidArgumentError, 'batch_size', 0),
           (x, InvalidArgumentError, 'batch_size', 2.5), (x[:, :1], InputError, '1 channels'),
           (x[:1], InvalidArgumentError, 'single input')]  # one image: 1x1 context maps fail in its pass
    for inputs, error, said, *batch_size in bad:
        with pytest.raises(error, match=said):
            calibrate_batch_norm(model, inputs, *batch_size)
        for got, want in zip(_bn_statistics(model), trained):
            assert torch.equal(got, want), said
        assert not model.training


def test_gradient_tools_refuse_a_deployed_network_and_every_tool_a_scripted_one():
    """A network from scnet.deploy runs without autograd, and a TorchScript module takes no hooks: each was a
    RuntimeError from deep in autograd or in torch.jit; the folded network itself (.module) is explained."""
    torch.manual_seed(0)
    model = create_model('scnet26_cifar', **SMALL).eval()
    x = torch.randn(2, 3, 32, 32)
    deployed = scnet.deploy(model, channels_last=False, example_input=x)
    for tool in (lambda m: grad_cam(m, x, 'module.layer4'), lambda m: effective_receptive_field(m, x)):
        with pytest.raises(InvalidArgumentTypeError, match=r'from scnet.deploy runs without them: pass its \.module'):
            tool(deployed)
    assert grad_cam(deployed.module, x, 'layer4').maps.shape[0] == 2
    scripted = torch.jit.script(model)
    for tool in (lambda m: grad_cam(m, x), lambda m: feature_maps(m, x, 'layer2')):
        with pytest.raises(InvalidArgumentTypeError, match='is a TorchScript module .*pass the nn.Module'):
            tool(scripted)


def test_erf_grows_with_depth_and_cli_writes_json_and_heat_maps(runs, tmp_path, capsys):
    torch.manual_seed(0)
    model = create_model('scnet26_cifar', zero_init_last=False, **SMALL).eval()
    x = torch.randn(4, 3, 32, 32)
    calibrate_batch_norm(model, x)
    result = effective_receptive_field(model, x)
    assert list(result) == ['layer1', 'layer2', 'layer3', 'layer4']
    for stage in result.values():
        assert stage.mass.shape == (32, 32) and stage.mass.sum() == pytest.approx(1.0)
        assert 0 <= stage.radii[0.5] <= stage.radii[0.95]
    r50 = [s.radii[0.5] for s in result.values()]
    assert r50 == sorted(r50) and r50[-1] > r50[0]

    out = tmp_path / 'erf'
    assert main(['erf', '--models', str(runs['resnet']), str(runs['scnet']), '--output', str(out),
                 '--input-size', '32', '--samples', '3', '--seeds', '0', '1', '--quiet']) == 0
    printed = capsys.readouterr().out
    assert 'r50 (px)' in printed and 'layer2 (res3)' in printed
    report = json.loads((out / 'erf.json').read_text())
    assert report['settings']['input_size'] == 32 and report['settings']['seeds'] == [0, 1]
    assert [m['label'] for m in report['models']] == ['resnet26_cifar (res_run)', 'scnet26_cifar (sc_run)']
    for m in report['models']:
        assert list(m['stages']) == ['layer1', 'layer2', 'layer3', 'layer4']
        r50 = [s['r50'] for s in m['stages'].values()]
        r95 = [s['r95'] for s in m['stages'].values()]
        assert r50 == sorted(r50) and r95 == sorted(r95) and all(a <= b for a, b in zip(r50, r95))
        for s in m['stages'].values():
            assert len(s['r50_per_seed']) == 2 and {'map_size', 'stride', 'r95_std', 'centre_yx'} <= set(s)
    w, h = png_size(out / 'erf.png')
    assert w > 4 * 200 and h > 2 * 200
    assert png_size(out / 'erf_mass.png')[0] > 4 * 300
    with Image.open(out / 'erf.png') as im:
        assert np.asarray(im.convert('L')).std() > 20


def test_scnet50_sees_further_than_resnet50(tmp_path, capsys):
    """The paper's claim at random weights: the ERF of res2 and res3 is wider with SC-Conv (64-px inputs)."""
    assert main(['erf', '--models', 'resnet50', 'scnet50', '--output', str(tmp_path), '--input-size', '64',
                 '--samples', '2', '--stages', 'res2', 'res3', '--quiet', '--format', 'json']) == 0
    report = json.loads(capsys.readouterr().out)
    res, sc = (m['stages'] for m in report['models'])
    assert list(res) == ['layer1', 'layer2']
    for stage in ('layer1', 'layer2'):
        assert sc[stage]['r95'] > res[stage]['r95'] and sc[stage]['r50'] >= res[stage]['r50']


def test_erf_with_one_sample_names_the_flags_that_fix_it(tmp_path, capsys):
    """Batch-norm calibration on one input: scnet26_cifar's last stage pools to 1x1, so the error names
    --samples 2 and --no-bn-calibration (both then run), not the layer's advice for a training loop."""
    args = ['erf', '--models', 'scnet26_cifar', '--input-size', '32', '--stages', 'res2', '--quiet']
    assert main([*args, '--samples', '1', '--output', str(tmp_path / 'a')]) == 2
    error = capsys.readouterr().err
    assert 'error: calibrating batch norm on a single input' in error and '--samples 2' in error
    assert '--no-bn-calibration' in error and 'drop_last' not in error
    assert main([*args, '--samples', '1', '--no-bn-calibration', '--output', str(tmp_path / 'b')]) == 0


# ------------------------------------------------------------------------------- what the tools take in

def test_the_tools_take_what_preprocessing_gives_and_name_what_they_cannot_take(runs):
    """One (3, H, W) image as Preprocessing gives it, a model in another dtype, PIL images of any mode and
    uint8 arrays work; integer pixels, channels last, grey images, class names and a batch of maps where one
    image's are wanted are one-line errors naming the way out."""
    from scnet.visual import InputError, feature_maps, load_side_head, side_output_maps
    from scnet.visual.images import PreprocessingError

    m = load_model(str(runs['scnet']))
    pre = m.preprocessing
    rgb = Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8))
    picture, one = pre(rgb)
    for image in (rgb.convert('L'), rgb.convert('RGBA'), rgb.convert('P'), np.asarray(rgb),
                  np.asarray(rgb.convert('L'))):
        other_picture, x = pre(image)
        assert x.shape == (3, 32, 32) and other_picture.shape == (32, 32, 3)
    torch.testing.assert_close(pre(np.asarray(rgb))[1], one)
    with pytest.raises(PreprocessingError, match='a tensor is already a network input'):
        pre(one)
    with pytest.raises(PreprocessingError, match='must be uint8 pixels'):
        pre(np.asarray(rgb).astype(np.float32))

    batched = grad_cam(m.model, one[None], 'layer3')
    single = grad_cam(m.model, one, 'layer3')  # the batch dimension added
    torch.testing.assert_close(single.maps, batched.maps)
    name, fmaps = feature_maps(m.model, one, 'layer4.-1.conv2')
    assert fmaps.shape[0] == 1
    with pytest.raises(InputError, match=r'one image\'s maps \(C, h, w\).*pass fmaps\[i\]'):
        strongest_channels(fmaps, 3)
    assert len(strongest_channels(fmaps[0], 3)[0]) == 3
    double = create_model('scnet26_cifar', num_classes=3, **SMALL).double().eval()
    assert grad_cam(double, one, 'layer3').maps.shape == (1, 32, 32)  # moved to the model's dtype

    for bad, message in ((one.numpy(), 'must be a torch tensor'),
                         ((one * 255).to(torch.uint8), 'uint8 pixels.*Preprocessing'),
                         (one.permute(1, 2, 0)[None], r'3-channel images, got 32 channels.*permute\(0, 3, 1, 2\)'),
                         (one[:1], '3-channel images, got 1 channels'),
                         (one[0], r'\(N, C, H, W\) or one \(C, H, W\) image')):
        for tool in (lambda x: grad_cam(m.model, x, 'layer3'), lambda x: feature_maps(m.model, x, 'layer3'),
                     lambda x: effective_receptive_field(m.model, x, ('layer1',))):
            with pytest.raises(InputError, match=message):
                tool(bad)
    with pytest.raises(ClassError, match=r"class indices .* got 'ring'; for a class name use LoadedModel.resolve_cl"):
        grad_cam(m.model, one, 'layer3', classes='ring')
    assert int(grad_cam(m.model, one, 'layer3', classes=m.resolve_class('ring')).classes[0]) == 2
    for classes in (np.array([1]), torch.tensor(1), np.int64(1), [1]):  # the forms an index comes in
        assert int(grad_cam(m.model, one, 'layer3', classes=classes).classes[0]) == 1

    head = load_side_head(m)
    for classes, message in ((7, r'class \[7\] out of range: the model has 3 classes'),
                             ([0, 1, 2], '3 classes given for 1 images'), ('cat', 'class indices')):
        with pytest.raises(ClassError, match=message):
            side_output_maps(m, head, one, classes)
    assert side_output_maps(m, head, one, 1).maps.shape == (1, 32, 32)


def test_erf_stages_in_any_order_or_one_by_name(runs):
    m = load_model(str(runs['scnet']))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    forward = effective_receptive_field(m.model, x, ('layer1', 'layer3'))
    backward = effective_receptive_field(m.model, x, ('layer3', 'layer1'))
    assert list(backward) == ['layer3', 'layer1']
    for stage in ('layer1', 'layer3'):
        np.testing.assert_allclose(backward[stage].mass, forward[stage].mass, rtol=1e-6)
    assert list(effective_receptive_field(m.model, x, 'layer2')) == ['layer2']

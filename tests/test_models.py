"""The zoo: names, timm registration, feature extraction, SC options, and every model on odd input sizes."""
import functools
import warnings

import pytest
import timm
import torch

import scnet
from scnet import SCConv2d
from scnet.models import PAPER_MODELS

ISSUE_NAMES = ['scnet50', 'scnet101', 'scnext50_32x4d', 'scnext101_32x4d', 'se_scnet50', 'se_scnet101',
               'ge_scnet50', 'scnet50_v1d', 'scnet101_v1d', 'resnet50', 'resnet101', 'resnext50_32x4d',
               'resnext101_32x4d', 'resnext50_2x40d', 'seresnet50', 'seresnet101', 'ge_resnet50']


def sc_layers(model):
    return [m for m in model.modules() if isinstance(m, SCConv2d)]


def test_every_name_of_the_paper_is_listed():
    assert set(ISSUE_NAMES) <= set(scnet.list_models())
    assert set(PAPER_MODELS) == set(ISSUE_NAMES)
    assert scnet.list_models('scnext*') == ['scnext50_32x4d', 'scnext101_32x4d']


def test_list_models_takes_several_patterns_and_pretrained():
    """As timm.list_models: a list of patterns (any may match), and pretrained=True for names with weights."""
    both = scnet.list_models(['scnext*', 'resnext50*'])
    assert both == [n for n in scnet.list_models() if n.startswith(('scnext', 'resnext50'))]
    assert scnet.list_models(('scnext*',)) == scnet.list_models('scnext*')
    with_weights = scnet.list_models(pretrained=True)
    assert {'scnet50', 'scnet50_v1d', 'scnet101', 'resnet50'} <= set(with_weights)
    assert not {'scnext50_32x4d', 'scnet26_cifar', 'resnext50_2x40d'} & set(with_weights)
    assert scnet.list_models('scnet*', pretrained=True) == ['scnet50', 'scnet101', 'scnet50_v1d']
    with pytest.raises(scnet.InvalidArgumentTypeError, match='pattern must be a shell pattern'):
        scnet.list_models(['scnet*', 50])
    assert scnet.list_models('') == scnet.list_models([]) == scnet.list_models()  # no filter, as in timm


@pytest.mark.parametrize('name', scnet.list_models())
def test_every_model_on_small_and_odd_inputs(name):
    """32 px (layer4 maps of 1x1, smaller than r) and a non-square odd size, in eval mode, finite logits."""
    model = scnet.create_model(name, num_classes=7).eval()
    with torch.no_grad():
        for size in ((32, 32), (45, 77)):
            out = model(torch.randn(2, 3, *size))
            assert out.shape == (2, 7) and torch.isfinite(out).all(), (name, size)


@pytest.mark.parametrize('name', ['scnet50', 'scnext50_32x4d', 'scnet50_v1d', 'ge_scnet50', 'se_scnet50'])
def test_large_and_non_square_inputs(name):
    model = scnet.create_model(name, num_classes=3).eval()
    with torch.no_grad():
        for size in ((512, 512), (224, 320), (97, 513)):
            assert model(torch.randn(1, 3, *size)).shape == (1, 3)


def test_train_step_on_tiny_inputs():
    model = scnet.create_model('scnet26_cifar', num_classes=5)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_registered_in_timm_with_features_only():
    assert {'scnet50', 'ge_resnet50', 'resnext50_2x40d'} <= set(timm.list_models('*'))
    backbone = timm.create_model('scnet50', features_only=True, out_indices=(1, 2, 3, 4)).eval()
    assert backbone.feature_info.channels() == [256, 512, 1024, 2048]
    assert backbone.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 96, 128))
    assert [tuple(f.shape[-2:]) for f in feats] == [(24, 32), (12, 16), (6, 8), (3, 4)]
    cifar = scnet.create_model('scnet26_cifar', features_only=True).eval()
    assert cifar.feature_info.reduction() == [1, 1, 2, 4, 8]
    with torch.no_grad():
        assert [f.shape[-1] for f in cifar(torch.randn(1, 3, 32, 32))] == [32, 32, 16, 8, 4]


@pytest.mark.parametrize('build', [scnet.create_model, timm.create_model])
@pytest.mark.parametrize('name, out_indices, error, message', [
    ('scnet26_cifar', (1, 5), scnet.InvalidArgumentError,
     r'out_indices=\(1, 5\) names feature map 5, which the network does not have; the network has 5 feature maps'
     r'.*e.g. out_indices=\(1, 2, 3, 4\)'),
    ('scnet26_cifar', (-6,), scnet.InvalidArgumentError, 'names feature map -6'),
    ('scnet26_cifar', 6, scnet.InvalidArgumentError, r'out_indices=6 is not a number of feature maps to take'),
    ('scnet26_cifar', ('1',), scnet.InvalidArgumentTypeError, 'out_indices must be a tuple of feature map indices'),
    ('resnet26', (5,), scnet.InvalidArgumentError, 'resnet26: out_indices=\\(5,\\) names feature map 5'),
])
def test_out_indices_outside_the_feature_maps_is_a_clear_error(build, name, out_indices, error, message):
    """timm failed with a bare IndexError from its feature wrapper; the zoo's names say which maps exist, whether
    built by scnet or by timm (the baselines are timm's own, so only scnet.create_model can check them)."""
    if build is timm.create_model and name == 'resnet26':
        pytest.skip("timm's own model")
    with pytest.raises(error, match=message):
        build(name, features_only=True, out_indices=out_indices, channels=[8, 16, 32, 64])


def test_a_classifier_on_unpooled_features_is_a_clear_error():
    """global_pool='' with a classifier built, and the first forward pass failed on a matrix product; unpooled
    features are num_classes=0 (or features_only), and reset_classifier refuses the same head."""
    for build, name in ((scnet.create_model, 'scnet26_cifar'), (timm.create_model, 'scnet26_cifar'),
                        (scnet.create_model, 'resnet26')):
        with pytest.raises(scnet.InvalidArgumentError, match=r"global_pool='' keeps the \(N, C, H, W\) feature map, "
                                                             r'which a classifier cannot take.*num_classes=0'):
            build(name, global_pool='', channels=[8, 16, 32, 64])
    model = scnet.create_model('scnet26_cifar', global_pool='', num_classes=0, channels=[8, 16, 32, 64]).eval()
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 64 * 4, 4, 4)
    with pytest.raises(scnet.InvalidArgumentError, match=r"reset_classifier: global_pool='' .*\(num_classes=5\)"):
        model.reset_classifier(5, '')
    # the pooling kept: built, as timm builds it (timm's own model tests do this), with a warning naming the way out
    with pytest.warns(UserWarning, match=r"reset_classifier\(5\) keeps global_pool=''.*reset_classifier\(5, 'avg'\)"):
        model.reset_classifier(5)
    model.reset_classifier(5, 'avg')
    assert model(x).shape == (2, 5)


def test_sc_models_use_sc_conv_in_every_bottleneck_and_baselines_do_not():
    scnet50 = scnet.create_model('scnet50')
    assert len(sc_layers(scnet50)) == 16
    assert len(sc_layers(scnet.create_model('scnet101'))) == 33
    assert sc_layers(scnet.create_model('resnet50')) == []
    scnext = sc_layers(scnet.create_model('scnext50_32x4d'))
    assert scnext[0].groups == 32 and scnext[0].in_channels == 128


@pytest.mark.parametrize('kwargs, expected', [
    (dict(pooling_r=1), dict(pooling_r=1)),
    (dict(pooling_r=2), dict(pooling_r=2)),
    (dict(identity=False), dict(identity=False)),
    (dict(pool='max'), dict(pool='max')),
    (dict(upsample='bilinear'), dict(upsample='bilinear')),
    (dict(), dict(pooling_r=4, pool='avg', identity=True, upsample='nearest')),
])
def test_table2_rows_are_one_call(kwargs, expected):
    layers = sc_layers(scnet.create_model('scnet50', **kwargs))
    for key, value in expected.items():
        assert {getattr(layer, key) for layer in layers} == {value}


def test_v1d_matches_the_authors_structure():
    model = scnet.create_model('scnet50_v1d')
    assert model.conv1[0].out_channels == 32 and model.conv1[6].out_channels == 64
    assert isinstance(model.maxpool, torch.nn.MaxPool2d) and model.maxpool.stride == 2  # stem pool untouched
    block = model.layer2[0]
    assert block.conv2.stride == (1, 1) and block.aa.kernel_size == 3 and block.aa.stride == 2
    assert isinstance(model.layer1[0].aa, torch.nn.Identity)
    assert isinstance(block.downsample[0], torch.nn.AvgPool2d)


def test_gather_excite_kernel_covers_each_stage_at_224():
    model = scnet.create_model('ge_resnet50')
    assert [getattr(model, f'layer{i}')[0].se.extent for i in range(1, 5)] == [56, 28, 14, 7]


@pytest.mark.parametrize('kwargs, message', [
    (dict(channels=8, extent=0), 'GatherExcite: extent must be a positive integer, got 0'),
    (dict(channels=8, extent=2.5), 'extent must be a positive integer, got 2.5'),
    (dict(channels=0, extent=7), 'GatherExcite: channels must be a positive integer, got 0'),
    (dict(channels=8, extent=7, norm_layer='groupnorm'), r'cannot normalise 8 channels .*GroupNorm, num_groups=8\)'),
    (dict(channels=8, extent=7, norm_layer='foonorm'), "GatherExcite: unknown norm_layer 'foonorm'"),
])
def test_gather_excite_arguments_are_clear_errors(kwargs, message):
    """scnet.GatherExcite is public: bad arguments were a bare ValueError or TypeError from torch."""
    with pytest.raises(scnet.InvalidArgumentError, match=message):
        scnet.GatherExcite(**kwargs)
    gate = scnet.GatherExcite(8, 7, norm_layer=None)  # no norm, as SCConv2d takes it
    assert type(gate.norm) is torch.nn.Identity and gate(torch.randn(1, 8, 5, 5)).shape == (1, 8, 5, 5)


@pytest.mark.parametrize('norm, kind', [('groupnorm', torch.nn.GroupNorm), (torch.nn.Identity, torch.nn.Identity)])
def test_gather_excite_gates_take_the_network_norm(norm, kind):
    """ge_scnet50(norm_layer=...) kept a BatchNorm in each of its 16 gates: batch statistics in a GroupNorm
    network, normalisation in one built without."""
    with torch.device('meta'):
        model = scnet.create_model('ge_scnet50', norm_layer=norm)
    gates = [m for m in model.modules() if isinstance(m, scnet.GatherExcite)]
    assert len(gates) == 16 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert all(isinstance(g.norm, kind) for g in gates)


@pytest.mark.parametrize('name', ['scnet26_cifar', 'resnet26'])
def test_a_norm_that_does_not_fit_a_narrow_network_is_a_clear_error(name):
    """timm's GroupNorm of 32 groups on an 8-channel layer was a bare ValueError from inside timm's ResNet."""
    with pytest.raises(scnet.InvalidArgumentError, match=r"norm_layer='groupnorm' cannot normalise every layer .*"
                                                         r'num_groups \(32\).*timm.layers.GroupNorm, num_groups=8'):
        scnet.create_model(name, norm_layer='groupnorm', channels=[8, 16, 32, 64])


def test_norm_layer_groupnorm_class_says_how_to_give_its_groups():
    """nn.GroupNorm takes its number of groups first: torch's "missing 1 required positional argument" was a bare
    TypeError from SCConv2d and GatherExcite."""
    for build in (lambda: scnet.SCConv2d(8, 8, norm_layer=torch.nn.GroupNorm),
                  lambda: scnet.GatherExcite(8, 7, norm_layer=torch.nn.GroupNorm),
                  lambda: scnet.create_model('scnet26_cifar', norm_layer=torch.nn.GroupNorm),
                  # timm's ResNet keeps only a partial's keywords: this is nn.GroupNorm(channels) there
                  lambda: scnet.create_model('scnet26_cifar', norm_layer=functools.partial(torch.nn.GroupNorm, 8))):
        with pytest.raises(scnet.InvalidArgumentTypeError, match=r'norm_layer.* missing 1 required positional .*'
                                                                 r'partial\(timm.layers.GroupNorm, num_groups=8\)'):
            build()
    # the way out works for all three
    norm = functools.partial(timm.layers.GroupNorm, num_groups=8)
    assert isinstance(scnet.SCConv2d(32, 32, norm_layer=norm).k3_norm, torch.nn.GroupNorm)
    assert isinstance(scnet.GatherExcite(32, 7, norm_layer=norm).norm, torch.nn.GroupNorm)
    model = scnet.create_model('ge_scnet50', channels=(32, 64, 128, 256), norm_layer=norm)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize('build', [scnet.create_model, timm.create_model])
@pytest.mark.parametrize('kwargs, error, message', [
    (dict(channels=(8, 16, 32, 64, 128)), scnet.InvalidArgumentError,
     r'channels is 4 positive ints.*got \(8, 16, 32, 64, 128\)'),
    (dict(layers=(1, 1)), scnet.InvalidArgumentError, r'layers is 4 positive ints, the block counts .*got \(1, 1\)'),
    (dict(layers=(1, 0, 1, 1)), scnet.InvalidArgumentError, r'layers is 4 positive ints'),
    (dict(channels='abc'), scnet.InvalidArgumentTypeError, "channels is 4 positive ints.*got 'abc'"),
    (dict(channels=(8, 16, 32, -64)), scnet.InvalidArgumentError, r'got \(8, 16, 32, -64\)'),
    (dict(cardinality=0), scnet.InvalidArgumentError, 'cardinality must be a positive int, got 0'),
    # scnet.create_model checked these before timm's route did: in_chans=0 and drop_rate=2 failed at the first
    # forward pass, block_reduce_first=0 divided by zero, avg_down='no' read as True
    (dict(num_classes=-1), scnet.InvalidArgumentError, 'num_classes must be at least 0, got -1'),
    (dict(in_chans=0), scnet.InvalidArgumentError, 'in_chans must be at least 1, got 0'),
    (dict(drop_rate=2.0), scnet.InvalidArgumentError, r'drop_rate must be a probability in \[0, 1\), got 2.0'),
    (dict(block_reduce_first=0), scnet.InvalidArgumentError, 'block_reduce_first must be at least 1, got 0'),
    (dict(avg_down='no'), scnet.InvalidArgumentTypeError, "avg_down must be True or False, got 'no'"),
])
def test_stage_arguments_that_timm_builds_but_cannot_run_are_clear_errors(build, kwargs, error, message):
    """Five widths built a classifier for a fifth stage never run (its first forward pass failed), two block
    counts failed with "'SCResNet' object has no attribute 'layer3'", a 0-block stage was misdescribed by
    feature_info, negative widths and cardinality=0 failed deep in torch."""
    with pytest.raises(error, match=message):
        build('scnet26_cifar', **kwargs)


def test_unknown_model_name_suggests_close_names():
    with pytest.raises(scnet.UnknownModelError, match="unknown model 'scnet5'.*Did you mean.*scnet50"):
        scnet.create_model('scnet5')


def test_a_timm_weights_tag_says_to_name_the_architecture():
    """timm.list_models(pretrained=True) lists 'scnet50.authors_in1k'; create_model suggested scnet50_v1d."""
    with pytest.raises(scnet.UnknownModelError, match=r"'scnet50.authors_in1k' names a weights file .*"
                                                      r"create_model\('scnet50', pretrained=True\)"):
        scnet.create_model('scnet50.authors_in1k')


def test_sc_option_on_a_baseline_is_a_clear_error():
    with pytest.raises(TypeError, match='resnet50 has no SC-Conv layers'):
        scnet.create_model('resnet50', pooling_r=2)
    with pytest.raises(TypeError, match='resnext50_2x40d has no SC-Conv layers'):
        scnet.create_model('resnext50_2x40d', pool='max')
    with pytest.raises(ValueError, match='pooling_r must be a positive integer'):
        scnet.create_model('scnet26', pooling_r=0)


@pytest.mark.parametrize('name, kwargs, message', [
    ('scnet26_cifar', dict(pooling=2), r"scnet26_cifar takes no argument 'pooling'. Did you mean pooling_r"),
    ('scnet26_cifar', dict(num_class=10), 'Did you mean num_classes?'),
    ('resnet50', dict(feature_only=True), "resnet50 takes no argument 'feature_only'. Did you mean features_only"),
    ('scnet26_cifar', dict(out_indices=(1, 2)), 'out_indices selects the feature maps .* pass features_only=True'),
])
def test_a_misspelt_argument_names_the_close_ones(name, kwargs, message):
    """timm's "ResNet.__init__() got an unexpected keyword argument" named neither the model nor the right name."""
    with pytest.raises(scnet.InvalidArgumentTypeError, match=message):
        scnet.create_model(name, **kwargs)


def test_timm_weights_out_of_reach_are_a_checkpoint_error(monkeypatch, tmp_path):
    """A baseline's pretrained=True without network or cache raised Hugging Face Hub's own OSError."""
    from huggingface_hub import constants
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(tmp_path))
    with pytest.raises(scnet.CheckpointError, match=r"resnet26: cannot get timm's pretrained weights .*checkpoint="):
        scnet.create_model('resnet26', pretrained=True)


def test_pretrained_and_checkpoint_together_is_an_error():
    with pytest.raises(scnet.InvalidArgumentError, match='not both'):  # was a plain ValueError
        scnet.create_model('scnet50', pretrained=True, checkpoint='x.pth')


def test_channels_last_model_matches():
    model = scnet.create_model('scnet26', num_classes=4).eval()
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_whole_model_exports_to_onnx(tmp_path):
    ort = pytest.importorskip('onnxruntime')
    model = scnet.create_model('scnet26_cifar', num_classes=5).eval()
    x = torch.randn(1, 3, 40, 32)
    path = tmp_path / 'scnet26_cifar.onnx'
    torch.onnx.export(model, (x,), str(path), dynamo=True)
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), model(x), rtol=1e-4, atol=1e-4)


def test_caller_arguments_override_the_variant():
    model = scnet.create_model('scnet26_cifar', channels=(16, 32, 64, 128), num_classes=2)
    assert model.layer4[0].conv3.out_channels == 512
    assert scnet.create_model('scnet50', layers=(1, 1, 1, 1)).layer3[0].conv2.in_channels == 256


@pytest.mark.parametrize('kwargs, error, message', [
    (dict(channels=(8, 16, 32, 64)), scnet.InvalidArgumentError,
     r'stage 1 would give SC-Conv a width of 0 channels .*base_width=4.*cardinality=32.*widen the network.*'
     r'e.g. channels=\(32, 64, 128, 256\)'),
    (dict(base_width=1), scnet.InvalidArgumentError, r'width of 32 channels .*positive even number'),
    (dict(num_classes='10'), scnet.InvalidArgumentTypeError, r"num_classes must be an int, got '10' \(str\)"),
    (dict(num_classes=-1), scnet.InvalidArgumentError, 'num_classes must be at least 0, got -1'),
    (dict(in_chans=0), scnet.InvalidArgumentError, 'in_chans must be at least 1, got 0'),
    (dict(in_chans=3.0), scnet.InvalidArgumentTypeError, r'in_chans must be an int, got 3.0'),
    # timm builds these and fails at the first forward pass, or fails with a bare assertion or KeyError
    (dict(drop_rate=2), scnet.InvalidArgumentError, r'drop_rate must be a probability in \[0, 1\), got 2'),
    (dict(drop_path_rate=-0.1), scnet.InvalidArgumentError, r'drop_path_rate must be a probability .* got -0.1'),
    (dict(drop_path_rate='0.1'), scnet.InvalidArgumentError, r"drop_path_rate must be a probability .* got '0.1'"),
    (dict(output_stride=7), scnet.InvalidArgumentError, 'output_stride must be one of 8, 16, 32.* got 7'),
    (dict(global_pool='foo'), scnet.InvalidArgumentError,
     r"scnext50_32x4d: Invalid pool type: foo \(arguments given: global_pool='foo'\).*'avg', 'max'"),
    (dict(global_pool=5), scnet.InvalidArgumentTypeError, r"global_pool must be a string, one of 'avg'.*got 5"),
    (dict(norm_layer='foonorm'), scnet.InvalidArgumentError,
     r"scnext50_32x4d: unknown norm_layer 'foonorm'; pass a callable .* timm's names: batchnorm, .*groupnorm"),
    (dict(act_layer='foo'), scnet.InvalidArgumentError, r"act_layer='foo' is not a layer name timm knows"),
    (dict(checkpoint=5), scnet.InvalidArgumentTypeError, r'checkpoint must be a path .* got 5 \(int\)'),
    (dict(pretrained='no'), scnet.InvalidArgumentTypeError, "pretrained must be True or False, got 'no'"),
    (dict(avg_down='no'), scnet.InvalidArgumentTypeError, "avg_down must be True or False, got 'no'"),
    (dict(zero_init_last=None), scnet.InvalidArgumentTypeError, 'zero_init_last must be True or False, got None'),
    (dict(block_reduce_first=0), scnet.InvalidArgumentError, r"block_reduce_first must be at least 1, got 0; timm's"),
    (dict(stem_width=32.0), scnet.InvalidArgumentTypeError, r'stem_width must be an int, got 32.0'),
    (dict(cifar_stem=True, stem_type='deep'), scnet.InvalidArgumentError,
     r"cifar_stem .* cannot be combined with stem_type='deep': leave stem_type out"),
    (dict(norm_layer='groupnorm', channels=(32, 64, 128, 256), cardinality=1, base_width=64),
     scnet.InvalidArgumentError, r'norm_layer cannot normalise the 16-channel half .*GroupNorm, num_groups=8\)'),
])
def test_model_arguments_are_clear_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        scnet.create_model('scnext50_32x4d', **kwargs)


@pytest.mark.parametrize('name', [None, 50, ['scnet50']])
def test_a_model_name_that_is_not_a_string_is_a_clear_error(name):
    with pytest.raises(scnet.InvalidArgumentTypeError, match=r"a model name is a string such as 'scnet50', got"):
        scnet.create_model(name)
    with pytest.raises(scnet.InvalidArgumentTypeError, match='a model name is a string'):
        scnet.models.factory.validate_model_name(name)


def test_valid_rates_and_output_strides_still_build():
    model = scnet.create_model('scnet26_cifar', num_classes=3, drop_rate=0.2, drop_path_rate=0.1, output_stride=16,
                               global_pool='avgmax').train()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_norm_layer_without_weights_or_by_name():
    """timm's ResNet takes norm_layer=nn.Identity (a network without normalisation) and timm's norm names; the SC
    models take them too."""
    for norm in (torch.nn.Identity, 'batchnorm'):
        model = scnet.create_model('scnet26_cifar', num_classes=3, norm_layer=norm).eval()
        layer = sc_layers(model)[0]
        assert type(layer.k3_norm) is (torch.nn.Identity if norm is torch.nn.Identity else torch.nn.BatchNorm2d)
        with torch.no_grad():
            assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


@pytest.mark.parametrize('norm', ['layernorm', 'rmsnorm', 'simplenorm', torch.nn.LayerNorm, torch.nn.BatchNorm1d])
def test_a_norm_over_the_last_dimension_is_refused_before_the_first_forward_pass(norm):
    """timm's 'layernorm' (and nn.BatchNorm1d ...) built a whole network that failed at its first forward pass
    with torch's shape error; refused where it is given, naming the variants over channels."""
    expected = r"norm_layer=.* does not normalise \(N, C, H, W\) feature maps .*'layernorm2d', 'rmsnorm2d'"
    for build, where in ((lambda: scnet.create_model('scnet26_cifar', norm_layer=norm), 'scnet26_cifar'),
                         (lambda: timm.create_model('scnet26_cifar', norm_layer=norm), 'scnet26_cifar'),
                         (lambda: scnet.create_model('resnet26', norm_layer=norm), 'resnet26'),
                         (lambda: scnet.SCConv2d(16, 16, norm_layer=norm), 'SCConv2d'),
                         (lambda: scnet.GatherExcite(16, 7, norm_layer=norm), 'GatherExcite')):
        with pytest.raises(scnet.InvalidArgumentError, match=f'^{where}: {expected}'):
            build()
    # the variants over channels build and run (the probe runs a fresh instance: no statistics change)
    model = scnet.create_model('scnet26_cifar', num_classes=3, norm_layer='layernorm2d')
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    layer = scnet.SCConv2d(16, 16)
    assert int(layer.k2_norm.num_batches_tracked) == 0 and torch.equal(layer.k2_norm.running_mean, torch.zeros(8))
    # a norm built in another dtype (or on another device) is probed there, not refused
    double = scnet.SCConv2d(16, 16, norm_layer=functools.partial(torch.nn.BatchNorm2d, dtype=torch.float64))
    assert type(double.k3_norm) is torch.nn.BatchNorm2d


def test_norms_timm_cannot_build_and_anti_aliasing_by_name_are_clear_errors():
    """timm's ResNet gives every norm device/dtype (torchvision's FrozenBatchNorm2d takes neither) and tests
    aa_layer with issubclass: bare TypeErrors before."""
    with pytest.raises(scnet.InvalidArgumentTypeError, match=r"norm_layer='frozenbatchnorm2d' takes no device .*"
                                                             r'timm.layers.freeze_batch_norm_2d\(model\)'):
        scnet.create_model('scnet26_cifar', norm_layer='frozenbatchnorm2d')
    with pytest.raises(scnet.InvalidArgumentTypeError, match=r"aa_layer must be a class .*BlurPool2d\), got 'blur'"):
        scnet.create_model('scnet26_cifar', aa_layer='blur')
    model = scnet.create_model('scnet26_cifar', num_classes=3, aa_layer=timm.layers.BlurPool2d)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_gather_excite_names_a_wrong_input_and_a_single_image_in_training():
    gate = scnet.GatherExcite(16, 4)
    with pytest.raises(scnet.InvalidArgumentError, match=r'GatherExcite expects an input of shape \(N, 16, H, W\) '
                                                         r'\(channels=16\), got \(2, 8, 4, 4\)'):
        gate(torch.randn(2, 8, 4, 4))
    with pytest.raises(scnet.errors.SingleValueBatchError, match='batch of 1 image .* at least 2 images .*model.eval'):
        gate(torch.randn(1, 16, 4, 4))
    assert gate(torch.randn(2, 16, 4, 4)).shape == (2, 16, 4, 4)
    assert gate.eval()(torch.randn(1, 16, 4, 4)).shape == (1, 16, 4, 4)  # running statistics: one image is fine


def test_whole_model_traces_with_torch_jit_trace_default_check():
    model = scnet.create_model('scnet26_cifar', num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        traced = torch.jit.trace(model, x)  # check_trace=True: traces twice and compares the graphs
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x), rtol=1e-5, atol=1e-5)


def test_create_model_builds_the_network_a_training_run_recorded(tmp_path):
    """A checkpoint of scnet train records its model options; pooling_r and pool change no tensor's shape,
    so without them the weights would load into another network, silently."""
    import json

    from scnet.weights import save_state_dict

    options = {'channels': [8, 16, 32, 64], 'pooling_r': 2, 'pool': 'max'}
    trained = scnet.create_model('scnet26_cifar', num_classes=3, **options).eval()
    run = tmp_path / 'run'
    save_state_dict(trained.state_dict(), run / 'model.safetensors',
                    metadata={'model': 'scnet26_cifar', 'model_kwargs': json.dumps(options)})
    loaded = scnet.create_model('scnet26_cifar', checkpoint=run).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), trained(x))
    assert loaded.layer1[0].conv2.pooling_r == 2 and loaded.layer1[0].conv2.pool == 'max'
    given = scnet.create_model('scnet26_cifar', checkpoint=run, pooling_r=4)  # what is given wins
    assert given.layer1[0].conv2.pooling_r == 4
    with pytest.raises(scnet.InvalidArgumentError, match='holds weights of scnet26_cifar .recorded in it., not of '
                                                         'scnet26'):
        scnet.create_model('scnet26', checkpoint=run)

"""scnet.convert on torchvision, timm and hand-written networks."""
import json

import pytest
import timm
import torch
import torchvision
from torch import nn
from torch.nn.utils import prune

import scnet
from scnet import SCConv2d


def test_torchvision_resnet50_every_bottleneck_3x3_converted():
    model = torchvision.models.resnet50(num_classes=10)
    report = scnet.convert(model)
    assert len(report.converted) == 16 and report.skipped == []
    assert all(isinstance(b.conv2, SCConv2d) for layer in (model.layer1, model.layer4) for b in layer)
    assert model.layer2[0].conv2.stride == (2, 2)
    assert report.params_after == report.params_before + sum(  # only the two inner BNs are new
        4 * (c.in_channels // 2) for c in report.converted)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 40, 56)).shape == (2, 10)


def test_torchvision_resnet18_basic_blocks_and_options():
    model = torchvision.models.resnet18(num_classes=3)
    report = scnet.convert(model, pooling_r=2, pool='max', exclude=['layer4.*'])
    assert len(report.converted) == 12
    assert {s.name for s in report.skipped} == {'layer4.0.conv1', 'layer4.0.conv2', 'layer4.1.conv1',
                                                 'layer4.1.conv2'}
    assert all(s.reason == 'excluded by pattern' for s in report.skipped)
    assert {(m.pooling_r, m.pool) for m in model.modules() if isinstance(m, SCConv2d)} == {(2, 'max')}
    # 64 -> 128 convs change width: parameters differ from the plain conv and the report shows it
    c = next(c for c in report.converted if c.name == 'layer2.0.conv1')
    assert (c.in_channels, c.out_channels, c.stride) == (64, 128, 2)
    model.train()
    model(torch.randn(2, 3, 32, 32)).sum().backward()


def test_timm_resnet_and_dilated_backbone():
    model = timm.create_model('resnet26', output_stride=8, num_classes=0)
    report = scnet.convert(model)
    assert len(report.converted) == 8
    assert {c.dilation for c in report.converted} == {1, 2, 4}
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 2048)


class UsersNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)          # 3 input channels: odd
        self.biased = nn.Conv2d(16, 16, 3, padding=1)                   # has a bias
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.valid = nn.Conv2d(16, 16, 3, padding=0, bias=False)        # padding != dilation
        self.reflect = nn.Conv2d(16, 16, 3, padding=1, bias=False, padding_mode='reflect')
        self.good = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False, groups=2)
        self.pointwise = nn.Conv2d(32, 32, 1, bias=False)               # not 3x3: not mentioned

    def forward(self, x):
        for m in self.children():
            x = m(x)
        return x


def test_users_network_reports_every_skip_with_its_reason():
    model = UsersNet()
    x = torch.randn(2, 3, 20, 20)
    shape = model(x).shape
    report = scnet.convert(model)
    assert [c.name for c in report.converted] == ['good']
    reasons = {s.name: s.reason for s in report.skipped}
    assert set(reasons) == {'stem', 'biased', 'depthwise', 'valid', 'reflect'}
    assert '3 input channels' in reasons['stem']
    assert 'bias' in reasons['biased']
    assert 'groups' in reasons['depthwise'] or 'group' in reasons['depthwise']
    assert 'padding' in reasons['valid']
    assert 'reflect' in reasons['reflect']
    assert model(x).shape == shape
    as_dict = json.loads(report.to_json())
    assert as_dict['converted'][0]['name'] == 'good' and len(as_dict['skipped']) == 5
    assert 'converted 1 3x3 conv(s)' in str(report) and '- biased: has a bias' in str(report)


@pytest.mark.filterwarnings('ignore:`torch.nn.utils.weight_norm` is deprecated:FutureWarning')  # the classic one
def test_a_pruned_or_normalised_or_hooked_conv_is_skipped_not_stripped():
    """torch.nn.utils.prune and the classic spectral_norm / weight_norm work through a forward pre-hook on the
    convolution, and captures through forward hooks: a new layer in its place would drop them silently."""
    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 16, 1), nn.Conv2d(16, 16, 3, padding=1, bias=False),
                             nn.Conv2d(16, 16, 3, padding=1, bias=False))

    hooked = net()
    prune.l1_unstructured(hooked[1], 'weight', 0.5)
    seen = []
    hooked[2].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    x = torch.randn(2, 3, 12, 12)
    before = hooked(x)
    report = scnet.convert(hooked)
    assert report.converted == [] and {s.name for s in report.skipped} == {'1', '2'}
    assert all('hooks' in s.reason and 'prune.remove' in s.reason for s in report.skipped)
    torch.testing.assert_close(hooked(x), before)  # the mask still applies
    assert len(seen) == 2
    for wrap in (torch.nn.utils.spectral_norm, torch.nn.utils.weight_norm):
        model = net()
        wrap(model[1])
        assert [s.name for s in scnet.convert(model).skipped] == ['1']
    prune.remove(hooked[1], 'weight')  # made permanent: converts
    assert '1' in [c.name for c in scnet.convert(hooked).converted]


def test_channels_last_and_eval_mode_are_kept():
    model = torchvision.models.resnet18().eval().to(memory_format=torch.channels_last)
    scnet.convert(model)
    sc = model.layer1[0].conv1
    assert not sc.training
    assert sc.k1.weight.is_contiguous(memory_format=torch.channels_last)


def test_bad_option_is_a_clear_error():
    with pytest.raises(ValueError, match='pooling_r'):
        scnet.convert(torchvision.models.resnet18(), pooling_r=-1)


def test_converting_twice_changes_nothing_the_second_time():
    """A second convert must not enter the SCConv2d layers and convert their K1..K4 (nested SC-Convs)."""
    model = torchvision.models.resnet18()
    first = scnet.convert(model)
    layers = {name: m for name, m in model.named_modules() if isinstance(m, SCConv2d)}
    second = scnet.convert(model)
    assert second.converted == [] and len(second.skipped) == len(first.converted) == 16
    assert {s.name for s in second.skipped} == set(layers)
    assert all(s.reason.startswith('already an SCConv2d') for s in second.skipped)
    assert {name: m for name, m in model.named_modules() if isinstance(m, SCConv2d)} == layers
    assert all(type(m.k1) is nn.Conv2d for m in layers.values())
    sc_model = scnet.create_model('scnet26_cifar', num_classes=3)
    assert scnet.convert(sc_model).converted == []
    assert scnet.convert(SCConv2d(8, 8)).skipped[0].reason.startswith('already an SCConv2d')


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.b = self.a                          # the same conv under a second name
        self.blocks = nn.Sequential(self.a)      # and a third, one level down

    def forward(self, x):
        return self.blocks(self.b(self.a(x)))


def test_a_shared_conv_becomes_one_sc_conv_under_every_name():
    model = Shared()
    report = scnet.convert(model)
    assert [(c.name, c.aliases) for c in report.converted] == [('a', ['b', 'blocks.0'])]
    assert isinstance(model.a, SCConv2d) and model.a is model.b is model.blocks[0]
    assert '(also b, blocks.0)' in str(report)
    assert model(torch.randn(2, 8, 6, 6)).shape == (2, 8, 6, 6)


def test_shared_conv_is_excluded_by_any_of_its_names():
    model = Shared()
    report = scnet.convert(model, exclude='blocks.*')
    assert report.converted == [] and [s.name for s in report.skipped] == ['a']
    assert type(model.a) is nn.Conv2d and model.a is model.b is model.blocks[0]


def test_exclude_takes_a_single_pattern_as_a_string():
    """A string is one pattern, not one pattern per character."""
    as_string = scnet.convert(torchvision.models.resnet18(), exclude='layer4.*')
    as_list = scnet.convert(torchvision.models.resnet18(), exclude=['layer4.*'])
    assert len(as_string.converted) == len(as_list.converted) == 12
    assert [s.name for s in as_string.skipped] == [s.name for s in as_list.skipped]
    with pytest.raises(scnet.InvalidArgumentTypeError, match='exclude takes a shell pattern'):
        scnet.convert(torchvision.models.resnet18(), exclude=[3])


@pytest.mark.parametrize('kwargs, message', [
    (dict(stride=2), 'convert takes stride from each convolution it replaces'),
    (dict(groups=2), 'convert takes groups from each convolution it replaces'),
    (dict(pooling=2), r'unknown option\(s\) pooling; the SCConv2d options it takes: pooling_r'),
])
def test_per_conv_and_unknown_options_are_clear_errors(kwargs, message):
    model = torchvision.models.resnet18()
    with pytest.raises(scnet.InvalidArgumentTypeError, match=message):
        scnet.convert(model, **kwargs)
    assert not any(isinstance(m, SCConv2d) for m in model.modules())


def test_a_name_or_a_scripted_module_is_a_clear_error():
    with pytest.raises(scnet.InvalidArgumentTypeError,
                       match=r"takes an nn.Module .* got str; .*scnet.convert\(timm.create_model\('resnet18'\)\)"):
        scnet.convert('resnet18')
    with pytest.raises(scnet.InvalidArgumentTypeError, match='TorchScript module .* cannot be converted.*then script'):
        scnet.convert(torch.jit.script(torchvision.models.resnet18()))
    assert issubclass(scnet.InvalidArgumentTypeError, (scnet.ScnetError, TypeError))


def test_a_layer_option_rejected_leaves_the_model_unchanged():
    """Every new layer is built before the first is put in place: an option only the last conv cannot take
    (8 channels in 16 groups) leaves the first unconverted too."""
    from functools import partial
    model = nn.Sequential(*(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False) for c_in, c_out in ((64, 16), (16, 16))))
    with pytest.raises(ValueError, match='divisible'):
        scnet.convert(model, norm_layer=partial(nn.GroupNorm, 16))
    assert not any(isinstance(m, SCConv2d) for m in model.modules())
    with pytest.raises(scnet.InvalidArgumentError, match='identity must be True or False'):
        scnet.convert(model, identity='no')


def test_same_padding_converts_and_exclude_patterns_must_match():
    """padding='same' at stride 1 is the dilation's padding for a 3x3 kernel; an exclude pattern that matches
    nothing (a typo) is an error before anything changes, and a model without 3x3 convolutions says so."""
    model = nn.Sequential(nn.Conv2d(16, 16, 3, padding='same', bias=False),
                          nn.Conv2d(16, 16, 3, padding='same', dilation=2, bias=False))
    report = scnet.convert(model)
    assert [c.name for c in report.converted] == ['0', '1'] and type(model[1]) is SCConv2d
    assert model(torch.randn(1, 16, 9, 9)).shape == (1, 16, 9, 9)
    net = torchvision.models.resnet18()
    before = [type(m) for m in net.modules()]
    with pytest.raises(scnet.InvalidArgumentError, match=r"exclude pattern\(s\) 'layers4.\*' match no module of the "
                                                         r'model \(its top-level modules: conv1, bn1, .*layer4'):
        scnet.convert(net, exclude=['layer1.*', 'layers4.*'])
    assert [type(m) for m in net.modules()] == before
    with pytest.warns(UserWarning, match='no 3x3 convolution in Sequential: nothing to convert'):
        scnet.convert(nn.Sequential(nn.Linear(4, 4)))

"""``scnet.deploy``: BatchNorm folding (by structure, confirmed by a probe, checked on the result), channels-last,
torch.compile, and the report.

BN statistics and affine parameters are randomised in every test ("pretrained-like": the freshly built
networks have mean 0, variance 1, and timm zero-initialises each block's last BN), so folding changes the
weights for real and a wrong fold shows in the logits.
"""
import copy

import pytest
import torch
import torchvision
from torch import nn

import scnet
from scnet.deploy import DeployedModel, DeployError, DeployReport
from scnet.layers import SCConv2d


def randomise_bns(model: nn.Module, seed: int = 0) -> nn.Module:
    """Running statistics and affine parameters like a trained network's (last BN of a block small)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                if m.running_mean is not None:
                    m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                    m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                if m.weight is not None:
                    m.weight.copy_((torch.rand(n, generator=g) + 0.5) * (0.2 if name.endswith('bn3') else 1.0))
                    m.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return model


def batchnorms(model: nn.Module):
    return [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def logits_diff(original: nn.Module, deployed: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((original.eval()(x) - deployed(x)).abs().max())


@pytest.mark.parametrize('name', scnet.list_models())
def test_every_zoo_model_folds_every_batchnorm_and_keeps_its_logits(name):
    """Whole zoo at 32 px: no BN left (GE gates included), logits unchanged on an input other than the probe."""
    model = randomise_bns(scnet.create_model(name, num_classes=10), seed=len(name))
    n_bns = len(batchnorms(model))
    deployed = scnet.deploy(model, channels_last=False, example_input=torch.randn(1, 3, 32, 32))
    report = deployed.report
    assert report.unfolded == [] and report.folded_count == n_bns
    assert batchnorms(deployed.module) == []
    assert report.max_abs_diff <= 1e-4
    assert logits_diff(model, deployed, torch.randn(2, 3, 32, 32)) <= 1e-4
    if name.startswith('ge_'):
        assert any(f.rule == 'GatherExcite gather' for f in report.folded)


@pytest.mark.parametrize('name', ['scnet26_cifar', 'resnet26_cifar'])
def test_small_models_rules_and_channels_last(name):
    model = randomise_bns(scnet.create_model(name, num_classes=10))
    deployed = scnet.deploy(model)  # default probe: the model's pretrained_cfg size, batch 2
    assert deployed.report.probe_shape == (2, 3, 32, 32)
    assert deployed.report.channels_last and not deployed.report.compiled
    folded = {f.bn: f for f in deployed.report.folded}
    assert folded['bn1'].conv == 'conv1' and folded['layer2.0.downsample.1'].rule == 'Sequential'
    if name.startswith('scnet'):
        assert folded['layer1.0.bn2'].conv == 'layer1.0.conv2.k1, layer1.0.conv2.k4'
        assert folded['layer1.0.conv2.k2_norm'].rule == folded['layer1.0.conv2.k3_norm'].rule == 'SCConv2d k2/k3'
        k1 = deployed.module.layer1[0].conv2.k1
        assert k1.bias is not None and k1.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(3, 3, 32, 32)  # ordinary NCHW input
    assert x.is_contiguous()
    assert logits_diff(model, deployed, x) <= 1e-4
    out = deployed(x)  # no torch.no_grad() needed
    assert out.shape == (3, 10) and out.grad_fn is None


def test_v1d_deep_stem_avg_down_and_avd():
    model = randomise_bns(scnet.create_model('scnet50_v1d', num_classes=10))
    deployed = scnet.deploy(model, example_input=torch.randn(2, 3, 64, 64))
    folded = {f.bn: f for f in deployed.report.folded}
    assert folded['conv1.1'].rule == 'Sequential'            # inside the deep stem
    assert folded['bn1'].conv == 'conv1.6'                    # the stem's last conv takes the model's bn1
    assert folded['layer2.0.downsample.2'].conv == 'layer2.0.downsample.1'  # after the avg_down pool
    assert deployed.report.unfolded == [] and batchnorms(deployed.module) == []
    assert logits_diff(model, deployed, torch.randn(1, 3, 64, 64)) <= 1e-4


def test_the_default_probe_has_the_networks_input_channels():
    """timm's in_chans (grey or 4-channel inputs): the config still describes the RGB weights, the probe is the
    network's own."""
    for channels in (1, 4):
        model = randomise_bns(scnet.create_model('scnet26_cifar', in_chans=channels, channels=(8, 16, 32, 64)))
        deployed = scnet.deploy(model)
        assert deployed.report.unfolded == [] and batchnorms(deployed.module) == []
        assert logits_diff(model, deployed, torch.randn(2, channels, 32, 32)) <= 1e-4


def test_torchvision_resnet18_converted_to_sc_conv():
    model = torchvision.models.resnet18(num_classes=10)
    scnet.convert(model)
    randomise_bns(model)
    deployed = scnet.deploy(model, example_input=torch.randn(2, 3, 32, 32))
    assert isinstance(deployed.module, torchvision.models.ResNet)
    rules = {f.rule for f in deployed.report.folded}
    assert {'conv2/bn2 (SCConv2d halves)', 'SCConv2d k2/k3', 'conv1/bn1', 'Sequential'} <= rules
    assert deployed.report.unfolded == [] and batchnorms(deployed.module) == []
    assert logits_diff(model, deployed, torch.randn(2, 3, 32, 32)) <= 1e-4


class ReusedConvOutput(nn.Module):
    """``bn1`` looks foldable by name, but ``conv1``'s output is also added to the result: it must stay."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.shared = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8))  # run twice below
        self.conv3, self.bn3 = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)

    def forward(self, x):
        y = self.conv1(x)
        z = self.bn2(self.conv2(torch.relu(self.bn1(y) + y)))
        z = self.shared(self.shared(z))
        c = self.conv3(z)
        return self.bn3(c), c  # conv3's output is also returned


def test_batchnorm_after_a_reused_conv_output_is_left_and_output_stays_right():
    model = randomise_bns(ReusedConvOutput())
    deployed = scnet.deploy(model)
    reasons = {u.name: u.reason for u in deployed.report.unfolded}
    assert set(reasons) == {'bn1', 'shared.1', 'bn3'}
    assert 'also used elsewhere (add)' in reasons['bn1']
    assert 'ran 2 time(s)' in reasons['shared.1']
    assert 'the network output' in reasons['bn3']
    assert [f.bn for f in deployed.report.folded] == ['bn2']
    assert deployed.report.probe_shape == (2, 3, 64, 64)  # no cfg: the default probe size
    assert isinstance(deployed.module.bn1, nn.BatchNorm2d) and isinstance(deployed.module.bn2, nn.Identity)
    x = torch.randn(2, 3, 20, 20)
    with torch.no_grad():
        for a, b in zip(model.eval()(x), deployed(x)):
            assert float((a - b).abs().max()) <= 1e-5


def test_batchnorms_that_cannot_fold_are_reported_with_the_reason():
    from timm.layers import BatchNormAct2d

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False), nn.ReLU(),
                          nn.Conv2d(4, 4, 3), BatchNormAct2d(4), nn.ReLU(), nn.BatchNorm2d(4))
    deployed = scnet.deploy(randomise_bns(model), channels_last=False)
    reasons = {u.name: u.reason for u in deployed.report.unfolded}
    assert 'no running statistics' in reasons['1']
    assert 'BatchNormAct2d is not a plain BatchNorm2d' in reasons['4']
    assert 'no convolution feeds it' in reasons['6']
    assert deployed.report.folded_count == 0
    assert 'left 3' in str(deployed.report) and '  - 1: no running statistics' in str(deployed.report)


def test_a_batchnorm_or_convolution_with_hooks_is_left_unfolded():
    """Folded, a norm with a hook becomes an identity whose hook sees nothing of the norm, and a hooked
    convolution (a capture, a hook that edits its output) would see the norm's values inside its own: both
    are left in place, with the reason, and the hooks see what they saw."""
    torch.manual_seed(0)
    model = randomise_bns(scnet.create_model('scnet26_cifar', channels=(8, 16, 32, 64), num_classes=3)).eval()
    x = torch.randn(2, 3, 32, 32)
    seen = {}
    model.layer1[0].bn1.register_forward_hook(lambda m, i, o: seen.__setitem__('bn1', o.clone()))
    model.layer2[0].conv2.register_forward_hook(lambda m, i, o: o * 2)  # edits its output
    expected = model(x)
    norm_output = seen.pop('bn1')
    deployed = scnet.deploy(model, example_input=x, channels_last=False)
    reasons = {u.name: u.reason for u in deployed.report.unfolded}
    assert set(reasons) == {'layer1.0.bn1', 'layer2.0.bn2'}
    assert reasons['layer1.0.bn1'].startswith('layer1.0.bn1 has hooks')
    assert 'remove the hooks' in reasons['layer1.0.bn1']
    assert reasons['layer2.0.bn2'].startswith('layer2.0.conv2 has hooks')
    torch.testing.assert_close(deployed(x), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(seen['bn1'], norm_output, atol=1e-5, rtol=1e-5)


def test_frozen_and_sync_batchnorms_fold_too():
    """In eval mode SyncBatchNorm (a network converted for DDP) and the frozen BNs of detection backbones
    (torchvision's and timm's, ``freeze_batch_norm_2d``) are the same affine map as BatchNorm2d; a frozen BN
    reads its input with arithmetic, not batch_norm, and the probe still attributes the read to it."""
    from timm.layers import freeze_batch_norm_2d
    from timm.layers.norm_act import FrozenBatchNorm2d as TimmFrozen

    from scnet.tasks.backbone import build_backbone

    x = torch.randn(2, 3, 32, 32)
    net = randomise_bns(scnet.create_model('scnet26_cifar', num_classes=3, channels=[8, 16, 32, 64])).eval()
    frozen = freeze_batch_norm_2d(copy.deepcopy(net))
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(net)).eval()
    timm_frozen = copy.deepcopy(net)
    timm_frozen.bn1 = TimmFrozen(net.bn1.num_features)
    timm_frozen.bn1.load_state_dict(net.bn1.state_dict(), strict=False)
    backbone = build_backbone('scnet26_cifar', channels=[8, 16, 32, 64]).eval()  # frozen_bn=True
    for model in (frozen, synced, timm_frozen, backbone):
        deployed = scnet.deploy(model, example_input=x, channels_last=False)
        assert deployed.report.unfolded == [] and deployed.report.folded_count == 45
        with torch.no_grad():
            torch.testing.assert_close(deployed(x), model(x), rtol=1e-4, atol=1e-5)


def test_callers_model_is_neither_changed_nor_run():
    model = randomise_bns(scnet.create_model('scnet26_cifar', num_classes=10)).train()
    before = copy.deepcopy(model.state_dict())
    ran = []
    model.register_forward_hook(lambda module, *_: ran.append(module is model))  # the copy keeps the hook
    scnet.deploy(model, example_input=torch.randn(2, 3, 32, 32))
    assert ran and not any(ran) and model.training
    assert all(p.requires_grad for p in model.parameters())
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert len(batchnorms(model)) == 45 and model.layer1[0].conv2.k1.bias is None


def test_deployed_model_is_an_inference_module():
    model = randomise_bns(scnet.create_model('resnet26_cifar', num_classes=10))
    deployed = scnet.deploy(model, channels_last=False)
    assert isinstance(deployed, DeployedModel) and isinstance(deployed.report, DeployReport)
    assert deployed.fc is deployed.module.fc and deployed.pretrained_cfg['input_size'] == (3, 32, 32)
    assert not deployed.train().training and not deployed.module.training  # stays in eval mode
    assert not any(p.requires_grad for p in deployed.parameters())
    assert set(deployed.state_dict()) == {f'module.{k}' for k in deployed.module.state_dict()}
    twin = copy.deepcopy(deployed)
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(twin(x), deployed(x)) and twin.report.folded_count == 29
    data = deployed.report.to_dict()
    assert data['folded_count'] == 29 and data['unfolded'] == [] and data['channels_last'] is False
    assert '"folded_count": 29' in deployed.report.to_json()


def test_compile_gives_the_same_logits_and_leaves_the_global_config_alone():
    import torch._inductor.config as inductor_config

    torch.manual_seed(0)
    model = randomise_bns(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), SCConv2d(8, 8), nn.BatchNorm2d(8),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)))
    freezing = inductor_config.freezing
    x = torch.randn(2, 3, 16, 16)
    deployed = scnet.deploy(model, compile=True, example_input=x)
    assert inductor_config.freezing == freezing
    assert deployed.report.compiled and deployed.report.folded_count == 4
    assert deployed._compiled is not None
    with torch.profiler.profile() as profile:
        assert logits_diff(model, deployed, torch.randn(2, 3, 16, 16)) <= 1e-4  # same shape: no recompilation
    # inductor's freezing was on when it compiled: weights prepacked into oneDNN convolutions
    assert any('_convolution_pointwise' in event.key for event in profile.key_averages())
    assert inductor_config.freezing == freezing


class Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn1(self.conv1(x)) + torch.rand(1)  # not a function of its input: no copy can match it


def test_a_copy_that_does_not_match_raises_naming_the_difference():
    with pytest.raises(DeployError, match=r'differs from the original by [0-9.e-]+ \(max abs\)') as e:
        scnet.deploy(Noisy())
    assert [f.bn for f in e.value.report.folded] == ['bn1'] and e.value.report.max_abs_diff > 1e-4
    assert issubclass(DeployError, scnet.ScnetError)


def test_a_failed_compilation_is_one_clear_error(monkeypatch):
    def broken_compile(model, **kwargs):
        def run(*args):
            raise RuntimeError('no C++ compiler found\n(long inductor traceback)')
        return run
    monkeypatch.setattr(torch, 'compile', broken_compile)
    with pytest.raises(DeployError, match=r'torch.compile failed on the folded network \(RuntimeError: no C\+\+ '
                                          r'compiler found\); deploy with compile=False') as e:
        scnet.deploy(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), compile=True)
    assert '\n' not in str(e.value) and e.value.report.folded_count == 1


def test_bad_inputs_raise_one_clear_error():
    with torch.device('meta'):
        meta = scnet.create_model('resnet26_cifar', num_classes=10)
    with pytest.raises(DeployError, match='meta device'):
        scnet.deploy(meta)
    with pytest.raises(DeployError, match='takes an nn.Module'):
        scnet.deploy(lambda x: x)
    scripted = torch.jit.script(scnet.create_model('resnet26_cifar', num_classes=10).eval())
    with pytest.raises(DeployError, match='got a TorchScript module .*deploy the nn.Module first'):
        scnet.deploy(scripted)
    with pytest.raises(DeployError, match=r'failed on the probe input of shape \(2, 1, 32, 32\).*example_input=') as e:
        scnet.deploy(scnet.create_model('resnet26_cifar', num_classes=10), example_input=torch.randn(2, 1, 32, 32))
    assert e.value.failed_probe[0] == (2, 1, 32, 32) and e.value.failed_probe[1].startswith('RuntimeError: ')
    with pytest.raises(DeployError, match='example_input must be a tensor'):
        scnet.deploy(nn.Conv2d(3, 3, 1), example_input=[1, 2])
    pair = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(DeployError, match=r'example_input is empty \(shape \(0, 3, 32, 32\)\).*at least one input'):
        scnet.deploy(pair, example_input=torch.empty(0, 3, 32, 32))  # nothing to check the folded copy on
    for tolerance in (-1e-4, float('nan'), '1e-4'):
        with pytest.raises(DeployError, match='tolerance must be a finite number >= 0'):
            scnet.deploy(pair, tolerance=tolerance)
    for flag in ('channels_last', 'compile'):  # 'no' would read as True (and compile for a minute)
        with pytest.raises(DeployError, match=f"{flag} must be True or False, got 'no'"):
            scnet.deploy(pair, **{flag: 'no'})
    deployed = scnet.deploy(scnet.create_model('scnet26_cifar', num_classes=4), channels_last=False)
    with pytest.raises(DeployError, match=r'takes batches of shape \(N, C, H, W\), as its probe \(2, 3, 32, 32\), '
                                          r'got an input of shape \(3, 32, 32\).*x.unsqueeze\(0\)'):
        deployed(torch.randn(3, 32, 32))
    assert deployed(torch.randn(1, 3, 32, 32)).shape == (1, 4)
    weight_normed = nn.Sequential(nn.utils.weight_norm(nn.Conv2d(3, 4, 3)), nn.BatchNorm2d(4))
    with pytest.raises(DeployError, match=r'cannot be copied .*remove_weight_norm'):
        scnet.deploy(weight_normed)


def test_a_half_precision_network_deploys_at_its_own_precision():
    """bfloat16's rounding (about 1e-2) is far above the float32 default of 1e-4: the default follows the
    network's dtype, and the report's difference is measured in float64."""
    model = randomise_bns(scnet.create_model('scnet26_cifar', num_classes=4, channels=[8, 16, 32, 64])).eval()
    deployed = scnet.deploy(model.to(torch.bfloat16), channels_last=False,
                            example_input=torch.randn(2, 3, 32, 32, dtype=torch.bfloat16))
    assert deployed.report.tolerance == 2e-2 and deployed.report.folded_count == 45
    assert scnet.deploy(model.float(), channels_last=False).report.tolerance == 1e-4


def test_compile_headroom_raises_the_recompile_limit_only_inside():
    import torch._dynamo

    from scnet.deploy import compile_headroom
    before = torch._dynamo.config.recompile_limit
    with compile_headroom():
        assert torch._dynamo.config.recompile_limit >= 64
    assert torch._dynamo.config.recompile_limit == before

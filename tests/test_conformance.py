"""Every zoo model works with the tools users point at models: torch.fx (and torchvision's feature extraction
on top of it), TorchScript, timm's ``forward_intermediates`` / feature wrappers, and a pretrained config
whose ``first_conv`` and ``classifier`` name real modules.

Each test runs over every name of ``scnet.list_models()`` at narrow widths and one block per stage (two in the
third, so that both a down-sampling block and a plain one of each stage type are there): the ``channels``
and ``layers`` arguments keep each network's block type, stem, shortcuts and gates; depth adds no code path.
Inputs are 64 px, 32 px for the CIFAR-stem models.
"""
from __future__ import annotations

import copy
import functools
import warnings

import pytest
import timm
import torch
from timm.models import FeatureGraphNet, FeatureListNet
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import scnet

MODELS = scnet.list_models()
STAGES = ('act1', 'layer1', 'layer2', 'layer3', 'layer4')
ATOL = 1e-5
GRAD_TOL = 1e-4  # gradients: float32 sums in another order (eager SC-Conv recomputes in its own backward)


def size_of(name: str) -> int:
    return 32 if name.endswith('_cifar') else 64


def small_args(name: str) -> dict:
    """Narrow widths that keep the structure: SCNeXt's 32 groups need 32 channels in each SC half."""
    channels = (32, 64, 128, 256) if '32x4d' in name else (16, 32, 64, 128)
    return dict(num_classes=10, channels=channels, layers=(1, 1, 2, 1))


@functools.lru_cache(maxsize=None)
def _built(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = scnet.create_model(name, **small_args(name))
    # Trained-like BNs: timm zero-initialises each block's last BN, which would hide the residual branches
    # (SC-Conv included) from the outputs; statistics other than 0 and 1 make eval mode differ from training.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.0)
                m.bias.uniform_(-0.1, 0.1)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def build(name: str) -> nn.Module:
    """A private copy of the small ``name`` (built once per test process)."""
    return copy.deepcopy(_built(name))


def images(name: str, batch: int = 2) -> torch.Tensor:
    size = size_of(name)
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def assert_close(expected: torch.Tensor, actual: torch.Tensor, what: str = '', tol: float = ATOL) -> None:
    scale = max(expected.abs().max().item(), 1.0)
    diff = (expected - actual).abs().max().item()
    assert diff <= tol * scale, f'{what}: max difference {diff:.3g} (scale {scale:.3g})'


def train_step(model: nn.Module, x: torch.Tensor):
    """Output and parameter gradients of one training-mode forward and backward."""
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(x)
    (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), grads


def assert_same_step(eager: nn.Module, other: nn.Module, x: torch.Tensor, what: str) -> None:
    out, grads = train_step(eager, x)
    out_other, grads_other = train_step(other, x)
    assert_close(out, out_other, f'{what} training output')
    assert grads.keys() == grads_other.keys(), f'{what}: gradients of other parameters'
    for n, g in grads.items():
        assert_close(g, grads_other[n], f'{what} gradient of {n}', GRAD_TOL)


# --- torch.fx ----------------------------------------------------------------------------------------


@pytest.mark.parametrize('name', MODELS)
def test_fx_trace_forward_and_backward(name):
    model = build(name).eval()
    traced = torch.fx.symbolic_trace(copy.deepcopy(model))
    x = images(name)
    with torch.no_grad():
        assert_close(model(x), traced(x), 'eval output')
    assert_same_step(model, traced, x, 'fx')


@pytest.mark.parametrize('name', MODELS)
def test_torchvision_feature_extraction(name):
    model = build(name).eval()
    train_nodes, eval_nodes = get_graph_node_names(model)
    for nodes in (train_nodes, eval_nodes):  # a module's name stands for the last node inside it
        assert all(any(n == s or n.startswith(s + '.') for n in nodes) for s in STAGES), nodes
    extractor = create_feature_extractor(model, return_nodes={s: s for s in STAGES})
    x = images(name)
    with torch.no_grad():
        features = extractor.eval()(x)
        expected = model.forward_intermediates(x, intermediates_only=True)
    assert list(features) == list(STAGES)
    for stage, f, e in zip(STAGES, features.values(), expected):
        assert_close(e, f, stage)
    if '101' not in name:  # the 101-layer networks repeat their 50-layer siblings' blocks: two traces saved
        # timm's fx-based feature wrapper (``features_only=True, feature_cls='fx'``), its own tracer settings
        graph = FeatureGraphNet(model, out_indices=(0, 1, 2, 3, 4)).eval()
        with torch.no_grad():
            for i, (f, e) in enumerate(zip(graph(x), expected, strict=True)):
                assert_close(e, f, f'FeatureGraphNet feature {i}')

    extractor.train()
    sum(f.mean() for f in extractor(x).values()).backward()
    assert all(p.grad is not None for p in extractor.layer4.parameters())


# --- TorchScript -------------------------------------------------------------------------------------


@pytest.mark.parametrize('name', MODELS)
def test_torchscript(name):
    model = build(name).eval()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)  # torch.jit.script's deprecation notice
        scripted = torch.jit.script(copy.deepcopy(model))
    x = images(name)
    # Interpreted without the profiling executor's first-run instrumentation (a second per deep network):
    # the graph is the same, and the outputs to compare are those of the graph.
    with torch.jit.optimized_execution(False):
        with torch.no_grad():
            assert_close(model(x), scripted(x), 'eval output')
        assert_same_step(model, scripted, x, 'TorchScript')


# --- timm's intermediates API ------------------------------------------------------------------------


@pytest.mark.parametrize('name', MODELS)
def test_forward_intermediates_match_features_only(name):
    model = build(name).eval()
    backbone = FeatureListNet(build(name), out_indices=(0, 1, 2, 3, 4)).eval()  # what features_only=True wraps
    x = images(name)
    size = size_of(name)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        assert_close(model.forward_features(x), final, 'final features')
        assert_close(model(x), model.forward_head(final), 'logits')
        features = backbone(x)
    assert len(intermediates) == len(features) == len(model.feature_info) == 5
    for i, (info, mine, theirs) in enumerate(zip(model.feature_info, intermediates, features)):
        assert_close(theirs, mine, f'feature {i}')
        # the feature_info the wrappers rely on describes the actual maps (the CIFAR stem divides by 4 less)
        assert mine.shape[1:] == (info['num_chs'], size // info['reduction'], size // info['reduction']), i
    assert backbone.feature_info.reduction() == [info['reduction'] for info in model.feature_info]

    with torch.no_grad():
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        early = model.forward_intermediates(x, indices=[1, 2], stop_early=True, intermediates_only=True)
    for i, f in zip((3, 4), last_two):
        assert_close(intermediates[i], f, f'indices=2, feature {i}')
    for i, f in zip((1, 2), early):
        assert_close(intermediates[i], f, f'stop_early, feature {i}')


@pytest.mark.parametrize('name', MODELS)
def test_prune_intermediate_layers(name):
    model = build(name).eval()
    x = images(name)
    with torch.no_grad():
        expected = model.forward_intermediates(x, intermediates_only=True)
    kept = model.prune_intermediate_layers(indices=[0, 1, 2])
    assert list(kept) == [0, 1, 2]
    assert not any(True for _ in model.layer3.parameters()) and model.num_classes == 0
    with torch.no_grad():
        pruned = model.forward_intermediates(x, indices=[0, 1, 2], intermediates_only=True)
    for i, f in enumerate(pruned):
        assert_close(expected[i], f, f'feature {i}')


@pytest.mark.parametrize('call, message', [
    (lambda m, x: m.forward_intermediates(x, indices=[7]), r'forward_intermediates: indices=\(7,\) names feature'),
    (lambda m, x: m.forward_intermediates(x, indices=9), r'indices=9 is not a number of feature maps to take \(1'),
    (lambda m, x: m.forward_intermediates(x, output_fmt='NHWC'), r"output_fmt='NHWC' is not possible.*permute"),
    (lambda m, x: m.prune_intermediate_layers(indices=[-6]), 'prune_intermediate_layers: indices=.*feature map -6'),
])
def test_intermediates_with_indices_the_network_lacks_are_clear_errors(call, message):
    """timm's bare AssertionErrors ('feature index 7 is out of range', 'Output shape must be NCHW.')."""
    model = scnet.create_model('scnet26_cifar', channels=[8, 16, 32, 64]).eval()
    with pytest.raises(scnet.InvalidArgumentError, match=message):
        call(model, torch.randn(1, 3, 8, 8))
    assert sum(1 for _ in model.layer4.parameters())  # nothing pruned


# --- pretrained configuration ------------------------------------------------------------------------


@pytest.mark.parametrize('name', MODELS)
def test_pretrained_cfg_names_real_modules(name):
    """timm adapts pretrained stems to ``in_chans`` through ``first_conv`` and swaps ``classifier``."""
    with torch.device('meta'):
        model = scnet.create_model(name, in_chans=1, num_classes=7)
    cfg = model.pretrained_cfg
    assert cfg['input_size'][0] == 3 and cfg['num_classes'] == 1000  # the source weights', not this model's
    stem, head = model.get_submodule(cfg['first_conv']), model.get_submodule(cfg['classifier'])
    assert type(stem) is nn.Conv2d and stem.in_channels == 1, (cfg['first_conv'], stem)
    assert type(head) is nn.Linear and head.out_features == 7, (cfg['classifier'], head)


def test_pretrained_cfg_follows_the_callers_stem():
    """A caller who swaps the stem gets a configuration naming the new stem's first conv."""
    with torch.device('meta'):
        deep = scnet.create_model('scnet50', stem_type='deep')
        plain = scnet.create_model('scnet50_v1d', stem_type='')
    assert type(deep.get_submodule(deep.pretrained_cfg['first_conv'])) is nn.Conv2d
    assert type(plain.get_submodule(plain.pretrained_cfg['first_conv'])) is nn.Conv2d
    assert (deep.pretrained_cfg['first_conv'], plain.pretrained_cfg['first_conv']) == ('conv1.0', 'conv1')


def test_every_tag_of_the_zoo_names_the_default_modules():
    """Every configuration timm holds for the zoo's own networks (``scnet50.authors_in1k``, ...) names the
    modules of the default one, which the test above resolves."""
    from scnet.models.zoo import ZOO_ARCHITECTURES
    for name in ZOO_ARCHITECTURES:
        default = timm.get_pretrained_cfg(name).to_dict()
        for tagged in timm.list_pretrained(f'{name}.*'):
            cfg = timm.get_pretrained_cfg(tagged).to_dict()
            assert (cfg['first_conv'], cfg['classifier']) == (default['first_conv'], default['classifier']), tagged


# --- the Gather-Excite gate on its own ------------------------------------------------------------


@pytest.mark.parametrize('size', [(7, 7), (5, 9), (16, 16)])
def test_gather_excite_traces_and_scripts_with_unchanged_outputs(size):
    """At the design size the gather reads the map itself, at any other size its adaptive average pooling to
    ``extent x extent``; the fx graph and the TorchScript module give exactly that."""
    from scnet.layers import GatherExcite
    torch.manual_seed(0)
    gate = GatherExcite(8, 7).eval()
    nn.init.normal_(gate.gather.weight)
    x = torch.randn(2, 8, *size)
    summary = x if size == (7, 7) else nn.functional.adaptive_avg_pool2d(x, 7)
    expected = x * torch.sigmoid(gate.norm(gate.gather(summary)))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)
        scripted = torch.jit.script(copy.deepcopy(gate))
    for module in (gate, torch.fx.symbolic_trace(gate), scripted):
        with torch.no_grad():
            assert torch.equal(module(x), expected), type(module)

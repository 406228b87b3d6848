"""SCConv2d against the literal equations, nn.Conv2d's interface, and PyTorch's compilers and exporters."""
import math
import warnings
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from scnet import InvalidArgumentError, InvalidArgumentTypeError, SCConv2d, ScnetError
from scnet.layers import GatherExcite
from scnet.layers.calibration import calibrated_product
from tests.reference import sc_conv_reference


def randomise_norms(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN affine parameters and running statistics, so the tests see them."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                if m.affine:
                    m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return module


def conv_output_size(size, stride, dilation):
    return math.floor((size + 2 * dilation - dilation * 2 - 1) / stride + 1)


@st.composite
def layer_configs(draw):
    groups = draw(st.sampled_from([1, 2, 4]))
    half_in = groups * draw(st.integers(1, 3))
    half_out = groups * draw(st.integers(1, 3))
    return dict(
        in_channels=2 * half_in, out_channels=2 * half_out, groups=groups,
        stride=draw(st.integers(1, 3)), dilation=draw(st.integers(1, 3)),
        pooling_r=draw(st.integers(1, 6)), pool=draw(st.sampled_from(['avg', 'max'])),
        identity=draw(st.booleans()), upsample=draw(st.sampled_from(['nearest', 'bilinear'])),
    )


@settings(max_examples=60, deadline=None)
@given(cfg=layer_configs(), h=st.integers(1, 19), w=st.integers(1, 19), batch=st.integers(1, 2))
def test_matches_literal_equations_and_conv_shape(cfg, h, w, batch):
    """Any channels/stride/dilation/groups/options, any map size (odd, tiny, smaller than r): same output shape
    as the 3x3 conv it replaces, and the values of equations 2-5."""
    layer = randomise_norms(SCConv2d(**cfg)).eval()
    x = torch.randn(batch, cfg['in_channels'], h, w, dtype=torch.float64)
    layer = layer.double()
    conv = nn.Conv2d(cfg['in_channels'], cfg['out_channels'], 3, cfg['stride'], cfg['dilation'], cfg['dilation'],
                     groups=cfg['groups'], bias=False).double()
    with torch.no_grad():
        y = layer(x)
        assert y.shape == conv(x).shape
        assert y.shape[-2:] == (conv_output_size(h, cfg['stride'], cfg['dilation']),
                                conv_output_size(w, cfg['stride'], cfg['dilation']))
        torch.testing.assert_close(y, sc_conv_reference(x, layer), rtol=1e-10, atol=1e-10)


def test_authors_pooling_on_maps_at_least_r():
    """On maps >= r the pooling is the authors' fixed r x r floor-mode window (their weights need it)."""
    layer = SCConv2d(8, 8, pooling_r=4).eval()
    x = torch.randn(1, 4, 7, 9)
    seen = {}
    layer.k2.register_forward_hook(lambda m, i, o: seen.setdefault('t1', i[0]))
    layer(torch.cat([x, x], 1))
    torch.testing.assert_close(seen['t1'], F.avg_pool2d(x, 4, 4))


def test_map_smaller_than_r_pools_its_whole_extent():
    layer = SCConv2d(4, 4, pooling_r=4).eval()
    x = torch.randn(2, 4, 3, 9)
    seen = {}
    layer.k2.register_forward_hook(lambda m, i, o: seen.setdefault('t1', i[0]))
    layer(x)
    assert seen['t1'].shape == (2, 2, 1, 2)  # height 3 < 4: pooled over all 3 rows; width 9: two windows of 4
    torch.testing.assert_close(seen['t1'][:, :, 0, 0], x[:, 2:, :, 0:4].mean(dim=(2, 3)))


@pytest.mark.parametrize('groups', [1, 2, 8])
@pytest.mark.parametrize('channels', [16, 64])
def test_same_conv_parameters_as_nn_conv2d(channels, groups):
    """Four quarter-size kernels hold as many weights as the plain conv; the two inner BNs are the extra."""
    sc = SCConv2d(channels, channels, groups=groups)
    conv = nn.Conv2d(channels, channels, 3, padding=1, groups=groups, bias=False)
    conv_params = sum(m.weight.numel() for m in (sc.k1, sc.k2, sc.k3, sc.k4))
    assert conv_params == conv.weight.numel()
    assert sum(p.numel() for p in sc.parameters()) == conv.weight.numel() + 2 * 2 * (channels // 2)
    assert sum(p.numel() for p in SCConv2d(channels, channels, groups=groups, norm_layer=None).parameters()) \
        == conv.weight.numel()


def test_conv2d_attributes_for_drop_in_use():
    sc = SCConv2d(32, 64, stride=2, dilation=2, groups=4)
    assert (sc.in_channels, sc.out_channels, sc.kernel_size, sc.stride, sc.padding, sc.dilation, sc.groups) == \
        (32, 64, (3, 3), (2, 2), (2, 2), (2, 2), 4)
    assert 'pooling_r=4' in repr(sc)


def test_gradcheck_float64():
    torch.manual_seed(0)
    for cfg in (dict(pooling_r=2, upsample='bilinear'), dict(pooling_r=4, pool='max', stride=2),
                dict(pooling_r=1, identity=False, dilation=2)):
        layer = SCConv2d(4, 6, norm_layer=None, **cfg).double()
        x = torch.randn(1, 4, 6, 5, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(layer, (x,), eps=1e-6, atol=1e-5)


def test_train_mode_backward_and_norm_statistics():
    layer = SCConv2d(8, 8, stride=2)
    x = torch.randn(4, 8, 12, 12, requires_grad=True)
    layer(x).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in layer.parameters())
    assert layer.k2_norm.num_batches_tracked.item() == 1


def _saved_bytes(fn) -> int:
    """Bytes of distinct storages autograd keeps for backward while ``fn()`` runs (parameters included)."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(storages.values())


@pytest.mark.parametrize('stride', [1, 2])
def test_memory_efficient_training_same_gradients_less_saved(stride):
    torch.manual_seed(0)
    plain = randomise_norms(SCConv2d(16, 16, stride=stride, memory_efficient=False)).double()
    lean = randomise_norms(SCConv2d(16, 16, stride=stride)).double()
    lean.load_state_dict(plain.state_dict())
    x = torch.randn(4, 16, 24, 24, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_a, saved_a = _saved_bytes(lambda: plain(xa))
    out_b, saved_b = _saved_bytes(lambda: lean(xb))
    torch.testing.assert_close(out_b, out_a, rtol=0, atol=0)
    weights = torch.randn_like(out_a)
    (out_a * weights).sum().backward()
    (out_b * weights).sum().backward()
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-12, atol=1e-12)
    for (name, pa), pb in zip(plain.named_parameters(), lean.parameters()):
        torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-12, atol=1e-12, msg=name)
    # the batch norms ran once each: the recomputed part holds no running statistics
    for bn in ('k2_norm', 'k3_norm'):
        assert getattr(lean, bn).num_batches_tracked.item() == 1
        torch.testing.assert_close(getattr(lean, bn).running_mean, getattr(plain, bn).running_mean)
    # three half-width maps at the input resolution (BN3's output, the gate and the product) are not kept
    half_map = 4 * 8 * 24 * 24 * 8
    assert saved_a - saved_b >= 2.9 * half_map
    assert 'memory_efficient=False' in repr(plain) and 'memory_efficient' not in repr(lean)


def test_memory_efficient_is_a_model_option():
    from scnet import create_model
    model = create_model('scnet26_cifar', memory_efficient=False)
    assert not any(m.memory_efficient for m in model.modules() if isinstance(m, SCConv2d))
    assert all(m.memory_efficient for m in create_model('scnet26_cifar').modules() if isinstance(m, SCConv2d))


@pytest.mark.parametrize('kwargs, message', [
    (dict(in_channels=7, out_channels=8), 'in_channels=7 must be even'),
    (dict(in_channels=8, out_channels=6, groups=2), 'out_channels=6'),
    (dict(in_channels=8, out_channels=8, pooling_r=0), 'pooling_r must be a positive integer'),
    (dict(in_channels=8, out_channels=8, pooling_r=2.5), 'pooling_r must be a positive integer'),
    (dict(in_channels=8, out_channels=8, pool='median'), "pool must be one of"),
    (dict(in_channels=8, out_channels=8, upsample='bicubic'), "upsample must be one of"),
    (dict(in_channels=8, out_channels=8, stride=(1, 2)), 'same along both axes'),
    (dict(in_channels=8, out_channels=8, dilation=0), 'dilation must be a positive integer'),
    (dict(in_channels=8, out_channels=8, identity='no'), "identity must be True or False, got 'no'"),
    (dict(in_channels=8, out_channels=8, memory_efficient='yes'), 'memory_efficient must be True or False'),
    (dict(in_channels=8, out_channels=8, pool=['avg']), "pool must be one of"),
    (dict(in_channels=8, out_channels=8, norm_layer='bn'), "unknown norm_layer 'bn'.*timm's names: .*batchnorm"),
    # nn.Conv2d's arguments, in its order: a third positional argument is the kernel size, never the stride
    (dict(in_channels=8, out_channels=8, kernel_size=2), r"kernel_size=2 is not possible.*3x3.*SCConv2d\(in_channels, "
                                                         r"out_channels, 3, stride\)"),
    (dict(in_channels=8, out_channels=8, kernel_size=(3, 5)), r'kernel_size=\(3, 5\) is not possible'),
    (dict(in_channels=8, out_channels=8, padding=2), r'padding=2 is not possible.*padded by its dilation \(1\)'),
    (dict(in_channels=8, out_channels=8, stride=2, padding='same'), "padding='same' is not possible"),
    (dict(in_channels=8, out_channels=8, bias=True), 'bias=True is not possible: SC-Conv has no bias'),
    (dict(in_channels=8, out_channels=8, padding_mode='reflect'), "padding_mode='reflect' is not possible"),
    (dict(in_channels=32, out_channels=32, norm_layer='groupnorm'),
     r'norm_layer cannot normalise the 16-channel half of this 32-channel layer \(num_channels \(16\) must be '
     r'divisible by num_groups \(32\)\).*functools.partial\(timm.layers.GroupNorm, num_groups=8\)'),
])
def test_invalid_arguments_name_the_problem(kwargs, message):
    with pytest.raises(ScnetError, match=message) as e:
        SCConv2d(**kwargs)
    assert isinstance(e.value, ValueError)


def test_takes_nn_conv2d_arguments_in_their_order():
    """A call written for nn.Conv2d swaps by class name: same arguments, positions and output shapes; the
    attributes code inspects on a conv (bias, padding_mode) are there."""
    import numpy as np
    x = torch.randn(2, 8, 9, 7)
    for args, kwargs in (((8, 8, 3, 2, 1), dict(bias=False)), ((8, 8, 3), dict(padding=1)),
                         ((8, 8, (3, 3), 1, 'same'), dict(padding_mode='zeros')), ((8, 8, 3, 2, 2, 2), {}),
                         ((np.int64(8), np.int64(8), np.int64(3)),
                          dict(stride=np.int64(2), padding=np.int64(1), groups=np.int64(2)))):
        layer, plain = SCConv2d(*args, **kwargs), nn.Conv2d(*args, **kwargs)
        assert layer(x).shape == plain(x).shape, (args, kwargs)
        assert (layer.stride, layer.dilation, layer.groups) == (plain.stride, plain.dilation, plain.groups)
        assert layer.padding == (plain.padding if plain.padding != 'same' else plain.dilation)  # 'same' resolved
        assert layer.bias is None and layer.padding_mode == 'zeros' and 'bias' not in layer.state_dict()
        assert type(layer.in_channels) is int and type(layer.groups) is int


def test_norm_layer_by_timm_name_or_a_clear_type_error():
    layer = SCConv2d(8, 8, norm_layer='batchnorm')
    assert type(layer.k2_norm) is nn.BatchNorm2d and type(layer.k3_norm) is nn.BatchNorm2d
    assert isinstance(SCConv2d(64, 64, norm_layer='groupnorm').k3_norm, nn.GroupNorm)
    with pytest.raises(InvalidArgumentTypeError, match='norm_layer must be a callable'):
        SCConv2d(8, 8, norm_layer=3)
    with pytest.raises(InvalidArgumentTypeError, match=r'norm_layer\(4\) must build an nn.Module'):
        SCConv2d(8, 8, norm_layer=lambda channels: channels)
    # a built layer is callable too, and would be called on a channel count
    with pytest.raises(InvalidArgumentTypeError, match=r'not a built layer \(BatchNorm2d instance\): pass its class'):
        SCConv2d(8, 8, norm_layer=nn.BatchNorm2d(4))
    with pytest.raises(InvalidArgumentTypeError, match=r'GatherExcite: norm_layer .* not a built layer'):
        GatherExcite(8, 4, norm_layer=nn.BatchNorm2d(8))


@pytest.mark.parametrize('shape, message', [
    ((8, 6, 6), r'4-D input of shape \(N, C, H, W\), got a 3-D input of shape \(8, 6, 6\).*x.unsqueeze\(0\)'),
    ((1, 2, 8, 6, 6), r'4-D input of shape \(N, C, H, W\), got a 5-D input'),
    ((2, 6, 6, 6), r'input of shape \(N, 8, H, W\) \(in_channels=8\), got \(2, 6, 6, 6\)'),
])
def test_input_of_the_wrong_shape_is_a_clear_error(shape, message):
    for training in (False, True):
        with pytest.raises(InvalidArgumentError, match=message):
            SCConv2d(8, 8).train(training)(torch.randn(*shape))


def test_a_batch_statistic_of_one_value_is_a_clear_error():
    """One image whose context pools to 1x1 leaves K2's BatchNorm one value per channel in training: the error
    names the layer and the ways out (torch's own names neither); evaluation, two images or a larger map run."""
    layer = SCConv2d(8, 8)
    for shape in ((1, 8, 4, 4), (1, 8, 7, 5), (1, 8, 1, 1)):
        with pytest.raises(InvalidArgumentError, match=r'a batch of 1 image of .* single value per channel.*'
                                                       r'at least 2 images.*model.eval\(\)'):
            layer.train()(torch.randn(*shape))
        assert layer.eval()(torch.randn(*shape)).shape == shape
    for shape in ((2, 8, 4, 4), (1, 8, 8, 4), (0, 8, 4, 4)):
        assert layer.train()(torch.randn(*shape)).shape == shape
    assert SCConv2d(8, 8, norm_layer=None).train()(torch.randn(1, 8, 4, 4)).shape == (1, 8, 4, 4)
    stats_free = SCConv2d(8, 8, norm_layer=partial(nn.BatchNorm2d, track_running_stats=False)).eval()
    with pytest.raises(InvalidArgumentError, match='single value per channel'):
        stats_free(torch.randn(1, 8, 4, 4))  # batch statistics in evaluation too
    with pytest.raises(InvalidArgumentError, match='single value per channel'):
        __import__('scnet').create_model('scnet26_cifar', num_classes=4)(torch.randn(1, 3, 32, 32))


def test_an_input_that_is_not_a_tensor_is_a_clear_error():
    with pytest.raises(InvalidArgumentTypeError, match=r'takes a tensor of shape \(N, C, H, W\), got list'):
        SCConv2d(8, 8)([[0.0]])


def test_reset_parameters_reinitialises_like_a_new_layer():
    torch.manual_seed(0)
    fresh = SCConv2d(8, 12, groups=2)
    torch.manual_seed(0)
    layer = randomise_norms(SCConv2d(8, 12, groups=2))
    layer.train()(torch.randn(2, 8, 8, 8))  # running statistics and batch counters move
    with torch.no_grad():
        for p in layer.parameters():
            p.fill_(0.5)
    torch.manual_seed(0)
    layer.reset_parameters()
    for (name, expected), got in zip(fresh.state_dict().items(), layer.state_dict().values()):
        torch.testing.assert_close(got, expected, rtol=0, atol=0, msg=name)
    with torch.device('meta'):  # build without memory, then materialise: nn.Conv2d's recipe
        meta = SCConv2d(8, 8)
    meta.to_empty(device='cpu').reset_parameters()
    assert all(torch.isfinite(p).all() for p in meta.parameters()) and meta.k3_norm.running_var.eq(1).all()


@pytest.mark.parametrize('cfg, norm', [
    (dict(), None),
    (dict(stride=2, pooling_r=2, upsample='bilinear'), None),
    (dict(identity=False, pooling_r=3), partial(nn.BatchNorm2d, affine=False)),
    (dict(groups=2), partial(nn.BatchNorm2d, momentum=None)),
])
def test_double_backward_through_the_one_map_path(cfg, norm):
    """Gradient penalties (create_graph=True) in training mode: the one-map path's gradient is itself
    differentiable and gives plain autograd's first- and second-order gradients."""
    kwargs = dict(cfg, norm_layer=norm) if norm is not None else cfg
    torch.manual_seed(0)
    lean = randomise_norms(SCConv2d(4, 4, **kwargs)).double().train()
    plain = randomise_norms(SCConv2d(4, 4, memory_efficient=False, **kwargs)).double().train()
    plain.load_state_dict(lean.state_dict())
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    results = []
    for layer in (lean, plain):
        xx = x.clone().requires_grad_()
        (grad,) = torch.autograd.grad(layer(xx).square().sum(), xx, create_graph=True)
        grad.square().sum().backward()  # the penalty's gradient: second order
        results.append((grad.detach(), xx.grad, {n: p.grad for n, p in layer.named_parameters()}))
    (grad_a, xgrad_a, pgrad_a), (grad_b, xgrad_b, pgrad_b) = results
    torch.testing.assert_close(grad_a, grad_b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(xgrad_a, xgrad_b, rtol=1e-10, atol=1e-12)
    for name, g in pgrad_b.items():
        torch.testing.assert_close(pgrad_a[name], g, rtol=1e-10, atol=1e-12, msg=name)
    for (name, ba), bb in zip(plain.named_buffers(), lean.buffers()):  # statistics updated once, in forward
        torch.testing.assert_close(bb, ba, rtol=0, atol=0, msg=name)
    small = SCConv2d(4, 4, pooling_r=2, **{k: v for k, v in kwargs.items() if k != 'pooling_r'}).double().train()
    assert torch.autograd.gradgradcheck(small, (torch.randn(2, 4, 4, 4, dtype=torch.float64, requires_grad=True),))


def test_empty_batch_in_training_gives_what_the_plain_path_gives():
    """N = 0 (an empty last batch, a detector with no proposals): the one-map path defers to the plain one, whose
    nn.BatchNorm2d handles empty inputs itself (ATen's batch-norm kernel rejects them)."""
    lean, plain = SCConv2d(8, 8).train(), SCConv2d(8, 8, memory_efficient=False).train()
    plain.load_state_dict(lean.state_dict())
    for layer in (lean, plain):
        x = torch.randn(0, 8, 12, 12, requires_grad=True)
        y = layer(x)
        assert y.shape == (0, 8, 12, 12)
        y.sum().backward()
        assert x.grad.shape == x.shape
    for (name, ba), bb in zip(plain.named_buffers(), lean.buffers()):
        torch.testing.assert_close(bb, ba, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize('training', [False, True])
def test_torch_jit_trace_passes_its_default_check(training):
    """torch.jit.trace's check_trace traces a second time with other grad settings; the gate must not take
    another (in-place) branch there, or the two graphs differ."""
    layer = randomise_norms(SCConv2d(8, 8, stride=2)).train(training)
    x = torch.randn(2, 8, 16, 12)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', torch.jit.TracerWarning)  # shape-dependent Python values, as expected
        traced = torch.jit.trace(layer, x)
    torch.testing.assert_close(traced(x), layer(x), rtol=1e-6, atol=1e-6)


def test_channels_last():
    layer = randomise_norms(SCConv2d(16, 16, stride=2)).eval()
    x = torch.randn(2, 16, 15, 13)
    expected = layer(x)
    layer_cl = layer.to(memory_format=torch.channels_last)
    out = layer_cl(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_torch_compile_fullgraph_matches_eager():
    layer = randomise_norms(SCConv2d(8, 8, pooling_r=4)).eval()
    compiled = torch.compile(layer, fullgraph=True)
    for size in ((16, 16), (3, 5)):  # the second is smaller than r: the clamped window path
        x = torch.randn(2, 8, *size)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), layer(x), rtol=1e-4, atol=1e-5)


def test_torch_export_matches_eager():
    layer = randomise_norms(SCConv2d(8, 12, stride=2, upsample='bilinear')).eval()
    x = torch.randn(2, 8, 17, 11)
    program = torch.export.export(layer, (x,))
    torch.testing.assert_close(program.module()(x), layer(x), rtol=1e-5, atol=1e-6)


def test_onnx_export_runs_in_onnxruntime(tmp_path):
    ort = pytest.importorskip('onnxruntime')
    layer = randomise_norms(SCConv2d(8, 8, stride=2)).eval()
    x = torch.randn(1, 8, 20, 14)
    path = tmp_path / 'scconv.onnx'
    torch.onnx.export(layer, (x,), str(path), dynamo=True)
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), layer(x).detach(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('cfg, norm', [
    (dict(), None),
    (dict(stride=2, dilation=2), None),
    (dict(identity=False, upsample='bilinear', pooling_r=3), None),
    (dict(pool='max', pooling_r=1), None),
    (dict(groups=2), partial(nn.BatchNorm2d, momentum=None)),   # cumulative running average
    (dict(), partial(nn.BatchNorm2d, affine=False)),
])
def test_one_map_training_path_equals_autograd(cfg, norm):
    """The hand-written backward (memory_efficient=True) against plain autograd (memory_efficient=False):
    outputs, every gradient, running statistics and batch counters, on maps the context divides and not."""
    kwargs = dict(cfg, norm_layer=norm) if norm is not None else cfg
    for size in ((16, 16), (14, 14), (7, 9)):
        torch.manual_seed(0)
        lean = randomise_norms(SCConv2d(8, 8, **kwargs)).double().train()
        plain = randomise_norms(SCConv2d(8, 8, memory_efficient=False, **kwargs)).double().train()
        plain.load_state_dict(lean.state_dict())
        x = torch.randn(3, 8, *size, dtype=torch.float64)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        for _ in range(2):  # twice: the second step sees updated running statistics and counters
            out_a, out_b = plain(xa), lean(xb)
            torch.testing.assert_close(out_b, out_a, rtol=0, atol=0)
            weights = torch.randn_like(out_a)
            (out_a * weights).sum().backward()
            (out_b * weights).sum().backward()
        torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-10, atol=1e-12)
        for (name, pa), pb in zip(plain.named_parameters(), lean.parameters()):
            torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-10, atol=1e-12, msg=name)
        for (name, ba), bb in zip(plain.named_buffers(), lean.buffers()):
            torch.testing.assert_close(bb, ba, rtol=0, atol=0, msg=name)


def test_frozen_batch_norms_in_a_training_layer_keep_their_statistics():
    """BatchNorms put in eval mode alone (frozen statistics for fine-tuning) in a training network: the one-map
    path normalised K3's output with batch statistics and updated its running ones, giving other outputs than
    memory_efficient=False and than the layer in eval mode."""
    torch.manual_seed(0)
    lean = randomise_norms(SCConv2d(8, 8)).train()
    plain = SCConv2d(8, 8, memory_efficient=False).train()
    plain.load_state_dict(lean.state_dict())
    for layer in (lean, plain):
        for m in layer.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
    before = {k: v.clone() for k, v in lean.state_dict().items()}
    x = torch.randn(3, 8, 12, 12, requires_grad=True)
    out = lean(x)
    torch.testing.assert_close(out, plain(x), rtol=0, atol=0)
    torch.testing.assert_close(out, lean.eval()(x), rtol=0, atol=0)
    out.sum().backward()
    for name, value in lean.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_hooks_on_k4_and_its_norm_run_in_training():
    """The one-map path called K4's and BN3's kernels directly: their hooks never ran in training, so pruning
    (torch.nn.utils.prune) failed at its second step and the classic spectral_norm used a stale weight."""
    torch.manual_seed(0)
    lean = SCConv2d(8, 8).train()
    plain = SCConv2d(8, 8, memory_efficient=False).train()
    seen = []
    for layer in (lean, plain):
        nn.utils.spectral_norm(layer.k4)
        layer.k3_norm.register_forward_hook(lambda *_: seen.append('bn3'))
    plain.load_state_dict(lean.state_dict())  # the power iteration's vectors too
    x = torch.randn(2, 8, 8, 8)
    for _ in range(2):
        out = lean(x)
        torch.testing.assert_close(out, plain(x), rtol=0, atol=0)
        out.sum().backward()
    assert seen == ['bn3'] * 4
    from torch.nn.utils import prune

    pruned = SCConv2d(8, 8).train()
    prune.l1_unstructured(pruned.k4, 'weight', amount=0.5)
    for _ in range(2):
        pruned(x).sum().backward()


def test_a_k4_of_another_conv_class_runs_its_own_forward_in_training():
    """K4 swapped for a conv whose forward changes its weights (timm's weight-standardised StdConv2d; QAT and LoRA
    convs do the same): the one-map path convolved with the raw weight, silently."""
    from timm.layers import StdConv2d

    torch.manual_seed(0)
    lean = SCConv2d(8, 8).train()
    plain = SCConv2d(8, 8, memory_efficient=False).train()
    for layer in (lean, plain):
        layer.k4 = StdConv2d(4, 4, 3, padding=1, bias=False)
    plain.load_state_dict(lean.state_dict())
    x = torch.randn(2, 8, 8, 8)
    torch.testing.assert_close(lean(x), plain(x), rtol=0, atol=0)


def test_one_map_training_path_under_bfloat16_autocast():
    torch.manual_seed(0)
    lean = SCConv2d(16, 16).train()
    plain = SCConv2d(16, 16, memory_efficient=False).train()
    plain.load_state_dict(lean.state_dict())
    x = torch.randn(4, 16, 16, 16)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out_a, out_b = plain(xa), lean(xb)
    assert out_b.dtype == torch.bfloat16
    torch.testing.assert_close(out_b, out_a, rtol=0, atol=0)
    out_a.float().sum().backward()
    out_b.float().sum().backward()
    # one bfloat16 rounding step (2^-8 of the largest gradient): the two paths round their products in another
    # order, and which elements differ by it depends on the CPU's kernels (AVX2 and AVX-512 differ)
    torch.testing.assert_close(xb.grad, xa.grad, rtol=0, atol=2 ** -8 * xa.grad.abs().max().item())
    for (name, pa), pb in zip(plain.named_parameters(), lean.parameters()):
        assert pb.grad.dtype == pa.dtype
        # bfloat16 rounding: autograd sums the context's gradient in bfloat16, the one-map path in float32
        torch.testing.assert_close(pb.grad, pa.grad, rtol=0, atol=0.01 * pa.grad.abs().max().item(), msg=name)


def test_gate_broadcast_equals_pytorch_nearest_upsampling():
    """Where the map is k times its context (k <= 24), the gate broadcasts each context cell over a k x k block
    instead of up-sampling; it must give exactly what F.interpolate(mode='nearest') gives, for every k and
    size, and larger or non-integer factors must still go through F.interpolate."""
    g = torch.Generator().manual_seed(0)
    for k in range(1, 31):
        for h in (1, 2, 3, 5, 7, 13, 31, 64):
            for identity in (True, False):
                context = torch.randn(1, 2, h, 2, generator=g)
                x1 = torch.randn(1, 2, h * k, 2 * k + (k == 27), generator=g)  # one non-integer width factor
                features = torch.randn_like(x1)
                up = F.interpolate(context, size=x1.shape[-2:], mode='nearest')
                expected = features * torch.sigmoid(x1 + up if identity else up)
                with torch.no_grad():
                    got = calibrated_product(features, x1, context, identity, 'nearest')
                torch.testing.assert_close(got, expected, rtol=0, atol=0, msg=f'k={k} h={h}')


def test_torchscript_and_torch_fx_trace_the_layer_in_both_modes():
    from torchvision.models.feature_extraction import create_feature_extractor
    layer = randomise_norms(SCConv2d(8, 8, stride=2, pooling_r=4))
    for size in ((16, 16), (3, 5)):  # the second is smaller than r
        x = torch.randn(2, 8, *size)
        for training in (False, True):
            layer.train(training)
            expected = layer(x)
            for converted in (torch.jit.script(layer), torch.fx.symbolic_trace(layer)):
                torch.testing.assert_close(converted(x), expected, rtol=1e-6, atol=1e-6)
            traced = torch.fx.symbolic_trace(layer)
            xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
            layer(xa).square().sum().backward()
            traced(xb).square().sum().backward()
            torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-5, atol=1e-6)
    layer.eval()
    features = create_feature_extractor(layer, return_nodes={'k1': 'plain', 'k4': 'calibrated'})(x)
    assert features['plain'].shape == features['calibrated'].shape == (2, 4, 2, 3)


FUSED_GATE_SCRIPT = r'''
import torch
from scnet import InvalidArgumentError, InvalidArgumentTypeError, SCConv2d, ScnetError
from scnet.layers import gate_op
from tests.reference import sc_conv_reference
from tests.test_gate_op import _no_aten
from tests.test_scconv import randomise_norms
from scnet.layers import calibration
assert gate_op.INTERPRET_ON_CPU
gate_op._aten_forward = gate_op._aten_backward = _no_aten   # the Triton kernels must run,
calibration._gate_logits = _no_aten                         # also in the one-map node's backward
torch.manual_seed(0)
layer = randomise_norms(SCConv2d(4, 4, stride=2)).eval()
x = torch.randn(2, 4, 8, 6)
with torch.no_grad():
    torch.testing.assert_close(layer(x), sc_conv_reference(x, layer), rtol=1e-5, atol=1e-5)
for stride, identity in ((1, True), (2, True), (1, False)):
    lean = randomise_norms(SCConv2d(4, 4, stride=stride, identity=identity)).train()
    plain = SCConv2d(4, 4, stride=stride, identity=identity, memory_efficient=False).train()
    plain.load_state_dict(lean.state_dict())
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = lean(xa), plain(xb)
    torch.testing.assert_close(ya, yb, rtol=1e-6, atol=1e-6)
    ya.square().sum().backward()
    yb.square().sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-5)
    for (name, a), b in zip(lean.named_parameters(), plain.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5, msg=name)
print('fused ok')
'''


def test_layer_takes_the_fused_gate_where_it_is_available():
    """Where gate_op_available (CUDA with triton; here Triton's interpreter on CPU tensors, in a subprocess),
    the layer's gate and product run as the fused operator, in inference, in the one-map training path and
    through plain autograd, with the literal equations' values."""
    from tests.test_gate_op import run_in_interpreter
    proc = run_in_interpreter(FUSED_GATE_SCRIPT)
    assert proc.returncode == 0 and proc.stdout.strip().endswith('fused ok'), proc.stderr[-3000:]


def test_graphs_record_the_plain_gate_where_eager_calls_take_the_fused_one(monkeypatch):
    """On a GPU the layer hands its gate to the fused operator in eager mode only: under torch.compile it gives
    Inductor the plain operations, to fuse with the BatchNorm before them, and torch.export and torch.jit.trace
    record the plain operations (files that run without scnet's operator). A GPU is pretended here: every tensor
    "can take" the kernels, and the operator's own CPU branch computes them."""
    from scnet.layers import calibration
    calls = []
    real = calibration.gated_product
    monkeypatch.setattr(calibration, 'gate_op_available', lambda tensor: True)
    monkeypatch.setattr(calibration, 'gated_product', lambda *args: calls.append(args) or real(*args))
    torch.manual_seed(0)
    layer = randomise_norms(SCConv2d(8, 8)).eval()
    x = torch.randn(2, 8, 16, 16)
    with torch.no_grad():
        expected = sc_conv_reference(x, layer)
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
        assert len(calls) == 1  # eager: the fused operator
        calls.clear()
        torch._dynamo.reset()
        torch.testing.assert_close(torch.compile(layer, backend='aot_eager')(x), expected, rtol=1e-5, atol=1e-5)
        assert not calls
        program = torch.export.export(layer, (x,))
        assert not calls and 'gated_product' not in str(program.graph)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            traced = torch.jit.trace(layer, x, check_trace=False)
        assert not calls and 'gated_product' not in str(traced.graph)
        torch.testing.assert_close(traced(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('memory_efficient', [True, False])
def test_input_halves_come_from_one_split_node(memory_efficient):
    """The two halves are views from one split, whose backward is one concatenation: two slices would each give
    backward a zero-filled gradient of the whole input, summed afterwards."""
    layer = SCConv2d(8, 8, memory_efficient=memory_efficient).train()
    x = torch.randn(2, 8, 8, 8, requires_grad=True)
    y = layer(x)
    consumers, seen, stack = set(), set(), [y.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for parent, _ in node.next_functions:
            if parent is not None and getattr(parent, 'variable', None) is x:
                consumers.add(node)
            stack.append(parent)
    assert len(consumers) == 1 and type(consumers.pop()).__name__.startswith('Split'), consumers

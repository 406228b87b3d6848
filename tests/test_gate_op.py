"""The fused gate operator (scnet.layers.gate_op): its ATen path, its registration (fake, autograd, compile,
export), and its Triton kernels run by Triton's interpreter on the CPU (in a subprocess: the interpreter has to
be chosen before triton is imported) and compiled by Triton's compiler for CUDA GPUs that the machine need not
have."""
import functools
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scnet.layers import gate_op
from scnet.layers.gate_op import gate_op_available, gated_product, reference_gated_product

REPO = Path(__file__).resolve().parents[1]
CL = torch.channels_last

# (H, W) <- (h, w): divisible, non-divisible, global context, identity size, and factors 25/26 where
# float32(h / H) rounds below 1 / k (there the nearest rule is not i // k)
SIZES = [((14, 14), (3, 3)), ((7, 7), (1, 1)), ((56, 56), (14, 14)), ((13, 11), (3, 4)), ((1, 1), (1, 1)),
         ((8, 8), (8, 8)), ((75, 5), (3, 5)), ((52, 26), (2, 1))]


def inputs(n, c, size, ctx, dtype=torch.float32, channels_last=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    f, x = (torch.randn(n, c, *size, generator=g).to(dtype) for _ in range(2))
    context = torch.randn(n, c, *ctx, generator=g).to(dtype)
    if channels_last:
        f, x, context = (t.contiguous(memory_format=CL) for t in (f, x, context))
    return f, x, context


@pytest.mark.parametrize('identity', [True, False])
def test_gated_product_backward_gives_the_gradients_of_gated_product(identity):
    """The gradients of features, of the logits (x1's with the identity term) and of context, as autograd of the
    reference gives them; inputs of mixed dtypes promoted as gated_product promotes them; features' layout."""
    f, x, c = inputs(2, 3, (13, 11), (3, 4), channels_last=True)
    grad = torch.randn(2, 3, 13, 11)
    leaves = [t.double().requires_grad_() for t in (f, x, c)]
    expected = torch.autograd.grad(reference_gated_product(*leaves, identity), leaves, grad.double(),
                                   allow_unused=True)
    got = gate_op.gated_product_backward(grad, f, x.double(), c, identity)  # (x1 unread without identity)
    assert all(t.dtype == torch.float64 for t in got) and got[0].is_contiguous(memory_format=CL)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got[2], expected[2], rtol=1e-6, atol=1e-6)
    if identity:
        torch.testing.assert_close(got[1], expected[1], rtol=1e-6, atol=1e-6)
    else:  # the logits are Up(context) alone: their gradient is context's before the sum over cells
        assert expected[1] is None
        summed = torch.ops.aten.upsample_nearest2d_backward(got[1], [13, 11], [2, 3, 3, 4], None, None)
        torch.testing.assert_close(summed, expected[2], rtol=1e-6, atol=1e-6)


def kernel_rule(dst: np.ndarray, src: int, dst_size: int) -> np.ndarray:
    """The kernels' index rule, in numpy float32: min(floor(dst * float32(src / dst_size)), src - 1)."""
    scale = np.float32(src) / np.float32(dst_size)
    return np.minimum(np.floor(dst.astype(np.float32) * scale), src - 1).astype(np.int64)


def test_index_rule_equals_interpolate():
    pairs = [(s, d) for s in range(1, 31) for d in range(1, 121)] + [(3, 75), (5, 130), (3, 14), (1, 7), (14, 56)]
    for src, dst in pairs:
        index = torch.arange(src, dtype=torch.float32).view(1, 1, 1, src)
        expected = F.interpolate(index, size=(1, dst), mode='nearest').view(-1).long().numpy()
        np.testing.assert_array_equal(kernel_rule(np.arange(dst), src, dst), expected, err_msg=f'{src} -> {dst}')


@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('identity', [True, False])
def test_cpu_path_is_interpolate_sigmoid_mul(identity, channels_last):
    for size, ctx in SIZES:
        f, x, c = inputs(2, 3, size, ctx, channels_last=channels_last)
        y = gated_product(f, x, c, identity)
        assert torch.equal(y, reference_gated_product(f, x, c, identity)), (size, ctx)
        assert y.is_contiguous(memory_format=CL if channels_last and size != (1, 1) else torch.contiguous_format)
    assert not gate_op_available(f)


@pytest.mark.parametrize('dtype,tol', [(torch.float32, 1e-6), (torch.bfloat16, 2e-2)])
def test_cpu_backward_matches_autograd(dtype, tol):
    for identity in (True, False):
        for size, ctx in SIZES:
            f, x, c = inputs(2, 3, size, ctx, dtype=dtype, channels_last=size == (13, 11))
            leaves = [t.requires_grad_() for t in (f, x, c)]
            grad = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1)).to(dtype)
            ours = torch.autograd.grad(gated_product(*leaves, identity), leaves, grad, allow_unused=True)
            ref = torch.autograd.grad(reference_gated_product(*(t.float() for t in leaves), identity), leaves,
                                      grad.float(), allow_unused=True)
            for name, a, b in zip(('features', 'x1', 'context'), ours, ref):
                if b is None:
                    assert a is None and name == 'x1' and not identity
                    continue
                assert a.dtype == dtype
                scale = max(1.0, float(b.abs().max()))
                assert float((a.float() - b).abs().max()) <= tol * scale, (name, identity, size, ctx)


def test_gradcheck_float64():
    for size, ctx in (((7, 5), (2, 2)), ((6, 6), (3, 3))):
        f, x, c = (t.double().requires_grad_() for t in inputs(2, 2, size, ctx))
        assert torch.autograd.gradcheck(lambda a, b, d: gated_product(a, b, d, True), (f, x, c))
        assert torch.autograd.gradcheck(lambda a, d: gated_product(a, x, d, False), (f, c))


@pytest.mark.parametrize('channels_last', [False, True])
def test_opcheck_schema_fake_autograd_and_aot_dispatch(channels_last):
    f, x, c = inputs(2, 3, (13, 11), (3, 4), channels_last=channels_last)
    for identity in (True, False):
        torch.library.opcheck(torch.ops.scnet.gated_product.default, (f, x, c, identity))
        torch.library.opcheck(torch.ops.scnet.gated_product_backward.default, (torch.randn_like(f), f, x, c, identity))


class Gate(torch.nn.Module):
    def forward(self, f, x, c):
        return gated_product(f, x, c, True) * 2


def test_export_keeps_the_operator_as_one_node():
    f, x, c = inputs(2, 3, (14, 14), (3, 3))
    program = torch.export.export(Gate(), (f, x, c))
    targets = [n.target for n in program.graph.nodes if n.op == 'call_function']
    assert torch.ops.scnet.gated_product.default in targets
    assert torch.equal(program.module()(f, x, c), Gate()(f, x, c))


def test_compile_forward_and_backward():
    f, x, c = inputs(2, 3, (13, 11), (3, 4), channels_last=True)
    compiled = torch.compile(Gate(), backend='aot_eager', fullgraph=True)
    a = [t.clone().requires_grad_() for t in (f, x, c)]
    b = [t.clone().requires_grad_() for t in (f, x, c)]
    ya, yb = compiled(*a), Gate()(*b)
    ya.square().sum().backward()
    yb.square().sum().backward()
    assert torch.equal(ya, yb)
    for p, q in zip(a, b):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-6)


def test_inputs_are_checked_and_promoted():
    f, x, c = inputs(2, 3, (8, 8), (2, 2))
    with pytest.raises(RuntimeError, match='differ in shape'):
        gated_product(f, x[:, :2], c, True)
    with pytest.raises(RuntimeError, match='batch and channels'):
        gated_product(f, x, c[:, :2], True)
    with pytest.raises(RuntimeError, match='share a dtype'):
        torch.ops.scnet.gated_product(f, x.double(), c, True)
    y = gated_product(f.bfloat16(), x, c.half(), True)  # promoted, as eager arithmetic would
    assert y.dtype == torch.float32


@pytest.mark.parametrize('batch', ['static', 'dynamic'])
def test_cuda_branch_traces_into_the_three_triton_kernels(batch):
    """What torch.compile sees on a GPU, traced here on fake CUDA tensors: one Triton kernel forward, two
    backward, no copies (the split-half view of x1 is read through its strides). With a dynamic batch size too
    (a symbol, as ``torch.compile(dynamic=None)`` makes it after a second batch size, and as benchmarks/gpu.py
    marks it): the launch grids are computed from it."""
    if not gate_op.HAS_TRITON:
        pytest.skip('triton does not import here')
    from torch._dynamo.source import ConstantSource
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch._subclasses.functional_tensor import dispatch_functionalize
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv

    shape_env = ShapeEnv() if batch == 'dynamic' else None
    n = 2 if shape_env is None else shape_env.create_symintnode(
        shape_env.create_symbol(2, ConstantSource('batch'), dynamic_dim=DimDynamic.DYNAMIC), hint=2)
    with FakeTensorMode(shape_env=shape_env):
        f = torch.empty(n, 4, 14, 14, device='cuda', dtype=torch.bfloat16).contiguous(memory_format=CL)
        x = torch.empty(n, 8, 14, 14, device='cuda', dtype=torch.bfloat16).contiguous(memory_format=CL)[:, 4:]
        c = torch.empty(n, 4, 3, 3, device='cuda', dtype=torch.bfloat16)

    def step(f, x, c):
        y = gated_product(f, x, c, True)
        return (y,) + tuple(torch.ops.scnet.gated_product_backward(y, f, x, c, True))

    import logging
    logging.getLogger('torch._higher_order_ops.triton_kernel_wrap').setLevel(logging.ERROR)  # no driver here
    mode = 'fake' if shape_env is None else 'symbolic'
    graph = make_fx(dispatch_functionalize(step), tracing_mode=mode)(f, x, c).graph
    kernels = [n for n in graph.nodes if 'triton_kernel_wrapper' in str(n.target)]
    assert len(kernels) == 3
    grids = [kernel.kwargs['grid'][0] for kernel in kernels]
    symbolic = [isinstance(size, torch.fx.Node) for grid in grids for size in grid]
    assert any(symbolic) == (batch == 'dynamic'), grids
    assert not [n for n in graph.nodes if n.target in (torch.ops.aten.copy.default, torch.ops.aten.copy_.default)]


CASES = [  # n, c, (H, W), (h, w), identity, layout, dtype
    (2, 3, (14, 14), (3, 3), True, 'nchw', 'float32'),
    (2, 3, (7, 7), (1, 1), True, 'channels_last', 'float32'),
    (1, 4, (56, 56), (14, 14), True, 'channels_last', 'float32'),
    (1, 4, (56, 56), (14, 14), False, 'nchw', 'float32'),
    (2, 3, (13, 11), (3, 4), False, 'nchw', 'float32'),
    (2, 3, (13, 11), (3, 4), True, 'channels_last', 'float32'),
    (1, 2, (1, 1), (1, 1), True, 'nchw', 'float32'),
    (1, 2, (75, 5), (3, 5), True, 'nchw', 'float32'),
    (1, 2, (52, 26), (2, 1), False, 'channels_last', 'float32'),
    (2, 5, (14, 14), (3, 3), True, 'channels_last', 'bfloat16'),
    (2, 5, (13, 11), (3, 4), False, 'nchw', 'bfloat16'),
    (2, 3, (14, 14), (3, 3), True, 'channels_last', 'float16'),
    (2, 3, (12, 12), (5, 5), True, 'views', 'float32'),
]
TOLERANCE = {'float32': 2e-6, 'float16': 4e-3, 'bfloat16': 4e-2}  # bf16: the interpreter truncates, GPUs round


def run_cases(device: str, operator: bool = False) -> list:
    """Forward and backward of every case through ``gated_product`` (``operator``: the registered operator
    ``torch.ops.scnet.gated_product`` and its autograd formula) on ``device``, against float64 autograd of the
    reference on the same inputs: the largest errors, and whether dtypes and layout came out right."""
    fn = torch.ops.scnet.gated_product if operator else gated_product
    results = []
    g = torch.Generator().manual_seed(0)
    for n, c, size, ctx, identity, layout, dtype_name in CASES:
        dtype = getattr(torch, dtype_name)

        def rand(*shape):
            return torch.randn(*shape, generator=g).to(device, dtype)
        if layout == 'views':  # x1: a channel half of a channels-last tensor; context: a transposed view
            f = rand(n, c, *size)
            x = rand(n, 2 * c, *size).contiguous(memory_format=CL)[:, c:]
            context = rand(n, c, ctx[1], ctx[0]).transpose(2, 3)
            grad = rand(n, c, *size).contiguous(memory_format=CL)
        else:
            fmt = CL if layout == 'channels_last' else torch.contiguous_format
            f, x, context, grad = (t.contiguous(memory_format=fmt) for t in
                                   (rand(n, c, *size), rand(n, c, *size), rand(n, c, *ctx), rand(n, c, *size)))
        leaves = [t.detach().requires_grad_() for t in (f, x, context)]
        y = fn(*leaves, identity)
        grads = torch.autograd.grad(y, leaves, grad, allow_unused=True)
        ref_leaves = [t.detach().double().requires_grad_() for t in (f, x, context)]
        ref = reference_gated_product(*ref_leaves, identity)
        ref_grads = torch.autograd.grad(ref, ref_leaves, grad.double(), allow_unused=True)
        errors = {'out': float((y.double() - ref).abs().max())}
        for name, a, b in zip(('features', 'x1', 'context'), grads, ref_grads):
            errors[name] = None if b is None else float((a.double() - b).abs().max())
            assert (a is None) == (b is None)
        expected_cl = layout == 'channels_last' and size != (1, 1)
        results.append({'case': [n, c, size, ctx, identity, layout, dtype_name], 'errors': errors,
                        'scale': float(ref.abs().max()), 'context_grad_scale': float(ref_grads[2].abs().max()),
                        'dtypes_ok': y.dtype == dtype and all(t is None or t.dtype == dtype for t in grads),
                        'layout_ok': y.is_contiguous(memory_format=CL if expected_cl else torch.contiguous_format)})
    return results


def check_results(results: list) -> None:
    assert len(results) == len(CASES)
    for r in results:
        tol = TOLERANCE[r['case'][-1]]
        assert r['dtypes_ok'] and r['layout_ok'], r
        for name, err in r['errors'].items():
            if err is None:
                assert name == 'x1' and not r['case'][4]
                continue
            # the context gradient sums k x k logit gradients (25 in the 75 -> 3 case)
            scale = max(1.0, r['context_grad_scale'] if name == 'context' else r['scale'])
            assert err <= tol * scale * (4 if name == 'context' else 1), (r['case'], name, err)


def _no_aten(*args):
    raise AssertionError('the ATen path ran instead of the Triton kernels')


INTERPRETER_SCRIPT = r'''
import json
import torch
from torch.profiler import profile
from scnet.layers import gate_op
from tests import test_gate_op
assert gate_op.INTERPRET_ON_CPU
gate_op._aten_forward = gate_op._aten_backward = test_gate_op._no_aten
fast, registered = test_gate_op.run_cases('cpu'), test_gate_op.run_cases('cpu', operator=True)
assert [r['errors'] for r in fast] == [r['errors'] for r in registered]  # the same kernels, bit for bit
# plain eager calls launch the kernels without the dispatcher; the registered operator goes through it
leaves = [t.requires_grad_() for t in test_gate_op.inputs(2, 3, (14, 14), (3, 3))]
for fn in (gate_op.gated_product, torch.ops.scnet.gated_product):
    with profile() as prof:
        y = fn(*leaves, True)
        torch.autograd.grad(y, leaves, torch.ones_like(y))
    dispatched = sorted({e.name for e in prof.events() if e.name.startswith('scnet::')})
    assert dispatched == ([] if fn is gate_op.gated_product else
                          ['scnet::gated_product', 'scnet::gated_product_backward']), dispatched
with profile() as prof, torch.no_grad():  # inference: the forward kernel alone, no autograd node either
    y = gate_op.gated_product(*leaves, True)
assert not [e.name for e in prof.events() if 'scnet' in e.name or 'GatedProduct' in e.name]
torch.testing.assert_close(y, gate_op.reference_gated_product(*leaves, True), rtol=1e-6, atol=1e-6)
# gated_product_backward: the operator's gradients, without the dispatcher (no autograd) and through it
f, x, c = test_gate_op.inputs(2, 3, (13, 11), (3, 4), channels_last=True)
g = torch.randn(2, 3, 13, 11)
ref = [t.double().requires_grad_() for t in (f, x, c)]
expected = torch.autograd.grad(gate_op.reference_gated_product(*ref, True), ref, g.double())
with torch.no_grad():
    got = gate_op.gated_product_backward(g, f, x, c, True)
with torch.enable_grad():
    registered = gate_op.gated_product_backward(g, f, x, c, True)
for a, b, e in zip(got, registered, expected):
    assert torch.equal(a, b)
    torch.testing.assert_close(a.double(), e, rtol=1e-5, atol=1e-5)
print('RESULTS ' + json.dumps(fast))
'''


if gate_op.HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _loop_probe_kernel(out_ptr, n):
        total = 0
        for i in range(0, n):  # a loop bound known at run time only, as in the context gradient kernel
            total += i
        tl.store(out_ptr, total)


def _probe_interpreter_loop() -> None:
    """Run in a subprocess under ``TRITON_INTERPRET=1`` (see ``interpreter_limitation``)."""
    out = torch.zeros(1, dtype=torch.int32)
    _loop_probe_kernel[(1,)](out, 4)
    assert out.item() == 6, out


@functools.cache
def interpreter_limitation() -> Optional[str]:
    """Why Triton's interpreter on this machine cannot run the gate kernels, or None. Asked only after a test
    that runs them in the interpreter failed, to tell a limitation of the interpreter from a fault of the
    kernels: Triton 3.6's interpreter turns a loop's run-time bound into an ``int`` through a one-element NumPy
    array, which NumPy 2.4 refuses (Triton 3.8 runs it). That leaves the compiled kernels alone, which
    ``test_triton_kernels_compile_for_cuda_gpus`` builds for real GPUs here."""
    if not gate_op.HAS_TRITON:
        return None
    env = dict(os.environ, TRITON_INTERPRET='1', OMP_NUM_THREADS='1')
    probe = 'from tests import test_gate_op; test_gate_op._probe_interpreter_loop()'
    proc = subprocess.run([sys.executable, '-c', probe], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    if proc.returncode == 0:
        return None
    lines = proc.stderr.strip().splitlines()
    return (f"Triton {triton.__version__}'s interpreter cannot run a loop with a run-time bound here (NumPy "
            f'{np.__version__}): {lines[-1] if lines else proc.returncode}')


def run_in_interpreter(script: str) -> subprocess.CompletedProcess:
    """``script`` in a subprocess whose CPU tensors take the Triton kernels, run by Triton's interpreter; the test
    is skipped, with the reason, where that interpreter cannot run them (``interpreter_limitation``)."""
    if not gate_op.HAS_TRITON:
        pytest.skip('triton does not import here')
    env = dict(os.environ, TRITON_INTERPRET='1', SCNET_GATE_OP_INTERPRET='1', OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, '-c', script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    if proc.returncode != 0 and interpreter_limitation():
        pytest.skip(interpreter_limitation())
    return proc


def test_triton_kernels_under_the_interpreter():
    proc = run_in_interpreter(INTERPRETER_SCRIPT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith('RESULTS ')][-1]
    check_results(json.loads(line[len('RESULTS '):]))


COMPILE_SCRIPT = r"""
import json, sys
import torch
from triton.backends.compiler import GPUTarget
from triton.runtime.driver import driver
from scnet.layers import gate_op


class OfflineCuda:
    # a driver with a CUDA target and no device behind it: the JIT compiles for it, nothing is launched
    def __init__(self, arch):
        self.target = GPUTarget('cuda', arch, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target


compiled = []


class CompileOnly:
    # stands in for torch.library.wrap_triton: kernel[grid](*args) compiles with the arguments' own
    # specialisations (ints equal to 1, 16-byte alignment, dtypes) instead of launching
    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            binary = self.kernel.warmup(*args, grid=grid, **kwargs)
            compiled.append([driver.active.target.arch, self.kernel.fn.__name__, len(binary.asm['cubin'])])
        return launch


gate_op.wrap_triton = CompileOnly
gate_op._use_triton = lambda t: True  # CPU tensors take the kernel path; their values are never read
gate_op._aten_forward = gate_op._aten_backward = None
CL = torch.channels_last
for arch in json.loads(sys.argv[1]):
    driver.set_active(OfflineCuda(arch))
    for n, c, size, ctx, identity, layout, dtype in json.loads(sys.argv[2]):
        fmt = CL if layout == 'channels_last' else torch.contiguous_format
        leaves = [torch.randn(n, c, *s).to(getattr(torch, dtype)).contiguous(memory_format=fmt).requires_grad_()
                  for s in (size, size, ctx)]
        y = gate_op.gated_product(*leaves, identity)
        torch.autograd.grad(y, leaves, torch.ones_like(y), allow_unused=True)
print('COMPILED ' + json.dumps(compiled))
"""
# SCNet-50's stage-1 shape in float32 NCHW and bfloat16 channels-last, its stage-4 shape (1x1 context) in float16, a
# 1x1 map (every size argument specialised to 1) and an odd map without the identity term
COMPILE_CASES = [(8, 32, (56, 56), (14, 14), True, 'nchw', 'float32'),
                 (8, 32, (56, 56), (14, 14), True, 'channels_last', 'bfloat16'),
                 (2, 256, (7, 7), (1, 1), True, 'channels_last', 'float16'),
                 (1, 2, (1, 1), (1, 1), True, 'nchw', 'float32'),
                 (2, 3, (13, 11), (3, 4), False, 'nchw', 'bfloat16')]


def test_triton_kernels_compile_for_cuda_gpus(tmp_path):
    """The interpreter runs kernels Triton's compiler could still refuse (it executes the Python with numpy):
    here the real compiler builds every kernel down to the GPU's machine code (cubin, through the ptxas that
    triton ships) for an A100 (sm_80) and an H100/H200 (sm_90), with no GPU on the machine, through the
    operator's own launch code (its tiles, grids and strides) for forward and backward."""
    if not gate_op.HAS_TRITON:
        pytest.skip('triton does not import here')
    from triton.backends import backends
    if 'nvidia' not in backends:
        pytest.skip('this triton has no NVIDIA backend')
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path), OMP_NUM_THREADS='1')
    env.pop('TRITON_INTERPRET', None)
    proc = subprocess.run([sys.executable, '-c', COMPILE_SCRIPT, json.dumps([80, 90]), json.dumps(COMPILE_CASES)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith('COMPILED ')][-1]
    compiled = json.loads(line[len('COMPILED '):])
    kernels = ['_gate_forward_kernel', '_gate_backward_kernel', '_context_grad_kernel']
    # per architecture and case: forward, then backward's two kernels
    assert [name for _, name, _ in compiled] == kernels * 2 * len(COMPILE_CASES)
    assert [arch for arch, _, _ in compiled] == [a for a in (80, 90) for _ in range(3 * len(COMPILE_CASES))]
    assert all(size > 1000 for _, _, size in compiled), compiled


@pytest.mark.skipif(not torch.cuda.is_available() or not gate_op.HAS_TRITON, reason='needs a CUDA GPU and triton')
def test_triton_kernels_on_the_gpu(monkeypatch):
    monkeypatch.setattr(gate_op, '_aten_forward', _no_aten)
    monkeypatch.setattr(gate_op, '_aten_backward', _no_aten)
    assert gate_op_available(torch.empty(0, device='cuda'))
    check_results(run_cases('cuda'))
    # torch.compile (Inductor) runs the same kernels inside its graph, forward and backward
    f, x, c = (t.cuda() for t in inputs(4, 8, (28, 28), (7, 7), channels_last=True))
    compiled = torch.compile(Gate(), fullgraph=True)
    a = [t.clone().requires_grad_() for t in (f, x, c)]
    b = [t.clone().requires_grad_() for t in (f, x, c)]
    ya, yb = compiled(*a), Gate()(*b)
    ya.square().sum().backward()
    yb.square().sum().backward()
    torch.testing.assert_close(ya, yb, rtol=1e-6, atol=1e-6)
    for p, q in zip(a, b):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-5)
    # the layer's one-map training node takes the kernels in its backward too, with plain autograd's gradients
    from scnet import SCConv2d
    lean = SCConv2d(16, 16).cuda().train()
    plain = SCConv2d(16, 16, memory_efficient=False).cuda().train()
    plain.load_state_dict(lean.state_dict())
    x = torch.randn(4, 16, 28, 28, device='cuda').contiguous(memory_format=CL)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast('cuda', dtype=torch.bfloat16):
        ya, yb = lean(xa), plain(xb)
    ya.float().square().sum().backward()
    yb.float().square().sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=2e-2, atol=2e-2)
    for p, q in zip(lean.parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=2e-2, atol=2e-2)


class _Props:
    def __init__(self, name, major, minor):
        self.name, self.major, self.minor = name, major, minor


class _DriverWithoutCompiler:
    # a CUDA driver of Triton's whose launcher module does not build, as on a machine without a C compiler
    @property
    def utils(self):
        raise RuntimeError('Failed to find C compiler. Please specify via CC environment variable or set '
                           'triton.knobs.build.impl.')


def _fake_cuda_inputs():
    """Fake CUDA tensors, made while ``torch.cuda.is_available()`` is still the machine's answer: once a test fakes
    it True, torch 2.11's fake tensors start a real CUDA context for a new CUDA tensor, which fails without a driver
    (depending on what ran before in the process, so only under some orders of pytest-xdist)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    mode = FakeTensorMode()
    with mode:  # CUDA tensors of shapes alone: no GPU needed, nothing computed
        f, x, c = (torch.empty(2, 4, *s, device='cuda') for s in ((8, 8), (8, 8), (2, 2)))
    return mode, f, x, c


@pytest.mark.skipif(not gate_op.HAS_TRITON, reason='triton does not import here')
@pytest.mark.parametrize('machine', ['old_gpu', 'no_compiler'])
def test_cuda_devices_where_triton_cannot_launch_take_the_aten_path(machine, monkeypatch):
    """A CUDA machine where Triton kernels cannot run (a GPU older than compute capability 7.0; no C compiler
    for Triton's launcher) gets one warning naming why and what to do, and the gate's ATen path: the layer
    (``calibrated_product``) and the operator itself never reach the kernels there."""
    from triton.runtime.driver import driver

    from scnet.layers import calibration

    mode, f, x, c = _fake_cuda_inputs()  # before CUDA is faked available (see _fake_cuda_inputs)
    monkeypatch.setattr(gate_op, '_CUDA_REASONS', {})
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    if machine == 'old_gpu':
        monkeypatch.setattr(torch.cuda, 'get_device_properties', lambda i: _Props('Tesla P100-PCIE-16GB', 6, 0))
        expected = 'Tesla P100-PCIE-16GB has compute capability 6.0'
    else:
        monkeypatch.setattr(torch.cuda, 'get_device_properties', lambda i: _Props('NVIDIA H100 80GB HBM3', 9, 0))
        monkeypatch.setattr(driver, '_active', _DriverWithoutCompiler())
        expected = r'Triton cannot launch kernels here \(Failed to find C compiler.*a C compiler and Python\'s headers'

    def no_kernels(*args, **kwargs):
        raise AssertionError('the Triton path ran')
    monkeypatch.setattr(gate_op, '_triton_forward', no_kernels)
    monkeypatch.setattr(calibration, 'gated_product', no_kernels)
    with pytest.warns(RuntimeWarning, match=f'fused gate kernel is off on cuda:0: {expected}.*ATen'):
        assert not gate_op_available(f)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # said once per device, not at every layer
        assert not gate_op_available(x)
        assert gate_op.triton_unavailable_reason('cuda:0') == gate_op._CUDA_REASONS[0]
        assert gate_op.triton_unavailable_reason(torch.device('cuda', 0)) is not None
        with mode:
            y = calibration.calibrated_product(f, x, c, True, 'nearest')
            z = gate_op._gated_product_impl(f, x, c, True)
    assert y.shape == z.shape == f.shape and y.device == z.device == f.device


@pytest.mark.skipif(not gate_op.HAS_TRITON, reason='triton does not import here')
def test_cuda_devices_where_triton_launches_take_the_kernels(monkeypatch):
    """The check passes a GPU of compute capability 7.0 or newer whose Triton launcher builds: the layer hands
    its CUDA tensors to the fused operator, silently."""
    from triton.runtime.driver import driver

    from scnet.layers import calibration

    class Ready:
        utils = object()

    mode, f, x, c = _fake_cuda_inputs()
    monkeypatch.setattr(gate_op, '_CUDA_REASONS', {})
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'get_device_properties', lambda i: _Props('Tesla V100-SXM2-16GB', 7, 0))
    monkeypatch.setattr(driver, '_active', Ready())
    called = []
    monkeypatch.setattr(calibration, 'gated_product', lambda *args: called.append(args) or args[0])
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert gate_op_available(f)
        assert gate_op.triton_unavailable_reason('cuda:0') is None
        with mode:
            calibration.calibrated_product(f, x, c, True, 'nearest')
    assert len(called) == 1
    assert gate_op.triton_unavailable_reason('cpu') == 'cpu is not a CUDA device'


@pytest.mark.skipif(not gate_op.HAS_TRITON, reason='triton does not import here')
@pytest.mark.parametrize('index', [0, 1])
def test_kernels_launch_on_the_device_of_their_tensors(index, monkeypatch):
    """Triton launches on the current CUDA device: tensors on another GPU (a network moved to cuda:1 in a process
    whose current device is cuda:0) make theirs current for the launches, forward and backward."""
    import contextlib
    import logging

    from torch._subclasses.fake_tensor import FakeTensorMode

    logging.getLogger('torch._higher_order_ops.triton_kernel_wrap').setLevel(logging.ERROR)  # no driver here
    entered = []

    @contextlib.contextmanager
    def device(i):
        entered.append(i)
        yield

    mode = FakeTensorMode()
    with mode:  # before CUDA is faked available: torch 2.11's fake tensors would then start a real CUDA context
        f, x, grad = (torch.empty(2, 4, 8, 8, device=f'cuda:{index}') for _ in range(3))
        c = torch.empty(2, 4, 2, 2, device=f'cuda:{index}')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: 0)
    monkeypatch.setattr(torch.cuda, 'device', device)
    with mode:
        y = gate_op._triton_forward(f, x, c, True)
        grads = gate_op._triton_backward(grad, f, x, c, True)
    assert y.device == grads[2].device == f.device
    assert entered == ([] if index == 0 else [1, 1])


@pytest.mark.skipif(not gate_op.HAS_TRITON, reason='triton does not import here')
def test_kernels_of_the_interpreter_are_launched_unwrapped(monkeypatch):
    """Compiled kernels go through ``wrap_triton`` (traceable launches); the kernels Triton's interpreter makes
    are launched as they are, since torch 2.11's ``wrap_triton`` refuses them (imitated here)."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    def wrap_triton_of_torch_2_11(kernel):
        if not isinstance(kernel, (JITFunction, Autotuner)):
            raise RuntimeError('wrap_triton only works on functions annotated with triton.jit or triton.autotune')
        return ('wrapped', kernel)

    def python_kernel(x_ptr, n):
        pass

    monkeypatch.setattr(gate_op, 'wrap_triton', wrap_triton_of_torch_2_11)
    interpreted = InterpretedFunction(python_kernel)
    assert gate_op._launchable(interpreted) is interpreted
    for kernel in (gate_op._gate_forward_kernel, gate_op._gate_backward_kernel, gate_op._context_grad_kernel):
        assert isinstance(kernel, JITFunction)
        assert gate_op._launchable(kernel) == ('wrapped', kernel)


def test_importing_without_triton_keeps_the_aten_operator():
    script = ('import sys; sys.modules["triton"] = None\n'
              'import torch\n'
              'from scnet.layers import gate_op\n'
              'assert not gate_op.HAS_TRITON\n'
              'f, x, c = torch.randn(2, 3, 14, 14), torch.randn(2, 3, 14, 14), torch.randn(2, 3, 3, 3)\n'
              'assert not gate_op.gate_op_available(f)\n'
              'leaves = [t.requires_grad_() for t in (f, x, c)]\n'
              'y = gate_op.gated_product(*leaves, True)\n'
              'assert torch.equal(y, gate_op.reference_gated_product(f, x, c, True))\n'
              'y.sum().backward()\n'
              'assert c.grad.shape == c.shape\n'
              'print("ok")\n')
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, '-c', script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().endswith('ok'), proc.stderr[-3000:]

"""The gate and product of SC-Conv's equation 4 as one operator: ``features * sigmoid(x1 + Up(context))``.

``gated_product(features, x1, context, identity)`` computes ``Y1' = features * sigmoid(x1 + Up(context))``
(``sigmoid(Up(context))`` with ``identity=False``), where ``features`` and ``x1`` are ``(N, C, H, W)``,
``context`` is ``(N, C, h, w)`` and ``Up`` is PyTorch's nearest up-sampling to ``(H, W)``, exactly as
``F.interpolate(context, size=(H, W), mode='nearest')`` computes it: source index
``min(floor(dst * float32(h / H)), h - 1)`` in float32 arithmetic.

Why hand-written: no library provides this fused operator. Written with ATen ops it is four to five passes over
full-size maps (up-sampled copy, add, sigmoid, product; backward as many again plus the up-sampling's
adjoint), each a kernel launch and a round trip through memory. On a GPU the whole gate is one pass: one
Triton kernel reads ``features``, ``x1`` and the small ``context`` (gathered by the nearest rule, never
up-sampled in memory) and writes the product; backward is one pass writing the gradients of ``features`` and
of the logits (which is ``x1``'s gradient) and a second, small kernel summing the logit gradient over the
cells of each context pixel (the adjoint of nearest up-sampling, ``context``'s gradient). Inside the kernels
everything is computed in float32, whatever the storage dtype (float32, bfloat16, float16; results rounded once,
to nearest even); other dtypes (float64) take the ATen path on every device. For backward the operator keeps
``features``, ``context`` and, with the identity term, ``x1``: no full-size intermediate.

How it is dispatched: ``torch.ops.scnet.gated_product`` (and ``torch.ops.scnet.gated_product_backward``,
which its autograd formula calls) are registered with ``torch.library.triton_op``: one implementation that,
for CUDA tensors, launches the Triton kernels through ``torch.library.wrap_triton`` and, for every other device
(CPU, ...), runs the plain ATen composition (``F.interpolate``, ``torch.sigmoid``, ``mul``). Because it is a
``triton_op``, ``torch.compile`` traces into the implementation (the CUDA kernels become part of Inductor's
graph, the CPU branch plain ATen ops) and ``torch.export`` keeps the operator as one node, with a fake
implementation giving its output's shape, dtype and layout. Where triton cannot be imported, the same operators
are registered with ``torch.library.custom_op`` and the ATen path only. The Python functions ``gated_product``
and ``gated_product_backward`` call the operators, except in plain eager calls, which launch the same kernels
without the dispatcher's per-call cost (see "eager calls" below). The layer calls them in eager mode only
(``scnet.layers.calibration.calibrated_product`` says why).

Neither importing nor running this module needs triton or a GPU: on a CUDA device where Triton cannot launch
(a GPU older than compute capability 7.0; no C compiler to build Triton's launcher with), the ATen path runs,
after one warning (``triton_unavailable_reason``). ``gate_op_available(t)`` says whether ``t`` takes the Triton
path.

Layouts: the kernels read every input through its own strides (NCHW, channels-last, or views such as the
channel half ``torch.split`` gives), so nothing is copied first; they tile the work along the innermost
dimension of ``features`` (columns in NCHW, channels in channels-last), and the output and the gradients of
``features``, ``x1`` and ``context`` are written contiguous in the layout of ``features`` (channels-last when its
channels are stored innermost).

Testing the kernels without a GPU: with ``TRITON_INTERPRET=1`` and ``SCNET_GATE_OP_INTERPRET=1`` in the
environment before this module (and triton) is imported, CPU tensors take the Triton path too, run by
Triton's interpreter (slow; for tests only).
"""
import contextlib
import os
import warnings
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.library import wrap_triton  # traceable launches (torch.compile, make_fx); plain ones in eager

__all__ = ['gated_product', 'gated_product_backward', 'gate_op_available', 'reference_gated_product',
           'triton_unavailable_reason']

try:  # a machine without triton (or with a broken one) still gets the operator, on its ATen path
    import triton
    import triton.language as tl
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction
    _WRAPPABLE: tuple = (JITFunction, Autotuner)  # what wrap_triton takes (interpreted kernels aside)
    HAS_TRITON = True
except Exception:  # noqa: BLE001 - any failure to import means "no triton"
    triton = None
    tl = None
    _WRAPPABLE = ()
    HAS_TRITON = False

# Triton's interpreter on CPU tensors (tests only): both variables must be set before the import.
INTERPRET_ON_CPU = (HAS_TRITON and os.environ.get('TRITON_INTERPRET') == '1'
                    and os.environ.get('SCNET_GATE_OP_INTERPRET') == '1')

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def gate_op_available(tensor: Tensor) -> bool:
    """True when ``tensor`` takes the Triton path of ``gated_product``: it is on a CUDA device where Triton can
    launch kernels (see ``triton_unavailable_reason``), or, in tests, Triton's interpreter runs CPU tensors."""
    return _use_triton(tensor)


def _use_triton(t: Tensor) -> bool:
    if not HAS_TRITON:
        return False
    if t.device.type == 'cpu':
        return INTERPRET_ON_CPU
    if t.device.type != 'cuda':
        return False
    index = t.device.index or 0  # (a CUDA tensor's device always has its index)
    if index in _CUDA_REASONS:
        return _CUDA_REASONS[index] is None
    if torch.compiler.is_compiling() or not torch.cuda.is_available():
        # a graph being traced (torch.compile, torch.export; make_fx on fake CUDA tensors, perhaps for a GPU this
        # machine lacks): no probe runs here
        return True
    return triton_unavailable_reason(t.device) is None


# CUDA device index -> why Triton cannot launch there (None: it can); filled by triton_unavailable_reason
_CUDA_REASONS: Dict[int, Optional[str]] = {}


def triton_unavailable_reason(device) -> Optional[str]:
    """Why the gate's Triton kernels cannot run on the CUDA ``device`` (None: they can), found once per device
    and remembered; the first time it is not None, a ``RuntimeWarning`` says it, and the gate takes its ATen path
    there (the same computation, slower).

    Why this check: a CUDA build of PyTorch with triton installed is not yet a machine where Triton kernels run.
    Triton compiles no code for GPUs older than compute capability 7.0 (PyTorch's own ``torch.compile`` refuses
    them too), and before its first launch it builds a small C module, its launcher, with the machine's C
    compiler and Python's headers (cached afterwards in ``~/.triton``). SC-Conv in eager mode must not need
    either: without this check a network would fail at its first forward pass on such a machine."""
    device = torch.device(device)
    if device.type != 'cuda':
        return f'{device.type} is not a CUDA device'
    if not HAS_TRITON:
        return 'triton does not import'
    if not torch.cuda.is_available():
        return 'no CUDA device is available here (torch.cuda.is_available() is False)'
    index = torch.cuda.current_device() if device.index is None else device.index
    if index not in _CUDA_REASONS:
        reason = _probe_cuda(index)
        _CUDA_REASONS[index] = reason
        if reason is not None:
            warnings.warn(f'SC-Conv\'s fused gate kernel is off on cuda:{index}: {reason}. The gate runs as ATen '
                          'operations there instead: the same computation, slower.', RuntimeWarning)
    return _CUDA_REASONS[index]


def _probe_cuda(index: int) -> Optional[str]:
    props = torch.cuda.get_device_properties(index)
    hip = torch.version.hip is not None
    if not hip and props.major < 7:
        return (f'{props.name} has compute capability {props.major}.{props.minor}, and Triton compiles for 7.0 '
                'and newer only')
    from triton.backends import backends
    backend = 'amd' if hip else 'nvidia'
    if backend not in backends:
        return f'this triton was built without its {backend!r} backend; reinstall triton as PyTorch pins it'
    try:
        triton.runtime.driver.active.utils  # builds (or loads from Triton's cache) the launcher module
    except Exception as e:  # noqa: BLE001 - a missing compiler, missing headers, a failed link: all the same here
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        first = first if len(first) <= 300 else first[:300] + '...'  # (a failed compiler's whole command line)
        return (f'Triton cannot launch kernels here ({first}); it builds its launcher once, with a C compiler '
                'and Python\'s headers (e.g. `apt install gcc python3-dev`, or CC=/path/to/cc)')
    return None


def _kernel_path(t: Tensor) -> bool:
    """The Triton kernels run this tensor: CUDA (or the interpreter) and a dtype they compute in float32."""
    return _use_triton(t) and t.dtype in _DTYPES


def reference_gated_product(features: Tensor, x1: Tensor, context: Tensor, identity: bool) -> Tensor:
    """The operator written with ATen ops: ``features * sigmoid(x1 + F.interpolate(context, (H, W)))``."""
    up = F.interpolate(context, size=[features.shape[-2], features.shape[-1]], mode='nearest')
    logits = x1 + up if identity else up
    return features * torch.sigmoid(logits)


# ----------------------------------------------------------------------------------------------- checks, layout

def _check(features: Tensor, x1: Tensor, context: Tensor) -> None:
    torch._check(features.dim() == 4 and x1.dim() == 4 and context.dim() == 4,
                 lambda: 'gated_product: features, x1 and context must be 4-D (N, C, H, W), got '
                         f'{features.dim()}-D, {x1.dim()}-D and {context.dim()}-D')
    torch._check(features.shape == x1.shape,
                 lambda: f'gated_product: features {tuple(features.shape)} and x1 {tuple(x1.shape)} differ in shape')
    torch._check(context.shape[0] == features.shape[0] and context.shape[1] == features.shape[1],
                 lambda: f'gated_product: context {tuple(context.shape)} must have the batch and channels of '
                         f'features {tuple(features.shape)}')
    torch._check(features.dtype == x1.dtype == context.dtype,
                 lambda: f'gated_product: features, x1 and context must share a dtype (gated_product() promotes), '
                         f'got {features.dtype}, {x1.dtype}, {context.dtype}')
    torch._check(features.device == x1.device == context.device,
                 lambda: 'gated_product: features, x1 and context must be on one device')


def _check_eager(features: Tensor, x1: Tensor, context: Tensor) -> None:
    """``_check`` for concrete tensors of one dtype at a fraction of its cost (which is paid on every layer call
    of an eager network): plain comparisons, and ``_check``'s messages only when one fails."""
    size = features.shape
    if not (len(size) == 4 and x1.shape == size and context.dim() == 4 and context.shape[:2] == size[:2]
            and x1.device == features.device and context.device == features.device):
        _check(features, x1, context)


def _channels_last(t: Tensor) -> bool:
    """Whether ``t``'s channels are stored innermost (channels-last, also for views such as a channel slice of
    a channels-last tensor); when C == 1 or the map is 1x1 both orders are the same and NCHW is chosen."""
    return t.stride(1) < t.stride(3)


def _memory_format(t: Tensor) -> torch.memory_format:
    """The layout of the operator's outputs: that of ``features``."""
    return torch.channels_last if _channels_last(t) else torch.contiguous_format


def _empty(shape, like: Tensor, fmt: torch.memory_format, dtype=None) -> Tensor:
    return torch.empty(shape, dtype=like.dtype if dtype is None else dtype, device=like.device, memory_format=fmt)


# ---------------------------------------------------------------------------------------------------- ATen path

def _aten_forward(features: Tensor, x1: Tensor, context: Tensor, identity: bool) -> Tensor:
    return reference_gated_product(features, x1, context, identity).contiguous(
        memory_format=_memory_format(features))


def _aten_backward(grad: Tensor, features: Tensor, x1: Tensor, context: Tensor,
                   identity: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients of features, of the logits (= x1's with ``identity``) and of context; low-precision inputs are
    computed in float32 and rounded once."""
    fmt = _memory_format(features)
    big = [features.shape[-2], features.shape[-1]]
    opmath = torch.promote_types(features.dtype, torch.float32)
    f, c, g = features.to(opmath), context.to(opmath), grad.to(opmath)
    up = F.interpolate(c, size=big, mode='nearest')
    gate = torch.sigmoid(x1.to(opmath) + up if identity else up)
    grad_features = g * gate
    grad_logits = grad_features * f * (1 - gate)
    grad_context = torch.ops.aten.upsample_nearest2d_backward(grad_logits, big, list(context.shape), None, None)
    return (grad_features.to(features.dtype).contiguous(memory_format=fmt),
            grad_logits.to(features.dtype).contiguous(memory_format=fmt),
            grad_context.to(context.dtype).contiguous(memory_format=fmt))


# -------------------------------------------------------------------------------------------------- tile sizes

def _pow2(n, cap: int) -> int:
    """The smallest power of two >= n, at most ``cap`` (n may be a SymInt: comparisons only)."""
    b = 1
    while b < n and b < cap:
        b *= 2
    return b


def _tiles(c, h, w, channels_last: bool, elements: int = 1024) -> Tuple[int, int, int]:
    """Block sizes (channels, rows, columns) of a kernel's tile, about ``elements`` elements: along columns in
    NCHW (contiguous rows), along channels in channels-last (contiguous channels)."""
    if channels_last:
        bc = _pow2(c, 64)
        bx = _pow2(w, max(1, elements // bc))
        by = _pow2(h, max(1, elements // (bc * bx)))
    else:
        bx = _pow2(w, 64)
        by = _pow2(h, max(1, elements // bx))
        bc = _pow2(c, max(1, elements // (bx * by)))
    return bc, by, bx


def _cdiv(a, b):
    return (a + b - 1) // b


# ------------------------------------------------------------------------------------------------ Triton kernels

if HAS_TRITON:
    @triton.jit
    def _nearest_source(dst, src_size, dst_size):
        """PyTorch's nearest rule: min(floor(dst * float32(src / dst_size)), src - 1), in float32."""
        scale = tl.div_rn(src_size * 1.0, dst_size * 1.0)
        return tl.minimum(tl.floor(dst.to(tl.float32) * scale).to(tl.int32), src_size - 1)

    @triton.jit
    def _offsets(c3, y, x, s_c, s_h, s_w):
        """Element offsets of a (channels, rows, columns) tile, from one sample's start."""
        return c3 * s_c + y[None, :, None] * s_h + x[None, None, :] * s_w

    @triton.jit
    def _tile(C, H, W, c_tiles, BC: tl.constexpr, BY: tl.constexpr, BX: tl.constexpr):
        """This program's tile: its sample, channels (as a column), rows, columns and in-bounds mask."""
        pid = tl.program_id(0)
        n = (pid // c_tiles).to(tl.int64)
        c3 = ((pid % c_tiles) * BC + tl.arange(0, BC))[:, None, None]
        y = tl.program_id(1) * BY + tl.arange(0, BY)
        x = tl.program_id(2) * BX + tl.arange(0, BX)
        mask = (c3 < C) & (y[None, :, None] < H) & (x[None, None, :] < W)
        return n, c3, y, x, mask

    @triton.jit
    def _tile_logits(x_ptr, c_ptr, n, c3, y, x, mask, H, W, h, w,
                     xs_n, xs_c, xs_h, xs_w, cs_n, cs_c, cs_h, cs_w, IDENTITY: tl.constexpr):
        """x1 + context[nearest] (or context[nearest]) over a tile, in float32."""
        sy = _nearest_source(y, h, H)
        sx = _nearest_source(x, w, W)
        logits = tl.load((c_ptr + n * cs_n) + _offsets(c3, sy, sx, cs_c, cs_h, cs_w), mask=mask,
                         other=0.0).to(tl.float32)
        if IDENTITY:
            logits += tl.load((x_ptr + n * xs_n) + _offsets(c3, y, x, xs_c, xs_h, xs_w), mask=mask,
                              other=0.0).to(tl.float32)
        return logits

    @triton.jit
    def _gate_forward_kernel(f_ptr, x_ptr, c_ptr, out_ptr,
                             C, H, W, h, w,
                             fs_n, fs_c, fs_h, fs_w,
                             xs_n, xs_c, xs_h, xs_w,
                             cs_n, cs_c, cs_h, cs_w,
                             os_n, os_c, os_h, os_w,
                             c_tiles,
                             IDENTITY: tl.constexpr, BC: tl.constexpr, BY: tl.constexpr, BX: tl.constexpr):
        """out = features * sigmoid(x1 + context[nearest]) over one (channels, rows, columns) tile of one
        sample; every tensor is read through its own strides."""
        n, c3, y, x, mask = _tile(C, H, W, c_tiles, BC, BY, BX)
        logits = _tile_logits(x_ptr, c_ptr, n, c3, y, x, mask, H, W, h, w,
                              xs_n, xs_c, xs_h, xs_w, cs_n, cs_c, cs_h, cs_w, IDENTITY)
        f = tl.load((f_ptr + n * fs_n) + _offsets(c3, y, x, fs_c, fs_h, fs_w), mask=mask, other=0.0).to(tl.float32)
        out = f * tl.sigmoid(logits)
        tl.store((out_ptr + n * os_n) + _offsets(c3, y, x, os_c, os_h, os_w), out.to(out_ptr.dtype.element_ty),
                 mask=mask)

    @triton.jit
    def _gate_backward_kernel(g_ptr, f_ptr, x_ptr, c_ptr, gf_ptr, gl_ptr,
                              C, H, W, h, w,
                              gs_n, gs_c, gs_h, gs_w,
                              fs_n, fs_c, fs_h, fs_w,
                              xs_n, xs_c, xs_h, xs_w,
                              cs_n, cs_c, cs_h, cs_w,
                              os_n, os_c, os_h, os_w,
                              c_tiles,
                              IDENTITY: tl.constexpr, BC: tl.constexpr, BY: tl.constexpr, BX: tl.constexpr):
        """grad_features = g * s and grad_logits = g * features * s * (1 - s), s = sigmoid(logits); the two
        outputs share strides (os_*)."""
        n, c3, y, x, mask = _tile(C, H, W, c_tiles, BC, BY, BX)
        gate = tl.sigmoid(_tile_logits(x_ptr, c_ptr, n, c3, y, x, mask, H, W, h, w,
                                       xs_n, xs_c, xs_h, xs_w, cs_n, cs_c, cs_h, cs_w, IDENTITY))
        g = tl.load((g_ptr + n * gs_n) + _offsets(c3, y, x, gs_c, gs_h, gs_w), mask=mask, other=0.0).to(tl.float32)
        f = tl.load((f_ptr + n * fs_n) + _offsets(c3, y, x, fs_c, fs_h, fs_w), mask=mask, other=0.0).to(tl.float32)
        grad_f = g * gate
        offs = _offsets(c3, y, x, os_c, os_h, os_w)
        tl.store((gf_ptr + n * os_n) + offs, grad_f.to(gf_ptr.dtype.element_ty), mask=mask)
        tl.store((gl_ptr + n * os_n) + offs, (grad_f * f * (1.0 - gate)).to(gl_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _context_grad_kernel(gl_ptr, gc_ptr,
                             C, H, W, h, w,
                             s_n, s_c, s_h, s_w,
                             gs_n, gs_c, gs_h, gs_w,
                             c_tiles, KH, KW,
                             BC: tl.constexpr, BI: tl.constexpr, BJ: tl.constexpr):
        """The adjoint of nearest up-sampling: each context cell (i, j) sums the logit gradient over the output
        pixels whose source it is. Those rows lie in [floor(i * H / h) - 1, + KH), KH = ceil(H / h) + 3, and
        likewise the columns; each candidate is kept when the nearest rule maps it to (i, j). Sums in float32."""
        pid = tl.program_id(0)
        n = (pid // c_tiles).to(tl.int64)
        c = (pid % c_tiles) * BC + tl.arange(0, BC)
        i = tl.program_id(1) * BI + tl.arange(0, BI)
        j = tl.program_id(2) * BJ + tl.arange(0, BJ)
        c3 = c[:, None, None]
        cmask = c3 < C
        y0 = tl.maximum((i * H) // h - 1, 0)
        x0 = tl.maximum((j * W) // w - 1, 0)
        base = gl_ptr + n * s_n
        acc = tl.zeros([BC, BI, BJ], dtype=tl.float32)
        for a in range(0, KH):
            y = y0 + a
            row = (y < H) & (_nearest_source(y, h, H) == i)
            for b in range(0, KW):
                x = x0 + b
                col = (x < W) & (_nearest_source(x, w, W) == j)
                m = cmask & row[None, :, None] & col[None, None, :]
                acc += tl.load(base + _offsets(c3, y, x, s_c, s_h, s_w), mask=m, other=0.0).to(tl.float32)
        out_mask = cmask & (i[None, :, None] < h) & (j[None, None, :] < w)
        tl.store((gc_ptr + n * gs_n) + _offsets(c3, i, j, gs_c, gs_h, gs_w), acc.to(gc_ptr.dtype.element_ty),
                 mask=out_mask)


def _grid(n, c, rows, cols, tiles):
    bc, by, bx = tiles
    c_tiles = _cdiv(c, bc)
    return (n * c_tiles, _cdiv(rows, by), _cdiv(cols, bx)), c_tiles


def _launch_device(t: Tensor) -> Optional[int]:
    """The CUDA device to make current for a launch on ``t`` (None: the current one is ``t``'s). Triton launches
    on the current device, not on its arguments': without this, a network moved to ``cuda:1`` in a process
    that never called ``torch.cuda.set_device`` would run its gate on ``cuda:0`` with ``cuda:1``'s memory.
    Compilers place their own launches (Inductor emits device guards)."""
    if t.device.type != 'cuda' or torch.compiler.is_compiling() or not torch.cuda.is_available():
        return None
    index = t.device.index
    return None if index is None or index == torch.cuda.current_device() else index


def _on_device_of(t: Tensor):
    index = _launch_device(t)
    return contextlib.nullcontext() if index is None else torch.cuda.device(index)


def _launchable(kernel):
    """``wrap_triton(kernel)``, or ``kernel`` itself when Triton's interpreter made it (``TRITON_INTERPRET=1``,
    tests only): torch 2.14 hands such kernels back unwrapped itself, torch 2.11 (the oldest release this
    package supports) refuses them with a RuntimeError. On a GPU every kernel is a ``JITFunction``."""
    if isinstance(kernel, _WRAPPABLE):
        return wrap_triton(kernel)
    return kernel


def _triton_forward(features: Tensor, x1: Tensor, context: Tensor, identity: bool) -> Tensor:
    n, c, big_h, big_w = features.shape
    h, w = context.shape[-2], context.shape[-1]
    fmt = _memory_format(features)
    out = _empty(features.shape, features, fmt)
    bc, by, bx = tiles = _tiles(c, big_h, big_w, fmt == torch.channels_last)
    grid, c_tiles = _grid(n, c, big_h, big_w, tiles)
    with _on_device_of(features):
        _launchable(_gate_forward_kernel)[grid](
            features, x1, context, out, c, big_h, big_w, h, w,
            *features.stride(), *x1.stride(), *context.stride(), *out.stride(), c_tiles,
            IDENTITY=identity, BC=bc, BY=by, BX=bx)
    return out


def _triton_backward(grad: Tensor, features: Tensor, x1: Tensor, context: Tensor,
                     identity: bool) -> Tuple[Tensor, Tensor, Tensor]:
    n, c, big_h, big_w = features.shape
    h, w = context.shape[-2], context.shape[-1]
    fmt = _memory_format(features)
    channels_last = fmt == torch.channels_last
    grad = grad.to(features.dtype)
    grad_features = _empty(features.shape, features, fmt)
    grad_logits = _empty(features.shape, features, fmt)
    bc, by, bx = tiles = _tiles(c, big_h, big_w, channels_last)
    grid, c_tiles = _grid(n, c, big_h, big_w, tiles)
    grad_context = _empty(context.shape, context, fmt)
    with _on_device_of(features):
        _launchable(_gate_backward_kernel)[grid](
            grad, features, x1, context, grad_features, grad_logits, c, big_h, big_w, h, w,
            *grad.stride(), *features.stride(), *x1.stride(), *context.stride(), *grad_features.stride(), c_tiles,
            IDENTITY=identity, BC=bc, BY=by, BX=bx)

        bc, bi, bj = tiles = _tiles(c, h, w, channels_last, elements=512)
        grid, c_tiles = _grid(n, c, h, w, tiles)
        _launchable(_context_grad_kernel)[grid](
            grad_logits, grad_context, c, big_h, big_w, h, w, *grad_logits.stride(), *grad_context.stride(),
            c_tiles, _cdiv(big_h, h) + 3, _cdiv(big_w, w) + 3, BC=bc, BI=bi, BJ=bj)
    return grad_features, grad_logits, grad_context


# ------------------------------------------------------------------------------------------------- the operators

def _gated_product_impl(features: Tensor, x1: Tensor, context: Tensor, identity: bool) -> Tensor:
    _check(features, x1, context)
    if _kernel_path(features):
        return _triton_forward(features, x1, context, identity)
    return _aten_forward(features, x1, context, identity)


def _gated_product_backward_impl(grad: Tensor, features: Tensor, x1: Tensor, context: Tensor,
                                 identity: bool) -> Tuple[Tensor, Tensor, Tensor]:
    _check(features, x1, context)
    if _kernel_path(features):
        return _triton_backward(grad, features, x1, context, identity)
    return _aten_backward(grad, features, x1, context, identity)


def _gated_product_fake(features: Tensor, x1: Tensor, context: Tensor, identity: bool) -> Tensor:
    _check(features, x1, context)
    return _empty(features.shape, features, _memory_format(features))


def _gated_product_backward_fake(grad: Tensor, features: Tensor, x1: Tensor, context: Tensor,
                                 identity: bool) -> Tuple[Tensor, Tensor, Tensor]:
    _check(features, x1, context)
    fmt = _memory_format(features)
    return (_empty(features.shape, features, fmt), _empty(features.shape, features, fmt),
            _empty(context.shape, context, fmt))


def _register(name: str, fn):
    if HAS_TRITON:
        return torch.library.triton_op(name, fn, mutates_args=())
    return torch.library.custom_op(name, fn, mutates_args=())


gated_product_op = _register('scnet::gated_product', _gated_product_impl)
gated_product_backward_op = _register('scnet::gated_product_backward', _gated_product_backward_impl)
# Explicit fake implementations (triton_op would trace the implementation instead): the output's shape, dtype
# and layout without running anything, the same with or without triton.
gated_product_op.register_fake(_gated_product_fake)
gated_product_backward_op.register_fake(_gated_product_backward_fake)


def _setup_context(ctx, inputs, output) -> None:
    features, x1, context, identity = inputs
    ctx.identity = identity
    ctx.save_for_backward(features, x1 if identity else None, context)


def _backward(ctx, grad: Tensor):
    features, x1, context = ctx.saved_tensors
    # without the identity term x1 is not read: features stands in for it
    grad_features, grad_logits, grad_context = torch.ops.scnet.gated_product_backward(
        grad, features, x1 if ctx.identity else features, context, ctx.identity)
    return grad_features, grad_logits if ctx.identity else None, grad_context, None


gated_product_op.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------------ eager calls, no dispatcher
# Why: a Python operator costs tens of microseconds per call in the dispatcher before its implementation starts
# (its registered autograd formula included), paid on the host at every layer call; at batch 1 on a GPU a step
# is bound by the host, so that cost is the step's, not hidden behind the GPU's work. Plain eager calls therefore
# launch the same kernels themselves (through an autograd.Function where gradients are wanted); whatever traces,
# transforms or intercepts (torch.compile, torch.export, make_fx, jit.trace, torch.func, dispatch modes, tensor
# subclasses) gets the registered operator.

try:  # private helpers of torch's (a torch without them takes the operator always)
    from torch._C import _are_functorch_transforms_active
    from torch._library.triton import set_wrap_triton_enabled  # what triton_op's own eager kernel does
    from torch.utils._python_dispatch import _get_current_dispatch_mode
    _EAGER_LAUNCH = True
except ImportError:  # pragma: no cover
    _EAGER_LAUNCH = False


def _plain_eager(*tensors: Tensor) -> bool:
    """Plain tensors for the kernels, in eager mode, with nothing tracing, transforming or intercepting them."""
    return (_EAGER_LAUNCH and not torch.compiler.is_compiling() and not torch.jit.is_tracing()
            and _kernel_path(tensors[0]) and all(type(t) is Tensor for t in tensors)
            and not _are_functorch_transforms_active() and _get_current_dispatch_mode() is None)


class _GatedProduct(torch.autograd.Function):
    """The operator's kernels and autograd formula (``_setup_context``, ``_backward``) for plain eager calls."""

    @staticmethod
    def forward(ctx, features: Tensor, x1: Tensor, context: Tensor, identity: bool) -> Tensor:
        _setup_context(ctx, (features, x1, context, identity), None)
        with set_wrap_triton_enabled(False):
            return _triton_forward(features, x1, context, identity)

    @staticmethod
    def backward(ctx, grad: Tensor):  # _backward, with the gradients' own eager call instead of the operator
        features, x1, context = ctx.saved_tensors
        grad_features, grad_logits, grad_context = gated_product_backward(
            grad, features, x1 if ctx.identity else features, context, ctx.identity)
        return grad_features, grad_logits if ctx.identity else None, grad_context, None


def _promoted(*tensors: Tensor) -> Tuple[Tensor, ...]:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return tuple(t if t.dtype == dtype else t.to(dtype) for t in tensors)


def gated_product(features: Tensor, x1: Tensor, context: Tensor, identity: bool) -> Tensor:
    """``features * sigmoid(x1 + Up(context))`` (``identity=False``: ``features * sigmoid(Up(context))``).

    ``features`` and ``x1``: ``(N, C, H, W)``; ``context``: ``(N, C, h, w)``, up-sampled to ``(H, W)`` by
    PyTorch's nearest rule. Inputs of different dtypes are promoted to one. On CUDA (with triton; float32,
    bfloat16 or float16) one Triton kernel computes it, in float32; elsewhere ATen ops. Differentiable in all
    three inputs; the result has the layout of ``features``. ``torch.ops.scnet.gated_product`` is the same
    operator as registered (what compilers and tracers see); plain eager calls here skip its dispatch overhead.
    """
    features, x1, context = _promoted(features, x1, context)
    if _plain_eager(features, x1, context):
        _check_eager(features, x1, context)
        if torch.is_grad_enabled() and (features.requires_grad or x1.requires_grad or context.requires_grad):
            return _GatedProduct.apply(features, x1, context, bool(identity))
        with set_wrap_triton_enabled(False):
            return _triton_forward(features, x1, context, bool(identity))
    return torch.ops.scnet.gated_product(features, x1, context, bool(identity))


def gated_product_backward(grad: Tensor, features: Tensor, x1: Tensor, context: Tensor,
                           identity: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """The gradients of ``gated_product(features, x1, context, identity)`` given ``grad``, the gradient of its
    output: with respect to ``features``, to the logits ``x1 + Up(context)`` (which is ``x1``'s gradient with the
    identity term; without it ``x1`` is not read) and to ``context``. Inputs are promoted to one dtype, as
    ``gated_product`` promotes them; the results have the layout of ``features``. For code that rebuilds the
    gate in its own backward (``scnet.layers.calibration.CalibratedHalf``): one kernel pass, and a small one for
    ``context``, on CUDA. Under ``create_graph`` it is the registered operator
    ``torch.ops.scnet.gated_product_backward``, as in the operator's own autograd formula."""
    grad, features, x1, context = _promoted(grad, features, x1, context)
    if not torch.is_grad_enabled() and _plain_eager(features, grad, x1, context):
        _check_eager(features, x1, context)
        with set_wrap_triton_enabled(False):
            return _triton_backward(grad, features, x1, context, identity)
    return torch.ops.scnet.gated_product_backward(grad, features, x1, context, bool(identity))

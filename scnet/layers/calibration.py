"""The calibrated half of SC-Conv as functions: pooling (eq. 2), the gate and product (eq. 4), and a training
path that keeps one map for backward where autograd would keep three.

Why functions: they branch on map sizes (the pooling window is clamped on maps smaller than r; a map that is
an exact multiple of its context skips materialising the up-sampled context). ``torch.fx`` cannot trace
Python branches on shapes, so ``scnet.layers.scconv`` declares ``pool_context`` and ``calibrated_product``
leaves of fx graphs (``torch.fx.wrap``; ``torchvision``'s ``create_feature_extractor`` included), while
TorchScript compiles them and Dynamo (``torch.compile``, ``torch.export``) traces through them.

Why a hand-written backward (``CalibratedHalf``): in training, autograd keeps K3's output (for its BN), the
BN's output and the gate (for the product), and the product (for K4's weight gradient): four half-width maps
a plain 3x3 convolution does not have. ``CalibratedHalf`` runs BN3, the gate, the product and K4 in one
autograd node that keeps only K3's output; backward rebuilds the BN output, the gate and the product with
element-wise passes (on CUDA, the gate's fused kernels: one pass for the product, one for the gradients of the
gate's inputs) and calls ATen's own convolution and batch-norm backward kernels. Nothing is recomputed
twice and no convolution runs again (``torch.utils.checkpoint`` would re-run K4's forward); running
statistics are updated once, in forward, as ``nn.BatchNorm2d`` does. No library provides this node: it is
specific to the layer's dataflow.

Second-order gradients (``torch.autograd.grad(..., create_graph=True)``, gradient penalties): the hand-written
backward works in place and through kernels whose own derivatives would miss BN3's dependence on the batch
statistics, so under ``create_graph`` ``CalibratedHalf`` instead recomputes BN3 (batch statistics, running ones
untouched), the gate, the product and K4 with ordinary differentiable ops from the kept inputs and
differentiates them; the graph of the gradient is then exactly plain autograd's (at plain autograd's memory
cost, for that step only).
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scnet.layers.gate_op import gate_op_available, gated_product, gated_product_backward

__all__ = ['pool_context', 'calibrated_product', 'CalibratedHalf']

def pool_context(x1: Tensor, pooling_r: int, use_max: bool) -> Tensor:
    """Equation 2: ``r x r`` windows with stride r, each axis' window clamped to the map's extent."""
    h, w = x1.shape[-2], x1.shape[-1]
    window = [min(pooling_r, h), min(pooling_r, w)]
    if use_max:
        return F.max_pool2d(x1, window, window)
    return F.avg_pool2d(x1, window, window)


def _block_factors(x1: Tensor, context: Tensor, upsample: str) -> List[int]:
    """``[kh, kw]`` when nearest up-sampling of ``context`` to ``x1``'s size repeats each cell in kh x kw
    blocks (so a broadcast can stand in for it), else ``[]``."""
    big_h, big_w = x1.shape[-2], x1.shape[-1]
    h, w = context.shape[-2], context.shape[-1]
    if upsample != 'nearest' or big_h % h != 0 or big_w % w != 0:
        return []
    kh, kw = big_h // h, big_w // w
    # PyTorch's nearest rule, floor(i * float32(h / H)), equals i // k for k <= 24 only: from 25 on,
    # float32(1 / k) can round below 1 / k (tests/test_scconv.py checks the whole range)
    if kh > 24 or kw > 24:
        return []
    return [kh, kw]


def _gate_logits(x1: Tensor, context: Tensor, identity: bool, upsample: str) -> Tensor:
    """``X1 + Up(context)`` (or ``Up(context)``) as a new tensor, never a view of an input."""
    n, c, big_h, big_w = x1.shape[0], x1.shape[1], x1.shape[2], x1.shape[3]
    h, w = context.shape[-2], context.shape[-1]
    if h == big_h and w == big_w:
        return x1 + context if identity else context.clone()
    factors = _block_factors(x1, context, upsample)
    if len(factors) == 2:  # broadcast over kh x kw blocks: no full-size up-sampled context is made
        kh, kw = factors[0], factors[1]
        if x1.stride(1) == 1:  # channels innermost (channels-last): one broadcast, vectorised over channels
            cells = context.reshape(n, c, h, 1, w, 1).expand(n, c, h, kh, w, kw)
            blocks = x1.reshape(n, c, h, kh, w, kw)
        else:  # rows innermost: repeat along rows first (a 1/kh-size copy), so the broadcast runs along rows
            cells = context.unsqueeze(-1).expand(n, c, h, w, kw).reshape(n, c, h, 1, big_w).expand(
                n, c, h, kh, big_w)
            blocks = x1.reshape(n, c, h, kh, big_w)
        if identity:
            return (blocks + cells).reshape(n, c, big_h, big_w)
        return cells.reshape(n, c, big_h, big_w).clone()  # reshape copies the expanded cells
    if upsample == 'nearest':
        up = F.interpolate(context, size=[big_h, big_w], mode='nearest')
    else:
        up = F.interpolate(context, size=[big_h, big_w], mode='bilinear', align_corners=False)
    return x1 + up if identity else up


def _up_adjoint(grad: Tensor, context: Tensor, upsample: str) -> Tensor:
    """The gradient of ``Up(context)`` with respect to ``context``: the adjoint of the up-sampling."""
    big_h, big_w = grad.shape[-2], grad.shape[-1]
    h, w = context.shape[-2], context.shape[-1]
    if h == big_h and w == big_w:
        return grad
    factors = _block_factors(grad, context, upsample)
    if len(factors) == 2:  # the adjoint of repeating each cell over a block is a sum over the block
        return F.avg_pool2d(grad, factors, factors, divisor_override=1)
    if upsample == 'nearest':
        return torch.ops.aten.upsample_nearest2d_backward(grad, [big_h, big_w], list(context.shape), None, None)
    return torch.ops.aten.upsample_bilinear2d_backward(grad, [big_h, big_w], list(context.shape), False, None,
                                                       None)


def _takes_fused_gate(x1: Tensor, upsample: str) -> bool:
    """Whether the gate runs as the fused operator: nearest up-sampling, in eager mode (graphs get the plain
    operations; ``calibrated_product`` says why), on tensors its Triton kernels can take."""
    return (upsample == 'nearest' and not torch.compiler.is_compiling() and not torch.jit.is_tracing()
            and gate_op_available(x1))


def calibrated_product(features: Tensor, x1: Tensor, context: Tensor, identity: bool, upsample: str) -> Tensor:
    """``features * sigmoid(X1 + Up(context))``: the gate and product of equation 4.

    In eager mode on CUDA (with triton) this is one fused kernel (``scnet.layers.gate_op``). Elsewhere:
    up-sampling by an integer factor is a broadcast over blocks instead of an up-sampled copy, and without
    autograd the sigmoid and the product run in place on the gate's own buffer (two passes fewer; not while
    ``torch.jit.trace`` records).

    Graphs get the plain operations, also on CUDA: under ``torch.compile`` Inductor fuses them with the
    normalisation that made ``features`` into one kernel, where the fused operator, opaque to Inductor, would
    add a pass that writes ``features`` and one that reads it back; ``torch.export`` and ``torch.jit.trace``
    record them, so that exported and traced files run without scnet's operator (in C++ too).
    """
    if not torch.jit.is_scripting():
        if _takes_fused_gate(x1, upsample):
            return gated_product(features, x1, context, identity)
    logits = _gate_logits(x1, context, identity, upsample)
    # torch.jit.trace records whichever branch runs, and its check_trace traces again with other grad settings:
    # traced graphs take the out-of-place branch always, so both traces agree and the graph stays differentiable
    if torch.jit.is_tracing() or (torch.is_grad_enabled() and (features.requires_grad or logits.requires_grad)):
        return features * torch.sigmoid(logits)
    return logits.sigmoid_().mul_(features)


class CalibratedHalf(torch.autograd.Function):
    """``Y1 = K4(BN3(Z) * sigmoid(X1 + Up(context)))`` for training-mode ``nn.BatchNorm2d``, keeping only
    ``Z = K3(X1)`` (and the small context) for backward; see the module doc.

    ``forward(z, x1, context, bn_weight, bn_bias, running_mean, running_var, momentum, eps, k4_weight,
    k4_bias, stride, padding, dilation, groups, identity, upsample)``.
    """

    @staticmethod
    def forward(ctx, z, x1, context, bn_weight, bn_bias, running_mean, running_var, momentum: float, eps: float,
                k4_weight, k4_bias, stride, padding, dilation, groups: int, identity: bool, upsample: str):
        features, mean, invstd = torch.native_batch_norm(z, bn_weight, bn_bias, running_mean, running_var, True,
                                                         momentum, eps)
        product = calibrated_product(features, x1, context, identity, upsample)  # in place: no autograd here
        y = F.conv2d(product, k4_weight, k4_bias, stride, padding, dilation, groups)  # autocast applies here
        ctx.save_for_backward(z, x1, context, bn_weight, bn_bias, mean, invstd, k4_weight, k4_bias)
        ctx.conv = (stride, padding, dilation, groups)
        ctx.options = (identity, upsample, eps, y.dtype)
        ctx.running = (running_mean, running_var)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        if torch.is_grad_enabled():  # create_graph=True: the gradient itself must be differentiable
            return CalibratedHalf._differentiable_backward(ctx, grad_y)
        z, x1, context, bn_weight, bn_bias, mean, invstd, k4_weight, k4_bias = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        identity, upsample, eps, conv_dtype = ctx.options
        needs = ctx.needs_input_grad

        # rebuild BN3's output, the gate and the product (element-wise passes only), in the forward's dtypes;
        # under autocast K4 ran in conv_dtype, so its backward does too
        opmath = torch.promote_types(z.dtype, torch.float32)
        scale = invstd if bn_weight is None else invstd * bn_weight
        shift = -mean * scale if bn_bias is None else bn_bias - mean * scale
        features = torch.addcmul(shift.view(1, -1, 1, 1).to(opmath), z.to(opmath),
                                 scale.view(1, -1, 1, 1).to(opmath)).to(z.dtype)
        # on CUDA the gate's kernels: one pass rebuilds the product, one writes the gradients of features and of
        # the logits, one sums the latter into context's; the ATen composition below makes seven passes
        gate: Optional[Tensor] = None
        if _takes_fused_gate(x1, upsample):
            product = gated_product(features, x1, context, identity)
        else:
            gate = torch.sigmoid(_gate_logits(x1, context, identity, upsample))
            product = features * gate

        bias_sizes: Optional[List[int]] = None if k4_bias is None else [k4_bias.shape[0]]
        grad_product, grad_k4w, grad_k4b = torch.ops.aten.convolution_backward(
            grad_y.to(conv_dtype), product.to(conv_dtype), k4_weight.to(conv_dtype), bias_sizes, list(stride),
            list(padding), list(dilation), False, [0, 0], groups,
            [True, needs[9], k4_bias is not None and needs[10]])
        if gate is None:
            del product
            grad_features, grad_logits, grad_context = gated_product_backward(grad_product, features, x1, context,
                                                                              identity)
            del features, grad_product
            grad_context = grad_context.to(context.dtype) if needs[2] else None
        else:
            grad_features = grad_product * gate
            del gate, grad_product
            # d(product)/d(logits) = features * gate * (1 - gate), and features * (1 - gate) = features - product
            diff = features.sub_(product) if features.dtype == product.dtype else features - product
            grad_logits = diff.mul_(grad_features) if diff.dtype == grad_features.dtype else diff * grad_features
            del features, product
            grad_context = _up_adjoint(grad_logits, context, upsample).to(context.dtype) if needs[2] else None
        grad_x1 = grad_logits.to(x1.dtype) if identity and needs[1] else None

        running_mean, running_var = ctx.running
        grad_z, grad_bnw, grad_bnb = torch.ops.aten.native_batch_norm_backward(
            grad_features.to(z.dtype), z, bn_weight, running_mean, running_var, mean, invstd, True, eps,
            [needs[0], bn_weight is not None and needs[3], bn_bias is not None and needs[4]])
        if grad_k4w is not None:
            grad_k4w = grad_k4w.to(k4_weight.dtype)
        if grad_k4b is not None:
            grad_k4b = grad_k4b.to(k4_bias.dtype)
        return (grad_z, grad_x1, grad_context, grad_bnw, grad_bnb, None, None, None, None, grad_k4w, grad_k4b,
                None, None, None, None, None, None)

    @staticmethod
    def _differentiable_backward(ctx, grad_y):
        """The backward as a graph (see the module doc): forward again with differentiable ops, BN3 on batch
        statistics without touching the running ones (forward updated them), then autograd.

        Each input enters as an alias (``view_as``), a node of its own downstream of the original: the gradient
        with respect to an alias counts only the paths from ``y`` to it, i.e. this node's partial derivative (``z``
        and ``context`` are themselves functions of ``x1``, and the gradient with respect to ``x1`` itself would
        count those paths a second time), while the result stays connected to the original inputs for the next
        order."""
        saved = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        identity, upsample, eps, conv_dtype = ctx.options
        with torch.enable_grad():
            z, x1, context, bn_weight, bn_bias, _, _, k4_weight, k4_bias = [
                None if t is None else t.view_as(t) for t in saved]
            inputs = {0: z, 1: x1, 2: context, 3: bn_weight, 4: bn_bias, 9: k4_weight, 10: k4_bias}
            wanted = [i for i, t in inputs.items() if ctx.needs_input_grad[i] and t is not None]
            features = F.batch_norm(z, None, None, bn_weight, bn_bias, True, 0.0, eps)
            product = features * torch.sigmoid(_gate_logits(x1, context, identity, upsample))
            y = F.conv2d(product.to(conv_dtype), k4_weight.to(conv_dtype),
                         None if k4_bias is None else k4_bias.to(conv_dtype), stride, padding, dilation, groups)
            grads = torch.autograd.grad(y, [inputs[i] for i in wanted], grad_y.to(y.dtype), create_graph=True,
                                        allow_unused=True)
        result: List[Optional[Tensor]] = [None] * 17
        for i, g in zip(wanted, grads):
            result[i] = g
        return tuple(result)


def batch_norm_momentum(bn: nn.BatchNorm2d) -> float:
    """The running-average factor ``nn.BatchNorm2d.forward`` would use for this training step, counting the
    step in ``num_batches_tracked`` as it does."""
    if bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
    if bn.momentum is None:  # cumulative moving average
        return 1.0 / float(bn.num_batches_tracked)
    return float(bn.momentum)

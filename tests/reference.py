"""A literal, unoptimised implementation of equations 2-5, written to be read against the paper.

Pooling and nearest up-sampling are explicit loops over output cells; batch norm is written out. It shares
no code with ``scnet.layers.scconv``: tests compare the two.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def batch_norm_eval(x, bn):
    """(x - running_mean) / sqrt(running_var + eps) * weight + bias, per channel."""
    if bn is None:
        return x
    shape = (1, -1, 1, 1)
    return ((x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
            * bn.weight.view(shape) + bn.bias.view(shape))


def pool_r(x, r, mode):
    """Equation 2: r x r windows with stride r, floor mode; a map smaller than r is pooled over its extent."""
    n, c, h, w = x.shape
    rh, rw = min(r, h), min(r, w)
    oh, ow = h // rh, w // rw
    out = x.new_zeros(n, c, oh, ow)
    for i in range(oh):
        for j in range(ow):
            window = x[:, :, i * rh:(i + 1) * rh, j * rw:(j + 1) * rw]
            if mode == 'avg':
                out[:, :, i, j] = window.mean(dim=(2, 3))
            else:
                out[:, :, i, j] = window.amax(dim=(2, 3))
    return out


def upsample_nearest(t, size):
    """out[i, j] = t[floor(i * h_t / H), floor(j * w_t / W)]."""
    n, c, ht, wt = t.shape
    h, w = size
    out = t.new_zeros(n, c, h, w)
    for i in range(h):
        for j in range(w):
            out[:, :, i, j] = t[:, :, min(ht - 1, math.floor(i * ht / h)), min(wt - 1, math.floor(j * wt / w))]
    return out


def upsample_bilinear(t, size):
    """Half-pixel-centre bilinear interpolation (align_corners=False), written out."""
    n, c, ht, wt = t.shape
    h, w = size
    out = t.new_zeros(n, c, h, w)
    for i in range(h):
        y = max((i + 0.5) * ht / h - 0.5, 0.0)
        y0 = min(int(math.floor(y)), ht - 1)
        y1 = min(y0 + 1, ht - 1)
        dy = y - y0
        for j in range(w):
            x = max((j + 0.5) * wt / w - 0.5, 0.0)
            x0 = min(int(math.floor(x)), wt - 1)
            x1 = min(x0 + 1, wt - 1)
            dx = x - x0
            out[:, :, i, j] = ((1 - dy) * (1 - dx) * t[:, :, y0, x0] + (1 - dy) * dx * t[:, :, y0, x1]
                               + dy * (1 - dx) * t[:, :, y1, x0] + dy * dx * t[:, :, y1, x1])
    return out


def sc_conv_reference(x, layer):
    """Y = cat(Y2, Y1) of section 3.1 for an ``SCConv2d`` ``layer`` in eval mode, using its weights."""
    s, d, g = layer.stride[0], layer.dilation[0], layer.groups

    def conv(inp, weight, stride=1):
        return F.conv2d(inp, weight, stride=stride, padding=d, dilation=d, groups=g)

    half = x.shape[1] // 2
    x2, x1 = x[:, :half], x[:, half:]           # the first half keeps its context (path 2)
    y2 = conv(x2, layer.k1.weight, s)           # Y2 = X2 * K1
    r = layer.pooling_r
    if r > 1:
        t1 = pool_r(x1, r, layer.pool)          # (2) T1 = Pool_r(X1)
        k2t1 = batch_norm_eval(conv(t1, layer.k2.weight), _bn(layer.k2_norm))
        up = upsample_nearest if layer.upsample == 'nearest' else upsample_bilinear
        x1_prime = up(k2t1, x1.shape[-2:])      # (3) X1' = Up(T1 * K2)
    else:
        x1_prime = batch_norm_eval(conv(x1, layer.k2.weight), _bn(layer.k2_norm))
    gate = torch.sigmoid(x1 + x1_prime) if layer.identity else torch.sigmoid(x1_prime)
    y1_prime = batch_norm_eval(conv(x1, layer.k3.weight), _bn(layer.k3_norm)) * gate   # (4)
    y1 = conv(y1_prime, layer.k4.weight, s)     # (5) Y1 = Y1' * K4
    return torch.cat([y2, y1], dim=1)


def _bn(module):
    return module if isinstance(module, torch.nn.BatchNorm2d) else None

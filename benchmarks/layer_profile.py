"""Where SCNet-50's time goes, layer by layer: each of its SC-Conv shapes against the plain 3x3 convolution
ResNet-50 has in the same place, in inference and in a training step.

    python benchmarks/layer_profile.py                          # 2 threads, infer batch 1 and 8, train 16
    python benchmarks/layer_profile.py --threads 1 --output benchmarks/results/layer_profile.json

For every distinct (channels, map size, stride) of SCNet-50's ``conv2`` layers at 224 px it times, in one
process and interleaved round by round: ``nn.Conv2d`` 3x3 (ResNet-50's layer), ``SCConv2d`` as built
(``memory_efficient=True``: the one-map training path) and ``SCConv2d(memory_efficient=False)`` (plain
autograd). Training rows are forward plus backward with the input's gradient. Each row also gives the
multiply-accumulates of both layers, so time per MAC can be compared; "network" rows weight every shape by
how many layers of SCNet-50 have it. The JSON names the machine (CPU, instruction set, threads, versions).

``--tried`` adds, to the inference rows, the designs that were tried for the layer and left out, each checked
against the layer's output before it is timed, so that the docs' "what was tried" can be re-measured on any
machine: ``grouped_k1_k3`` (K1 and K3 as one grouped convolution over the whole input, stride-1 layers only:
their inputs are the two halves and both keep the resolution), ``grouped_k1_k4`` (K1 and K4 as one grouped
convolution over ``[X2 | Y1']``, which the product is written into: no concatenation of the outputs) and
``onednn_direct`` (every convolution through ``aten.mkldnn_convolution``, which PyTorch's own choice skips for
small batch-1 maps).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from scnet.allocator import tune_cpu_allocator  # noqa: E402
from scnet import SCConv2d  # noqa: E402
from scnet.layers.calibration import calibrated_product, pool_context  # noqa: E402
from scnet.bench.machine import cpu_description, machine_facts  # noqa: E402
from scnet.files import write_json_atomic  # noqa: E402

#: (width, input map size, stride, how many layers of SCNet-50 at 224 px)
SCNET50_SHAPES = [(64, 56, 1, 3), (128, 56, 2, 1), (128, 28, 1, 3), (256, 28, 2, 1), (256, 14, 1, 5),
                  (512, 14, 2, 1), (512, 7, 1, 2)]


def macs(width: int, size: int, stride: int) -> Dict[str, int]:
    """Multiply-accumulates of the plain 3x3 conv and of SC-Conv (K1 and K4 strided, K2 pooled by 4, K3 at
    the input resolution), batch 1."""
    out = (size - 1) // stride + 1
    half = width // 2
    pooled = max(1, size // 4)
    return {'conv': width * width * 9 * out * out,
            'scconv': half * half * 9 * (2 * out * out + size * size + pooled * pooled)}


def _time(fns: Dict[str, Callable[[], None]], rounds: int) -> Dict[str, float]:
    """Minimum seconds per call of each function, interleaved round by round after one warm-up call."""
    for fn in fns.values():
        fn()
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: min(v) for k, v in times.items()}


def grouped_k1_k3(m: SCConv2d, x: torch.Tensor) -> torch.Tensor:
    """Tried: ``[K1 | K3]`` as one convolution with twice the groups over the whole input (stride 1)."""
    half = m.in_channels // 2
    both = F.conv2d(x, torch.cat([m.k1.weight, m.k3.weight]), None, 1, m.padding, m.dilation, 2 * m.groups)
    x_calib = x[:, half:]
    product = calibrated_product(m.k3_norm(both[:, half:]), x_calib, m._context(x_calib), m.identity, m.upsample)
    return torch.cat([both[:, :half], m.k4(product)], 1)


def grouped_k1_k4(m: SCConv2d, x: torch.Tensor) -> torch.Tensor:
    """Tried: ``[K1 | K4]`` as one convolution over ``[X2 | Y1']``, the product written into that buffer."""
    half = m.in_channels // 2
    x_calib = x[:, half:]
    features = m.k3_norm(m.k3(x_calib))
    buffer = torch.empty_like(x)
    buffer[:, :half].copy_(x[:, :half])
    buffer[:, half:].copy_(calibrated_product(features, x_calib, m._context(x_calib), m.identity, m.upsample))
    return F.conv2d(buffer, torch.cat([m.k1.weight, m.k4.weight]), None, m.stride, m.padding, m.dilation,
                    2 * m.groups)


def _onednn(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.mkldnn_convolution(x, conv.weight, conv.bias, conv.padding, conv.stride, conv.dilation,
                                             conv.groups)


def onednn_direct(m: SCConv2d, x: torch.Tensor) -> torch.Tensor:
    """Tried: every convolution through oneDNN, whatever PyTorch's size cut-off would choose."""
    x_plain, x_calib = torch.split(x, m.in_channels // 2, dim=1)
    context = m.k2_norm(_onednn(m.k2, pool_context(x_calib, m.pooling_r, m.pool == 'max')))  # the layer's, via oneDNN
    product = calibrated_product(m.k3_norm(_onednn(m.k3, x_calib)), x_calib, context, m.identity, m.upsample)
    return torch.cat([_onednn(m.k1, x_plain), _onednn(m.k4, product)], 1)


TRIED = {'grouped_k1_k3': grouped_k1_k3, 'grouped_k1_k4': grouped_k1_k4, 'onednn_direct': onednn_direct}


def _tried_fns(layer: SCConv2d, x: torch.Tensor, stride: int) -> Dict[str, Callable[[], None]]:
    """The tried designs that apply to this shape, each checked against the layer first."""
    layer.eval()
    for bn in (layer.k2_norm, layer.k3_norm):  # statistics that are not the identity, so a slip would show
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    fns = {}
    with torch.inference_mode():
        expected = layer(x)
        for name, design in TRIED.items():
            if name == 'grouped_k1_k3' and stride != 1:
                continue
            torch.testing.assert_close(design(layer, x), expected, rtol=1e-4, atol=1e-4)

            def fn(design=design):
                with torch.inference_mode():
                    design(layer, x)
            fns[name] = fn
    return fns


def profile_shapes(mode: str, batch: int, rounds: int, shapes=None, tried: bool = False) -> List[Dict[str, object]]:
    """One row per shape (default: SCNet-50's) with the three layers' minimum milliseconds (and, with ``tried``
    in inference, the designs that were left out)."""
    rows = []
    for width, size, stride, count in SCNET50_SHAPES if shapes is None else shapes:
        torch.manual_seed(0)
        layers = {'conv3x3': nn.Conv2d(width, width, 3, stride, 1, bias=False),
                  'scconv': SCConv2d(width, width, stride=stride),
                  'scconv_plain_autograd': SCConv2d(width, width, stride=stride, memory_efficient=False)}
        x = torch.randn(batch, width, size, size)
        fns = {}
        for name, layer in layers.items():
            layer.train(mode == 'train')
            if mode == 'train':
                def fn(layer=layer):
                    inp = x.detach().requires_grad_()
                    layer(inp).sum().backward()
            else:
                def fn(layer=layer):
                    with torch.inference_mode():
                        layer(x)
            fns[name] = fn
        if tried and mode == 'infer':
            fns.update(_tried_fns(layers['scconv'], x, stride))
        seconds = _time(fns, rounds)
        rows.append({'width': width, 'size': size, 'stride': stride, 'layers_in_scnet50': count,
                     'macs_per_image': macs(width, size, stride),
                     'ms': {k: round(v * 1e3, 3) for k, v in seconds.items()},
                     'scconv_vs_conv_time': round(seconds['scconv'] / seconds['conv3x3'], 3)})
    return rows


def network_totals(rows: List[Dict[str, object]]) -> Dict[str, float]:
    """Milliseconds of all SCNet-50 conv2 layers (each shape times its count), per implementation; a design that
    does not apply to some shapes (``grouped_k1_k3`` at stride 2) counts the layer as built there."""
    totals: Dict[str, float] = {}
    names = list(dict.fromkeys(name for row in rows for name in row['ms']))  # first seen first: stable columns
    for row in rows:
        for name in names:
            ms = row['ms'].get(name, row['ms']['scconv'])
            totals[name] = round(totals.get(name, 0.0) + ms * row['layers_in_scnet50'], 2)
    return totals


def finish_report(report: Dict[str, object], threads: int, output) -> None:
    """Print the machine a profile ran on and write its JSON report to ``output`` (when given); op_profile.py
    ends the same way."""
    print(f'\n{cpu_description(report["machine"])}, {threads} threads')
    if output:
        write_json_atomic(report, output)
        print(f'wrote {output}')


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--threads', type=int, default=2, help='torch.set_num_threads (default: 2)')
    parser.add_argument('--infer-batch', type=int, nargs='+', default=[1, 8], help='inference batch sizes')
    parser.add_argument('--train-batch', type=int, nargs='*', default=[16], help='training batch sizes')
    parser.add_argument('--rounds', type=int, default=10, help='timed rounds per shape (default: 10)')
    parser.add_argument('--tried', action='store_true',
                        help='also time, in inference, the designs that were tried and left out (see above)')
    parser.add_argument('--output', help='write the JSON report here')
    args = parser.parse_args(argv)
    tune_cpu_allocator()  # as the scnet command does, so that figures match what it measures
    if args.threads < 1 or args.rounds < 1:
        parser.error('--threads and --rounds must be at least 1')
    torch.set_num_threads(args.threads)
    report = {'machine': machine_facts(), 'settings': vars(args), 'groups': []}
    for mode, batches in (('infer', args.infer_batch), ('train', args.train_batch)):
        for batch in batches:
            rows = profile_shapes(mode, batch, args.rounds, tried=args.tried)
            totals = network_totals(rows)
            report['groups'].append({'mode': mode, 'batch': batch, 'rows': rows, 'network_ms': totals})
            print(f'\n{mode}, batch {batch} (ms, minimum of {args.rounds} rounds, {args.threads} threads)')
            print(f'{"width":>5} {"size":>4} {"stride":>6} {"count":>5} {"conv3x3":>9} {"scconv":>9} '
                  f'{"plain-ag":>9} {"sc/conv":>7} {"MACs sc/conv":>12}')
            for row in rows:
                ms, m = row['ms'], row['macs_per_image']
                print(f'{row["width"]:>5} {row["size"]:>4} {row["stride"]:>6} {row["layers_in_scnet50"]:>5} '
                      f'{ms["conv3x3"]:>9.2f} {ms["scconv"]:>9.2f} {ms["scconv_plain_autograd"]:>9.2f} '
                      f'{row["scconv_vs_conv_time"]:>7.2f} {m["scconv"] / m["conv"]:>12.2f}')
            print(f'{"all conv2 layers":>24} {totals["conv3x3"]:>9.1f} {totals["scconv"]:>9.1f} '
                  f'{totals["scconv_plain_autograd"]:>9.1f} {totals["scconv"] / totals["conv3x3"]:>7.2f}')
            for name in TRIED:
                if name in totals:
                    print(f'{"tried: " + name:>24} {totals[name]:>9.1f} ms over all conv2 layers, '
                          f'{totals[name] / totals["scconv"]:.2f}x the layer as built')
    finish_report(report, args.threads, args.output)
    return 0


if __name__ == '__main__':
    sys.exit(main())

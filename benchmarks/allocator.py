"""Page faults of a CPU training step, with glibc's allocator as it starts and as ``scnet`` tunes it.

    python benchmarks/allocator.py                       # resnet50 and scnet50, train batch 16, both orders
    python benchmarks/allocator.py --output benchmarks/results/allocator.json

Each configuration (allocator default or tuned, models in one order or the other) runs in a fresh process:
the models are built and timed one after the other, as a process that trains one network and then another
would, and each step's wall time, system CPU time and minor page faults are averaged over ``--steps`` steps
after ``--warmup``. This is what docs/performance.md ("Memory the process keeps") quotes.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from scnet import create_model  # noqa: E402
from scnet.allocator import OPT_OUT, allocator_state, tune_cpu_allocator  # noqa: E402
from scnet.bench.machine import machine_facts  # noqa: E402
from scnet.files import write_json_atomic  # noqa: E402


def measure(models, batch: int, size: int, warmup: int, steps: int) -> list:
    """Per model, in order: mean wall ms, system ms and minor faults of a training step (this process)."""
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 1000, (batch,))
    rows = []
    for name in models:
        torch.manual_seed(0)
        model = create_model(name).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.0)

        def step():
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        for _ in range(warmup):
            step()
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(steps):
            step()
        r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        rows.append({'model': name, 'wall_ms': (t1 - t0) / steps * 1e3,
                     'system_ms': (r1.ru_stime - r0.ru_stime) / steps * 1e3,
                     'minor_faults': (r1.ru_minflt - r0.ru_minflt) / steps})
        del model, opt
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', nargs=2, default=['resnet50', 'scnet50'], metavar=('A', 'B'))
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--input-size', type=int, default=224)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--steps', type=int, default=4)
    p.add_argument('--output', metavar='FILE', help='write the JSON report here')
    p.add_argument('--child', action='store_true', help=argparse.SUPPRESS)   # one configuration, JSON on stdout
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        tune_cpu_allocator()
        rows = measure(args.models, args.batch_size, args.input_size, args.warmup, args.steps)
        print(json.dumps({'allocator': allocator_state(), 'rows': rows}))
        return 0
    runs = []
    for tuned in (False, True):
        for order in (args.models, args.models[::-1]):
            env = {k: v for k, v in os.environ.items() if k != OPT_OUT}
            if not tuned:
                env[OPT_OUT] = 'default'
            cmd = [sys.executable, os.path.abspath(__file__), '--child', '--models', *order,
                   '--batch-size', str(args.batch_size), '--input-size', str(args.input_size),
                   '--threads', str(args.threads), '--warmup', str(args.warmup), '--steps', str(args.steps)]
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
            run = json.loads(done.stdout.strip().splitlines()[-1])
            runs.append(run)
            for row in run['rows']:
                print(f"{run['allocator'][:40]:40s}  {' then '.join(order):22s}  {row['model']:9s}  "
                      f"{row['wall_ms']:7.0f} ms a step  system {row['system_ms']:6.0f} ms  "
                      f"{row['minor_faults']:9.0f} page faults", flush=True)
    if args.output:
        write_json_atomic({'machine': machine_facts(), 'settings': {k: v for k, v in vars(args).items()
                                                                     if k not in ('child', 'output')},
                           'runs': runs}, args.output)
    return 0


if __name__ == '__main__':
    sys.exit(main())

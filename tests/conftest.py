"""Suite-wide settings: one compute thread per test process.

The suite runs as two pytest-xdist workers on a 2-core machine; each worker (and every subprocess a test
starts: torchrun, the CLI) uses one thread, so the processes do not fight over the cores.

Bytecode is written even where the shell sets PYTHONDONTWRITEBYTECODE=1 (CI's does): scripts/setup.sh compiles
only what `import scnet` loads, and the suite's other imports (onnx, mkdocs, torch.distributed.run, ...) are
then compiled once, by the first process that needs them, instead of in each of the dozens that start.
"""
import os
import sys

os.environ['OMP_NUM_THREADS'] = '1'
os.environ.pop('PYTHONDONTWRITEBYTECODE', None)  # for the subprocesses tests start
sys.dont_write_bytecode = False

import torch  # noqa: E402

torch.set_num_threads(1)

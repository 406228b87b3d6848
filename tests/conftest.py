"""Suite-wide settings: one compute thread per test process.

The suite runs as two pytest-xdist workers on a 2-core machine; each worker (and every subprocess a test
starts: torchrun, the CLI) uses one thread, so the processes do not fight over the cores.
"""
import os

os.environ['OMP_NUM_THREADS'] = '1'

import torch  # noqa: E402

torch.set_num_threads(1)

"""scnet.allocator: glibc keeps freed memory for reuse; the scnet command applies it, reports record it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scnet import allocator
from scnet.cli.main import main

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import resource, sys, torch
from scnet.allocator import tune_cpu_allocator
print(tune_cpu_allocator())
def churn():
    for _ in range(10):
        blocks = [torch.ones(2 ** 22) for _ in range(6)]   # 6 x 16 MiB, allocated and freed together
        del blocks
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(**env):
    clean = {k: v for k, v in os.environ.items() if k != allocator.OPT_OUT and not k.startswith('MALLOC_')}
    done = subprocess.run([sys.executable, '-c', PROBE], capture_output=True, text=True, env={**clean, **env},
                          timeout=120)
    assert done.returncode == 0, done.stderr
    state, faults = done.stdout.split('\n')[:2]
    return state, int(faults)


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc is the allocator tuned')
def test_tuned_allocator_reuses_freed_memory_instead_of_faulting_it_in_again():
    state, faults = _probe()
    assert state.startswith('glibc ') and 'tuned (trim threshold 2 GiB, top pad 64 MiB, mmap threshold 32 MiB)' in state
    # glibc's own starting thresholds (128 KiB), pinned: left as they are, and every 16 MiB block is mapped and
    # faulted in again each round. (Unpinned, glibc moves them as it goes, and whether freed memory comes back
    # depends on what the process did before: the variation the tuning removes.)
    pinned_state, pinned_faults = _probe(MALLOC_MMAP_THRESHOLD_='131072', MALLOC_TRIM_THRESHOLD_='131072')
    assert pinned_state == 'as configured (malloc settings from the environment)'
    assert pinned_faults > 5 * 24576 and faults < 1000   # 10 rounds of 96 MiB = 24,576 pages a round


@pytest.mark.parametrize('env, platform, reason', [
    ({allocator.OPT_OUT: 'DEFAULT'}, 'linux', f'{allocator.OPT_OUT}=default'),
    ({'LD_PRELOAD': '/usr/lib/x86_64-linux-gnu/libjemalloc.so.2'}, 'linux', 'jemalloc preloaded'),
    ({'MALLOC_TRIM_THRESHOLD_': '1000'}, 'linux', 'malloc settings from the environment'),
    ({'GLIBC_TUNABLES': 'glibc.malloc.trim_threshold=1000'}, 'linux', 'malloc settings from the environment'),
    ({}, 'darwin', 'not glibc (darwin)'),
])
def test_left_alone_where_the_user_or_the_platform_decides(env, platform, reason, monkeypatch):
    monkeypatch.setattr(allocator, '_state', None)
    for key in (allocator.OPT_OUT, 'LD_PRELOAD', 'MALLOC_TRIM_THRESHOLD_', 'GLIBC_TUNABLES'):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(sys, 'platform', platform)
    assert allocator.tune_cpu_allocator() == f'as configured ({reason})'
    assert allocator.allocator_state() == f'as configured ({reason})'


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc is the allocator tuned')
def test_the_command_tunes_its_process_and_the_report_says_so(tmp_path, monkeypatch):
    monkeypatch.delenv(allocator.OPT_OUT, raising=False)
    out = tmp_path / 'bench.json'
    assert main(['benchmark', '--models', 'resnet26_cifar', '--input-size', '32', '--batch-size', '2',
                 '--repeats', '1', '--warmup', '0', '--no-memory', '--quiet', '--output', str(out)]) == 0
    recorded = json.loads(out.read_text())['machine']['allocator']
    assert recorded == allocator.allocator_state() and ', tuned (' in recorded
    assert allocator.tune_cpu_allocator() == recorded   # idempotent


def test_allocator_benchmark_runs_each_configuration_in_its_own_process(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    import allocator as script   # benchmarks/allocator.py
    out = tmp_path / 'allocator.json'
    assert script.main(['--models', 'resnet26_cifar', 'scnet26_cifar', '--input-size', '32', '--batch-size', '2',
                        '--warmup', '0', '--steps', '1', '--threads', '1', '--output', str(out)]) == 0
    report = json.loads(out.read_text())
    states = [run['allocator'] for run in report['runs']]
    assert states[:2] == [f'as configured ({allocator.OPT_OUT}=default)'] * 2
    assert all(', tuned (' in state for state in states[2:])
    assert [[r['model'] for r in run['rows']] for run in report['runs']] == [
        ['resnet26_cifar', 'scnet26_cifar'], ['scnet26_cifar', 'resnet26_cifar']] * 2
    assert all(r['wall_ms'] > 0 and r['minor_faults'] >= 0 for run in report['runs'] for r in run['rows'])
    assert capsys.readouterr().out.count('page faults') == 8

"""A size beyond the machine's free memory fails in Python with the command's one-line error, not by the
kernel's kill: the address-space ceiling of the commands sized by their flags, and its limits."""
import resource
import sys

import pytest
import torch

import scnet.cli.benchmark
import scnet.cli.train
from scnet.cli.main import SIZED_BY_FLAGS, main
from scnet.memory_ceiling import OPT_OUT, free_memory_bytes, memory_ceiling

pytestmark = pytest.mark.skipif(not sys.platform.startswith('linux') or torch.cuda.is_available(),
                                reason='the ceiling is set on Linux without CUDA only')


def _reserve_beyond_free_memory():
    """Untouched tensors (no page is used, so this costs nothing without a ceiling) together over the free
    memory, each below it: what a large network's activations at a size typed by mistake add up to."""
    part = free_memory_bytes() // 3
    return [torch.empty(part, dtype=torch.uint8) for _ in range(4)]


def test_beyond_free_memory_an_allocation_raises_inside_the_block_only():
    before = resource.getrlimit(resource.RLIMIT_AS)
    with memory_ceiling() as what:
        assert 'GiB address space' in what and 'GiB free' in what
        with pytest.raises(RuntimeError, match="can't allocate memory"):
            _reserve_beyond_free_memory()
        torch.ones(2 ** 20).sum()  # what fits still runs
    assert resource.getrlimit(resource.RLIMIT_AS) == before


def test_the_ceiling_can_be_turned_off_and_a_lower_one_is_kept(monkeypatch):
    before = resource.getrlimit(resource.RLIMIT_AS)
    monkeypatch.setenv(OPT_OUT, 'off')
    with memory_ceiling() as what:
        assert what == f'none ({OPT_OUT}=off)' and resource.getrlimit(resource.RLIMIT_AS) == before
        _reserve_beyond_free_memory()
    monkeypatch.delenv(OPT_OUT)
    with memory_ceiling() as what:
        ceiling = resource.getrlimit(resource.RLIMIT_AS)[0]
        with memory_ceiling() as inner:  # a lower limit set before is the user's: kept as it is
            assert inner == f'{ceiling / 2 ** 30:.1f} GiB address space (set before)'
            assert resource.getrlimit(resource.RLIMIT_AS)[0] == ceiling
    assert resource.getrlimit(resource.RLIMIT_AS) == before


def test_a_command_sized_by_its_flags_reports_memory_beyond_the_machine_in_one_line(monkeypatch, capsys):
    assert 'benchmark' in SIZED_BY_FLAGS and 'export' in SIZED_BY_FLAGS and 'train' not in SIZED_BY_FLAGS
    before = resource.getrlimit(resource.RLIMIT_AS)
    monkeypatch.setattr(scnet.cli.benchmark, 'run', lambda args: _reserve_beyond_free_memory() and 0)
    assert main(['benchmark', '--models', 'scnet26_cifar']) == 2
    err = capsys.readouterr().err
    assert err.startswith("scnet benchmark: error: out of memory (") and "can't allocate memory" in err
    assert err.rstrip().endswith('use a smaller --batch-size or --input-size') and len(err.splitlines()) == 1
    assert resource.getrlimit(resource.RLIMIT_AS) == before

    seen = []  # a training run keeps the whole machine: memory others free during it stays usable
    monkeypatch.setattr(scnet.cli.train, 'run', lambda args: seen.append(resource.getrlimit(resource.RLIMIT_AS)))
    assert main(['train', '--epochs', '1']) == 0 and seen == [before]

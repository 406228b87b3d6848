"""One process or many: the process group that ``torchrun`` describes in the environment.

``torchrun --nproc_per_node=K -m scnet train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK; without them the run
is a single process. NCCL is the backend on GPUs, gloo on CPUs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from scnet.errors import ScnetError

__all__ = ['Context', 'LaunchError', 'setup', 'teardown', 'all_reduce_sum', 'barrier', 'broadcast_buffers']


@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _device(choice: str, local_rank: int) -> torch.device:
    from scnet.errors import InvalidArgumentError

    index = choice.split(':', 1)[1] if isinstance(choice, str) and choice.startswith('cuda:') else None
    if not isinstance(choice, str) or (choice not in ('auto', 'cpu', 'cuda') and not (index and index.isdigit())):
        raise InvalidArgumentError(f'device must be auto, cpu, cuda or cuda:N, got {choice!r}')
    if choice == 'auto':
        choice = 'cuda' if torch.cuda.is_available() else 'cpu'
    if choice.startswith('cuda'):
        if not torch.cuda.is_available():
            raise ScnetError('--device cuda asked for, but PyTorch sees no CUDA GPU here; use --device cpu')
        index = local_rank if choice == 'cuda' else int(choice.split(':')[1])
        count = torch.cuda.device_count()
        if index >= count:  # (else a CUDA "invalid device ordinal" from deep inside, at the first use)
            what = f'LOCAL_RANK={local_rank}' if choice == 'cuda' else f'--device {choice}'
            raise ScnetError(f'{what} names GPU {index}, but PyTorch sees {count} GPU{"s" if count != 1 else ""} here '
                             f'(0 to {count - 1}); start at most {count} processes a node (torchrun '
                             '--nproc_per_node), or check CUDA_VISIBLE_DEVICES')
        return torch.device('cuda', index)
    return torch.device('cpu')


class LaunchError(ScnetError):
    """The torchrun variables of the environment do not describe a process of a group."""


def _launch_variables() -> tuple:
    """``(rank, world_size, local_rank)`` from the environment; a ``LaunchError`` for values that are not
    whole numbers or do not fit together. ``RANK`` without ``WORLD_SIZE`` (a variable left over in a shell or
    set by another tool) used to make a lone process rank 1 of 1: not process 0, so it trained and wrote
    nothing, and exited with success."""
    values = {}
    for name in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK'):
        text = os.environ.get(name, '').strip()
        if text and not text.isdigit():
            raise LaunchError(f'the environment has {name}={os.environ[name]!r}, not a whole number >= 0; start '
                              'the processes with torchrun (which sets it), or unset it for a single process')
        values[name] = int(text) if text else None
    rank, world_size, local_rank = values['RANK'], values['WORLD_SIZE'], values['LOCAL_RANK']
    if (rank is None) != (world_size is None):
        given, missing = ('RANK', 'WORLD_SIZE') if world_size is None else ('WORLD_SIZE', 'RANK')
        raise LaunchError(f'the environment has {given}={os.environ[given]} but no {missing}: start the processes '
                          f'with torchrun (which sets both), or unset {given} for a single process')
    rank, world_size = rank or 0, 1 if world_size is None else world_size
    if world_size < 1 or rank >= world_size:
        raise LaunchError(f'the environment has RANK={rank} and WORLD_SIZE={world_size}: a rank must be below '
                          'the number of processes; start the processes with torchrun (which sets both)')
    if world_size > 1:
        missing = [name for name in ('MASTER_ADDR', 'MASTER_PORT') if not os.environ.get(name)]
        if missing:
            raise LaunchError(f'the environment has WORLD_SIZE={world_size} but no {" or ".join(missing)}: the '
                              'processes cannot meet; start them with torchrun (which sets them)')
    return rank, world_size, local_rank or 0


def setup(device: str = 'auto') -> Context:
    """Join the process group if launched by torchrun (else a single process) and pick the device."""
    rank, world_size, local_rank = _launch_variables()
    dev = _device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if dev.type == 'cuda':
            torch.cuda.set_device(dev)
        _init_process_group('nccl' if dev.type == 'cuda' else 'gloo', rank, world_size)
    return Context(rank, world_size, local_rank, dev)


def _init_process_group(backend: str, rank: int, world_size: int) -> None:
    """Join the group; in a worker that torchrun's elastic agent restarted (``--max-restarts``) on a single
    node, under a key prefix of its attempt: the agent's store, which the workers share, still holds the
    previous attempt's process addresses, which the restarted processes would otherwise try to connect to.

    On several nodes the agents count their restarts apart (a node restarted for another node's failure
    does not count it), so no prefix can be agreed on from the environment: there the agents must not share
    their store with the workers (``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``, docs/training/data-at-scale.md),
    and each attempt's workers then meet at a store of their own.
    """
    attempt = int(os.environ.get('TORCHELASTIC_RESTART_COUNT', '0') or 0)
    shared_store = os.environ.get('TORCHELASTIC_USE_AGENT_STORE') == 'True'
    if not attempt or not shared_store or os.environ.get('LOCAL_WORLD_SIZE') != str(world_size):
        dist.init_process_group(backend=backend)
        return
    store, _, _ = next(dist.rendezvous('env://', rank=rank, world_size=world_size))
    dist.init_process_group(backend=backend, store=dist.PrefixStore(f'scnet_attempt_{attempt}', store), rank=rank,
                            world_size=world_size)


def teardown() -> None:
    """Leave the process group, if this process joined one (a no-op for a single process)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum of ``values`` over all processes (itself in a single process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        # NCCL reduces only GPU tensors: move there and back (gloo takes them where they are)
        device = torch.device('cuda', torch.cuda.current_device()) if dist.get_backend() == 'nccl' \
            else values.device
        reduced = values.to(device, copy=True)
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        return reduced.to(values.device)
    return values


def barrier() -> None:
    """Wait until every process of the group gets here (a no-op for a single process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Give every process process 0's buffers (BN running statistics), so all evaluate the same model."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)

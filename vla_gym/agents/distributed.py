"""Data-parallel training under ``torchrun``: who this process is, and the process group.

``torchrun --nproc-per-node N -m vla_gym.agents.bc --data ... --out ...`` starts N processes
with ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT``) in
their environment. :func:`distributed_context` reads them (one process when they are absent)
and :func:`init_process_group` joins the group: NCCL on CUDA (one GPU per process, by local
rank), gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in a data-parallel run (rank 0 of 1 without ``torchrun``)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size or self.local_rank < 0:
            raise ValueError(
                f"inconsistent torchrun environment: RANK={self.rank}, WORLD_SIZE={self.world_size}, "
                f"LOCAL_RANK={self.local_rank} (need 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0)"
            )

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, logs and TensorBoard."""
        return self.rank == 0


def distributed_context() -> DistributedContext:
    """The context ``torchrun`` set in the environment; a single process when it set none."""
    values = {name: os.environ.get(name) for name in TORCHRUN_VARIABLES}
    if values["WORLD_SIZE"] is None:
        return DistributedContext()
    try:
        rank, world, local = (int(values[n] if values[n] is not None else 0) for n in TORCHRUN_VARIABLES)
    except ValueError:
        raise ValueError(f"torchrun variables must be integers, got {values}") from None
    return DistributedContext(rank, world, local)


def device_for(context: DistributedContext, device: torch.device) -> torch.device:
    """One GPU per process: ``cuda:<local rank>`` in a CUDA run, the device as given otherwise."""
    if context.enabled and device.type == "cuda":
        if context.local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK {context.local_rank} has no GPU: this node has {torch.cuda.device_count()}; "
                "start at most that many processes per node (torchrun --nproc-per-node)"
            )
        return torch.device("cuda", context.local_rank)
    return device


def init_process_group(context: DistributedContext, device: torch.device) -> bool:
    """Join the process group (NCCL on CUDA, gloo on CPU) unless one exists or the run has
    one process; True if this call created it (and so should destroy it)."""
    if not context.enabled or dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=context.rank,
                            world_size=context.world_size)
    return True


def barrier(context: DistributedContext) -> None:
    if context.enabled:
        dist.barrier()


def mean_over_ranks(context: DistributedContext, values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Each value averaged over the processes (the same keys on every rank)."""
    if not context.enabled or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return {k: float(v) / context.world_size for k, v in zip(keys, tensor.tolist())}

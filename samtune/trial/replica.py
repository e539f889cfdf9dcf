"""This process's place in a data-parallel trial, and the few collectives a trial needs.

A trial runs on ``world`` workers (Ray Train starts them and the process group); the
worker of rank r trains on share r of every global batch, which its loader yields.  On
one worker (the default,
:data:`SINGLE`) every method is the identity and nothing touches ``torch.distributed``,
so single-process trials run exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Replica:
    rank: int = 0
    world: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank must be in [0, world={self.world}), got {self.rank}")

    @classmethod
    def current(cls) -> Replica:
        """The replica of the initialized default process group (one worker if none)."""
        if not (dist.is_available() and dist.is_initialized()):
            return SINGLE
        return cls(dist.get_rank(), dist.get_world_size())

    @property
    def is_main(self) -> bool:
        """Rank 0 records the trial (MLflow run, checkpoints, sharpness)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over workers of a few numbers (one collective)."""
        if not self.distributed:
            return list(values)
        # NCCL reduces only tensors on the GPU; gloo, those on the CPU
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def gather(self, value: Any) -> list[Any]:
        """Every worker's ``value``, in rank order, on every worker."""
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    @torch.no_grad()
    def align_buffers(self, model: nn.Module) -> None:
        """Give every worker rank 0's buffers (BatchNorm statistics, which each worker
        updates from its own share), so that all evaluate and save the same model."""
        if not self.distributed:
            return
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


SINGLE = Replica()

"""Processes and devices: one process by default, ``torch.distributed`` when launched by torchrun.

torchrun sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
with ``WORLD_SIZE > 1`` every process joins a process group (``nccl`` on GPUs, ``gloo`` on CPU)
and uses GPU ``LOCAL_RANK``. Launch settings that cannot work raise ``LaunchError`` naming the
variable or option at fault.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .. import devices
from ..errors import LaunchError

_TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class Distributed:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def any_flag(self, *flags: bool) -> list[bool]:
        """Element-wise OR of boolean flags over all ranks (one small all-reduce)."""
        values = torch.tensor([float(f) for f in flags], device=self.device)
        if self.enabled:
            dist.all_reduce(values, op=dist.ReduceOp.MAX)
        return [bool(v) for v in values.tolist()]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (a picklable value), in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def resolve_device(name: str, local_rank: int = 0, distributed: bool = False) -> torch.device:
    """:func:`glide.devices.resolve_device`, with its errors as ``LaunchError``."""
    try:
        return devices.resolve_device(name, local_rank=local_rank, distributed=distributed)
    except ValueError as e:
        raise LaunchError(str(e)) from None


def setup(device_name: str) -> Distributed:
    """Join the torchrun process group if there is one; pick this process's device."""
    if dist.is_available() and dist.is_initialized():  # the caller set up the group itself
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", rank % max(1, torch.cuda.device_count() or 1)))
        return Distributed(rank, local_rank, world, resolve_device(device_name, local_rank, world > 1))
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise LaunchError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None
    if world <= 1:
        return Distributed(0, 0, 1, resolve_device(device_name))
    missing = [name for name in _TORCHRUN_VARS if name not in os.environ]
    if missing:
        raise LaunchError(f"WORLD_SIZE={world} is set but {', '.join(missing)} is not: launch several processes with "
                          f"torchrun (python -m torch.distributed.run --nproc_per_node N ...), or unset WORLD_SIZE")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if not 0 <= rank < world:
        raise LaunchError(f"RANK={rank} is outside 0..WORLD_SIZE-1 ({world - 1})")
    device = resolve_device(device_name, local_rank, distributed=True)
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {"timeout": datetime.timedelta(minutes=30)}
    if device.type == "cuda":
        kwargs["device_id"] = device
    dist.init_process_group(backend, rank=rank, world_size=world, **kwargs)
    return Distributed(rank, local_rank, world, device, owns_group=True)

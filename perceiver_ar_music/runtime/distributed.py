"""Process-group setup for DistributedDataParallel under ``torchrun`` (NCCL on CUDA, gloo on CPU).

A plain ``python`` / ``perceiver-music`` process is a world of one: nothing is initialised and
every helper here is a no-op, so the training loop reads the same either way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist

from perceiver_ar_music.runtime.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def from_environment() -> DistInfo:
    """Rank, world size and local rank from torchrun's environment variables (defaults: 0, 1, 0)."""
    try:
        return DistInfo(
            rank=int(os.environ.get("RANK", 0)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        )
    except ValueError:
        raise UserError("RANK, WORLD_SIZE and LOCAL_RANK must be integers") from None


def init_process_group(info: DistInfo, device: torch.device) -> None:
    """Join the job's process group (NCCL for CUDA devices, gloo otherwise) when world size > 1."""
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size, **kwargs)


def destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all processes in place (no-op alone) and return it."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_process(flag: bool, device: torch.device) -> bool:
    """Whether `flag` is true on any process (so that every process takes the same branch)."""
    if not dist.is_initialized():
        return flag
    return bool(all_reduce_sum(torch.tensor([float(flag)], device=device)).item() > 0)


def gather_objects(obj: T) -> list[T]:
    """Every process's `obj`, in rank order (a list of one when alone)."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def run_on_main(info: DistInfo, fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only and hand its result (or its UserError) to every process."""
    if not info.enabled:
        return fn()
    payload: list[Any] = [None]
    if info.is_main:
        try:
            payload[0] = ("ok", fn())
        except UserError as exc:
            payload[0] = ("error", str(exc))
            dist.broadcast_object_list(payload, src=0)
            raise
    dist.broadcast_object_list(payload, src=0)
    status, value = payload[0]
    if status == "error":
        raise UserError(value)
    return value

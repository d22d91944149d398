"""Runtime facts of a distributed job (never part of the config) and process-group set-up."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist


@dataclass(frozen=True)
class DistEnv:
    """Who this process is in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1  # ranks on this node

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, metrics and summaries."""
        return self.rank == 0


def from_environment() -> DistEnv:
    """torchrun's RANK/WORLD_SIZE/LOCAL_RANK, else SLURM's task ids, else a single process."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(
            int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)), int(env.get("LOCAL_WORLD_SIZE", 1))
        )
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return DistEnv(
            int(env["SLURM_PROCID"]),
            int(env["SLURM_NTASKS"]),
            int(env.get("SLURM_LOCALID", 0)),
            int(env.get("SLURM_NTASKS_PER_NODE", 1)),
        )
    return DistEnv()


def init(env: DistEnv, device: torch.device) -> None:
    """Join the process group (NCCL on CUDA, gloo otherwise) when there is more than one process."""
    if env.world_size == 1 or torch_dist.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch_dist.init_process_group(
        backend, rank=env.rank, world_size=env.world_size, device_id=device if device.type == "cuda" else None
    )


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum `values` over all processes (identity when not distributed)."""
    if not torch_dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch_dist.all_reduce(t)
    return t.tolist()


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP syncs gradients, so parameters agree; each rank's running statistics, though, come from its
    own last batch. Before evaluating, every rank takes rank 0's: the model that rank 0 saves."""
    if torch_dist.is_initialized():
        for buffer in model.buffers():
            torch_dist.broadcast(buffer.data, src=0)


def barrier() -> None:
    """Wait for every process (no-op when not distributed)."""
    if torch_dist.is_initialized():
        torch_dist.barrier()


def shutdown() -> None:
    """Leave the process group."""
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def cuda_device(local_rank: int) -> torch.device:
    """This process's GPU (one per local rank), made current."""
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    return device

"""Devices and torch.distributed: which device this process trains on."""

from __future__ import annotations

import gc
import os

import torch
import torch.distributed as dist


def setup_distributed(device_cfg: str) -> tuple[int, int, int]:
    """Initialise torch.distributed when launched by torchrun (``WORLD_SIZE`` > 1):
    NCCL on CUDA, gloo on CPU. Returns ``(rank, world_size, local_rank)``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_cfg in ("auto", "cuda")
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), local_rank


def teardown_distributed(finished: bool) -> None:
    """Leave the process group; a no-op without one. Ranks that finished wait for each
    other first (rank 0 validates, refits and saves after the last step), and the DDP
    wrapper's reference cycles are collected before the group goes, so that no gloo
    thread outlives its group into interpreter exit (seen once as a SIGABRT, "terminate
    called without an active exception", on the rank that left first)."""
    if not dist.is_initialized():
        return
    gc.collect()
    if finished:
        dist.barrier()
    dist.destroy_process_group()


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA (this process's local rank) when available, else CPU; ``cpu``,
    ``cuda``, ``cuda:<i>``. A CUDA device is also made the current one, so that Triton
    kernels (which launch on the current device) run where the tensors are."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device=cuda but CUDA is not available; use device=auto or cpu")
        name = f"cuda:{local_rank}"
    if name != "cpu" and not name.startswith("cuda:"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:<i>, got {name!r}")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={name} but CUDA is not available; use device=auto or cpu")
        torch.cuda.set_device(device)
    return device

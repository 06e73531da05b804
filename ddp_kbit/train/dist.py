"""The rank's process group and collectives, through ``ignite.distributed``.

``init_distributed`` reads what torchrun / TorchDistributor put in the
environment; ``teardown`` destroys the process group on every exit path, so a
failed rank never leaves its peers waiting in a collective.
"""
from __future__ import annotations

import os
from datetime import timedelta

import ignite.distributed as idist
import torch
import torch.distributed as dist


def init_distributed(use_cuda: bool, timeout_s: float = 180.0) -> tuple[int, int, torch.device]:
    """(rank, world size, device); every collective of the group gives up after
    ``timeout_s``, so a rank whose peer died never waits longer."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if use_cuda:
        device = torch.device("cuda", gpu_assignment(os.environ, torch.cuda.device_count())["device_index"])
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(cpu_threads(world))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    return rank, world, device


def gpu_assignment(env, device_count: int) -> dict:
    """Which GPU a rank takes (pure: no CUDA call). Spark gives each barrier task its
    GPU address(es) and TorchDistributor exports them as CUDA_VISIBLE_DEVICES, so
    device index ``LOCAL_RANK % device_count`` of the visible ones is the task's own
    address; in local mode the visible list holds one address per local rank."""
    local_rank = int(env.get("LOCAL_RANK", 0))
    visible = [v for v in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    count = device_count or len(visible)
    index = local_rank % count if count else 0
    return {"local_rank": local_rank, "device_index": index, "visible": visible,
            "address": visible[index] if index < len(visible) else str(index)}


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def cpu_threads(world: int) -> int:
    """Threads for this rank's CPU ops. Spark hands each task its CPU share as
    OMP_NUM_THREADS (spark.task.cpus); without it, split this host's CPUs among
    the local ranks. In barrier mode LOCAL_WORLD_SIZE is 1 per task even when
    tasks share a host, so it alone would oversubscribe (measured: half speed)."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // int(os.environ.get("LOCAL_WORLD_SIZE", world)))


def gather(obj) -> list:
    """Every rank's ``obj``, in rank order (picklable objects)."""
    return list(idist.all_gather(obj)) if idist.get_world_size() > 1 else [obj]


def all_sum(values: list[float], device: torch.device) -> list[float]:
    return idist.all_reduce(torch.tensor(values, dtype=torch.float64, device=device)).tolist()


def broadcast(obj):
    """Rank 0's ``obj`` on every rank (picklable objects)."""
    if idist.get_world_size() <= 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]

"""One rank process's setup, for every rank function (training and the study's):
process group, device, threads, logging; and where the rank runs."""
from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

import torch

from ddp_kbit import logs
from ddp_kbit.errors import UserError
from ddp_kbit.train import dist

log = logging.getLogger("ddp_kbit.train")


def start_rank(use_gpu: bool, collective_timeout_s: float, log_level: str, secrets=()) -> tuple[int, int, torch.device]:
    """(rank, world size, device) of this process, with its logging set up."""
    rank = int(os.environ.get("RANK", 0))
    if use_gpu and not torch.cuda.is_available():
        raise UserError(f"--gpu, but rank {rank} on {socket.gethostname()} sees no CUDA device "
                        f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); it would train on the "
                        "CPU: check the GPU scheduling (spark_conf/gpu.conf, the discovery script) or leave --gpu out")
    rank, world, device = dist.init_distributed(use_gpu, collective_timeout_s)
    # forced: a Spark python worker may already have configured logging (lines would repeat)
    logs.configure(log_level, f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s", secrets=tuple(secrets))
    # ignite logs every exception it re-raises; the driver's one line says it already
    logging.getLogger("ignite.engine.engine.Engine").setLevel(logging.CRITICAL)
    log.info("rank %d/%d on %s: %d torch threads, cpus %s, OMP_NUM_THREADS=%s", rank, world, device,
             torch.get_num_threads(), sorted(os.sched_getaffinity(0)), os.environ.get("OMP_NUM_THREADS"))
    return rank, world, device


def placement(rank: int) -> dict:
    """Where this rank runs. On a Spark standalone worker an executor's working
    directory is <work dir>/<app id>/<executor id>; elsewhere it is the driver's."""
    cwd = Path.cwd()
    executor = cwd.name if cwd.parent.name.startswith("app-") else os.environ.get("SPARK_EXECUTOR_ID", "driver")
    return {"rank": rank, "host": socket.gethostname(), "pid": os.getpid(), "executor": executor,
            "started_at": time.time()}

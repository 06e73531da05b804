"""Atomic checkpoints (temp file + rename), loaded with ``weights_only=True``.

A checkpoint holds model, optimizer, scheduler and scaler state, the epoch, the
step inside it, the epoch's offset ranges, every rank's offsets of records that
already went into an optimizer step, and the report so far: enough to resume
with exact epochs, even on a different number of processes.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch

NAME = re.compile(r"^ckpt-e(\d+)-s(\d+)\.pt$")


def path_for(directory: str | Path, epoch: int, global_step: int) -> Path:
    return Path(directory) / f"ckpt-e{epoch:04d}-s{global_step:09d}.pt"


def save(directory: str | Path, state: dict, keep: int = 3) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = path_for(directory, state["epoch"], state["global_step"])
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    torch.save(state, tmp)
    with open(tmp, "rb") as fh:  # on disk before the rename makes it visible
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    for old in list_checkpoints(directory)[:-keep] if keep else []:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(tuple(int(g) for g in m.groups()), p) for p in directory.iterdir() if (m := NAME.match(p.name))]
    return [p for _, p in sorted(found, key=lambda kv: (kv[0][1], kv[0][0]))]


def latest(directory: str | Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def load(path: str | Path) -> dict:
    # weights_only: a checkpoint can hold tensors and plain containers, never code.
    return torch.load(path, map_location="cpu", weights_only=True)

"""Checkpoints: ignite's ``Checkpoint`` handler writing through ``DiskSaver(atomic=True)``
(plus an fsync, so a crash right after the rename cannot leave an empty file),
keeping the newest few, named by global step; loaded with ``weights_only=True``.

A checkpoint holds model, optimizer, scheduler and scaler state and the run's
:class:`~ddp_kbit.train.records.RunProgress`: enough to resume with exact epochs,
even on a different number of processes. Nothing is ever unpickled from it.
"""
from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from ignite.handlers import Checkpoint, DiskSaver

from ddp_kbit.errors import CheckpointError, first_line

PREFIX = "ckpt"
NAME = re.compile(rf"^{PREFIX}-s(\d+)\.pt$")


def _save_durably(obj, fh, **kwargs) -> None:
    torch.save(obj, fh, **kwargs)
    fh.flush()
    os.fsync(fh.fileno())


class _DurableDiskSaver(DiskSaver):
    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        import ignite.distributed as idist

        if self.save_on_rank == idist.get_rank():
            self._save_func(checkpoint, self.dirname / filename, _save_durably)


def checkpointer(directory: str | Path, to_save: Mapping, keep: int) -> Checkpoint:
    """Call it with the trainer engine (``engine.tally.global_step`` names the file);
    it already knows the checkpoints an earlier attempt left in ``directory``, so
    only the newest ``keep`` stay however often the run restarts."""
    handler = Checkpoint(to_save, _DurableDiskSaver(directory, atomic=True, require_empty=False),
                         filename_prefix=PREFIX, filename_pattern="{filename_prefix}-s{global_step:09d}.{ext}",
                         n_saved=keep, global_step_transform=lambda engine, _: engine.tally.global_step)
    handler.load_state_dict({"_saved": [(step, p.name) for step, p in _found(directory)]})
    return handler


def _found(directory: str | Path) -> list[tuple[int, Path]]:
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in directory.iterdir() if (m := NAME.match(p.name)))


def latest(directory: str | Path) -> Path | None:
    found = _found(directory)
    return found[-1][1] if found else None


def load(path: str | Path) -> dict:
    """The checkpoint's contents, or one clear line naming the file."""
    try:
        # weights_only: a checkpoint can hold tensors and plain containers, never code.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        first = first_line(exc, 200)
        if "weights_only" in str(exc):
            first = "it holds objects other than tensors and plain data (refused: nothing is unpickled)"
        raise CheckpointError(f"checkpoint {path} is unreadable: {first}") from None
    if not isinstance(state, dict) or "run" not in state:
        raise CheckpointError(f"checkpoint {path} was not written by ddp_kbit (no run state)")
    return state


def restore(path: str | Path, to_load: Mapping) -> None:
    """Load every object of ``to_load`` from the checkpoint at ``path``."""
    state = load(path)
    try:
        Checkpoint.load_objects(to_load, state)
    except CheckpointError as exc:
        raise CheckpointError(f"checkpoint {path}: {exc}") from None
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit this run: {first_line(exc, 300)}") from None

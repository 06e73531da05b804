"""Checkpoints: ignite's ``Checkpoint`` handler writing through ``DiskSaver(atomic=True)``
(plus an fsync, so a crash right after the rename cannot leave an empty file),
keeping the newest few, named by global step; loaded with ``weights_only=True``. A
full disk is one line naming the directory and the size a checkpoint needs (the
newest complete checkpoint stays the newest); a resume skips unreadable (truncated)
checkpoints for the newest readable one.

A checkpoint holds model, optimizer, scheduler and scaler state and the run's
:class:`~ddp_kbit.train.records.RunProgress`: enough to resume with exact epochs,
even on a different number of processes. Nothing is ever unpickled from it.
"""
from __future__ import annotations

import errno
import io
import logging
import os
import pickle
import re
import shutil
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from ignite.handlers import Checkpoint, DiskSaver

from ddp_kbit.errors import CheckpointError, first_line

log = logging.getLogger(__name__)
PREFIX = "ckpt"
NAME = re.compile(rf"^{PREFIX}-s(\d+)\.pt$")


MARGIN = 1 << 20   # free bytes a checkpoint leaves (a full file system misbehaves)


class DiskFullError(CheckpointError):
    """No room for a checkpoint: no restart can help."""


def serialize(obj) -> memoryview:
    """The checkpoint's bytes, made before anything touches the disk: their size is
    known, and a full disk cannot leave half a file (memory for one more copy of the
    state, briefly)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getbuffer()


def check_room(directory: Path, size: int, free: Callable[[Path], int] | None = None) -> None:
    free_bytes = (free or (lambda d: shutil.disk_usage(d).free))(directory)
    if free_bytes < size + MARGIN:
        raise DiskFullError(disk_full(directory, size, free_bytes))


def disk_full(directory: Path, size: int, free_bytes: int | None = None) -> str:
    newest = latest(directory)
    have = f", {free_bytes / 2**20:.1f} MiB free" if free_bytes is not None else ""
    return (f"checkpoint directory {directory} is full: a checkpoint needs {size / 2**20:.1f} MiB{have}; the newest "
            f"complete checkpoint is {newest.name if newest else 'none'} (free space, or --checkpoint-dir elsewhere)")


class _DurableDiskSaver(DiskSaver):
    """ignite's atomic DiskSaver, writing bytes serialised first (size known: a full
    disk is one clear error, before a byte is written), fsynced before the rename."""

    free: Callable[[Path], int] | None = None   # tests: a file system's free bytes

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        import ignite.distributed as idist

        if self.save_on_rank != idist.get_rank():
            return
        data = serialize(checkpoint)
        check_room(self.dirname, len(data), self.free)
        try:
            self._save_func(data, self.dirname / filename, _write_durably)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):   # filled up meanwhile
                raise DiskFullError(disk_full(self.dirname, len(data))) from None
            raise CheckpointError(f"cannot write a checkpoint in {self.dirname}: {exc.strerror}") from None


def _write_durably(data: memoryview, fh) -> None:
    fh.write(data)
    fh.flush()
    os.fsync(fh.fileno())


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


def latest_readable(directory: str | Path) -> Path | None:
    """The newest checkpoint that loads (a node that lost power mid-copy leaves a
    truncated newest one: each unreadable one is skipped with a warning naming it).
    None when there is none; one line when there are some but none loads."""
    found = _found(directory)
    bad: dict[str, str] = {}
    for _, path in reversed(found):
        try:
            load(path)
        except CheckpointError as exc:
            log.warning("skipping %s", exc)
            bad[path.name] = str(exc).removeprefix(f"checkpoint {path} ")
            continue
        if bad:
            log.warning("resuming from %s, the newest readable checkpoint (unreadable: %s)", path.name,
                        ", ".join(bad))
        return path
    if bad:
        why = "; ".join(f"{name} {reason}" for name, reason in bad.items())
        raise CheckpointError(f"no checkpoint in {directory} is readable: {why}; start without --resume or with "
                              "another --checkpoint-dir")
    return None


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

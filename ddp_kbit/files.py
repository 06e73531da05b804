"""Files a run leaves behind: the run directory and atomic JSON reports."""
from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path


def make_run_dir(run_dir: str | Path | None, base: str | Path = "runs") -> Path:
    """The run's directory, created, as an absolute path: ranks on Spark executors
    start in their own working directories, so a relative path would point elsewhere."""
    path = Path(run_dir) if run_dir else Path(base) / datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    path = path.expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: str | Path, obj) -> Path:
    """Atomic and durable: a reader never sees half a report, a crash never leaves one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(json.dumps(obj, indent=2, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path

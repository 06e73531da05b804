"""A graceful stop, in every mode: a scheduler's SIGTERM (Kubernetes, YARN, Slurm
preempt with it), SIGINT, or the stop file the driver writes when it gets one of
those (``<checkpoint dir>/stop``, holding the signal's name; a user may also create
it). The ranks agree through one collective every few steps, finish the step,
checkpoint, and return; a second signal to a rank stops it at once.

SIGTERM means only this. (torchrun also stops the surviving ranks with SIGTERM when
one dies: they then try to stop gracefully, their next collective fails on the dead
peer, and the driver names the rank that failed first, as before.)
"""
from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path

from ignite.engine import Engine, Events

from ddp_kbit.train import dist
from ddp_kbit.train.rundir import stop_file

CHECK_EVERY = 10   # steps between the ranks' agreements (one tiny all-reduce each)


class StopRequest:
    """What asked this rank to stop, if anything; ``agreed`` once the ranks stop together."""

    def __init__(self, checkpoint_dir: str | Path):
        self.file = stop_file(checkpoint_dir)
        self.signal: str | None = None
        self.agreed: str | None = None    # why the world stops: the first rank's reason

    def install(self) -> StopRequest:
        """SIGTERM and SIGINT handlers of this process (the main thread's only)."""
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                signal.signal(s, self._on_signal)
        return self

    def _on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal is not None:
            raise KeyboardInterrupt(f"stopped at once by a second signal ({name})")
        self.signal = name

    @property
    def reason(self) -> str | None:
        """This rank's reason to stop: its own signal, or the stop file's (the driver's signal)."""
        if self.signal:
            return self.signal
        with contextlib.suppress(OSError):
            if self.file.exists():
                return self.file.read_text().strip() or "the stop file"
        return None

    def check(self, device) -> bool:
        """A collective: every rank learns whether any rank was asked to stop."""
        if self.agreed:
            return True
        mine = self.reason
        if dist.all_sum([float(mine is not None)], device)[0] > 0:
            self.agreed = next(r for r in dist.gather(mine) if r)
        return self.agreed is not None

    def attach(self, trainer: Engine, device, every: int = CHECK_EVERY) -> None:
        """End the pass after the step in which the ranks agree to stop."""
        @trainer.on(Events.ITERATION_COMPLETED(every=every))
        def _check(engine):
            if self.check(device):
                engine.terminate()

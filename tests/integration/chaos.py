"""Test-only fault injection, installed the way users install any ignite handler:
``--handler chaos:crash_at_step`` (a Python error) or ``--handler chaos:kill_at_step``
(SIGKILL, no chance to say anything) with this folder on PYTHONPATH, the step in
``DDP_KBIT_CHAOS_STEP`` and the rank in ``DDP_KBIT_CHAOS_RANK`` (default 0). Fires
once per checkpoint directory (a marker file), so a restarted or resumed run goes on."""
import os
import signal
from pathlib import Path

from ignite.engine import Events

HERE = str(Path(__file__).resolve().parent)


def env(step: int, rank: int = 0) -> dict:
    """Environment for a training subprocess whose chaos handler fires at global ``step`` on ``rank``."""
    path = os.pathsep.join(p for p in (HERE, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "DDP_KBIT_CHAOS_STEP": str(step), "DDP_KBIT_CHAOS_RANK": str(rank)}


def _at_step(trainer, ctx, act) -> None:
    step, rank = int(os.environ["DDP_KBIT_CHAOS_STEP"]), int(os.environ.get("DDP_KBIT_CHAOS_RANK", "0"))
    marker = Path(ctx.checkpoint_dir) / ".chaos-fired"
    if ctx.rank != rank:
        return

    @trainer.on(Events.ITERATION_COMPLETED)
    def _fire(engine):
        if engine.tally.global_step == step and not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(str(step))
            act(step)


def _raise(step):
    raise RuntimeError(f"injected failure at step {step}")


def _kill(step):
    os.kill(os.getpid(), signal.SIGKILL)


def crash_at_step(trainer, ctx):
    _at_step(trainer, ctx, _raise)


def kill_at_step(trainer, ctx):
    _at_step(trainer, ctx, _kill)

"""Test-only fault injection, installed the way users install any ignite handler:
``--handler chaos:crash_at_step`` with this folder on PYTHONPATH, and the step in
``DDP_KBIT_CHAOS_STEP``. Fires once per checkpoint directory (a marker file), so
the restarted or resumed run goes through."""
import os
from pathlib import Path

from ignite.engine import Events

HERE = str(Path(__file__).resolve().parent)


def env(step: int) -> dict:
    """Environment for a training subprocess that crashes rank 0 at global ``step``."""
    path = os.pathsep.join(p for p in (HERE, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "DDP_KBIT_CHAOS_STEP": str(step)}


def crash_at_step(trainer, ctx):
    step = int(os.environ["DDP_KBIT_CHAOS_STEP"])
    marker = Path(ctx.checkpoint_dir) / ".chaos-fired"
    if ctx.rank != 0:
        return

    @trainer.on(Events.ITERATION_COMPLETED)
    def _fail(engine):
        if engine.state.global_step == step and not marker.exists():
            marker.write_text(str(step))
            raise RuntimeError(f"injected failure at step {step}")

"""Test-only fault injection, installed the way users install any ignite handler:
``--handler tests/integration/chaos.py:at_step`` (a file handler: it travels with the
run, so ranks on executors need nothing installed). What it does is read from
``<run dir>/chaos.json`` (written by :func:`arm`): at global ``step`` on ``rank``,
``raise`` (a Python error), ``kill`` (SIGKILL, no chance to say anything), ``stop``
(SIGSTOP: alive, never responding again) or ``sigterm`` (SIGTERM to the process whose
pid the test wrote in ``<run dir>/driver.pid``, as a scheduler preempting the run would). Fires once per checkpoint directory (a
marker file), so a restarted or resumed run goes on."""
import json
import os
import signal
from pathlib import Path

from ignite.engine import Events

HANDLER = f"{Path(__file__).resolve()}:at_step"


def arm(run_dir, step: int, action: str = "raise", rank: int = 0) -> str:
    """Write the chaos config into ``run_dir``; returns the --handler spec."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / "chaos.json").write_text(json.dumps({"step": step, "action": action, "rank": rank}))
    return HANDLER


def at_step(trainer, ctx):
    cfg = json.loads((Path(ctx.run_dir) / "chaos.json").read_text())
    marker = Path(ctx.checkpoint_dir) / ".chaos-fired"
    if ctx.rank != cfg["rank"]:
        return

    @trainer.on(Events.ITERATION_COMPLETED)
    def _fire(engine):
        if engine.tally.global_step == cfg["step"] and not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(str(cfg["step"]))
            if cfg["action"] == "raise":
                raise RuntimeError(f"injected failure at step {cfg['step']}")
            if cfg["action"] == "sigterm":
                os.kill(int((Path(ctx.run_dir) / "driver.pid").read_text()), signal.SIGTERM)
                return
            os.kill(os.getpid(), signal.SIGKILL if cfg["action"] == "kill" else signal.SIGSTOP)

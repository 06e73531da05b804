"""Cross-cutting features of the training loop, as ignite handlers: progress,
step checkpoints, and handlers a user names in ``[train] handlers`` / ``--handler``
(``module:function``, called as ``function(trainer, context)`` on every rank at
the start of every epoch — e.g. a metrics logger, or a fault injector in tests)."""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from ignite.engine import Engine, Events

from ddp_kbit.errors import ConfigError
from ddp_kbit.progress import Progress


@dataclass(frozen=True)
class HandlerContext:
    """What a user handler may want to know about where it runs."""

    rank: int
    world_size: int
    epoch: int                # 0-based
    run_dir: str
    checkpoint_dir: str


def attach_progress(trainer: Engine, desc: str) -> None:
    """A bar on a terminal, a log line every 10% elsewhere; loss every 10 steps."""
    state = {}

    @trainer.on(Events.EPOCH_STARTED)
    def _start(engine):
        state["bar"] = Progress(engine.state.epoch_length, desc, unit="step")

    @trainer.on(Events.ITERATION_COMPLETED)
    def _step(engine):
        it = engine.state.iteration
        state["bar"].update(1, **({"loss": float(engine.state.output.detach())} if it % 10 == 0 else {}))

    @trainer.on(Events.COMPLETED)
    def _close(engine):
        state.pop("bar").close()


def attach_every_steps(trainer: Engine, every: int, fn: Callable[[Engine], None]) -> None:
    """Run ``fn`` after every ``every``-th optimizer step (never between the
    batches of one gradient accumulation)."""

    def due(engine, _event_count) -> bool:
        st = engine.state
        return not st.pending and st.global_step % every == 0 and st.global_step != getattr(st, "last_due", None)

    @trainer.on(Events.ITERATION_COMPLETED(event_filter=due))
    def _run(engine):
        engine.state.last_due = engine.state.global_step
        fn(engine)


def load_handler(spec: str) -> Callable[[Engine, HandlerContext], None]:
    module, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"handler {spec}: cannot load it ({exc})") from None
    if not callable(fn):
        raise ConfigError(f"handler {spec} is not callable")
    return fn


def attach_user_handlers(trainer: Engine, specs: tuple[str, ...], ctx: HandlerContext) -> None:
    for spec in specs:
        load_handler(spec)(trainer, ctx)

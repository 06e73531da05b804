"""Cross-cutting features of the training loop, as ignite handlers: progress, a
heartbeat, step checkpoints, and handlers a user names in ``[train] handlers`` /
``--handler`` (``MODULE:FUNCTION`` or ``PATH.py:FUNCTION``, called as
``function(trainer, context)`` on every rank at the start of every epoch — e.g. a
metrics logger, or a fault injector in tests). ``trainer.tally`` holds the epoch's
counts (``global_step``, ``samples``)."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ignite.engine import Engine, Events

from ddp_kbit.progress import Progress
from ddp_kbit.train.usercode import CodeRef, load

log = logging.getLogger(__name__)


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

    last = {"step": None}

    def due(engine, _event_count) -> bool:
        t = engine.tally
        return not t.pending and t.global_step % every == 0 and t.global_step != last["step"]

    @trainer.on(Events.ITERATION_COMPLETED(event_filter=due))
    def _run(engine):
        last["step"] = engine.tally.global_step
        fn(engine)


def attach_heartbeat(trainer: Engine, beat: Callable[[], None], every_s: float = 1.0) -> None:
    """``beat()`` after a step, at most every ``every_s`` seconds: a sign of progress
    that tells a hung rank from a slow one."""
    state = {"at": 0.0}

    @trainer.on(Events.ITERATION_COMPLETED)
    def _beat(engine):
        now = time.monotonic()
        if now - state["at"] >= every_s:
            state["at"] = now
            beat()


def attach_user_handlers(trainer: Engine, refs: Sequence[CodeRef], ctx: HandlerContext) -> None:
    for ref in refs:
        load(ref, "--handler")(trainer, ctx)


class OffsetCommitter:
    """After each checkpoint (rank 0), the trained offsets committed to a consumer group,
    so lag tools (Burrow, kafka-consumer-groups) see the run. Never read back:
    checkpoints are the source of truth; a failed commit is a warning, not a failure."""

    def __init__(self, kcfg, group: str, topic: str):
        self.kcfg, self.group, self.topic = kcfg, group, topic
        self._consumer = None

    def attach(self, trainer: Engine, committed: Callable[[], dict]) -> None:
        from ddp_kbit.train.engines import RunEvents

        @trainer.on(RunEvents.CHECKPOINT_SAVED)
        def _commit(engine):
            offsets = committed()
            if offsets:
                self.commit(offsets)

    def commit(self, offsets: dict[int, int]) -> None:
        from ddp_kbit import kafka
        from ddp_kbit.errors import UserError

        try:
            if self._consumer is None:
                self._consumer = kafka.make_consumer(self.kcfg, group_id=self.group)
            self._consumer.commit({(self.topic, p): o for p, o in offsets.items()})
        except UserError as exc:   # lag monitoring is not worth a training run
            log.warning("could not commit trained offsets to group %s: %s", self.group, exc)

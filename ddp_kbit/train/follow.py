"""Continuous training on a live topic (``--follow``): windows planned like epochs.

Rank 0 watches the high watermarks (a fetch's, right on tansu too) and, once a
second, tells every rank through one collective to wait, to train a window, or to
stop, so no rank sits in a collective longer than that while the topic is quiet.
A window (:mod:`ddp_kbit.data.live_windows`) is planned like an epoch: exact, equal steps,
shuffled; each of its new records is trained once, rehearsal records are counted
apart. After each window: a checkpoint holding the offsets trained so far (and, mid
window, every ``--checkpoint-every`` steps, the open window itself, so a restart
trains exactly its rest), evaluation, prequential accuracy (each batch scored before
its step), lag, and a model snapshot. A stop (SIGTERM, ``<checkpoint dir>/stop``,
the driver's SIGINT or SIGTERM) ends after the current step with a checkpoint and a snapshot.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from ddp_kbit import kafka
from ddp_kbit.data.live_windows import Close, LiveWindow, decide, new_offsets, replay_sample
from ddp_kbit.data.plan import SEED_REPLAY, ConsumedRange, Slice, derive_seed
from ddp_kbit.files import write_json
from ddp_kbit.reports import WindowRecord
from ddp_kbit.train import dist
from ddp_kbit.train.records import EpochStats, absent_counts, distinct_bad

log = logging.getLogger("ddp_kbit.follow")


class Do(StrEnum):
    WAIT = "wait"
    WINDOW = "window"
    STOP = "stop"


class Why(StrEnum):
    SIGNAL = "signal"            # SIGTERM, SIGINT or the stop file
    MAX_WINDOWS = "max_windows"
    IDLE = "idle"                # --until-idle


@dataclass(frozen=True)
class Decision:
    """What rank 0 tells every rank to do now (one collective)."""

    do: Do
    why: Why | None = None
    by: str | None = None          # the signal, for Why.SIGNAL
    window: LiveWindow | None = None


@dataclass
class FollowState:
    """Where a followed topic stands, kept in every checkpoint (as plain data):
    partition -> first offset of the run and next offset to train, the window being
    trained (a restart trains exactly its rest), the last snapshot published."""

    start: dict[int, int]
    position: dict[int, int]
    open: LiveWindow | None = None
    published: dict | None = None
    seen_new: int = 0

    def to_dict(self) -> dict:
        return {"start": {str(p): o for p, o in self.start.items()},
                "position": {str(p): o for p, o in self.position.items()},
                "open": self.open.to_dict() if self.open else None, "published": self.published,
                "seen_new": self.seen_new}

    @classmethod
    def from_dict(cls, d: dict) -> FollowState:
        start = {int(p): o for p, o in d["start"].items()}
        return cls(start, {int(p): o for p, o in d.get("position", start).items()},
                   LiveWindow.from_dict(d["open"]) if d.get("open") else None, d.get("published"),
                   int(d.get("seen_new", 0)))


class Follower:
    def __init__(self, rt):
        self.rt, self.spec, self.cfg = rt, rt.spec, rt.spec.follow
        self.topic = self.spec.train_topic
        self.state = FollowState.from_dict(rt.run.follow) if rt.run.follow else \
            FollowState(dict(self.spec.follow_start), dict(self.spec.follow_start))
        self.keep()
        self.last_new_at = time.monotonic()
        self._watcher = None

    def keep(self) -> None:
        """The state into the run's progress, so the next checkpoint holds it."""
        self.rt.run.follow = self.state.to_dict()

    # ------------------------------------------------------------ the loop
    def run(self) -> dict:
        try:
            while not self.rt.stop.agreed:
                w = self.state.open or self.next_window()
                if w is None:
                    break
                self.state.open = w
                self.keep()
                self.train_window(w)
                if w.final:
                    break
        finally:
            if self._watcher is not None:
                self._watcher.close()
        return self.result()

    def next_window(self) -> LiveWindow | None:
        """Every rank waits here together: rank 0 decides once a second."""
        opened = time.monotonic()
        while True:
            decision: Decision = dist.broadcast(self._poll(opened) if self.rt.rank == 0 else None)
            if decision.do == Do.STOP:
                if decision.why == Why.SIGNAL:
                    self.rt.stop.agreed = decision.by
                return None
            if decision.do == Do.WINDOW:
                return decision.window
            time.sleep(1.0)

    def _poll(self, opened: float) -> Decision:
        cfg, st = self.cfg, self.state
        if self.rt.stop.reason:   # rank 0 decides for all: its signal, or the stop file
            return Decision(Do.STOP, Why.SIGNAL, self.rt.stop.reason)
        if cfg.max_windows is not None and len(self.rt.run.history) >= cfg.max_windows:
            return Decision(Do.STOP, Why.MAX_WINDOWS)
        high = self.highs()
        new = sum(max(0, high[p] - st.position[p]) for p in st.position)
        now = time.monotonic()
        if new > st.seen_new:
            self.last_new_at, st.seen_new = now, new
        what = decide(new, now - opened, now - self.last_new_at, cfg.window_records, cfg.window_seconds,
                      cfg.until_idle_s)
        if what == Close.STOP:
            return Decision(Do.STOP, Why.IDLE)
        if what == Close.WAIT:
            return Decision(Do.WAIT)
        index = len(self.rt.run.history)
        fresh = new_offsets(self.topic.topic, st.position, high, cfg.window_records)
        count = round(cfg.replay_fraction * sum(len(s) for s in fresh))
        replay = replay_sample(st.start, st.position, self.topic.topic, count,
                               seed=derive_seed(self.rt.cfg.seed, index, SEED_REPLAY), block=64)
        last = (cfg.max_windows is not None and index + 1 >= cfg.max_windows) or \
            (cfg.until_idle_s is not None and now - self.last_new_at >= cfg.until_idle_s)
        st.seen_new = 0
        return Decision(Do.WINDOW, window=LiveWindow(index, self.topic.topic, tuple(fresh), tuple(replay), high,
                                                     time.time(), last))

    def highs(self) -> dict[int, int]:
        """Each partition's high watermark now (a fetch's, right on tansu and Kafka)."""
        if self._watcher is None:
            self._watcher = kafka.make_consumer(self.spec.kafka, group_id="ddp_kbit.follow-watch")
        tps = [(self.topic.topic, p) for p in sorted(self.state.position)]
        return {p: hi for (_, p), (_, hi) in kafka.end_offsets(self._watcher, tps).items()}

    # ------------------------------------------------------------ one window
    def train_window(self, w: LiveWindow) -> None:
        rt, start = self.rt, dataclasses.replace(self.rt.run)
        ds = rt.dataset(self.topic, rt.cfg.batch_size, self.spec.data, slices=[*w.new, *w.replay],
                        new_from={s.partition: s.start for s in w.new})
        ds.resume(w.index, [c.slice for c in start.consumed])
        t_open = time.time()
        trainer, stats = rt.run_pass(w.index, ds, start, f"window {w.index + 1}")
        complete = ds.steps >= ds.plan.num_batches
        tally = trainer.tally
        correct, samples = dist.all_sum([float(tally.correct), tally.samples], rt.device)
        if rt.metrics is not None:
            rt.metrics.prequential.labels(str(rt.rank)).set(correct / max(samples, 1))
        ev = rt.evaluate() if self.spec.test_topic is not None else {"val_loss": None, "val_accuracy": None}
        rt.share_forwarded()
        record = None
        if complete:
            record = self.window_record(w, stats, start, ev, correct / max(samples, 1), t_open)
            for s in w.new:
                self.state.position[s.partition] = s.end
            self.state.open = None
            # the lag of a live topic: behind its high watermark, not what is left of the window
            rt.offsets = dataclasses.replace(rt.offsets, behind={int(p): n for p, n in
                                                                 record.lag["records_behind_at_end"].items()})
            if rt.rank == 0:
                log.info("window %d: %d new + %d replayed records, %.0f samples/s, prequential accuracy %.4f, "
                         "%s behind", w.index + 1, record.new_records, record.replayed_records,
                         record.samples_per_s, record.prequential_accuracy, record.lag["records_behind_at_end"])
        rt.final_eval = {"val_loss": ev["val_loss"], "val_accuracy": ev["val_accuracy"]}
        if not complete and rt.stop.agreed:
            rt.note_stop("window", w.index, trainer, start)
        if complete or rt.stop.agreed:   # before the checkpoint, so the checkpoint's lineage names the snapshot
            record = self.publish(w, record)
        if record is not None:
            rt.close_pass(record.to_dict())
        self.keep()
        rt.checkpoint(trainer)

    def window_record(self, w: LiveWindow, stats: EpochStats, start, ev: dict, preq: float,
                      t_open: float) -> WindowRecord:
        """The report's entry for one finished window; new and replayed ranges apart."""
        rt = self.rt
        boundary = {s.partition: s.start for s in w.new}
        bad_offsets = {(t, p, o) for t, p, o, _ in rt.run.bad_records}
        new, replayed = split_consumed(rt.run.consumed, boundary, bad_offsets)
        wall = stats.seconds / rt.world
        lag = dist.broadcast(self.lag(w) if rt.rank == 0 else None)
        window_bad = distinct_bad([b for b in rt.run.bad_records if b not in set(start.bad_records)])
        return WindowRecord(
            w.index + 1, w.records, sum(len(s) for s in w.replay), int(stats.samples), wall,
            stats.samples / max(wall, 1e-9), stats.wait_s / max(stats.seconds, 1e-9),
            stats.loss_sum / max(stats.samples, 1), preq, ev["val_accuracy"], ev["val_loss"], window_bad.count,
            **absent_counts(stats.absent), closed_at=w.closed_at, started_at=t_open, finished_at=time.time(), lag=lag,
            consumed=[c.to_dict() for c in sorted(new, key=lambda c: (c.partition, c.start))],
            replayed=[c.to_dict() for c in sorted(replayed, key=lambda c: (c.partition, c.start))])

    def lag(self, w: LiveWindow) -> dict:
        """Records behind the high watermark when the window closed and when it was
        trained, per partition, and how old the newest trained record is."""
        high = self.highs()
        ends = {s.partition: s.end for s in w.new}
        newest = None
        with kafka.make_consumer(self.spec.kafka, group_id="ddp_kbit.follow-watch") as consumer:
            tps = [(self.topic.topic, p) for p in ends]
            recs = kafka.read_all(consumer, tps, starts={tp: ends[tp[1]] - 1 for tp in tps},
                                  ends={tp: ends[tp[1]] for tp in tps})
        stamps = [r.timestamp_ms for r in recs if r.timestamp_ms]
        if stamps:
            newest = max(stamps) / 1000
        pos = self.state.position
        return {"records_behind_at_start": {str(p): w.high[p] - pos.get(p, w.high[p]) for p in w.high},
                "records_behind_at_end": {str(p): high[p] - ends.get(p, pos.get(p, high[p])) for p in high},
                "seconds_behind": round(time.time() - newest, 3) if newest else None}

    # ------------------------------------------------------------ snapshots
    def publish(self, w: LiveWindow, record: WindowRecord | None) -> WindowRecord | None:
        """``model-<window>.pt`` (with its model card) and ``latest.json`` (atomic), and a
        record on ``--model-topic``; skipped when worse than the last one by more than
        the tolerance. Every rank decides alike (the metrics are the world's); rank 0
        writes. Returns the window's record, naming the snapshot when there is one."""
        cfg, rt = self.cfg, self.rt
        if not cfg.publish_model:
            return record
        metric = record.val_accuracy if record is not None else None
        metric = metric if metric is not None else (record.prequential_accuracy if record is not None else None)
        last = self.state.published
        if cfg.publish_tolerance is not None and last and metric is not None and last.get("metric") is not None \
                and metric < last["metric"] - cfg.publish_tolerance:
            if rt.rank == 0:
                log.info("window %d not published: %.4f is more than %.4f below %.4f", w.index + 1, metric,
                         cfg.publish_tolerance, last["metric"])
            return record
        out = Path(cfg.publish_model)
        path = out / f"model-{w.index + 1:06d}.pt"
        metrics = {k: getattr(record, k) if record is not None else None
                   for k in ("val_accuracy", "prequential_accuracy", "train_loss")}
        latest = {"window": w.index + 1, "path": str(path), "model": rt.spec.model_spec, "topic": self.topic.topic,
                  "offsets": {str(p): o for p, o in self.state.position.items()}, "complete": record is not None,
                  "metric": metric, "metrics": metrics}
        self.state.published = latest
        if rt.rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            rt.save_model(path)
            write_json(out / "latest.json", {**latest, "published_at": time.time()})
            if cfg.model_topic:
                with kafka.make_producer(self.spec.kafka) as producer:
                    producer.send(cfg.model_topic, json.dumps(latest).encode(), key=self.topic.topic.encode())
                    producer.flush(30)
        return dataclasses.replace(record, published=str(path)) if record is not None else None

    def result(self) -> dict:
        rt = self.rt
        out = rt.result()
        out["windows"], out["epochs"] = rt.run.history, []
        st = self.state.to_dict()
        out["follow"] = {"start": st["start"], "position": st["position"], "stopped": bool(rt.stop.agreed),
                         "published": st["published"]}
        if rt.rank == 0:
            write_json(Path(self.spec.run_dir) / "follow-result.json", out)
        return out


def split_consumed(consumed: list[ConsumedRange], boundary: dict[int, int], bad: set) -> tuple[list, list]:
    """Ranges at or after each partition's window start are new, before it replayed;
    a range across the boundary is cut there, its good count recounted."""
    new, old = [], []
    for c in consumed:
        b = boundary.get(c.partition)
        if b is None or c.end <= b:
            old.append(c)
        elif c.start >= b:
            new.append(c)
        else:
            for part, into in ((Slice(c.topic, c.partition, c.start, b), old), (Slice(c.topic, c.partition, b, c.end),
                                                                                new)):
                lost = sum(1 for o in range(part.start, part.end) if (c.topic, c.partition, o) in bad)
                into.append(ConsumedRange(c.topic, c.partition, part.start, part.end, len(part) - lost, c.rank))
    return new, old

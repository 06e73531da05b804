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
import os
import time
from pathlib import Path

import torch

from ddp_kbit import kafka
from ddp_kbit.data.live_windows import CLOSE, STOP, LiveWindow, decide, new_offsets, replay_sample
from ddp_kbit.data.plan import ConsumedRange, Slice
from ddp_kbit.files import write_json
from ddp_kbit.train import dist
from ddp_kbit.train.modelcard import card_path, digest
from ddp_kbit.train.records import EpochStats, absent_counts, distinct_bad

log = logging.getLogger("ddp_kbit.follow")


class Follower:
    def __init__(self, rt):
        self.rt, self.spec, self.cfg = rt, rt.spec, rt.spec.follow
        self.topic = self.spec.train_topic
        f = rt.run.follow
        f.setdefault("start", {str(p): o for p, o in self.spec.follow_start.items()})
        f.setdefault("position", dict(f["start"]))
        f.setdefault("open", None)
        f.setdefault("published", None)
        self.last_new_at = time.monotonic()
        self._watcher = None

    @property
    def position(self) -> dict[int, int]:
        return {int(p): o for p, o in self.rt.run.follow["position"].items()}

    # ------------------------------------------------------------ the loop
    def run(self) -> dict:
        f = self.rt.run.follow
        try:
            while not self.rt.stop.agreed:
                w = LiveWindow.from_dict(f["open"]) if f["open"] else self.next_window()
                if w is None:
                    break
                f["open"] = w.to_dict()
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
            decision = self._poll(opened) if self.rt.rank == 0 else None
            decision = dist.broadcast(decision)
            if decision["do"] == "stop":
                if decision.get("why") == "signal":
                    self.rt.stop.agreed = decision["by"]
                return None
            if decision["do"] == "window":
                return LiveWindow.from_dict(decision["window"])
            time.sleep(1.0)

    def _poll(self, opened: float) -> dict:
        cfg, f, pos = self.cfg, self.rt.run.follow, self.position
        if self.rt.stop.reason:   # rank 0 decides for all: its signal, or the stop file
            return {"do": "stop", "why": "signal", "by": self.rt.stop.reason}
        if cfg.max_windows is not None and len(self.rt.run.history) >= cfg.max_windows:
            return {"do": "stop", "why": "max_windows"}
        high = self.highs()
        new = sum(max(0, high[p] - pos[p]) for p in pos)
        now = time.monotonic()
        if new > f.get("seen_new", 0):
            self.last_new_at, f["seen_new"] = now, new
        what = decide(new, now - opened, now - self.last_new_at, cfg.window_records, cfg.window_seconds,
                      cfg.until_idle_s)
        if what == STOP:
            return {"do": "stop", "why": "idle"}
        if what != CLOSE:
            return {"do": "wait"}
        index = len(self.rt.run.history)
        fresh = new_offsets(self.topic.topic, pos, high, cfg.window_records)
        count = round(cfg.replay_fraction * sum(len(s) for s in fresh))
        replay = replay_sample({int(p): o for p, o in f["start"].items()}, pos, self.topic.topic, count,
                               seed=self.rt.cfg.seed * 7919 + index, block=64)
        last = (cfg.max_windows is not None and index + 1 >= cfg.max_windows) or \
            (cfg.until_idle_s is not None and now - self.last_new_at >= cfg.until_idle_s)
        f["seen_new"] = 0
        return {"do": "window", "window": LiveWindow(index, self.topic.topic, tuple(fresh), tuple(replay), high,
                                                     time.time(), last).to_dict()}

    def highs(self) -> dict[int, int]:
        """Each partition's high watermark now (a fetch's, right on tansu and Kafka)."""
        if self._watcher is None:
            self._watcher = kafka.make_consumer(self.spec.kafka, group_id="ddp_kbit.follow-watch")
        tps = [(self.topic.topic, p) for p in sorted(self.position)]
        return {p: hi for (_, p), (_, hi) in kafka.end_offsets(self._watcher, tps).items()}

    # ------------------------------------------------------------ one window
    def train_window(self, w: LiveWindow) -> None:
        rt, start = self.rt, dataclasses.replace(self.rt.run)
        ds = rt._kafka(self.topic, rt.cfg.batch_size, self.spec.data, slices=[*w.new, *w.replay])
        ds.replay_before = {s.partition: s.start for s in w.new}
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
        if complete:
            record = self.window_record(w, stats, start, ev, correct / max(samples, 1), t_open)
            f = rt.run.follow
            for s in w.new:
                f["position"][str(s.partition)] = s.end
            f["open"] = None
            rt.run.history = rt.run.history + [record]
            # the lag gauge of a live topic: behind its high watermark, not what is left of the window
            rt.lag = {int(p): n for p, n in record["lag"]["records_behind_at_end"].items()}
            rt.run.epoch, rt.run.consumed, rt.run.partial = len(rt.run.history), [], EpochStats()
            if rt.rank == 0:
                log.info("window %d: %d new + %d replayed records, %.0f samples/s, prequential accuracy %.4f, "
                         "%s behind", w.index + 1, record["new_records"], record["replayed_records"],
                         record["samples_per_s"], record["prequential_accuracy"],
                         record["lag"]["records_behind_at_end"])
        rt.final_eval = {"val_loss": ev["val_loss"], "val_accuracy": ev["val_accuracy"]}
        if not complete and rt.stop.agreed:
            rt.note_stop("window", w.index, trainer, start)
        if complete or rt.stop.agreed:   # before the checkpoint, so the checkpoint's lineage names the snapshot
            self.publish(w, rt.run.history[-1] if complete else None)
        rt.checkpoint(trainer)

    def window_record(self, w: LiveWindow, stats: EpochStats, start, ev: dict, preq: float, t_open: float) -> dict:
        """The report's entry for one finished window; new and replayed ranges apart."""
        rt = self.rt
        boundary = {s.partition: s.start for s in w.new}
        bad_offsets = {(t, p, o) for t, p, o, _ in rt.run.bad_records}
        new, replayed = split_consumed(rt.run.consumed, boundary, bad_offsets)
        wall = stats.seconds / rt.world
        lag = self.lag(w) if rt.rank == 0 else None
        lag = dist.broadcast(lag)
        window_bad = distinct_bad([b for b in rt.run.bad_records if b not in set(start.bad_records)])
        return {"window": w.index + 1, "new_records": w.records, "replayed_records": sum(len(s) for s in w.replay),
                "samples": int(stats.samples), "seconds": wall, "samples_per_s": stats.samples / max(wall, 1e-9),
                "data_wait_fraction": stats.wait_s / max(stats.seconds, 1e-9),
                "train_loss": stats.loss_sum / max(stats.samples, 1), "prequential_accuracy": preq,
                "val_accuracy": ev["val_accuracy"], "val_loss": ev["val_loss"], "bad_records": window_bad.count,
                **absent_counts(stats.absent), "closed_at": w.closed_at, "started_at": t_open,
                "finished_at": time.time(), "lag": lag,
                "consumed": [c.to_dict() for c in sorted(new, key=lambda c: (c.partition, c.start))],
                "replayed": [c.to_dict() for c in sorted(replayed, key=lambda c: (c.partition, c.start))]}

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
        pos_at_close = {int(p): o for p, o in self.rt.run.follow["position"].items()}
        return {"records_behind_at_start": {str(p): w.high[p] - pos_at_close.get(p, w.high[p]) for p in w.high},
                "records_behind_at_end": {str(p): high[p] - ends.get(p, pos_at_close.get(p, high[p])) for p in high},
                "seconds_behind": round(time.time() - newest, 3) if newest else None}

    # ------------------------------------------------------------ snapshots
    def publish(self, w: LiveWindow, record: dict | None) -> None:
        """``model-<window>.pt`` and ``latest.json`` (atomic), and a record on
        ``--model-topic``; skipped when worse than the last one by more than the
        tolerance. Every rank decides alike (the metrics are the world's); rank 0 writes."""
        cfg, rt = self.cfg, self.rt
        if not cfg.publish_model:
            return
        metric = (record or {}).get("val_accuracy")
        metric = metric if metric is not None else (record or {}).get("prequential_accuracy")
        last = rt.run.follow.get("published")
        if cfg.publish_tolerance is not None and last and metric is not None and last.get("metric") is not None \
                and metric < last["metric"] - cfg.publish_tolerance:
            if rt.rank == 0:
                log.info("window %d not published: %.4f is more than %.4f below %.4f", w.index + 1, metric,
                         cfg.publish_tolerance, last["metric"])
            return
        out = Path(cfg.publish_model)
        path = out / f"model-{w.index + 1:06d}.pt"
        latest = {"window": w.index + 1, "path": str(path), "model": rt.spec.model_spec, "topic": self.topic.topic,
                  "offsets": dict(rt.run.follow["position"]), "complete": record is not None, "metric": metric,
                  "metrics": {k: (record or {}).get(k) for k in ("val_accuracy", "prequential_accuracy",
                                                                 "train_loss")}}
        rt.run.follow["published"] = latest
        if record is not None:
            record["published"] = str(path)
        if rt.rank != 0:
            return
        out.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        state = getattr(rt.model, "module", rt.model).state_dict()
        torch.save(state, tmp)
        os.replace(tmp, path)
        write_json(card_path(path), {**rt.run.card, "digest": digest(state, rt.run.card)})
        write_json(out / "latest.json", {**latest, "published_at": time.time()})
        if cfg.model_topic:
            with kafka.make_producer(self.spec.kafka) as producer:
                producer.send(cfg.model_topic, json.dumps(latest).encode(), key=self.topic.topic.encode())
                producer.flush(30)

    def result(self) -> dict:
        rt = self.rt
        out = rt.result()
        out["windows"], out["epochs"] = rt.run.history, []
        out["follow"] = {"start": rt.run.follow["start"], "position": rt.run.follow["position"],
                         "stopped": bool(rt.stop.agreed), "published": rt.run.follow.get("published")}
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

"""Prometheus metrics of a rank (``--metrics-port P``), with ``prometheus_client``.

Each rank serves its own registry on port ``P + 1 + rank`` of its host (executors of
another host included: scrape them there, or let the driver's ``/metrics`` on ``P``
gather them, see :mod:`ddp_kbit.launch.metrics`); where it listens is written to
``<checkpoint dir>/metrics.rank<N>`` (shared storage on a cluster, like checkpoints).
Names follow Prometheus conventions: prefix ``ddp_kbit_``, base units, ``_total``
counters, ``_seconds`` histograms, labels of low cardinality (rank, topic, partition,
reason). Without ``--metrics-port`` nothing here runs: off costs nothing.
"""
from __future__ import annotations

import contextlib
import socket
import time

from ignite.engine import Events

from ddp_kbit.train import rundir

STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
WAIT_BUCKETS = (0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)


class RankMetrics:
    def __init__(self, port: int, rank: int, checkpoint_dir: str):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

        self.rank = str(rank)
        r = self.registry = CollectorRegistry()
        self.read = Counter("ddp_kbit_records_read", "Records read and decoded (read-ahead included)",
                            ["rank", "topic"], registry=r)
        self.trained = Counter("ddp_kbit_records_trained", "Good records that went into optimizer steps",
                               ["rank"], registry=r)
        self.bad = Counter("ddp_kbit_bad_records", "Bad records skipped, by reason", ["rank", "reason"], registry=r)
        self.dead = Counter("ddp_kbit_dead_lettered_records", "Bad records forwarded to the dead-letter topic",
                            ["rank"], registry=r)
        self.rate = Gauge("ddp_kbit_samples_per_second", "Training samples per second of this rank (last 10 steps)",
                          ["rank"], registry=r)
        self.step = Histogram("ddp_kbit_step_seconds", "Wall time of one training step, data wait included",
                              ["rank"], buckets=STEP_BUCKETS, registry=r)
        self.wait = Histogram("ddp_kbit_data_wait_seconds", "Time a step waited for its batch", ["rank"],
                              buckets=WAIT_BUCKETS, registry=r)
        self.loss = Gauge("ddp_kbit_loss", "Training loss of the last step", ["rank"], registry=r)
        self.epoch = Gauge("ddp_kbit_epoch", "Epoch (or window) being trained, from 1", ["rank"], registry=r)
        self.window = Gauge("ddp_kbit_window", "Window of --follow being trained, from 1", ["rank"], registry=r)
        self.accuracy = Gauge("ddp_kbit_eval_accuracy", "Accuracy of the last evaluation", ["rank"], registry=r)
        self.prequential = Gauge("ddp_kbit_prequential_accuracy", "Test-then-train accuracy of the last window",
                                 ["rank"], registry=r)
        self.lag = Gauge("ddp_kbit_consumer_lag_records", "Records not trained yet: the rest of the current "
                         "pass (epochs), or behind the high watermark after the last window (--follow)",
                         ["topic", "partition"], registry=r)
        self.port = port + 1 + rank
        self._server = start_http_server(self.port, registry=r)
        self._seen: dict = {}
        self._file = rundir.metrics_endpoint(checkpoint_dir, rank)
        with contextlib.suppress(OSError):
            self._file.write_text(f"{socket.gethostname()}:{self.port}")

    def attach(self, trainer, ds, topic: str, key: int, follow: bool) -> None:
        """Per step: step time, data wait, loss, samples, records read and bad (deltas of the stream's counts)."""
        (self.window if follow else self.epoch).labels(self.rank).set(key + 1)
        state = {"t": time.perf_counter(), "wait": ds.wait_seconds, "n": 0, "rate_t": time.perf_counter()}

        @trainer.on(Events.ITERATION_COMPLETED)
        def _step(engine):
            now, tally = time.perf_counter(), engine.tally
            self.step.labels(self.rank).observe(now - state["t"])
            wait = ds.wait_seconds
            self.wait.labels(self.rank).observe(max(0.0, wait - state["wait"]))
            state["t"], state["wait"] = now, wait
            self.loss.labels(self.rank).set(float(engine.state.output))
            self.trained.labels(self.rank).inc(len(engine.state.batch))
            if engine.state.iteration % 10 == 0:
                done = tally.samples - state["n"]
                self.rate.labels(self.rank).set(done / max(now - state["rate_t"], 1e-9))
                state["n"], state["rate_t"] = tally.samples, now
            self.stream_counts(ds, topic)

    def stream_counts(self, ds, topic: str) -> None:
        bad = ds.bad
        if bad is None:
            return
        key = id(bad)
        seen, by_reason, sent = self._seen.setdefault(key, [0, {}, 0])[0], self._seen[key][1], self._seen[key][2]
        if bad.seen > seen:
            self.read.labels(self.rank, topic).inc(bad.seen - seen)
        for reason, n in bad.by_reason.items():
            if n > by_reason.get(reason, 0):
                self.bad.labels(self.rank, reason).inc(n - by_reason.get(reason, 0))
        dead = ds.dead_lettered
        if dead > sent:
            self.dead.labels(self.rank).inc(dead - sent)
        self._seen[key] = [bad.seen, dict(bad.by_reason), dead]

    def attach_lag(self, trainer, topic: str, lag) -> None:
        """After each checkpoint: the records of ``topic`` not trained yet, per partition
        (``lag()``: what is left of the pass, or how far behind a live topic the run is)."""
        from ddp_kbit.train.engines import RunEvents

        @trainer.on(RunEvents.CHECKPOINT_SAVED)
        def _lag(engine):
            for p, n in lag().items():
                self.lag.labels(topic, str(p)).set(n)

    def close(self) -> None:
        """Leave the last values beside the endpoint file (the driver serves them once
        this rank is gone), then stop serving."""
        from prometheus_client import generate_latest

        with contextlib.suppress(OSError):
            rundir.last_values(self._file).write_bytes(generate_latest(self.registry))
        with contextlib.suppress(Exception):
            self._server[0].shutdown()

"""The driver's ``/metrics`` (``--metrics-port P``): its own series (restarts, the
attempt's world size) and every rank's, gathered at scrape time from the endpoints
the ranks wrote to ``<checkpoint dir>/metrics.rank<N>`` (each rank serves on
``P + 1 + rank`` of its host). One scrape target for a run wherever its ranks are;
a scrape of a rank that is gone (restarting) is skipped, not an error.

Prometheus scrape config: ``targets: ["<driver host>:P"]``, or the ranks directly
(``<executor host>:P+1+rank``) when the driver cannot reach the executors."""
from __future__ import annotations

import logging
import urllib.request
from pathlib import Path

from ddp_kbit.train import rundir

log = logging.getLogger(__name__)


class RankGatherer:
    """A prometheus_client collector of every rank's families, merged by name."""

    def __init__(self, checkpoint_dir: str):
        self.dir = Path(checkpoint_dir)

    def collect(self):
        from prometheus_client.parser import text_string_to_metric_families

        merged: dict = {}
        for f in rundir.metrics_endpoints(self.dir):
            last = rundir.last_values(f)
            try:
                text = urllib.request.urlopen(f"http://{f.read_text().strip()}/metrics", timeout=2).read().decode()
            except (OSError, ValueError):
                if not last.exists():
                    continue   # a rank that is gone or restarting: no series this scrape
                text = last.read_text()   # a finished rank's last values
            for family in text_string_to_metric_families(text):
                if family.name.startswith("ddp_kbit_"):
                    into = merged.setdefault(family.name, family)
                    if into is not family:
                        into.samples += family.samples
        yield from merged.values()


class DriverMetrics:
    def __init__(self, port: int, checkpoint_dir: str):
        from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

        self.registry = CollectorRegistry()
        self.restarts = Counter("ddp_kbit_restarts", "Re-runs from the newest checkpoint after a failure",
                                registry=self.registry)
        self.world = Gauge("ddp_kbit_world_size", "Ranks of the current attempt", registry=self.registry)
        self.registry.register(RankGatherer(checkpoint_dir))
        rundir.clear_metrics(checkpoint_dir)   # an earlier run's ranks (and their last values)
        self._server = start_http_server(port, registry=self.registry)
        log.info("metrics on http://0.0.0.0:%d/metrics (ranks on %d..)", port, port + 1)

    def close(self, final: Path | None = None) -> None:
        """Stop serving; ``final``: write the run's last values there (text format)."""
        from prometheus_client import generate_latest

        if final is not None:
            try:
                final.write_bytes(generate_latest(self.registry))
            except OSError as exc:
                log.warning("could not write %s: %s", final, exc)
        try:
            self._server[0].shutdown()
        except Exception:
            pass

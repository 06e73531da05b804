"""Progress for long work (publish, train epochs).

On a terminal: a tqdm bar. Anywhere else (a log file, CI, a Spark executor):
one log line every ``step_percent`` percent, so a 5-epoch run writes a few dozen
lines instead of hundreds of kilobytes of bar redraws.
"""
from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("ddp_kbit.progress")


def is_terminal(stream=None) -> bool:
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


class Progress:
    """``update(n, **postfix)`` as work is done; ``close()`` at the end (or use ``with``)."""

    def __init__(self, total: int, desc: str, unit: str = "it", enabled: bool = True,
                 step_percent: int = 10, terminal: bool | None = None):
        self.total, self.desc, self.unit, self.done = max(0, int(total)), desc, unit, 0
        self.enabled, self.step = enabled and total > 0, max(1, step_percent)
        self._next, self._t0, self._postfix = self.step, time.perf_counter(), {}
        use_bar = self.enabled and (is_terminal() if terminal is None else terminal)
        self._bar = None
        if use_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=desc, unit=unit, mininterval=0.5, leave=True)

    def update(self, n: int = 1, **postfix) -> None:
        if not self.enabled:
            return
        self.done += n
        self._postfix.update(postfix)
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix(self._postfix, refresh=False)
            self._bar.update(n)
            return
        percent = 100 * self.done // self.total
        if percent >= self._next or self.done >= self.total:
            self._next = (percent // self.step + 1) * self.step
            rate = self.done / max(time.perf_counter() - self._t0, 1e-9)
            extra = "".join(f", {k} {v:.4g}" if isinstance(v, float) else f", {k} {v}" for k, v in self._postfix.items())
            log.info("%s: %d%% (%d/%d %s, %.0f %s/s%s)", self.desc, percent, self.done, self.total, self.unit,
                     rate, self.unit, extra)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

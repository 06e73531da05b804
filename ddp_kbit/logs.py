"""Logging for the driver and every rank, set up the same way.

- Client libraries (librdkafka, kafka-python) retry a dead broker thousands of
  times; below DEBUG each distinct message of theirs shows once, then at most
  once a minute with a count, so a dead broker is one line per cause.
- No secret ever reaches a log line at any level: every handler redacts the
  configured secret values (kafka-python logs its whole config at DEBUG).
"""
from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Iterable

CLIENT_LOGGERS = ("kafka", "librdkafka")
REDACTED = "***"


class SecretFilter(logging.Filter):
    """Replaces every secret value in a record's final text (message and traceback)."""

    def __init__(self, secrets: Iterable[str]):
        super().__init__()
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for s in self.secrets:
            text = text.replace(s, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg, record.args = self.redact(record.getMessage()), None
            if record.exc_info:
                record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
                record.exc_info = None
        return True


class RateLimit(logging.Filter):
    """For records of the client libraries: the first of each distinct message
    (numbers ignored), then at most one per ``interval`` seconds carrying how many
    were held back. Other records pass."""

    def __init__(self, interval: float = 60.0):
        super().__init__()
        self.interval, self.seen = interval, {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".")[0] not in CLIENT_LOGGERS:
            return True
        key = (record.name, re.sub(r"\d+", "N", str(record.msg)))
        now = time.monotonic()
        last, held = self.seen.get(key, (None, 0))
        if last is not None and now - last < self.interval:
            self.seen[key] = (last, held + 1)
            return False
        self.seen[key] = (now, 0)
        if held:
            record.msg, record.args = f"{record.getMessage()} (and {held} more like it)", None
        return True


def configure(level: str, fmt: str = "%(asctime)s %(levelname)s %(name)s: %(message)s",
              secrets: Iterable[str] = ()) -> None:
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr, format=fmt, force=True)
    for handler in logging.getLogger().handlers:
        if level != "DEBUG":  # their retries are noise next to our own one-line errors
            handler.addFilter(RateLimit())
        handler.addFilter(SecretFilter(secrets))  # last: it sees the final text
    for name in CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
    logging.getLogger("py4j").setLevel(logging.WARNING)
    logging.getLogger("ignite").setLevel(logging.WARNING)  # it logs every engine start and stop

"""Every error a user sees. Each ends a command with one line, never a traceback:
``ConfigError`` (a bad flag, file or value) exits 2, every other ``UserError`` exits 1.

This module imports nothing of the package, so any layer may raise these.
"""
from __future__ import annotations

EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def first_line(exc: BaseException, limit: int | None = None, default: str | None = None) -> str:
    """An exception's first non-blank line (at most ``limit`` characters); ``default``
    (else the exception's type name) when its text is empty."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__ if default is None else default
    return text.splitlines()[0][:limit]


class UserError(RuntimeError):
    """A failure the user can act on; printed as one line, exit 1."""


class ConfigError(UserError, ValueError):
    """A bad flag, config file or value; exit 2. Messages name the allowed values."""


class ClientError(UserError):
    """A Kafka failure: unreachable broker, missing topic, a client error on the hot path."""


class BrokerError(UserError):
    """The embedded broker could not start."""


class ManifestError(UserError):
    """A manifest that is missing, unreadable or of another schema version."""


class DatasetError(UserError):
    """A dataset file or folder that is missing or not what it claims to be."""


class PlanError(UserError):
    """Offset ranges that cannot be planned (e.g. fewer records than ranks)."""


class StreamError(UserError):
    """The data stream cannot go on (too many bad records, records missing from the log)."""


class CheckpointError(UserError):
    """A checkpoint that cannot be used: unreadable, or from another run."""


class DecodeError(UserError, ValueError):
    """A message value that is not a valid v1 Sample; ``reason`` names why."""

    def __init__(self, fmt: str, reason: str, detail: str = ""):
        self.format, self.reason, self.detail = fmt, reason, detail
        super().__init__(f"{fmt}: {reason}" + (f": {detail}" if detail else ""))

    def __reduce__(self):  # picklable across processes (TorchDistributor, prefetch thread)
        return type(self), (self.format, self.reason, self.detail)

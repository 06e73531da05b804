"""Code a user names on the command line: ``MODULE:FUNCTION`` (importable on every
rank) or ``PATH.py:FUNCTION`` (a file of their own). Models, transforms and
handlers are all named this way.

A file is read once, by the driver, and its text travels with the run spec, so a
rank on an executor that does not have the file (another host, a fresh container)
loads the same code. Nothing is unpickled: the source is compiled on the rank.
"""
from __future__ import annotations

import hashlib
import importlib
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ddp_kbit.errors import ConfigError, first_line


@dataclass(frozen=True)
class CodeRef:
    spec: str                  # as the user wrote it
    name: str                  # the function
    module: str | None = None  # MODULE:FUNCTION
    path: str | None = None    # PATH.py:FUNCTION, absolute
    source: str | None = None  # the file's text (read by the driver)

    @property
    def is_file(self) -> bool:
        return self.path is not None


def is_spec(text: str) -> bool:
    """Whether ``text`` names code (``a:b``) rather than a built-in name."""
    return ":" in text


def parse(spec: str, what: str) -> CodeRef:
    """``MODULE:FUNCTION`` or ``PATH.py:FUNCTION`` (``what`` names the flag in errors).
    A file's text is read now."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise ConfigError(f"{what} {spec!r}: expected MODULE:FUNCTION or PATH.py:FUNCTION")
    if where.endswith(".py") or "/" in where or where.startswith("."):
        path = Path(where).expanduser().resolve()
        try:
            source = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{what} {spec}: cannot read {path}: {exc.strerror}") from None
        return CodeRef(spec, name, path=str(path), source=source)
    if not all(part.isidentifier() for part in where.split(".")):
        raise ConfigError(f"{what} {spec!r}: {where!r} is not a module name or a .py file")
    return CodeRef(spec, name, module=where)


def load(ref: CodeRef, what: str) -> Callable:
    """The function ``ref`` names; one line naming the spec when it cannot be had."""
    try:
        module = _module(ref)
    except Exception as exc:  # ImportError, SyntaxError, anything the module raises at import
        raise ConfigError(f"{what} {ref.spec}: cannot import it ({type(exc).__name__}: {first_line(exc, 300)})") \
            from None
    fn = getattr(module, ref.name, None)
    if fn is None:
        raise ConfigError(f"{what} {ref.spec}: {ref.module or ref.path} has no {ref.name}")
    if not callable(fn):
        raise ConfigError(f"{what} {ref.spec} is not callable")
    return fn


def _module(ref: CodeRef) -> types.ModuleType:
    if ref.module is not None:
        return importlib.import_module(ref.module)
    digest = hashlib.sha256(ref.source.encode()).hexdigest()[:12]
    name = f"ddp_kbit_user_{Path(ref.path).stem}_{digest}"
    if name not in sys.modules:   # once per process: a model class pickled by DDP or a checkpoint stays one class
        module = types.ModuleType(name)
        module.__file__ = ref.path
        sys.modules[name] = module
        try:
            exec(compile(ref.source, ref.path, "exec"), module.__dict__)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]

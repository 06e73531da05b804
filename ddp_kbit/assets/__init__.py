"""Files the package ships besides code, read through ``importlib.resources``:
study presets (``experiments/*.toml``) and Spark settings (``spark_conf/``).

In a source checkout these folders are links to the repository's top-level
``experiments/`` and ``spark_conf/`` (where people edit them); a wheel holds copies;
a zip (``--ship-package``, ``spark-submit --py-files``) holds them too. Code never
reaches for ``parents[2]`` of a module: an installed package has no source tree.
Imports nothing of the package.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

PRESETS, SPARK_CONF = "experiments", "spark_conf"


def folder(name: str) -> Traversable:
    return resources.files(__name__).joinpath(name)


def names(name: str, suffix: str) -> list[str]:
    """File names in the shipped folder ``name`` ending with ``suffix``, sorted."""
    where = folder(name)
    if not where.is_dir():
        return []
    return sorted(f.name for f in where.iterdir() if f.name.endswith(suffix) and f.is_file())


def read_text(name: str, file: str) -> str:
    return folder(name).joinpath(file).read_text(encoding="utf-8")


def describe(name: str) -> str:
    """Where the shipped folder ``name`` is, for messages."""
    return str(folder(name))


@contextlib.contextmanager
def as_file(name: str, file: str) -> Iterator[Path]:
    """A real path of a shipped file (extracted for as long as the block runs when the
    package is a zip); for files another program must open, such as a Spark script."""
    with resources.as_file(folder(name).joinpath(file)) as path:
        yield Path(path)

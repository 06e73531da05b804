"""The package as one zip, for executors whose Python does not have ddp_kbit.

``python -m ddp_kbit.main_pack`` writes ``dist/ddp_kbit.zip`` (ddp_kbit with its
schemas, presets and Spark settings, and producers) and a two-line ``dist/ddp_kbit_main.py`` for ``spark-submit --py-files``;
``--ship-package`` makes the driver send the same zip with every launch, so the
ranks (torchrun processes that Spark's Python workers start, which do not see
``--py-files``) import it from there.
"""
from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

PACKAGES = ("ddp_kbit", "producers")
SUFFIXES = (".py", ".avsc", ".proto", ".json", ".toml", ".conf", ".sh")


HERE = Path(__file__).resolve().parents[2]   # the folder that holds the ddp_kbit package


def _roots() -> list[Path]:
    here = HERE
    return [here / p for p in PACKAGES if (here / p).is_dir()]


def package_bytes() -> bytes:
    """The zip's bytes: the running package's own zip when it was imported from
    one (spark-submit --py-files), else built from the source tree."""
    for parent in Path(__file__).parents:
        if parent.suffix == ".zip" and parent.is_file():
            return parent.read_bytes()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for root in _roots():
            for f in _files(root):
                zf.write(f, f.relative_to(root.parent).as_posix())
    return buf.getvalue()


def _files(root: Path) -> list[Path]:
    """The package's files, through the links to the repository's top-level folders
    (``Path.rglob`` does not follow links to folders)."""
    out = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        out += [Path(folder) / f for f in sorted(files) if Path(f).suffix in SUFFIXES]
    return out


MAIN = '"""spark-submit entry point: spark-submit --py-files ddp_kbit.zip ddp_kbit_main.py ..."""\n' \
       "from ddp_kbit.main import cli_entry\n\ncli_entry()\n"


def write(out_dir: str | Path = "dist") -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    zpath, main = out / "ddp_kbit.zip", out / "ddp_kbit_main.py"
    zpath.write_bytes(package_bytes())
    main.write_text(MAIN)
    return zpath, main

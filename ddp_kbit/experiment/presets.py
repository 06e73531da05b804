"""Study presets: one TOML file per study in the top-level ``experiments/`` folder
(``formats.toml`` is the default). Adding a study means adding a file."""
from __future__ import annotations

from pathlib import Path

from ddp_kbit.config import load_config_file
from ddp_kbit.errors import ConfigError

PRESET_DIR = Path(__file__).resolve().parents[2] / "experiments"


def available() -> dict[str, Path]:
    return {p.stem: p for p in sorted(PRESET_DIR.glob("*.toml"))} if PRESET_DIR.is_dir() else {}


def load(name_or_file: str) -> dict:
    """The preset's ``[experiment]`` section, with ``preset`` set to its name."""
    path = Path(name_or_file)
    if not (path.suffix == ".toml" and path.is_file()):
        found = available()
        if name_or_file not in found:
            raise ConfigError(f"unknown preset {name_or_file!r}; available: {', '.join(found) or 'none'} "
                              f"(in {PRESET_DIR}), or a path to a .toml file")
        path = found[name_or_file]
    data = load_config_file(path, ["experiment"])   # a config file holding only [experiment]
    if "experiment" not in data:
        raise ConfigError(f"preset {path} must hold exactly one [experiment] section")
    return {**data["experiment"], "preset": path.stem}

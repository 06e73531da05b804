"""Study presets: one TOML file per study, shipped with the package
(:mod:`ddp_kbit.assets`; edited in the repository's top-level ``experiments/``
folder, ``formats.toml`` is the default). Adding a study means adding a file."""
from __future__ import annotations

from pathlib import Path

from ddp_kbit import assets
from ddp_kbit.config import load_config_file
from ddp_kbit.errors import ConfigError


def available() -> list[str]:
    """The shipped presets' names."""
    return [n.removesuffix(".toml") for n in assets.names(assets.PRESETS, ".toml")]


def load(name_or_file: str) -> dict:
    """The preset's ``[experiment]`` section, with ``preset`` set to its name."""
    path = Path(name_or_file)
    if path.suffix == ".toml" and path.is_file():
        data, name = load_config_file(path, ["experiment"]), path.stem
    else:
        if name_or_file not in available():
            raise ConfigError(f"unknown preset {name_or_file!r}; available: {', '.join(available()) or 'none'} "
                              f"(in {assets.describe(assets.PRESETS)}), or a path to a .toml file")
        with assets.as_file(assets.PRESETS, f"{name_or_file}.toml") as shipped:
            data, name = load_config_file(shipped, ["experiment"]), name_or_file
    if "experiment" not in data:
        raise ConfigError(f"preset {name_or_file} must hold exactly one [experiment] section")
    return {**data["experiment"], "preset": name}

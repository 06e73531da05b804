"""The front door: the docs site builds strictly (no broken link or page), the settings
reference is the config fields' own, the README stays short and opens with what it is."""
import subprocess
import sys
from pathlib import Path

from ddp_kbit.cli import settings_reference
from ddp_kbit.config import BrokerJob, JobConfig, PublishJob

ROOT = Path(__file__).resolve().parents[2]


def test_the_docs_site_builds_strictly(tmp_path):
    r = subprocess.run([str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "--site-dir",
                        str(tmp_path / "site")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "settings" / "index.html").exists()


def test_the_settings_reference_is_generated_from_the_fields():
    page = (ROOT / "docs" / "reference" / "settings.md").read_text()
    assert page == settings_reference([JobConfig, PublishJob, BrokerJob]) + "\n", \
        "run python scripts/settings_reference.py"


def test_the_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    first = next(ln for ln in lines[1:] if ln.strip())
    assert first.startswith("ddp_kbit trains PyTorch")


def test_what_every_package_has():
    for name in ("LICENSE", "CHANGELOG.md", "CONTRIBUTING.md", "pyproject.toml", "ddp_kbit/py.typed"):
        assert (ROOT / name).exists(), name
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]

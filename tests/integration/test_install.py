"""A normal install works: the wheel, built from this checkout and installed into a
fresh venv outside the repository, carries the presets, the Spark settings, the GPU
discovery script and the schemas as package data (no top-level 'schemas' package),
and runs the experiment mode's preset listing, a tiny study and a --gpu config load
from another folder."""
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python, folder to run in) of a venv holding only the wheel; its dependencies
    come from ours through a .pth file (no network, no second torch)."""
    dist = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(ROOT)], check=True, capture_output=True, cwd=dist)
    wheel = next(dist.glob("ddp_kbit-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "ddp_kbit/assets/experiments/formats.toml" in names and "ddp_kbit/schemas/sample.avsc" in names
    assert "ddp_kbit/assets/spark_conf/getGpusResources.sh" in names and "ddp_kbit/assets/spark_conf/gpu.conf" in names
    assert not any(n.startswith("schemas/") for n in names)
    root = tmp_path_factory.mktemp("fresh-venv")
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    ours = next(p for p in sys.path if p.endswith("site-packages"))
    site = next(root.glob("lib/python3*/site-packages"))
    (site / "deps.pth").write_text(ours + "\n")
    py = str(root / "bin" / "python")
    subprocess.run([py, "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True, capture_output=True)
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    where = subprocess.run([py, "-c", "import ddp_kbit; print(ddp_kbit.__file__)"], capture_output=True, text=True,
                           cwd=elsewhere, check=True).stdout.strip()
    assert where.startswith(str(site)), where   # the installed copy, not this checkout
    return py, elsewhere


def test_presets_listing_and_a_gpu_config_load_from_the_wheel(installed):
    py, cwd = installed
    r = subprocess.run([py, "-m", "ddp_kbit.main", "--mode", "experiment", "--preset", "nope"], capture_output=True,
                       text=True, cwd=cwd, timeout=60)
    assert r.returncode == 2 and "available: clients, compression, foreign, formats, layouts, scaling, shuffle, train" in r.stderr
    from ddp_kbit.main import COMMANDS

    for command in COMMANDS:   # every command's help, from the installed copy
        r = subprocess.run([py, "-m", "ddp_kbit.main", command, "--help"], capture_output=True, text=True, cwd=cwd)
        assert r.returncode == 0 and r.stdout.startswith(f"usage: ddp-kbit {command} [flags]"), r.stderr[-2000:]
    out = subprocess.run([py, "-m", "ddp_kbit.main", "--mode", "experiment", "--help"], capture_output=True,
                         text=True, cwd=cwd).stdout
    assert "presets (experiments/<name>.toml): clients, compression, foreign, formats" in " ".join(out.split())
    code = ("import json, os; from ddp_kbit.config import SparkConfig; from ddp_kbit.launch.spark import session_conf; "
            "c = session_conf(SparkConfig(gpu=True)); s = c['spark.executor.resource.gpu.discoveryScript']; "
            "print(json.dumps({'script': s, 'exec': os.access(s, os.X_OK), 'master': c['spark.master'], "
            "'task': c['spark.task.resource.gpu.amount'], 'plugins': c.get('spark.plugins')}))")
    got = json.loads(subprocess.run([py, "-c", code], capture_output=True, text=True, cwd=cwd, check=True).stdout)
    assert "site-packages/ddp_kbit/assets/spark_conf/getGpusResources.sh" in got["script"] and got["exec"]
    assert got["master"] == "local[2]" and got["task"] == "1" and got["plugins"] is None


def test_a_tiny_study_from_the_wheel(installed, kcfg):
    py, cwd = installed
    r = subprocess.run([py, "-m", "ddp_kbit.main", "--mode", "experiment", "--bootstrap-servers",
                        kcfg.bootstrap_servers, "--workloads", "publish,ingest", "--formats", "json", "--iterations",
                        "1", "--warmup", "0", "--study-limit", "300", "--passes", "1", "--output-dir", str(cwd / "s"),
                        "--run-dir", str(cwd / "run"), "--no-progress", "--log-level", "WARNING"],
                       capture_output=True, text=True, cwd=cwd, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    study = json.loads((cwd / "s" / "results.json").read_text())
    assert study["study"]["preset"] == "formats" and study["environment"]["git_commit"] is None
    assert "ingest json 1p" in r.stdout

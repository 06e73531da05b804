"""Every example in examples/ runs as written: the Python API's fit (against the
session's broker in $KAFKA), KafkaDataset in a torchrun loop twice (the second run
resumes from its saved state), and the command line end to end on a broker of its own
(publish, train a model file, evaluate the saved model with nothing but its path)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runs import torchrun

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def test_every_example_is_run_by_this_file():
    mine = Path(__file__).read_text()
    assert all(f.name in mine for f in EXAMPLES.iterdir() if f.suffix in (".py", ".sh"))


def test_fit_py_and_kafka_dataset_loop_py(kcfg, tmp_path):
    env = {**os.environ, "KAFKA": kcfg.bootstrap_servers}
    r = subprocess.run([sys.executable, str(EXAMPLES / "fit.py")], capture_output=True, text=True, timeout=600,
                       cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    accuracy = float(r.stdout.strip().splitlines()[-1].split()[0])
    assert accuracy > 0.5 and "'parameters': 101770" in r.stdout
    for _ in range(2):   # the second run loads ds-state.pt: both epochs done, nothing left to train
        r = torchrun(2, EXAMPLES / "kafka_dataset_loop.py", cwd=tmp_path, env=env, timeout=600,
                     done=lambda r: r.stdout.count("trained on") == 2)   # both ranks finished
        assert r.stdout.count("trained on") == 2, r.stdout[-2000:] + r.stderr[:6000]
    assert (tmp_path / "ds-state.pt").exists()


def test_command_line_sh(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "RUN": str(run), "DDP_KBIT": str(Path(sys.executable).parent / "ddp-kbit")}
    r = subprocess.run(["bash", str(EXAMPLES / "command_line.sh")], capture_output=True, text=True, timeout=900,
                       env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    trained = json.loads((run / "train" / "report.json").read_text())
    evaluated = json.loads((run / "evaluate" / "report.json").read_text())
    assert evaluated["test_accuracy"] == pytest.approx(trained["final"]["test_accuracy"], abs=1e-6)
    assert evaluated["model"]["transforms"] == ["examples/my_model.py:invert"]
    assert evaluated["predictions"]["written"] == 1000
    shutil.rmtree(run / "broker", ignore_errors=True)

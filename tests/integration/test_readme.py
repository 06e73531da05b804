"""The README's Python API examples, copied into files and run as written (the
broker's address in $KAFKA): the fit/publish script, and the KafkaDataset loop under
torchrun, twice (the second run resumes from its saved state)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from runs import torchrun

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):text.index("## Your model, your transforms")]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_readme_examples_run_as_written(kcfg, tmp_path):
    fit_example, loop_example = python_blocks()
    env = {**os.environ, "KAFKA": kcfg.bootstrap_servers}
    (tmp_path / "example.py").write_text(fit_example)
    r = subprocess.run([sys.executable, "example.py"], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                       env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    accuracy = float(r.stdout.strip().splitlines()[-1].split()[0])
    assert accuracy > 0.5 and "'parameters': 101770" in r.stdout
    (tmp_path / "train.py").write_text(loop_example)
    for _ in range(2):   # the second run loads ds-state.pt: both epochs done, nothing left to train
        r = torchrun(2, "train.py", cwd=tmp_path, env=env, timeout=600,
                     done=lambda r: r.stdout.count("trained on") == 2)   # both ranks finished
        assert r.stdout.count("trained on") == 2, r.stdout[-2000:] + r.stderr[:6000]
    assert (tmp_path / "ds-state.pt").exists()

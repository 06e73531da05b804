"""--mode experiment end to end (embedded broker + local Spark + TorchDistributor):
a small grid, every file it writes, and the statistics against the rows."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow
PNG = b"\x89PNG\r\n\x1a\n"


def test_small_study_writes_every_file_consistently(kcfg, tmp_path):
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "ddp_kbit.main", "--mode", "experiment", "--bootstrap-servers", kcfg.bootstrap_servers,
           "--formats", "json,protobuf", "--workloads", "publish,ingest,train", "--iterations", "2", "--warmup", "1",
           "--study-limit", "1000", "--output-dir", str(out), "--run-dir", str(tmp_path), "--no-progress",
           "--log-level", "WARNING"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert "ingest protobuf 1p" in r.stdout and "too few iterations to tell (n < 3)" in r.stdout   # n = 2

    rows = pd.read_csv(out / "results.csv", keep_default_na=False, na_values=[""])
    rows["error"] = rows["error"].fillna("")
    required = {"workload", "format", "layout", "compression", "client", "num_processes", "iteration", "warmup",
                "records", "seconds", "records_per_s", "mb_per_s", "bytes_per_record", "error"}
    assert required <= set(rows.columns)
    study = json.loads((out / "results.json").read_text())
    labels = [c["label"] for c in study["study"]["conditions"]]
    # publish: raw + 2 formats; ingest: raw + 2 formats + memory; train: 2 formats + memory
    assert sorted(labels) == sorted(["publish raw", "publish json", "publish protobuf", "ingest raw 1p",
                                     "ingest json 1p", "ingest protobuf 1p", "ingest memory 1p", "train json 1p",
                                     "train protobuf 1p", "train memory 1p"])
    assert len(rows) == len(labels) * 3 and (rows["warmup"].astype(str) == "True").sum() == len(labels)
    assert (rows["error"] == "").all(), rows[rows["error"] != ""].to_dict("records")
    passes = study["study"]["config"]["passes"]                         # the default preset reads 3 times
    assert passes == 3 and (rows["records_per_s"] > 0).all()
    assert (rows["records"] == np.where(rows["workload"] == "ingest", 1000 * passes, 1000)).all()
    pub = rows[(rows["workload"] == "publish") & (rows["format"] != "raw")]
    assert (pub["bytes_per_record"] > 700).all()                       # 784 pixel bytes and more, per record

    summary = pd.read_csv(out / "summary.csv")
    assert sorted(summary["label"]) == sorted(labels) and (summary["n"] == 2).all()
    measured = rows[rows["warmup"].astype(str) == "False"]
    for s in summary.to_dict("records"):
        mine = measured[(measured["workload"] == s["workload"]) & (measured["format"] == s["format"])
                        & (measured["num_processes"] == s["num_processes"])]["records_per_s"].astype(float)
        assert s["median"] == pytest.approx(np.median(mine), rel=1e-5)
        assert s["min"] == pytest.approx(mine.min(), rel=1e-5) and s["max"] == pytest.approx(mine.max(), rel=1e-5)
        assert s["median_ci_low"] <= s["median"] <= s["median_ci_high"]
    ingest = summary.set_index("label")
    assert not np.isnan(ingest.loc["ingest json 1p", "ratio_to_raw"])
    assert not np.isnan(ingest.loc["train json 1p", "ratio_to_memory"])

    env = study["environment"]
    assert {"python", "versions", "cpu_count", "cpu_model", "gpu", "broker", "git_commit"} <= set(env)
    assert env["versions"]["torch"] and env["versions"]["pyspark"] and env["versions"]["confluent-kafka"]
    assert env["broker"]["bootstrap_servers"] == kcfg.bootstrap_servers
    for name in ("records_per_s", "ratio_to_raw", "ratio_to_memory", "bytes_per_record"):
        png = (out / f"{name}.png").read_bytes()
        assert png[:8] == PNG and len(png) > 2000
    report = (out / "report.md").read_text()
    assert all(label in report for label in labels) and "![records_per_s](records_per_s.png)" in report
    assert json.loads((tmp_path / "report.json").read_text())["mode"] == "experiment"


def test_unknown_preset_is_one_line_naming_the_available():
    r = subprocess.run([sys.executable, "-m", "ddp_kbit.main", "--mode", "experiment", "--preset", "nope"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().startswith("ddp-kbit: error: unknown preset 'nope'; available: ")
    assert "formats" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_the_study_has_its_own_process_counts_and_epochs():
    from ddp_kbit.main import parse

    _, _, job = parse(["--mode", "experiment", "--study-processes", "1,2", "--study-epochs", "3"])
    assert job.experiment.num_processes == (1, 2) and job.experiment.epochs == 3
    for flag in ("--num-processes", "--epochs"):   # training's flags: not the study's
        r = subprocess.run([sys.executable, "-m", "ddp_kbit.main", "experiment", flag, "2"], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 2 and f"{flag} is not a flag of this command; it belongs to `ddp-kbit train`" \
            in r.stderr
    r = subprocess.run([sys.executable, "-m", "ddp_kbit.main", "--num-processes", "1,2"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "invalid int value: '1,2'" in r.stderr

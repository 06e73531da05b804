"""The real Spark cluster path: a standalone master and two 1-core workers (separate
JVMs, started from the installed pyspark), training with ranks on both workers,
spark-submit in client mode, the package shipped to executors that cannot import
it, a worker killed mid-epoch, a barrier stage that cannot get its slots, and
nothing left running afterwards (checked by process group)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ddp_kbit.config import PublishConfig
from ddp_kbit.data.local_datasets import load_dataset
from ddp_kbit.data.publish import publish
from ddp_kbit.launch.cluster import StandaloneCluster

from runs import assert_exact_epochs, spark_submit, train

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def group_members(pgids: set[int]) -> list[int]:
    """Live processes in these process groups (zombies count as gone)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[2]) in pgids:
                out.append(int(d.name))
    return out


@pytest.fixture
def cluster(tmp_path):
    c = StandaloneCluster(workers=2, cores=1, memory="2g", work_dir=tmp_path / "cluster").start()
    pgids = set(c.pids().values())
    try:
        yield c
    finally:
        c.stop()
        deadline = time.monotonic() + 10
        while group_members(pgids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert group_members(pgids) == [], "cluster processes left running"


@pytest.fixture(scope="module")
def topics(kcfg):
    out = {}
    for split, n in (("train", 2000), ("test", 400)):
        ds = load_dataset("fashion-mnist", split, limit=n)
        out[split] = publish(kcfg, PublishConfig(format="avro", split=split, topic=f"cl.{split}.{time.time_ns()}",
                                                 partitions=4), ds, progress=False).manifest
    return out


def topic_args(topics):
    return ["--train-topic", topics["train"].topic, "--test-topic", topics["test"].topic]


def compose_trainer(master_url: str, run: Path) -> list[str]:
    """docker-compose.yml's trainer command, with this machine's master and paths
    (the broker comes from train()): the tests run what the compose file runs."""
    import yaml

    cmd = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["trainer"]["command"]
    i = cmd.index("--spark-conf")          # spark.driver.host=trainer: a compose hostname
    cmd = cmd[:i] + cmd[i + 2:]
    i = cmd.index("--bootstrap-servers")   # train() passes the test broker
    cmd = cmd[:i] + cmd[i + 2:]
    subst = {"spark://spark-master:7077": master_url, "/opt/ddp_kbit/runs/checkpoints": str(run / "checkpoints"),
             "/opt/ddp_kbit/runs/compose": str(run)}
    return [subst.get(a, a) for a in cmd]


def test_cluster_is_ready_with_every_worker_alive(cluster):
    state = cluster.state()
    assert cluster.master_url.startswith("spark://127.0.0.1:")
    assert sorted(w["state"] for w in state["workers"]) == ["ALIVE", "ALIVE"]
    assert {w["cores"] for w in state["workers"]} == {1}


def test_training_runs_one_rank_per_worker_jvm(kcfg, topics, cluster, tmp_path):
    run = tmp_path / "run"
    # the compose trainer's command; this test's topics and size last (later flags win)
    report = train(kcfg, run, *compose_trainer(cluster.master_url, run), *topic_args(topics), "--epochs", "1",
                   timeout=600)
    spark = report["spark"]
    assert spark["master"] == cluster.master_url and spark["app_id"].startswith("app-") and spark["mode"] == "barrier"
    assert sorted(r["rank"] for r in spark["ranks"]) == [0, 1]
    assert len({r["executor"] for r in spark["ranks"]}) == 2          # two executors ...
    assert len({r["pid"] for r in spark["ranks"]}) == 2
    assert report["attempts"] == [{"attempt": 0, "world_size": 2, "error": None}]
    assert_exact_epochs(report, topics["train"])


def test_spark_submit_in_client_mode(kcfg, topics, cluster, tmp_path):
    report = spark_submit(kcfg, cluster.master_url, tmp_path, *topic_args(topics))
    assert report["spark"]["master"] == cluster.master_url and len({x["executor"] for x in report["spark"]["ranks"]}) == 2
    assert_exact_epochs(report, topics["train"])


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory):
    """A Python that has every dependency but not ddp_kbit: a venv whose site-packages
    points at ours through a .pth file. The editable install is itself a .pth in our
    site-packages, and .pth files are read only in site-packages folders, so it is
    not applied: executors using this Python cannot import ddp_kbit, schemas or
    producers (their working directory is the worker's, not the repo)."""
    root = tmp_path_factory.mktemp("bare-venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    ours = next(p for p in sys.path if p.endswith("site-packages"))
    site = next(root.glob("lib/python3*/site-packages"))
    (site / "deps.pth").write_text(ours + "\n")
    py = str(root / "bin" / "python")
    probe = subprocess.run([py, "-c", "import torch, pyspark, confluent_kafka; import ddp_kbit"], capture_output=True,
                           text=True, cwd=root)
    assert "No module named 'ddp_kbit'" in probe.stderr, probe.stderr
    return py


def test_package_shipped_to_executors_that_cannot_import_it(kcfg, topics, cluster, bare_python, tmp_path):
    env = {**os.environ, "PYSPARK_PYTHON": bare_python}
    common = [*topic_args(topics), "--epochs", "1", "--num-processes", "2", "--distributed", "--master",
              cluster.master_url]
    r = train(kcfg, tmp_path / "a", *common, expect_rc=1, timeout=600, env=env)
    assert "No module named 'ddp_kbit'" in r.stderr and "pass --ship-package" in r.stderr.strip().splitlines()[-1]
    report = train(kcfg, tmp_path / "b", *common, "--ship-package", timeout=600, env=env)
    assert len({x["executor"] for x in report["spark"]["ranks"]}) == 2
    assert_exact_epochs(report, topics["train"])


def test_a_worker_killed_mid_epoch_is_survived_on_fewer_ranks(kcfg, topics, cluster, tmp_path):
    run = tmp_path / "run"
    cmd_args = [*compose_trainer(cluster.master_url, run), *topic_args(topics), "--epochs", "2",
                "--checkpoint-every", "4", "--max-restarts", "1", "--collective-timeout", "60"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ddp_kbit.main", "--bootstrap-servers", kcfg.bootstrap_servers, "--batch-size", "64",
         "--eval-batch-size", "200", "--no-progress", "--run-dir", str(run), "--log-level", "WARNING", *cmd_args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list((run / "checkpoints").glob("ckpt-s*.pt")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    if not list((run / "checkpoints").glob("ckpt-s*.pt")):   # never kill a worker of a run that is not training
        proc.kill()
        pytest.fail(f"no checkpoint appeared: {proc.communicate()[1][-3000:]}")
    os.killpg(cluster.pids()["worker1"], signal.SIGKILL)   # the worker JVM and its executor, mid-epoch 1
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-4000:]
    report = json.loads((run / "report.json").read_text())
    assert report["restarts"] == 1 and [a["world_size"] for a in report["attempts"]] == [2, 1]
    assert report["config"]["checkpoint"]["dir"] == str(run / "checkpoints")
    assert report["attempts"][0]["error"] and report["world_size"] == 1
    assert_exact_epochs(report, topics["train"])
    assert "restart 1 runs on 1 rank(s)" in err


def test_a_barrier_stage_that_cannot_get_its_slots_fails_in_time(kcfg, topics, cluster, tmp_path):
    r = train(kcfg, tmp_path, *topic_args(topics), "--epochs", "1", "--num-processes", "3", "--distributed",
              "--master", cluster.master_url, "--launch-timeout", "15", expect_rc=1, timeout=300)
    assert r.stderr.strip().splitlines()[-1] == (
        f"ddp-kbit: error: the barrier stage needs 3 task slot(s) but the cluster ({cluster.master_url}) offers 2 "
        "after 15s (--launch-timeout); add workers or pass fewer --num-processes")


def test_local_cluster_master_runs_barrier_training(kcfg, topics, tmp_path):
    report = train(kcfg, tmp_path, *topic_args(topics), "--epochs", "1", "--num-processes", "2", "--distributed",
                   "--master", "local-cluster[2,1,1024]", timeout=600)
    assert report["spark"]["master"] == "local-cluster[2,1,1024]"
    assert len({x["executor"] for x in report["spark"]["ranks"]}) == 2
    assert_exact_epochs(report, topics["train"])


def test_rpc_authentication_admits_a_run_with_the_secret_and_refuses_one_without(kcfg, topics, tmp_path):
    from ddp_kbit.launch.cluster import write_private

    secret = write_private(tmp_path / "cluster.secret", "s3cr3t-" + os.urandom(16).hex())
    wrong = write_private(tmp_path / "wrong.secret", "not-the-cluster-secret")
    args = [*topic_args(topics), "--epochs", "1", "--num-processes", "2", "--distributed"]
    with StandaloneCluster(workers=2, cores=1, memory="2g", work_dir=tmp_path / "cluster",
                           secret_file=secret) as cluster:
        for name, extra, expect in (
                ("none", [], "the Spark master requires RPC authentication (spark.authenticate) and this run has no "
                             "secret: pass --spark-secret-file"),
                ("wrong", ["--spark-secret-file", str(wrong)], "the Spark master refused this run's RPC "
                                                                "authentication secret (--spark-secret-file)")):
            t0 = time.monotonic()
            r = train(kcfg, tmp_path / name, *args, "--master", cluster.master_url, *extra, expect_rc=1, timeout=120)
            line = r.stderr.strip().splitlines()[-1]
            assert line.startswith(f"ddp-kbit: error: Spark did not start: {expect}"), r.stderr[-3000:]
            print(f"unauthenticated ({name}): rc 1 in {time.monotonic() - t0:.1f} s: {line}")
        report = train(kcfg, tmp_path / "ok", *args, "--master", cluster.master_url, "--spark-secret-file",
                       str(secret), timeout=600)
        assert report["spark"]["master"] == cluster.master_url and report["world_size"] == 2
        assert_exact_epochs(report, topics["train"])
    assert not (tmp_path / "cluster" / "auth.properties").exists()
    for f in tmp_path.rglob("*"):   # the secret is in the secret file only
        if f.is_file() and f != secret:
            assert secret.read_text().encode() not in f.read_bytes(), f

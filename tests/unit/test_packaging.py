"""docker-compose.yml and packaging, checked without a Docker engine: the compose
file parses, its services are wired together, and the trainer's command is one
our own CLI accepts."""
import re
import shlex
from pathlib import Path

import yaml

from ddp_kbit.main import parse

ROOT = Path(__file__).resolve().parents[2]


def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_services_and_dependencies():
    c = compose()
    assert {"kafka", "spark-master", "spark-worker-1", "spark-worker-2", "publisher", "trainer"} <= set(c["services"])
    kafka = c["services"]["kafka"]["environment"]
    assert "controller" in kafka["KAFKA_PROCESS_ROLES"]          # KRaft, no ZooKeeper
    # inside the network as kafka:9092, from the host as localhost:29092
    assert kafka["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092,HOST://localhost:29092"
    assert "29092:29092" in c["services"]["kafka"]["ports"]
    trainer = c["services"]["trainer"]
    assert trainer["depends_on"]["kafka"] == {"condition": "service_healthy"}
    assert trainer["depends_on"]["publisher"] == {"condition": "service_completed_successfully"}
    name, _, job = parse(c["services"]["publisher"]["command"])
    assert name == "publish" and job.kafka.bootstrap_servers == "kafka:9092" and job.publish.split is None
    for name, svc in c["services"].items():
        for dep in svc.get("depends_on", []):
            assert dep in c["services"], f"{name} depends on unknown {dep}"
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            assert src in c["volumes"] or (src.startswith("./") and (ROOT / src).exists()), vol


def test_trainer_command_is_accepted_by_our_cli():
    c = compose()
    name, _, job = parse(c["services"]["trainer"]["command"])
    assert name == "train" and job.spark.distributed and job.kafka.bootstrap_servers == "kafka:9092"
    assert job.spark.master == "spark://spark-master:7077"


def test_workers_join_the_master_the_trainer_uses():
    c = compose()
    for w in ("spark-worker-1", "spark-worker-2"):
        assert "spark://spark-master:7077" in c["services"][w]["command"][0]


def test_compose_runs_the_cluster_the_tests_run():
    """One source of truth: the master and worker arguments are the cluster module's."""
    from ddp_kbit.launch.cluster import master_args, worker_args

    c = compose()["services"]
    assert c["spark-master"]["command"][0].endswith("/bin/spark-class " + " ".join(master_args("spark-master")))
    assert c["spark-worker-1"]["command"][0].endswith(
        "/bin/spark-class " + " ".join(worker_args("spark://spark-master:7077", 2, "4g", "/opt/work")))


def test_readme_shows_the_compose_trainer_command():
    trainer = compose()["services"]["trainer"]["command"]
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "ddp-kbit " + " ".join(trainer) in readme


def test_dockerfile_uses_the_pinned_torch_and_console_script():
    text = (ROOT / "Dockerfile").read_text()
    assert "torch==2.13.0" in text and 'ENTRYPOINT ["ddp-kbit"]' in text
    # dependencies are installed before the source is copied: a source edit keeps that layer
    assert text.index("requirements.txt") < text.index("COPY . .")
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "runs"} <= set(ignored)
    project = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'ddp-kbit = "ddp_kbit\.main:cli_entry"', project)


def test_readme_opens_with_the_two_commands():
    lines = [ln for ln in (ROOT / "README.md").read_text().splitlines() if ln.startswith("bash ")]
    assert [shlex.split(ln)[1] for ln in lines[:2]] == ["scripts/run.sh", "scripts/test.sh"]


def test_pack_holds_the_package_and_its_schema_files(tmp_path):
    import zipfile

    from ddp_kbit.launch.pack import write

    zpath, main_py = write(tmp_path)
    names = set(zipfile.ZipFile(zpath).namelist())
    assert {"ddp_kbit/__init__.py", "ddp_kbit/main.py", "ddp_kbit/wire/avro_codec.py", "ddp_kbit/schemas/sample.avsc",
            "ddp_kbit/schemas/sample_pb2.py", "producers/publish.py", "ddp_kbit/assets/experiments/formats.toml",
            "ddp_kbit/assets/spark_conf/spark-defaults.conf", "ddp_kbit/assets/spark_conf/getGpusResources.sh"} <= names
    assert not any(n.startswith("schemas/") for n in names)   # no top-level package of a generic name
    assert not any("__pycache__" in n for n in names)
    assert "from ddp_kbit.main import cli_entry" in main_py.read_text()


def test_prometheus_and_grafana_watch_the_trainer_with_metrics_we_export():
    c = compose()["services"]
    port = c["trainer"]["command"][c["trainer"]["command"].index("--metrics-port") + 1]
    scrape = yaml.safe_load((ROOT / "monitoring" / "prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == [f"trainer:{port}"]
    assert any(v.startswith("./monitoring/prometheus.yml:") for v in c["prometheus"]["volumes"])
    assert c["grafana"]["depends_on"] == ["prometheus"] and c["prometheus"]["depends_on"] == ["trainer"]
    for vol in c["grafana"]["volumes"]:
        assert (ROOT / vol.split(":")[0]).exists()
    import json

    dash = json.loads((ROOT / "monitoring" / "grafana" / "dashboards" / "ddp_kbit.json").read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    source = (ROOT / "ddp_kbit" / "train" / "metrics.py").read_text() + \
        (ROOT / "ddp_kbit" / "launch" / "metrics.py").read_text()
    for name in set(re.findall(r"ddp_kbit_[a-z_]+", exprs)):
        base = re.sub(r"_(total|bucket|sum|count)$", "", name)
        assert f'"{base}"' in source, f"the dashboard asks for {name}, which no rank or driver exports"
    for want in ("samples_per_second", "data_wait_seconds", "consumer_lag_records", "bad_records", "loss",
                 "eval_accuracy"):
        assert f"ddp_kbit_{want}" in exprs

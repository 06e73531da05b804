"""docker-compose.yml and packaging, checked without a Docker engine: the compose
file parses, its services are wired together, and the trainer's command is one
our own CLI accepts."""
import re
import shlex
from pathlib import Path

import yaml

from ddp_kbit.main import build_parser, job_config

ROOT = Path(__file__).resolve().parents[2]


def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_services_and_dependencies():
    c = compose()
    assert {"kafka", "spark-master", "spark-worker-1", "spark-worker-2", "trainer"} <= set(c["services"])
    kafka = c["services"]["kafka"]["environment"]
    assert "controller" in kafka["KAFKA_PROCESS_ROLES"]          # KRaft, no ZooKeeper
    assert kafka["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"
    trainer = c["services"]["trainer"]
    assert trainer["depends_on"]["kafka"] == {"condition": "service_healthy"}
    for name, svc in c["services"].items():
        for dep in svc.get("depends_on", []):
            assert dep in c["services"], f"{name} depends on unknown {dep}"
        for vol in svc.get("volumes", []):
            assert vol.split(":")[0] in c["volumes"]


def test_trainer_command_is_accepted_by_our_cli():
    c = compose()
    args = build_parser().parse_args(c["services"]["trainer"]["command"])
    job = job_config(args)
    assert args.mode == "train" and job.spark.distributed and job.kafka.bootstrap_servers == "kafka:9092"
    assert job.spark.master == "spark://spark-master:7077"


def test_workers_join_the_master_the_trainer_uses():
    c = compose()
    for w in ("spark-worker-1", "spark-worker-2"):
        assert "spark://spark-master:7077" in c["services"][w]["command"][0]


def test_dockerfile_uses_the_pinned_torch_and_console_script():
    text = (ROOT / "Dockerfile").read_text()
    assert "torch==2.13.0" in text and 'ENTRYPOINT ["ddp-kbit"]' in text
    setup = (ROOT / "setup.py").read_text()
    assert re.search(r"ddp-kbit=ddp_kbit\.main:cli_entry", setup)


def test_readme_opens_with_the_two_commands():
    lines = [ln for ln in (ROOT / "README.md").read_text().splitlines() if ln.startswith("bash ")]
    assert [shlex.split(ln)[1] for ln in lines[:2]] == ["scripts/run.sh", "scripts/test.sh"]

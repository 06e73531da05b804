"""The command line, generated from the config fields: each subcommand has only its
own flags, every help text has one home, --mode X is command X, and a mistake is one
short line."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

from ddp_kbit import api
from ddp_kbit.config import JobConfig, flag_of, flags_of, sections_of
from ddp_kbit.errors import ConfigError
from ddp_kbit.main import COMMANDS, command_parser, parse

ROOT = Path(__file__).resolve().parents[2]


def flags(name: str) -> set[str]:
    return {s for a in command_parser(name)._actions for s in a.option_strings if s.startswith("--")}


@pytest.mark.parametrize("name,has,lacks", [
    ("train", {"--epochs", "--follow", "--checkpoint-dir", "--distributed", "--value-format", "--metrics-port"},
     {"--iterations", "--model-path", "--split", "--scan", "--port"}),
    ("experiment", {"--iterations", "--study-processes", "--formats", "--preset", "--batch-size"},
     {"--follow", "--model-path", "--resume", "--split"}),
    ("publish", {"--split", "--rate", "--partitions", "--compression", "--shape", "--bootstrap-servers"},
     {"--epochs", "--train-topic", "--iterations"}),
    ("describe", {"--topic", "--scan", "--value-format", "--schema-registry"}, {"--epochs", "--model-path"}),
    ("inspect", {"--topic", "--limit", "--value-format"}, {"--scan", "--epochs"}),
    ("evaluate", {"--model-path", "--predictions-topic", "--test-topic", "--model", "--transform", "--topic"},
     {"--epochs", "--lr", "--train-topic", "--follow"}),
    ("broker", {"--port", "--host", "--run-dir"}, {"--bootstrap-servers", "--epochs"}),
])
def test_each_command_has_only_its_own_flags(name, has, lacks):
    got = flags(name)
    assert has <= got and not lacks & got, (has - got, lacks & got)


def test_every_flag_of_the_single_parser_of_0_2_is_still_some_commands_flag():
    old = {"--train-topic", "--format", "--shuffle", "--shuffle-chunk", "--until-idle", "--no-prequential",
           "--commit-group", "--spark-conf", "--spark-conf-dir", "--collective-timeout", "--launch-timeout",
           "--ship-package", "--study-limit", "--study-epochs", "--handler", "--transform", "--no-progress",
           "--request-timeout-s", "--allow-missing-records", "--dlq-max-bytes", "--registry-password"}
    assert old <= set().union(*(flags(c) for c in COMMANDS))


def string_constants(path: Path) -> list[str]:
    """Every string literal of a file (an f-string's literal parts, docstrings too)."""
    return [n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)
            and isinstance(n.value, str)]


def help_literals() -> dict[str, list[str]]:
    """Field -> the literal parts (20 characters or more) of its help in config.py."""
    out = {}
    for node in ast.walk(ast.parse((ROOT / "ddp_kbit" / "config.py").read_text())):
        if isinstance(node, ast.AnnAssign) and isinstance(node.value, ast.Call) and \
                getattr(node.value.func, "id", "") == "setting" and len(node.value.args) > 1:
            help_node = node.value.args[1]
            parts = [help_node] if isinstance(help_node, ast.Constant) else \
                [v for v in getattr(help_node, "values", []) if isinstance(v, ast.Constant)]
            out[f"{node.target.id} (config.py:{node.lineno})"] = [p.value for p in parts if len(p.value) >= 20]
    return out


def test_each_settings_help_text_has_one_home():
    constants = [c for d in ("ddp_kbit", "producers") for f in (ROOT / d).rglob("*.py") for c in string_constants(f)]
    found = help_literals()
    assert len(found) > 100   # every setting of every part
    for name, pieces in found.items():
        for piece in pieces:
            homes = sum(piece in c for c in constants)
            assert homes == 1, f"{name}: {piece!r} is in {homes} string literals"


@pytest.mark.parametrize("argv", [["--epochs", "3", "--distributed"], ["--iterations", "2", "--study-limit", "100"],
                                  ["--topic", "t", "--limit", "5"], ["--model-path", "m.pt", "--test-topic", "t"]])
def test_mode_x_and_command_x_are_the_same_run(argv):
    name = {"--epochs": "train", "--iterations": "experiment", "--topic": "inspect", "--model-path": "evaluate"}[argv[0]]
    by_mode, by_command = parse(["--mode", name, *argv]), parse([name, *argv])
    assert by_mode[0] == by_command[0] == name and by_mode[2] == by_command[2]
    if name == "train":
        assert parse(argv)[2] == by_command[2]   # no command: train


def test_mode_may_come_anywhere_and_again_as_in_0_2():
    """0.2 parsed --mode as any flag: after others, and twice (a compose command plus a
    wrapper's own). The last one wins; a conflicting command is an error."""
    plain = parse(["train", "--epochs", "3"])
    assert parse(["--epochs", "3", "--mode", "train"])[2] == plain[2]
    assert parse(["--mode", "train", "--mode=train", "--epochs", "3"])[2] == plain[2]
    with pytest.raises(ConfigError, match="not both"):
        parse(["inspect", "--mode", "train"])


def run(*argv):
    return subprocess.run([sys.executable, "-m", "ddp_kbit.main", *argv], capture_output=True, text=True, timeout=60)


def test_a_mistyped_flag_is_a_short_line_with_the_nearest_flag():
    r = run("--epoch", "3")
    assert r.returncode == 2 and r.stderr.splitlines()[0] == "ddp-kbit train: error: unknown flag --epoch; did you " \
                                                              "mean --epochs?"
    assert len(r.stderr.strip().splitlines()) == 2 and r.stdout == ""
    r = run("train", "--iterations", "3")
    assert r.returncode == 2 and "--iterations is not a flag of this command; it belongs to `ddp-kbit experiment`" \
        in r.stderr
    r = run("--mode", "trian")
    assert r.returncode == 2 and r.stderr.strip() == ("ddp-kbit: error: --mode must be one of train, experiment, "
                                                      "publish, describe, inspect, evaluate, broker; got 'trian'")


def test_version_and_the_commands_list():
    import ddp_kbit

    assert run("--version").stdout.strip() == f"ddp-kbit {ddp_kbit.__version__}"
    top = run("--help").stdout
    assert all(f"    {c}" in top for c in COMMANDS)


def test_the_python_api_takes_flag_names_and_field_names():
    job = api.job_from(checkpoint_dir="/tmp/c", until_idle=3.0, metrics_port=9400, epochs=2, transform=["m:f"],
                       study_limit=100, model_path="m.pt", spark_conf=["a=b"])
    assert (job.checkpoint.dir, job.follow.until_idle_s, job.metrics.port, job.train.epochs) == ("/tmp/c", 3.0, 9400, 2)
    assert (job.train.transforms, job.experiment.limit, job.evaluate.model_path) == (("m:f",), 100, "m.pt")
    assert job.spark.conf == ("a=b",)
    with pytest.raises(ConfigError, match="unknown setting 'epoch'; known: "):
        api.job_from(epoch=2)


def test_every_flag_key_of_the_api_names_one_field():
    keys = {}
    for section, part in sections_of(JobConfig).items():
        for f in flags_of(part):
            key = flag_of(f).removeprefix("--no-").lstrip("-").replace("-", "_")
            assert key not in keys, f"{key}: {keys.get(key)} and {section}.{f.name}"
            keys[key] = f"{section}.{f.name}"

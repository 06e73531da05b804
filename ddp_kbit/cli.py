"""Pieces every command-line entry point shares: Kafka/security flags, --config,
--log-level, the run directory, the embedded-broker fallback and the
one-clear-line error exit."""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator

from ddp_kbit.config import CLIENTS, SASL_MECHANISMS, SECURITY_PROTOCOLS, ConfigError, KafkaConfig, build

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
EXIT_USAGE, EXIT_FAILURE = 2, 1


def add_common_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("general")
    g.add_argument("--config", metavar="FILE", help="TOML or JSON file with [kafka], [publish], [train] ... "
                   "sections; flags given on the command line override it")
    g.add_argument("--log-level", default=None, type=str.upper, choices=LOG_LEVELS,
                   help="log verbosity (default INFO)")
    g.add_argument("--run-dir", metavar="DIR", help="where the broker log and JSON report go "
                   "(default runs/<timestamp>/)")


def add_kafka_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("kafka connection")
    g.add_argument("--bootstrap-servers", metavar="HOST:PORT[,...]",
                   help="Kafka brokers; when omitted an embedded broker (tansu, memory only) is started "
                        "for the duration of the command")
    g.add_argument("--client", choices=CLIENTS, help="Kafka client library (default confluent)")
    g.add_argument("--security-protocol", choices=SECURITY_PROTOCOLS, help="default PLAINTEXT")
    g.add_argument("--sasl-mechanism", choices=SASL_MECHANISMS, help="SASL mechanism for SASL_* protocols")
    g.add_argument("--sasl-username", help="SASL user name")
    g.add_argument("--sasl-password", help="SASL password (prefer the config file or $DDP_KBIT_SASL_PASSWORD)")
    g.add_argument("--ssl-cafile", metavar="PEM", help="CA bundle to verify the brokers")
    g.add_argument("--ssl-certfile", metavar="PEM", help="client certificate for mutual TLS")
    g.add_argument("--ssl-keyfile", metavar="PEM", help="client private key for mutual TLS")
    g.add_argument("--ssl-password", help="password of the client private key")
    g.add_argument("--request-timeout-s", type=float, metavar="S",
                   help="give up on an unreachable broker after this long (default 10)")


def kafka_config(args: argparse.Namespace, file_cfg: dict) -> KafkaConfig:
    overrides = vars(args).copy()
    if overrides.get("sasl_password") is None and os.environ.get("DDP_KBIT_SASL_PASSWORD"):
        overrides["sasl_password"] = os.environ["DDP_KBIT_SASL_PASSWORD"]
    return build(KafkaConfig, file_cfg.get("kafka"), overrides)


def setup_logging(level: str | None) -> None:
    logging.basicConfig(level=getattr(logging, level or "INFO"), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    # Client libraries log every reconnect attempt; our own errors already say
    # what failed in one line, so theirs show only at DEBUG.
    quiet = logging.DEBUG if level == "DEBUG" else logging.CRITICAL
    for noisy in ("kafka", "librdkafka"):
        logging.getLogger(noisy).setLevel(quiet)
    logging.getLogger("py4j").setLevel(logging.WARNING)


def make_run_dir(run_dir: str | None, base: str = "runs") -> Path:
    path = Path(run_dir) if run_dir else Path(base) / datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: str | Path, obj) -> Path:
    """Atomic: a reader never sees half a report."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


@contextlib.contextmanager
def kafka_session(cfg: KafkaConfig, run_dir: Path) -> Iterator[KafkaConfig]:
    """Yields a config with reachable bootstrap servers: the given ones, or an
    embedded broker's that is stopped on exit (Ctrl-C and exceptions included)."""
    if cfg.bootstrap_servers:
        yield cfg
        return
    from ddp_kbit.broker import EmbeddedBroker

    with EmbeddedBroker(run_dir) as broker:
        logging.getLogger(__name__).info("no --bootstrap-servers: using embedded broker %s (log %s)",
                                         broker.bootstrap_servers, run_dir / "broker.log")
        yield cfg.with_servers(broker.bootstrap_servers)


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that end a command with one line, not a traceback."""
    from ddp_kbit.broker import BrokerError
    from ddp_kbit.codecs import DecodeError
    from ddp_kbit.datasets import DatasetError
    from ddp_kbit.kafka_io import ClientError
    from ddp_kbit.manifest import ManifestError

    return (ConfigError, DatasetError, ClientError, BrokerError, ManifestError, DecodeError, UserError)


class UserError(RuntimeError):
    """A failure the user can act on (e.g. a publish that did not fully land)."""


def run_main(fn: Callable[[list[str] | None], int], argv: list[str] | None = None, prog: str = "ddp-kbit") -> int:
    try:
        return fn(argv)
    except ConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except user_errors() as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130

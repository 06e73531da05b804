"""What every command-line entry point shares: flags whose help shows the config
field's default, config file + flag merging, and the one-clear-line error exit."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable

from ddp_kbit.config import (
    CLIENTS,
    LOG_LEVELS,
    SASL_MECHANISMS,
    SECURITY_PROTOCOLS,
    GeneralConfig,
    KafkaConfig,
    build_group,
    load_config_file,
    sections_of,
)
from ddp_kbit.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, ConfigError, UserError

PASSWORD_ENV = "DDP_KBIT_SASL_PASSWORD"


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def option(group, section: str, cls, name: str, *flags: str, help: str, **kw) -> None:
    """A flag for field ``name`` of config part ``cls`` (stored as ``section.name``);
    its help ends with the field's default, so the two never disagree."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    default = f.default if f.default is not dataclasses.MISSING else None
    if not (default is None or default is False or default == ()) and kw.get("action") != "store_false":
        help = f"{help} (default {_show(default)})"
    flags = flags or (f"--{name.replace('_', '-')}",)
    if "metavar" not in kw and "choices" not in kw and kw.get("action") not in ("store_true", "store_false"):
        kw["metavar"] = flags[0].lstrip("-").replace("-", "_").upper()
    group.add_argument(*flags, dest=f"{section}.{name}", default=None, help=help, **kw)


def options(p: argparse.ArgumentParser, title: str, section: str, cls) -> Callable:
    """An argument group for config part ``cls`` and its ``opt(name, *flags, help=..., **kw)``."""
    g = p.add_argument_group(title)
    return lambda name, *flags, **kw: option(g, section, cls, name, *flags, **kw)


def overrides(args: argparse.Namespace) -> dict[str, dict]:
    """Flags given on the command line, by config section."""
    out: dict[str, dict] = {}
    for dest, value in vars(args).items():
        section, dot, name = dest.partition(".")
        if dot and value is not None:
            out.setdefault(section, {})[name] = value
    if PASSWORD_ENV in os.environ and "sasl_password" not in out.get("kafka", {}):
        out.setdefault("kafka", {})["sasl_password"] = os.environ[PASSWORD_ENV]
    return out


def add_general_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("general")
    g.add_argument("--config", metavar="FILE", help="TOML or JSON file with one section per part "
                   "([general], [kafka], [data], ...); flags given on the command line override it")
    option(g, "general", GeneralConfig, "log_level", type=str.upper, choices=LOG_LEVELS, help="log verbosity")
    option(g, "general", GeneralConfig, "run_dir", metavar="DIR",
           help="where the broker log, reports and checkpoints go (default runs/<timestamp>/)")
    option(g, "general", GeneralConfig, "report", metavar="PATH", help="JSON report path (default <run dir>/report.json)")
    option(g, "general", GeneralConfig, "progress", "--no-progress", action="store_false",
           help="no progress bars (off a terminal they are a log line every 10%% anyway)")


def add_kafka_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("kafka connection")
    opt = lambda name, *flags, **kw: option(g, "kafka", KafkaConfig, name, *flags, **kw)  # noqa: E731
    opt("bootstrap_servers", metavar="HOST:PORT[,...]",
        help="Kafka brokers; when omitted an embedded broker (tansu, memory only) is started "
             "for the duration of the command")
    opt("client", choices=CLIENTS, help="Kafka client library")
    opt("security_protocol", choices=SECURITY_PROTOCOLS, help="how to talk to the brokers")
    opt("sasl_mechanism", choices=SASL_MECHANISMS, help="SASL mechanism for SASL_* protocols")
    opt("sasl_username", help="SASL user name")
    opt("sasl_password", help=f"SASL password (prefer the config file or ${PASSWORD_ENV})")
    opt("ssl_cafile", metavar="PEM", help="CA bundle to verify the brokers")
    opt("ssl_certfile", metavar="PEM", help="client certificate for mutual TLS")
    opt("ssl_keyfile", metavar="PEM", help="client private key for mutual TLS")
    opt("ssl_password", help="password of the client private key")
    opt("request_timeout_s", type=float, metavar="S", help="give up on an unreachable broker after this long")


def config_group(cls, args: argparse.Namespace):
    """A grouping config such as JobConfig, from the config file and the flags."""
    return build_group(cls, load_config_file(args.config, sections_of(cls)), overrides(args))


def run_main(fn: Callable[[list[str] | None], int], argv: list[str] | None = None, prog: str = "ddp-kbit") -> int:
    """Run a command's main: a user error is one line and an exit code, never a traceback."""
    try:
        return fn(argv)
    except ConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except UserError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED

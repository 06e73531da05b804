"""What every command-line entry point shares: flags generated from the config
fields (:func:`ddp_kbit.config.setting` holds each one's help, flag and parser, so
a setting is described once), config file + flag merging, a parser whose mistakes
are one short line with a "did you mean", and the one-clear-line error exit."""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import sys
import types
import typing
from collections.abc import Callable, Iterable

from ddp_kbit.config import build_group, flag_of, flags_of, literal_values, load_config_file, sections_of
from ddp_kbit.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, ConfigError, UserError

PASSWORD_ENV = "DDP_KBIT_SASL_PASSWORD"


class Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one short line: the flag, the nearest real one, and
    where the full help is (not the whole usage of a hundred flags). ``elsewhere``:
    flag -> the other commands that have it."""

    def __init__(self, *args, elsewhere: dict[str, list[str]] | None = None, **kw):
        kw.setdefault("allow_abbrev", False)   # an abbreviation that matches today breaks when a flag is added
        super().__init__(*args, **kw)
        self.elsewhere = elsewhere or {}

    def error(self, message: str) -> typing.NoReturn:
        if message.startswith("unrecognized arguments: "):
            message = self.unknown(message.removeprefix("unrecognized arguments: ").split())
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n(usage: {self.prog} [flags]; all of them: "
                              f"{self.prog} --help)\n")

    def unknown(self, words: list[str]) -> str:
        flag = next((w.split("=", 1)[0] for w in words if w.startswith("-")), words[0])
        if flag in self.elsewhere:
            return f"{flag} is not a flag of this command; it belongs to {' and '.join(self.elsewhere[flag])}"
        close = difflib.get_close_matches(flag, [s for s in self._option_string_actions if s.startswith("--")],
                                          n=1, cutoff=0.75)
        if close:
            return f"unknown flag {flag}; did you mean {close[0]}?"
        return f"unknown flag {flag}" if flag.startswith("-") else f"unexpected argument {flag!r}"


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _plain(hint):
    """``X | None`` -> X."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _parser_of(fn: Callable[[str], object]) -> Callable[[str], object]:
    """A parse function whose ConfigError argparse shows as it is."""
    def parse(text: str):
        try:
            return fn(text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    parse.__name__ = getattr(fn, "__name__", "value")
    return parse


def comma_list(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def add_field(group, section: str, f: dataclasses.Field, hint) -> None:
    """The flag of one config field, stored as ``section.name`` (None: not given)."""
    meta, base = f.metadata, _plain(hint)
    kw: dict = {"dest": f"{section}.{f.name}", "default": None}
    allowed = literal_values(hint)
    help = meta["help"]
    if base is bool:
        kw["action"] = "store_false" if meta["negate"] else "store_true"
    else:
        many = typing.get_origin(base) is tuple
        if meta["repeat"]:
            kw["action"] = "append"
        parse = meta["parse"] or (comma_list if many and not meta["repeat"] else
                                  {int: int, float: float}.get(base, str))
        kw["type"] = _parser_of(parse) if meta["parse"] else parse
        if allowed and not many:
            kw["choices"] = allowed
        else:
            kw["metavar"] = meta["metavar"] or flag_of(f).lstrip("-").replace("-", "_").upper()
        if allowed and many:
            help = f"{help}: {', '.join(allowed)}" if ", ".join(allowed) not in help else help
    default = f.default
    if not (default is None or default is False or default == () or meta["negate"]):
        help = f"{help} (default {_show(default)})"
    group.add_argument(flag_of(f), help=help, **kw)


def add_sections(p: argparse.ArgumentParser, group_cls, sections: Iterable[str],
                 only: dict[str, set[str]] | None = None) -> None:
    """One argument group per config section (``only``: some of a section's fields); a
    field may sit with another section's flags (``--follow`` with the follow group)."""
    parts, only = sections_of(group_cls), only or {}
    groups: dict[str, argparse._ArgumentGroup] = {}
    for section in sections:
        groups[section] = p.add_argument_group(parts[section].title)
    for section in sections:
        hints = typing.get_type_hints(parts[section])
        for f in flags_of(parts[section]):
            if section in only and f.name not in only[section]:
                continue
            add_field(groups.get(f.metadata.get("group") or section, groups[section]), section, f, hints[f.name])


def add_config_file(p: argparse.ArgumentParser, sections: Iterable[str]) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML or JSON file with one section per part "
                   f"({', '.join(f'[{s}]' for s in sections)}); flags given on the command line override it")


def overrides(args: argparse.Namespace) -> dict[str, dict]:
    """Flags given on the command line, by config section."""
    out: dict[str, dict] = {}
    for dest, value in vars(args).items():
        section, dot, name = dest.partition(".")
        if dot and value is not None:
            out.setdefault(section, {})[name] = value
    if PASSWORD_ENV in os.environ and "sasl_password" not in out.get("kafka", {}) and "kafka" in _sections(args):
        out.setdefault("kafka", {})["sasl_password"] = os.environ[PASSWORD_ENV]
    return out


def _sections(args: argparse.Namespace) -> set[str]:
    return {dest.partition(".")[0] for dest in vars(args) if "." in dest}


def config_group(cls, args: argparse.Namespace, base: dict | None = None):
    """A grouping config such as JobConfig, from (``base`` <) the config file < the flags."""
    file_cfg = load_config_file(getattr(args, "config", None), sections_of(cls))
    for section, values in (base or {}).items():
        file_cfg = {**file_cfg, section: {**values, **file_cfg.get(section, {})}}
    return build_group(cls, file_cfg, overrides(args))


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


def settings_reference(groups) -> str:
    """Markdown: every setting of the config groups, by section (config file key, flag,
    default, help), from the fields themselves (docs/reference/settings.md)."""
    out = ["# Settings", "",
           "Every setting, by config file section: its key, its flag, its default and what it does. A config "
           "file (`--config FILE`, TOML or JSON) has one section per part; flags override it. Generated from "
           "the config fields by `python scripts/settings_reference.py` (a test keeps this page equal to them).", ""]
    seen = set()
    for group in groups:
        for section, part in sections_of(group).items():
            if section in seen:
                continue
            seen.add(section)
            doc = " ".join((part.__doc__ or "").split("\n\n")[0].split())
            about = part.title if doc.startswith(f"{part.__name__}(") else doc   # (a dataclass's own doc)
            out += [f"## [{section}]", "", _md(about), "", "| key | flag | default | meaning |", "|---|---|---|---|"]
            for f in dataclasses.fields(part):
                if not f.metadata.get("help") and not f.metadata.get("cli"):
                    continue
                flag = f"`{flag_of(f)}`" if f.metadata.get("cli") else "(file only)"
                default = "" if f.default is None or not f.repr else f"`{_show(f.default)}`"
                out.append(f"| `{f.name}` | {flag} | {default} | {_md(f.metadata['help'].replace('%%', '%'))} |")
            out.append("")
    return "\n".join(out)


def _md(text: str) -> str:
    """Plain text in a Markdown table cell: no HTML tags, no column breaks."""
    return text.replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")

"""Try cluster mode on one machine: a Spark standalone master and workers from the
installed pyspark, as separate JVMs.

    python -m ddp_kbit.main_cluster up --workers 2       # prints the spark:// URL; RPC authentication on
    python -m ddp_kbit.main --mode train --distributed --master spark://127.0.0.1:PORT   # finds its secret
    python -m ddp_kbit.main_cluster status
    python -m ddp_kbit.main_cluster down                 # stops them (by process group)
"""
from __future__ import annotations

import argparse
import json
import secrets
import signal
import sys
from pathlib import Path

from ddp_kbit import cli
from ddp_kbit.errors import UserError
from ddp_kbit.launch.cluster import STATE, StandaloneCluster, write_private
from ddp_kbit.procs import kill_group

DEFAULT_STATE = STATE


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ddp_kbit.main_cluster", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("up", "down", "status"), help="start, stop, or describe the cluster")
    p.add_argument("--workers", type=int, default=2, help="worker JVMs (default 2)")
    p.add_argument("--cores", type=int, default=1, help="cores each worker offers (default 1)")
    p.add_argument("--memory", default="1g", help="memory each worker offers (default 1g)")
    p.add_argument("--work-dir", metavar="DIR", help="logs and worker directories (default /tmp/ddp_kbit-cluster-<pid>)")
    p.add_argument("--state", metavar="FILE", default=str(DEFAULT_STATE),
                   help=f"where up records the cluster for status and down (default {DEFAULT_STATE})")
    p.add_argument("--no-auth", action="store_true",
                   help="no RPC authentication (by default up generates a secret, FILE.secret beside --state, "
                        "and the cluster refuses drivers without it; runs against it find it there)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    state = Path(args.state)
    if args.action == "up":
        if state.exists():
            raise UserError(f"a cluster is already recorded in {state}; run `python -m ddp_kbit.main_cluster down` first")
        state.parent.mkdir(parents=True, exist_ok=True)
        secret = None if args.no_auth else write_private(state.with_suffix(".secret"), secrets.token_hex(32))
        cluster = StandaloneCluster(args.workers, args.cores, args.memory, args.work_dir, detach=True,
                                    secret_file=secret).start()
        state.write_text(json.dumps({"master_url": cluster.master_url, "webui": cluster.webui,
                                     "work_dir": str(cluster.work_dir), "pids": cluster.pids(),
                                     "secret_file": str(secret) if secret else None}, indent=2))
        print(cluster.master_url)
        return 0
    if not state.exists():
        raise UserError(f"no cluster recorded in {state}")
    info = json.loads(state.read_text())
    if args.action == "status":
        print(json.dumps(info, indent=2))
        return 0
    for pid in info["pids"].values():
        kill_group(pid, signal.SIGTERM)
    for leftover in (info.get("secret_file"), str(Path(info["work_dir"]) / "auth.properties")):
        if leftover:
            Path(leftover).unlink(missing_ok=True)
    state.unlink()
    print(f"stopped {info['master_url']}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main, prog="ddp_kbit.main_cluster"))

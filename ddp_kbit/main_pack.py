"""Build the package zip for executors that do not have ddp_kbit:

    python -m ddp_kbit.main_pack [--output-dir dist]
    spark-submit --master spark://m:7077 --py-files dist/ddp_kbit.zip dist/ddp_kbit_main.py \\
        --mode train --distributed --ship-package --bootstrap-servers kafka:9092
"""
from __future__ import annotations

import argparse
import sys

from ddp_kbit import cli
from ddp_kbit.launch.pack import write


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ddp_kbit.main_pack", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", default="dist", help="where ddp_kbit.zip and ddp_kbit_main.py go (default dist)")
    args = p.parse_args(argv)
    zpath, main_py = write(args.output_dir)
    print(f"{zpath} ({zpath.stat().st_size:,} bytes)\n{main_py}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main, prog="ddp_kbit.main_pack"))

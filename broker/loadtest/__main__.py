"""``python3 -m broker.loadtest …``: the same as ``dueslag bench …``."""

from __future__ import annotations

import argparse
import sys

from broker.loadtest.command import add_bench_arguments, run_bench


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dueslag bench",
        description="Drive a load test against a dueslag broker; report throughput, latency, loss.",
    )
    add_bench_arguments(parser)
    return run_bench(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

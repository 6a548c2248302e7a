"""``dueslag bench``: the command-line face of the load tester.

``cli.py`` wires it up::

    b = sub.add_parser("bench", help="drive a load test and report throughput, latency, loss")
    add_bench_arguments(b)
    ...
    if args.command == "bench":
        return run_bench(args)

Exit status: 0 the run finished and every envelope is accounted for; 1 the run could not be made
(unreachable broker, refused set-up, no stream channel); 2 a bad scenario or option; 3 the run
finished but found lost or duplicated envelopes (the JSON is written all the same).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

__all__ = ["EXIT_BAD_SCENARIO", "EXIT_FAILED", "EXIT_LOST", "add_bench_arguments", "run_bench"]

EXIT_FAILED = 1
EXIT_BAD_SCENARIO = 2
EXIT_LOST = 3


def _rate(text: str) -> float | str:
    if text == "max":
        return "max"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a rate: {text!r} (envelopes/s, or 'max')") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("the rate must be > 0 (or 'max')")
    return value


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``bench`` options to ``parser`` (the contract's flags and the overrides)."""
    from broker.loadtest.scenario import scenario_names

    parser.add_argument(
        "--broker",
        default=os.environ.get("DUESLAG_URL", "http://127.0.0.1:8080"),
        help="broker URL, the only host the bench talks to ($DUESLAG_URL; default %(default)s)",
    )
    parser.add_argument(
        "--admin-token",
        default=os.environ.get("DUESLAG_ADMIN_TOKEN"),
        help="admin token: the bench creates its own systems, agreements and mailboxes "
        "($DUESLAG_ADMIN_TOKEN)",
    )
    parser.add_argument(
        "--scenario",
        default="fanout",
        help=f"a built-in ({', '.join(scenario_names())}) or a JSON file of scenario fields "
        "(default %(default)s)",
    )
    parser.add_argument("--duration", type=float, default=None, help="seconds of load")
    parser.add_argument("--json", required=True, metavar="FILE", help="write the result here")
    parser.add_argument("--chart", metavar="FILE.png", default=None, help="write a PNG chart")
    over = parser.add_argument_group("scenario overrides")
    over.add_argument(
        "--rate", type=_rate, default=None, help="envelopes/s over all senders, or 'max'"
    )
    over.add_argument("--batch", type=int, default=None, help="envelopes per request or frame")
    over.add_argument("--senders", type=int, default=None, help="concurrent senders")
    over.add_argument("--receivers", type=int, default=None, help="receiving systems")
    over.add_argument("--count", type=int, default=None, help="stop after this many envelopes")
    over.add_argument(
        "--consume",
        choices=["poll", "stream"],
        default=None,
        help="receive by HTTP long-poll + ack, or on the WebSocket consume stream",
    )
    over.add_argument(
        "--drain", type=float, default=None, help="max seconds to drain after the load"
    )
    over.add_argument("--quiet", action="store_true", help="no live display, no summary line")


def _summary(report: dict[str, Any]) -> str:
    tp, lat = report["throughput"], report["latency_ms"]
    line = (
        f"{report['scenario']}: sent {report['sent']:,}, confirmed {report['confirmed']:,}, "
        f"delivered {report['delivered']:,}, lost {report['lost']}, duplicates "
        f"{report['duplicates']}; publish {tp['publish_per_s']}/s, deliver "
        f"{tp['deliver_per_s']}/s; send→delivered p50 {lat['p50']} ms, p99 {lat['p99']} ms"
    )
    broker = lat.get("broker") or {}
    if broker.get("count"):
        line += f" (the broker's share p50 {broker['p50']} ms, p99 {broker['p99']} ms)"
    ratios = [
        f"{b['ratio']} of {b['endpoint']}"
        for b in (report.get("baseline"), report.get("baseline_post"))
        if b and b.get("ratio") is not None
    ]
    return line + (f"; requests/s {', '.join(ratios)}" if ratios else "")


def run_bench(args: argparse.Namespace) -> int:
    """Run the bench as parsed by :func:`add_bench_arguments`; returns the exit status."""
    import trio

    from broker.loadtest.progress import want_display
    from broker.loadtest.report import write_chart, write_json
    from broker.loadtest.runner import BenchError, run_scenario
    from broker.loadtest.scenario import ScenarioError, load_scenario, with_overrides

    if not args.admin_token:
        print("dueslag bench: --admin-token (or $DUESLAG_ADMIN_TOKEN) is required", file=sys.stderr)
        return EXIT_BAD_SCENARIO
    try:
        scenario = with_overrides(
            load_scenario(args.scenario),
            duration_s=args.duration,
            rate=args.rate,
            batch=args.batch,
            senders=args.senders,
            receivers=args.receivers,
            count=args.count,
            drain_s=args.drain,
            consume=args.consume,
        )
    except ScenarioError as exc:
        print(f"dueslag bench: {exc}", file=sys.stderr)
        return EXIT_BAD_SCENARIO
    try:
        report = trio.run(
            lambda: run_scenario(
                scenario,
                args.broker,
                args.admin_token,
                display=want_display(args.quiet),
            )
        )
    except (BenchError, ScenarioError) as exc:
        print(f"dueslag bench: {exc}", file=sys.stderr)
        return EXIT_FAILED
    write_json(args.json, report)
    if args.chart:
        try:
            write_chart(args.chart, report)
        except ImportError:
            print(
                "dueslag bench: --chart needs matplotlib (pip install matplotlib)", file=sys.stderr
            )
            return EXIT_FAILED
    if not args.quiet:
        print(_summary(report))
    return EXIT_LOST if report["lost"] or report["duplicates"] else 0

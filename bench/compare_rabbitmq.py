"""dueslag against RabbitMQ: the same workload against both, in the same run, as ratios.

Usage (from the repository root; root, because RabbitMQ may have to be installed)::

    python3 bench/compare_rabbitmq.py --json result.json [--duration 10] [--workers 2] [--rounds 3]

writes ``{"scenarios": [{"name", "dueslag_per_s", "rabbitmq_per_s", "ratio"}, …], …}`` and
prints the same as a table. ``ratio`` is dueslag / RabbitMQ.

What it does:

1. **dueslag**, per scenario on a fresh server (``python -m cli serve`` on 127.0.0.1, a temp
   data dir, sync and access control on: the defaults; ``--workers N`` serves with N processes
   on the one store, as RabbitMQ's Erlang VM uses every core), its own load tester as a subprocess
   (``python -m broker.loadtest --quiet``, the same as ``dueslag bench``):
   ``publish-batch`` = ``fanout``'s ``publish_per_s`` (100 per POST, consumers draining
   concurrently; ``--window`` × ``--publishers`` / 100 senders, so that as many envelopes are
   unconfirmed at once as on RabbitMQ's side: 10 by default, see :func:`in_flight_args`), ``publish-stream`` = ``stream``'s ``publish_per_s`` (one envelope per
   WebSocket frame, window 1,000, consumers concurrent), ``consume`` = ``drain``'s
   ``deliver_per_s`` (a backlog ingested for ``--duration``, with as many envelopes in flight as
   ``publish-batch``, then drained). One more row is read off the ``consume`` runs:
   ``publish-alone``, the publish rate of that ingest, with no consumer running on either side
   (RabbitMQ's prefill), which is how the issue's batch target was first measured.
2. **RabbitMQ**: Debian's ``rabbitmq-server`` (``apt-get install`` only if missing), started as a
   private child node on 127.0.0.1 (``bench/rabbitmq_node.py``); the same topology as dueslag's
   plan (one durable topic exchange, one durable classic queue per mailbox, one binding per
   subscribed type, so each envelope reaches the same 1–3 queues), the bench's own envelope
   bytes, persistent messages (delivery mode 2), publisher confirms pipelined with a window per
   connection, Node's amqplib (``bench/rabbitmq_client.js``). RabbitMQ has no batch publish, so
   both publish scenarios run the same way: one message per ``basic.publish`` on ``--publishers``
   connections (default 1), a window of ``--window`` unconfirmed (default 1,000) each. Consumers
   (2 connections, one channel per queue, manual acks, prefetch ``--prefetch``) run concurrently
   during both, as dueslag's receivers do; ``consume`` prefills the queues for ``--duration``
   with no consumer, then consumes them to empty.
3. With ``--rounds N``, both sides run N times, one after the other; each row then holds the
   median of each side and, as ``ratio``, the median of the rounds' own ratios
   (``comparison.combine``), with every round's figures under ``rounds``. On a shared machine
   whose speed moves by tens of percent within the hour, one pair is a sample, not a figure.
4. Stops everything it started (servers, the RabbitMQ node and its epmd, clients), also on
   Ctrl-C or an error; every step is bounded in count and time; only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))

from comparison import alone_row, combine, dueslag_figure, row, table  # noqa: E402

from broker.loadtest.report import host_load  # noqa: E402
from broker.loadtest.scenario import BUILTIN, MAX_ENVELOPES, Scenario  # noqa: E402
from tests.serverproc import ServerProcess  # noqa: E402

#: name -> (dueslag built-in scenario, its throughput key)
SCENARIOS: dict[str, tuple[str, str]] = {
    "publish-batch": ("fanout", "publish_per_s"),
    "publish-stream": ("stream", "publish_per_s"),
    "consume": ("drain", "deliver_per_s"),
}
BENCH_MARGIN_S = 300.0  # set-up, grace, drain and clean-up on top of --duration


def log(msg: str) -> None:
    print(f"compare_rabbitmq: {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", required=True, metavar="FILE", help="write the result here")
    p.add_argument(
        "--duration", type=float, default=10.0, help="seconds of load per scenario and side"
    )
    p.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help="comma-separated subset of %(default)s",
    )
    p.add_argument("--window", type=int, default=1000, help="RabbitMQ: unconfirmed per connection")
    p.add_argument(
        "--publishers", type=int, default=1, help="RabbitMQ: publishing connections (1..16)"
    )
    p.add_argument("--prefetch", type=int, default=1000, help="RabbitMQ: prefetch per consumer")
    p.add_argument(
        "--envelopes", type=int, default=10_000, help="distinct envelopes the publisher cycles"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="dueslag: serve --workers N (1..8; RabbitMQ's Erlang VM uses every core by itself)",
    )
    p.add_argument(
        "--writer",
        choices=("auto", "thread", "process"),
        default="auto",
        help="dueslag: serve --writer MODE (where commits run; default: the server's auto)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat both sides N times (1..10); each row is then the median over the rounds",
    )
    p.add_argument(
        "--only",
        choices=("dueslag", "rabbitmq"),
        default=None,
        help="run one side only (for debugging: no ratios then)",
    )
    args = p.parse_args(argv)
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in names if s not in SCENARIOS]
    if unknown or not names:
        p.error(f"unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}")
    if not 0 < args.duration <= 600:
        p.error("--duration must be in (0, 600]")
    if not (1 <= args.window <= 100_000 and 1 <= args.prefetch <= 65535):
        p.error("--window must be in 1..100000 and --prefetch in 1..65535")
    if not 1 <= args.publishers <= 16:
        p.error("--publishers must be in 1..16")
    if not 1 <= args.workers <= 8:
        p.error("--workers must be in 1..8")
    if not 1 <= args.rounds <= 10:
        p.error("--rounds must be in 1..10")
    if not 1000 <= args.envelopes <= 200_000:
        p.error("--envelopes must be in 1000..200000")
    args.scenarios = names
    return args


# ------------------------------------------------------------------ dueslag side


def in_flight_args(name: str, window: int, publishers: int) -> list[str]:
    """``dueslag bench`` overrides that put as many envelopes in flight (sent, not yet
    confirmed) as RabbitMQ's side has: ``publishers`` connections of ``window`` unconfirmed.

    A batch sender has one request of ``batch`` envelopes in flight, so ``publish-batch`` gets
    ``window * publishers / batch`` senders (the built-in ``fanout`` has 4, 400 in flight:
    less than half of RabbitMQ's 1,000). ``consume``'s ingest (the ``drain`` scenario's, also
    batches of 100) gets as many, since its publish rate is the ``publish-alone`` row and
    RabbitMQ prefills its queues with the same window. A stream sender already has ``window`` in
    flight (the built-in ``stream``: 1,000), so ``publish-stream`` gets one sender per
    publisher. (The stream's window is its scenario's 1,000, ``--window``'s default; the bench
    has no window option.)
    """
    builtin, _ = SCENARIOS[name]
    sc = BUILTIN[builtin]
    if name in ("publish-batch", "consume"):
        senders = max(1, min(256, window * publishers // sc.batch))
    elif name == "publish-stream":
        senders = publishers
    else:
        return []
    return [] if senders == sc.senders else ["--senders", str(senders)]


class DueslagServer(ServerProcess):
    """``tests/serverproc.py``'s server, with access control ON (the default) and sync on."""

    def command(self, port: int) -> list[str]:
        return [a for a in super().command(port) if a != "--no-access-control"]


def fetch_plan_inputs(srv: DueslagServer) -> tuple[bytes, list[dict[str, Any]]]:
    import httpx

    with httpx.Client(base_url=srv.url, timeout=30.0, trust_env=False) as c:
        catalog = c.get("/v1/catalog/message-types")
        catalog.raise_for_status()
        auth = c.get("/v1/authorities", headers={"Authorization": f"Bearer {srv.admin_token}"})
        auth.raise_for_status()
    return catalog.content, list(auth.json()["authorities"])


def run_dueslag(
    name: str,
    duration: float,
    out: Path,
    work: Path,
    workers: int = 1,
    extra: Sequence[str] = (),
    writer: str = "auto",
) -> dict[str, Any]:
    """One fresh server (``workers`` processes), one ``dueslag bench`` run with the
    ``extra`` options; the bench's JSON (plus its exit status)."""
    builtin, _ = SCENARIOS[name]
    serve_args = ["--writer", writer]
    with DueslagServer(work / f"dueslag-{name}", workers=workers, extra_args=serve_args) as srv:
        cmd = [
            sys.executable, "-m", "broker.loadtest", "--broker", srv.url,
            "--admin-token", srv.admin_token, "--scenario", builtin,
            "--duration", f"{duration:g}", "--json", str(out), "--quiet", *extra,
        ]  # fmt: skip
        log(f"dueslag {name}: {' '.join(cmd[1:5] + cmd[7:])}")  # not the token (cmd[5:7])
        r = subprocess.run(
            cmd, cwd=REPO_ROOT, capture_output=True, text=True,
            timeout=duration + BENCH_MARGIN_S, check=False,
        )  # fmt: skip
    if r.returncode not in (0, 3) or not out.exists():
        raise RuntimeError(f"dueslag bench {builtin} exited {r.returncode}: {r.stderr[-1500:]}")
    report: dict[str, Any] = json.loads(out.read_text())
    report["_exit"] = r.returncode
    return report


# ------------------------------------------------------------------ RabbitMQ side


def run_rabbitmq(
    name: str, sc: Scenario, wl: Any, args: argparse.Namespace
) -> tuple[float | None, dict[str, Any]]:
    """One scenario against the node behind ``wl`` (a fresh topology first)."""
    from rabbitmq_workload import BackgroundConsumer, run_client

    d = args.duration
    run_client(wl, "setup", 60)
    pub = dict(
        connections=args.publishers, window=args.window, duration_s=d,
        count=sc.count or MAX_ENVELOPES,
    )  # fmt: skip
    cons = dict(connections=sc.receivers, prefetch=args.prefetch, ack_every=100)
    if name == "consume":
        prefill = run_client(wl, "publish", d + 60, **pub)
        log(f"rabbitmq consume: prefilled {prefill['confirmed']:,} messages")
        got = run_client(wl, "consume", d + sc.drain_s + 60, max_s=sc.drain_s + 30, **cons)
        return got["per_s"], {"prefill": prefill, "consume": got}
    bg = BackgroundConsumer(wl, sc.drain_s + 60, max_s=d + sc.drain_s + 30, **cons)
    try:
        got = run_client(wl, "publish", d + 60, **pub)
        consumed = bg.finish()
    finally:
        bg.kill()
    return got["per_s"], {"publish": got, "concurrent_consume": consumed}


def rabbitmq_side(
    args: argparse.Namespace, catalog: bytes, authorities: list[dict[str, Any]], work: Path
) -> tuple[dict[str, tuple[float | None, dict[str, Any]]], dict[str, Any]]:
    from rabbitmq_node import RabbitNode, ensure_installed
    from rabbitmq_workload import (
        AmqpWorkload,
        ensure_amqplib,
        plan,
        rabbit_topology,
        route,
        write_envelopes,
    )

    version = ensure_installed(log)
    amqplib = ensure_amqplib(log)
    node_v = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=30)
    topology, cvrs = plan(catalog, authorities, BUILTIN["fanout"])
    queues, bindings = rabbit_topology(topology)
    for t, mbs in enumerate(topology.routes):  # the exchange routes as dueslag's plan expects
        assert route(bindings, topology.types[t].id) == [queues[m] for m in mbs]
    env_file = work / "envelopes.tsv"
    envelopes = write_envelopes(env_file, topology, cvrs, BUILTIN["fanout"], args.envelopes)
    meta = {
        "rabbitmq_version": version,
        "rabbitmq_client": f"node {node_v.stdout.strip()} amqplib {amqplib}",
        "rabbitmq_queue_type": "classic (durable), durable topic exchange",
        "rabbitmq_topology": {"queues": len(queues), "bindings": len(bindings), **envelopes},
        "authorities": cvrs,
        "fanout_per_type": [len(r) for r in topology.routes],
    }
    results: dict[str, tuple[float | None, dict[str, Any]]] = {}
    with RabbitNode(log) as node:
        wl = AmqpWorkload(node.url, topology, env_file, work)
        for name in args.scenarios:
            sc = BUILTIN[SCENARIOS[name][0]]
            try:
                results[name] = run_rabbitmq(name, sc, wl, args)
                log(f"rabbitmq {name}: {results[name][0]}/s")
            except (RuntimeError, subprocess.TimeoutExpired, KeyError, ValueError) as exc:
                log(f"rabbitmq {name} failed: {exc}")
                results[name] = (None, {"error": str(exc)})
    return results, meta


# ------------------------------------------------------------------ main


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def one_round(
    args: argparse.Namespace, out: Path, work: Path, plan_inputs: tuple[bytes, list[Any]], k: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Both sides once (dueslag first, then RabbitMQ): the contract rows and RabbitMQ's facts."""
    skipped = (None, {"error": "skipped (--only)"})
    prefix = out.stem if args.rounds == 1 else f"{out.stem}.r{k}"
    dueslag: dict[str, tuple[float | None, dict[str, Any]]] = {}
    for name in args.scenarios:
        if args.only == "rabbitmq":
            dueslag[name] = skipped
            continue
        raw = out.with_name(f"{prefix}.dueslag-{name}.json")
        try:
            extra = in_flight_args(name, args.window, args.publishers)
            report = run_dueslag(name, args.duration, raw, work, args.workers, extra, args.writer)
            fig, summary = dueslag_figure(report, SCENARIOS[name][1])
            summary.update(json=str(raw), exit=report["_exit"], bench_args=extra)
            summary["fanout_per_type"] = (report.get("setup") or {}).get("fanout_per_type")
            dueslag[name] = (fig, summary)
            log(f"dueslag {name}: {fig}/s (valid: {summary['valid']})")
        except (RuntimeError, subprocess.TimeoutExpired, OSError, ValueError) as exc:
            log(f"dueslag {name} failed: {exc}")
            dueslag[name] = (None, {"error": str(exc)})
    meta: dict[str, Any] = {"rabbitmq_version": None, "rabbitmq_client": None}
    rabbit = dict.fromkeys(args.scenarios, skipped)
    if args.only != "dueslag":
        try:
            rabbit, meta = rabbitmq_side(args, *plan_inputs, work)
        except (RuntimeError, OSError, subprocess.SubprocessError, AssertionError) as exc:
            log(f"the RabbitMQ side failed: {exc}")
            rabbit = dict.fromkeys(args.scenarios, (None, {"error": str(exc)}))
    rows = []
    for name in args.scenarios:
        (d, d_info), (r, r_info) = dueslag[name], rabbit[name]
        if d_info.get("fanout_per_type") not in (None, meta.get("fanout_per_type")):
            d_info["note"] = "fan-out differs from the RabbitMQ topology"
        rows.append(row(name, d, r, dueslag=d_info, rabbitmq=r_info))
    if "consume" in args.scenarios:
        rows.append(alone_row(rows[args.scenarios.index("consume")]))
    return rows, meta


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)  # so every finally (and context manager) runs
    out = Path(args.json)
    t0 = time.monotonic()
    host_before = host_load()
    rounds: list[list[dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="dueslag-vs-rabbitmq-") as tmp:
        work = Path(tmp)
        with DueslagServer(work / "dueslag-plan") as srv:  # the catalog the bench will plan on
            plan_inputs = fetch_plan_inputs(srv)
        for k in range(1, args.rounds + 1):
            if args.rounds > 1:
                log(f"round {k} of {args.rounds}")
            rows, meta = one_round(args, out, work, plan_inputs, k)
            rounds.append(rows)
    rows = rounds[0] if args.rounds == 1 else combine(rounds)
    result = {
        "scenarios": rows,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "dueslag_workers": args.workers,
        "dueslag_writer": args.writer,
        **meta,
        "method": "same run, dueslag first then RabbitMQ; ratio = dueslag / RabbitMQ "
        "(with --rounds N: the median of the rounds' ratios); "
        "RabbitMQ publishes one message per basic.publish in both publish scenarios "
        "(it has no batch publish); both sides keep the same number of unconfirmed "
        "envelopes in flight (publishers x window); sync on, access control on",
        "host_load": {"before": host_before, "after": host_load()},
        "wall_s": round(time.monotonic() - t0, 1),
        "argv": sys.argv,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows))
    print(f"(RabbitMQ {meta['rabbitmq_version']}, {meta['rabbitmq_client']}; JSON in {out})")
    return 0 if all(r["ratio"] is not None for r in rows) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted; what this run started has been stopped")
        sys.exit(130)

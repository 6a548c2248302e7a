"""The result of a run: the contract's JSON (plus details), and the PNG chart.

The contract keys come first and keep their meaning forever::

    {"scenario", "sent", "confirmed", "delivered", "lost", "duplicates",
     "throughput": {"publish_per_s", "deliver_per_s"}, "latency_ms": {"p50", "p99"}}

``latency_ms.p50/p99`` are send→delivered (what a municipality's system waits for);
``latency_ms.confirm`` and ``latency_ms.delivered`` hold the full percentiles of both
histograms. Everything else is extra and may grow: the accounting's other terms, the server's
counter deltas and whether they agree with the bench (``checks``), the timeline, the scenario.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import msgspec

from broker.loadtest.ledger import Accounting
from broker.loadtest.receivers import BROKER_SAMPLE
from broker.loadtest.state import RunState

__all__ = ["build_report", "host_load", "write_chart", "write_json"]


def host_load() -> dict[str, Any] | None:
    """This machine's load average and CPU pressure (Linux PSI), or None elsewhere.

    The bench usually shares its machine with the broker: a busy machine (other processes
    waiting for a CPU) makes every figure lower, and this says how busy it was.
    """
    out: dict[str, Any] = {}
    try:
        with open("/proc/loadavg", encoding="ascii") as f:
            out["loadavg"] = [float(x) for x in f.read().split()[:3]]
    except (OSError, ValueError):
        return None
    try:
        with open("/proc/pressure/cpu", encoding="ascii") as f:
            some = f.readline().split()
        out["cpu_pressure_some_avg10"] = float(some[1].split("=")[1])
    except (OSError, ValueError, IndexError):
        pass
    return out


def _rate(count: int, start: float | None, end: float | None) -> tuple[float | None, float | None]:
    if start is None or end is None or end <= start:
        return None, None
    window = end - start
    return round(count / window, 1), round(window, 3)


def _with_ratio(
    baseline: dict[str, Any] | None, publish_per_s: float | None, per_request: int
) -> dict[str, Any] | None:
    """A baseline with ``ratio``: the scenario's requests/s over the baseline's (and over
    each of its ``runs``, before and after the load)."""
    if not baseline:
        return None
    out = dict(baseline)
    if out.get("per_s") and publish_per_s:
        out["ratio"] = round(publish_per_s / per_request / out["per_s"], 3)
    if "runs" in out:
        out["runs"] = [_with_ratio(run, publish_per_s, per_request) for run in out["runs"]]
    return out


def build_report(
    state: RunState,
    acc: Accounting,
    *,
    broker: str,
    run_id: str,
    started: str,
    setup: dict[str, Any],
    server: dict[str, Any] | None,
    drain_s: float,
    client_cpu_s: float,
    host: dict[str, Any] | None = None,
) -> dict[str, Any]:
    sc = state.scenario
    publish_per_s, publish_window = _rate(acc.confirmed, state.t_load, state.t_last_confirm)
    deliver_per_s, deliver_window = _rate(acc.delivered, state.t_receive, state.t_last_delivery)
    delivered = state.deliver_latency.summary()
    confirm = state.confirm_latency.summary()
    # requests/s of the scenario vs of the trivial endpoint, same senders, same run
    baseline = _with_ratio(state.baseline, publish_per_s, sc.batch)
    baseline_post = _with_ratio(state.baseline_post, publish_per_s, sc.batch)
    load_s = None
    if state.t_load is not None and state.t_load_end is not None:
        load_s = round(state.t_load_end - state.t_load, 3)
    report: dict[str, Any] = {
        "scenario": sc.name,
        "sent": acc.sent,
        "confirmed": acc.confirmed,
        "delivered": acc.delivered,
        "lost": acc.lost,
        "duplicates": acc.duplicates,
        "throughput": {
            "publish_per_s": publish_per_s,
            "deliver_per_s": deliver_per_s,
            "publish_window_s": publish_window,
            "deliver_window_s": deliver_window,
            "offered_per_s": sc.rate,
        },
        "latency_ms": {
            "p50": delivered.get("p50"),
            "p99": delivered.get("p99"),
            "delivered": {**delivered, "distribution": state.deliver_latency.distribution()},
            "confirm": {**confirm, "distribution": state.confirm_latency.distribution()},
            # the broker's own share of send->delivered, by its clock (ms resolution)
            "broker": {**state.broker_latency.summary(), "sampled_every": BROKER_SAMPLE},
        },
        "accounting": {
            "refused": acc.refused,
            "refused_by_code": acc.refused_by_code,
            "unconfirmed": acc.unconfirmed,
            "expected_deliveries": acc.expected_deliveries,
            "lost_deliveries": acc.lost_deliveries,
            "redelivered": acc.redelivered,
            "misrouted": acc.misrouted,
            "foreign": acc.foreign,
            "received": state.received,
            "acked": state.acked,
            "ack_failed": dict(state.ack_failed),
        },
        "events": dict(state.events),
        "errors": state.errors,
        "timing": {
            "load_s": load_s,
            "drain_s": round(drain_s, 3),
            "client_cpu_s": round(client_cpu_s, 3),
            # the load generator's share of one core over load + drain: near 1.0 means the
            # bench itself (one Python process) may be what bounds the figures
            "client_cpu_share": (
                round(client_cpu_s / (load_s + drain_s), 3) if load_s and load_s + drain_s else None
            ),
        },
        "server": server,
        "checks": _checks(acc, state, server),
        "baseline": baseline,
        "baseline_post": baseline_post,
        "setup": setup,
        "scenario_config": msgspec.to_builtins(sc),
        "run": {
            "id": run_id,
            "broker": broker,
            "started": started,
            "python": platform.python_version(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
            "argv": sys.argv,
            "host_load": host,
        },
        "timeline": [s.to_dict() for s in state.timeline],
    }
    return report


def _checks(acc: Accounting, state: RunState, server: dict[str, Any] | None) -> dict[str, Any]:
    """Does the bench agree with the broker's own counters? (exact only when it ran alone)"""
    checks: dict[str, Any] = {"all_accounted": acc.lost == 0 and acc.duplicates == 0}
    if server is None:
        return checks
    checks["accepted_equals_confirmed"] = server["envelopes_accepted"] == acc.confirmed
    checks["acked_equals_bench_acks"] = server["deliveries_acked"] == state.acked
    checks["created_equals_expected"] = server["deliveries_created"] == acc.expected_deliveries
    checks["leased_equals_received"] = server["deliveries_leased"] == state.received
    return checks


def write_json(path: str | Path, report: dict[str, Any]) -> None:
    p = Path(path)
    if p.parent and not p.parent.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(p)


def write_chart(path: str | Path, report: dict[str, Any]) -> None:
    """Throughput over time, latency percentiles over time, and the latency distributions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timeline = report["timeline"]
    t = [s["t"] for s in timeline]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(10, 11))
    title = (
        f"dueslag bench · {report['scenario']} · sent {report['sent']:,} · "
        f"lost {report['lost']} · duplicates {report['duplicates']}"
    )
    fig.suptitle(title)

    ax1.plot(t, [s["publish_per_s"] for s in timeline], label="published (confirmed) / s")
    ax1.plot(t, [s["deliver_per_s"] for s in timeline], label="delivered / s")
    load_s = report["timing"].get("load_s")
    if load_s:
        ax1.axvline(load_s, color="grey", linestyle="--", linewidth=1, label="load ends")
    ax1.set_xlabel("seconds since the load started")
    ax1.set_ylabel("envelopes / s")
    ax1.set_ylim(bottom=0)
    ax1.set_title("throughput")
    ax1.grid(True, alpha=0.3)
    ax1.legend(loc="best")

    for key, label in (
        ("deliver_p50_ms", "send→delivered p50"),
        ("deliver_p99_ms", "send→delivered p99"),
        ("confirm_p99_ms", "send→confirm p99"),
    ):
        pts = [(s["t"], s[key]) for s in timeline if s[key] is not None]
        if pts:
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], label=label, marker=".")
    ax2.set_yscale("log")
    ax2.set_xlabel("seconds since the load started")
    ax2.set_ylabel("ms (per second)")
    ax2.set_title("latency over time")
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend(loc="best")

    for key, label in (("delivered", "send→delivered"), ("confirm", "send→confirm")):
        dist = report["latency_ms"][key].get("distribution") or []
        if dist:
            xs = [1.0 / max(1e-6, 1.0 - p / 100.0) for p, _ in dist]
            ax3.plot(xs, [ms for _, ms in dist], label=label)
    ax3.set_xscale("log")
    ax3.set_yscale("log")
    ticks = [1, 2, 10, 100, 1000, 10000, 100000]
    ax3.set_xticks(ticks)
    ax3.set_xticklabels(["p0", "p50", "p90", "p99", "p99.9", "p99.99", "p99.999"])
    ax3.set_ylabel("ms")
    ax3.set_title("latency distribution (whole run, HDR)")
    ax3.grid(True, which="both", alpha=0.3)
    ax3.legend(loc="best")

    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=100)
    plt.close(fig)

"""The pure part of ``compare_rabbitmq``: contract rows, the table, a dueslag result's figure,
and several rounds combined into one row per scenario."""

from __future__ import annotations

import statistics
from typing import Any

__all__ = ["ALONE", "alone_row", "combine", "dueslag_figure", "ratio", "row", "table"]

#: The row read off the ``consume`` runs: their ingest phase, with no consumer on either side.
ALONE = "publish-alone"


def ratio(dueslag: float | None, rabbitmq: float | None) -> float | None:
    if not dueslag or not rabbitmq:
        return None
    return round(dueslag / rabbitmq, 2)


def row(
    name: str, dueslag_per_s: float | None, rabbitmq_per_s: float | None, **extra: Any
) -> dict[str, Any]:
    """One contract row: name, both figures, their ratio (dueslag / RabbitMQ); then ``extra``."""
    return {
        "name": name,
        "dueslag_per_s": dueslag_per_s,
        "rabbitmq_per_s": rabbitmq_per_s,
        "ratio": ratio(dueslag_per_s, rabbitmq_per_s),
        **extra,
    }


def table(rows: list[dict[str, Any]]) -> str:
    def num(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    lines = [f"{'scenario':<16} {'dueslag/s':>12} {'rabbitmq/s':>12} {'ratio':>7}"]
    for r in rows:
        lines.append(
            f"{r['name']:<16} {num(r['dueslag_per_s'], ',.1f'):>12} "
            f"{num(r['rabbitmq_per_s'], ',.1f'):>12} {num(r['ratio'], '.2f'):>7}"
        )
    return "\n".join(lines)


def dueslag_figure(report: dict[str, Any], key: str) -> tuple[float | None, dict[str, Any]]:
    """The scenario's figure from a ``dueslag bench`` JSON, and whether the run counts."""
    checks = report.get("checks") or {}
    ok = (
        not report.get("lost")
        and not report.get("duplicates")
        and report.get("sent") == report.get("confirmed")
        and all(v is not False for v in checks.values())
    )
    summary = {
        "scenario": report.get("scenario"),
        "sent": report.get("sent"),
        "confirmed": report.get("confirmed"),
        "delivered": report.get("delivered"),
        "lost": report.get("lost"),
        "duplicates": report.get("duplicates"),
        "valid": ok,
        "client_cpu_share": (report.get("timing") or {}).get("client_cpu_share"),
        "publish_per_s": (report.get("throughput") or {}).get("publish_per_s"),
        "deliver_per_s": (report.get("throughput") or {}).get("deliver_per_s"),
    }
    return (report.get("throughput") or {}).get(key), summary


def alone_row(consume: dict[str, Any]) -> dict[str, Any]:
    """The ``publish-alone`` row from a ``consume`` row of one round: the publish rate of the
    backlog's ingest, before any consumer runs, on both sides (dueslag's ``drain`` scenario
    ingests for ``--duration`` with its receivers waiting; RabbitMQ's queues are prefilled for
    as long with no consumer). The issue's batch target was set beside a prototype that was
    measured that way, ingest alone; ``publish-batch`` has the consumers running during it."""
    d_info = dict(consume.get("dueslag") or {})
    r_info = consume.get("rabbitmq") or {}
    prefill = r_info.get("prefill") or {}
    return row(
        ALONE,
        d_info.get("publish_per_s"),
        prefill.get("per_s"),
        dueslag={**d_info, "from": "consume"},
        rabbitmq={"from": "consume", "publish": prefill} if prefill else r_info,
    )


def combine(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per scenario from the rows of several rounds (each a same-run pair): the
    median of each side, and as ``ratio`` the median of the rounds' own ratios (each round
    compares both sides on the same minutes of a shared machine, which two medians taken
    apart would not). A side's figure counts where the round has one; ``rounds`` keeps what
    each round measured."""
    out = []
    for i, first in enumerate(rounds[0]):
        per = [r[i] for r in rounds]
        d = [r["dueslag_per_s"] for r in per if r["dueslag_per_s"]]
        q = [r["rabbitmq_per_s"] for r in per if r["rabbitmq_per_s"]]
        ratios = [r["ratio"] for r in per if r["ratio"] is not None]
        out.append(
            {
                "name": first["name"],
                "dueslag_per_s": round(statistics.median(d), 1) if d else None,
                "rabbitmq_per_s": round(statistics.median(q), 1) if q else None,
                "ratio": round(statistics.median(ratios), 2) if ratios else None,
                "rounds": [
                    {k: r[k] for k in ("dueslag_per_s", "rabbitmq_per_s", "ratio")} for r in per
                ],
            }
        )
    return out

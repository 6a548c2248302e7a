"""The broker's own counters (``GET /metrics``, admin token), scraped before and after a run.

The deltas let a run check itself against the server: with nothing else talking to the broker,
``envelopes_accepted`` must equal the envelopes the bench saw confirmed, and
``deliveries_acked`` the deliveries it acknowledged. A broker shared with other clients makes
the deltas larger, never smaller.
"""

from __future__ import annotations

from typing import Any

__all__ = ["COUNTERS", "delta", "parse_metrics"]

#: counters reported as deltas: output key -> Prometheus sample name
COUNTERS = {
    "envelopes_accepted": "dueslag_envelopes_accepted_total",
    "envelopes_duplicate": "dueslag_envelopes_duplicate_total",
    "deliveries_created": "dueslag_deliveries_created_total",
    "deliveries_leased": "dueslag_deliveries_leased_total",
    "deliveries_acked": "dueslag_deliveries_acked_total",
    "deliveries_nacked": "dueslag_deliveries_nacked_total",
    "leases_expired": "dueslag_leases_expired_total",
    "overloaded": "dueslag_overloaded_total",
    "commits": "dueslag_commit_seconds_count",
    "commit_seconds": "dueslag_commit_seconds_sum",
    "commit_ops": "dueslag_commit_ops_sum",
}
_REJECTED = "dueslag_envelopes_rejected_total"


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format -> ``{"name{labels}": value}`` (comments and NaN skipped)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.rpartition(" ")
        if not name:
            continue
        # a sample may carry a timestamp: "name{l} value ts"
        head, _, maybe_value = name.rpartition(" ")
        if head and "}" not in maybe_value:
            name, rest = head, maybe_value
        try:
            value = float(rest)
        except ValueError:
            continue
        if value == value:  # not NaN
            out[name.strip()] = value
    return out


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """The counters' growth between two scrapes, plus derived commit figures."""
    out: dict[str, Any] = {}
    for key, sample in COUNTERS.items():
        d = after.get(sample, 0.0) - before.get(sample, 0.0)
        out[key] = round(d, 6) if key == "commit_seconds" else round(d)
    rejected: dict[str, int] = {}
    for sample, value in after.items():
        if sample.startswith(_REJECTED + "{"):
            d = round(value - before.get(sample, 0.0))
            if d:
                code = sample.split('code="', 1)[-1].split('"', 1)[0]
                rejected[code] = d
    out["envelopes_rejected"] = rejected
    commits = out["commits"]
    out["ops_per_commit"] = round(out["commit_ops"] / commits, 1) if commits else None
    out["ms_per_commit"] = round(1000 * out["commit_seconds"] / commits, 3) if commits else None
    return out

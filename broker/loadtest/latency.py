"""HDR latency histograms (send→confirm, send→delivered) and the per-second timeline.

Values are recorded in microseconds into an HdrHistogram (1 µs … 1 h, 3 significant digits) for
the whole run, and into a second histogram for the current one-second window, which
:meth:`LatencyRecorder.rotate` hands to the timeline. Recording one value costs about 3 µs in
the pure-Python ``hdrh``, too much at 100,000 deliveries a second, so callers record a whole
poll or batch at once (:meth:`LatencyRecorder.record_many`): the values are counted by bucket
first and each bucket is recorded once with its count (a batch of 100 shares one confirm
latency; a frame of 1,000 deliveries spread over 30 ms falls into ~120 buckets).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from hdrh.histogram import HdrHistogram

__all__ = ["HIGHEST_US", "LOWEST_US", "LatencyRecorder", "percentiles_ms", "summarize"]

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour
SIGNIFICANT_DIGITS = 3
#: percentiles reported for a histogram, and plotted in the chart's distribution panel
PERCENTILES = (50.0, 90.0, 99.0, 99.9, 99.99)


def _new() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def _clamp(us: int) -> int:
    return LOWEST_US if us < LOWEST_US else HIGHEST_US if us > HIGHEST_US else us


#: Values below this are their own bucket: 2 × 10^SIGNIFICANT_DIGITS, to the next power of 2
_EXACT_BELOW = 1 << (2 * 10**SIGNIFICANT_DIGITS - 1).bit_length()
_SHIFT_BASE = _EXACT_BELOW.bit_length() - 1


def _bucket_floor(us: int) -> int:
    """The lowest value of ``us``'s histogram bucket (HdrHistogram's "lowest equivalent value"
    for a lowest trackable value of 1): the top ``SIGNIFICANT_DIGITS`` worth of bits kept."""
    us = _clamp(us)
    shift = us.bit_length() - _SHIFT_BASE
    return us if shift <= 0 else (us >> shift) << shift


def summarize(h: HdrHistogram) -> dict[str, Any]:
    """``{"count", "mean", "p50", "p90", "p99", "p99.9", "p99.99", "max"}`` in ms (3 decimals)."""
    n = h.get_total_count()
    if n == 0:
        return {"count": 0}
    out: dict[str, Any] = {"count": n, "mean": round(h.get_mean_value() / 1000, 3)}
    values = h.get_percentile_to_value_dict(list(PERCENTILES))  # one pass over the counts
    for p in PERCENTILES:
        out[f"p{p:g}"] = round(values[p] / 1000, 3)
    out["max"] = round(h.get_max_value() / 1000, 3)
    return out


def percentiles_ms(h: HdrHistogram, percentiles: list[float]) -> list[float] | None:
    """The values at ``percentiles`` in ms, in one pass; None for an empty histogram."""
    if h.get_total_count() == 0:
        return None
    values = h.get_percentile_to_value_dict(percentiles)
    return [values[p] / 1000 for p in percentiles]


class LatencyRecorder:
    """One latency (e.g. send→delivered): a whole-run histogram plus a rotating window."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.total = _new()
        self.window = _new()

    def __repr__(self) -> str:
        return f"<LatencyRecorder {self.name} count={self.total.get_total_count()}>"

    def record(self, us: int, count: int = 1) -> None:
        v = _clamp(us)
        self.total.record_value(v, count)
        self.window.record_value(v, count)

    def record_many(self, values_us: Iterable[int]) -> None:
        # Counted by histogram bucket, not by value: every value of a bucket records the same
        # (the histogram keeps counts per bucket, and its min/max are reported as the bucket's
        # edges), and a 1,000-delivery frame spread over 30 ms has ~1,000 distinct µs values
        # but ~120 buckets.
        for v, c in Counter(map(_bucket_floor, values_us)).items():
            self.record(v, c)

    def rotate(self) -> HdrHistogram:
        """The window so far (for the timeline); a new window starts."""
        w, self.window = self.window, _new()
        return w

    def count(self) -> int:
        return int(self.total.get_total_count())

    def percentile_ms(self, p: float) -> float | None:
        values = percentiles_ms(self.total, [p])
        return None if values is None else values[0]

    def summary(self) -> dict[str, Any]:
        return summarize(self.total)

    def distribution(self, points: int = 40) -> list[tuple[float, float]]:
        """(percentile, ms) pairs from p0 to p99.999, spaced evenly in log(1/(1-p))."""
        wanted = [100.0 * (1.0 - 10.0 ** (-5.0 * i / points)) for i in range(points + 1)]
        values = percentiles_ms(self.total, wanted)
        return [] if values is None else list(zip(wanted, values, strict=True))

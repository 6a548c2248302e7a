"""The state one run shares between its tasks (all in one trio thread: no locks needed).

Ownership: senders write ``ledger`` sends/confirms and ``confirm_latency``; receivers write
``ledger`` deliveries, ``deliver_latency`` and ``acked``; the runner owns the phases and the
events; the ticker (runner) reads everything once a second for the timeline and the display.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import trio

from broker.loadtest.envelopes import EnvelopeFactory, IdScheme
from broker.loadtest.latency import LatencyRecorder
from broker.loadtest.ledger import Ledger
from broker.loadtest.scenario import Scenario

__all__ = ["RunState", "Sample"]


class Sample:
    """One second of the timeline."""

    __slots__ = ("confirm_p99", "confirmed", "deliver_p50", "deliver_p99", "delivered", "t")

    def __init__(self, t: float, confirmed: int, delivered: int) -> None:
        self.t = t
        self.confirmed = confirmed  # confirms in this second
        self.delivered = delivered  # first deliveries in this second
        self.deliver_p50: float | None = None
        self.deliver_p99: float | None = None
        self.confirm_p99: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "t": round(self.t, 3),
            "publish_per_s": self.confirmed,
            "deliver_per_s": self.delivered,
            "deliver_p50_ms": self.deliver_p50,
            "deliver_p99_ms": self.deliver_p99,
            "confirm_p99_ms": self.confirm_p99,
        }


class RunState:
    """Everything the tasks of one run share. Times are ``clock()`` seconds (monotonic)."""

    def __init__(
        self, scenario: Scenario, ledger: Ledger, factory: EnvelopeFactory, ids: IdScheme
    ) -> None:
        self.scenario = scenario
        self.ledger = ledger
        self.factory = factory
        self.ids = ids
        self.clock = time.perf_counter
        self.confirm_latency = LatencyRecorder("send→confirm")
        self.deliver_latency = LatencyRecorder("send→delivered")
        #: the broker's share (received → handed out, from the copies' Leverancerute), sampled
        self.broker_latency = LatencyRecorder("received→handed out")
        self.events: Counter[str] = Counter()  # retries, transport errors, 503s, ...
        self.errors: list[str] = []  # the first few distinct error messages, for the report
        self.acked = 0  # deliveries the broker said it acknowledged
        self.ack_failed: Counter[str] = Counter()
        self.received = 0  # every copy received (first, redelivered, duplicate, ...)
        self.phase = "setup"
        self.t_load: float | None = None  # load started
        self.t_load_end: float | None = None  # load ended (senders done)
        self.t_receive: float | None = None  # receivers started
        self.t_last_confirm: float | None = None
        self.t_last_delivery: float | None = None
        self.stop_sending = trio.Event()
        self.stop_receiving = trio.Event()
        #: set once the load is over and every confirmed envelope reached every expected mailbox
        self.drained = trio.Event()
        self.senders_alive = 0
        self.timeline: list[Sample] = []
        self.baseline: dict[str, Any] | None = None  # GET /healthz
        self.baseline_post: dict[str, Any] | None = None  # POST /healthz with an envelope

    def note_error(self, kind: str, message: str) -> None:
        """Count an event of ``kind``; keep its message if it is one of the first 20 distinct."""
        self.events[kind] += 1
        text = f"{kind}: {message}"
        if len(self.errors) < 20 and text not in self.errors:
            self.errors.append(text)

    def check_drained(self) -> None:
        """Set ``drained`` if the load is over and nothing confirmed is outstanding."""
        if self.t_load_end is not None and self.ledger.outstanding <= 0:
            self.drained.set()

    def elapsed(self) -> float:
        return 0.0 if self.t_load is None else self.clock() - self.t_load

"""Prometheus metrics of one broker instance (its own registry, so tests can run several).

Under ``serve --workers N`` the supervisor gives every worker ``$PROMETHEUS_MULTIPROC_DIR``:
prometheus_client then keeps each process's values in files there, and :meth:`Metrics.render`
sums them, so ``/metrics`` on any worker reports the whole broker.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = ["Metrics"]


class Metrics:
    """The broker's counters; names are ``dueslag_*``. Render with :meth:`render`."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.accepted = Counter(
            "dueslag_envelopes_accepted",
            "Envelopes accepted and stored (not duplicates)",
            registry=r,
        )
        self.duplicates = Counter(
            "dueslag_envelopes_duplicate",
            "Envelopes recognised as repeats within the dedup window",
            registry=r,
        )
        self.rejected = Counter(
            "dueslag_envelopes_rejected", "Envelopes refused, by error code", ["code"], registry=r
        )
        self.routed = Counter(
            "dueslag_deliveries_created", "Deliveries put into mailboxes (fan-out)", registry=r
        )
        self.leased = Counter(
            "dueslag_deliveries_leased", "Deliveries handed to receivers", registry=r
        )
        self.leased_on_commit = Counter(
            "dueslag_standing_leases_served",
            "Standing leases of waiting receivers served in the commit that published to them",
            registry=r,
        )
        self.acked = Counter("dueslag_deliveries_acked", "Deliveries acknowledged", registry=r)
        self.nacked = Counter(
            "dueslag_deliveries_nacked", "Deliveries negatively acknowledged", registry=r
        )
        self.expired = Counter(
            "dueslag_leases_expired", "Leases that expired (redelivered or dead)", registry=r
        )
        self.writer_process_deaths = Counter(
            "dueslag_writer_process_deaths",
            "Writer processes (serve --writer process) that died with a batch in hand; the "
            "batch failed and the next one started another",
            registry=r,
        )
        self.overloaded = Counter(
            "dueslag_overloaded",
            "Requests refused with 503 because the write queue was full",
            registry=r,
        )
        self.commit_seconds = Histogram(
            "dueslag_commit_seconds",
            "Duration of one group commit (fsync included)",
            registry=r,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
        )
        self.batch_ops = Histogram(
            "dueslag_commit_ops",
            "Operations per group commit",
            registry=r,
            buckets=(1, 2, 5, 10, 50, 100, 500, 1000, 5000, 20000),
        )
        self.queued = Gauge(
            "dueslag_writer_queued_jobs",
            "Jobs waiting for the writer",
            registry=r,
            multiprocess_mode="livesum",  # with workers: the sum over the live processes
        )

    def render(self) -> bytes:
        shared = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if shared:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=shared)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)

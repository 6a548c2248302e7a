"""The writer actor: the one owner of all store writes (group commit).

Theory of operation
-------------------
Requests submit *jobs* (a list of store operations plus a completion event) into a bounded
channel. The writer takes the first job, drains whatever else is already queued (up to
``max_batch_ops`` operations), and applies the whole batch in ONE store transaction inside ONE
``trio.to_thread.run_sync`` call: begin, writes and commit happen on one thread, as LMDB
requires, and the call is not cancellable, so a batch that started always commits or fails as
a whole. While one commit fsyncs, the event loop keeps accepting and queueing the next batch;
that pipelining is where throughput comes from. Only after the commit returns are the jobs'
events set, so no caller ever answers 2xx for data that is not on disk.

Back-pressure: the channel is bounded. ``submit`` waits at most ``admission_timeout`` seconds
for room, then raises :class:`~broker.errors.Overloaded` (HTTP 503 with Retry-After); memory
never grows with load.

State owned: the receive side of the job channel. The store is shared with readers, which use
their own short read transactions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import NoReturn

import trio
from msgspec import Struct

from broker.errors import BrokerError, Overloaded, StoreError
from broker.metrics import Metrics
from broker.notifier import Notifier
from store.base import ApplyOutcome, Op, OpResult, Store

__all__ = ["Writer", "WriterStats", "wall_ms"]

QUEUE_SIZE = 4096
MAX_BATCH_OPS = 20_000
ADMISSION_TIMEOUT = 2.0

log = logging.getLogger("dueslag.writer")


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class _Job:
    __slots__ = ("done", "error", "on_done", "ops", "results")

    def __init__(
        self,
        ops: Sequence[Op],
        on_done: Callable[[list[OpResult] | BrokerError], None] | None = None,
    ) -> None:
        self.ops = ops
        self.done = trio.Event()
        self.results: list[OpResult] = []
        self.error: BrokerError | None = None  # the whole batch failed or was never applied
        self.on_done = on_done  # called by the writer once the job is settled (see enqueue)

    def settle(self) -> None:
        self.done.set()
        if self.on_done is not None:
            try:
                self.on_done(self.error if self.error is not None else self.results)
            except Exception:  # a caller's bug must not stop the writer
                log.exception("an enqueue() callback failed")


class WriterStats(Struct, frozen=True, kw_only=True):
    queued_jobs: int
    batches: int
    ops: int
    failed_batches: int


class Writer:
    """Applies submitted operations in group commits. Start with ``nursery.start(w.run)``."""

    def __init__(
        self,
        store: Store,
        notifier: Notifier,
        *,
        metrics: Metrics | None = None,
        queue_size: int = QUEUE_SIZE,
        max_batch_ops: int = MAX_BATCH_OPS,
        admission_timeout: float = ADMISSION_TIMEOUT,
        clock: Callable[[], int] = wall_ms,
        on_commit: Callable[[Sequence[Op], ApplyOutcome], None] | None = None,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be >= 1")
        self._store = store
        self._notifier = notifier
        self._metrics = metrics
        self._send, self._receive = trio.open_memory_channel[_Job](queue_size)
        self._max_batch_ops = max_batch_ops
        self._admission_timeout = admission_timeout
        self._clock = clock
        self._on_commit = on_commit
        # One token: never two writers at once, and a blocked write holds one thread only.
        self._limiter = trio.CapacityLimiter(1)
        self._batches = 0
        self._ops = 0
        self._failed = 0
        self._closed = False

    async def submit(self, ops: Sequence[Op]) -> list[OpResult]:
        """Apply ``ops`` in the next group commit and return their results once durable.

        Error handling:
            Raises :class:`Overloaded` when the queue stays full for ``admission_timeout`` s
            (nothing was applied), ``Overloaded(code="shutting_down")`` once the writer
            stopped, and :class:`StoreError` when the commit failed (nothing was applied).
            Per-op refusals come back as BrokerError values inside the result list.
        """
        job = _Job(ops)
        await self._admit(job)
        await job.done.wait()
        if job.error is not None:
            raise job.error
        return job.results

    async def enqueue(
        self, ops: Sequence[Op], on_done: Callable[[list[OpResult] | BrokerError], None]
    ) -> None:
        """Queue ``ops`` for the next group commit and return without waiting for the commit.

        ``on_done`` is called from the writer task once the job is settled: with the results
        after the commit (durable), or with the :class:`StoreError`/``shutting_down`` error
        when nothing was applied. It must be quick and must not raise. Jobs are committed in
        the order they were queued.

        For the publish stream's per-frame path this is a cancellation point that yields to
        the scheduler only when it has to wait for room in the queue (a yield costs more than
        the rest of the call).

        Error handling:
            Raises :class:`Overloaded` like :meth:`submit`, or ``trio.Cancelled``; either way
            the job was NOT queued and ``on_done`` is never called.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        await self._admit(_Job(ops, on_done))  # a cancelled blocking send queues nothing

    async def _admit(self, job: _Job) -> None:
        if self._closed:
            raise Overloaded("the broker is shutting down", code="shutting_down", retry_after=5)
        try:
            self._send.send_nowait(job)
        except trio.WouldBlock:
            with trio.move_on_after(self._admission_timeout) as scope:
                await self._send.send(job)
            if scope.cancelled_caught:
                if self._metrics:
                    self._metrics.overloaded.inc()
                raise Overloaded(
                    f"write queue full for {self._admission_timeout:g} s", retry_after=1
                ) from None

    async def submit_one(self, op: Op) -> OpResult:
        """Submit a single op; a per-op BrokerError result is raised."""
        (result,) = await self.submit([op])
        if isinstance(result, BrokerError):
            raise result
        return result

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        task_status.started()
        try:
            while True:
                first = await self._receive.receive()
                jobs = [first]
                n = len(first.ops)
                while n < self._max_batch_ops:
                    try:
                        job = self._receive.receive_nowait()
                    except trio.WouldBlock:
                        break
                    jobs.append(job)
                    n += len(job.ops)
                self._commit(jobs, await self._apply(jobs))
        finally:
            self._closed = True
            self._fail_queued()

    async def _apply(self, jobs: list[_Job]) -> ApplyOutcome | StoreError:
        ops = [op for job in jobs for op in job.ops]
        started = time.perf_counter()
        try:
            outcome = await trio.to_thread.run_sync(
                self._store.apply, ops, self._clock(), limiter=self._limiter
            )
        except StoreError as exc:
            return exc
        except Exception as exc:  # a bug in the store must not kill the writer silently
            return StoreError(f"store failed to apply a batch: {exc!r}")
        if self._metrics:
            self._metrics.commit_seconds.observe(time.perf_counter() - started)
            self._metrics.batch_ops.observe(len(ops))
        if self._on_commit is not None:
            self._on_commit(ops, outcome)
        return outcome

    def _commit(self, jobs: list[_Job], outcome: ApplyOutcome | StoreError) -> None:
        self._batches += 1
        if isinstance(outcome, StoreError):
            self._failed += 1
            for job in jobs:
                job.error = outcome
                job.settle()
            return
        i = 0
        for job in jobs:
            k = len(job.ops)
            job.results = outcome.results[i : i + k]
            i += k
            job.settle()
        self._ops += i
        if outcome.ready:
            self._notifier.notify(outcome.ready)

    def _fail_queued(self) -> None:
        err = Overloaded("the broker is shutting down", code="shutting_down", retry_after=5)
        while True:
            try:
                job = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return
            job.error = err
            job.settle()

    def statistics(self) -> WriterStats:
        return WriterStats(
            queued_jobs=self._send.statistics().current_buffer_used,
            batches=self._batches,
            ops=self._ops,
            failed_batches=self._failed,
        )

    def __repr__(self) -> str:
        s = self.statistics()
        return f"<Writer [{s.queued_jobs} queued | {s.batches} batches, {s.ops} ops, {s.failed_batches} failed]>"

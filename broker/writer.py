"""The writer actor: the one owner of all store writes (group commit).

Theory of operation
-------------------
Requests submit *jobs* (a list of store operations plus a completion event). The writer's
commit thread takes the first queued job, drains whatever else is already queued (up to
``max_batch_ops`` operations), and applies the whole batch in ONE store transaction: begin,
writes and commit happen on that one thread, as LMDB requires, and a batch that started always
commits or fails as a whole. The thread then hands the outcome back to the event loop
(``run_sync_soon``) and at once starts the next batch: commits follow each other back to back,
without waiting for the event loop to schedule a task between them (under load that wait was
as long as a commit). While one commit fsyncs, the event loop keeps accepting and queueing the
next batch; that pipelining is where throughput comes from. Only after the commit returns are
the jobs' events set, so no caller ever answers 2xx for data that is not on disk.

With a writer process (:mod:`store.applier`; ``dueslag serve --writer``, whose ``auto`` picks it
where cores are free), the same loop runs on the event loop instead of a thread: each batch is
sent to the child and its outcome awaited (:mod:`broker.applierlink`), so no thread of the
serving process competes with the event loop for the GIL. One batch is in flight at a time,
as with the thread. What waits for a batch, and how a batch is formed, is
:mod:`broker.writequeue`.

The thread (or the shielded loop task) lives exactly as long as :meth:`Writer.run` (inside one
``trio.to_thread.run_sync`` call of a child task; no detached threads): cancelling ``run`` asks
it to stop after the batch in hand, and jobs still queued then fail with ``shutting_down``.

Standing leases (:mod:`broker.standing`): a receiver waiting on an empty mailbox files its lease
op with :meth:`Writer.stand`; the commit thread adds it to the first batch that publishes to that
mailbox, so one transaction stores and leases the delivery.

Deferred ops (:meth:`Writer.defer`): the audit lines of leases and acks, which are written after
the operation they record has committed, ride with the next batch instead of making a commit of
their own; when nothing else comes, the thread commits them alone after ``defer_linger``
seconds. At 200 envelopes/s to waiting consumers that saved a quarter of the commits.

Back-pressure: at most ``queue_size`` jobs wait for the thread. ``submit`` waits at most
``admission_timeout`` seconds for room, then raises :class:`~broker.errors.Overloaded` (HTTP 503
with Retry-After); memory never grows with load.

State owned: the write queue (shared with the commit thread under its lock). The store is shared
with readers, which use their own short read transactions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import NoReturn, Protocol

import trio
from msgspec import Struct

from broker.applierlink import ApplierLink
from broker.errors import BrokerError, Overloaded, StoreError
from broker.jobs import Job
from broker.metrics import Metrics
from broker.notifier import Notifier
from broker.standing import StandingLease
from broker.writequeue import Batch, WriteQueue
from store.applier import ApplierStore
from store.base import ApplyOutcome, Lease, Op, OpResult, Store

__all__ = ["RemoteApply", "Writer", "WriterStats", "wall_ms"]

QUEUE_SIZE = 4096
MAX_BATCH_OPS = 20_000
ADMISSION_TIMEOUT = 2.0
#: Seconds a deferred op waits for a batch to ride with before it is committed alone.
DEFER_LINGER_S = 0.025
#: Deferred ops waiting at most (as the job queue, memory does not grow with load).
MAX_DEFERRED = 4096

log = logging.getLogger("dueslag.writer")


class RemoteApply(Protocol):
    """``Store.apply`` done elsewhere and awaited (:class:`~broker.applierlink.ApplierLink`);
    raises StoreError for a failed batch."""

    async def apply(self, ops: list[Op], now_ms: int) -> ApplyOutcome: ...

    async def aclose(self) -> None: ...


def _shutting_down() -> Overloaded:
    """The refusal of any write once the writer has stopped (a fresh one each time)."""
    return Overloaded("the broker is shutting down", code="shutting_down", retry_after=5)


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class WriterStats(Struct, frozen=True, kw_only=True):
    queued_jobs: int
    batches: int
    ops: int
    failed_batches: int
    standing_leases: int = 0  # filed by waiting receivers, not yet taken by a batch


class Writer:
    """Applies submitted operations in group commits. Start with ``nursery.start(w.run)``.

    ``remote``: apply batches through it on the event loop instead of ``store.apply`` on a
    thread; by default an :class:`ApplierLink` when ``store`` is an :class:`ApplierStore`.
    """

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
        defer_linger: float = DEFER_LINGER_S,
        max_deferred: int = MAX_DEFERRED,
        remote: RemoteApply | None = None,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be >= 1")
        self._store = store
        self._notifier = notifier
        self._metrics = metrics
        self._room = trio.Semaphore(queue_size)  # one unit per job not yet taken by the writer
        self._queue = WriteQueue(
            max_batch_ops=max_batch_ops, defer_linger=defer_linger, max_deferred=max_deferred
        )
        self._token: trio.lowlevel.TrioToken | None = None
        self._admission_timeout = admission_timeout
        self._clock = clock
        self._on_commit = on_commit
        self._batches = 0
        self._ops = 0
        self._failed = 0
        self._closed = False
        if remote is None and isinstance(store, ApplierStore):
            remote = ApplierLink(store, metrics)
        self._remote = remote

    @property
    def remote(self) -> RemoteApply | None:
        """What batches are applied through (a writer process), or None: the commit thread."""
        return self._remote

    def stand(self, op: Lease) -> StandingLease:
        """File ``op`` for the next batch that publishes to its mailbox (:mod:`broker.standing`).

        The caller then waits on the notifier for the mailbox, and afterwards calls
        :meth:`withdraw`; when that returns False a batch took the lease, and the caller
        awaits its ``done`` (the commit cannot be cancelled).

        Error handling:
            Raises ``Overloaded(code="shutting_down")`` once the writer stopped.
        """
        if self._closed:
            raise _shutting_down()
        return self._queue.stand(op)

    def withdraw(self, lease: StandingLease) -> bool:
        """Take back a standing lease; False once a batch has taken it (await ``lease.done``)."""
        return self._queue.standing.withdraw(lease)

    def defer(self, ops: Sequence[Op]) -> None:
        """Add ``ops`` to the next batch, without a job, a wait or a result: they ride with
        whatever commits next, or are committed alone after ``defer_linger`` seconds (and
        before the writer stops). For the audit lines of operations that have committed: a
        crash loses at most the lines of the last ``defer_linger`` seconds.

        Error handling:
            Raises :class:`Overloaded` when ``max_deferred`` ops wait already, or with
            ``shutting_down`` once the writer stopped; nothing was added then.
        """
        if self._closed:
            raise _shutting_down()
        self._queue.defer(ops)

    async def submit(self, ops: Sequence[Op]) -> list[OpResult]:
        """Apply ``ops`` in the next group commit and return their results once durable.

        Error handling:
            Raises :class:`Overloaded` when the queue stays full for ``admission_timeout`` s
            (nothing was applied), ``Overloaded(code="shutting_down")`` once the writer
            stopped, and :class:`StoreError` when the commit failed (nothing was applied).
            Per-op refusals come back as BrokerError values inside the result list.
        """
        job = Job(ops)
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
        await self._admit(Job(ops, on_done))  # a cancelled blocking send queues nothing

    async def _admit(self, job: Job) -> None:
        if self._closed:
            raise _shutting_down()
        try:
            self._room.acquire_nowait()
        except trio.WouldBlock:
            with trio.move_on_after(self._admission_timeout) as scope:
                await self._room.acquire()
            if scope.cancelled_caught:
                if self._metrics:
                    self._metrics.overloaded.inc()
                raise Overloaded(
                    f"write queue full for {self._admission_timeout:g} s", retry_after=1
                ) from None
            if self._closed:
                self._room.release()
                raise _shutting_down() from None
        self._queue.add(job)

    async def submit_one(self, op: Op) -> OpResult:
        """Submit a single op; a per-op BrokerError result is raised."""
        (result,) = await self.submit([op])
        if isinstance(result, BrokerError):
            raise result
        return result

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        self._token = trio.lowlevel.current_trio_token()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._run_thread if self._remote is None else self._run_remote)
                task_status.started()
                try:
                    await trio.sleep_forever()
                finally:  # the loop finishes the batch in hand (and the deferred ops), then returns
                    self._queue.stop()
        finally:
            self._closed = True
            self._fail_queued()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _run_thread(self) -> None:
        # Not cancellable (LMDB: a started batch must commit on its thread); it returns once
        # run() has stopped the queue.
        await trio.to_thread.run_sync(self._commit_loop)

    def _commit_loop(self) -> None:
        """The commit thread: take a batch, apply it, hand the outcome back, repeat."""
        assert self._token is not None
        token = self._token
        while (batch := self._queue.next_blocking()) is not None:
            if batch.jobs:
                token.run_sync_soon(self._release, len(batch.jobs))  # their room is free again
            started = time.perf_counter()
            outcome: ApplyOutcome | StoreError
            try:
                outcome = self._store.apply(batch.ops, self._clock())
            except StoreError as exc:
                outcome = exc
            except Exception as exc:  # a bug in the store must not kill the writer silently
                outcome = StoreError(f"store failed to apply a batch: {exc!r}")
            token.run_sync_soon(self._settle, batch, outcome, time.perf_counter() - started)
            if batch.last:  # the last deferred ops are written; the queued jobs are refused
                return

    async def _run_remote(self) -> None:
        """The same loop on the event loop, through ``remote``. Shielded, like the thread: a
        batch sent is committed whether or not anybody waits, so only a stop ends it."""
        assert self._remote is not None
        remote = self._remote
        with trio.CancelScope(shield=True):
            try:
                while (batch := await self._queue.next()) is not None:
                    self._release(len(batch.jobs))
                    started = time.perf_counter()
                    outcome: ApplyOutcome | StoreError
                    try:
                        outcome = await remote.apply(batch.ops, self._clock())
                    except StoreError as exc:
                        outcome = exc
                    except Exception as exc:  # a bug must not kill the writer silently
                        outcome = StoreError(f"store failed to apply a batch: {exc!r}")
                    self._settle(batch, outcome, time.perf_counter() - started)
                    if batch.last:
                        return
            finally:
                await remote.aclose()

    def _release(self, n: int) -> None:
        for _ in range(n):
            self._room.release()

    def _settle(self, batch: Batch, outcome: ApplyOutcome | StoreError, seconds: float) -> None:
        """In the event loop: answer the jobs of one batch (after its commit). A callback of
        ``run_sync_soon`` must not raise (trio would abort the run), hence the guard."""
        try:
            self._answer(batch, outcome, seconds)
        except Exception:  # pragma: no cover - a bug; the jobs' waiters would hang otherwise
            log.exception("settling a committed batch failed")
            err = StoreError("internal error while answering a committed batch")
            for job in batch.jobs:
                if not job.done.is_set():
                    job.error = err
                    job.settle()
            for lease in batch.leases:
                if not lease.done.is_set():
                    lease.answer(err)

    def _answer(self, batch: Batch, outcome: ApplyOutcome | StoreError, seconds: float) -> None:
        jobs, leases, ops, _ = batch
        self._batches += 1
        if isinstance(outcome, StoreError):
            self._failed += 1
            for job in jobs:
                job.error = outcome
                job.settle()
            for lease in leases:
                lease.answer(outcome)
            return
        if self._metrics:
            self._metrics.commit_seconds.observe(seconds)
            self._metrics.batch_ops.observe(len(ops))
        if self._on_commit is not None:
            try:
                self._on_commit(ops, outcome)
            except Exception:
                log.exception("the on_commit hook failed")
        i = 0
        for job in jobs:
            k = len(job.ops)
            job.results = outcome.results[i : i + k]
            i += k
            job.settle()
        self._ops += i
        # a served lease's receiver waits on the notifier: wake it after its lease is answered
        # (its mailbox is usually in outcome.ready already: the batch published to it)
        first = len(ops) - len(leases)  # the deferred ops' results between: nobody waits
        woken = [
            lease.op.mailbox_id
            for lease, result in zip(leases, outcome.results[first:], strict=True)
            if lease.answer(result)
        ]
        if woken and self._metrics:
            self._metrics.leased_on_commit.inc(len(woken))
        if outcome.ready or woken:
            self._notifier.notify({*outcome.ready, *woken} if woken else outcome.ready)

    def _fail_queued(self) -> None:
        err = _shutting_down()
        for job in self._queue.drain():
            job.error = err
            job.settle()
        self._queue.standing.fail_all(err)

    def statistics(self) -> WriterStats:
        return WriterStats(
            queued_jobs=len(self._queue),
            batches=self._batches,
            ops=self._ops,
            failed_batches=self._failed,
            standing_leases=len(self._queue.standing),
        )

    def __repr__(self) -> str:
        s = self.statistics()
        return f"<Writer [{s.queued_jobs} queued | {s.batches} batches, {s.ops} ops, {s.failed_batches} failed]>"

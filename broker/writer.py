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

The thread lives exactly as long as :meth:`Writer.run` (it runs inside one
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

State owned: the job queue (shared with the commit thread under one lock). The store is shared
with readers, which use their own short read transactions.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import NoReturn

import trio
from msgspec import Struct

from broker.errors import BrokerError, Overloaded, StoreError
from broker.jobs import GroupCommit, Job
from broker.metrics import Metrics
from broker.notifier import Notifier
from broker.standing import StandingLease, StandingLeases
from store.base import ApplyOutcome, Lease, Op, OpResult, Store

__all__ = ["Writer", "WriterStats", "wall_ms"]

QUEUE_SIZE = 4096
MAX_BATCH_OPS = 20_000
ADMISSION_TIMEOUT = 2.0
#: Seconds a deferred op waits for a batch to ride with before it is committed alone.
DEFER_LINGER_S = 0.025
#: Deferred ops waiting at most (as the job queue, memory does not grow with load).
MAX_DEFERRED = 4096

log = logging.getLogger("dueslag.writer")


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
        defer_linger: float = DEFER_LINGER_S,
        max_deferred: int = MAX_DEFERRED,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be >= 1")
        self._store = store
        self._notifier = notifier
        self._metrics = metrics
        self._room = trio.Semaphore(queue_size)  # one unit per job not yet taken by the thread
        self._queue: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()  # guards _queue and _stopping
        self._stopping = False
        self._token: trio.lowlevel.TrioToken | None = None
        self._max_batch_ops = max_batch_ops
        self._admission_timeout = admission_timeout
        self._clock = clock
        self._on_commit = on_commit
        self._batches = 0
        self._ops = 0
        self._failed = 0
        self._closed = False
        self._standing = StandingLeases()
        self._deferred: list[Op] = []  # guarded by _cond
        self._defer_linger = defer_linger
        self._max_deferred = max_deferred

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
        return self._standing.file(op)

    def withdraw(self, lease: StandingLease) -> bool:
        """Take back a standing lease; False once a batch has taken it (await ``lease.done``)."""
        return self._standing.withdraw(lease)

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
        with self._cond:
            if len(self._deferred) + len(ops) > self._max_deferred:
                raise Overloaded(f"{self._max_deferred} deferred writes waiting", retry_after=1)
            if not self._deferred:
                self._cond.notify()  # an idle thread starts its linger
            self._deferred.extend(ops)

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
        with self._cond:
            self._queue.append(job)
            self._cond.notify()

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
                nursery.start_soon(self._run_thread)
                task_status.started()
                try:
                    await trio.sleep_forever()
                finally:
                    with self._cond:  # the thread finishes the batch in hand, then returns
                        self._stopping = True
                        self._cond.notify()
        finally:
            self._closed = True
            self._fail_queued()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _run_thread(self) -> None:
        # Not cancellable (LMDB: a started batch must commit on its thread); it returns once
        # run() has set _stopping.
        await trio.to_thread.run_sync(self._commit_loop)

    def _commit_loop(self) -> None:
        """The commit thread: take a batch, apply it, hand the outcome back, repeat."""
        assert self._token is not None
        token = self._token
        while True:
            with self._cond:
                self._wait_for_work()
                stopping = self._stopping
                if stopping and not self._deferred:
                    return
                jobs: list[Job] = []
                n = 0
                while self._queue and n < self._max_batch_ops and not stopping:
                    jobs.append(self._queue.popleft())
                    n += len(jobs[-1].ops)
                deferred, self._deferred = self._deferred, []
            if jobs:
                token.run_sync_soon(self._release, len(jobs))  # their room is free again
            ops = [op for job in jobs for op in job.ops]
            ops.extend(deferred)
            leases = self._standing.take(job.ops for job in jobs) if self._standing else []
            if leases:  # after the publishes: the same transaction leases what they stored
                ops.extend(lease.op for lease in leases)
            started = time.perf_counter()
            outcome: ApplyOutcome | StoreError
            try:
                outcome = self._store.apply(ops, self._clock())
            except StoreError as exc:
                outcome = exc
            except Exception as exc:  # a bug in the store must not kill the writer silently
                outcome = StoreError(f"store failed to apply a batch: {exc!r}")
            batch = GroupCommit(jobs, leases, ops)
            token.run_sync_soon(self._settle, batch, outcome, time.perf_counter() - started)
            if stopping:  # the last deferred ops are written; the queued jobs are refused
                return

    def _wait_for_work(self) -> None:
        """(Holding ``_cond``.) Until a job is queued, the writer stops, or deferred ops have
        waited ``defer_linger`` seconds for company."""
        linger_until: float | None = None
        while not self._queue and not self._stopping:
            if not self._deferred:
                linger_until = None
                self._cond.wait()
                continue
            now = time.monotonic()
            if linger_until is None:
                linger_until = now + self._defer_linger
            elif now >= linger_until:
                return
            self._cond.wait(linger_until - now)

    def _release(self, n: int) -> None:
        for _ in range(n):
            self._room.release()

    def _settle(
        self, batch: GroupCommit, outcome: ApplyOutcome | StoreError, seconds: float
    ) -> None:
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

    def _answer(
        self, batch: GroupCommit, outcome: ApplyOutcome | StoreError, seconds: float
    ) -> None:
        jobs, leases, ops = batch
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
        with self._cond:
            jobs = list(self._queue)
            self._queue.clear()
        for job in jobs:
            job.error = err
            job.settle()
        self._standing.fail_all(err)

    def statistics(self) -> WriterStats:
        return WriterStats(
            queued_jobs=len(self._queue),
            batches=self._batches,
            ops=self._ops,
            failed_batches=self._failed,
            standing_leases=len(self._standing),
        )

    def __repr__(self) -> str:
        s = self.statistics()
        return f"<Writer [{s.queued_jobs} queued | {s.batches} batches, {s.ops} ops, {s.failed_batches} failed]>"

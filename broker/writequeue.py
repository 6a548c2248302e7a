"""What waits for the writer, and how the next batch is formed from it (:mod:`broker.writer`).

Theory of operation
-------------------
Three kinds of work wait for a group commit: *jobs* (ops whose caller waits for their
results), *deferred ops* (audit lines of operations that already committed: nobody waits; they
ride with the next batch, or are committed alone once they waited ``defer_linger`` seconds) and
*standing leases* (:mod:`broker.standing`: taken by the first batch that publishes to their
mailbox). :meth:`WriteQueue.take` forms one batch from them: queued jobs up to
``max_batch_ops`` operations, then every deferred op, then the standing leases those jobs'
publishes take, so the same transaction stores and leases.

The event loop adds work; the writer takes it, either on its commit thread
(:meth:`next_blocking`) or on the event loop itself when a writer process commits
(:meth:`next`). One lock (a Condition) guards the state for the thread; the loop side is woken
through a trio Event, set by the same calls (which the event loop makes) that notify the
Condition.

Stopping: after :meth:`stop`, the next batch is the last: it holds the deferred ops only (the
queued jobs are refused by the writer with :meth:`drain`); when nothing is deferred there is
no last batch.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Sequence
from typing import NamedTuple

import trio

from broker.errors import Overloaded
from broker.jobs import Job
from broker.standing import StandingLease, StandingLeases
from store.base import Lease, Op

__all__ = ["Batch", "WriteQueue"]


class Batch(NamedTuple):
    """One group commit in hand: its jobs, the standing leases it took, every op applied (the
    jobs' ops, then the deferred ops, then the leases'), and whether it is the last."""

    jobs: list[Job]
    leases: list[StandingLease]
    ops: list[Op]
    last: bool = False


class WriteQueue:
    """Jobs, deferred ops and standing leases waiting for the writer (see the module docs)."""

    def __init__(self, *, max_batch_ops: int, defer_linger: float, max_deferred: int) -> None:
        self._jobs: collections.deque[Job] = collections.deque()
        self._deferred: list[Op] = []
        self.standing = StandingLeases()
        self._cond = threading.Condition()
        self._arrived = trio.Event()  # the event loop's side of _cond.notify
        self._stopping = False
        self._lingered = False  # the deferred ops have waited defer_linger
        self._max_batch_ops = max_batch_ops
        self._defer_linger = defer_linger
        self._max_deferred = max_deferred

    def __len__(self) -> int:
        return len(self._jobs)

    # ------------------------------------------------------------------ the event loop adds

    def add(self, job: Job) -> None:
        with self._cond:
            self._jobs.append(job)
            self._wake()

    def defer(self, ops: Sequence[Op]) -> None:
        """Raises :class:`Overloaded` (nothing added) when ``max_deferred`` ops wait already."""
        with self._cond:
            if len(self._deferred) + len(ops) > self._max_deferred:
                raise Overloaded(f"{self._max_deferred} deferred writes waiting", retry_after=1)
            if not self._deferred:
                self._wake()  # an idle writer starts its linger
            self._deferred.extend(ops)

    def stand(self, op: Lease) -> StandingLease:
        return self.standing.file(op)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._wake()

    def drain(self) -> list[Job]:
        """The jobs still queued (for the writer to refuse once it stopped)."""
        with self._cond:
            jobs = list(self._jobs)
            self._jobs.clear()
        return jobs

    def _wake(self) -> None:
        """(Holding the lock, on the event loop.)"""
        self._cond.notify()
        self._arrived.set()

    # ------------------------------------------------------------------ the writer takes

    def next_blocking(self) -> Batch | None:
        """(The commit thread.) The next batch, once there is one; None: stopped, all done."""
        with self._cond:
            linger_until: float | None = None
            while not self._jobs and not self._stopping:
                if not self._deferred:
                    linger_until = None
                    self._cond.wait()
                    continue
                now = time.monotonic()
                if linger_until is None:
                    linger_until = now + self._defer_linger
                elif now >= linger_until:
                    break
                self._cond.wait(linger_until - now)
            taken = self._take()
        return None if taken is None else self._batch(*taken)

    async def next(self) -> Batch | None:
        """(The event loop.) The same as :meth:`next_blocking`."""
        while True:
            with self._cond:
                ready = (
                    bool(self._jobs) or self._stopping or (bool(self._deferred) and self._lingered)
                )
                taken = self._take() if ready else None
            if ready:
                return None if taken is None else self._batch(*taken)
            # nothing to take yet: no await between that check and a fresh event (one thread)
            self._arrived = trio.Event()
            if not self._deferred:
                await self._arrived.wait()
                continue
            with trio.move_on_after(self._defer_linger):
                while not (self._jobs or self._stopping):
                    await self._arrived.wait()
                    self._arrived = trio.Event()
            self._lingered = True

    def _take(self) -> tuple[list[Job], list[Op], bool] | None:
        """(Holding the lock: kept short, the event loop waits for it to queue a job.) The
        next batch's jobs and deferred ops, and whether it is the last; see the module docs."""
        last = self._stopping
        if last and not self._deferred:
            return None
        jobs: list[Job] = []
        n = 0
        while self._jobs and n < self._max_batch_ops and not last:
            jobs.append(self._jobs.popleft())
            n += len(jobs[-1].ops)
        deferred, self._deferred = self._deferred, []
        self._lingered = False
        return jobs, deferred, last

    def _batch(self, jobs: list[Job], deferred: list[Op], last: bool) -> Batch:
        """(Not holding the lock.) Every op of the batch, with the standing leases it takes."""
        ops = [op for job in jobs for op in job.ops]
        ops.extend(deferred)
        leases = self.standing.take(job.ops for job in jobs) if self.standing else []
        # after the publishes: the same transaction leases what they stored
        ops.extend(lease.op for lease in leases)
        return Batch(jobs, leases, ops, last)

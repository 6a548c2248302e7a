"""Standing leases: a receiver waiting on an empty mailbox leases in the commit that fills it.

Theory of operation
-------------------
Without them, a delivery to a waiting receiver costs two group commits in a row: the publish
commits, the writer wakes the receiver (notifier), the receiver queues a lease, and that lease
waits for the next commit (behind whatever is being committed then). With them, a receiver whose
lease came back empty files its :class:`~store.base.Lease` op here before it waits; the writer's
commit thread adds the op to the first batch that publishes to that mailbox, after the
publishes, so the same transaction stores the envelope and leases it, and the receiver gets its
deliveries when that commit is answered. The notifier stays the receiver's one wake-up (the
writer notifies a served lease's mailbox), and every other way a mailbox gains deliveries
(nack, lease expiry, replay, another worker's publish) goes through it as before.

A lease is in one of three states, and the registry's lock guards the moves between them:

* ``standing``: filed, waiting for a batch. Its receiver may :meth:`StandingLeases.withdraw` it.
* ``taken``: the commit thread put it into a batch. It can no longer be withdrawn: the batch
  commits or fails as a whole, so the receiver waits for :attr:`StandingLease.done` (the
  commit cannot be cancelled, and what it leased is the receiver's to deliver).
* ``done``: answered with :attr:`~StandingLease.results` or :attr:`~StandingLease.error`. An
  empty result (the publishes were duplicates, the mailbox is strict and its head is in
  flight) wakes nobody: the receiver goes on waiting on the notifier and leases anew when woken.

Which batches take a lease: those with a :class:`~store.base.Publish` routed to its mailbox
(the routes say so before the store runs). The scan runs only while some lease stands.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

import trio

from broker.errors import BrokerError
from store.base import Delivery, Lease, Op, Publish

__all__ = ["StandingLease", "StandingLeases"]

STANDING, TAKEN, DONE, WITHDRAWN = "standing", "taken", "done", "withdrawn"


class StandingLease:
    """One receiver's filed lease (see the module docs for its states)."""

    __slots__ = ("done", "error", "op", "results", "state")

    def __init__(self, op: Lease) -> None:
        self.op = op
        self.state = STANDING
        self.done = trio.Event()
        self.results: list[Delivery] = []
        self.error: BrokerError | None = None

    def answer(self, result: object) -> bool:
        """Record the store's result for this lease (in the event loop); True if it leased
        something (or failed), i.e. its receiver is to be woken."""
        if isinstance(result, BrokerError):
            self.error = result
        elif isinstance(result, list):
            self.results = result
        self.state = DONE
        self.done.set()
        return bool(self.results) or self.error is not None


class StandingLeases:
    """The filed leases by mailbox, shared by the event loop and the commit thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_mailbox: dict[str, list[StandingLease]] = {}

    def __bool__(self) -> bool:
        # read without the lock by the commit thread: a lease filed a moment later only misses
        # this batch, and its receiver's notifier wait catches the batch's wake-up instead
        return bool(self._by_mailbox)

    def __len__(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._by_mailbox.values())

    def file(self, op: Lease) -> StandingLease:
        lease = StandingLease(op)
        with self._lock:
            self._by_mailbox.setdefault(op.mailbox_id, []).append(lease)
        return lease

    def withdraw(self, lease: StandingLease) -> bool:
        """Take back a lease that no batch has taken; False once one has (wait for ``done``)."""
        with self._lock:
            if lease.state != STANDING:
                return False
            filed = self._by_mailbox[lease.op.mailbox_id]
            filed.remove(lease)
            if not filed:
                del self._by_mailbox[lease.op.mailbox_id]
            lease.state = WITHDRAWN
            return True

    def take(self, batch: Iterable[Sequence[Op]]) -> list[StandingLease]:
        """In the commit thread: the leases whose mailboxes a publish of ``batch`` (op lists)
        is routed to, now ``taken``."""
        with self._lock:
            wanted = set(self._by_mailbox)
        hit: set[str] = set()
        for ops in batch:
            for op in ops:
                if isinstance(op, Publish):
                    for route in op.routes:
                        if route.mailbox_id in wanted:
                            hit.add(route.mailbox_id)
        if not hit:
            return []
        taken: list[StandingLease] = []
        with self._lock:
            for mailbox_id in hit:
                for lease in self._by_mailbox.pop(mailbox_id, ()):
                    lease.state = TAKEN
                    taken.append(lease)
        return taken

    def fail_all(self, error: BrokerError) -> None:
        """At shutdown: answer every standing lease with ``error``."""
        with self._lock:
            filed = [lease for leases in self._by_mailbox.values() for lease in leases]
            self._by_mailbox.clear()
        for lease in filed:
            lease.answer(error)

"""Wakes long-polling receivers when their mailbox gains ready deliveries.

Theory of operation
-------------------
The writer calls :meth:`Notifier.notify` after each commit with the mailboxes that gained ready
deliveries. A poller first reads :meth:`generation` for its mailbox, then tries to lease, and
only if that found nothing waits with :meth:`wait_ready` *since that generation*: a commit that
lands between the lease and the wait bumps the generation, so the wait returns at once and no
wake-up is lost. State is one counter per mailbox that ever had a waiter or a notification
(bounded by the number of mailboxes) and one event per mailbox being waited on.
"""

from __future__ import annotations

from collections.abc import Iterable

import trio
from msgspec import Struct

__all__ = ["Notifier", "NotifierStats"]


class NotifierStats(Struct, frozen=True, kw_only=True):
    waiting_mailboxes: int
    notifications: int


class Notifier:
    """Per-mailbox generation counters plus events for current waiters (one trio run)."""

    def __init__(self) -> None:
        self._generation: dict[str, int] = {}
        self._events: dict[str, trio.Event] = {}
        self._notifications = 0

    def generation(self, mailbox_id: str) -> int:
        return self._generation.get(mailbox_id, 0)

    def notify(self, mailbox_ids: Iterable[str]) -> None:
        """Bump the generation of each mailbox and wake its waiters. Never blocks."""
        for mb in mailbox_ids:
            self._generation[mb] = self._generation.get(mb, 0) + 1
            self._notifications += 1
            event = self._events.pop(mb, None)
            if event is not None:
                event.set()

    def forget(self, mailbox_id: str) -> None:
        """Drop a deleted mailbox's state (and wake its waiters, who will see it is gone)."""
        self.notify([mailbox_id])
        self._generation.pop(mailbox_id, None)

    async def wait_ready(self, mailbox_id: str, since: int, deadline: float) -> bool:
        """Wait until the mailbox's generation moves past ``since``, at most until ``deadline``
        (``trio.current_time()`` units). Returns True if it moved (something may be ready).
        """
        if self._generation.get(mailbox_id, 0) != since:
            await trio.lowlevel.checkpoint()
            return True
        event = self._events.get(mailbox_id)
        if event is None:
            event = self._events[mailbox_id] = trio.Event()
        with trio.move_on_at(deadline):
            await event.wait()
            return True
        # A timed-out waiter leaves its event in place: others may still wait on it, and the
        # next notify pops it, so at most one event per mailbox is ever kept.
        return self._generation.get(mailbox_id, 0) != since

    def statistics(self) -> NotifierStats:
        return NotifierStats(waiting_mailboxes=len(self._events), notifications=self._notifications)

    def __repr__(self) -> str:
        s = self.statistics()
        return f"<Notifier [{s.waiting_mailboxes} mailboxes waited on | {s.notifications} notifications]>"

"""Loss and duplicate accounting: every sent envelope is accounted for. Pure, no I/O.

Theory of operation
-------------------
Envelope ``n`` (its BeskedId encodes ``n``, see :mod:`broker.loadtest.envelopes`) is *sent*
once (:meth:`Ledger.add_sent`, however often its request is retried), then *confirmed* (the
broker answered a result for it), *refused* (an error result) or neither (*unconfirmed*: no
answer, e.g. a timeout). Its type fixes the mailboxes it is *expected* in (the topology).

Each time a receiver gets a copy, :meth:`Ledger.deliver` classifies it by the highest attempt
already seen of the same envelope in the same mailbox:

=================  ====================================================================
``FIRST``          nothing seen before: one delivery (``delivered``)
``REDELIVERY``     a higher attempt than any seen: at-least-once redelivery, fine
``DUPLICATE``      the same or a lower attempt again: a copy beyond at-least-once
``MISROUTED``      the envelope's type is not subscribed in this mailbox
``FOREIGN``        not one of this run's envelopes (or never sent by it)
=================  ====================================================================

``lost`` (at :meth:`Ledger.close`, after the drain) counts confirmed envelopes that did not
reach every expected mailbox; ``lost_deliveries`` counts the missing (envelope, mailbox)
pairs. Delivery may come before the confirm (the receiver can be faster than the sender's
HTTP answer); the ``outstanding`` counter handles both orders, so the drain can stop as soon as
it reaches 0.

Memory: per envelope one float (send time), three bytes (type, state, mailboxes reached) and
two bytes per mailbox (highest attempt seen), all in flat arrays that grow with the run.
"""

from __future__ import annotations

import enum
from array import array
from collections import Counter
from collections.abc import Sequence

import msgspec

__all__ = ["Accounting", "Ledger", "LedgerFull", "Receipt"]

_SENT, _CONFIRMED, _REFUSED = 0, 1, 2
_MAX_ATTEMPT = 0xFFFF
_ZERO_CHUNK = array("H", bytes(2 * 65536))


class LedgerFull(Exception):
    """The run reached the ledger's capacity (``max_envelopes``)."""


class Receipt(enum.Enum):
    FIRST = "first"
    REDELIVERY = "redelivery"
    DUPLICATE = "duplicate"
    MISROUTED = "misrouted"
    FOREIGN = "foreign"


class Accounting(msgspec.Struct, frozen=True, kw_only=True):
    """The final counts of a run (see the module docstring for each term)."""

    sent: int
    confirmed: int
    refused: int
    unconfirmed: int
    expected_deliveries: int  # sum over confirmed envelopes of their expected mailboxes
    delivered: int  # FIRST receipts (of any sent envelope, confirmed or not)
    redelivered: int
    duplicates: int
    misrouted: int
    foreign: int
    lost: int
    lost_deliveries: int
    refused_by_code: dict[str, int]


class Ledger:
    """The accounting of one run.

    Arguments:
        routes: per type index, the mailbox indexes that subscribe to it.
        mailboxes: how many mailboxes there are.
        max_envelopes: capacity; :meth:`add_sent` raises :class:`LedgerFull` beyond it.
    """

    def __init__(
        self, routes: Sequence[Sequence[int]], mailboxes: int, *, max_envelopes: int
    ) -> None:
        if len(routes) > 255:
            raise ValueError("at most 255 message types per run")
        self._routes = [frozenset(r) for r in routes]
        self._fanout = bytes(min(len(r), 255) for r in routes)
        self.mailboxes = mailboxes
        self.max_envelopes = max_envelopes
        self.sent_at = array("d")  # per envelope: send time (the caller's clock, seconds)
        self._type = bytearray()
        self._state = bytearray()
        self._reached = bytearray()  # distinct expected mailboxes reached (FIRST receipts)
        self._attempt = [array("H") for _ in range(mailboxes)]  # highest attempt seen, 0 = none
        self._attempt_len = 0
        self.confirmed = 0
        self.delivered = 0
        self.redelivered = 0
        self.duplicates = 0
        self.misrouted = 0
        self.foreign = 0
        self.refused_by_code: Counter[str] = Counter()
        #: expected deliveries of confirmed envelopes not received yet (the drain waits for 0)
        self.outstanding = 0

    def __repr__(self) -> str:
        return (
            f"<Ledger sent={self.sent} confirmed={self.confirmed} delivered={self.delivered} "
            f"outstanding={self.outstanding} duplicates={self.duplicates}>"
        )

    @property
    def sent(self) -> int:
        return len(self._state)

    def add_sent(self, type_index: int, sent_at: float) -> int:
        """Record a new envelope of type ``type_index``; returns its number ``n``."""
        n = len(self._state)
        if n >= self.max_envelopes:
            raise LedgerFull(f"the run reached max_envelopes={self.max_envelopes}")
        self.sent_at.append(sent_at)
        self._type.append(type_index)
        self._state.append(_SENT)
        self._reached.append(0)
        if n >= self._attempt_len:  # grow the per-mailbox arrays a chunk at a time
            for a in self._attempt:
                a.extend(_ZERO_CHUNK)
            self._attempt_len += len(_ZERO_CHUNK)
        return n

    def expected(self, n: int) -> frozenset[int]:
        return self._routes[self._type[n]]

    def expected_count(self, n: int) -> int:
        return self._fanout[self._type[n]]

    def confirm(self, n: int) -> bool:
        """The broker stored envelope ``n``. False if it was already confirmed (a retry)."""
        if self._state[n] == _CONFIRMED:
            return False
        self._state[n] = _CONFIRMED
        self.confirmed += 1
        self.outstanding += self._fanout[self._type[n]] - self._reached[n]
        return True

    def refuse(self, n: int, code: str) -> None:
        """The broker answered an error for envelope ``n`` (``code`` is its error code)."""
        if self._state[n] == _SENT:
            self._state[n] = _REFUSED
            self.refused_by_code[code] += 1

    def is_confirmed(self, n: int) -> bool:
        return self._state[n] == _CONFIRMED

    def deliver(self, mailbox: int, n: int | None, attempt: int) -> Receipt:
        """Classify one copy of envelope ``n`` (None: not this run's) received in ``mailbox``."""
        if n is None or n >= len(self._state) or n < 0:
            self.foreign += 1
            return Receipt.FOREIGN
        if mailbox not in self._routes[self._type[n]]:
            self.misrouted += 1
            return Receipt.MISROUTED
        seen = self._attempt[mailbox]
        attempt = max(1, min(attempt, _MAX_ATTEMPT))
        before = seen[n]
        if before == 0:
            seen[n] = attempt
            self.delivered += 1
            self._reached[n] += 1
            if self._state[n] == _CONFIRMED:
                self.outstanding -= 1
            return Receipt.FIRST
        if attempt > before:
            seen[n] = attempt
            self.redelivered += 1
            return Receipt.REDELIVERY
        self.duplicates += 1
        return Receipt.DUPLICATE

    def close(self) -> Accounting:
        """The final counts (call after the drain). O(envelopes)."""
        lost = lost_deliveries = expected = 0
        state, reached, fanout, types = self._state, self._reached, self._fanout, self._type
        for n in range(len(state)):
            if state[n] != _CONFIRMED:
                continue
            want = fanout[types[n]]
            expected += want
            if reached[n] < want:
                lost += 1
                lost_deliveries += want - reached[n]
        refused = sum(self.refused_by_code.values())
        return Accounting(
            sent=self.sent,
            confirmed=self.confirmed,
            refused=refused,
            unconfirmed=self.sent - self.confirmed - refused,
            expected_deliveries=expected,
            delivered=self.delivered,
            redelivered=self.redelivered,
            duplicates=self.duplicates,
            misrouted=self.misrouted,
            foreign=self.foreign,
            lost=lost,
            lost_deliveries=lost_deliveries,
            refused_by_code=dict(self.refused_by_code),
        )

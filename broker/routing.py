"""Routing: which mailboxes an accepted envelope goes to. Pure, sans-IO.

Theory of operation
-------------------
The table is an index from message type (lower-cased ``Beskedtype``) to the active
subscriptions naming it, so routing an envelope costs one dict lookup plus the matches. A
mailbox receives an envelope at most once, under its first matching subscription (ordered by
subscription id, so the choice is stable across restarts).

Subscription expressions are the seam for the filter language: a subscription whose expression
is set is handed to ``matcher`` (``None`` here means "the expression language is not enabled",
and such subscriptions are refused at creation, not silently matched).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from msgspec import Struct

from broker.envelope import Haendelsesbesked, uid_key
from store.base import Route, SubscriptionRecord

__all__ = ["RoutingStats", "RoutingTable"]

Matcher = Callable[[SubscriptionRecord, Haendelsesbesked], bool]


class RoutingStats(Struct, frozen=True, kw_only=True):
    subscriptions: int
    message_types: int


class RoutingTable:
    """Message type -> subscriptions; ``route()`` gives the routes of one envelope."""

    def __init__(
        self, subscriptions: Iterable[SubscriptionRecord] = (), *, matcher: Matcher | None = None
    ) -> None:
        self._by_id: dict[str, SubscriptionRecord] = {}
        self._by_type: dict[str, list[SubscriptionRecord]] = {}
        self._matcher = matcher
        for sub in subscriptions:
            self.add(sub)

    def add(self, sub: SubscriptionRecord) -> None:
        """Add or replace a subscription."""
        if sub.id in self._by_id:
            self.remove(sub.id)
        self._by_id[sub.id] = sub
        if not sub.active:
            return
        for mt in sub.message_types:
            subs = self._by_type.setdefault(mt.lower(), [])
            subs.append(sub)
            subs.sort(key=lambda s: s.id)

    def remove(self, subscription_id: str) -> None:
        sub = self._by_id.pop(subscription_id, None)
        if sub is None:
            return
        for mt in sub.message_types:
            subs = self._by_type.get(mt.lower())
            if subs is None:
                continue
            subs[:] = [s for s in subs if s.id != subscription_id]
            if not subs:
                del self._by_type[mt.lower()]

    def remove_mailbox(self, mailbox_id: str) -> None:
        for sub_id in [s.id for s in self._by_id.values() if s.mailbox_id == mailbox_id]:
            self.remove(sub_id)

    def route(self, besked: Haendelsesbesked) -> tuple[Route, ...]:
        """Routes of a canonical envelope: each mailbox once, first matching subscription."""
        subs = self._by_type.get(uid_key(besked.Beskedkuvert.Filtreringsdata.Beskedtype) or "")
        if not subs:
            return ()
        if len(subs) == 1 and subs[0].expression is None:
            return (Route(subs[0].mailbox_id, subs[0].id),)
        seen: set[str] = set()
        routes: list[Route] = []
        for sub in subs:
            if sub.mailbox_id in seen:
                continue
            if sub.expression is not None and (
                self._matcher is None or not self._matcher(sub, besked)
            ):
                continue
            seen.add(sub.mailbox_id)
            routes.append(Route(sub.mailbox_id, sub.id))
        return tuple(routes)

    def statistics(self) -> RoutingStats:
        return RoutingStats(subscriptions=len(self._by_id), message_types=len(self._by_type))

    def __repr__(self) -> str:
        s = self.statistics()
        return f"<RoutingTable [{s.subscriptions} subscriptions | {s.message_types} message types]>"

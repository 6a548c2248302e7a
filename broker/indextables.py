"""The tables :class:`broker.index.SubscriptionIndex` files subscriptions in (internal).

Also home of :class:`Subscription` and :data:`Route`, what the tables hold; both are
re-exported by :mod:`broker.index`.
"""

from __future__ import annotations

from typing import TypeAlias

import msgspec

from broker.filters import Expression, PathKey, path_extractor

__all__ = ["Route", "Subscription"]

Route: TypeAlias = tuple[str, str]  # (mailbox_id, subscription_id)


class Subscription(msgspec.Struct, frozen=True, kw_only=True):
    """One abonnement as the index holds it (the expression already compiled)."""

    id: str
    mailbox_id: str
    owner: str
    message_types: tuple[str, ...]
    expression: Expression | None = None
    active: bool = True


class _Table:
    """The subscriptions filed under one path of one message type, by value.

    A value maps to one entry per registration: exact ones as routes (a bare route when there is
    one, the common case), the others as (subscription, route).
    """

    __slots__ = ("exact", "extract", "inexact", "users")

    def __init__(self, path: PathKey) -> None:
        self.extract = path_extractor(path)
        # a bare route (type tuple), or a list of routes when several subscriptions share the
        # value: telling them apart by the container's type reads no further memory
        self.exact: dict[str, Route | list[Route]] = {}
        self.inexact: dict[str, tuple[tuple[Subscription, Route], ...]] = {}
        self.users = 0  # registrations (subscription x atom); the table goes with the last

    def routes(self, value: str) -> tuple[Route, ...]:
        r = self.exact.get(value)
        if r is None:
            return ()
        return (r,) if isinstance(r, tuple) else tuple(r)

    def count(self, value: str) -> int:
        return len(self.routes(value)) + len(self.inexact.get(value, ()))

    def add(self, value: str, sub: Subscription, route: Route, exact: bool) -> None:
        if exact:
            routes = self.routes(value)
            if routes:
                self.exact[value] = [*routes, route]
            else:
                self.exact[_fresh(value)] = route
        else:
            entries = self.inexact.get(value)
            if entries:
                self.inexact[value] = (*entries, (sub, route))
            else:
                self.inexact[_fresh(value)] = ((sub, route),)

    def discard(self, value: str, sid: str, exact: bool) -> None:
        """Drop one registration of subscription ``sid`` under ``value``."""
        if exact:
            routes = list(self.routes(value))
            for i, r in enumerate(routes):
                if r[1] == sid:
                    del routes[i]
                    break
            if not routes:
                self.exact.pop(value, None)
            else:
                self.exact[value] = routes[0] if len(routes) == 1 else routes
        else:
            entries = list(self.inexact.get(value, ()))
            for i, (s, _) in enumerate(entries):
                if s.id == sid:
                    del entries[i]
                    break
            if entries:
                self.inexact[value] = tuple(entries)
            else:
                self.inexact.pop(value, None)


class _Bucket:
    """Everything filed for one message type."""

    __slots__ = ("always", "eq", "lists", "scan")

    def __init__(self) -> None:
        self.always: dict[str, Route] = {}
        self.scan: dict[str, tuple[Subscription, Route]] = {}
        self.eq: dict[PathKey, _Table] = {}
        self.lists: dict[PathKey, _Table] = {}

    def __bool__(self) -> bool:
        return bool(self.always or self.scan or self.eq or self.lists)


def _fresh(text: str) -> str:
    """A new copy of ``text`` to keep as a table key.

    A lookup compares the envelope's value with the stored key, so the key is read on every
    hit. The literal from the expression sits among that expression's other objects (about a
    kilobyte each); copies made while filing sit densely together, which with 100,000
    subscriptions saves a cache and TLB miss per hit.
    """
    return (text + " ")[:-1]

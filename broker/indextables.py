"""The tables :class:`broker.index.SubscriptionIndex` files subscriptions in (internal).

Also home of :class:`Subscription` and :data:`Route`, what the tables hold; both are
re-exported by :mod:`broker.index`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

import msgspec

from broker.envelope import Haendelsesbesked
from broker.filters import Expression, PathKey, ValueLists, path_extractor

__all__ = ["Route", "Subscription"]

Route: TypeAlias = tuple[str, str]  # (mailbox_id, subscription_id)
#: The comparison keys at one path of an envelope.
Extractor: TypeAlias = Callable[[Haendelsesbesked], list[str]]
#: ``_Table.exact.get``: a bare route, several in a list, or ``None``.
ExactLookup: TypeAlias = Callable[[str], "Route | list[Route] | None"]


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
        self.extract: Extractor = path_extractor(path)
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


class _Plan:
    """What :meth:`broker.index.SubscriptionIndex.match` walks for one message type, as flat
    tuples (built once per change of the bucket's shape, not per envelope).

    ``fast`` is set when every filed subscription is an exact one (no unconditional, evaluated
    or inexact ones): routing is then only ``(extract, exact.get)`` pairs, one dict probe per
    value, with nothing allocated but the answer.
    """

    __slots__ = ("always", "fast", "scan", "tables")

    def __init__(self, bucket: _Bucket) -> None:
        self.always: tuple[Route, ...] = tuple(bucket.always.values())
        self.scan: tuple[tuple[Subscription, Route], ...] = tuple(bucket.scan.values())
        tables = (*bucket.eq.values(), *bucket.lists.values())
        self.tables: tuple[_Table, ...] = tables
        simple = not (self.always or self.scan or any(t.inexact for t in tables))
        self.fast: tuple[tuple[Extractor, ExactLookup], ...] | None = (
            tuple((t.extract, t.exact.get) for t in tables) if simple else None
        )

    def match_all(self, besked: Haendelsesbesked, lists: ValueLists) -> list[Route]:
        """The routes when ``fast`` is not set: the unconditional ones, the evaluated ones that
        hold, the exact ones found and the inexact ones found that hold (each tried once)."""
        found: list[Route] = list(self.always)
        for sub, route in self.scan:
            if sub.expression.evaluate(besked, lists, sub.owner):  # type: ignore[union-attr]
                found.append(route)
        tried: set[str] = set()
        for table in self.tables:
            exact, inexact = table.exact, table.inexact
            for value in table.extract(besked):
                routes = exact.get(value)
                if routes is not None:
                    if type(routes) is tuple:
                        found.append(routes)
                    else:
                        found += routes  # type: ignore[arg-type]
                if inexact and (candidates := inexact.get(value)) is not None:
                    for sub, route in candidates:
                        if sub.id not in tried:
                            tried.add(sub.id)
                            if sub.expression.evaluate(besked, lists, sub.owner):  # type: ignore[union-attr]
                                found.append(route)
        return found if len(found) <= 1 else _first_per_mailbox(found)


class _Bucket:
    """Everything filed for one message type, and its :class:`_Plan` (``None`` after a change
    of shape: call :meth:`changed` then)."""

    __slots__ = ("always", "eq", "lists", "plan", "scan")

    def __init__(self) -> None:
        self.always: dict[str, Route] = {}
        self.scan: dict[str, tuple[Subscription, Route]] = {}
        self.eq: dict[PathKey, _Table] = {}
        self.lists: dict[PathKey, _Table] = {}
        self.plan: _Plan | None = None

    def replan(self) -> _Plan:
        plan = self.plan = _Plan(self)
        return plan

    def changed(self) -> None:
        self.plan = None

    def __bool__(self) -> bool:
        return bool(self.always or self.scan or self.eq or self.lists)


def _first_per_mailbox(found: list[Route]) -> list[Route]:
    """A subscription may be found twice (two of its values present), a mailbox through
    several: keep the first route per mailbox in subscription-id order."""
    found.sort(key=_by_subscription)
    first: dict[str, Route] = {}
    for route in found:
        first.setdefault(route[0], route)
    return list(first.values())


def _by_subscription(route: Route) -> str:
    return route[1]


def _fresh(text: str) -> str:
    """A new copy of ``text`` to keep as a table key.

    A lookup compares the envelope's value with the stored key, so the key is read on every
    hit. The literal from the expression sits among that expression's other objects (about a
    kilobyte each); copies made while filing sit densely together, which with 100,000
    subscriptions saves a cache and TLB miss per hit.
    """
    return (text + " ")[:-1]

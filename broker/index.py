"""The subscription index: which mailboxes an envelope goes to, at a cost set by the matches.

Theory of operation
-------------------
Subscriptions are filed by message type (the comparison key of each ``Beskedtype`` UUID), and
within a type by what their expression needs (:class:`broker.filters.Probe`):

* no expression: *unconditional*, matched without looking at the envelope;
* a probe (a necessary condition "some value at path P is one of these" or "… is in value list
  L"): filed under the values of every atom of one probe, in a table per path P. Routing reads
  the envelope's values at each filed path (a handful of distinct paths, however many
  subscriptions) and looks each value up: only subscriptions filed under a present value are
  visited;
* no probe (``!=``, ``not``, … alone): *evaluated* for every envelope of the type. This is the
  only part whose cost grows with the subscription count; :meth:`SubscriptionIndex.statistics`
  counts it.

A candidate whose probe is exact (the expression *is* the probe: ``P = 'v'``, ``P in (…)``,
``P in valueliste('L')``, or an ``or`` of those) is a match without evaluation, and is kept as
a bare route tuple: a hit is one dict lookup and one tuple, the same few memory accesses with
10 or with 100,000 subscriptions. The others are evaluated once each. Each type's bucket keeps
a flat routing plan (:class:`~broker.indextables._Plan`), rebuilt after a change of its shape:
when all its subscriptions are exact, :meth:`~SubscriptionIndex.match` is only ``(extract,
lookup)`` pairs, with no per-envelope allocation but the answer.

When an expression offers several probes (one per conjunct of an ``and``), the index files it
under the one whose tables are currently smallest, so ``ObjektId = 'urn:oio:cpr:…' and
ObjektHandling = '…'`` lands under the CPR number once a few subscriptions share the
ObjektHandling value.

Value lists are *maintained*, not looked up: a subscription filed under ``P in
valueliste('L')`` is filed under every value L holds now, and the index watches the lists
(:class:`WatchedValueLists`): each edit calls :meth:`SubscriptionIndex.value_list_changed`
synchronously with the values added and removed, so the next :meth:`~SubscriptionIndex.match`
sees it. Routing through a list then costs what ``P = 'v'`` costs (one lookup), and an edit
costs one table update per value per subscription using the list. A subscription may be filed
under one value through two lists; each registration counts, so removing the value from one
list leaves the other. An index built without lists cannot file list atoms and evaluates such
subscriptions instead (through the lists given to ``match``).

A mailbox receives an envelope at most once, under its first matching subscription in
subscription-id order. Not thread-safe: one owner (the router) mutates and reads it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Final

import msgspec

from broker.envelope import Haendelsesbesked, uid_value
from broker.errors import Conflict, InvalidInput, NotFound
from broker.filters import (
    EqAtom,
    ListAtom,
    PathKey,
    Probe,
    ValueLists,
    comparison_key,
    format_path_key,
)
from broker.indextables import Route, Subscription, _Bucket, _first_per_mailbox, _Table
from broker.valuelistmemory import (
    InMemoryValueLists,
    ValueListListener,
    ValueListStatistics,
    WatchedValueLists,
    _NoLists,
)

__all__ = [
    "InMemoryValueLists",
    "IndexStatistics",
    "Route",
    "Subscription",
    "SubscriptionIndex",
    "ValueListListener",
    "ValueListStatistics",
    "WatchedValueLists",
]

_NO_LISTS: Final = _NoLists()
_EQ: Final = 0
_LIST: Final = 1


class IndexStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Counts of a :class:`SubscriptionIndex`; the filing counts cover active subscriptions.

    Attributes:
        subscriptions: held, active or not.
        active: active ones (the others are held but never matched).
        message_types: distinct message types with at least one active subscription.
        unconditional: without an expression.
        indexed: filed under a probe (only visited when a probed value is present).
        exact: of ``indexed``, those decided by the lookup alone (never evaluated).
        evaluated: evaluated for every envelope of their types (no usable probe).
        indexed_paths: distinct (message type, path) tables.
        watched_lists: distinct value lists that filed subscriptions follow.
    """

    subscriptions: int
    active: int
    message_types: int
    unconditional: int
    indexed: int
    exact: int
    evaluated: int
    indexed_paths: int
    watched_lists: int


class SubscriptionIndex:
    """Active subscriptions filed for routing; :meth:`match` gives an envelope's mailboxes.

    Arguments:
        subscriptions: the initial set.
        lists: the value lists to file ``in valueliste(…)`` terms under; the index watches them
            until :meth:`close`. Without, such terms are evaluated.
    """

    def __init__(
        self, subscriptions: Iterable[Subscription] = (), *, lists: WatchedValueLists | None = None
    ) -> None:
        self._lists = lists
        self._subs: dict[str, Subscription] = {}
        self._types: dict[str, _Bucket] = {}
        # per filed subscription: its route, its kind and where it is filed
        self._routes: dict[str, Route] = {}
        self._kind: dict[str, str] = {}  # "unconditional" | "exact" | "indexed" | "evaluated"
        self._filed: dict[str, list[tuple[str, int, PathKey, str | tuple[str, str]]]] = {}
        # (owner, list name) -> subscription id -> [(type, path)] filed under its values
        self._watchers: dict[tuple[str, str], dict[str, list[tuple[str, PathKey]]]] = {}
        if lists is not None:
            lists.watch(self.value_list_changed)
        for sub in subscriptions:
            self.add(sub)

    def close(self) -> None:
        """Stop watching the value lists (the index is being replaced)."""
        if self._lists is not None:
            self._lists.unwatch(self.value_list_changed)

    # -- mutation

    def add(self, sub: Subscription) -> None:
        """File a new subscription (an inactive one is held but not filed).

        Error handling:
            Raises :class:`Conflict` if the id is already held and :class:`InvalidInput` if it
            names no message type.
        """
        if sub.id in self._subs:
            raise Conflict(f"subscription {sub.id} is already in the index")
        if not sub.message_types:
            raise InvalidInput("a subscription needs at least one message type")
        self._subs[sub.id] = sub
        if sub.active:
            self._file(sub)

    def remove(self, subscription_id: str) -> Subscription:
        """Unfile and forget a subscription; returns it.

        Error handling:
            Raises :class:`NotFound` if it is not held.
        """
        sub = self._subs.get(subscription_id)
        if sub is None:
            raise NotFound(f"subscription {subscription_id} is not in the index")
        self._unfile(sub)
        del self._subs[subscription_id]
        return sub

    def replace(self, sub: Subscription) -> Subscription:
        """Swap the held subscription with ``sub.id`` for ``sub`` (e.g. to (de)activate it or
        change its expression); returns the old one.

        Error handling:
            Raises :class:`NotFound` if no subscription has that id, :class:`InvalidInput` if
            ``sub`` names no message type (the old one stays).
        """
        if not sub.message_types and sub.id in self._subs:
            raise InvalidInput("a subscription needs at least one message type")
        old = self.remove(sub.id)
        self.add(sub)
        return old

    def remove_mailbox(self, mailbox_id: str) -> list[Subscription]:
        """Forget every subscription of one mailbox (it was deleted)."""
        ids = [s.id for s in self._subs.values() if s.mailbox_id == mailbox_id]
        return [self.remove(i) for i in ids]

    def value_list_changed(
        self, owner: str, name: str, added: Collection[str], removed: Collection[str]
    ) -> None:
        """Refile what follows list ``name`` of ``owner`` (the watched lists call this)."""
        regs = self._watchers.get((owner, name))
        if not regs:
            return
        for sid, places in regs.items():
            sub, route, exact = self._subs[sid], self._routes[sid], self._kind[sid] == "exact"
            for t, path in places:
                bucket = self._types[t]
                table = bucket.lists[path]
                if not exact:  # the inexact tables may go from empty to not or back
                    bucket.changed()
                for v in removed:
                    table.discard(v, sid, exact)
                for v in added:
                    table.add(v, sub, route, exact)

    def get(self, subscription_id: str) -> Subscription | None:
        return self._subs.get(subscription_id)

    def __len__(self) -> int:
        return len(self._subs)

    def __contains__(self, subscription_id: object) -> bool:
        return subscription_id in self._subs

    # -- routing

    def match(self, besked: Haendelsesbesked, lists: ValueLists | None = None) -> list[Route]:
        """The ``(mailbox_id, subscription_id)`` routes of a canonical envelope: each mailbox
        once, under its matching subscription with the smallest id, in subscription-id order.

        ``lists`` serves the evaluation of expressions; by default the watched lists.

        Error handling:
            Whatever ``lists`` raises propagates (nothing is changed).
        """
        kind = uid_value(besked.Beskedkuvert.Filtreringsdata.Beskedtype) or ""
        bucket = self._types.get(kind)  # UUIDs usually arrive lower-case already
        if bucket is None:
            bucket = self._types.get(comparison_key(kind))
            if bucket is None:
                return []
        plan = bucket.plan or bucket.replan()
        fast = plan.fast
        if fast is None:
            if lists is None:
                lists = self._lists if self._lists is not None else _NO_LISTS
            return plan.match_all(besked, lists)
        # only exact subscriptions: per indexed path one probe per value, straight to routes
        found: list[Route] = []
        for extract, lookup in fast:
            for value in extract(besked):
                routes = lookup(value)
                if routes is not None:
                    if type(routes) is tuple:  # one route: the common, cheapest case
                        found.append(routes)
                    else:
                        found += routes  # type: ignore[arg-type]
        return found if len(found) <= 1 else _first_per_mailbox(found)

    # -- introspection

    def statistics(self) -> IndexStatistics:
        kinds = list(self._kind.values())
        return IndexStatistics(
            subscriptions=len(self._subs),
            active=len(self._kind),
            message_types=len(self._types),
            unconditional=kinds.count("unconditional"),
            indexed=kinds.count("indexed") + kinds.count("exact"),
            exact=kinds.count("exact"),
            evaluated=kinds.count("evaluated"),
            indexed_paths=sum(len(b.eq) + len(b.lists) for b in self._types.values()),
            watched_lists=len(self._watchers),
        )

    def filed_paths(self) -> list[str]:
        """The distinct paths subscriptions are filed under (for diagnostics)."""
        paths = {p for b in self._types.values() for p in (*b.eq, *b.lists)}
        return sorted(format_path_key(p) for p in paths)

    def __repr__(self) -> str:
        s = self.statistics()
        return (
            f"<SubscriptionIndex [{s.subscriptions} subscriptions, {s.active} active"
            f" | {s.message_types} types | {s.unconditional} unconditional, {s.indexed} indexed"
            f" ({s.exact} exact), {s.evaluated} evaluated | {s.watched_lists} lists]>"
        )

    # -- filing

    def _file(self, sub: Subscription) -> None:
        sid = sub.id
        types = list(dict.fromkeys(comparison_key(t) for t in sub.message_types))
        buckets = [self._types.setdefault(t, _Bucket()) for t in types]
        for b in buckets:
            b.changed()
        route = self._routes[sid] = (sub.mailbox_id, sid)
        expr = sub.expression
        if expr is None:
            for b in buckets:
                b.always[sid] = route
            self._kind[sid] = "unconditional"
            return
        probe = self._choose(expr.probes, buckets, sub.owner)
        if probe is None:
            for b in buckets:
                b.scan[sid] = (sub, route)
            self._kind[sid] = "evaluated"
            return
        self._kind[sid] = "exact" if probe.exact else "indexed"
        filed = self._filed[sid] = []
        for t, b in zip(types, buckets, strict=True):
            for atom in probe.atoms:
                tables = b.eq if isinstance(atom, EqAtom) else b.lists
                table = tables.get(atom.path)
                if table is None:
                    table = tables[atom.path] = _Table(atom.path)
                table.users += 1
                if isinstance(atom, EqAtom):
                    table.add(atom.value, sub, route, probe.exact)
                    filed.append((t, _EQ, atom.path, atom.value))
                else:
                    assert self._lists is not None  # _choose files list atoms only then
                    key = (sub.owner, atom.name)
                    self._watchers.setdefault(key, {}).setdefault(sid, []).append((t, atom.path))
                    for v in self._lists.active_values(*key):
                        table.add(v, sub, route, probe.exact)
                    filed.append((t, _LIST, atom.path, key))

    def _choose(
        self, probes: tuple[Probe, ...], buckets: list[_Bucket], owner: str
    ) -> Probe | None:
        """The usable probe whose tables hold the fewest subscriptions now (work per hit)."""

        def cost(probe: Probe) -> tuple[int, bool, int]:
            n = 0
            for b in buckets:
                for atom in probe.atoms:
                    if isinstance(atom, EqAtom):
                        table = b.eq.get(atom.path)
                        n += 0 if table is None else table.count(atom.value)
                    else:  # subscriptions following the same list
                        n += len(self._watchers.get((owner, atom.name), ()))
            return n, not probe.exact, len(probe.atoms)

        usable = [
            p
            for p in probes
            if self._lists is not None or not any(isinstance(a, ListAtom) for a in p.atoms)
        ]
        return min(usable, key=cost) if usable else None

    def _unfile(self, sub: Subscription) -> None:
        sid = sub.id
        kind = self._kind.pop(sid, None)
        if kind is None:
            return  # inactive: never filed
        del self._routes[sid]
        types = list(dict.fromkeys(comparison_key(t) for t in sub.message_types))
        for t in types:
            b = self._types[t]
            b.changed()
            b.always.pop(sid, None)
            b.scan.pop(sid, None)
        exact = kind == "exact"
        for t, how, path, key in self._filed.pop(sid, ()):
            b = self._types[t]
            tables = b.eq if how == _EQ else b.lists
            table = tables[path]
            if isinstance(key, str):
                table.discard(key, sid, exact)
            else:
                assert self._lists is not None
                for v in self._lists.active_values(*key):
                    table.discard(v, sid, exact)
                followers = self._watchers.get(key)
                if followers is not None:  # (a second type filed under the same list)
                    followers.pop(sid, None)
                    if not followers:
                        del self._watchers[key]
            table.users -= 1
            if not table.users:
                del tables[path]
        for t in types:
            if not self._types[t]:
                del self._types[t]

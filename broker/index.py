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
10 or with 100,000 subscriptions. The others are evaluated once each.

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

from collections.abc import Callable, Collection, Iterable
from typing import Final, Protocol, TypeAlias

import msgspec

from broker.envelope import Haendelsesbesked, uid_value
from broker.errors import Conflict, InvalidInput, NotFound
from broker.filters import (
    EqAtom,
    Expression,
    ListAtom,
    PathKey,
    Probe,
    ValueLists,
    comparison_key,
    format_path_key,
    path_extractor,
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

Route: TypeAlias = tuple[str, str]  # (mailbox_id, subscription_id)
#: ``listener(owner, name, added, removed)``: values (comparison keys) that entered or left the
#: *active* contents of one list.
ValueListListener: TypeAlias = Callable[[str, str, Collection[str], Collection[str]], None]


class WatchedValueLists(ValueLists, Protocol):
    """Value lists an index can file subscriptions under (see the module docstring)."""

    def active_values(self, owner: str, name: str) -> Collection[str]:
        """The comparison keys the list holds now; empty if it is passive, deleted or absent."""
        ...

    def watch(self, listener: ValueListListener) -> None:
        """Call ``listener`` after every change of any list's active contents."""
        ...

    def unwatch(self, listener: ValueListListener) -> None: ...


class _NoLists:
    def contains(self, owner: str, name: str, value: str) -> bool:
        return False


_NO_LISTS: Final = _NoLists()
_EQ: Final = 0
_LIST: Final = 1


class Subscription(msgspec.Struct, frozen=True, kw_only=True):
    """One abonnement as the index holds it (the expression already compiled)."""

    id: str
    mailbox_id: str
    owner: str
    message_types: tuple[str, ...]
    expression: Expression | None = None
    active: bool = True


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
                table = self._types[t].lists[path]
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
        if lists is None:
            lists = self._lists if self._lists is not None else _NO_LISTS
        found: list[Route] = list(bucket.always.values()) if bucket.always else []
        for sub, route in bucket.scan.values():
            if sub.expression.evaluate(besked, lists, sub.owner):  # type: ignore[union-attr]
                found.append(route)
        tried: set[str] = set()
        for tables in (bucket.eq, bucket.lists):
            for table in tables.values():
                exact, inexact = table.exact, table.inexact
                for value in table.extract(besked):
                    routes = exact.get(value)
                    if routes is not None:
                        if type(routes) is tuple:  # one route: the common, cheapest case
                            found.append(routes)
                        else:
                            found += routes  # type: ignore[arg-type]
                    if inexact and (candidates := inexact.get(value)) is not None:
                        for sub, route in candidates:
                            if sub.id not in tried:
                                tried.add(sub.id)
                                if sub.expression.evaluate(besked, lists, sub.owner):  # type: ignore[union-attr]
                                    found.append(route)
        if len(found) <= 1:
            return found
        # a subscription may be found twice (two of its values present): keep the first per
        # mailbox in subscription-id order
        found.sort(key=_by_subscription)
        first: dict[str, Route] = {}
        for route in found:
            first.setdefault(route[0], route)
        return list(first.values())

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


# --------------------------------------------------------------------------------------------
# value lists in memory


class ValueListStatistics(msgspec.Struct, frozen=True, kw_only=True):
    lists: int
    active: int
    values: int


class _List:
    __slots__ = ("active", "values")

    def __init__(self) -> None:
        self.values: set[str] = set()
        self.active = True


class InMemoryValueLists:
    """:class:`WatchedValueLists` over dicts, for tests and as the model a store-backed
    implementation mirrors.

    Lists are keyed by (owner, name). Values are stored as comparison keys (UUIDs lower-cased),
    so ``add(…, ['ABC…'])`` then ``contains(…, 'abc…')`` is true. A passivated list keeps its
    values but contains nothing until activated again; adding a present value or removing an
    absent one is not an error (as in KOMBIT's VærdilisteRediger). Listeners hear every change
    of active contents, after it is made.
    """

    def __init__(self) -> None:
        self._lists: dict[tuple[str, str], _List] = {}
        self._listeners: list[ValueListListener] = []

    # -- the protocol

    def contains(self, owner: str, name: str, value: str) -> bool:
        lst = self._lists.get((owner, name))
        return lst is not None and lst.active and value in lst.values

    def active_values(self, owner: str, name: str) -> Collection[str]:
        lst = self._lists.get((owner, name))
        return lst.values if lst is not None and lst.active else ()

    def watch(self, listener: ValueListListener) -> None:
        self._listeners.append(listener)

    def unwatch(self, listener: ValueListListener) -> None:
        self._listeners.remove(listener)

    # -- editing

    def create(self, owner: str, name: str, values: Iterable[str] = ()) -> None:
        """Error handling: :class:`Conflict` if ``owner`` already has a list ``name``."""
        if (owner, name) in self._lists:
            raise Conflict(f"value list {name!r} of {owner} already exists")
        self._lists[(owner, name)] = _List()
        self.add(owner, name, values)

    def add(self, owner: str, name: str, values: Iterable[str]) -> None:
        lst = self._get(owner, name)
        added = {comparison_key(v) for v in values} - lst.values
        lst.values |= added
        self._tell(owner, name, lst, added, ())

    def remove(self, owner: str, name: str, values: Iterable[str]) -> None:
        lst = self._get(owner, name)
        removed = {comparison_key(v) for v in values} & lst.values
        lst.values -= removed
        self._tell(owner, name, lst, (), removed)

    def replace(self, owner: str, name: str, values: Iterable[str]) -> None:
        lst = self._get(owner, name)
        new = {comparison_key(v) for v in values}
        added, removed = new - lst.values, lst.values - new
        lst.values = new
        self._tell(owner, name, lst, added, removed)

    def set_active(self, owner: str, name: str, active: bool) -> None:
        """Passivate (``False``) or reactivate a list."""
        lst = self._get(owner, name)
        if lst.active == active:
            return
        lst.active = active
        everything = frozenset(lst.values)
        if everything:
            for listener in self._listeners:
                listener(owner, name, everything if active else (), () if active else everything)

    def delete(self, owner: str, name: str) -> None:
        self.set_active(owner, name, False)
        del self._lists[(owner, name)]

    def values(self, owner: str, name: str) -> frozenset[str]:
        return frozenset(self._get(owner, name).values)

    def statistics(self) -> ValueListStatistics:
        return ValueListStatistics(
            lists=len(self._lists),
            active=sum(lst.active for lst in self._lists.values()),
            values=sum(len(lst.values) for lst in self._lists.values()),
        )

    def __repr__(self) -> str:
        s = self.statistics()
        return f"<InMemoryValueLists [{s.lists} lists, {s.active} active | {s.values} values]>"

    def _get(self, owner: str, name: str) -> _List:
        lst = self._lists.get((owner, name))
        if lst is None:
            raise NotFound(f"value list {name!r} of {owner} does not exist")
        return lst

    def _tell(
        self, owner: str, name: str, lst: _List, added: Collection[str], removed: Collection[str]
    ) -> None:
        if lst.active and (added or removed):
            for listener in self._listeners:
                listener(owner, name, added, removed)

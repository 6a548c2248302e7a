"""The subscription index: filing, routing, and a property test against brute-force evaluation."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.envelope import Haendelsesbesked, expand_shorthands
from broker.errors import Conflict, InvalidInput, NotFound
from broker.filters import comparison_key, compile_expression
from broker.index import IndexStatistics, InMemoryValueLists, Subscription, SubscriptionIndex

ORG_BRUGER = "94ef3c82-10e9-4d12-a9d9-7a7242d5ba83"
PKO_POSTSTATUS = "d2bed63c-4853-4008-b6e0-a74c15b15fbf"
OPRETTET = "6ce72dab-1e09-425e-8503-5d6522f72fdf"
AENDRET = "862f6d4e-f70a-4e27-9383-24bb32919cf0"
CPRS = [f"urn:oio:cpr:{n:010d}" for n in (101011234, 202021234, 303031234, 404041234)]
CVRS = ["urn:oio:cvr-nr:12345678", "urn:oio:cvr-nr:29189889"]
OR = "Beskedkuvert.Filtreringsdata.ObjektRegistrering"


def envelope(
    beskedtype: str = ORG_BRUGER,
    registreringer: Iterable[tuple[str | None, str | None]] = (),
    tilladt: Iterable[str] = (),
) -> Haendelsesbesked:
    """An envelope with ObjektRegistrering elements given as (ObjektId, ObjektHandling)."""
    regs = [
        {k: v for k, v in (("ObjektId", i), ("ObjektHandling", h)) if v is not None}
        for i, h in registreringer
    ]
    doc = {
        "BeskedId": "6a0c9d55-2d4c-4b43-9b0e-6b1e2b7f0c11",
        "BeskedVersion": "1.0",
        "Beskedkuvert": {
            "Filtreringsdata": {
                "Beskedtype": beskedtype,
                "ObjektRegistrering": regs,
                "TilladtModtager": list(tilladt),
            },
            "Leveranceinformation": {},
        },
    }
    expand_shorthands(doc)
    return msgspec.convert(doc, Haendelsesbesked)


def sub(
    sid: str,
    expression: str | None = None,
    *,
    mailbox: str | None = None,
    owner: str = "o1",
    types: tuple[str, ...] = (ORG_BRUGER,),
    active: bool = True,
) -> Subscription:
    return Subscription(
        id=sid,
        mailbox_id=mailbox or f"mb-{sid}",
        owner=owner,
        message_types=types,
        expression=None if expression is None else compile_expression(expression),
        active=active,
    )


NO_LISTS = InMemoryValueLists()


def cpr_sub(sid: str, cpr: str, **kw: Any) -> Subscription:
    return sub(sid, f"get({OR}, 0).ObjektId = '{cpr}'", **kw)


# --------------------------------------------------------------------------------------------
# routing


def test_each_mailbox_once_under_its_first_matching_subscription() -> None:
    index = SubscriptionIndex(
        [
            sub("s3", mailbox="m1"),
            sub("s1", f"{OR}.ObjektHandling = '{OPRETTET}'", mailbox="m1"),
            sub("s2", f"{OR}.ObjektHandling != '{OPRETTET}'", mailbox="m2"),
            sub("s0", f"{OR}.ObjektId in ('{CPRS[0]}')", mailbox="m2"),
            sub("s4", mailbox="m3", types=(PKO_POSTSTATUS,)),
        ]
    )
    b = envelope(registreringer=[(CPRS[0], OPRETTET)])
    assert index.match(b, NO_LISTS) == [("m2", "s0"), ("m1", "s1")]
    b = envelope(registreringer=[(CPRS[1], AENDRET)])
    assert index.match(b, NO_LISTS) == [("m2", "s2"), ("m1", "s3")]
    assert index.match(envelope(PKO_POSTSTATUS), NO_LISTS) == [("m3", "s4")]
    assert index.match(envelope("7654895c-a3f3-4c77-8afd-4c77330f963c"), NO_LISTS) == []


def test_message_types_and_values_compare_uuids_case_insensitively() -> None:
    index = SubscriptionIndex(
        [sub("s1", f"{OR}.ObjektHandling = '{OPRETTET.upper()}'", types=(ORG_BRUGER.upper(),))]
    )
    b = envelope(ORG_BRUGER.title(), registreringer=[(None, OPRETTET.title())])
    assert index.match(b, NO_LISTS) == [("mb-s1", "s1")]


def test_inactive_subscriptions_are_held_not_routed() -> None:
    index = SubscriptionIndex([sub("s1", active=False), cpr_sub("s2", CPRS[0], active=False)])
    b = envelope(registreringer=[(CPRS[0], None)])
    assert index.match(b, NO_LISTS) == []
    assert "s1" in index and len(index) == 2
    old = index.replace(cpr_sub("s2", CPRS[0]))
    assert not old.active
    assert index.match(b, NO_LISTS) == [("mb-s2", "s2")]
    index.replace(cpr_sub("s2", CPRS[0], active=False))
    assert index.match(b, NO_LISTS) == []


def test_value_list_changes_affect_the_next_match() -> None:
    lists = InMemoryValueLists()
    lists.create("o1", "borgere", [CPRS[0]])
    lists.create("o2", "borgere", [CPRS[1]])
    expr = f"{OR}.ObjektId in valueliste('borgere')"
    index = SubscriptionIndex([sub("a", expr, owner="o1"), sub("b", expr, owner="o2")], lists=lists)
    b = envelope(registreringer=[(CPRS[1], None)])
    assert index.match(b, lists) == [("mb-b", "b")]
    lists.add("o1", "borgere", [CPRS[1]])
    assert index.match(b, lists) == [("mb-a", "a"), ("mb-b", "b")]
    lists.set_active("o2", "borgere", False)
    assert index.match(b, lists) == [("mb-a", "a")]
    lists.remove("o1", "borgere", [CPRS[1]])
    assert index.match(b, lists) == []
    lists.set_active("o2", "borgere", True)
    assert index.match(b, lists) == [("mb-b", "b")]
    lists.delete("o2", "borgere")
    assert index.match(b, lists) == []


def test_routing_plan_follows_every_change_of_shape() -> None:
    """A message type with exact subscriptions only routes by lookups alone (its plan has a
    ``fast`` part); anything to evaluate, however it arrives, must end that at once."""
    lists = InMemoryValueLists()
    lists.create("o1", "later", [])
    index = SubscriptionIndex([cpr_sub("a", CPRS[0])], lists=lists)
    b = envelope(registreringer=[(CPRS[0], OPRETTET)])
    bucket = index._types[ORG_BRUGER]

    def routed(fast: bool) -> list[tuple[str, str]]:
        found = index.match(b)
        assert bucket.plan is not None and (bucket.plan.fast is not None) == fast
        return found

    assert routed(fast=True) == [("mb-a", "a")]
    # filed inexact under a list that is empty yet: still nothing to evaluate
    index.add(sub("b", f"{OR}.ObjektId in valueliste('later') and {OR}.ObjektHandling != 'x'"))
    assert index.statistics().exact == 1 and index.statistics().indexed == 2
    assert routed(fast=True) == [("mb-a", "a")]
    lists.add("o1", "later", [CPRS[0]])  # now a candidate: evaluated by the next match
    assert routed(fast=False) == [("mb-a", "a"), ("mb-b", "b")]
    lists.remove("o1", "later", [CPRS[0]])
    assert routed(fast=True) == [("mb-a", "a")]
    index.add(sub("c", f"{OR}.ObjektHandling != '{OPRETTET}'"))  # evaluated
    index.add(sub("d"))  # unconditional
    assert routed(fast=False) == [("mb-a", "a"), ("mb-d", "d")]
    for sid in "bcd":
        index.remove(sid)
    assert routed(fast=True) == [("mb-a", "a")]
    # a value list edit under exact subscriptions keeps the plan: the tables it holds change
    index.add(sub("e", f"{OR}.ObjektId in valueliste('later')", mailbox="mb-a"))
    assert routed(fast=True) == [("mb-a", "a")]
    plan = bucket.plan
    lists.add("o1", "later", [CPRS[0], CPRS[1]])
    assert routed(fast=True) == [("mb-a", "a")] and bucket.plan is plan
    index.remove("a")
    assert routed(fast=True) == [("mb-a", "e")]
    assert index.match(envelope(registreringer=[(CPRS[1], None), (CPRS[0], None)])) == [
        ("mb-a", "e")
    ]


class CountingLists(InMemoryValueLists):
    """A ValueLists spy: counts how often an expression asks."""

    def __init__(self) -> None:
        super().__init__()
        self.contains_calls = 0

    def contains(self, owner: str, name: str, value: str) -> bool:
        self.contains_calls += 1
        return super().contains(owner, name, value)


def test_routing_evaluates_only_candidates() -> None:
    lists = CountingLists()
    lists.create("o1", "ok", [f"urn:oio:cpr:{n:010d}" for n in range(3000)])
    index = SubscriptionIndex(
        (
            sub(
                f"s{n:05d}",
                f"{OR}.ObjektId = 'urn:oio:cpr:{n:010d}' and {OR}.ObjektId in valueliste('ok')",
            )
            for n in range(3000)
        ),
        lists=lists,
    )
    stats = index.statistics()
    assert (stats.indexed, stats.exact, stats.evaluated) == (3000, 0, 0)
    b = envelope(registreringer=[("urn:oio:cpr:0000001234", None)])
    assert index.match(b) == [("mb-s01234", "s01234")]
    assert lists.contains_calls == 1  # one candidate evaluated, not 3000


def test_value_lists_are_filed_when_the_index_has_them_and_evaluated_otherwise() -> None:
    lists = InMemoryValueLists()
    lists.create("o1", "l", [CPRS[0]])
    expr = f"{OR}.ObjektId in valueliste('l') or {OR}.ObjektId in valueliste('m')"
    subs = [sub("a", expr)]
    b = envelope(registreringer=[(CPRS[0], None)])
    watching = SubscriptionIndex(subs, lists=lists)
    blind = SubscriptionIndex(subs)
    assert watching.statistics().exact == 1 and watching.statistics().watched_lists == 2
    assert blind.statistics().evaluated == 1
    assert watching.match(b) == blind.match(b, lists) == [("mb-a", "a")]
    # one value in both lists: removing it from one keeps the other registration
    lists.create("o1", "m", [CPRS[0]])
    lists.remove("o1", "l", [CPRS[0]])
    assert watching.match(b) == blind.match(b, lists) == [("mb-a", "a")]
    lists.set_active("o1", "m", False)
    assert watching.match(b) == blind.match(b, lists) == []
    watching.remove("a")
    assert watching.statistics().watched_lists == 0
    watching.close()
    lists.set_active("o1", "m", True)  # no longer heard
    assert watching.match(b) == []


def test_cheapest_probe_is_chosen_when_filing() -> None:
    index = SubscriptionIndex()
    for n in range(5):  # all on the same ObjektHandling, each on its own CPR
        index.add(
            sub(
                f"s{n}",
                f"{OR}.ObjektHandling = '{OPRETTET}' and {OR}.ObjektId = '{CPRS[n % 4]}x{n}'",
            )
        )
    # the first has nothing to compare, so it takes the first conjunct; the rest avoid that bucket
    assert index.filed_paths() == [
        "Beskedkuvert.Filtreringsdata.ObjektRegistrering[*].ObjektHandling",
        "Beskedkuvert.Filtreringsdata.ObjektRegistrering[*].ObjektId",
    ]
    index.remove("s0")
    assert index.filed_paths() == ["Beskedkuvert.Filtreringsdata.ObjektRegistrering[*].ObjektId"]


def test_statistics_repr_and_cleanup() -> None:
    index = SubscriptionIndex()
    assert repr(index) == (
        "<SubscriptionIndex [0 subscriptions, 0 active | 0 types | 0 unconditional,"
        " 0 indexed (0 exact), 0 evaluated | 0 lists]>"
    )
    index.add(sub("a"))
    index.add(cpr_sub("b", CPRS[0], types=(ORG_BRUGER, PKO_POSTSTATUS)))
    index.add(sub("c", f"{OR}.ObjektId != '{CPRS[0]}'"))
    index.add(sub("d", f"{OR}.ObjektId = '{CPRS[0]}' and {OR}.ObjektHandling != 'x'"))
    index.add(sub("e", active=False))
    assert index.statistics() == IndexStatistics(
        subscriptions=5,
        active=4,
        message_types=2,
        unconditional=1,
        indexed=2,
        exact=1,
        evaluated=1,
        indexed_paths=3,
        watched_lists=0,
    )
    assert repr(index) == (
        "<SubscriptionIndex [5 subscriptions, 4 active | 2 types | 1 unconditional,"
        " 2 indexed (1 exact), 1 evaluated | 0 lists]>"
    )
    with pytest.raises(AttributeError):
        index.statistics().active = 0  # type: ignore[misc]
    for sid in "abcde":
        index.remove(sid)
    assert index.statistics() == IndexStatistics(
        subscriptions=0,
        active=0,
        message_types=0,
        unconditional=0,
        indexed=0,
        exact=0,
        evaluated=0,
        indexed_paths=0,
        watched_lists=0,
    )
    # nothing left behind
    assert index._types == {} and index._filed == {} and index._routes == {}


def test_remove_mailbox() -> None:
    index = SubscriptionIndex([sub("a", mailbox="m"), cpr_sub("b", CPRS[0], mailbox="m"), sub("c")])
    removed = index.remove_mailbox("m")
    assert sorted(s.id for s in removed) == ["a", "b"]
    assert index.match(envelope(registreringer=[(CPRS[0], None)]), NO_LISTS) == [("mb-c", "c")]


def test_errors() -> None:
    index = SubscriptionIndex([sub("a")])
    with pytest.raises(Conflict, match="already"):
        index.add(sub("a"))
    with pytest.raises(NotFound):
        index.remove("zz")
    with pytest.raises(NotFound):
        index.replace(sub("zz"))
    with pytest.raises(InvalidInput, match="at least one message type"):
        index.add(sub("b", types=()))
    with pytest.raises(InvalidInput):
        index.replace(sub("a", types=()))
    assert index.get("a") == sub("a")  # a failed replace keeps the old one


def test_in_memory_value_lists() -> None:
    lists = InMemoryValueLists()
    heard: list[tuple[str, str, set[str], set[str]]] = []
    lists.watch(lambda o, n, a, r: heard.append((o, n, set(a), set(r))))
    lists.create("o", "l", [OPRETTET.upper(), "x", "x"])
    assert lists.values("o", "l") == {OPRETTET, "x"}
    assert lists.contains("o", "l", OPRETTET)
    assert set(lists.active_values("o", "l")) == {OPRETTET, "x"}
    assert list(lists.active_values("o", "nope")) == []
    with pytest.raises(Conflict):
        lists.create("o", "l")
    with pytest.raises(NotFound):
        lists.add("o", "nope", ["x"])
    lists.add("o", "l", ["x"])  # present: ignored
    lists.remove("o", "l", ["absent"])  # absent: ignored
    lists.replace("o", "l", ["y", "x"])
    assert lists.values("o", "l") == {"x", "y"}
    lists.set_active("o", "l", False)
    assert not lists.contains("o", "l", "y")
    assert list(lists.active_values("o", "l")) == []
    lists.add("o", "l", ["z"])  # a passive list can still be edited, and stays empty for routing
    assert repr(lists) == "<InMemoryValueLists [1 lists, 0 active | 3 values]>"
    lists.set_active("o", "l", True)
    assert lists.contains("o", "l", "z")
    lists.delete("o", "l")
    assert repr(lists) == "<InMemoryValueLists [0 lists, 0 active | 0 values]>"
    assert heard == [
        ("o", "l", {OPRETTET, "x"}, set()),
        ("o", "l", {"y"}, {OPRETTET}),
        ("o", "l", set(), {"x", "y"}),
        ("o", "l", {"x", "y", "z"}, set()),
        ("o", "l", set(), {"x", "y", "z"}),
    ]


# --------------------------------------------------------------------------------------------
# property: the index gives exactly what brute-force evaluation gives

HANDLINGER = [OPRETTET, AENDRET]
cpr = st.sampled_from(CPRS[:3])
handling = st.sampled_from([v for u in HANDLINGER for v in (u, u.upper())])
value = cpr | handling
list_name = st.sampled_from(["L1", "L2", "L3"])  # L3 exists only once an operation edits it
F = "Beskedkuvert.Filtreringsdata"


def _in(vs: list[str]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in vs) + ")"


positive_atoms = st.one_of(
    cpr.map(lambda c: f"get({OR}, 0).ObjektId = '{c}'"),
    cpr.map(lambda c: f"{OR}.ObjektId = '{c}'"),
    st.lists(cpr, min_size=1, max_size=2).map(lambda cs: f"{OR}.ObjektId in {_in(cs)}"),
    handling.map(lambda h: f"{OR}.ObjektHandling = '{h}'"),
    handling.map(lambda h: f"get({OR}, 1).ObjektHandling.UUIDIdentifikator = '{h}'"),
    st.builds(
        lambda c, h: f"any({OR}, ObjektId = '{c}' and ObjektHandling = '{h}')", cpr, handling
    ),
    st.sampled_from(CVRS).map(lambda c: f"{F}.TilladtModtager = '{c}'"),
)
list_atoms = st.one_of(
    list_name.map(lambda n: f"{OR}.ObjektId in valueliste('{n}')"),
    list_name.map(lambda n: f"get({OR}, 0).ObjektHandling in valueliste('{n}')"),
    st.builds(
        lambda n, h: f"any({OR}, ObjektId in valueliste('{n}') or it.ObjektHandling = '{h}')",
        list_name,
        handling,
    ),
    st.builds(
        lambda n, m: f"{OR}.ObjektId in valueliste('{n}') or {OR}.ObjektId in valueliste('{m}')",
        list_name,
        list_name,
    ),
)
negative_atoms = st.one_of(
    st.builds(lambda c, i: f"get({OR}, {i}).ObjektId != '{c}'", cpr, st.integers(0, 1)),
    st.lists(value, min_size=1, max_size=2).map(lambda vs: f"{OR}.ObjektId not in {_in(vs)}"),
    list_name.map(lambda n: f"{OR}.ObjektHandling not in valueliste('{n}')"),
    st.builds(lambda n: f"any({OR}, ObjektId not in valueliste('{n}'))", list_name),
    st.sampled_from(CVRS).map(lambda c: f"any({F}.TilladtModtager, it != '{c}')"),
)
atoms = st.one_of(positive_atoms, list_atoms, negative_atoms)
# mostly single terms (what the index files), also compounds of up to three
expression_texts = st.one_of(
    positive_atoms,
    list_atoms,
    list_atoms,
    st.recursive(
        atoms,
        lambda c: st.one_of(
            st.builds(lambda a, b: f"({a}) and ({b})", c, c),
            st.builds(lambda a, b: f"({a}) or ({b})", c, c),
            c.map(lambda a: f"not ({a})"),
        ),
        max_leaves=3,
    ),
)
type_sets = st.lists(
    st.sampled_from([ORG_BRUGER, PKO_POSTSTATUS, ORG_BRUGER.upper()]), min_size=1, max_size=2
).map(tuple)
SUB_IDS = [f"s{n:02d}" for n in range(30)]
subscriptions = st.builds(
    Subscription,
    id=st.sampled_from(SUB_IDS),
    mailbox_id=st.sampled_from(["m0", "m1", "m2", "m3", "m4"]),
    owner=st.sampled_from(["o1", "o2"]),
    message_types=type_sets,
    # mostly filtered and active: those are what the index files
    expression=st.one_of(*[expression_texts.map(compile_expression)] * 5, st.none()),
    active=st.sampled_from([True, True, True, False]),
)
envelopes = st.builds(
    envelope,
    st.sampled_from([ORG_BRUGER, PKO_POSTSTATUS.upper()]),
    st.lists(st.tuples(st.none() | cpr, st.none() | handling), max_size=3),
    st.lists(st.sampled_from(CVRS), max_size=2),
)
owner_list = st.tuples(st.sampled_from(["o1", "o2"]), list_name)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("add_values"), owner_list, st.lists(value, max_size=2)),
        st.tuples(st.just("remove_values"), owner_list, st.lists(value, max_size=2)),
        st.tuples(st.just("list_active"), owner_list, st.booleans()),
        st.tuples(st.just("list_delete"), owner_list, st.none()),
        st.tuples(st.just("put"), subscriptions),
        st.tuples(st.just("remove"), st.sampled_from(SUB_IDS[:8])),
        st.tuples(st.just("toggle"), st.sampled_from(SUB_IDS[:8])),
    ),
    max_size=12,
)


def check_list_tables(index: SubscriptionIndex, lists: InMemoryValueLists) -> None:
    """White-box: a list table holds a subscription under a value once per followed list that
    has the value, and nothing else (no stale entries after edits and removals)."""
    for t, bucket in index._types.items():
        for path, table in bucket.lists.items():
            held: dict[tuple[str, str], int] = {}
            for value in {*table.exact, *table.inexact}:
                for _, sid in table.routes(value):
                    held[(value, sid)] = held.get((value, sid), 0) + 1
                for s, _ in table.inexact.get(value, ()):
                    held[(value, s.id)] = held.get((value, s.id), 0) + 1
            want: dict[tuple[str, str], int] = {}
            for key, followers in index._watchers.items():
                for sid, places in followers.items():
                    for _ in range(places.count((t, path))):
                        for value in lists.active_values(*key):
                            want[(value, sid)] = want.get((value, sid), 0) + 1
            assert held == want


def brute_force(
    subs: dict[str, Subscription], b: Haendelsesbesked, lists: InMemoryValueLists
) -> list[tuple[str, str]]:
    kind = comparison_key(b.Beskedkuvert.Filtreringsdata.Beskedtype.value)
    routes: dict[str, str] = {}
    for sid in sorted(subs):
        s = subs[sid]
        if not s.active or kind not in {comparison_key(t) for t in s.message_types}:
            continue
        if s.expression is None or s.expression.evaluate(b, lists, s.owner):
            routes.setdefault(s.mailbox_id, sid)
    return list(routes.items())


@given(
    st.lists(subscriptions, min_size=4, max_size=20).map(
        lambda subs: [msgspec.structs.replace(s, id=SUB_IDS[i]) for i, s in enumerate(subs)]
    ),
    st.fixed_dictionaries(
        {(o, n): st.sets(value, max_size=4) for o in ("o1", "o2") for n in ("L1", "L2")}
    ),
    st.lists(envelopes, min_size=1, max_size=4),
    operations,
    st.booleans(),
)
@settings(max_examples=150, deadline=None)
def test_index_matches_brute_force(
    initial: list[Subscription],
    contents: dict[tuple[str, str], set[str]],
    beskeder: list[Haendelsesbesked],
    ops: list[tuple[Any, ...]],
    watching: bool,
) -> None:
    lists = InMemoryValueLists()
    for (owner, name), vals in contents.items():
        lists.create(owner, name, vals)
    model = {s.id: s for s in initial}
    index = SubscriptionIndex(initial, lists=lists if watching else None)

    def check() -> None:
        for b in beskeder:
            assert index.match(b, lists) == brute_force(model, b, lists)
            if watching:
                assert index.match(b) == brute_force(model, b, lists)
        stats = index.statistics()
        assert stats.subscriptions == len(model)
        assert stats.active == sum(s.active for s in model.values())
        assert stats.unconditional + stats.indexed + stats.evaluated == stats.active
        check_list_tables(index, lists)

    check()
    for op in ops:
        match op:
            case ("list_delete", (owner, name), _):
                if (owner, name) in contents:
                    lists.delete(owner, name)
                    del contents[(owner, name)]
            case ("add_values" | "remove_values" | "list_active") as what, (owner, name), arg:
                if (owner, name) not in contents:
                    lists.create(owner, name)
                    contents[(owner, name)] = set()
                if what == "add_values":
                    lists.add(owner, name, arg)
                elif what == "remove_values":
                    lists.remove(owner, name, arg)
                else:
                    lists.set_active(owner, name, arg)
            case ("put", s):
                if s.id in model:
                    index.replace(s)
                else:
                    index.add(s)
                model[s.id] = s
            case ("remove", sid):
                if sid in model:
                    assert index.remove(sid) == model.pop(sid)
            case ("toggle", sid):
                if sid in model:
                    model[sid] = msgspec.structs.replace(model[sid], active=not model[sid].active)
                    index.replace(model[sid])
        check()
    for sid in list(model):
        index.remove(sid)
    assert index._types == {} and index._filed == {} and index._watchers == {}

"""Value lists: the lifecycle table, name rules, and the registry routing reads."""

from __future__ import annotations

import itertools

import msgspec
import pytest
from catalogkit import RECEIVER, SENDER, envelope
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from broker.errors import BrokerError, Conflict, InvalidInput, NotFound
from broker.filters import ValueLists, compile_expression
from catalog.valuelistregistry import ValueListRegistry
from catalog.valuelists import (
    TRANSITIONS,
    EditOperation,
    Operation,
    Status,
    ValueList,
    ValueListIn,
    ValuesEdit,
    apply_values_edit,
    check_name_free,
    create,
    decode_value_list_in,
    decode_values_edit,
    edit,
    import_,
    require_owner,
    transition,
)

ID1 = "11111111-1111-4111-8111-111111111111"
ID2 = "22222222-2222-4222-8222-222222222222"
UUID_VALUE = "AAAAAAAA-BBBB-4CCC-8DDD-EEEEEEEEEEEE"


def new(
    name: str = "borgere", values: tuple[str, ...] = ("urn:oio:cpr:0101011234",), **kw: object
) -> ValueList:
    args: dict[str, object] = {"list_id": ID1, "owner": SENDER, "now_ms": 10, "owner_lists": []}
    args.update(kw)
    return create(ValueListIn(name=name, values=list(values)), **args)  # type: ignore[arg-type]


def test_create() -> None:
    vl = new(values=("b", "a", "b", UUID_VALUE))
    assert vl.status == "oprettet" and vl.active
    assert vl.values == ("a", UUID_VALUE.lower(), "b")  # comparison keys, sorted, unique
    assert (vl.registrations, vl.created_ms, vl.last_changed_ms) == (1, 10, 10)


def test_edits_are_registrations_and_noops_are_not() -> None:
    vl = new(values=("a",))
    added = edit(vl, "add", ["b", "a"], now_ms=20)
    assert added.values == ("a", "b") and added.registrations == 2 and added.last_changed_ms == 20
    assert edit(added, "add", ["a"], now_ms=30) is added  # duplicate add ignored
    assert edit(added, "remove", ["zzz"], now_ms=30) is added  # absent remove ignored
    removed = edit(added, "remove", ["a"], now_ms=40)
    assert removed.values == ("b",) and removed.registrations == 3
    replaced = edit(removed, "replace", ["x", "y"], now_ms=50)
    assert replaced.values == ("x", "y")


def test_values_edit_is_one_registration() -> None:
    vl = new(values=("a", "b"))
    after = apply_values_edit(vl, ValuesEdit(add=["c"], remove=["a"]), now_ms=5)
    assert after.values == ("b", "c") and after.registrations == vl.registrations + 1
    assert apply_values_edit(vl, ValuesEdit(add=["a"]), now_ms=5) is vl
    with pytest.raises(InvalidInput) as info:
        apply_values_edit(vl, ValuesEdit(add=["c"], remove=["x", "c"]), now_ms=5)
    assert info.value.path == "$.remove[1]"


def test_lifecycle() -> None:
    vl = new(values=("a",))
    passive = edit(vl, "passivate", now_ms=2)
    assert passive.status == "passiveret" and passive.values == ("a",) and not passive.active
    blocked: tuple[EditOperation, ...] = ("add", "remove", "replace", "passivate")
    for op in blocked:
        with pytest.raises(Conflict) as info:
            edit(passive, op, ["x"], now_ms=3)
        assert info.value.code == "value_list_state" and info.value.http_status == 409
    again = import_(
        passive,
        ValueListIn(name="borgere", values=["q"]),
        list_id=ID1,
        owner=SENDER,
        now_ms=4,
        owner_lists=[passive],
    )
    assert again.status == "importeret" and again.values == ("q",)
    deleted = edit(again, "delete", now_ms=5)
    assert deleted.status == "slettet" and deleted.values == ()  # wiped at once
    final: tuple[EditOperation, ...] = ("add", "passivate", "delete")
    for op in final:
        with pytest.raises(Conflict):
            edit(deleted, op, now_ms=6)
    with pytest.raises(Conflict):
        import_(
            deleted,
            ValueListIn(name="borgere"),
            list_id=ID1,
            owner=SENDER,
            now_ms=7,
            owner_lists=[],
        )


def test_the_table() -> None:
    statuses: list[Status | None] = [None, "oprettet", "importeret", "passiveret", "slettet"]
    ops: list[Operation] = ["create", "import", "replace", "add", "remove", "passivate", "delete"]
    assert all(before != "slettet" for before, _ in TRANSITIONS)  # deleted is final
    assert all(
        after != "oprettet" or before in (None, "oprettet")
        for (before, _), after in TRANSITIONS.items()
    )
    for before, op in itertools.product(statuses, ops):
        current = None if before is None else msgspec.structs.replace(new(), status=before)
        if (before, op) in TRANSITIONS:
            assert transition(current, op) == TRANSITIONS[(before, op)]
        else:
            with pytest.raises(Conflict):
                transition(current, op)


def test_import_with_a_given_id() -> None:
    vl = import_(
        None,
        ValueListIn(name="x", values=["1"]),
        list_id=ID2.upper(),
        owner=SENDER,
        now_ms=1,
        owner_lists=[],
    )
    assert vl.id == ID2 and vl.status == "importeret"
    with pytest.raises(Conflict) as info:
        import_(vl, ValueListIn(name="x"), list_id=ID2, owner=SENDER, now_ms=2, owner_lists=[vl])
    assert info.value.code == "value_list_state"  # an active list is not imported over
    with pytest.raises(Conflict) as info:
        import_(vl, ValueListIn(name="x"), list_id=ID2, owner=RECEIVER, now_ms=2, owner_lists=[])
    assert info.value.code == "value_list_conflict"


def test_names_are_unique_per_owner() -> None:
    first = new()
    with pytest.raises(Conflict) as info:
        new(list_id=ID2, owner_lists=[first])
    assert (info.value.code, info.value.http_status, info.value.path) == (
        "value_list_conflict",
        409,
        "$.name",
    )
    new(list_id=ID2, owner_lists=[edit(first, "delete", now_ms=2)])  # a deleted list frees its name
    new(list_id=ID2, owner=RECEIVER, owner_lists=[])  # other owners are other namespaces
    check_name_free([first], "borgere", except_id=ID1)


@pytest.mark.parametrize(
    ("values", "path"), [([""], "$.values[0]"), (["a", "x" * 1025], "$.values[1]")]
)
def test_bad_values(values: list[str], path: str) -> None:
    with pytest.raises(InvalidInput) as info:
        new(values=tuple(values))
    assert info.value.path == path
    with pytest.raises(InvalidInput):
        new(name="  ")


def test_owner_check_hides_other_systems_lists() -> None:
    vl = new()
    assert require_owner(vl, SENDER, ID1) is vl
    for current, owner in ((vl, RECEIVER), (None, SENDER)):
        with pytest.raises(NotFound):
            require_owner(current, owner, ID1)


def test_decoders() -> None:
    assert decode_value_list_in(b'{"name": "a", "values": ["x"]}').values == ["x"]
    assert decode_values_edit(b'{"remove": ["x"]}').add == []
    with pytest.raises(BrokerError) as info:
        decode_values_edit(b'{"put": []}')
    assert info.value.code == "unknown_field"


def test_registry_serves_the_filter_language() -> None:
    registry: ValueLists = ValueListRegistry()  # mypy checks the protocol here
    expr = compile_expression(
        "Beskedkuvert.Filtreringsdata.ObjektRegistrering.ObjektId in valueliste('borgere')"
    )
    besked = envelope()  # ObjektId urn:oio:cpr:0101011234
    assert not expr.evaluate(besked, registry, SENDER)
    vl = new(values=())
    assert isinstance(registry, ValueListRegistry)
    registry.put(vl)
    assert not expr.evaluate(besked, registry, SENDER)
    vl = edit(vl, "add", ["urn:oio:cpr:0101011234"], now_ms=2)
    registry.put(vl)  # counts for the very next envelope
    assert expr.evaluate(besked, registry, SENDER)
    assert not expr.evaluate(besked, registry, RECEIVER)  # lists are per owner
    registry.put(edit(vl, "passivate", now_ms=3))
    assert not expr.evaluate(besked, registry, SENDER)
    assert repr(registry) == "<ValueListRegistry [1 lists, 0 active | 0 values]>"


class RegistryMachine(RuleBasedStateMachine):
    """Random lifecycle operations fed into the registry: it always answers as the records say
    (only active lists contain anything), and the reverse map agrees with ``contains``."""

    lists = Bundle("lists")

    def __init__(self) -> None:
        super().__init__()
        self.registry = ValueListRegistry()
        self.records: dict[str, ValueList] = {}
        self.ids = itertools.count()

    def owner_lists(self, owner: str) -> list[ValueList]:
        return [r for r in self.records.values() if r.owner == owner]

    @rule(target=lists, owner=st.sampled_from([SENDER, RECEIVER]), name=st.sampled_from(["a", "b"]),
          values=st.lists(st.sampled_from(["1", "2", "3", UUID_VALUE]), max_size=3), imported=st.booleans())  # fmt: skip
    def make(self, owner: str, name: str, values: list[str], imported: bool) -> str:
        list_id = f"00000000-0000-4000-8000-{next(self.ids):012d}"
        body = ValueListIn(name=name, values=values)
        try:
            if imported:
                vl = import_(
                    None,
                    body,
                    list_id=list_id,
                    owner=owner,
                    now_ms=1,
                    owner_lists=self.owner_lists(owner),
                )
            else:
                vl = create(
                    body,
                    list_id=list_id,
                    owner=owner,
                    now_ms=1,
                    owner_lists=self.owner_lists(owner),
                )
        except Conflict:
            assert any(r.name == name and r.status != "slettet" for r in self.owner_lists(owner))
            return list_id
        self.records[vl.id] = vl
        self.registry.put(vl)
        return list_id

    @rule(list_id=lists, op=st.sampled_from(["replace", "add", "remove", "passivate", "delete"]),
          values=st.lists(st.sampled_from(["1", "2", "3", UUID_VALUE.lower()]), max_size=3))  # fmt: skip
    def change(self, list_id: str, op: EditOperation, values: list[str]) -> None:
        current = self.records.get(list_id)
        if current is None:
            return
        try:
            after = edit(current, op, values, now_ms=2)
        except Conflict:
            assert (current.status, op) not in TRANSITIONS
            return
        self.records[list_id] = after
        self.registry.put(after)

    @rule(list_id=lists)
    def reimport(self, list_id: str) -> None:
        current = self.records.get(list_id)
        if current is None:
            return
        try:
            after = import_(current, ValueListIn(name=current.name, values=["2"]), list_id=list_id,
                            owner=current.owner, now_ms=3, owner_lists=self.owner_lists(current.owner))  # fmt: skip
        except Conflict:
            assert current.status != "passiveret"
            return
        self.records[list_id] = after
        self.registry.put(after)

    @invariant()
    def registry_matches_records(self) -> None:
        for value in ("1", "2", "3", UUID_VALUE.lower(), "4"):
            expected = {
                (r.owner, r.name) for r in self.records.values() if r.active and value in r.values
            }
            assert set(self.registry.lists_containing(value)) == expected
            for owner, name in itertools.product([SENDER, RECEIVER], ["a", "b"]):
                assert self.registry.contains(owner, name, value) == ((owner, name) in expected)
        live = [r for r in self.records.values() if r.status != "slettet"]
        assert len({(r.owner, r.name) for r in live}) == len(live)  # names unique per owner
        stats = self.registry.statistics()
        assert stats.active == sum(r.active for r in self.records.values())
        assert stats.values == sum(len(r.values) for r in self.records.values() if r.active)


RegistryMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
TestRegistry = RegistryMachine.TestCase

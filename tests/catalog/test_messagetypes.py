"""The bundled demo catalog and the admin write validation of message types."""

from __future__ import annotations

import json

import msgspec
import pytest
from catalogkit import (
    CPR_DEMO,
    DOEDSFALD,
    FOEDSEL,
    PKO,
    TYPE1,
    TYPE2,
    TYPE3,
    TYPE_PUSH,
    demo_catalog,
)

from broker.errors import BrokerError, Conflict, InvalidInput
from catalog.ids import is_uuid
from catalog.messagetypes import (
    MessageType,
    MessageTypeIn,
    ObjectActionIn,
    check_unique,
    decode_message_type_in,
    load_demo_catalog,
    validate_message_type,
)
from catalog.sensitivity import rank

PERSON = "ce7fcf97-a8a2-447a-8690-d38aa0f6e23c"


def test_kombit_types_keep_their_real_uuids() -> None:
    cat = demo_catalog()
    assert cat[PKO].name == "PKO_PostStatus"
    assert cat["94ef3c82-10e9-4d12-a9d9-7a7242d5ba83"].name == "ORG_Bruger"
    assert cat["1996db0e-0a7c-425f-b2c2-03466a536c4d"].name == "ORG_OrgEnhed"
    for t in (TYPE1, TYPE2, TYPE3, TYPE_PUSH):
        assert not cat[t].demo and cat[t].active
        assert {FOEDSEL, DOEDSFALD} <= cat[t].action_ids
        assert cat[t].object_type == PERSON
    pko = cat[PKO]
    assert pko.object_type == "9a7be69f-b736-4e0e-9d5b-78d4f43e7ad7"
    assert {a.name for a in pko.object_actions} >= {"Fejlet", "Afleveret Digital Post"}
    assert "96514e13-afdd-44d6-95a8-adc2ca19b127" in pko.responsible_systems


def test_demo_types_are_clearly_marked() -> None:
    types = load_demo_catalog()
    demo = [t for t in types if t.demo]
    names = {t.name for t in demo}
    assert {
        "DEMO_CPR_Haendelse",
        "DEMO_STAR_Sygedagpenge",
        "DEMO_STAR_Ledighed",
        "DEMO_SKAT_eIndkomst",
        "DEMO_SKAT_Skattekort",
        "DEMO_Sagsindeks",
        "DEMO_Ydelsesindeks",
        "DEMO_Sygehus_Indlaeggelse",
    } <= names
    assert all(t.name.startswith("DEMO_") == t.demo for t in types)
    assert all("DEMO" in t.description for t in demo)
    assert demo_catalog()[CPR_DEMO].name == "DEMO_CPR_Haendelse"


def test_every_bundled_record_is_well_formed() -> None:
    types = load_demo_catalog()
    assert len({t.id for t in types}) == len(types)
    assert len({(t.name, t.version) for t in types}) == len(types)
    for t in types:
        assert is_uuid(t.id) and t.id == t.id.lower()
        assert t.default_sensitivity is not None and rank(t.default_sensitivity) is not None
        assert t.object_type is None or is_uuid(t.object_type)
        assert t.object_actions and all(is_uuid(a.id) and a.name for a in t.object_actions)
        assert len(t.action_ids) == len(t.object_actions)
        assert all(is_uuid(s) for s in t.responsible_systems)
        assert t.content_schema


def test_bundled_file_round_trips() -> None:
    # the JSON file is the source of truth: re-encoding the records loses nothing
    types = load_demo_catalog()
    again = msgspec.json.decode(msgspec.json.encode(types), type=list[MessageType])
    assert again == types


def body(**kw: object) -> MessageTypeIn:
    fields: dict[str, object] = {"name": "DEMO_Test", "id": "A5E3D8C0-0000-4000-8000-000000000001"}
    fields.update(kw)
    return MessageTypeIn(**fields)  # type: ignore[arg-type]


def test_validate_normalises() -> None:
    mt = validate_message_type(
        body(
            name="  DEMO_Test  ",
            default_sensitivity="292E85A9-8AD4-46DF-9E50-F97D6837AD74",
            responsible_systems=[TYPE1.upper(), TYPE1],
            object_actions=[ObjectActionIn(id=FOEDSEL.upper(), name=" Fødsel ")],
        ),
        now_ms=5,
    )
    assert mt.id == "a5e3d8c0-0000-4000-8000-000000000001"
    assert mt.name == "DEMO_Test"
    assert mt.default_sensitivity == "292e85a9-8ad4-46df-9e50-f97d6837ad74"
    assert mt.responsible_systems == (TYPE1,)
    assert mt.object_actions[0].id == FOEDSEL and mt.object_actions[0].name == "Fødsel"
    assert mt.created_ms == 5


def test_validate_takes_the_callers_id_when_none_given() -> None:
    mt = validate_message_type(body(id=None), new_id=TYPE2)
    assert mt.id == TYPE2
    with pytest.raises(InvalidInput) as info:
        validate_message_type(body(id=None))
    assert info.value.path == "$.id"


@pytest.mark.parametrize(
    ("kw", "path"),
    [
        ({"name": "  "}, "$.name"),
        ({"id": "not-a-uuid"}, "$.id"),
        ({"version": ""}, "$.version"),
        ({"version": "1" * 33}, "$.version"),
        ({"default_sensitivity": TYPE1}, "$.default_sensitivity"),
        ({"object_type": "x"}, "$.object_type"),
        ({"responsible_systems": ["ok", TYPE1]}, "$.responsible_systems[0]"),
        ({"object_actions": [ObjectActionIn(id="nope")]}, "$.object_actions[0].id"),
        (
            {"object_actions": [ObjectActionIn(id=FOEDSEL), ObjectActionIn(id=FOEDSEL.upper())]},
            "$.object_actions[1].id",
        ),
        ({"description": "x" * 4001}, "$.description"),
    ],
)
def test_validate_refuses_with_a_path(kw: dict[str, object], path: str) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_message_type(body(**kw))
    assert info.value.path == path
    assert info.value.http_status == 400


def test_decode_body() -> None:
    got = decode_message_type_in(
        json.dumps({"name": "X", "object_actions": [{"id": FOEDSEL}]}).encode()
    )
    assert got.name == "X" and got.object_actions[0].id == FOEDSEL
    with pytest.raises(BrokerError) as info:
        decode_message_type_in(b'{"name": "X", "colour": 1}')
    assert info.value.code == "unknown_field"
    with pytest.raises(BrokerError) as info:
        decode_message_type_in(b'{"version": "1"}')
    assert info.value.code == "invalid"


def test_check_unique_name_and_version() -> None:
    cat = demo_catalog()
    same = validate_message_type(body(name="PKO_PostStatus", version="1.00"))
    with pytest.raises(Conflict) as info:
        check_unique(cat, same)
    assert PKO in info.value.message
    check_unique(cat, validate_message_type(body(name="PKO_PostStatus", version="2.00")))
    check_unique(cat, cat[PKO])  # replacing itself is fine

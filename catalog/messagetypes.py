"""Message types (Beskedtyper): the catalog records and the bundled demo catalog.

Nothing flows that the catalog does not know: a send names its type in
``Filtreringsdata.Beskedtype`` and is refused unless the type is in the catalog and active
(:func:`catalog.access.check_send`).

The bundled catalog (``catalog/data/demo_catalog.json``, loaded by :func:`load_demo_catalog`)
holds KOMBIT's public types with their real UUIDs (PKO_PostStatus, ORG_Bruger, ORG_OrgEnhed and
the four test types of KOMBIT's samples) and *demo* types. Demo types have ``demo=True``, names
starting with ``DEMO_`` and UUIDs that dueslag generated once: they are **not** KOMBIT's (no
public UUIDs exist for CPR, STAR, SKAT, index or hospital events, reference §2).

``responsible_systems``, ``object_type``, ``content_schema`` and ``default_sensitivity`` are
descriptive. ``object_actions`` is descriptive too unless ``strict_actions`` is set, in which
case a send whose ObjektHandling is not listed is refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Final

import msgspec

from broker.codec import decode_struct
from broker.errors import Conflict, InvalidInput
from catalog import sensitivity
from catalog.authorities import require_name
from catalog.ids import Record, require_uuid

__all__ = [
    "MAX_ACTIONS",
    "MAX_DESCRIPTION_LENGTH",
    "MessageType",
    "MessageTypeIn",
    "ObjectAction",
    "ObjectActionIn",
    "catalog_by_id",
    "check_unique",
    "decode_message_type_in",
    "load_demo_catalog",
    "validate_message_type",
]

MAX_DESCRIPTION_LENGTH: Final = 4000
MAX_VERSION_LENGTH: Final = 32
MAX_SCHEMA_LENGTH: Final = 1000
MAX_ACTIONS: Final = 1000
MAX_SYSTEMS: Final = 100


class ObjectAction(Record, frozen=True, kw_only=True):
    """An allowed ``ObjektHandling``: the event UUID and its name."""

    id: str  # UUID, lower-case
    name: str = ""


class MessageType(Record, frozen=True, kw_only=True):
    """One Beskedtype of the catalog."""

    id: str  # UUID, lower-case
    name: str
    version: str = "1.0"
    description: str = ""
    responsible_systems: tuple[str, ...] = ()  # system UUIDs, lower-case
    default_sensitivity: str | None = None  # a Sikkerhedsklassificering UUID
    object_type: str | None = None  # ObjektType UUID
    object_type_name: str = ""
    object_actions: tuple[ObjectAction, ...] = ()
    content_schema: str = ""  # a reference to the payload's schema (text, not fetched)
    active: bool = True
    demo: bool = False  # a generated demo type, not one of KOMBIT's
    strict_actions: bool = False  # refuse sends whose ObjektHandling is not in object_actions
    created_ms: int = 0  # 0 for bundled types

    @property
    def action_ids(self) -> frozenset[str]:
        return frozenset(a.id for a in self.object_actions)


class _Bundle(msgspec.Struct, kw_only=True):
    format: int
    message_types: list[MessageType]


def load_demo_catalog() -> list[MessageType]:
    """The bundled catalog: KOMBIT's public and test types plus the demo types.

    Error handling:
        :class:`msgspec.ValidationError` if the bundled file is corrupt (a packaging error).
    """
    data = (resources.files("catalog") / "data" / "demo_catalog.json").read_bytes()
    return msgspec.json.decode(data, type=_Bundle).message_types


def catalog_by_id(types: Iterable[MessageType]) -> dict[str, MessageType]:
    """The lookup :func:`catalog.access.check_send` takes: lower-case id -> type."""
    return {t.id.lower(): t for t in types}


# --------------------------------------------------------------------------------------------
# the admin write API


class ObjectActionIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    id: str
    name: str = ""


class MessageTypeIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of an admin write (create or replace) of a message type."""

    name: str
    id: str | None = None  # given: import with this UUID; absent: the caller generates one
    version: str = "1.0"
    description: str = ""
    responsible_systems: list[str] = []
    default_sensitivity: str | None = None
    object_type: str | None = None
    object_type_name: str = ""
    object_actions: list[ObjectActionIn] = []
    content_schema: str = ""
    active: bool = True
    demo: bool = False
    strict_actions: bool = False


_decoder: Final = msgspec.json.Decoder(MessageTypeIn)


def decode_message_type_in(data: bytes) -> MessageTypeIn:
    """Decode a JSON request body (errors map to ``invalid``/``unknown_field`` with a path)."""
    body: MessageTypeIn = decode_struct(data, _decoder)
    return body


def _text(value: str, limit: int, path: str) -> str:
    if len(value) > limit:
        raise InvalidInput(f"at most {limit} characters, got {len(value)}", path=path)
    return value


def validate_message_type(
    body: MessageTypeIn, *, new_id: str | None = None, now_ms: int = 0
) -> MessageType:
    """A checked, normalised :class:`MessageType` from an admin write.

    The id is ``body.id`` if given, else ``new_id`` (a fresh UUID from the caller).

    Error handling:
        :class:`InvalidInput` with the path of the first bad field: name blank or too long,
        a UUID field not in UUID form, a sensitivity that is not one of the four levels,
        duplicate action ids, over-long texts or lists.
    """
    raw_id = body.id if body.id is not None else new_id
    if raw_id is None:
        raise InvalidInput("a message type needs an id", path="$.id")
    type_id = require_uuid(raw_id, path="$.id")
    name = require_name(body.name, path="$.name")
    version = require_name(body.version, path="$.version")
    _text(version, MAX_VERSION_LENGTH, "$.version")
    if len(body.responsible_systems) > MAX_SYSTEMS:
        raise InvalidInput(f"at most {MAX_SYSTEMS} systems", path="$.responsible_systems")
    systems = tuple(
        dict.fromkeys(
            require_uuid(s, path=f"$.responsible_systems[{i}]")
            for i, s in enumerate(body.responsible_systems)
        )
    )
    default = body.default_sensitivity
    if default is not None:
        if sensitivity.rank(default) is None:
            raise InvalidInput(
                f"not one of the four Sikkerhedsklassificering UUIDs: {default!r}",
                path="$.default_sensitivity",
            )
        default = default.lower()
    object_type = (
        None if body.object_type is None else require_uuid(body.object_type, path="$.object_type")
    )
    if len(body.object_actions) > MAX_ACTIONS:
        raise InvalidInput(f"at most {MAX_ACTIONS} object actions", path="$.object_actions")
    actions: dict[str, ObjectAction] = {}
    for i, action in enumerate(body.object_actions):
        action_id = require_uuid(action.id, path=f"$.object_actions[{i}].id")
        if action_id in actions:
            raise InvalidInput(f"duplicate action id {action_id}", path=f"$.object_actions[{i}].id")
        actions[action_id] = ObjectAction(
            id=action_id, name=_text(action.name.strip(), 200, f"$.object_actions[{i}].name")
        )
    return MessageType(
        id=type_id,
        name=name,
        version=version,
        description=_text(body.description, MAX_DESCRIPTION_LENGTH, "$.description"),
        responsible_systems=systems,
        default_sensitivity=default,
        object_type=object_type,
        object_type_name=_text(body.object_type_name.strip(), 200, "$.object_type_name"),
        object_actions=tuple(actions.values()),
        content_schema=_text(body.content_schema, MAX_SCHEMA_LENGTH, "$.content_schema"),
        active=body.active,
        demo=body.demo,
        strict_actions=body.strict_actions,
        created_ms=now_ms,
    )


def check_unique(catalog: Mapping[str, MessageType], candidate: MessageType) -> None:
    """Refuse a second type with the same name and version (a replace of the same id is fine).

    Error handling:
        :class:`Conflict` (``conflict``) naming the type that already has the name.
    """
    for other in catalog.values():
        if (
            other.id != candidate.id
            and other.name == candidate.name
            and other.version == candidate.version
        ):
            raise Conflict(
                f"message type {candidate.name} {candidate.version} already exists as {other.id}",
                path="$.name",
            )

"""The registry: the in-memory view of the catalog and of access control, kept in the store.

Theory of operation
-------------------
Message types, authorities, agreements and value lists are small records that every request may
consult, so they live in memory, indexed for the hot path (the catalog by id, agreements by
system, one :class:`~catalog.access.ReceiveIndex` per receiving system, value lists in a
:class:`~catalog.valuelistregistry.ValueListRegistry`). Durably they are opaque store documents
(``PutDoc``), msgpack-encoded, one kind per record type. The registry only changes after the
commit that made a change durable: callers build the op with :meth:`doc`, submit it through the
writer, and then call the matching ``put_*``.

On a fresh store :meth:`seed_ops` gives the bundled demo catalog and the 98 municipalities.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from catalog.access import ReceiveIndexes
from catalog.agreements import Agreement, is_active
from catalog.authorities import Authority, load_municipalities
from catalog.messagetypes import MessageType, load_demo_catalog
from catalog.valuelistregistry import ValueListRegistry
from catalog.valuelists import ValueList
from store.base import PutDoc, Store

__all__ = ["AGREEMENT", "AUTHORITY", "MESSAGE_TYPE", "VALUE_LIST", "Registry"]

MESSAGE_TYPE: Final = "message_type"
AUTHORITY: Final = "authority"
AGREEMENT: Final = "agreement"
VALUE_LIST: Final = "value_list"
_TYPES: Final[dict[str, type[Any]]] = {
    MESSAGE_TYPE: MessageType,
    AUTHORITY: Authority,
    AGREEMENT: Agreement,
    VALUE_LIST: ValueList,
}
_encoder = msgspec.msgpack.Encoder()
_decoders = {kind: msgspec.msgpack.Decoder(cls) for kind, cls in _TYPES.items()}


class Registry:
    def __init__(self) -> None:
        self.catalog: dict[str, MessageType] = {}
        self.authorities: dict[str, Authority] = {}
        self.agreements: dict[str, Agreement] = {}
        self._by_system: dict[str, dict[str, Agreement]] = {}
        self._authority_tokens: dict[bytes, str] = {}
        self.receive = ReceiveIndexes()
        self.value_lists = ValueListRegistry()
        #: bumped by every ``put_*``: decisions derived from the registry are stale then
        #: (:mod:`broker.decisions`)
        self.generation = 0

    @classmethod
    def load(cls, store: Store) -> Registry:
        reg = cls()
        for _, raw in store.list_docs(MESSAGE_TYPE):
            reg.put_message_type(_decoders[MESSAGE_TYPE].decode(raw))
        for _, raw in store.list_docs(AUTHORITY):
            reg.put_authority(_decoders[AUTHORITY].decode(raw))
        for _, raw in store.list_docs(AGREEMENT):
            reg._file_agreement(_decoders[AGREEMENT].decode(raw))
        for system_id in reg._by_system:
            reg.receive.rebuild(system_id, reg._by_system[system_id].values())
        for _, raw in store.list_docs(VALUE_LIST):
            reg.put_value_list(_decoders[VALUE_LIST].decode(raw))
        return reg

    def seed_ops(self) -> list[PutDoc]:
        """Documents for a fresh store: the demo catalog and the municipalities (idempotent)."""
        ops: list[PutDoc] = []
        if not self.catalog:
            ops += [self.doc(MESSAGE_TYPE, mt.id, mt, if_absent=True) for mt in load_demo_catalog()]
        if not self.authorities:
            ops += [self.doc(AUTHORITY, a.cvr, a, if_absent=True) for a in load_municipalities()]
        return ops

    @staticmethod
    def doc(kind: str, doc_id: str, record: Any, *, if_absent: bool = False) -> PutDoc:
        assert isinstance(record, _TYPES[kind])
        return PutDoc(kind=kind, id=doc_id, value=_encoder.encode(record), if_absent=if_absent)

    # ------------------------------------------------------------------ after a commit

    def put_message_type(self, mt: MessageType) -> None:
        self.catalog[mt.id] = mt
        self.generation += 1

    def put_authority(self, authority: Authority) -> None:
        old = self.authorities.get(authority.cvr)
        if old is not None and old.token_hash is not None:
            self._authority_tokens.pop(old.token_hash, None)
        self.authorities[authority.cvr] = authority
        if authority.token_hash is not None:
            self._authority_tokens[authority.token_hash] = authority.cvr
        self.generation += 1

    def put_agreement(self, agreement: Agreement) -> None:
        self._file_agreement(agreement)
        self.receive.rebuild(agreement.system_id, self._by_system[agreement.system_id].values())

    def _file_agreement(self, agreement: Agreement) -> None:
        self.agreements[agreement.id] = agreement
        self._by_system.setdefault(agreement.system_id, {})[agreement.id] = agreement
        self.generation += 1

    def put_value_list(self, vl: ValueList) -> None:
        self.value_lists.put(vl)  # a passivated or deleted list stops matching at once
        self.generation += 1

    # ------------------------------------------------------------------ queries

    def authority_by_token_hash(self, token_hash: bytes) -> Authority | None:
        cvr = self._authority_tokens.get(token_hash)
        return None if cvr is None else self.authorities.get(cvr)

    def agreements_of(self, system_id: str) -> list[Agreement]:
        return list(self._by_system.get(system_id, {}).values())

    def agreements_naming(self, cvr: str) -> list[Agreement]:
        return [a for a in self.agreements.values() if cvr in a.authorities]

    def next_expiry_ms(self, now_ms: int) -> int | None:
        """The first moment after ``now_ms`` at which an agreement expires (the only way time
        changes an access decision), or None when none will."""
        return min(
            (
                a.valid_until_ms
                for a in self.agreements.values()
                if a.valid_until_ms is not None and a.valid_until_ms > now_ms
            ),
            default=None,
        )

    def receivable_types(self, system_id: str, now_ms: int) -> frozenset[str]:
        """Message types some active receive agreement of the system covers."""
        return frozenset(
            t
            for a in self._by_system.get(system_id, {}).values()
            if a.kind == "receive" and is_active(a, now_ms)
            for t in a.message_types
        )

    def __repr__(self) -> str:
        return (
            f"<Registry [{len(self.catalog)} message types | {len(self.authorities)} authorities"
            f" | {len(self.agreements)} agreements | {self.value_lists.statistics().lists} value lists]>"
        )

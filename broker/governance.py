"""Catalog, authorities, agreements, value lists and the audit log: the write operations.

Every change is checked with the pure rules of ``catalog/``, made durable through the writer (one
store document per record, plus an audit event in the same commit) and only then filed into the
in-memory :class:`~broker.registry.Registry`, so what routing sees is always on disk.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from broker.errors import BrokerError, Conflict, Forbidden, NotFound
from broker.registry import AGREEMENT, AUTHORITY, MESSAGE_TYPE, VALUE_LIST, Registry
from broker.writer import Writer
from catalog import agreements as agr
from catalog import valuelists as vls
from catalog.audit import AuditEvent, AuditQuery, clip_detail, matches
from catalog.authorities import Authority, require_cvr, require_name
from catalog.messagetypes import MessageType, MessageTypeIn, check_unique, validate_message_type
from store.base import AppendAudit, Op, Store

__all__ = ["Governance"]

AUDIT_PAGE = 5000
_audit_encoder = msgspec.msgpack.Encoder()
_audit_decoder = msgspec.msgpack.Decoder(AuditEvent)


class Governance:
    def __init__(
        self, registry: Registry, writer: Writer, store: Store, clock: Callable[[], int]
    ) -> None:
        self.registry = registry
        self.writer = writer
        self.store = store
        self.clock = clock

    # ------------------------------------------------------------------ audit

    def event(self, actor: str, action: str, **fields: Any) -> AuditEvent:
        if "detail" in fields:
            fields["detail"] = clip_detail(fields["detail"])
        return AuditEvent(ts_ms=self.clock(), actor=actor, action=action, **fields)

    @staticmethod
    def audit_op(events: Sequence[AuditEvent]) -> AppendAudit:
        return AppendAudit(events=tuple(_audit_encoder.encode(e) for e in events))

    async def _commit(self, ops: Sequence[Op], events: Sequence[AuditEvent] = ()) -> list[Any]:
        results = await self.writer.submit([*ops, self.audit_op(events)] if events else list(ops))
        for r in results:
            if isinstance(r, BrokerError):
                raise r
        return results

    def audit(self, query: AuditQuery) -> list[AuditEvent]:
        """Newest first, at most ``query.limit``. Pages forward through the time window keeping
        only the newest ``limit`` matches, so memory stays bounded by the limit and the page."""
        newest: deque[AuditEvent] = deque(maxlen=query.limit)
        after: bytes | None = None
        while True:
            page = self.store.scan_audit(query.since_ms or 0, query.until_ms, AUDIT_PAGE, after)
            for _, raw in page:
                event = _audit_decoder.decode(raw)
                if matches(event, query):
                    newest.append(event)
            if len(page) < AUDIT_PAGE:
                return list(reversed(newest))
            after = page[-1][0]

    # ------------------------------------------------------------------ catalog (admin)

    async def create_message_type(self, body: MessageTypeIn) -> MessageType:
        mt = validate_message_type(body, new_id=str(uuid.uuid4()), now_ms=self.clock())
        check_unique(self.registry.catalog, mt)
        op = self.registry.doc(MESSAGE_TYPE, mt.id, mt, if_absent=True)
        await self._commit(
            [op],
            [self.event("admin", "messagetype.changed", subject=mt.id, detail={"op": "create"})],
        )
        self.registry.put_message_type(mt)
        return mt

    async def set_message_type_active(self, type_id: str, active: bool) -> MessageType:
        mt = self.registry.catalog.get(type_id.lower())
        if mt is None:
            raise NotFound(f"no message type {type_id!r} in the catalog")
        mt = msgspec.structs.replace(mt, active=active)
        event = self.event(
            "admin", "messagetype.changed", subject=mt.id, detail={"active": str(active)}
        )
        await self._commit([self.registry.doc(MESSAGE_TYPE, mt.id, mt)], [event])
        self.registry.put_message_type(mt)
        return mt

    # ------------------------------------------------------------------ authorities (admin)

    async def create_authority(self, cvr_text: str, name_text: str, token_hash: bytes) -> Authority:
        cvr = require_cvr(cvr_text, path="$.cvr")
        name = require_name(name_text, path="$.name")
        if cvr in self.registry.authorities:
            raise Conflict(
                f"authority {cvr} exists; POST /v1/authorities/{cvr}/token issues a token",
                path="$.cvr",
            )
        a = Authority(cvr=cvr, name=name, token_hash=token_hash, created_ms=self.clock())
        await self._commit(
            [self.registry.doc(AUTHORITY, cvr, a, if_absent=True)],
            [self.event("admin", "authority.token", subject=cvr)],
        )
        self.registry.put_authority(a)
        return a

    async def issue_authority_token(self, cvr: str, token_hash: bytes) -> Authority:
        a = self.registry.authorities.get(cvr)
        if a is None:
            raise NotFound(f"no authority with CVR {cvr!r}")
        a = msgspec.structs.replace(a, token_hash=token_hash)
        await self._commit(
            [self.registry.doc(AUTHORITY, cvr, a)],
            [self.event("admin", "authority.token", subject=cvr)],
        )
        self.registry.put_authority(a)
        return a

    # ------------------------------------------------------------------ agreements

    async def request_agreement(self, system_id: str, body: agr.AgreementIn) -> agr.Agreement:
        a = agr.validate_agreement_request(
            body,
            agreement_id=str(uuid.uuid4()),
            system_id=system_id,
            now_ms=self.clock(),
            catalog=self.registry.catalog,
            known_authorities=self.registry.authorities,
        )
        event = self.event(
            system_id, "agreement.requested", agreement_id=a.id, detail={"kind": a.kind}
        )
        await self._commit([self.registry.doc(AGREEMENT, a.id, a, if_absent=True)], [event])
        self.registry.put_agreement(a)
        return a

    def agreement(self, agreement_id: str) -> agr.Agreement:
        a = self.registry.agreements.get(agreement_id.lower())
        if a is None:
            raise NotFound(f"no agreement {agreement_id!r}")
        return a

    async def decide(
        self, cvr: str, agreement_id: str, approve: bool, reason: str | None
    ) -> agr.Agreement:
        current = self.agreement(agreement_id)
        if cvr not in current.authorities:
            raise NotFound(f"no agreement {agreement_id!r} names authority {cvr}")
        a = agr.decide(current, cvr, approve, reason, self.clock())
        if a is current:
            return a
        event = self.event(
            cvr,
            "agreement.decided",
            agreement_id=a.id,
            outcome="ok",
            reason=reason,
            detail={"approve": str(approve)},
        )
        await self._commit([self.registry.doc(AGREEMENT, a.id, a)], [event])
        self.registry.put_agreement(a)
        return a

    async def withdraw(self, system_id: str, agreement_id: str) -> agr.Agreement:
        current = self.agreement(agreement_id)
        if current.system_id != system_id:
            raise NotFound(f"no agreement {agreement_id!r} of this system")
        a = agr.withdraw(current, self.clock())
        if a is not current:
            await self._commit(
                [self.registry.doc(AGREEMENT, a.id, a)],
                [self.event(system_id, "agreement.withdrawn", agreement_id=a.id)],
            )
            self.registry.put_agreement(a)
        return a

    # ------------------------------------------------------------------ value lists

    def value_list(self, system_id: str, list_id: str) -> vls.ValueList:
        return vls.require_owner(self.registry.value_lists.get(list_id), system_id, list_id)

    async def _save_list(
        self, system_id: str, vl: vls.ValueList, op: str, *, if_absent: bool = False
    ) -> vls.ValueList:
        event = self.event(
            system_id,
            "valuelist.changed",
            subject=vl.id,
            detail={"op": op, "values": str(len(vl.values))},
        )
        await self._commit([self.registry.doc(VALUE_LIST, vl.id, vl, if_absent=if_absent)], [event])
        self.registry.put_value_list(vl)
        return vl

    async def create_value_list(self, system_id: str, body: vls.ValueListIn) -> vls.ValueList:
        owned = self.registry.value_lists.owned_by(system_id)
        vl = vls.create(
            body, list_id=str(uuid.uuid4()), owner=system_id, now_ms=self.clock(), owner_lists=owned
        )
        return await self._save_list(system_id, vl, "create", if_absent=True)

    async def import_value_list(
        self, system_id: str, list_id: str, body: vls.ValueListIn
    ) -> vls.ValueList:
        current = self.registry.value_lists.get(list_id)
        owned = self.registry.value_lists.owned_by(system_id)
        vl = vls.import_(
            current, body, list_id=list_id, owner=system_id, now_ms=self.clock(), owner_lists=owned
        )
        return await self._save_list(system_id, vl, "import")

    async def edit_value_list(
        self, system_id: str, list_id: str, op: vls.EditOperation, values: Sequence[str] = ()
    ) -> vls.ValueList:
        current = self.value_list(system_id, list_id)
        vl = vls.edit(current, op, values, now_ms=self.clock())
        return current if vl is current else await self._save_list(system_id, vl, op)

    async def change_values(
        self, system_id: str, list_id: str, body: vls.ValuesEdit
    ) -> vls.ValueList:
        current = self.value_list(system_id, list_id)
        vl = vls.apply_values_edit(current, body, now_ms=self.clock())
        return current if vl is current else await self._save_list(system_id, vl, "values")

    # ------------------------------------------------------------------ checks used by others

    def require_receivable(self, system_id: str, message_types: Sequence[str]) -> None:
        """A subscription may only select types an approved receive agreement covers."""
        allowed = self.registry.receivable_types(system_id, self.clock())
        for i, t in enumerate(message_types):
            if t.lower() not in allowed:
                raise Forbidden(
                    f"message type {t} is not covered by an approved receive agreement of this system",
                    code="no_receive_agreement",
                    path=f"$.message_types[{i}]",
                )

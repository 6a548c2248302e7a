"""Catalog (public reads, admin writes), authorities, agreements, value lists and the audit log."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta
from quart import Quart, Response, request

from broker.errors import NotFound
from broker.http.common import body_struct, json_response, principal, system
from broker.service import ADMIN, Broker, hash_token, new_token
from catalog import agreements as agr
from catalog import valuelists as vls
from catalog.audit import parse_query
from catalog.authorities import Authority, normalize_cvr
from catalog.messagetypes import MessageType, decode_message_type_in

__all__ = ["register"]


class AuthorityIn(msgspec.Struct, forbid_unknown_fields=True):
    cvr: Annotated[str, Meta(max_length=40)]
    name: Annotated[str, Meta(max_length=200)]


class DecisionIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    approve: bool
    reason: Annotated[str, Meta(max_length=2000)] | None = None


class ActiveIn(msgspec.Struct, forbid_unknown_fields=True):
    active: bool


class ReplaceValuesIn(msgspec.Struct, forbid_unknown_fields=True):
    values: list[str]


class AuthorityOut(msgspec.Struct, kw_only=True, omit_defaults=True):
    cvr: str
    name: str
    kommunekode: str | None = None
    region: str | None = None
    has_token: bool = False
    token: str | None = None


class ValueListOut(msgspec.Struct, kw_only=True):
    id: str
    name: str
    status: str
    size: int
    registrations: int
    last_changed_ms: int
    values: list[str] | None = None


_authority_in = msgspec.json.Decoder(AuthorityIn)
_decision_in = msgspec.json.Decoder(DecisionIn)
_active_in = msgspec.json.Decoder(ActiveIn)
_replace_in = msgspec.json.Decoder(ReplaceValuesIn)
_list_in = msgspec.json.Decoder(vls.ValueListIn)
_edit_in = msgspec.json.Decoder(vls.ValuesEdit)
_agreement_in = msgspec.json.Decoder(agr.AgreementIn)


def _authority_out(a: Authority, token: str | None = None) -> AuthorityOut:
    return AuthorityOut(
        cvr=a.cvr,
        name=a.name,
        kommunekode=a.kommunekode,
        region=a.region,
        has_token=a.token_hash is not None,
        token=token,
    )


def _list_out(vl: vls.ValueList, *, values: bool) -> ValueListOut:
    return ValueListOut(
        id=vl.id,
        name=vl.name,
        status=vl.status,
        size=len(vl.values),
        registrations=vl.registrations,
        last_changed_ms=vl.last_changed_ms,
        values=list(vl.values) if values else None,
    )


def register(app: Quart, broker: Broker) -> None:
    gov = broker.governance
    reg = broker.registry

    def agreement_out(a: agr.Agreement) -> Any:
        view = agr.view(a, broker.clock())
        return {
            **msgspec.to_builtins(view.agreement),
            "status": view.status,
            "effective_authorities": view.effective_authorities,
        }

    # -------------------------------------------------------------- catalog
    @app.get("/v1/catalog/message-types")
    async def list_message_types() -> Response:  # public, like KOMBIT's beskedkatalog page
        types = sorted(reg.catalog.values(), key=lambda t: (t.name, t.version))
        return json_response({"message_types": types})

    @app.get("/v1/catalog/message-types/<type_id>")
    async def get_message_type(type_id: str) -> Response:
        mt = reg.catalog.get(type_id.lower())
        if mt is None:
            raise NotFound(f"no message type {type_id!r} in the catalog")
        return json_response(mt)

    @app.post("/v1/catalog/message-types")
    async def create_message_type() -> Response:
        broker.require_admin(principal(broker))
        body = decode_message_type_in(await request.get_data(cache=False))  # type: ignore[arg-type]
        mt: MessageType = await gov.create_message_type(body)
        return json_response(mt, 201)

    @app.post("/v1/catalog/message-types/<type_id>/active")
    async def set_message_type_active(type_id: str) -> Response:
        broker.require_admin(principal(broker))
        body: ActiveIn = await body_struct(_active_in)
        return json_response(await gov.set_message_type_active(type_id, body.active))

    # -------------------------------------------------------------- authorities
    @app.post("/v1/authorities")
    async def create_authority() -> Response:
        broker.require_admin(principal(broker))
        body: AuthorityIn = await body_struct(_authority_in)
        token = new_token("auth")
        a = await gov.create_authority(body.cvr, body.name, hash_token(token))
        return json_response(_authority_out(a, token), 201)

    @app.post("/v1/authorities/<cvr>/token")
    async def authority_token(cvr: str) -> Response:
        broker.require_admin(principal(broker))
        token = new_token("auth")
        await gov.issue_authority_token(normalize_cvr(cvr) or cvr, hash_token(token))
        return json_response({"cvr": normalize_cvr(cvr), "token": token})

    @app.get("/v1/authorities")
    async def list_authorities() -> Response:
        principal(broker)  # any registered party may see who the authorities are
        return json_response(
            {
                "authorities": [
                    _authority_out(a) for a in sorted(reg.authorities.values(), key=lambda a: a.cvr)
                ]
            }
        )

    # -------------------------------------------------------------- agreements
    @app.post("/v1/agreements")
    async def request_agreement() -> Response:
        owner = system(broker)
        body: agr.AgreementIn = await body_struct(_agreement_in)
        return json_response(agreement_out(await gov.request_agreement(owner.id, body)), 201)

    @app.get("/v1/agreements")
    async def list_agreements() -> Response:
        who = principal(broker)
        if who == ADMIN:
            found = list(reg.agreements.values())
        elif isinstance(who, Authority):
            found = reg.agreements_naming(who.cvr)
        else:
            found = reg.agreements_of(broker.require_system(who).id)
        return json_response(
            {"agreements": [agreement_out(a) for a in sorted(found, key=lambda a: a.created_ms)]}
        )

    @app.get("/v1/agreements/<agreement_id>")
    async def get_agreement(agreement_id: str) -> Response:
        who = principal(broker)
        a = gov.agreement(agreement_id)
        visible = (
            who == ADMIN
            or (isinstance(who, Authority) and who.cvr in a.authorities)
            or (not isinstance(who, Authority | str) and a.system_id == who.id)
        )
        if not visible:
            raise NotFound(f"no agreement {agreement_id!r}")
        return json_response(agreement_out(a))

    @app.post("/v1/agreements/<agreement_id>/decision")
    async def decide(agreement_id: str) -> Response:
        authority = broker.require_authority(principal(broker))
        body: DecisionIn = await body_struct(_decision_in)
        return json_response(
            agreement_out(await gov.decide(authority.cvr, agreement_id, body.approve, body.reason))
        )

    @app.post("/v1/agreements/<agreement_id>/withdraw")
    async def withdraw(agreement_id: str) -> Response:
        return json_response(agreement_out(await gov.withdraw(system(broker).id, agreement_id)))

    # -------------------------------------------------------------- value lists
    @app.post("/v1/value-lists")
    async def create_value_list() -> Response:
        owner = system(broker)
        body: vls.ValueListIn = await body_struct(_list_in)
        return json_response(
            _list_out(await gov.create_value_list(owner.id, body), values=False), 201
        )

    @app.get("/v1/value-lists")
    async def list_value_lists() -> Response:
        owner = system(broker)
        lists = [vl for vl in reg.value_lists.owned_by(owner.id) if vl.status != "slettet"]
        return json_response({"value_lists": [_list_out(vl, values=False) for vl in lists]})

    @app.get("/v1/value-lists/<list_id>")
    async def get_value_list(list_id: str) -> Response:
        return json_response(_list_out(gov.value_list(system(broker).id, list_id), values=True))

    @app.put("/v1/value-lists/<list_id>")
    async def import_value_list(list_id: str) -> Response:
        owner = system(broker)
        body: vls.ValueListIn = await body_struct(_list_in)
        return json_response(
            _list_out(await gov.import_value_list(owner.id, list_id, body), values=False)
        )

    @app.post("/v1/value-lists/<list_id>/values")
    async def change_values(list_id: str) -> Response:
        owner = system(broker)
        body: vls.ValuesEdit = await body_struct(_edit_in)
        return json_response(
            _list_out(await gov.change_values(owner.id, list_id, body), values=False)
        )

    @app.put("/v1/value-lists/<list_id>/values")
    async def replace_values(list_id: str) -> Response:
        owner = system(broker)
        body: ReplaceValuesIn = await body_struct(_replace_in)
        vl = await gov.edit_value_list(owner.id, list_id, "replace", body.values)
        return json_response(_list_out(vl, values=False))

    @app.post("/v1/value-lists/<list_id>/passivate")
    async def passivate(list_id: str) -> Response:
        vl = await gov.edit_value_list(system(broker).id, list_id, "passivate")
        return json_response(_list_out(vl, values=False))

    @app.delete("/v1/value-lists/<list_id>")
    async def delete_value_list(list_id: str) -> Response:
        vl = await gov.edit_value_list(system(broker).id, list_id, "delete")
        return json_response(_list_out(vl, values=False))

    # -------------------------------------------------------------- audit
    @app.get("/v1/audit")
    async def audit() -> Response:
        broker.require_admin(principal(broker))
        query = parse_query({k: v for k, v in request.args.items()})
        return json_response({"events": gov.audit(query)})

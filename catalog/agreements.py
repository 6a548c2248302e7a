"""Service agreements (serviceaftaler) and their lifecycle, as data.

Theory of operation
-------------------
A system requests an agreement to ``send`` or to ``receive``, naming one or more authorities and
optional data restrictions (message types, maximum sensitivity, KLE patterns, sending
authorities, expiry). Each named authority decides for itself, with its own token. Everything
that affects the lifecycle lives in this module's two tables, in the manner of h11's
``_state.py``:

* :data:`DECISION_TRANSITIONS`: one authority's decision. ``requested -> approved | rejected``;
  an approval can later be revoked (``approved -> rejected``: consent can always be withdrawn);
  a rejection is final (the system requests a new agreement). Repeating the decision an
  authority already made changes nothing (safe HTTP retries).
* :data:`AGREEMENT_ACTIONS`: which actions an agreement accepts in each derived status.
  Decisions stop once it is ``expired`` or ``withdrawn``; ``withdrawn`` is final (withdrawing
  again changes nothing).

The agreement status is derived, never stored (:func:`status`), checked in this order:
``withdrawn`` (withdrawn_ms set), ``expired`` (now >= valid_until_ms), ``approved`` (at least
one authority approved), ``rejected`` (every authority rejected), else ``requested``. Only an
``approved`` agreement has effect, and only for the authorities that approved it
(:func:`effective_authorities`).
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from datetime import UTC, datetime
from typing import Final, Literal, TypeAlias

import msgspec

from broker.codec import decode_struct
from broker.errors import Conflict, Forbidden, InvalidInput
from catalog import sensitivity
from catalog.authorities import normalize_cvr, require_cvrs
from catalog.ids import Record, require_uuid
from catalog.kle import require_patterns

__all__ = [
    "AGREEMENT_ACTIONS",
    "DECISION_TRANSITIONS",
    "MAX_AUTHORITIES",
    "MAX_MESSAGE_TYPES",
    "MAX_REASON_LENGTH",
    "Agreement",
    "AgreementIn",
    "AgreementStatus",
    "AgreementView",
    "Decision",
    "DecisionStatus",
    "Kind",
    "approvers",
    "decide",
    "decode_agreement_in",
    "effective_authorities",
    "is_active",
    "status",
    "validate_agreement_request",
    "view",
    "withdraw",
]

Kind: TypeAlias = Literal["send", "receive"]
DecisionStatus: TypeAlias = Literal["requested", "approved", "rejected"]
AgreementStatus: TypeAlias = Literal["requested", "approved", "rejected", "expired", "withdrawn"]
Verb: TypeAlias = Literal["approve", "reject"]
Action: TypeAlias = Literal["decide", "withdraw"]

MAX_REASON_LENGTH: Final = 1000

#: One authority's decision: (current, verb) -> next. Pairs not listed are illegal.
DECISION_TRANSITIONS: Final[Mapping[tuple[DecisionStatus, Verb], DecisionStatus]] = {
    ("requested", "approve"): "approved",
    ("requested", "reject"): "rejected",
    ("approved", "reject"): "rejected",  # revoking consent is always possible
    ("approved", "approve"): "approved",  # a repeat: no change
    ("rejected", "reject"): "rejected",  # a repeat: no change
}

#: Which actions an agreement accepts in each derived status.
AGREEMENT_ACTIONS: Final[Mapping[AgreementStatus, frozenset[Action]]] = {
    "requested": frozenset({"decide", "withdraw"}),
    "approved": frozenset({"decide", "withdraw"}),
    "rejected": frozenset({"decide", "withdraw"}),
    "expired": frozenset({"withdraw"}),
    "withdrawn": frozenset(),
}


class Decision(Record, frozen=True, kw_only=True):
    """One authority's decision on one agreement."""

    status: DecisionStatus = "requested"
    reason: str | None = None
    decided_ms: int | None = None


class Agreement(Record, frozen=True, kw_only=True):
    """A service agreement. Restrictions that are ``None`` do not restrict.

    CVRs are 8 digits, UUIDs lower-case, lists sorted without duplicates. ``decisions`` has one
    entry per authority from the start (``requested``).
    """

    id: str
    system_id: str
    kind: Kind
    authorities: tuple[str, ...]
    message_types: tuple[str, ...]
    max_sensitivity: str | None = None
    kle: tuple[str, ...] | None = None
    sending_authorities: tuple[str, ...] | None = None
    valid_until_ms: int | None = None
    decisions: dict[str, Decision] = msgspec.field(default_factory=dict)
    withdrawn_ms: int | None = None
    created_ms: int = 0
    name: str = ""  # KOMBIT's Navn
    purpose: str = ""  # KOMBIT's Begrundelse: why the system needs the data


def status(agreement: Agreement, now_ms: int) -> AgreementStatus:
    """The derived status at ``now_ms`` (see the module docstring for the order)."""
    if agreement.withdrawn_ms is not None:
        return "withdrawn"
    if agreement.valid_until_ms is not None and now_ms >= agreement.valid_until_ms:
        return "expired"
    rejected = 0
    for cvr in agreement.authorities:
        decision = agreement.decisions.get(cvr)
        if decision is None:
            continue
        if decision.status == "approved":
            return "approved"
        if decision.status == "rejected":
            rejected += 1
    if agreement.authorities and rejected == len(agreement.authorities):
        return "rejected"
    return "requested"


def is_active(agreement: Agreement, now_ms: int) -> bool:
    """Is it approved (and neither expired nor withdrawn) at ``now_ms``?"""
    return status(agreement, now_ms) == "approved"


def approvers(agreement: Agreement) -> frozenset[str]:
    """The authorities whose current decision is ``approved``, whatever the agreement status."""
    return frozenset(
        cvr
        for cvr in agreement.authorities
        if (d := agreement.decisions.get(cvr)) is not None and d.status == "approved"
    )


def effective_authorities(agreement: Agreement, now_ms: int) -> frozenset[str]:
    """The authorities the agreement is in force for: those that approved it, while it is
    ``approved``; empty otherwise."""
    if status(agreement, now_ms) != "approved":
        return frozenset()
    return approvers(agreement)


def _require_action(agreement: Agreement, action: Action, now_ms: int) -> AgreementStatus:
    current = status(agreement, now_ms)
    if action not in AGREEMENT_ACTIONS[current]:
        raise Conflict(
            f"agreement {agreement.id} is {current}: it accepts no {action} any more",
            code="agreement_state",
        )
    return current


def decide(
    agreement: Agreement, cvr: str, approve: bool, reason: str | None, now_ms: int
) -> Agreement:
    """Record authority ``cvr``'s decision; returns the new agreement (the input is unchanged).

    Error handling:
        :class:`Forbidden` (``not_agreement_authority``) when ``cvr`` is not one of the
        agreement's authorities; :class:`Conflict` (``agreement_state``) when the agreement is
        expired or withdrawn, or the transition is not in :data:`DECISION_TRANSITIONS`
        (approving after a rejection); :class:`InvalidInput` for a reason over
        :data:`MAX_REASON_LENGTH` characters.
    """
    key = normalize_cvr(cvr)
    if key is None or key not in agreement.authorities:
        raise Forbidden(
            f"authority {cvr} is not a party to agreement {agreement.id}"
            f" (its authorities: {', '.join(agreement.authorities)})",
            code="not_agreement_authority",
        )
    if reason is not None and len(reason) > MAX_REASON_LENGTH:
        raise InvalidInput(
            f"a reason may be at most {MAX_REASON_LENGTH} characters", path="$.reason"
        )
    _require_action(agreement, "decide", now_ms)
    current = agreement.decisions.get(key, Decision()).status
    verb: Verb = "approve" if approve else "reject"
    after = DECISION_TRANSITIONS.get((current, verb))
    if after is None:
        raise Conflict(
            f"authority {key} has {current} agreement {agreement.id}; it cannot {verb} it"
            " (a rejection is final: request a new agreement)",
            code="agreement_state",
        )
    if after == current:
        return agreement
    decisions = dict(agreement.decisions)
    decisions[key] = Decision(status=after, reason=reason, decided_ms=now_ms)
    return msgspec.structs.replace(agreement, decisions=decisions)


def withdraw(agreement: Agreement, now_ms: int) -> Agreement:
    """The system withdraws its agreement: final. Withdrawing again changes nothing."""
    if agreement.withdrawn_ms is not None:
        return agreement
    _require_action(agreement, "withdraw", now_ms)
    return msgspec.structs.replace(agreement, withdrawn_ms=now_ms)


# --------------------------------------------------------------------------------------------
# the request API: body, validation, view

MAX_AUTHORITIES: Final = 1000
MAX_MESSAGE_TYPES: Final = 1000


class AgreementIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST /v1/agreements``. ``valid_until`` is epoch milliseconds or an
    RFC 3339 date-time (one without a zone is read as UTC)."""

    kind: Kind
    authorities: list[str]
    message_types: list[str]
    max_sensitivity: str | None = None
    kle: list[str] | None = None
    sending_authorities: list[str] | None = None
    valid_until: int | datetime | None = None
    name: str = ""
    purpose: str = ""


class AgreementView(Record, frozen=True, kw_only=True):
    """An agreement as answered by the API: the record plus its derived state."""

    agreement: Agreement
    status: AgreementStatus
    effective_authorities: tuple[str, ...]


_decoder: Final = msgspec.json.Decoder(AgreementIn)


def decode_agreement_in(data: bytes) -> AgreementIn:
    """Decode a JSON request body (errors map to ``invalid``/``unknown_field`` with a path)."""
    body: AgreementIn = decode_struct(data, _decoder)
    return body


def _until_ms(value: int | datetime | None, now_ms: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = int(value.timestamp() * 1000)
    if value <= now_ms:
        raise InvalidInput("valid_until must lie in the future", path="$.valid_until")
    return value


def validate_agreement_request(
    body: AgreementIn,
    *,
    agreement_id: str,
    system_id: str,
    now_ms: int,
    catalog: Container[str] | None = None,
    known_authorities: Container[str] | None = None,
) -> Agreement:
    """A new :class:`Agreement` (every authority ``requested``) from a checked request.

    ``catalog`` holds the known message type ids (lower-case) and ``known_authorities`` the
    registered CVRs; when given, unknown ones are refused.

    Error handling:
        :class:`InvalidInput` with the path of the first bad field: no authorities or message
        types, a malformed CVR/UUID/KLE pattern, a sensitivity that is not one of the four,
        ``sending_authorities`` on a ``send`` agreement (the restriction compares
        ``TilladtModtager`` and only means something to a receiver), ``valid_until`` not in
        the future, over-long lists or texts. Code ``unknown_message_type`` (422) or
        ``unknown_authority`` (422) for ids the catalog or the authority registry lacks.
    """
    if len(body.authorities) > MAX_AUTHORITIES:
        raise InvalidInput(f"at most {MAX_AUTHORITIES} authorities", path="$.authorities")
    authorities = require_cvrs(body.authorities, path="$.authorities")
    if known_authorities is not None:
        for i, cvr in enumerate(body.authorities):
            if normalize_cvr(cvr) not in known_authorities:
                raise InvalidInput(
                    f"authority {cvr} is not registered",
                    code="unknown_authority",
                    path=f"$.authorities[{i}]",
                )
    if not body.message_types:
        raise InvalidInput("an agreement needs at least one message type", path="$.message_types")
    if len(body.message_types) > MAX_MESSAGE_TYPES:
        raise InvalidInput(f"at most {MAX_MESSAGE_TYPES} message types", path="$.message_types")
    types: set[str] = set()
    for i, raw in enumerate(body.message_types):
        type_id = require_uuid(raw, path=f"$.message_types[{i}]", what="a message type UUID")
        if catalog is not None and type_id not in catalog:
            raise InvalidInput(
                f"message type {type_id} is not in the catalog",
                code="unknown_message_type",
                path=f"$.message_types[{i}]",
            )
        types.add(type_id)
    max_sensitivity = body.max_sensitivity
    if max_sensitivity is not None:
        if sensitivity.rank(max_sensitivity) is None:
            raise InvalidInput(
                f"not one of the four Sikkerhedsklassificering UUIDs: {max_sensitivity!r}",
                path="$.max_sensitivity",
            )
        max_sensitivity = max_sensitivity.lower()
    kle = None if body.kle is None else require_patterns(body.kle, path="$.kle")
    sending = None
    if body.sending_authorities is not None:
        if body.kind == "send":
            raise InvalidInput(
                "sending_authorities restricts what a receiver gets; a send agreement cannot"
                " have it",
                path="$.sending_authorities",
            )
        sending = require_cvrs(body.sending_authorities, path="$.sending_authorities")
    for field, text in (("name", body.name), ("purpose", body.purpose)):
        if len(text) > MAX_REASON_LENGTH:
            raise InvalidInput(f"at most {MAX_REASON_LENGTH} characters", path=f"$.{field}")
    return Agreement(
        id=agreement_id,
        system_id=system_id,
        kind=body.kind,
        authorities=authorities,
        message_types=tuple(sorted(types)),
        max_sensitivity=max_sensitivity,
        kle=kle,
        sending_authorities=sending,
        valid_until_ms=_until_ms(body.valid_until, now_ms),
        decisions={cvr: Decision() for cvr in authorities},
        created_ms=now_ms,
        name=body.name.strip(),
        purpose=body.purpose.strip(),
    )


def view(agreement: Agreement, now_ms: int) -> AgreementView:
    """The agreement with its status and effective authorities at ``now_ms``."""
    return AgreementView(
        agreement=agreement,
        status=status(agreement, now_ms),
        effective_authorities=tuple(sorted(effective_authorities(agreement, now_ms))),
    )

"""The audit log's records and queries: who did what, when, with which outcome. Pure.

Every send (accepted or refused, with the refusal code), delivery lease, ack and nack, agreement
request, decision and withdrawal, and value-list change becomes one :class:`AuditEvent`. The
store appends them in time order and drops those older than the retention
(:data:`DEFAULT_RETENTION_S`, 90 days: long enough to answer "who received this person's data
last quarter", short enough that the log does not become a second data store; only ids are kept,
never content). ``GET /v1/audit`` answers an :class:`AuditQuery`; :func:`matches` is the one
predicate the store and tests use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal, TypeAlias

import msgspec

from broker.errors import InvalidInput
from catalog.ids import Record

__all__ = [
    "ACTIONS",
    "DEFAULT_LIMIT",
    "DEFAULT_RETENTION_S",
    "MAX_DETAIL_ITEMS",
    "MAX_DETAIL_LENGTH",
    "MAX_LIMIT",
    "AuditEvent",
    "AuditQuery",
    "Outcome",
    "clip_detail",
    "cutoff_ms",
    "matches",
    "parse_query",
]

DEFAULT_RETENTION_S: Final = 90 * 24 * 3600
DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000
MAX_DETAIL_ITEMS: Final = 16
MAX_DETAIL_LENGTH: Final = 256

Outcome: TypeAlias = Literal["ok", "refused", "error"]
_OUTCOMES: Final[dict[str, Outcome]] = {"ok": "ok", "refused": "refused", "error": "error"}

#: The actions dueslag records. ``matches`` also takes a prefix such as ``"send."``.
ACTIONS: Final = frozenset(
    {
        "send.accepted",
        "send.refused",
        "delivery.leased",
        "delivery.acked",
        "delivery.nacked",
        "delivery.dead",
        "delivery.expired",
        "agreement.requested",
        "agreement.decided",
        "agreement.withdrawn",
        "authority.created",
        "authority.token",
        "messagetype.changed",
        "valuelist.changed",
        "subscription.changed",
    }
)


class AuditEvent(Record, frozen=True, kw_only=True):
    """One audited action. ``actor`` is a system id, an authority CVR, ``"admin"``, or
    ``"broker"`` for what the broker does on its own (lease expiry)."""

    ts_ms: int
    actor: str
    action: str  # one of ACTIONS
    outcome: Outcome = "ok"
    code: str | None = None  # the error code of a refusal
    reason: str | None = None  # its message, or an authority's reason for a decision
    message_type: str | None = None
    transaction_id: str | None = None
    besked_id: str | None = None
    mailbox: str | None = None
    agreement_id: str | None = None
    subject: str | None = None  # any other object acted on (value list, authority, type)
    detail: dict[str, str] = msgspec.field(default_factory=dict)  # small: see clip_detail()


class AuditQuery(Record, frozen=True, kw_only=True):
    """A filter over the log: ``[since_ms, until_ms)`` (half-open, as KOMBIT's list filters),
    exact ``actor``, ``action`` exact or a prefix ending in ``.``, ``outcome``; newest first,
    at most ``limit``."""

    since_ms: int | None = None
    until_ms: int | None = None
    actor: str | None = None
    action: str | None = None
    outcome: Outcome | None = None
    limit: int = DEFAULT_LIMIT


def matches(event: AuditEvent, query: AuditQuery) -> bool:
    """Does ``event`` satisfy every condition of ``query`` (``limit`` aside)?"""
    if query.since_ms is not None and event.ts_ms < query.since_ms:
        return False
    if query.until_ms is not None and event.ts_ms >= query.until_ms:
        return False
    if query.actor is not None and event.actor != query.actor:
        return False
    if query.outcome is not None and event.outcome != query.outcome:
        return False
    action = query.action
    if action is not None:
        if action.endswith("."):
            return event.action.startswith(action)
        return event.action == action
    return True


def cutoff_ms(now_ms: int, retention_s: int = DEFAULT_RETENTION_S) -> int:
    """Events with ``ts_ms`` below this are past the retention and may be dropped."""
    return now_ms - retention_s * 1000


def clip_detail(detail: Mapping[str, object]) -> dict[str, str]:
    """``detail`` made small: at most :data:`MAX_DETAIL_ITEMS` entries (by key order), each
    value as text of at most :data:`MAX_DETAIL_LENGTH` characters."""
    out: dict[str, str] = {}
    for key in sorted(detail)[:MAX_DETAIL_ITEMS]:
        out[key[:MAX_DETAIL_LENGTH]] = str(detail[key])[:MAX_DETAIL_LENGTH]
    return out


def _int(params: Mapping[str, str], name: str) -> int | None:
    text = params.get(name)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise InvalidInput(f"{name} must be an integer, got {text!r}", path=f"$.{name}") from None


def parse_query(params: Mapping[str, str]) -> AuditQuery:
    """An :class:`AuditQuery` from URL query parameters ``since``, ``until`` (epoch ms),
    ``actor``, ``action``, ``outcome``, ``limit``.

    Error handling:
        :class:`InvalidInput` naming the parameter: unknown parameter, non-integer time or
        limit, limit outside 1..:data:`MAX_LIMIT`, unknown outcome, ``since`` after ``until``.
    """
    known = {"since", "until", "actor", "action", "outcome", "limit"}
    for name in params:
        if name not in known:
            raise InvalidInput(
                f"unknown parameter {name!r} (use {', '.join(sorted(known))})",
                code="unknown_field",
                path=f"$.{name}",
            )
    since, until = _int(params, "since"), _int(params, "until")
    if since is not None and until is not None and since > until:
        raise InvalidInput("since must not be after until", path="$.since")
    limit = _int(params, "limit")
    if limit is None:
        limit = DEFAULT_LIMIT
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be 1..{MAX_LIMIT}, got {limit}", path="$.limit")
    text = params.get("outcome")
    outcome = None if text is None else _OUTCOMES.get(text)
    if text is not None and outcome is None:
        raise InvalidInput(f"outcome must be ok, refused or error, got {text!r}", path="$.outcome")
    return AuditQuery(
        since_ms=since,
        until_ms=until,
        actor=params.get("actor"),
        action=params.get("action"),
        outcome=outcome,
        limit=limit,
    )

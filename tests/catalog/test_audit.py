"""Audit events, queries and retention."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.errors import InvalidInput
from catalog.audit import (
    ACTIONS,
    DEFAULT_LIMIT,
    DEFAULT_RETENTION_S,
    MAX_DETAIL_ITEMS,
    MAX_DETAIL_LENGTH,
    AuditEvent,
    AuditQuery,
    clip_detail,
    cutoff_ms,
    matches,
    parse_query,
)


def event(**kw: object) -> AuditEvent:
    fields: dict[str, object] = {"ts_ms": 100, "actor": "sys-1", "action": "send.accepted"}
    fields.update(kw)
    return AuditEvent(**fields)  # type: ignore[arg-type]


def test_matches_each_condition() -> None:
    e = event(outcome="refused", code="no_send_agreement", action="send.refused")
    assert matches(e, AuditQuery())
    assert matches(e, AuditQuery(since_ms=100, until_ms=101))
    assert not matches(e, AuditQuery(since_ms=101))
    assert not matches(e, AuditQuery(until_ms=100))  # half-open
    assert matches(e, AuditQuery(actor="sys-1")) and not matches(e, AuditQuery(actor="sys-2"))
    assert matches(e, AuditQuery(action="send.refused"))
    assert matches(e, AuditQuery(action="send."))
    assert not matches(e, AuditQuery(action="send"))
    assert not matches(e, AuditQuery(action="delivery."))
    assert matches(e, AuditQuery(outcome="refused")) and not matches(e, AuditQuery(outcome="ok"))


def test_parse_query() -> None:
    q = parse_query(
        {"since": "5", "until": "9", "actor": "admin", "action": "agreement.", "outcome": "ok"}
    )
    assert q == AuditQuery(since_ms=5, until_ms=9, actor="admin", action="agreement.", outcome="ok")
    assert parse_query({}).limit == DEFAULT_LIMIT


@pytest.mark.parametrize(
    ("params", "path", "code"),
    [
        ({"since": "yesterday"}, "$.since", "invalid"),
        ({"since": "9", "until": "5"}, "$.since", "invalid"),
        ({"limit": "0"}, "$.limit", "invalid"),
        ({"limit": "1001"}, "$.limit", "invalid"),
        ({"outcome": "maybe"}, "$.outcome", "invalid"),
        ({"colour": "red"}, "$.colour", "unknown_field"),
    ],
)
def test_parse_query_refusals(params: dict[str, str], path: str, code: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_query(params)
    assert (info.value.path, info.value.code) == (path, code)


def test_retention_and_detail() -> None:
    assert DEFAULT_RETENTION_S == 90 * 24 * 3600
    assert cutoff_ms(DEFAULT_RETENTION_S * 1000 + 7) == 7
    big = {f"k{i:02d}": "x" * 1000 for i in range(40)}
    clipped = clip_detail(big)
    assert len(clipped) == MAX_DETAIL_ITEMS
    assert all(len(v) == MAX_DETAIL_LENGTH for v in clipped.values())
    assert clip_detail({"n": 3}) == {"n": "3"}


def test_events_survive_json_and_actions_are_named() -> None:
    e = event(agreement_id="a-1", detail={"mailbox": "m"})
    assert msgspec.json.decode(msgspec.json.encode(e), type=AuditEvent) == e
    assert {
        "send.accepted",
        "send.refused",
        "delivery.acked",
        "agreement.decided",
        "valuelist.changed",
    } <= ACTIONS
    assert all("." in a for a in ACTIONS)


@given(
    st.integers(0, 200),
    st.one_of(st.none(), st.integers(0, 200)),
    st.one_of(st.none(), st.integers(0, 200)),
)
def test_time_window_is_half_open(ts: int, since: int | None, until: int | None) -> None:
    inside = (since is None or ts >= since) and (until is None or ts < until)
    assert matches(event(ts_ms=ts), AuditQuery(since_ms=since, until_ms=until)) == inside

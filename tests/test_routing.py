"""The routing table: pure, sans-IO."""

from __future__ import annotations

import msgspec

from broker.codec import decode_envelope
from broker.routing import RoutingTable
from store.base import Route, SubscriptionRecord
from tests.conftest import TYPE1, TYPE2, envelope


def _besked(message_type: str):  # type: ignore[no-untyped-def]
    return decode_envelope(msgspec.json.encode(envelope(message_type)), "application/json")


def _sub(sid: str, mailbox: str, *types: str, active: bool = True) -> SubscriptionRecord:
    return SubscriptionRecord(
        id=sid, mailbox_id=mailbox, owner="o", message_types=types, active=active
    )


def test_routes_by_message_type_each_mailbox_once() -> None:
    table = RoutingTable(
        [
            _sub("s2", "mb1", TYPE1),
            _sub("s1", "mb1", TYPE1, TYPE2),
            _sub("s3", "mb2", TYPE2),
            _sub("s4", "mb3", TYPE1, active=False),
        ]
    )
    assert table.route(_besked(TYPE1)) == (Route("mb1", "s1"),)  # first subscription by id
    assert set(table.route(_besked(TYPE2))) == {Route("mb1", "s1"), Route("mb2", "s3")}
    assert table.route(_besked("00000000-0000-0000-0000-000000000000")) == ()


def test_message_type_matches_case_insensitively() -> None:
    table = RoutingTable([_sub("s1", "mb1", TYPE1.upper())])
    assert table.route(_besked(TYPE1)) == (Route("mb1", "s1"),)
    assert RoutingTable([_sub("s1", "mb1", TYPE1)]).route(_besked(TYPE1.upper())) == (
        Route("mb1", "s1"),
    )


def test_remove_subscription_and_mailbox() -> None:
    table = RoutingTable(
        [_sub("s1", "mb1", TYPE1), _sub("s2", "mb2", TYPE1), _sub("s3", "mb2", TYPE2)]
    )
    table.remove("s1")
    assert table.route(_besked(TYPE1)) == (Route("mb2", "s2"),)
    table.remove_mailbox("mb2")
    assert table.route(_besked(TYPE1)) == () and table.route(_besked(TYPE2)) == ()
    assert table.statistics().subscriptions == 0
    assert repr(table) == "<RoutingTable [0 subscriptions | 0 message types]>"


def test_expression_subscriptions_need_a_matcher() -> None:
    sub = SubscriptionRecord(
        id="s1", mailbox_id="mb1", owner="o", message_types=(TYPE1,), expression="x = 'y'"
    )
    assert RoutingTable([sub]).route(_besked(TYPE1)) == ()
    seen = []

    def matcher(s: SubscriptionRecord, b: object) -> bool:
        seen.append(s.id)
        return True

    assert RoutingTable([sub], matcher=matcher).route(_besked(TYPE1)) == (Route("mb1", "s1"),)
    assert seen == ["s1"]

"""The Store conformance suite: each test runs against MemoryStore and LmdbStore."""

from __future__ import annotations

import pytest
from msgspec.structs import replace
from storekit import dump, one, publish, published, setup

from broker.errors import Conflict, InvalidInput, NotFound, StoreError
from store import (
    MAX_RETENTION_S,
    Ack,
    AckResult,
    CreateMailbox,
    CreateSubscription,
    CreateSystem,
    DeleteMailbox,
    DeleteSubscription,
    Delivery,
    Lease,
    MailboxRecord,
    Nack,
    PublishResult,
    Replay,
    RequeueDead,
    Route,
    SubscriptionRecord,
    Sweep,
    SweepResult,
    SystemRecord,
)
from store import deliveries as store_deliveries
from store.engine import KvStore

LEASE = Lease(mailbox_id="mb1", max=10, lease_ms=30_000)


def leased(
    store: KvStore, now: int = 1_000, *, limit: int = 10, lease_ms: int = 30_000
) -> list[Delivery]:
    result = one(store, Lease(mailbox_id="mb1", max=limit, lease_ms=lease_ms), now)
    assert isinstance(result, list)
    return result


# ----------------------------------------------------------------------------- directory


def test_systems(store: KvStore) -> None:
    record = one(store, CreateSystem(id="s1", name="One", token_hash=b"h1"), 5)
    assert record == SystemRecord(id="s1", name="One", token_hash=b"h1", created_ms=5)
    assert store.get_system("s1") == record
    assert store.get_system("nope") is None
    assert store.get_system("") is None
    assert store.get_system_by_token_hash(b"h1") == record
    assert store.get_system_by_token_hash(b"h2") is None
    assert store.get_system_by_token_hash(b"") is None
    again = one(store, CreateSystem(id="s1", name="Again", token_hash=b"h3"))
    assert isinstance(again, Conflict)
    same_token = one(store, CreateSystem(id="s2", name="Two", token_hash=b"h1"))
    assert isinstance(same_token, Conflict)
    bad = one(store, CreateSystem(id="", name="Empty", token_hash=b"h4"))
    assert isinstance(bad, InvalidInput)
    assert bad.path == "$.id"
    one(store, CreateSystem(id="s0", name="Zero", token_hash=b"h0"))
    assert [s.id for s in store.list_systems()] == ["s0", "s1"]


def test_mailboxes(store: KvStore) -> None:
    setup(store)
    mb1 = store.get_mailbox("mb1")
    assert isinstance(mb1, MailboxRecord)
    assert (mb1.owner, mb1.name, mb1.num, mb1.created_ms) == ("sys", "one", 1, 1_000)
    other = one(store, CreateMailbox(id="mb3", owner="other", name="three", strict=True))
    assert isinstance(other, MailboxRecord)
    assert other.num == 3
    assert other.strict
    assert [m.id for m in store.list_mailboxes("sys")] == ["mb1", "mb2"]
    assert store.list_mailboxes("other") == [other]
    assert store.list_mailboxes("nobody") == []
    assert isinstance(one(store, CreateMailbox(id="mb1", owner="sys", name="dup")), Conflict)
    assert store.statistics().mailboxes == 3


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("retention_s", 0),
        ("retention_s", MAX_RETENTION_S + 1),
        ("max_deliveries", 0),
        ("id", ""),
        ("owner", "x" * 300),
    ],
)
def test_create_mailbox_refused(store: KvStore, field: str, value: object) -> None:
    setup(store)
    before = dump(store)
    op = CreateMailbox(**{"id": "new", "owner": "sys", "name": "n", field: value})  # type: ignore[arg-type]
    result = one(store, op)
    assert isinstance(result, InvalidInput)
    assert field in result.message
    assert result.path == f"$.{field}"
    assert dump(store) == before


def test_subscriptions(store: KvStore) -> None:
    setup(store)
    sub = one(
        store, CreateSubscription(id="s2", mailbox_id="mb1", message_types=("ABC",), expression="x")
    )
    assert sub == SubscriptionRecord(
        id="s2",
        mailbox_id="mb1",
        owner="sys",
        message_types=("abc",),
        expression="x",
        created_ms=1_000,
    )
    assert store.get_subscription("s2") == sub
    assert [s.id for s in store.list_subscriptions("mb1")] == ["s2", "sub-mb1"]
    assert [s.id for s in store.list_subscriptions()] == ["s2", "sub-mb1", "sub-mb2"]
    assert store.list_subscriptions("missing") == []
    missing = one(store, CreateSubscription(id="s3", mailbox_id="nope", message_types=()))
    assert isinstance(missing, NotFound)
    dup = one(store, CreateSubscription(id="s2", mailbox_id="mb2", message_types=()))
    assert isinstance(dup, Conflict)
    wrong_box = one(store, DeleteSubscription(id="s2", mailbox_id="mb2"))
    assert isinstance(wrong_box, NotFound)
    assert one(store, DeleteSubscription(id="s2", mailbox_id="mb1")) is None
    assert store.get_subscription("s2") is None
    assert isinstance(one(store, DeleteSubscription(id="s2", mailbox_id="mb1")), NotFound)
    assert isinstance(one(store, DeleteSubscription(id="s2", mailbox_id="zz")), NotFound)


def test_delete_mailbox(store: KvStore) -> None:
    setup(store)
    store.apply([publish(1, "mb1", "mb2"), publish(2, "mb1"), publish(3, "mb2")], 1_000)
    ids = [d.delivery_id for d in leased(store, limit=1)]
    one(store, Ack(mailbox_id="mb1", delivery_ids=tuple(ids)))
    leased(store, limit=1)
    assert store.statistics().messages == 3
    assert one(store, DeleteMailbox(id="mb1")) is None
    assert store.get_mailbox("mb1") is None
    assert store.get_subscription("sub-mb1") is None
    assert store.list_mailboxes("sys") == [store.get_mailbox("mb2")]
    with pytest.raises(NotFound):
        store.mailbox_stats("mb1")
    assert store.statistics().messages == 2  # message 2 was only in mb1
    assert isinstance(one(store, DeleteMailbox(id="mb1")), NotFound)
    assert isinstance(one(store, LEASE), NotFound)
    one(store, DeleteMailbox(id="mb2"))
    assert store.statistics().messages == 0
    after = dump(store)
    for name, items in after.items():
        if name not in ("META", "SYSTEMS", "SYSTEM_TOKENS", "DEDUP", "DEDUP_EXPIRY"):
            assert items == [], name


# ----------------------------------------------------------------------------- publish


def test_publish_fans_out_by_reference(store: KvStore) -> None:
    setup(store)
    outcome = store.apply([publish(1, "mb1", "mb2", received_ms=900)], 1_000)
    assert outcome.results == [PublishResult(transaction_id="tx-1", mailboxes=2, duplicate=False)]
    assert outcome.ready == {"mb1", "mb2"}
    stats = store.statistics()
    assert (stats.messages, stats.next_seq) == (1, 2)
    for mailbox in ("mb1", "mb2"):
        got = store.mailbox_stats(mailbox)
        assert (got.ready, got.in_flight, got.copy, got.dead) == (1, 0, 0, 0)
        assert got.oldest_ready_ms == 900


def test_publish_without_routes_stores_no_body(store: KvStore) -> None:
    setup(store)
    outcome = store.apply([publish(1), publish(2, "gone", "also-gone")], 1_000)
    assert [published(r).mailboxes for r in outcome.results] == [0, 0]
    assert outcome.ready == frozenset()
    assert store.statistics().messages == 0
    assert store.statistics().next_seq == 1
    again = one(store, publish(2, "mb1"))
    assert again == PublishResult(transaction_id="tx-2", mailboxes=0, duplicate=True)


def test_publish_duplicate_routes_deliver_once(store: KvStore) -> None:
    setup(store)
    op = replace(publish(1, "mb1"), routes=(Route("mb1", "a"), Route("mb1", "b")))
    assert one(store, op) == PublishResult(transaction_id="tx-1", mailboxes=1, duplicate=False)
    assert store.mailbox_stats("mb1").ready == 1
    assert leased(store)[0].subscription_id == "a"


def test_dedup(store: KvStore) -> None:
    setup(store)
    first = one(store, publish(1, "mb1", "mb2", window_ms=10_000), 1_000)
    before = dump(store)
    dup = one(
        store,
        replace(publish(1, "mb1", received_ms=5_000), transaction_id="other"),
        5_000,
    )
    assert dup == PublishResult(transaction_id="tx-1", mailboxes=2, duplicate=True)
    assert dump(store) == before
    assert first == replace(dup, duplicate=False)
    # the window ends at received_ms + window: an expired record is replaced
    fresh = one(store, replace(publish(1, "mb1", received_ms=11_000), transaction_id="t2"), 11_000)
    assert fresh == PublishResult(transaction_id="t2", mailboxes=1, duplicate=False)
    assert store.statistics().messages == 2
    # its new record is the one that counts
    again = one(store, publish(1, received_ms=12_000), 12_000)
    assert again == PublishResult(transaction_id="t2", mailboxes=1, duplicate=True)
    assert one(store, Sweep(), 70_999) == SweepResult()
    swept = one(store, Sweep(), 71_000)
    assert isinstance(swept, SweepResult)
    assert swept.purged_dedup == 1
    assert dump(store)["DEDUP"] == []
    assert dump(store)["DEDUP_EXPIRY"] == []


def test_dedup_within_one_batch(store: KvStore) -> None:
    setup(store)
    outcome = store.apply([publish(1, "mb1"), publish(1, "mb1", "mb2"), publish(2, "mb2")], 1_000)
    got = [published(r) for r in outcome.results]
    assert [(r.transaction_id, r.mailboxes, r.duplicate) for r in got] == [
        ("tx-1", 1, False),
        ("tx-1", 1, True),
        ("tx-2", 1, False),
    ]
    assert store.statistics().messages == 2
    assert store.mailbox_stats("mb2").ready == 1


def test_long_dedup_key(store: KvStore) -> None:
    setup(store)
    key = b"k" * 1_000
    assert not published(one(store, publish(1, "mb1", key=key))).duplicate
    assert published(one(store, publish(2, "mb1", key=key))).duplicate
    assert not published(one(store, publish(3, "mb1", key=key[:-1] + b"x"))).duplicate


def test_publish_refused(store: KvStore) -> None:
    setup(store)
    before = dump(store)
    bad = one(store, publish(1, "mb1", received_ms=-1))
    assert isinstance(bad, InvalidInput)
    assert dump(store) == before


# ----------------------------------------------------------------------------- lease


def test_lease_in_seq_order(store: KvStore) -> None:
    setup(store)
    store.apply([publish(n, "mb1", received_ms=100 + n) for n in range(1, 6)], 1_000)
    first = leased(store, 2_000, limit=2, lease_ms=500)
    assert [(d.delivery_id, d.seq, d.attempt) for d in first] == [("1-1", 1, 1), ("2-1", 2, 1)]
    assert first[0] == Delivery(
        delivery_id="1-1",
        seq=1,
        attempt=1,
        subscription_id="sub-mb1",
        received_ms=101,
        body=b'{"n":"1"}',
        leased_until_ms=2_500,
    )
    assert type(first[0].body) is bytes
    rest = leased(store, 2_000)
    assert [d.seq for d in rest] == [3, 4, 5]
    assert leased(store, 2_000) == []
    stats = store.mailbox_stats("mb1")
    assert (stats.ready, stats.in_flight, stats.oldest_ready_ms) == (0, 5, None)


def test_publish_then_lease_in_one_batch(store: KvStore) -> None:
    setup(store)
    outcome = store.apply([publish(1, "mb1"), LEASE, publish(2, "mb1"), LEASE], 1_000)
    leases = [r for r in outcome.results if isinstance(r, list)]
    assert [[d.seq for d in r] for r in leases] == [[1], [2]]


def test_strict_mailbox(store: KvStore) -> None:
    setup(store, CreateMailbox(id="mb1", owner="sys", name="fifo", strict=True))
    store.apply([publish(n, "mb1") for n in range(1, 5)], 1_000)
    assert [d.seq for d in leased(store, limit=1)] == [1]
    assert leased(store) == []  # nothing later while 1 is in flight
    one(store, Ack(mailbox_id="mb1", delivery_ids=("1-1",)))
    assert [d.seq for d in leased(store, limit=2)] == [2, 3]
    one(store, Nack(mailbox_id="mb1", delivery_ids=("2-1",)))
    # 2 is ready again, 3 in flight: 2 precedes the earliest in flight, so it is offered
    assert [(d.seq, d.attempt) for d in leased(store)] == [(2, 2)]
    assert leased(store) == []


def test_lease_refused(store: KvStore) -> None:
    setup(store)
    one(store, publish(1, "mb1"))
    before = dump(store)
    assert isinstance(one(store, replace(LEASE, max=0)), InvalidInput)
    assert isinstance(one(store, replace(LEASE, lease_ms=0)), InvalidInput)
    assert isinstance(one(store, replace(LEASE, lease_ms=1 << 64)), InvalidInput)
    assert isinstance(one(store, replace(LEASE, mailbox_id="zz")), NotFound)
    assert dump(store) == before


# ----------------------------------------------------------------------------- ack / nack


def test_ack(store: KvStore) -> None:
    setup(store, CreateMailbox(id="mb1", owner="sys", name="one", retention_s=60))
    store.apply([publish(n, "mb1") for n in range(1, 5)], 1_000)
    leased(store, 1_000, limit=2, lease_ms=200)
    leased(store, 1_050, limit=2, lease_ms=100)
    ids = ("1-1", "1-1", "2-2", "seven", "3-1", "4-1", "99-1", "1-")
    result = one(store, Ack(mailbox_id="mb1", delivery_ids=ids), 1_120)
    assert result == AckResult(
        count=3,
        failed=(
            ("1-1", "unknown_delivery"),  # already acked
            ("2-2", "unknown_delivery"),  # wrong attempt
            ("seven", "unknown_delivery"),
            ("99-1", "unknown_delivery"),
            ("1-", "unknown_delivery"),
        ),
    )
    stats = store.mailbox_stats("mb1")
    assert (stats.ready, stats.in_flight, stats.copy, stats.dead) == (0, 1, 3, 0)
    expired = one(store, Ack(mailbox_id="mb1", delivery_ids=("2-1",)), 1_200)
    assert expired == AckResult(count=0, failed=(("2-1", "lease_expired"),))
    assert store.mailbox_stats("mb1").in_flight == 1  # stays in flight until the sweep
    assert isinstance(one(store, Ack(mailbox_id="zz", delivery_ids=("1-1",))), NotFound)


def test_nack_requeue_keeps_position_and_attempt(store: KvStore) -> None:
    setup(store)
    store.apply([publish(n, "mb1") for n in range(1, 4)], 1_000)
    leased(store, limit=1)
    result = one(store, Nack(mailbox_id="mb1", delivery_ids=("1-1",)))
    assert result == AckResult(count=1)
    again = leased(store)
    assert [(d.seq, d.attempt) for d in again] == [(1, 2), (2, 1), (3, 1)]


def test_nack_dead_letters(store: KvStore) -> None:
    setup(store, CreateMailbox(id="mb1", owner="sys", name="one", max_deliveries=2))
    store.apply([publish(1, "mb1"), publish(2, "mb1")], 1_000)
    leased(store)
    outcome = store.apply([Nack(mailbox_id="mb1", delivery_ids=("1-1", "2-1"))], 1_000)
    assert outcome.ready == {"mb1"}
    leased(store)
    one(store, Nack(mailbox_id="mb1", delivery_ids=("1-2",)))  # attempts used up
    one(store, Nack(mailbox_id="mb1", delivery_ids=("2-2",), requeue=False))
    stats = store.mailbox_stats("mb1")
    assert (stats.ready, stats.in_flight, stats.dead) == (0, 0, 2)
    dead = store.list_dead("mb1")
    assert [(d.delivery_id, d.reason, d.body, d.leased_until_ms) for d in dead] == [
        ("1-2", "max_deliveries", b'{"n":"1"}', 0),
        ("2-2", "nacked", b'{"n":"2"}', 0),
    ]
    assert store.list_dead("mb1", limit=1) == dead[:1]
    with pytest.raises(NotFound):
        store.list_dead("zz")


def test_get_leased(store: KvStore) -> None:
    setup(store)
    one(store, publish(1, "mb1"))
    (delivery,) = leased(store, 1_000, lease_ms=100)
    assert store.get_leased("mb1", "1-1", 1_099) == delivery
    with pytest.raises(Conflict) as expired:
        store.get_leased("mb1", "1-1", 1_100)
    assert expired.value.code == "lease_expired"
    for bad in ("1-2", "2-1", "junk", ""):
        with pytest.raises(Conflict) as unknown:
            store.get_leased("mb1", bad, 1_000)
        assert unknown.value.code == "unknown_delivery"
    with pytest.raises(NotFound):
        store.get_leased("zz", "1-1", 1_000)


# ----------------------------------------------------------------------------- sweep


def test_sweep_expires_leases(store: KvStore) -> None:
    setup(
        store,
        CreateMailbox(id="mb1", owner="sys", name="one", max_deliveries=2),
        CreateMailbox(id="mb2", owner="sys", name="two"),
    )
    store.apply([publish(1, "mb1", "mb2")], 1_000)
    leased(store, 1_000, lease_ms=100)
    early = store.apply([Sweep()], 1_099)
    assert early.results == [SweepResult()]
    assert early.ready == frozenset()
    outcome = store.apply([Sweep()], 1_100)
    assert outcome.results == [SweepResult(expired_leases=1)]
    assert outcome.ready == {"mb1"}
    assert [(d.seq, d.attempt) for d in leased(store, 1_100, lease_ms=100)] == [(1, 2)]
    last = one(store, Sweep(), 1_200)
    assert last == SweepResult(expired_leases=1, dead_lettered=1)
    assert [(d.reason, d.attempt) for d in store.list_dead("mb1")] == [("max_deliveries", 2)]


def test_sweep_purges_by_retention(store: KvStore) -> None:
    setup(
        store,
        CreateMailbox(id="mb1", owner="sys", name="one", retention_s=10),
        CreateMailbox(id="mb2", owner="sys", name="two", retention_s=20),
    )
    store.apply([publish(1, "mb1", "mb2"), publish(2, "mb1")], 0)
    leased(store, 0)
    one(store, Ack(mailbox_id="mb1", delivery_ids=("1-1",)), 1_000)
    one(store, Nack(mailbox_id="mb1", delivery_ids=("2-1",), requeue=False), 2_000)
    one(store, Lease(mailbox_id="mb2", max=1, lease_ms=60_000), 0)
    one(store, Ack(mailbox_id="mb2", delivery_ids=("1-1",)), 3_000)
    assert one(store, Sweep(), 10_999) == SweepResult()
    # mb1's copy goes, message 1 still has mb2's copy
    assert one(store, Sweep(), 11_000) == SweepResult(purged_copies=1)
    assert store.statistics().messages == 2
    assert one(store, Sweep(), 12_000) == SweepResult(purged_dead=1, bodies_deleted=1)
    assert one(store, Sweep(), 23_000) == SweepResult(purged_copies=1, bodies_deleted=1)
    assert store.statistics().messages == 0
    stats = store.mailbox_stats("mb1")
    assert (stats.copy, stats.dead) == (0, 0)


def test_sweep_is_bounded(store: KvStore) -> None:
    setup(store)
    store.apply([publish(n, "mb1") for n in range(5)], 1_000)
    leased(store, 1_000, lease_ms=1)
    first = one(store, Sweep(max_items=2), 2_000)
    assert first == SweepResult(expired_leases=2, more=True)
    second = one(store, Sweep(max_items=3), 2_000)
    assert second == SweepResult(expired_leases=3, more=False)
    assert isinstance(one(store, Sweep(max_items=0)), InvalidInput)


# ----------------------------------------------------------------------------- requeue / replay


def test_requeue_dead(store: KvStore) -> None:
    setup(store)
    store.apply([publish(n, "mb1") for n in range(1, 5)], 1_000)
    ids = tuple(d.delivery_id for d in leased(store))
    one(store, Nack(mailbox_id="mb1", delivery_ids=ids, requeue=False))
    outcome = store.apply([RequeueDead(mailbox_id="mb1", delivery_ids=("2-1", "3-7", "bad"))], 1)
    assert outcome.results == [2]
    assert outcome.ready == {"mb1"}
    assert [(d.seq, d.attempt) for d in leased(store)] == [(2, 1), (3, 1)]
    assert one(store, RequeueDead(mailbox_id="mb1", limit=1)) == 1
    assert one(store, RequeueDead(mailbox_id="mb1")) == 1
    assert one(store, RequeueDead(mailbox_id="mb1")) == 0
    assert [(d.seq, d.attempt) for d in leased(store)] == [(1, 1), (4, 1)]
    assert store.mailbox_stats("mb1").dead == 0
    assert isinstance(one(store, RequeueDead(mailbox_id="zz")), NotFound)


def test_replay(store: KvStore) -> None:
    setup(store)
    store.apply([publish(n, "mb1", received_ms=n * 100) for n in range(1, 6)], 1_000)
    ids = tuple(d.delivery_id for d in leased(store))
    one(store, Ack(mailbox_id="mb1", delivery_ids=ids))
    outcome = store.apply([Replay(mailbox_id="mb1", since_ms=200, limit=2)], 1_000)
    assert outcome.results == [2]
    assert outcome.ready == {"mb1"}
    assert one(store, Replay(mailbox_id="mb1", since_ms=300)) == 2
    assert [(d.seq, d.attempt) for d in leased(store)] == [(2, 1), (3, 1), (4, 1), (5, 1)]
    stats = store.mailbox_stats("mb1")
    assert (stats.in_flight, stats.copy) == (4, 1)
    assert one(store, Replay(mailbox_id="mb1", since_ms=200)) == 0
    assert isinstance(one(store, Replay(mailbox_id="mb1", limit=0)), InvalidInput)


# ----------------------------------------------------------------------------- atomicity


def test_bad_clock_is_refused(store: KvStore) -> None:
    with pytest.raises(StoreError, match="now_ms"):
        store.apply([Sweep()], -1)
    assert store.apply([], 5).results == []


def test_refused_op_leaves_the_rest_of_the_batch(store: KvStore) -> None:
    setup(store)
    outcome = store.apply(
        [
            publish(1, "mb1"),
            CreateMailbox(id="mb9", owner="sys", name="bad", retention_s=0),
            Lease(mailbox_id="nope", max=1, lease_ms=1),
            publish(2, "mb1"),
        ],
        1_000,
    )
    kinds = [type(r).__name__ for r in outcome.results]
    assert kinds == ["PublishResult", "InvalidInput", "NotFound", "PublishResult"]
    assert store.mailbox_stats("mb1").ready == 2
    assert store.get_mailbox("mb9") is None


def test_unexpected_error_aborts_the_whole_batch(
    store: KvStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup(store)
    one(store, publish(1, "mb1"))
    before = dump(store)

    def broken(*args: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(store_deliveries, "ack", broken)
    with pytest.raises(StoreError, match="disk on fire"):
        store.apply(
            [
                publish(2, "mb1", "mb2"),
                LEASE,
                CreateMailbox(id="mb3", owner="sys", name="three"),
                Ack(mailbox_id="mb1", delivery_ids=("1-1",)),
            ],
            1_000,
        )
    assert dump(store) == before
    monkeypatch.undo()
    assert [d.seq for d in leased(store)] == [1]

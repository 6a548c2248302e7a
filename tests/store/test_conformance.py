"""The Store conformance suite: each test runs against MemoryStore and LmdbStore."""

from __future__ import annotations

import itertools

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msgspec.structs import replace
from storekit import BACKENDS, dump, make_store, one, publish, published, setup

from broker.errors import Conflict, InvalidInput, NotFound, StoreError
from store import (
    MAX_RETENTION_S,
    UNSET,
    Ack,
    AckResult,
    AppendAudit,
    CreateMailbox,
    CreateSubscription,
    CreateSystem,
    DeleteDoc,
    DeleteMailbox,
    DeleteSubscription,
    Delivery,
    Lease,
    MailboxRecord,
    Nack,
    Op,
    PublishResult,
    PutDoc,
    Replay,
    RequeueDead,
    Route,
    SetChange,
    SetChangeResult,
    SubscriptionRecord,
    Sweep,
    SweepResult,
    SystemRecord,
    UpdateSubscription,
)
from store import deliveries as store_deliveries
from store import keys as k
from store import values as v
from store.engine import KvStore
from store.keys import DEDUP_GEN_MS as GEN

LEASE = Lease(mailbox_id="mb1", max=10, lease_ms=30_000)
_COUNTER = itertools.count()


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
        if name not in ("META", "SYSTEMS", "SYSTEM_TOKENS", "DEDUP_GENS"):
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
    assert len(dump(store)["DEDUP_GENS"]) == 1  # one record per key
    # past its window a record is never a duplicate, but it is purged with its generation
    assert not published(one(store, publish(1, received_ms=71_000), 71_000)).duplicate
    assert one(store, Sweep(), 71_000) == SweepResult()
    assert one(store, Sweep(), GEN - 2) == SweepResult()
    assert one(store, Sweep(), GEN - 1) == SweepResult(purged_dedup=1)
    assert dump(store)["DEDUP_GENS"] == []


def test_dedup_across_generations(store: KvStore) -> None:
    setup(store)
    # a window that ends in the next generation: live in both
    one(store, publish(1, "mb1", received_ms=GEN - 10, window_ms=20), GEN - 10)
    assert published(one(store, publish(1, received_ms=GEN - 5), GEN - 5)).duplicate
    assert published(one(store, publish(1, received_ms=GEN + 5), GEN + 5)).duplicate
    assert not published(one(store, publish(1, received_ms=GEN + 10), GEN + 10)).duplicate
    # an expired record in a generation still probed is replaced, not left beside the new one
    one(store, publish(2, "mb1", received_ms=GEN + 10, window_ms=10), GEN + 10)
    fresh = one(store, replace(publish(2, received_ms=GEN + 30), transaction_id="t9"), GEN + 30)
    assert not published(fresh).duplicate
    assert len(dump(store)["DEDUP_GENS"]) == 2
    later = one(store, publish(2, received_ms=GEN + 31), GEN + 31)
    assert later == PublishResult(transaction_id="t9", mailboxes=0, duplicate=True)
    # a generation goes once all of its records expired (these expire in generation 1)
    one(store, publish(3, received_ms=GEN + 40, window_ms=GEN), GEN + 40)  # generation 2
    assert one(store, Sweep(), 2 * GEN - 2) == SweepResult()
    assert one(store, Sweep(max_items=1), 2 * GEN - 1) == SweepResult(purged_dedup=1, more=True)
    assert one(store, Sweep(), 2 * GEN - 1) == SweepResult(purged_dedup=1)
    assert published(one(store, publish(3), 2 * GEN + 39)).duplicate
    assert one(store, Sweep(), 3 * GEN) == SweepResult(purged_dedup=1)


def test_dedup_keys_are_compact(store: KvStore) -> None:
    setup(store)
    tid = "0f8fad5b-d9cb-469f-a165-70867728950e"
    one(store, replace(publish(1, "mb1", key=b"s\0" + b"b" * 36), transaction_id=tid))
    one(store, replace(publish(2, "mb1"), transaction_id="not-a-uuid"))
    (key, raw), (_, text) = sorted(dump(store)["DEDUP_GENS"], key=lambda item: item[1][0])
    assert len(key) == 20  # generation u32 + 16 bytes of hash
    assert len(raw) == 29  # version, expires u64, mailboxes u32, 16-byte UUID
    assert len(text) == 13 + len("not-a-uuid")
    dup = one(store, publish(1, key=b"s\0" + b"b" * 36))
    assert dup == PublishResult(transaction_id=tid, mailboxes=1, duplicate=True)
    dup = one(store, publish(2))
    assert dup == PublishResult(transaction_id="not-a-uuid", mailboxes=1, duplicate=True)


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
    store: KvStore, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend == "applier":
        pytest.skip("the fault is patched into this process; the writer process runs the same code")
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


# ----------------------------------------------------------------------------- tilladt modtager


def test_tilladt_modtager_travels_with_the_delivery(store: KvStore) -> None:
    setup(
        store,
        CreateMailbox(id="mb1", owner="sys", name="one", max_deliveries=2),
        CreateMailbox(id="mb2", owner="sys", name="two"),
    )
    tm = ("urn:oio:cvr-nr:29189846", "urn:oio:cvr-nr:11111111")
    op = replace(publish(1), routes=(Route("mb1", "sub-mb1", tm), Route("mb2", "sub-mb2")))
    assert Route("mb1", "s") == Route("mb1", "s", None)  # the third field is optional
    one(store, op)
    (first,) = leased(store)
    assert first.tilladt_modtager == tm
    assert store.get_leased("mb1", first.delivery_id, 1_000) == first
    got = one(store, Lease(mailbox_id="mb2", max=1, lease_ms=1), 1_000)
    assert isinstance(got, list)
    assert got[0].tilladt_modtager is None
    # through a nack, an expired lease, the dead letters, a requeue, an ack and a replay
    one(store, Nack(mailbox_id="mb1", delivery_ids=(first.delivery_id,)))
    (again,) = leased(store, lease_ms=10)
    assert (again.attempt, again.tilladt_modtager) == (2, tm)
    assert one(store, Sweep(), 1_010) == SweepResult(expired_leases=2, dead_lettered=1)
    (dead,) = store.list_dead("mb1")
    assert dead.tilladt_modtager == tm
    assert one(store, RequeueDead(mailbox_id="mb1")) == 1
    (requeued,) = leased(store, 1_010)
    assert requeued.tilladt_modtager == tm
    one(store, Ack(mailbox_id="mb1", delivery_ids=(requeued.delivery_id,)), 1_010)
    assert one(store, Replay(mailbox_id="mb1"), 1_010) == 1
    (replayed,) = leased(store, 1_010)
    assert (replayed.attempt, replayed.tilladt_modtager) == (1, tm)
    # an empty list is kept apart from None
    one(store, replace(publish(2), routes=(Route("mb1", "sub-mb1", ()),)))
    one(store, Ack(mailbox_id="mb1", delivery_ids=(replayed.delivery_id,)), 1_010)
    (empty,) = leased(store, 1_010)
    assert empty.tilladt_modtager == ()


def test_tilladt_modtager_none_costs_nothing(store: KvStore) -> None:
    setup(store)
    one(store, publish(1, "mb1"))
    ((_, raw),) = dump(store)["READY"]
    assert raw == b"\x01\x92\x00\xa7sub-mb1"  # version, [attempt, subscription id]


# ----------------------------------------------------------------------------- subscriptions


def test_update_subscription(store: KvStore) -> None:
    setup(store)
    created = store.get_subscription("sub-mb1")
    assert created is not None
    same = one(store, UpdateSubscription(id="sub-mb1", mailbox_id="mb1"))
    assert same == created
    off = one(store, UpdateSubscription(id="sub-mb1", mailbox_id="mb1", active=False))
    assert off == replace(created, active=False)
    expr = one(
        store,
        UpdateSubscription(
            id="sub-mb1", mailbox_id="mb1", expression="a = 'b'", message_types=("X", "y")
        ),
    )
    assert expr == replace(created, active=False, expression="a = 'b'", message_types=("x", "y"))
    assert store.get_subscription("sub-mb1") == expr
    assert store.list_subscriptions("mb1") == [expr]
    cleared = one(store, UpdateSubscription(id="sub-mb1", mailbox_id="mb1", expression=None))
    assert isinstance(cleared, SubscriptionRecord)
    assert (cleared.expression, cleared.active, cleared.message_types) == (None, False, ("x", "y"))
    assert one(store, UpdateSubscription(id="sub-mb1", mailbox_id="mb1", active=True)) == replace(
        cleared, active=True
    )
    before = dump(store)
    for bad in (
        UpdateSubscription(id="sub-mb1", mailbox_id="mb2", active=False),
        UpdateSubscription(id="nope", mailbox_id="mb1", active=False),
        UpdateSubscription(id="sub-mb1", mailbox_id="zz", active=False),
    ):
        assert isinstance(one(store, bad), NotFound)
    assert dump(store) == before


def test_update_subscription_round_trips_as_an_op() -> None:
    op = UpdateSubscription(id="s", mailbox_id="m", active=False)
    raw = msgspec.msgpack.encode(op)
    assert b"expression" not in raw  # UNSET is left out
    assert msgspec.msgpack.decode(raw, type=UpdateSubscription) == op
    assert op.expression is UNSET
    cleared = msgspec.msgpack.decode(
        msgspec.msgpack.encode(UpdateSubscription(id="s", mailbox_id="m", expression=None)),
        type=UpdateSubscription,
    )
    assert isinstance(cleared, UpdateSubscription)
    assert cleared.expression is None


# ----------------------------------------------------------------------------- documents


def test_documents(store: KvStore) -> None:
    assert one(store, PutDoc(kind="mt", id="b", value=b"two")) is None
    assert one(store, PutDoc(kind="mt", id="a", value=b"one")) is None
    assert one(store, PutDoc(kind="mtx", id="a", value=b"other kind")) is None
    assert one(store, PutDoc(kind="m", id="ta", value=b"prefix of another kind")) is None
    assert store.get_doc("mt", "a") == b"one"
    assert store.get_doc("mt", "c") is None
    assert store.list_docs("mt") == [("a", b"one"), ("b", b"two")]
    assert store.list_docs("m") == [("ta", b"prefix of another kind")]
    assert store.list_docs("none") == []
    before = dump(store)
    conflict = one(store, PutDoc(kind="mt", id="a", value=b"new", if_absent=True))
    assert isinstance(conflict, Conflict)
    assert conflict.code == "conflict"
    assert dump(store) == before
    assert one(store, PutDoc(kind="mt", id="c", value=b"", if_absent=True)) is None
    assert store.get_doc("mt", "c") == b""
    assert one(store, PutDoc(kind="mt", id="a", value=b"replaced")) is None
    assert store.get_doc("mt", "a") == b"replaced"
    assert one(store, DeleteDoc(kind="mt", id="a")) is True
    assert one(store, DeleteDoc(kind="mt", id="a")) is False
    assert one(store, DeleteDoc(kind="", id="a")) is False
    assert store.list_docs("mt") == [("b", b"two"), ("c", b"")]
    # names that cannot be stored: refused on write, absent on read
    for kind, doc_id, path in (("", "a", "$.kind"), ("k" * 51, "a", "$.kind"), ("mt", "", "$.id")):
        bad = one(store, PutDoc(kind=kind, id=doc_id, value=b"x"))
        assert isinstance(bad, InvalidInput)
        assert bad.path == path
        assert store.get_doc(kind, doc_id) is None
    assert store.list_docs("") == []


def test_documents_in_id_order(store: KvStore) -> None:
    ids = ["b", "a", "ab", "Z", "æ", "0", "a" * 255]
    store.apply([PutDoc(kind="k", id=i, value=i.encode()) for i in ids], 1)
    assert [i for i, _ in store.list_docs("k")] == sorted(ids)


# ----------------------------------------------------------------------------- sets


def test_sets(store: KvStore) -> None:
    change = SetChange(kind="vl", id="cpr", add=("0101010101", "0202020202", "0101010101"))
    assert one(store, change) == SetChangeResult(added=2, removed=0)
    assert one(store, change) == SetChangeResult(added=0, removed=0)
    assert store.set_members("vl", "cpr") == ["0101010101", "0202020202"]
    assert store.set_size("vl", "cpr") == 2
    assert store.set_contains("vl", "cpr", "0101010101")
    assert not store.set_contains("vl", "cpr", "0303030303")
    assert not store.set_contains("vl", "other", "0101010101")
    # remove before add: a member named in both ends up present
    both = SetChange(kind="vl", id="cpr", add=("x", "0202020202"), remove=("0202020202", "nope"))
    assert one(store, both) == SetChangeResult(added=2, removed=1)
    assert store.set_members("vl", "cpr") == ["0101010101", "0202020202", "x"]
    assert store.set_size("vl", "cpr") == 3
    # clear first, then remove, then add
    replaced = SetChange(kind="vl", id="cpr", add=("y", "x"), remove=("y",), clear=True)
    assert one(store, replaced) == SetChangeResult(added=2, removed=3)
    assert store.set_members("vl", "cpr") == ["x", "y"]
    # sets of another id or kind are apart, even when one name is a prefix of another
    one(store, SetChange(kind="vl", id="cp", add=("r",)))
    one(store, SetChange(kind="v", id="lcpr", add=("q",)))
    assert store.set_members("vl", "cpr") == ["x", "y"]
    assert store.set_members("vl", "cp") == ["r"]
    # an emptied set is gone
    assert one(store, SetChange(kind="vl", id="cpr", clear=True)) == SetChangeResult(0, 2)
    assert (store.set_size("vl", "cpr"), store.set_members("vl", "cpr")) == (0, [])
    assert dump(store)["SET_SIZES"] == [(k.set_prefix("v", "lcpr"), v.encode_int(1)),
                                        (k.set_prefix("vl", "cp"), v.encode_int(1))]  # fmt: skip
    assert one(store, SetChange(kind="vl", id="cpr", clear=True)) == SetChangeResult(0, 0)


def test_set_refused(store: KvStore) -> None:
    one(store, SetChange(kind="vl", id="s", add=("a",)))
    before = dump(store)
    for op, path in (
        (SetChange(kind="vl", id="s", add=("b", "")), "$.add"),
        (SetChange(kind="vl", id="s", remove=("x" * 201,), clear=True), "$.remove"),
        (SetChange(kind="", id="s", add=("b",)), "$.kind"),
        (SetChange(kind="vl", id="", add=("b",)), "$.id"),
    ):
        bad = one(store, op)
        assert isinstance(bad, InvalidInput), op
        assert bad.path == path
    assert dump(store) == before
    assert not store.set_contains("vl", "s", "")
    assert not store.set_contains("", "s", "a")
    assert store.set_members("vl", "") == []
    assert store.set_size("", "") == 0


def test_big_set_changes_incrementally(store: KvStore) -> None:
    members = [f"{n:010d}" for n in range(20_000)]
    result = one(store, SetChange(kind="vl", id="big", add=tuple(reversed(members))))
    assert result == SetChangeResult(added=20_000, removed=0)
    assert store.set_size("vl", "big") == 20_000
    assert store.set_members("vl", "big") == members
    small = SetChange(kind="vl", id="big", add=("x",), remove=(members[5], "absent"))
    assert one(store, small) == SetChangeResult(added=1, removed=1)
    assert store.set_size("vl", "big") == 20_000
    assert not store.set_contains("vl", "big", members[5])
    assert one(store, SetChange(kind="vl", id="big", clear=True)) == SetChangeResult(0, 20_000)
    assert dump(store)["SETS"] == []


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    changes=st.lists(
        st.tuples(
            st.lists(st.sampled_from("abcdef"), max_size=4),
            st.lists(st.sampled_from("abcdef"), max_size=4),
            st.booleans(),
        ),
        max_size=8,
    )
)
def test_sets_match_a_python_set(
    store: KvStore, changes: list[tuple[list[str], list[str], bool]]
) -> None:
    set_id = f"s{next(_COUNTER)}"  # the store fixture is shared by the examples
    model: set[str] = set()
    for add, remove, clear in changes:
        kept = (set() if clear else model) - set(remove)
        want = SetChangeResult(added=len(set(add) - kept), removed=len(model) - len(kept))
        model = kept | set(add)
        op = SetChange(kind="p", id=set_id, add=tuple(add), remove=tuple(remove), clear=clear)
        assert one(store, op) == want
        assert store.set_members("p", set_id) == sorted(model)
        assert store.set_size("p", set_id) == len(model)


# ----------------------------------------------------------------------------- audit


def test_audit_log(store: KvStore) -> None:
    assert one(store, AppendAudit(events=(b"a1", b"a2")), 1_000) == 2
    assert one(store, AppendAudit(events=()), 1_500) == 0
    outcome = store.apply([AppendAudit(events=(b"b1",)), AppendAudit(events=(b"b2",))], 2_000)
    assert outcome.results == [1, 1]
    one(store, AppendAudit(events=(b"c1",)), 3_000)
    everything = store.scan_audit(0, None, 100)
    assert [event for _, event in everything] == [b"a1", b"a2", b"b1", b"b2", b"c1"]
    keys = [key for key, _ in everything]
    assert keys == sorted(keys) and len(set(keys)) == 5
    assert [k.parse_audit_key(key) for key in keys] == [
        (1_000, 1), (1_000, 2), (2_000, 3), (2_000, 4), (3_000, 5)
    ]  # fmt: skip
    # a time range, paged with ``after``
    assert [e for _, e in store.scan_audit(1_001, 3_000, 100)] == [b"b1", b"b2"]
    page = store.scan_audit(0, None, 2)
    assert [e for _, e in page] == [b"a1", b"a2"]
    page = store.scan_audit(0, None, 2, after=page[-1][0])
    assert [e for _, e in page] == [b"b1", b"b2"]
    page = store.scan_audit(0, None, 2, after=page[-1][0])
    assert [e for _, e in page] == [b"c1"]
    assert store.scan_audit(0, None, 2, after=page[-1][0]) == []
    assert store.scan_audit(2_000, 2_000, 10) == []
    assert store.scan_audit(0, None, 0) == []
    assert store.scan_audit(-5, 1 << 70, 1) == everything[:1]
    # a clock that goes back still gets unique keys, in time order
    one(store, AppendAudit(events=(b"early",)), 500)
    assert store.scan_audit(0, None, 1)[0][1] == b"early"


def test_audit_retention(store: KvStore) -> None:
    day = 24 * 3600 * 1000
    one(store, AppendAudit(events=(b"old", b"old2")), 1_000)
    one(store, AppendAudit(events=(b"new",)), 2_000)
    assert Sweep().audit_retention_ms == 90 * day
    assert one(store, Sweep(), 90 * day + 1_000) == SweepResult()
    assert one(store, Sweep(max_items=1), 90 * day + 1_001) == SweepResult(
        purged_audit=1, more=True
    )
    assert one(store, Sweep(audit_retention_ms=10), 1_500) == SweepResult(purged_audit=1)
    assert [e for _, e in store.scan_audit(0, None, 10)] == [b"new"]
    bad = one(store, Sweep(audit_retention_ms=-1), 1_500)
    assert isinstance(bad, InvalidInput)
    assert bad.path == "$.audit_retention_ms"


_BATCH_OPS = st.lists(
    st.one_of(
        st.builds(
            lambda n, to: publish(n, *to),
            st.integers(0, 5),  # few keys: duplicates within and across the batch
            st.lists(st.sampled_from(["mb1", "mb2"]), max_size=2, unique=True),
        ),
        st.builds(
            lambda events: AppendAudit(events=tuple(events)),
            st.lists(st.binary(min_size=1, max_size=4), max_size=3),
        ),
        st.builds(
            lambda mb, n: Lease(mailbox_id=mb, max=n, lease_ms=5_000),
            st.sampled_from(["mb1", "mb2"]),
            st.integers(1, 3),
        ),
    ),
    max_size=12,
)


# the batch logic itself: the writer process ("applier") only carries the same batch across
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "applier"])
@settings(max_examples=40, deadline=None)
@given(ops=_BATCH_OPS)
def test_one_batch_is_the_same_as_its_ops_one_by_one(
    backend: str, ops: list[Op], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The batch's shortcuts (publish runs, audit appends written together at the end) change
    nothing: the same results, in order, and the same bytes in every database."""
    batched = make_store(backend, tmp_path_factory.mktemp("batched"))
    single = make_store(backend, tmp_path_factory.mktemp("single"))
    try:
        for s in (batched, single):
            setup(s)
        together = batched.apply(ops, 2_000).results
        apart = [single.apply([op], 2_000).results[0] for op in ops]
        assert [_comparable(r) for r in together] == [_comparable(r) for r in apart]
        assert dump(batched) == dump(single)
        assert [e for _, e in batched.scan_audit(0, None, 100)] == [
            e for op in ops if isinstance(op, AppendAudit) for e in op.events
        ]
    finally:
        batched.close()
        single.close()


def _comparable(result: object) -> object:
    if isinstance(result, Exception):
        return (type(result).__name__, str(result))
    return msgspec.to_builtins(result)

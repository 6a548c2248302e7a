"""Access decisions shared across requests (broker/decisions.py): the table starts afresh when the
registry changes, at the next agreement expiry, when the clock goes back and at its size limit;
and publishing with the shared table decides exactly as deciding each envelope afresh."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from broker import decisions
from broker.config import BrokerConfig
from broker.decisions import DecisionCache
from broker.errors import BrokerError
from broker.index import Subscription
from broker.registry import Registry
from broker.service import Broker
from catalog.agreements import Agreement, withdraw
from catalog.messagetypes import load_demo_catalog
from store import MemoryStore
from store.base import MailboxRecord, SystemRecord
from store.ops import Publish
from tests.catalog.catalogkit import (
    AARHUS,
    HORSENS,
    NOW,
    RECEIVER,
    SENDER,
    TYPE1,
    TYPE2,
    agreement,
    envelope,
)


def test_the_table_is_kept_while_nothing_changes() -> None:
    reg, cache = Registry(), DecisionCache()
    table = cache.table(reg, NOW)
    table["k"] = 1
    assert cache.table(reg, NOW + 3_600_000) is table  # no agreement expires: time alone is fine
    assert cache.table(reg, NOW + 1)["k"] == 1


def test_a_registry_change_starts_a_fresh_table() -> None:
    reg, cache = Registry(), DecisionCache()
    table = cache.table(reg, NOW)
    reg.put_agreement(agreement("send", [HORSENS], [TYPE1]))
    after_agreement = cache.table(reg, NOW)
    assert after_agreement is not table
    for mt in load_demo_catalog()[:1]:
        reg.put_message_type(mt)
    assert cache.table(reg, NOW) is not after_agreement
    reloaded = Registry()  # Broker.reload() builds a new registry object
    reloaded.generation = reg.generation
    assert cache.table(reloaded, NOW) is not cache.table(reg, NOW)


def test_the_table_starts_afresh_at_the_next_expiry_and_not_before() -> None:
    reg, cache = Registry(), DecisionCache()
    reg.put_agreement(agreement("send", [HORSENS], [TYPE1], valid_until=NOW + 10))
    reg.put_agreement(
        agreement("send", [HORSENS], [TYPE2], valid_until=NOW + 50, agreement_id="a-2")
    )
    assert reg.next_expiry_ms(NOW) == NOW + 10
    assert reg.next_expiry_ms(NOW + 10) == NOW + 50
    assert reg.next_expiry_ms(NOW + 50) is None
    table = cache.table(reg, NOW)
    assert cache.table(reg, NOW + 9) is table
    at_expiry = cache.table(reg, NOW + 10)
    assert at_expiry is not table
    assert cache.table(reg, NOW + 49) is at_expiry
    assert cache.table(reg, NOW + 50) is not at_expiry


def test_a_clock_going_back_or_a_full_table_starts_afresh() -> None:
    reg, cache = Registry(), DecisionCache()
    table = cache.table(reg, NOW)
    assert cache.table(reg, NOW - 1) is not table
    full = cache.table(reg, NOW)
    full.update((i, i) for i in range(decisions.LIMIT))
    assert cache.table(reg, NOW) is not full


# ------------------------------------------------------------------ through the publish path


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> int:
        return self.now


SYSTEM = SystemRecord(id=SENDER, name="sender", token_hash=b"", created_ms=0)


def broker_with(*agreements: Agreement) -> tuple[Broker, Clock]:
    clock = Clock()
    broker = Broker(MemoryStore(), BrokerConfig(), admin_token="x", clock=clock)
    for mt in load_demo_catalog():
        broker.registry.put_message_type(mt)
    for a in agreements:
        broker.registry.put_agreement(a)
    return broker, clock


def subscribe(broker: Broker) -> None:
    """One mailbox of the receiving system, subscribed to TYPE1 and TYPE2."""
    broker._mailboxes["mb-1"] = MailboxRecord(id="mb-1", num=1, owner=RECEIVER, name="mb")
    broker.routing.add(
        Subscription(
            id="sub-1",
            mailbox_id="mb-1",
            owner=RECEIVER,
            message_types=(TYPE1, TYPE2),
            expression=None,
            active=True,
        )
    )


def outcome(broker: Broker, owner: str = HORSENS) -> str:
    """``accepted`` or the refusal's code, for one envelope sent through the shared table."""
    (result,), _ = broker._publish_ops(SYSTEM, [envelope(owners=[owner])], None)
    return result.code if isinstance(result, BrokerError) else "accepted"


def test_a_send_is_refused_once_its_agreement_expires_though_it_was_cached() -> None:
    broker, clock = broker_with(agreement("send", [HORSENS], [TYPE1], valid_until=NOW + 10))
    assert outcome(broker) == "accepted"
    clock.now = NOW + 9
    assert outcome(broker) == "accepted"
    clock.now = NOW + 10
    assert outcome(broker) == "agreement_not_approved"


def test_a_send_is_refused_once_its_agreement_is_withdrawn_and_admitted_once_approved() -> None:
    granted = agreement("send", [HORSENS], [TYPE1])
    broker, _ = broker_with(granted)
    assert outcome(broker) == "accepted"
    broker.registry.put_agreement(withdraw(granted, NOW))
    assert outcome(broker) == "agreement_not_approved"
    assert outcome(broker, AARHUS) == "agreement_not_approved"
    broker.registry.put_agreement(agreement("send", [AARHUS], [TYPE1], agreement_id="a-2"))
    assert outcome(broker, AARHUS) == "accepted"


def test_a_route_is_dropped_once_the_receive_agreement_expires_though_it_was_cached() -> None:
    broker, clock = broker_with(
        agreement("send", [HORSENS], [TYPE1]),
        agreement(
            "receive",
            [HORSENS],
            [TYPE1],
            system_id=RECEIVER,
            agreement_id="r-1",
            valid_until=NOW + 10,
        ),
    )
    subscribe(broker)

    def routes() -> list[str]:
        (p,), _ = broker._publish_ops(SYSTEM, [envelope()], None)
        assert isinstance(p, Publish)
        return [r.mailbox_id for r in p.routes]

    assert routes() == ["mb-1"]
    clock.now = NOW + 9
    assert routes() == ["mb-1"]
    clock.now = NOW + 10
    assert routes() == []


# Agreement variants a step may file: (kind, authorities, types, id, valid_until offset or None)
_VARIANTS = [
    ("send", [HORSENS], [TYPE1], "s-1", None),
    ("send", [HORSENS, AARHUS], [TYPE1], "s-1", 40),
    ("send", [AARHUS], [TYPE1, TYPE2], "s-2", 20),
    ("receive", [HORSENS], [TYPE1], "r-1", None),
    ("receive", [HORSENS, AARHUS], [TYPE1, TYPE2], "r-1", 30),
    ("receive", [AARHUS], [TYPE2], "r-2", 10),
]

_steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("send"), st.sampled_from([HORSENS, AARHUS]), st.sampled_from([TYPE1, TYPE2])
        ),
        st.tuples(st.just("wait"), st.integers(0, 25)),
        st.tuples(st.just("file"), st.integers(0, len(_VARIANTS) - 1)),
        st.tuples(st.just("withdraw"), st.sampled_from(["s-1", "s-2", "r-1"])),
    ),
    max_size=30,
)


def _shape(item: Publish | BrokerError) -> object:
    if isinstance(item, BrokerError):
        return ("refused", item.code, item.message)
    return ("accepted", [msgspec.to_builtins(r) for r in item.routes])


@settings(max_examples=300, deadline=None)
@given(_steps)
def test_shared_decisions_equal_fresh_ones(steps: list[tuple[object, ...]]) -> None:
    """Whatever happens between sends (time passing, agreements filed, expiring or withdrawn),
    a send decided through the shared table is decided exactly as with a fresh one."""
    broker, clock = broker_with()
    subscribe(broker)  # receive decisions are made too
    for step in steps:
        if step[0] == "send":
            _, owner, mtype = step
            env = envelope(owners=[str(owner)], message_type=str(mtype))
            (shared,), _ = broker._publish_ops(SYSTEM, [env], None)
            try:
                fresh: Publish | BrokerError = broker.prepare(SYSTEM, env, clock.now, None)
            except BrokerError as err:
                fresh = err
            assert _shape(shared) == _shape(fresh)
        elif step[0] == "wait":
            clock.now += int(step[1])  # type: ignore[call-overload]
        elif step[0] == "file":
            kind, auths, types, aid, until = _VARIANTS[int(step[1])]  # type: ignore[call-overload]
            broker.registry.put_agreement(
                agreement(
                    kind,
                    auths,
                    types,
                    agreement_id=aid,
                    system_id=SENDER if kind == "send" else RECEIVER,
                    now=clock.now,
                    valid_until=None if until is None else clock.now + until,
                )
            )
        else:
            current = broker.registry.agreements.get(str(step[1]))
            if current is not None and current.withdrawn_ms is None:
                broker.registry.put_agreement(withdraw(current, clock.now))

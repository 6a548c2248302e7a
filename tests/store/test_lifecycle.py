"""Random delivery lifecycles checked step by step against a small reference model.

Publish / lease / ack / nack / sweep / requeue dead / replay / delete and recreate mailboxes
run with a controlled clock against each backend. After every step the whole store content
(every database) must equal what the model predicts, which gives the invariants: counts match
``mailbox_stats``; each published delivery is in exactly one of ready, in_flight, copy or dead
(or is purged); time indexes match their records; a body exists exactly while some delivery
record refers to it, with the right reference count. Results of every op (lease order = seq
order, ack failures, sweep counts, ApplyOutcome.ready) must equal the model's.

The model knows the storage choices that show in results and content: dedup records live in
generations of ``DEDUP_GEN_MS`` (the clock starts just before a generation boundary) and are
purged a whole generation at a time,. Deliveries carry a random TilladtModtager list (or None) through every
state.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from uuid import uuid4

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from storekit import make_store

from broker.errors import Conflict, NotFound
from store import (
    Ack,
    AckResult,
    CreateMailbox,
    CreateSystem,
    DeleteMailbox,
    Delivery,
    Lease,
    MailboxStats,
    Nack,
    Op,
    Publish,
    PublishResult,
    Replay,
    RequeueDead,
    Route,
    Sweep,
    SweepResult,
    delivery_id,
    parse_delivery_id,
)
from store import keys as k
from store import values as v
from store.keys import DEDUP_GEN_MS, Db

RETENTION_MS = 1_000
#: the clock starts here: dedup windows and sweeps cross the boundary of generations 0 and 1
START_MS = DEDUP_GEN_MS - 4_000
TM = st.sampled_from([None, None, (), ("urn:oio:cvr-nr:11111111",), ("a", "b")])
#: mailbox id -> (strict, max_deliveries)
BOXES = {"a": (False, 3), "b": (True, 2), "c": (False, 1)}
MAILBOX = st.sampled_from([*BOXES, "gone"])


@dataclass
class Rec:
    state: str  # ready | flight | copy | dead
    attempt: int
    sub: str
    tm: tuple[str, ...] | None = None
    time: int = 0  # lease deadline (flight), retention end (copy, dead)
    reason: str = ""


@dataclass
class Box:
    id: str
    num: int
    strict: bool
    max_deliveries: int
    recs: dict[int, Rec] = field(default_factory=dict)

    def seqs(self, state: str) -> list[int]:
        return sorted(seq for seq, rec in self.recs.items() if rec.state == state)


class Model:
    """What the store should hold, kept the simplest way."""

    def __init__(self) -> None:
        self.now = START_MS
        self.boxes: dict[str, Box] = {}
        self.next_num = 1
        self.next_seq = 1
        self.bodies: dict[int, tuple[int, bytes]] = {}
        #: (generation, dedup key) -> (transaction id, mailboxes, expires)
        self.dedup: dict[tuple[int, bytes], tuple[str, int, int]] = {}
        self.ready: set[str] = set()

    def create(self, mailbox_id: str) -> None:
        strict, max_deliveries = BOXES[mailbox_id]
        self.boxes[mailbox_id] = Box(mailbox_id, self.next_num, strict, max_deliveries)
        self.next_num += 1

    def release(self, seq: int) -> bool:
        if any(seq in box.recs for box in self.boxes.values()):
            return False
        del self.bodies[seq]
        return True

    def publish(self, op: Publish) -> PublishResult:
        # the record of a key in a generation at or after gen(now) (at most one): the one probed
        probed = [
            (gen, key)
            for gen, key in self.dedup
            if key == op.dedup_key and gen >= k.dedup_gen(self.now)
        ]
        assert len(probed) <= 1
        if op.dedup_key and probed:
            prior = self.dedup[probed[0]]
            if prior[2] > self.now:
                return PublishResult(transaction_id=prior[0], mailboxes=prior[1], duplicate=True)
        targets: dict[str, Route] = {}
        for route in op.routes:
            if route.mailbox_id in self.boxes:
                targets.setdefault(route.mailbox_id, route)
        if targets:
            seq = self.next_seq
            self.next_seq += 1
            self.bodies[seq] = (op.received_ms, op.body)
            for mailbox_id, route in targets.items():
                rec = Rec("ready", 0, route.subscription_id, route.tilladt_modtager)
                self.boxes[mailbox_id].recs[seq] = rec
                self.ready.add(mailbox_id)
        if op.dedup_key:
            for stale in probed:
                del self.dedup[stale]  # expired, replaced
            expires = op.received_ms + op.dedup_window_ms
            record = (op.transaction_id, len(targets), expires)
            self.dedup[k.dedup_gen(expires), op.dedup_key] = record
        return PublishResult(
            transaction_id=op.transaction_id, mailboxes=len(targets), duplicate=False
        )

    def lease(self, box: Box, limit: int, lease_ms: int) -> list[Delivery]:
        ready = box.seqs("ready")
        flight = box.seqs("flight")
        if box.strict and flight:
            ready = [seq for seq in ready if seq < flight[0]]
        out = []
        for seq in ready[:limit]:
            rec = box.recs[seq]
            rec.state, rec.attempt, rec.time = "flight", rec.attempt + 1, self.now + lease_ms
            received, body = self.bodies[seq]
            out.append(
                Delivery(
                    delivery_id=delivery_id(seq, rec.attempt),
                    seq=seq,
                    attempt=rec.attempt,
                    subscription_id=rec.sub,
                    received_ms=received,
                    body=body,
                    leased_until_ms=rec.time,
                    tilladt_modtager=rec.tm,
                )
            )
        return out

    def to_dead(self, rec: Rec, reason: str) -> None:
        rec.state, rec.time, rec.reason = "dead", self.now + RETENTION_MS, reason

    def to_ready(self, box: Box, rec: Rec, attempt: int) -> None:
        rec.state, rec.attempt = "ready", attempt
        self.ready.add(box.id)

    def settle(self, box: Box, ids: tuple[str, ...], how: str) -> AckResult:
        count = 0
        failed = []
        for text in ids:
            parsed = parse_delivery_id(text)
            rec = box.recs.get(parsed[0]) if parsed else None
            if parsed is None or rec is None or rec.state != "flight" or rec.attempt != parsed[1]:
                failed.append((text, "unknown_delivery"))
            elif rec.time <= self.now:
                failed.append((text, "lease_expired"))
            else:
                count += 1
                if how == "ack":
                    rec.state, rec.time = "copy", self.now + RETENTION_MS
                elif how == "dead":
                    self.to_dead(rec, "nacked")
                elif rec.attempt >= box.max_deliveries:
                    self.to_dead(rec, "max_deliveries")
                else:
                    self.to_ready(box, rec, rec.attempt)
        if count:
            self.head_freed(box)
        return AckResult(count=count, failed=tuple(failed))

    def head_freed(self, box: Box) -> None:
        # a strict mailbox whose in-flight head left may offer what waited behind it
        if box.strict and box.seqs("ready"):
            self.ready.add(box.id)

    def sweep(self, limit: int) -> SweepResult:
        by_num = {box.num: box for box in self.boxes.values()}
        counts = dict.fromkeys(
            ("expired_leases", "dead_lettered", "purged_copies", "purged_dead", "bodies_deleted"), 0
        )
        more = False

        def due(state: str) -> list[tuple[int, int, int]]:
            nonlocal more
            found = sorted(
                (rec.time, box.num, seq)
                for box in self.boxes.values()
                for seq, rec in box.recs.items()
                if rec.state == state and rec.time <= self.now
            )
            more = more or len(found) > limit
            return found[:limit]

        for _, num, seq in due("flight"):
            box = by_num[num]
            rec = box.recs[seq]
            counts["expired_leases"] += 1
            if rec.attempt >= box.max_deliveries:
                self.to_dead(rec, "max_deliveries")
                self.head_freed(box)
                counts["dead_lettered"] += 1
            else:
                self.to_ready(box, rec, rec.attempt)
        for state, name in (("copy", "purged_copies"), ("dead", "purged_dead")):
            for _, num, seq in due(state):
                del by_num[num].recs[seq]
                counts[name] += 1
                counts["bodies_deleted"] += self.release(seq)
        cutoff = (self.now + 1) // DEDUP_GEN_MS  # generations before it have wholly expired
        dedup = sorted(
            ((gen, k.dedup_hash(key)), (gen, key)) for gen, key in self.dedup if gen < cutoff
        )
        more = more or len(dedup) > limit
        for _, record_key in dedup[:limit]:
            del self.dedup[record_key]
        return SweepResult(**counts, purged_dedup=min(len(dedup), limit), more=more)

    def requeue_dead(self, box: Box, op: RequeueDead) -> int:
        if op.delivery_ids:
            chosen: list[int] = []
            for text in op.delivery_ids:
                parsed = parse_delivery_id(text)
                rec = box.recs.get(parsed[0]) if parsed else None
                if parsed and rec and rec.state == "dead" and parsed[0] not in chosen:
                    chosen.append(parsed[0])
        else:
            chosen = box.seqs("dead")
        for seq in chosen[: op.limit]:
            self.to_ready(box, box.recs[seq], 0)
        return len(chosen[: op.limit])

    def replay(self, box: Box, op: Replay) -> int:
        chosen = [s for s in box.seqs("copy") if self.bodies[s][0] >= op.since_ms][: op.limit]
        for seq in chosen:
            self.to_ready(box, box.recs[seq], 0)
        return len(chosen)

    def delete(self, box: Box) -> None:
        del self.boxes[box.id]
        self.ready.discard(box.id)  # nobody is left to wake
        for seq in box.recs:
            self.release(seq)

    def expect(self, op: Op) -> object:
        """The result the store must give for op (a BrokerError class when refused)."""
        match op:
            case Publish():
                return self.publish(op)
            case Sweep():
                return self.sweep(op.max_items)
            case CreateMailbox():
                if op.id in self.boxes:
                    return Conflict
                self.create(op.id)
                return self.boxes[op.id].num
        box = self.boxes.get(getattr(op, "mailbox_id", getattr(op, "id", "")))
        if box is None:
            return NotFound
        match op:
            case Lease():
                return self.lease(box, op.max, op.lease_ms)
            case Ack():
                return self.settle(box, op.delivery_ids, "ack")
            case Nack():
                return self.settle(box, op.delivery_ids, "requeue" if op.requeue else "dead")
            case RequeueDead():
                return self.requeue_dead(box, op)
            case Replay():
                return self.replay(box, op)
            case DeleteMailbox():
                self.delete(box)
                return None
        raise AssertionError(op)


class Lifecycle(RuleBasedStateMachine):
    """Each step applies a random batch of 1..4 ops in one apply call (as the writer does)."""

    backend = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="dueslag-lifecycle-")
        self.store = make_store(self.backend, Path(self.dir) / "env")
        self.model = Model()
        self.tx = 0
        self.last_ready: frozenset[str] = frozenset()
        creates: list[Op] = [CreateSystem(id="sys", name="System", token_hash=b"t")]
        creates += [self.create_op(mailbox_id) for mailbox_id in BOXES]
        self.store.apply(creates, START_MS)
        for mailbox_id in BOXES:
            self.model.create(mailbox_id)

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @staticmethod
    def create_op(mailbox_id: str) -> CreateMailbox:
        strict, max_deliveries = BOXES[mailbox_id]
        return CreateMailbox(
            id=mailbox_id,
            owner="sys",
            name=mailbox_id,
            strict=strict,
            retention_s=RETENTION_MS // 1000,
            max_deliveries=max_deliveries,
        )

    def ids(self, data: st.DataObject, mailbox_id: str, most: int) -> tuple[str, ...]:
        """Delivery ids to name: current and stale ones of the mailbox, and some junk."""
        box = self.model.boxes.get(mailbox_id)
        pool = ["junk", "0-0", "1-", "99999999999999999999999-1"]
        for seq, rec in box.recs.items() if box else ():
            pool += [delivery_id(seq, rec.attempt)] * 3 + [delivery_id(seq, rec.attempt + 1)]
        return tuple(data.draw(st.lists(st.sampled_from(pool), max_size=most)))

    def draw_op(self, data: st.DataObject) -> Op:
        kind = data.draw(st.sampled_from(_KINDS))
        mailbox_id = data.draw(MAILBOX)
        now = self.model.now
        match kind:
            case "publish":
                self.tx += 1
                to = data.draw(st.lists(MAILBOX, max_size=4))
                return Publish(
                    sender="sys",
                    dedup_key=data.draw(st.sampled_from([b"", b"k1", b"k2", b"k3"])),
                    transaction_id=data.draw(st.sampled_from([f"t{self.tx}", str(uuid4())])),
                    body=b'{"n":%d}' % self.tx,
                    routes=tuple(Route(m, f"sub-{m}-{self.tx}", data.draw(TM)) for m in to),
                    received_ms=now,
                    dedup_window_ms=data.draw(st.sampled_from([0, 500, 5_000])),
                )
            case "lease":
                limit = data.draw(st.integers(1, 4))
                return Lease(
                    mailbox_id=mailbox_id, max=limit, lease_ms=data.draw(st.integers(1, 600))
                )
            case "ack":
                return Ack(mailbox_id=mailbox_id, delivery_ids=self.ids(data, mailbox_id, 5))
            case "nack":
                ids = self.ids(data, mailbox_id, 5)
                return Nack(
                    mailbox_id=mailbox_id, delivery_ids=ids, requeue=data.draw(st.booleans())
                )
            case "sweep":
                return Sweep(max_items=data.draw(st.sampled_from([1, 2, 1_000])))
            case "requeue_dead":
                ids = self.ids(data, mailbox_id, 3) if data.draw(st.booleans()) else ()
                limit = data.draw(st.sampled_from([1, 2, 100]))
                return RequeueDead(mailbox_id=mailbox_id, delivery_ids=ids, limit=limit)
            case "replay":
                since = max(now - data.draw(st.sampled_from([0, 300, 10_000])), 0)
                limit = data.draw(st.integers(1, 3))
                return Replay(mailbox_id=mailbox_id, since_ms=since, limit=limit)
            case "delete":
                return DeleteMailbox(id=mailbox_id)
            case _:
                return self.create_op(data.draw(st.sampled_from(list(BOXES))))

    @rule(ms=st.integers(0, 700))
    def tick(self, ms: int) -> None:
        self.model.now += ms

    @rule(data=st.data())
    def apply_batch(self, data: st.DataObject) -> None:
        ops = [self.draw_op(data) for _ in range(data.draw(st.integers(1, 4)))]
        self.model.ready = set()
        outcome = self.store.apply(ops, self.model.now)
        self.last_ready = outcome.ready
        for op, result in zip(ops, outcome.results, strict=True):
            want = self.model.expect(op)
            if isinstance(want, type):
                assert isinstance(result, want), (op, result)
            elif isinstance(op, CreateMailbox):
                assert getattr(result, "num", None) == want
            else:
                assert result == want, op

    @invariant()
    def ready_outcome_matches_model(self) -> None:
        assert self.last_ready == self.model.ready

    @invariant()
    def store_matches_model(self) -> None:
        model = self.model
        with self.store._kv.read() as txn:
            got = {db: txn.scan(db, b"\x00") for db in Db}
        have = _deliveries(got)
        want: dict[Db, dict[tuple[int, int], tuple[object, ...]]] = {db: {} for db in have}
        for box in model.boxes.values():
            for seq, rec in box.recs.items():
                db = _STATE_DB[rec.state]
                want[db][box.num, seq] = (rec.attempt, rec.sub, rec.tm, rec.time, rec.reason)
        want[Db.READY] = {key: v[:3] for key, v in want[Db.READY].items()}
        want[Db.IN_FLIGHT] = {key: v[:4] for key, v in want[Db.IN_FLIGHT].items()}
        want[Db.COPY] = {key: v[:4] for key, v in want[Db.COPY].items()}
        assert have == want
        # each delivery is in exactly one state
        keys = [key for records in have.values() for key in records]
        assert len(keys) == len(set(keys))
        # the time indexes match their records
        index = {db: {k.parse_time_key(key) for key, _ in got[db]} for db in _INDEX_OF}
        for db, records in _INDEX_OF.items():
            assert index[db] == {(v[3], *key) for key, v in have[records].items()}
        # a body exists exactly while referenced, with the right reference count
        refs: dict[int, int] = {}
        for key in keys:
            refs[key[1]] = refs.get(key[1], 0) + 1
        bodies = {int.from_bytes(key, "big"): v.decode_body(raw) for key, raw in got[Db.BODIES]}
        assert bodies == model.bodies
        assert set(bodies) == set(refs)
        assert {int.from_bytes(key, "big"): v.decode_ref(raw) for key, raw in got[Db.REFS]} == refs
        # dedup records, by generation and hash
        dedup = {key: v.decode_dedup(raw) for key, raw in got[Db.DEDUP_GENS]}
        assert {key: (v.transaction_id, v.mailboxes, v.expires_ms) for key, v in dedup.items()} == {
            k.dedup_key_of(gen, k.dedup_hash(key)): record
            for (gen, key), record in model.dedup.items()
        }
        assert got[Db.DEDUP] == got[Db.DEDUP_EXPIRY] == []
        # counters: exactly one per existing mailbox, equal to mailbox_stats and the model
        assert {int.from_bytes(key, "big") for key, _ in got[Db.COUNTERS]} == {
            box.num for box in model.boxes.values()
        }
        for box in model.boxes.values():
            first_ready = box.seqs("ready")[:1]
            assert self.store.mailbox_stats(box.id) == MailboxStats(
                ready=len(box.seqs("ready")),
                in_flight=len(box.seqs("flight")),
                copy=len(box.seqs("copy")),
                dead=len(box.seqs("dead")),
                oldest_ready_ms=model.bodies[first_ready[0]][0] if first_ready else None,
            )
        stats = self.store.statistics()
        assert (stats.messages, stats.next_seq, stats.mailboxes) == (
            len(model.bodies),
            model.next_seq,
            len(model.boxes),
        )


_STATE_DB = {"ready": Db.READY, "flight": Db.IN_FLIGHT, "copy": Db.COPY, "dead": Db.DEAD}
_INDEX_OF = {Db.LEASE_EXPIRY: Db.IN_FLIGHT, Db.COPY_EXPIRY: Db.COPY, Db.DEAD_EXPIRY: Db.DEAD}


def _deliveries(
    got: dict[Db, list[tuple[bytes, bytes]]],
) -> dict[Db, dict[tuple[int, int], tuple[object, ...]]]:
    """The delivery records of a dump as {(num, seq): (attempt, sub, tm[, time[, reason]])}."""
    out: dict[Db, dict[tuple[int, int], tuple[object, ...]]] = {db: {} for db in _STATE_DB.values()}
    for key, raw in got[Db.READY]:
        ready = v.decode_value(raw, v.ReadyValue)
        out[Db.READY][k.parse_delivery_key(key)] = (ready.attempt, ready.subscription_id, ready.tm)
    for key, raw in got[Db.IN_FLIGHT]:
        flight = v.decode_value(raw, v.FlightValue)
        value = (flight.attempt, flight.subscription_id, flight.tm, flight.deadline_ms)
        out[Db.IN_FLIGHT][k.parse_delivery_key(key)] = value
    for key, raw in got[Db.COPY]:
        copy = v.decode_value(raw, v.CopyValue)
        assert copy.acked_ms + RETENTION_MS == copy.expires_ms
        out[Db.COPY][k.parse_delivery_key(key)] = (
            copy.attempt,
            copy.subscription_id,
            copy.tm,
            copy.expires_ms,
        )
    for key, raw in got[Db.DEAD]:
        dead = v.decode_value(raw, v.DeadValue)
        assert dead.dead_ms + RETENTION_MS == dead.expires_ms
        value5 = (dead.attempt, dead.subscription_id, dead.tm, dead.expires_ms, dead.reason)
        out[Db.DEAD][k.parse_delivery_key(key)] = value5
    # a None TilladtModtager costs nothing: the value simply has one element fewer
    for db in _STATE_DB.values():
        for _, raw in got[db]:
            assert (raw[1] & 0x0F) == len(_FIELDS[db]) - (1 if _tm_is_none(db, raw) else 0)
    return out


_TYPES: dict[Db, type[v.ReadyValue | v.FlightValue | v.CopyValue | v.DeadValue]] = {
    Db.READY: v.ReadyValue,
    Db.IN_FLIGHT: v.FlightValue,
    Db.COPY: v.CopyValue,
    Db.DEAD: v.DeadValue,
}
_FIELDS = {db: kind.__struct_fields__ for db, kind in _TYPES.items()}


def _tm_is_none(db: Db, raw: bytes) -> bool:
    value: v.ReadyValue | v.FlightValue | v.CopyValue | v.DeadValue = v.decode_value(
        raw, _TYPES[db]
    )
    return value.tm is None


_KINDS = (
    ["publish"] * 4
    + ["lease"] * 3
    + ["ack"] * 2
    + ["nack", "sweep", "sweep", "requeue_dead", "replay", "delete", "create"]
)


class MemoryLifecycle(Lifecycle):
    backend = "memory"


class LmdbLifecycle(Lifecycle):
    backend = "lmdb"


_SETTINGS = settings(
    max_examples=50,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestMemoryLifecycle = MemoryLifecycle.TestCase
TestMemoryLifecycle.settings = _SETTINGS
TestLmdbLifecycle = LmdbLifecycle.TestCase
TestLmdbLifecycle.settings = settings(_SETTINGS, max_examples=25)

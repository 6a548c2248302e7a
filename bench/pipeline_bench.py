"""Per-stage CPU cost of the broker's envelope path, in process, without HTTP.

Usage (from the repository root)::

    python3 bench/pipeline_bench.py [--batches 200] [--batch 100] [--profile STAGE] [--records]
                                    [--floor]

It opens a real broker on a fresh LMDB environment in a temp dir (sync on, access control on,
audit on, the ``--demo`` set-up: one system with approved send and receive agreements and a
mailbox subscribed to KOMBIT's test types) and pushes 1 KiB envelopes through each stage the HTTP
handlers run, timing each stage separately (CPU time of this thread, so a busy neighbour on a
shared machine inflates it less than wall time):

* ``decode``: ``split_batch`` + ``decode_envelope`` of a 100-envelope JSON array;
* ``prepare``: authorize, enrich, route and build the store ops (``Broker._publish_ops``);
* ``commit``: ``store.apply`` of those ops (one LMDB write txn with fsync; CPU only);
* ``lease``: one poll's ``store.apply([Lease])`` of up to ``--batch`` deliveries;
* ``render``: the poll response's encode (``deliveries_out``);
* ``ack``: ``store.apply([Ack])`` of the leased deliveries.

It prints µs per envelope for each stage. The HTTP framework's own cost per request is not here
(see ``dueslag bench --scenario single`` and docs/performance.md): this is the part dueslag
controls. ``--profile STAGE`` runs that stage under cProfile and prints the top functions.

``--records`` also counts, per stage and per envelope, the LMDB records the store read, wrote and
deleted. py-lmdb gives up the GIL for every one of them (a read twice: the lookup, then the
page preload). In the server each is a moment where a busy event loop takes the GIL, and the
commit waits until the loop lets go: most of a commit's wall time (docs/performance.md, "Ninth
session"). The counting itself costs time: take the µs from a run without it.

``--floor`` also runs every batch through each stage's *floor* (``bench/stack_floor.py``: the
least work the stage needs from msgspec and py-lmdb, none of the broker's logic, on its own
LMDB environment) and prints each stage beside its floor, with how many times the floor it
costs: where the broker's own logic spends its time, measured in the same run.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import sys
import tempfile
import time
import uuid
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stack_floor import StackFloor

from broker.codec import JSON, decode_envelope, split_batch
from broker.config import GC_THRESHOLDS, BrokerConfig
from broker.delivery import deliveries_out
from broker.demo import DEMO_MESSAGE_TYPES
from broker.server import _prepare, _seed
from broker.service import Broker
from store import kv
from store.base import Ack, Lease

STAGES = ("decode", "prepare", "commit", "lease", "render", "ack")
AUTHORITIES = ("55133018", "29189889")


def envelope(n: int) -> bytes:
    """A ~1 KiB envelope of a demo type, owned by a demo authority, about one CPR."""
    body = {
        "BeskedId": {"UUIDIdentifikator": str(uuid.uuid4())},
        "BeskedVersion": "1.0",
        "Beskedkuvert": {
            "Filtreringsdata": {
                "Beskedtype": {"UUIDIdentifikator": DEMO_MESSAGE_TYPES[n % 3]},
                "TilladtModtager": [{"URNIdentifikator": "*"}],
                "ObjektRegistrering": [
                    {
                        "ObjektAnsvarligMyndighed": {
                            "URNIdentifikator": f"urn:oio:cvr-nr:{AUTHORITIES[n % 2]}"
                        },
                        "ObjektId": {"URNIdentifikator": f"urn:oio:cpr:{n % 10**10:010d}"},
                        "OpgaveEmne": {"URNIdentifikator": "urn:oio:kle:27.24.00"},
                    }
                ],
            },
            "Leveranceinformation": {
                "Dannelsestidspunkt": {"TidsstempelDatoTid": "2026-11-27T04:00:00Z"}
            },
        },
        "Beskeddata": [{"json": {"n": n, "fyld": "x" * 560}}],
    }
    return msgspec.json.encode(body)


class Timer:
    def __init__(self, profile: str | None, records: RecordCounter | None = None) -> None:
        self.records = records
        self.spent = dict.fromkeys(STAGES, 0.0)
        self.wall = dict.fromkeys(STAGES, 0.0)
        self.profile = profile
        # CPU time, as the stages are measured: wall time would charge fsync waits to commit()
        self.profiler = cProfile.Profile(time.thread_time)

    def run(self, stage: str, fn, *args):  # type: ignore[no-untyped-def]
        if self.records is not None:
            self.records.stage = stage
        if stage == self.profile:
            self.profiler.enable()
        t, w = time.thread_time(), time.perf_counter()
        out = fn(*args)
        self.spent[stage] += time.thread_time() - t
        self.wall[stage] += time.perf_counter() - w
        if stage == self.profile:
            self.profiler.disable()
        return out

    def per_envelope(self, stage: str, envelopes: int) -> tuple[float, float]:
        """The stage's CPU and wall µs per envelope."""
        return self.spent[stage] / envelopes * 1e6, self.wall[stage] / envelopes * 1e6

    def total(self, envelopes: int) -> float:
        """CPU µs per envelope over every stage."""
        return sum(self.spent.values()) / envelopes * 1e6


class RecordCounter:
    """Counts the records each stage reads, writes and deletes through the LMDB transaction.

    It wraps the methods of ``store.kv._LmdbTxn``, the one class every store op goes through,
    for the length of the run (``restore`` puts them back)."""

    KINDS = ("read", "written", "deleted")

    def __init__(self) -> None:
        self.stage = "set-up"
        self.counts: dict[tuple[str, str], int] = {}
        self._saved: dict[str, object] = {}
        # method -> (kind, how many records one call touched, from its args and its result)
        how = {
            "get": ("read", lambda a, out: 1),
            "first": ("read", lambda a, out: 1),
            "scan": ("read", lambda a, out: len(out)),
            "get_many": ("read", lambda a, out: len(a[1])),
            "get_found": ("read", lambda a, out: len(a[1])),
            "put": ("written", lambda a, out: 1),
            "put_many": ("written", lambda a, out: len(a[1])),
            "add_many": ("written", lambda a, out: len(a[1])),
            "delete": ("deleted", lambda a, out: 1),
            "delete_many": ("deleted", lambda a, out: out),
            "take": ("read+deleted", lambda a, out: len(out)),
        }
        for name, (kind, count) in how.items():
            self._saved[name] = original = getattr(kv._LmdbTxn, name)
            setattr(kv._LmdbTxn, name, self._counted(original, kind, count))

    def _counted(self, original, kind, count):  # type: ignore[no-untyped-def]
        def counted(txn, *args, **kwargs):  # type: ignore[no-untyped-def]
            out = original(txn, *args, **kwargs)
            n = count(args, out)  # args: (db, key or keys or items, ...)
            for one in kind.split("+"):
                key = (self.stage, one)
                self.counts[key] = self.counts.get(key, 0) + n
            return out

        return counted

    def restore(self) -> None:
        for name, original in self._saved.items():
            setattr(kv._LmdbTxn, name, original)

    def per_envelope(self, stage: str, envelopes: int) -> tuple[float, ...]:
        return tuple(self.counts.get((stage, kind), 0) / envelopes for kind in self.KINDS)


def run_floor(floor: StackFloor, timer: Timer, data: bytes, most: int) -> int:
    """One batch through every stage's floor; how many deliveries it settled."""
    items = timer.run("decode", floor.decode, data)
    prepared = timer.run("prepare", floor.prepare, items)
    timer.run("commit", floor.commit, prepared)
    leased = timer.run("lease", floor.lease, most, int(time.time() * 1000) + 30_000)
    timer.run("render", floor.render, leased)
    settled: int = timer.run("ack", floor.ack, [key for key, _ in leased])
    return settled


def print_stages(timer: Timer, sent: int) -> None:
    for stage in STAGES:
        cpu, wall = timer.per_envelope(stage, sent)
        print(f"  {stage:8} {cpu:7.1f} ({wall:.1f})")
    total = timer.total(sent)
    print(f"  {'total':8} {total:7.1f}  (= {1e6 / total:,.0f} envelopes/s of one core)")


def print_against_floor(timer: Timer, floor: Timer, sent: int) -> None:
    """Each stage's CPU µs per envelope beside its floor's, and how many times the floor."""
    print(f"  {'stage':8} {'broker':>14} {'floor':>14} {'× floor':>8}")
    for stage in STAGES:
        ours, our_wall = timer.per_envelope(stage, sent)
        least, least_wall = floor.per_envelope(stage, sent)
        walls = f"({our_wall:.1f})", f"({least_wall:.1f})"
        print(
            f"  {stage:8} {ours:6.1f} {walls[0]:>7} {least:6.1f} {walls[1]:>7} {ours / least:8.1f}"
        )
    ours, least = timer.total(sent), floor.total(sent)
    print(f"  {'total':8} {ours:6.1f} {'':7} {least:6.1f} {'':7} {ours / least:8.1f}")
    print(f"  (= {1e6 / ours:,.0f} and {1e6 / least:,.0f} envelopes/s of one core)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--profile", choices=STAGES)
    ap.add_argument("--records", action="store_true", help="count the LMDB records of each stage")
    ap.add_argument(
        "--floor", action="store_true", help="time each stage's floor too (bench/stack_floor.py)"
    )
    args = ap.parse_args()
    # (put_sorted is not wrapped: it writes through put_many, which counts; its one look at the
    # database's last key is not counted)
    records = RecordCounter() if args.records else None
    gc.set_threshold(*GC_THRESHOLDS)  # as `dueslag serve` runs
    with tempfile.TemporaryDirectory(prefix="dueslag-pipeline-") as tmp:
        config = BrokerConfig(data_dir=tmp, bind="127.0.0.1:0", admin_token="x" * 32, demo=True)
        token, _, instance_id, store = _prepare(config)
        floor = StackFloor(Path(tmp) / "floor", DEMO_MESSAGE_TYPES) if args.floor else None
        floor_timer = Timer(None)
        floored = 0
        try:
            broker = Broker(store, config, admin_token=token, instance_id=instance_id)
            _seed(broker, config)
            (system,) = store.list_systems()
            (mailbox,) = store.list_mailboxes(system.id)
            timer = Timer(args.profile, records)
            sent = delivered = 0
            for b in range(args.batches):
                data = (
                    b"[" + b",".join(envelope(b * args.batch + i) for i in range(args.batch)) + b"]"
                )

                def decode(data: bytes = data) -> list:  # type: ignore[type-arg]
                    raws = split_batch(data, JSON)
                    return [decode_envelope(r, JSON, prefix=f"$[{i}]") for i, r in enumerate(raws)]

                items = timer.run("decode", decode)
                prepared, ops = timer.run(
                    "prepare", broker._publish_ops, system, items, "127.0.0.1"
                )
                timer.run("commit", store.apply, ops, broker.clock())
                sent += sum(1 for p in prepared if not isinstance(p, Exception))
                now = broker.clock()
                (got,) = timer.run(
                    "lease", store.apply, [Lease(mailbox.id, args.batch, 30_000)], now
                ).results
                delivered += len(got)
                timer.run(
                    "render",
                    lambda got=got, now=now: msgspec.json.encode(
                        deliveries_out(got, instance_id=broker.instance_id, now_ms=now)
                    ),
                )
                ids = tuple(d.delivery_id for d in got)
                timer.run("ack", store.apply, [Ack(mailbox.id, ids)], broker.clock())
                if floor is not None:
                    floored += run_floor(floor, floor_timer, data, args.batch)
        finally:
            store.close()
            if floor is not None:
                floor.close()
            if records is not None:
                records.restore()
    if sent != args.batches * args.batch or delivered != sent:
        print(f"refused or lost: sent {sent}, delivered {delivered}", file=sys.stderr)
        return 1
    if args.floor and floored != sent:
        print(f"the floor settled {floored} of {sent} deliveries", file=sys.stderr)
        return 1
    print(f"{sent} envelopes, {args.batch} per request; µs per envelope: CPU (wall)")
    if args.floor:
        print_against_floor(timer, floor_timer, sent)
    else:
        print_stages(timer, sent)
    if records is not None:
        print("LMDB records per envelope: read / written / deleted (each gives up the GIL)")
        all_records = 0.0
        for stage in STAGES:
            counts = records.per_envelope(stage, sent)
            all_records += sum(counts)
            print(f"  {stage:8} " + " / ".join(f"{c:5.2f}" for c in counts))
        print(f"  {'records':8} {all_records:5.2f} per envelope")
    if args.profile:
        pstats.Stats(timer.profiler).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

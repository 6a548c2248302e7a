"""Routing benchmark: SubscriptionIndex.match with 10 versus 100,000 selective subscriptions.

Usage (from the repository root)::

    python3 bench/routing_bench.py [--subscriptions 100000] [--runs 21] [--seconds 0.25]
                                   [--shapes eq list] [--check]

Every subscription is selective: it wants the envelopes about one CPR number, the way a case
system subscribes to its own citizens. Two shapes:

* ``eq``:   ``get(Beskedkuvert.Filtreringsdata.ObjektRegistrering, 0).ObjektId = 'urn:oio:cpr:N'``
* ``list``: ``…ObjektRegistrering.ObjektId in valueliste('borgere-N')``, each subscription with
  its own one-value list (owners spread over 100 systems), an :class:`InMemoryValueLists`
  watched by the index.

The envelopes (ORG_Bruger-like, one ObjektRegistrering; 1,000 distinct ones, CPRs spread over
the whole subscribed range) each name a CPR that exactly one subscription wants, in the small
and in the large set alike, so both route the same number of deliveries. Two modes:

* ``ingest``: decode the envelope's JSON, then match: routing throughput as the broker routes
  (an envelope is routed from its bytes). **The target applies to this line.**
* ``match``: ``index.match(envelope)`` on 1,000 already-decoded envelopes, round and round: the
  index probe alone, reported for what it shows (see below), not judged.

Each run routes for ``--seconds`` of CPU time; the small and the large set run back to back as a
pair (order alternating), and the ratio large/small is taken per pair, so both sides of a ratio
see the same state of a shared machine. Reported: median env/s per set, and the median, p10 and
p90 of the pair ratios. The target is the large set's routing throughput within 20 % of the
small set's (``ingest`` ratio ≥ 0.80); ``--check`` exits 1 if an ``ingest`` median misses it.

A third line routes envelopes about only 10 CPRs through the large index: it runs as fast as the
small index, so the index does no more *work* with 100,000 subscriptions. What remains of the
difference is memory: a hit reads four objects that belong to its key (dict slot and entry, the
key text, the route), and with 100,000 keys those are cold in the caches and TLB. That is the
floor for a dict from values to route objects, and a fixed cost per envelope: so the ``match``
ratio also falls when the rest of the per-envelope work gets cheaper, and it moves with the
machine's other load (a neighbour's memory traffic makes cold reads dearer, not the small set's
cached ones). ``ingest`` is nearer the broker: it decodes each envelope as it routes it, so no
1,000 decoded envelopes sit in the caches competing with the index.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from broker.envelope import Haendelsesbesked, expand_shorthands
from broker.filters import compile_expression
from broker.index import InMemoryValueLists, Subscription, SubscriptionIndex

ORG_BRUGER = "94ef3c82-10e9-4d12-a9d9-7a7242d5ba83"
BRUGER_AENDRET = "862f6d4e-f70a-4e27-9383-24bb32919cf0"
ENVELOPES = 1000
DECODER = msgspec.json.Decoder(Haendelsesbesked)


def cpr(n: int) -> str:
    return f"urn:oio:cpr:{n:010d}"


def envelope_json(n: int) -> bytes:
    doc: dict[str, Any] = {
        "BeskedId": f"00000000-0000-4000-8000-{n:012d}",
        "BeskedVersion": "1.0",
        "Beskedkuvert": {
            "Filtreringsdata": {
                "Beskedtype": ORG_BRUGER,
                "BeskedAnsvarligAktoer": "795ac65f-b480-4a01-98af-441980b192c3",
                "TilladtModtager": ["urn:oio:cvr-nr:29189889"],
                "ObjektRegistrering": [
                    {
                        "ObjektId": cpr(n),
                        "ObjektType": "ce7fcf97-a8a2-447a-8690-d38aa0f6e23c",
                        "ObjektHandling": BRUGER_AENDRET,
                        "ObjektAnsvarligMyndighed": "urn:oio:cvr-nr:29189889",
                        "OpgaveEmne": "urn:oio:kle:32.01.01",
                    }
                ],
            },
            "Leveranceinformation": {
                "Dannelsestidspunkt": "2026-11-27T08:00:00Z",
                "Sikkerhedsklassificering": "292e85a9-8ad4-46df-9e50-f97d6837ad74",
            },
        },
    }
    expand_shorthands(doc)
    return msgspec.json.encode(doc)


def build(shape: str, count: int) -> tuple[SubscriptionIndex, float]:
    """``count`` subscriptions on CPRs 0..count-1; returns the index and its build seconds."""
    lists = InMemoryValueLists()
    start = time.perf_counter()
    subs = []
    for n in range(count):
        owner = f"system-{n % 100:03d}"
        if shape == "eq":
            text = f"get(Beskedkuvert.Filtreringsdata.ObjektRegistrering, 0).ObjektId = '{cpr(n)}'"
        else:
            name = f"borgere-{n}"
            lists.create(owner, name, [cpr(n)])
            text = (
                f"Beskedkuvert.Filtreringsdata.ObjektRegistrering.ObjektId in valueliste('{name}')"
            )
        subs.append(
            Subscription(
                id=f"{n:08d}-0000-4000-8000-000000000000",
                mailbox_id=f"mailbox-{n}",
                owner=owner,
                message_types=(ORG_BRUGER,),
                expression=compile_expression(text),
            )
        )
    index = SubscriptionIndex(subs, lists=lists)
    return index, time.perf_counter() - start


def timed(step: Callable[[Any], int], items: list[Any], seconds: float) -> float:
    """Run ``step`` over ``items`` round and round for ``seconds`` of CPU; returns items/s."""
    done = deliveries = 0
    gc.disable()
    try:
        start = time.process_time()
        deadline = start + seconds
        while True:
            for item in items:
                deliveries += step(item)
            done += len(items)
            now = time.process_time()
            if now >= deadline:
                break
    finally:
        gc.enable()
    assert deliveries == done, "every envelope should have exactly one match"
    return done / (now - start)


def measure(
    mode: str, small: SubscriptionIndex, large: SubscriptionIndex, args: argparse.Namespace
) -> tuple[dict[str, float], list[float]]:
    raw_small = [envelope_json(i % args.small) for i in range(ENVELOPES)]
    raw_large = [envelope_json((i * 7919) % args.subscriptions) for i in range(ENVELOPES)]
    items: dict[str, list[Any]]
    if mode == "match":
        items = {"small": [DECODER.decode(r) for r in raw_small]}
        items["large"] = [DECODER.decode(r) for r in raw_large]

        def steps(index: SubscriptionIndex) -> Callable[[Any], int]:
            match = index.match
            return lambda b: len(match(b))

    else:
        items = {"small": raw_small, "large": raw_large}

        def steps(index: SubscriptionIndex) -> Callable[[Any], int]:
            match, decode = index.match, DECODER.decode
            return lambda raw: len(match(decode(raw)))

    runs = {"small": (steps(small), items["small"]), "large": (steps(large), items["large"])}
    rates: dict[str, list[float]] = {"small": [], "large": [], "hot": []}
    ratios = []
    for i in range(args.runs):
        order = ("small", "large") if i % 2 else ("large", "small")
        for name in order:
            rates[name].append(timed(*runs[name], args.seconds))
        ratios.append(rates["large"][-1] / rates["small"][-1])
        # the large index, envelopes about the small set's 10 CPRs only (its keys stay cached)
        rates["hot"].append(timed(steps(large), items["small"], args.seconds / 2))
    return {k: statistics.median(v) for k, v in rates.items()}, ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscriptions", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=0.25)
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--shapes", nargs="+", default=["eq", "list"], choices=["eq", "list"])
    parser.add_argument(
        "--modes", nargs="+", default=["match", "ingest"], choices=["match", "ingest"]
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if an ingest ratio is below 0.80"
    )
    args = parser.parse_args(argv)

    print(
        f"python {sys.version.split()[0]}, msgspec {msgspec.__version__}; per mode {args.runs}"
        f" pairs of {args.seconds:.2f} s CPU runs; median env/s"
    )
    ok = True
    for shape in args.shapes:
        small, _ = build(shape, args.small)
        large, build_s = build(shape, args.subscriptions)
        print(f"[{shape}] {large!r}, built in {build_s:.1f} s")
        for mode in args.modes:
            median, ratios = measure(mode, small, large, args)
            ratio = statistics.median(ratios)
            deciles = statistics.quantiles(ratios, n=10)
            judged = mode == "ingest"
            ok = ok and (ratio >= 0.8 or not judged)
            tag = f"[{shape} {mode}]"
            print(f"{tag} {args.small:>7,} subscriptions: {median['small']:>9,.0f} env/s")
            print(f"{tag} {args.subscriptions:>7,} subscriptions: {median['large']:>9,.0f} env/s")
            print(
                f"{tag} {args.subscriptions:>7,} subscriptions, envelopes on {args.small} CPRs:"
                f" {median['hot']:>9,.0f} env/s"
            )
            verdict = (
                f"target >= 0.80: {'ok' if ratio >= 0.8 else 'MISSED'}"
                if judged
                else "(index probe alone: memory-bound, not judged; see the docstring)"
            )
            print(
                f"{tag} ratio large/small {ratio:.2f} (pairs: p10 {deciles[0]:.2f},"
                f" p90 {deciles[-1]:.2f}) {verdict}"
            )
        small.close()
        large.close()
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())

"""Who subscribes to what: the routing a scenario expects, planned before anything is created.

Pure: :func:`plan_topology` takes the public catalog (as ``GET /v1/catalog/message-types``
answers it) and a :class:`~broker.loadtest.scenario.Scenario`, and returns the message types to
use, which mailboxes subscribe to each (its fan-out), and the sequence of types the senders
cycle through. The ledger later checks every delivery against exactly this plan, so the bench's
idea of "expected" never depends on what the server says.

Fan-out: subscribed type ``i`` gets ``fanout_min + i % (fanout_max - fanout_min + 1)``
mailboxes, taken consecutively from a cursor that goes round the mailboxes, so every mailbox
gets a similar share. Selectivity: with ``match_ratio < 1`` the last selected type is subscribed
by nobody, and that share of envelopes is sent with it (routed to 0 mailboxes).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import msgspec

from broker.loadtest.scenario import Scenario, ScenarioError

__all__ = ["CatalogType", "Topology", "catalog_types", "plan_topology"]

#: length of the cyclic type sequence the senders draw from (envelope n has type seq[n % len])
TYPE_CYCLE = 1000


class CatalogAction(msgspec.Struct, frozen=True):
    id: str
    name: str = ""


class CatalogType(msgspec.Struct, frozen=True, kw_only=True):
    """The fields of a catalog message type that envelopes are built from."""

    id: str
    name: str
    version: str = ""
    default_sensitivity: str | None = None
    object_type: str | None = None
    object_type_name: str | None = None
    object_actions: tuple[CatalogAction, ...] = ()
    active: bool = True


class _CatalogPage(msgspec.Struct):
    message_types: list[CatalogType]


def catalog_types(body: bytes) -> list[CatalogType]:
    """Decode the body of ``GET /v1/catalog/message-types``."""
    return msgspec.json.decode(body, type=_CatalogPage).message_types


class Topology(msgspec.Struct, frozen=True, kw_only=True):
    """The planned routing. Indexes: types ``0..len(types)-1``, mailboxes ``0..mailboxes-1``."""

    types: tuple[CatalogType, ...]
    #: per type: the mailboxes that subscribe to it (empty: routed nowhere)
    routes: tuple[tuple[int, ...], ...]
    mailboxes: int
    #: per mailbox: the receiver (system) that owns it
    owners: tuple[int, ...]
    #: the types senders cycle through; envelope n has type ``sequence[n % len(sequence)]``
    sequence: tuple[int, ...]

    def subscriptions(self, mailbox: int) -> list[str]:
        """The message type ids mailbox ``mailbox`` subscribes to."""
        return [self.types[t].id for t, mbs in enumerate(self.routes) if mailbox in mbs]

    def expected_fanout(self) -> float:
        """Deliveries per envelope, averaged over the type sequence."""
        return sum(len(self.routes[t]) for t in self.sequence) / len(self.sequence)

    def summary(self) -> dict[str, Any]:
        return {
            "message_types": [f"{t.name} {t.version}".strip() for t in self.types],
            "fanout_per_type": [len(r) for r in self.routes],
            "mean_fanout": round(self.expected_fanout(), 3),
            "types_per_mailbox": [len(self.subscriptions(m)) for m in range(self.mailboxes)],
        }


def _select(catalog: Sequence[CatalogType], wanted: Sequence[str]) -> list[CatalogType]:
    active = [t for t in catalog if t.active and t.object_actions]
    if not wanted:
        chosen = [t for t in active if not t.name.startswith("Test/")]
        return sorted(chosen, key=lambda t: (t.name, t.version))
    by_key: dict[str, CatalogType] = {}
    for t in active:
        by_key[t.id.lower()] = t
        by_key.setdefault(t.name, t)
    out: list[CatalogType] = []
    for i, key in enumerate(wanted):
        found = by_key.get(key) or by_key.get(key.lower())
        if found is None:
            raise ScenarioError(
                f"message type {key!r} is not an active catalog type with object actions",
                f"$.message_types[{i}]",
            )
        if found not in out:
            out.append(found)
    return out


def plan_topology(catalog: Sequence[CatalogType], scenario: Scenario) -> Topology:
    """The routing for ``scenario`` over the given catalog.

    Error handling:
        Raises :class:`ScenarioError` when a named type is unknown or inactive, or when there
        are not enough types for the selectivity asked for.
    """
    types = _select(catalog, scenario.message_types)
    if not types:
        raise ScenarioError("the catalog has no active message type to send", "$.message_types")
    subscribed = len(types)
    if scenario.match_ratio < 1.0:
        if scenario.match_ratio > 0.0 and len(types) < 2:
            raise ScenarioError(
                "match_ratio < 1 needs two message types: one subscribed, one not",
                "$.match_ratio",
            )
        subscribed = 0 if scenario.match_ratio == 0.0 else len(types) - 1
    span = scenario.fanout_max - scenario.fanout_min + 1
    routes: list[tuple[int, ...]] = []
    cursor = 0
    for i in range(len(types)):
        if i >= subscribed:
            routes.append(())
            continue
        k = scenario.fanout_min + i % span
        routes.append(tuple(sorted((cursor + j) % scenario.mailboxes for j in range(k))))
        cursor = (cursor + k) % scenario.mailboxes
    owners = tuple(m % scenario.receivers for m in range(scenario.mailboxes))
    # the type sequence: match_ratio of it over the subscribed types, the rest unsubscribed,
    # shuffled with the scenario's seed so consecutive envelopes (one batch) mix types
    matched = round(TYPE_CYCLE * scenario.match_ratio) if subscribed else 0
    seq = [i % subscribed for i in range(matched)] + [len(types) - 1] * (TYPE_CYCLE - matched)
    random.Random(scenario.seed).shuffle(seq)
    return Topology(
        types=tuple(types),
        routes=tuple(routes),
        mailboxes=scenario.mailboxes,
        owners=owners,
        sequence=tuple(seq),
    )

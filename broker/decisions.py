"""Access decisions shared across requests: the send verdict per (sender, access facts) and the
receive decision per (receiving system, access facts).

Why: a feed sends the same few combinations of message type, data owner, sensitivity and KLE all
day. Inside one request they were always decided once per distinct combination; across requests
they were decided afresh, and with one envelope per request or per stream frame that was about
half of the envelope's preparation (``bench/pipeline_bench.py --batch 1``).

When a cached decision is stale, and why this is exact: a decision is a pure function of the
access facts, the registry's records (catalog, agreements) and the time, and the time enters only
through agreements expiring (``valid_until_ms``; see :func:`catalog.agreements.status`). So the
table is emptied when the registry changes (its ``generation``; every ``put_*`` bumps it, also
for another worker's change applied from a peer notice, and a reloaded registry is another
object), when the clock reaches the next expiry of any agreement, when the clock goes back
before the table was started, and when it holds :data:`LIMIT` entries (memory stays bounded).
"""

from __future__ import annotations

from typing import Any

from broker.registry import Registry

__all__ = ["LIMIT", "DecisionCache"]

#: Entries kept before the table starts afresh (a few per feed; this bounds a hostile mix).
LIMIT = 4096


class DecisionCache:
    """The decision table for the current registry state and time window. Sync, no I/O."""

    __slots__ = ("_generation", "_registry", "_since", "_table", "_until")

    def __init__(self) -> None:
        self._table: dict[Any, Any] = {}
        self._registry: Registry | None = None
        self._generation = -1
        self._since = 0
        self._until: int | None = None

    def table(self, registry: Registry, now_ms: int) -> dict[Any, Any]:
        """The table valid for ``registry`` at ``now_ms`` (a fresh one when anything it
        depends on may have changed). Keys are the callers': ``(kind, system, facts)``."""
        if (
            registry is not self._registry
            or registry.generation != self._generation
            or now_ms < self._since
            or (self._until is not None and now_ms >= self._until)
            or len(self._table) >= LIMIT
        ):
            self._table = {}
            self._registry = registry
            self._generation = registry.generation
            self._since = now_ms
            self._until = registry.next_expiry_ms(now_ms)
        return self._table

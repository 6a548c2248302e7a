"""The sweeper actor: lease expiry, retention and dedup purging, on a timer.

It owns no state of its own: every pass is one bounded :class:`~store.base.Sweep` operation
submitted through the writer (so it joins a group commit like any other write). When a pass
reports ``more`` the next one follows at once instead of after ``interval``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NoReturn

import trio

from broker.errors import BrokerError
from broker.metrics import Metrics
from broker.writer import Writer
from store.base import Sweep, SweepResult

__all__ = ["Sweeper"]

SWEEP_INTERVAL = 1.0
SWEEP_MAX_ITEMS = 10_000


class Sweeper:
    def __init__(
        self,
        writer: Writer,
        *,
        metrics: Metrics | None = None,
        interval: float = SWEEP_INTERVAL,
        max_items: int = SWEEP_MAX_ITEMS,
        on_sweep: Callable[[SweepResult], Awaitable[None]] | None = None,
    ) -> None:
        self._writer = writer
        self._on_sweep = on_sweep  # e.g. the audit of expired leases and dead letters
        self._metrics = metrics
        self._interval = interval
        self._max_items = max_items
        self.passes = 0

    async def sweep_once(self) -> SweepResult:
        result = await self._writer.submit_one(Sweep(max_items=self._max_items))
        assert isinstance(result, SweepResult)
        self.passes += 1
        if self._metrics and result.expired_leases:
            self._metrics.expired.inc(result.expired_leases)
        if self._on_sweep is not None:
            await self._on_sweep(result)
        return result

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        task_status.started()
        while True:
            try:
                result = await self.sweep_once()
            except BrokerError:
                # Overloaded or a failed commit: the next pass retries; nothing is lost by waiting.
                result = SweepResult()
            if not result.more:
                await trio.sleep(self._interval)
            else:
                await trio.lowlevel.checkpoint()

    def __repr__(self) -> str:
        return f"<Sweeper [every {self._interval:g} s | {self.passes} passes]>"

"""Consume-stream credit and the registry of open streams; plain synchronous state.

:class:`Credit` counts what a consumer allowed: ``{"credit": n}`` adds n, each delivery sent
uses one. Outstanding deliveries (sent since the stream opened) never exceed the credit granted.

:class:`StreamHub` knows every open stream so a server shutdown can end them at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from msgspec import Struct

from broker.errors import InvalidInput
from broker.streaming import GOING_AWAY

__all__ = ["MAX_CREDIT", "Credit", "CreditStats", "StreamHub", "StreamHubStats"]

#: Most credit a consumer may hold unused.
MAX_CREDIT = 1_000_000


class CreditStats(Struct, frozen=True, kw_only=True):
    granted: int
    delivered: int
    available: int


class Credit:
    """Deliveries a consumer has allowed and not yet been sent."""

    def __init__(self, *, max_credit: int = MAX_CREDIT) -> None:
        self.max_credit = max_credit
        self._granted = 0
        self._delivered = 0

    @property
    def available(self) -> int:
        return self._granted - self._delivered

    def add(self, n: int) -> None:
        """Grant ``n`` more deliveries.

        Error handling:
            Raises :class:`InvalidInput` when ``n`` < 1 or the unused credit would pass
            ``max_credit``; the credit is then unchanged.
        """
        if n < 1:
            raise InvalidInput("credit must be >= 1", path="$.credit")
        if self.available + n > self.max_credit:
            raise InvalidInput(
                f"unused credit may be at most {self.max_credit}; "
                f"{self.available} is unused, {n} more was asked",
                path="$.credit",
            )
        self._granted += n

    def delivered(self, n: int) -> None:
        """``n`` deliveries were leased for the consumer (never more than available)."""
        if not 0 <= n <= self.available:
            raise ValueError(f"delivered {n} with {self.available} credit available")
        self._delivered += n

    def statistics(self) -> CreditStats:
        return CreditStats(
            granted=self._granted, delivered=self._delivered, available=self.available
        )

    def __repr__(self) -> str:
        return f"<Credit [{self.available} available | {self._granted} granted, {self._delivered} delivered]>"


class Stoppable(Protocol):
    kind: str

    def stop(self, code: int, reason: str) -> None: ...


class StreamHubStats(Struct, frozen=True, kw_only=True):
    open_publish: int
    open_consume: int
    opened: int
    closing: bool


class StreamHub:
    """Every open stream of one app, so that a server shutdown can end them at once."""

    def __init__(self) -> None:
        self._open: set[Stoppable] = set()
        self._opened = 0
        self.closing = False

    @contextmanager
    def track(self, stream: Stoppable) -> Iterator[None]:
        """Keep ``stream`` known while the block runs (a stream opened while closing is stopped
        at once)."""
        self._open.add(stream)
        self._opened += 1
        if self.closing:
            stream.stop(GOING_AWAY, "server shutting down")
        try:
            yield
        finally:
            self._open.discard(stream)

    def streams(self) -> list[Stoppable]:
        return list(self._open)

    def close(self, reason: str = "server shutting down") -> None:
        """Stop every open stream (close code 1001 once in-flight work is confirmed) and refuse
        new ones. Never blocks; call it when the server starts shutting down."""
        self.closing = True
        for stream in list(self._open):
            stream.stop(GOING_AWAY, reason)

    def statistics(self) -> StreamHubStats:
        kinds = [s.kind for s in self._open]
        return StreamHubStats(
            open_publish=kinds.count("publish"),
            open_consume=kinds.count("consume"),
            opened=self._opened,
            closing=self.closing,
        )

    def __repr__(self) -> str:
        s = self.statistics()
        return f"<StreamHub [{s.open_publish} publish, {s.open_consume} consume open | {s.opened} opened{', closing' if s.closing else ''}]>"

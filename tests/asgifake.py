"""A fake ASGI connection for the raw-route tests (tests/test_rawws.py, tests/test_rawhttp.py)."""

from __future__ import annotations

from typing import Any

import trio

__all__ = ["FakeConnection"]


class FakeConnection:
    """The server side of one ASGI connection: ``events`` in (each after the next of ``delays``
    seconds, if any; none left: never), everything sent recorded, every receive() counted."""

    def __init__(self, *events: dict[str, Any], delays: list[float] | None = None) -> None:
        self.events = list(events)
        self.delays = list(delays or [])
        self.received = 0
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        self.received += 1
        await trio.lowlevel.checkpoint()
        if self.delays:
            await trio.sleep(self.delays.pop(0))
        if not self.events:
            await trio.sleep_forever()
        return self.events.pop(0)

    async def send(self, message: dict[str, Any]) -> None:
        await trio.lowlevel.checkpoint()
        self.sent.append(message)

    def answer(self) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """The one answer sent: status, headers, body (and checks its ASGI framing)."""
        start, body = self.sent  # exactly two messages
        assert start["type"] == "http.response.start"
        assert body["type"] == "http.response.body"
        assert body["more_body"] is False
        return start["status"], start["headers"], body["body"]

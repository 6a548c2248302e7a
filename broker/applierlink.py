"""The writer's async side of the writer process (:mod:`store.applier`).

Theory of operation
-------------------
With a writer process, the writer actor sends each batch to the child and awaits its outcome
on the event loop itself, through a trio socket: no thread of the serving process waits for
the child. A commit thread would have had to win the GIL back from the busy event loop after
every blocking send and receive (up to a switch interval, 5 ms, each time); on the loop, the
answer arriving is just one more readable socket.

One batch is in flight at a time: the writer forms the next batch once the outcome of the last
is back, as the commit thread does. (Sending the next batch while the child commits the one
before was measured and dropped: the batches got smaller and the commits more frequent, and
every commit costs the event loop wake-ups, leases and frames; ``stream`` lost a third.)

State owned: the socket to the current child. A child that died is replaced (in a worker
thread, since starting a process blocks) before the next batch is sent.
"""

from __future__ import annotations

import logging

import trio

from broker.metrics import Metrics
from store.applier import HEADER, ApplierStore, decode_answer, died_with_batch, encode_request
from store.base import ApplyOutcome, Op

__all__ = ["ApplierLink"]

log = logging.getLogger("dueslag.writer")

#: Bytes asked of the socket per receive (an answer of 1,000 deliveries is ~1.2 MB).
RECEIVE_CHUNK = 1 << 18


class ApplierLink:
    """Async ``apply`` over the writer process of an :class:`ApplierStore`."""

    def __init__(self, store: ApplierStore, metrics: Metrics | None = None) -> None:
        self._store = store
        self._metrics = metrics
        self._stream: trio.SocketStream | None = None
        self._buffer = bytearray()

    async def apply(self, ops: list[Op], now_ms: int) -> ApplyOutcome:
        """Like :meth:`Store.apply`, starting a writer process if none runs. Call it shielded
        from cancellation: a batch sent is committed whether or not anybody waits for it.

        Error handling:
            Raises :class:`StoreError` when the store refused the batch (nothing applied), or
            when the child died with it (applied or not: unknown; see :mod:`store.applier`).
        """
        if self._stream is None:
            sock = await trio.to_thread.run_sync(self._store.take_socket)
            self._stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
            self._buffer.clear()
        try:
            await self._stream.send_all(encode_request(ops, now_ms))
            size = int.from_bytes(await self._receive(HEADER), "big")
            answer = await self._receive(size)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, EOFError) as exc:
            await self.aclose()
            gone = await trio.to_thread.run_sync(self._store.forget_child)
            if self._metrics is not None:
                self._metrics.writer_process_deaths.inc()
            pid, code = gone if gone is not None else (None, None)
            log.error(
                "the writer process (pid %s) died with a batch of %d ops in hand (exit code %s);"
                " the batch failed, the next one starts another",
                pid,
                len(ops),
                code,
            )
            raise died_with_batch(exc) from exc
        return decode_answer(answer)

    async def _receive(self, n: int) -> bytes:
        assert self._stream is not None
        buffer = self._buffer
        while len(buffer) < n:
            chunk = await self._stream.receive_some(max(RECEIVE_CHUNK, n - len(buffer)))
            if not chunk:
                raise EOFError("the writer process closed its socket")
            buffer += chunk
        data = bytes(buffer[:n])
        del buffer[:n]
        return data

    async def aclose(self) -> None:
        """Close the socket: the child exits after the batch in hand (the store's ``close``
        waits for it)."""
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await stream.aclose()

"""Stream receivers: per mailbox, one WebSocket consume stream (``/v1/stream/mailboxes/{id}/
consume``) instead of long polls, for scenarios with ``consume: stream``.

Each stream grants ``poll_max`` deliveries of credit at the start. Every ``deliveries`` frame is
booked at once (the same ledger rules as a poll answer); its ids are acknowledged, with as much
credit again, by an ``ack`` frame sent once :data:`ACK_EVERY` ids are pending or the oldest has
waited :data:`ACK_LINGER_S` (as the RabbitMQ side of ``bench/compare_rabbitmq.py`` acks
``multiple`` every 100 and every 20 ms): at a low rate each delivery comes in a frame of its own,
and an ack frame (and its reply) per delivery would double the broker's frames. At most
``poll_max`` deliveries are unacknowledged per mailbox, with no HTTP request per batch or ack.

Stopping (:meth:`StreamReceivers.stop`): no more credit is granted; each stream waits (bounded
by :data:`ACK_WAIT_S`) for the replies to the acks it sent, then closes. Deliveries that were
leased but not acknowledged come back after the lease, as at-least-once promises.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import msgspec
import trio

from broker.loadtest.leanws import ConnectionClosed, HandshakeError, LeanWebSocket, open_websocket
from broker.loadtest.provision import MailboxInfo
from broker.loadtest.receivers import MailboxConsumers, _Delivery, _Failed, book_deliveries

__all__ = ["StreamReceivers", "consume_url"]

ACK_WAIT_S = 30.0
#: Pending delivery ids that are acknowledged at once, and the longest an id waits for its ack.
ACK_EVERY = 100
ACK_LINGER_S = 0.02
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class _ErrorBody(msgspec.Struct):
    code: str
    message: str = ""


class _Frame(msgspec.Struct):
    """Any server frame of the consume stream: deliveries, an ack reply or an error."""

    deliveries: list[_Delivery] | None = None
    acked: int | None = None
    failed: list[_Failed] = []
    error: _ErrorBody | None = None


_frame = msgspec.json.Decoder(_Frame)


def consume_url(base_url: str, mailbox_id: str, lease_s: float) -> str:
    """``http(s)://host:port`` -> ``ws(s)://host:port/v1/stream/mailboxes/{id}/consume?lease=``."""
    parts = urlsplit(base_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    path = f"{parts.path.rstrip('/')}/v1/stream/mailboxes/{mailbox_id}/consume"
    return urlunsplit((scheme, parts.netloc, path, f"lease={lease_s:g}", ""))


class StreamReceivers(MailboxConsumers):
    """The consume streams of every mailbox of a run. :meth:`stop` grants no more credit;
    a stream closes once its acks are answered (an idle one at once)."""

    async def _mailbox(self, index: int, mb: MailboxInfo) -> None:
        state, sc = self.state, self.state.scenario
        url = consume_url(self.base_url, mb.id, sc.lease_s)
        headers = [(b"authorization", f"Bearer {mb.token}".encode())]
        try:
            async with open_websocket(
                url, headers=headers, max_message_bytes=MAX_MESSAGE_BYTES
            ) as ws:
                await ws.send(b'{"credit":%d}' % sc.poll_max)
                await self._consume(ws, index)
        except (ConnectionClosed, HandshakeError) as exc:
            if not self._stopping:
                state.note_error("consume_stream_closed", repr(exc))

    async def _consume(self, ws: LeanWebSocket, index: int) -> None:
        state = self.state
        unanswered = 0  # ack frames sent without a reply yet
        pending: list[str] = []  # booked, not yet acknowledged
        flush_at = float("inf")  # when the oldest pending id must be acknowledged

        async def flush() -> None:
            nonlocal unanswered, flush_at
            # stopping grants no more credit (the broker refuses a credit of 0: leave it out)
            frame = {"ack": pending} if self._stopping else {"ack": pending, "credit": len(pending)}
            await ws.send(msgspec.json.encode(frame))
            pending.clear()
            flush_at = float("inf")
            unanswered += 1

        with trio.move_on_after(float("inf")) as deadline:
            while True:
                if pending and (self._stopping or trio.current_time() >= flush_at):
                    await flush()
                if self._stopping:
                    if unanswered == 0:
                        return
                    deadline.deadline = min(deadline.deadline, trio.current_time() + ACK_WAIT_S)
                message = None
                with trio.CancelScope(deadline=flush_at) as idle:
                    if unanswered == 0 and not pending:  # stop() may end this wait: nothing
                        self._waits.add(idle)  # is left to settle
                        if self._stopping:
                            return
                    try:
                        message = await ws.receive()
                    finally:
                        self._waits.discard(idle)
                if message is None:
                    if pending:  # the linger ran out: acknowledge
                        continue
                    return  # stopped while idle
                frame = _frame.decode(message)  # msgspec reads str and bytes alike
                if frame.deliveries is not None:
                    ids = book_deliveries(state, index, frame.deliveries, state.clock())
                    if ids:
                        if not pending:
                            flush_at = trio.current_time() + ACK_LINGER_S
                        pending += ids
                        if len(pending) >= ACK_EVERY:
                            await flush()
                elif frame.acked is not None:
                    unanswered -= 1
                    state.acked += frame.acked
                    for f in frame.failed:
                        state.ack_failed[f.code] += 1
                elif frame.error is not None:
                    state.note_error(
                        "consume_stream_error", f"{frame.error.code}: {frame.error.message}"
                    )
        if deadline.cancelled_caught:
            state.note_error("consume_stream_ack_timeout", f"{unanswered} ack frames unanswered")

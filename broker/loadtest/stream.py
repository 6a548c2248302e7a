"""The WebSocket publish channel (``/v1/stream/publish``): pipelined sends, per-envelope
confirms, a window of unconfirmed envelopes (like AMQP publisher confirms).

Everything about the wire protocol is in this module, so adapting to the server's final
protocol touches nothing else. The protocol assumed here:

* the handshake carries ``Authorization: Bearer <system token>`` and ``?window=<frames>`` (the
  server's limit of unconfirmed frames); a server without the channel answers the handshake
  404 (:class:`StreamUnavailable`);
* the client sends text frames ``{"seq": <n>, "envelopes": [<envelope>, …]}`` with its own
  increasing ``seq``;
* the server answers text frames ``{"confirms": [{"seq": <n>, "results": [<result>, …]}, …]}``,
  one result per envelope, in order, shaped like a batch item (``{"transaction_id",
  "mailboxes", "duplicate"}`` or ``{"error": {"code", "message"}}``), or ``{"seq": <n>,
  "error": {…}}`` when the whole frame was refused (nothing stored); a message may confirm
  several frames, and a confirm comes only after the commit (fsync);
* ``{"error": {…}}`` as a message of its own is a connection-level error (the server closes).

A connection that breaks leaves its unconfirmed envelopes unconfirmed (the ledger's
``unconfirmed``); there is no reconnect, so a broken stream shows in the figures.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit, urlunsplit

import msgspec
import trio

from broker.loadtest.leanws import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    LeanWebSocket,
    open_websocket,
)
from broker.loadtest.publishers import Pacer, Result, confirm_results, take_envelopes
from broker.loadtest.state import RunState

__all__ = ["PATH", "StreamUnavailable", "check_stream", "run_stream_sender", "stream_url"]

PATH = "/v1/stream/publish"
CONNECT_TIMEOUT_S = 10.0
CONFIRM_WAIT_S = 60.0
MAX_WINDOW_FRAMES = 10_000  # the largest ``?window=`` the server takes
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: Unpaced, at most this many frames are written to the socket at once (one write).
COALESCE_FRAMES = 32


class StreamUnavailable(Exception):
    """The publish stream cannot be opened: the broker has none (404), refused the handshake
    (``status``), or could not be reached (``status`` None)."""

    def __init__(self, url: str, status: int | None, detail: str = "") -> None:
        if status == 404:
            text = (
                f"the publish stream is not available on this server ({url} answered 404); "
                "the 'stream' mode needs the WebSocket publish channel"
            )
        elif status is not None:
            text = f"the broker refused the publish stream ({url} answered {status}) {detail}"
        else:
            text = f"cannot open the publish stream {url}: {detail}"
        super().__init__(text.strip())
        self.status = status


class _Err(msgspec.Struct):
    code: str
    message: str = ""


class _Confirm(msgspec.Struct):
    seq: int
    results: list[Result] | None = None
    error: _Err | None = None  # the whole frame was refused, nothing of it stored


class _Frame(msgspec.Struct):
    confirms: list[_Confirm] = []
    error: _Err | None = None
    seq: int | None = None


_frame = msgspec.json.Decoder(_Frame)


def stream_url(base_url: str, window_frames: int | None = None) -> str:
    """``http(s)://host:port`` -> ``ws(s)://host:port/v1/stream/publish[?window=N]``."""
    parts = urlsplit(base_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    query = "" if window_frames is None else f"window={window_frames}"
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + PATH, query, ""))


def _headers(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {token}".encode())]


async def check_stream(base_url: str, token: str) -> None:
    """Ask for the publish stream once (a WebSocket upgrade over plain HTTP) and hang up.

    Error handling:
        Raises :class:`StreamUnavailable` unless the broker answers 101 Switching Protocols
        (404 on a broker without the channel; 401/403 for a token it refuses).
    """
    import base64
    import os

    import httpx

    from broker.loadtest.transport import client

    headers = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Authorization": f"Bearer {token}",
    }
    url = stream_url(base_url)
    try:
        # one client per attempt: a server closes the connection after an upgrade either way
        async with client(base_url.rstrip("/"), timeout=CONNECT_TIMEOUT_S) as http:
            resp = await http.get(PATH, headers=headers)
    except httpx.HTTPError as exc:
        raise StreamUnavailable(url, None, repr(exc)) from None
    if resp.status_code != 101:
        raise StreamUnavailable(url, resp.status_code, resp.text[:200])


class _Window:
    """At most ``size`` envelopes sent and not yet confirmed."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.used = 0
        self._lot = trio.lowlevel.ParkingLot()

    async def acquire(self, k: int) -> None:
        while self.used + k > self.size:
            await self._lot.park()
        self.used += k

    def try_acquire(self, k: int) -> bool:
        if self.used + k > self.size:
            return False
        self.used += k
        return True

    def release(self, k: int) -> None:
        self.used -= k
        self._lot.unpark_all()


async def run_stream_sender(state: RunState, index: int, base_url: str, token: str) -> None:
    """One publish stream until ``state.stop_sending``, then until its window is confirmed."""
    sc = state.scenario
    rate = None if sc.rate is None else sc.rate / sc.senders
    start = state.clock()
    if rate is not None:
        start += index * (sc.batch / rate) / sc.senders
    pacer = Pacer(rate, sc.batch, start, state.clock)
    window = _Window(sc.window)
    pending: dict[int, list[int]] = {}  # seq -> the envelopes of that frame
    seq = 0
    closed = trio.Event()
    settled = trio.Event()  # sending is over and every frame is confirmed (or the stream closed)
    sending_done = False
    # the server counts its window in frames; ours (in envelopes) is the tighter one
    url = stream_url(base_url, min(MAX_WINDOW_FRAMES, -(-sc.window // sc.batch)))

    async def confirmer(ws: LeanWebSocket) -> None:
        try:
            while True:
                message = await ws.receive()
                try:
                    frame = _frame.decode(message)  # msgspec reads str and bytes alike
                except msgspec.DecodeError as exc:
                    state.note_error("stream_bad_frame", str(exc))
                    continue
                if frame.error is not None:
                    state.note_error("stream_error", f"{frame.error.code}: {frame.error.message}")
                for c in frame.confirms:
                    ns = pending.pop(c.seq, None)
                    if ns is None:
                        state.events["stream_unknown_seq"] += 1
                        continue
                    if c.error is not None:
                        for n in ns:
                            state.ledger.refuse(n, c.error.code)
                    else:
                        confirm_results(state, ns, c.results or [], retried=False)
                    window.release(len(ns))
                if sending_done and not pending:
                    settled.set()
        except ConnectionClosed as exc:
            if pending:
                state.note_error(
                    "stream_closed", f"{exc.reason}; {len(pending)} frames unconfirmed"
                )
        finally:
            closed.set()
            settled.set()
            window.release(window.used)  # wake a sender waiting for a window that never comes

    def frame(due: float) -> str | None:
        """The next frame's text (its envelopes registered as sent), None when sending ends."""
        nonlocal seq
        ns = take_envelopes(state, sc.batch, due, pacer.spacing)
        if len(ns) < sc.batch:
            window.release(sc.batch - len(ns))
        if not ns:
            return None
        sent_ns = time.time_ns()
        envs = [state.factory.build(n, state.factory.type_of(n), sent_ns) for n in ns]
        seq += 1
        pending[seq] = ns
        # a text frame, as browsers' and most clients' JSON
        return (b'{"seq":%d,"envelopes":[%s]}' % (seq, b",".join(envs))).decode()

    async def sender(ws: LeanWebSocket) -> None:
        while not state.stop_sending.is_set() and not closed.is_set():
            due = await pacer.wait()
            await window.acquire(sc.batch)
            if state.stop_sending.is_set() or closed.is_set():
                window.release(sc.batch)
                return
            first = frame(due)
            if first is None:
                return
            frames = [first]
            # Unpaced, the frames the window has room for go out in one socket write (each
            # still a frame of its own), as a client library buffers sends made back to back.
            while (
                pacer.interval is None
                and len(frames) < COALESCE_FRAMES
                and not state.stop_sending.is_set()
                and window.try_acquire(sc.batch)
            ):
                more = frame(state.clock())
                if more is None:
                    break
                frames.append(more)
            await ws.send_many(frames)

    try:
        async with (
            open_websocket(
                url,
                headers=_headers(token),
                max_message_bytes=MAX_MESSAGE_BYTES,
                connect_timeout=CONNECT_TIMEOUT_S,
            ) as ws,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(confirmer, ws)
            try:
                await sender(ws)
            except ConnectionClosed as exc:
                state.note_error("stream_closed", str(exc.reason))
            sending_done = True
            if not pending:
                settled.set()
            with trio.move_on_after(CONFIRM_WAIT_S):  # the window's last confirms
                await settled.wait()
            nursery.cancel_scope.cancel()
    except ConnectionRejected as exc:
        raise StreamUnavailable(url, exc.status_code) from None
    except HandshakeError as exc:
        raise StreamUnavailable(url, None, repr(exc)) from None

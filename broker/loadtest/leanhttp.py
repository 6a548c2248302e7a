"""The bench's client for its hot request loops: one keep-alive HTTP/1.1 connection, h11 over trio.

Why not httpx there: the load generator runs on the same cores as the broker, and httpx (with
httpcore) spends ~1.7 ms of CPU per request on this machine type, so in ``single`` the bench
took 0.6 of a core to drive ~350 requests/s and its own queueing showed up as the broker's
latency. h11 alone does the HTTP/1.1 framing for a fraction of that. Set-up, metrics and
clean-up keep using httpx (:mod:`broker.loadtest.transport`): they are a few dozen requests.

Errors: every transport failure (refused or dropped connection, a protocol error, a timeout) is
raised as :class:`httpx.TransportError`, as httpx would, so the senders' retry rules are the
same for both clients; the connection is then dropped and the next request opens a new one.
"""

from __future__ import annotations

from types import TracebackType
from urllib.parse import urlsplit

import h11
import httpx
import trio

from broker.loadtest.transport import RECEIVE_BYTES, tls_context

__all__ = ["LeanClient", "LeanResponse"]


class LeanResponse:
    """What the senders read of an answer."""

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, headers: dict[str, str], content: bytes) -> None:
        self.status_code = status_code
        self.headers = headers  # lower-case names
        self.content = content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


class LeanClient:
    """One connection to ``base_url`` (``http`` or ``https``, with the run's one TLS context),
    opened on first use, reopened after a failure; ``timeout`` bounds each request, connecting
    included. Use as an async context
    manager; requests on one client must not overlap (one sender, one request in flight)."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self._timeout = timeout
        self._headers = [(b"host", parts.netloc.encode()), (b"user-agent", b"dueslag-bench")]
        if token is not None:
            self._headers.append((b"authorization", f"Bearer {token}".encode()))
        self._stream: trio.abc.Stream | None = None
        self._conn: h11.Connection | None = None

    async def __aenter__(self) -> LeanClient:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._drop()

    async def get(self, path: str) -> LeanResponse:
        return await self.request("GET", path)

    async def post(
        self, path: str, *, content: bytes, headers: dict[str, str] | None = None
    ) -> LeanResponse:
        return await self.request("POST", path, content, headers)

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> LeanResponse:
        try:
            with trio.fail_after(self._timeout):
                return await self._exchange(method, path, body, headers)
        except trio.TooSlowError:
            await self._drop()
            raise httpx.ReadTimeout(f"no answer within {self._timeout:g} s") from None
        except (
            OSError,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            h11.ProtocolError,
        ) as exc:
            await self._drop()
            raise httpx.TransportError(f"{type(exc).__name__}: {exc}") from exc
        except BaseException:  # cancelled mid-exchange: the connection's state is unknown
            await self._drop()
            raise

    async def _exchange(
        self, method: str, path: str, body: bytes, headers: dict[str, str] | None
    ) -> LeanResponse:
        if self._stream is None or self._conn is None:
            await self._connect()
        stream, conn = self._stream, self._conn
        assert stream is not None
        assert conn is not None
        fields = list(self._headers)
        if headers:
            fields += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        if body or method == "POST":
            fields.append((b"content-length", str(len(body)).encode()))
        target = (self._prefix + path).encode()
        out = conn.send(h11.Request(method=method, target=target, headers=fields)) or b""
        if body:
            out += conn.send(h11.Data(data=body)) or b""
        out += conn.send(h11.EndOfMessage()) or b""
        await stream.send_all(out)
        response: h11.Response | None = None
        chunks: list[bytes] = []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(RECEIVE_BYTES)))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise h11.RemoteProtocolError("the server closed the connection mid-answer")
        assert response is not None
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()  # keep-alive
        else:  # the server closes after this answer (Connection: close)
            await self._drop()
        names = {k.decode("latin-1"): v.decode("latin-1") for k, v in response.headers}
        return LeanResponse(response.status_code, names, b"".join(chunks))

    async def _connect(self) -> None:
        if self._https:
            self._stream = await trio.open_ssl_over_tcp_stream(
                self._host, self._port, ssl_context=tls_context()
            )
        else:
            self._stream = await trio.open_tcp_stream(self._host, self._port)
        self._conn = h11.Connection(h11.CLIENT)

    async def _drop(self) -> None:
        stream, self._stream, self._conn = self._stream, None, None
        if stream is not None:
            with trio.CancelScope(shield=True):
                await stream.aclose()

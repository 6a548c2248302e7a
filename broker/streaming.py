"""Flow control for the streaming channels, without I/O: frames, the confirm window, credit.

Theory of operation
-------------------
The WebSocket handlers in :mod:`broker.http.streams` do the I/O; this module keeps the state
they act on, as plain synchronous classes (no trio, no sockets) that tests drive directly.

Publish stream. :func:`decode_publish_frame` turns one client frame into a
:class:`PublishFrame`: its ``seq`` and its envelopes, each decoded on its own so a bad one fails
only itself. :class:`PublishWindow` follows every frame from the moment it is read until its
confirm has been handed to the socket::

    accept() ──> committing ──complete()/fail()──> to confirm ──take_confirms()──> being sent
                 (a frame with nothing to store goes straight to "to confirm")
    being sent ──release()──> gone (its room in the window is free again)

A frame holds its room in the window (frames, envelopes and bytes) until ``release``, so a client
that sends without reading its confirms stops being read: the window fills, the handler stops
calling ``receive`` and TCP pushes back. Memory per connection is bounded by the window limits
plus one frame.

Consume-stream credit and the registry of open streams are in :mod:`broker.streamhub`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import msgspec
from msgspec import UNSET, Struct, UnsetType

from broker.codec import JSON, MAX_BATCH_ITEMS, MSGPACK, decode_envelope, validation_error
from broker.envelope import Haendelsesbesked
from broker.errors import BrokerError, InvalidInput, PayloadTooLarge

__all__ = [
    "DEFAULT_WINDOW",
    "GOING_AWAY",
    "INTERNAL_ERROR",
    "INVALID_DATA",
    "MAX_FRAME_BYTES",
    "MAX_UNCONFIRMED_BYTES",
    "MAX_UNCONFIRMED_ENVELOPES",
    "MAX_WINDOW",
    "TOO_BIG",
    "FrameError",
    "PublishFrame",
    "PublishWindow",
    "WindowStats",
    "decode_publish_frame",
]

#: Unconfirmed frames a publisher may have in flight unless it asks for fewer (``?window=``).
DEFAULT_WINDOW = 1000
MAX_WINDOW = 10_000
#: Unconfirmed envelopes and bytes per publish stream (the window may be reached first).
MAX_UNCONFIRMED_ENVELOPES = 50_000
MAX_UNCONFIRMED_BYTES = 64 * 1024 * 1024
#: Largest client frame (hypercorn's ``websocket_max_message_size`` default is the same).
MAX_FRAME_BYTES = 16 * 1024 * 1024

# WebSocket close codes (RFC 6455 §7.4.1)
GOING_AWAY = 1001
INVALID_DATA = 1007
TOO_BIG = 1009
INTERNAL_ERROR = 1011

Item = Haendelsesbesked | BrokerError


class FrameError(Exception):
    """A frame that breaks the protocol so badly that its ``seq`` is unknown (fatal).

    Attributes:
        error: what to tell the client before closing.
        close_code: the WebSocket close code (1007 bad data, 1009 too big).
    """

    def __init__(self, error: BrokerError, close_code: int) -> None:
        super().__init__(error.message)
        self.error = error
        self.close_code = close_code


class PublishFrame:
    """One publish frame: its items, and (once committed) one result per item.

    ``error`` is set when the whole frame is refused (nothing of it is stored); then ``items``
    is empty and the confirm carries the error instead of results. ``count`` stays the number
    of items after the decoded items are dropped (:meth:`drop_items`).
    """

    __slots__ = ("count", "error", "items", "nbytes", "results", "seq")

    def __init__(
        self, seq: int, items: list[Item], nbytes: int, error: BrokerError | None = None
    ) -> None:
        self.seq = seq
        self.items = items
        self.count = len(items)
        self.nbytes = nbytes
        self.error = error
        self.results: Sequence[Any] = ()

    def drop_items(self) -> None:
        """Let go of the decoded envelopes once they were turned into store ops: thousands of
        frames may wait for their confirms, and their object trees only cost memory and GC."""
        self.items = []

    def __repr__(self) -> str:
        state = f"error={self.error.code}" if self.error else f"{self.count} items"
        return f"<PublishFrame seq={self.seq} {state}>"


class _FrameIn(Struct, forbid_unknown_fields=True):
    seq: int
    envelopes: list[msgspec.Raw] | UnsetType = UNSET
    envelope: msgspec.Raw | UnsetType = UNSET


class _SeqOnly(Struct):
    """Just the seq of a frame that failed the strict decode, to refuse it by seq."""

    seq: int


_json_frame = msgspec.json.Decoder(_FrameIn)
_msgpack_frame = msgspec.msgpack.Decoder(_FrameIn)
_json_seq = msgspec.json.Decoder(_SeqOnly)
_msgpack_seq = msgspec.msgpack.Decoder(_SeqOnly)


def _is_json(data: bytes) -> bool:
    """A binary frame is msgpack unless it starts like a JSON object (0x7B is never a msgpack
    map header, so the two cannot be confused)."""
    return data[:1] in (b"{", b" ", b"\n", b"\r", b"\t")


def decode_publish_frame(data: str | bytes) -> PublishFrame:
    """Decode one client frame: a text frame is JSON, a binary frame msgpack (or JSON).

    Error handling:
        A frame whose ``seq`` can be read but which is otherwise unusable (unknown field, both
        or neither of ``envelope``/``envelopes``, too many envelopes) comes back with ``error``
        set. A bad envelope is an error *item* in its place. Raises :class:`FrameError` only
        when the frame is too big or has no readable ``seq``.
    """
    nbytes = len(data)
    if nbytes > MAX_FRAME_BYTES:
        raise FrameError(
            PayloadTooLarge(
                f"a frame may be at most {MAX_FRAME_BYTES} bytes, this one is {nbytes}"
            ),
            TOO_BIG,
        )
    as_json = isinstance(data, str) or _is_json(data)
    try:
        frame = (
            _json_frame.decode(data)
            if isinstance(data, str) or as_json
            else _msgpack_frame.decode(data)
        )
    except msgspec.DecodeError as exc:
        try:
            seq = (
                _json_seq.decode(data)
                if isinstance(data, str) or as_json
                else _msgpack_seq.decode(data)
            ).seq
        except msgspec.DecodeError:
            err = validation_error(exc)
            if err.code == "invalid_envelope":
                err.code = "invalid"
            err.message = f'a publish frame is {{"seq": <int>, "envelopes": [...]}}: {err.message}'
            raise FrameError(err, INVALID_DATA) from None
        err = validation_error(exc)
        if err.code == "invalid_envelope":
            err.code = "invalid"
        return PublishFrame(seq, [], nbytes, err)
    if (frame.envelope is UNSET) == (frame.envelopes is UNSET):
        return PublishFrame(
            frame.seq,
            [],
            nbytes,
            InvalidInput("a publish frame has exactly one of 'envelope' and 'envelopes'", path="$"),
        )
    media = JSON if as_json else MSGPACK
    if frame.envelopes is UNSET:
        assert not isinstance(frame.envelope, UnsetType)
        return PublishFrame(frame.seq, [_item(frame.envelope, media, "$.envelope")], nbytes)
    raws = frame.envelopes
    if len(raws) > MAX_BATCH_ITEMS:
        return PublishFrame(
            frame.seq,
            [],
            nbytes,
            PayloadTooLarge(
                f"a frame may hold at most {MAX_BATCH_ITEMS} envelopes, this one holds {len(raws)}",
                path="$.envelopes",
            ),
        )
    return PublishFrame(
        frame.seq, [_item(raw, media, f"$.envelopes[{i}]") for i, raw in enumerate(raws)], nbytes
    )


def _item(raw: msgspec.Raw, media: str, path: str) -> Item:
    try:
        return decode_envelope(bytes(raw), media, prefix=path)
    except BrokerError as err:
        return err


class WindowStats(Struct, frozen=True, kw_only=True):
    unconfirmed_frames: int
    unconfirmed_envelopes: int
    unconfirmed_bytes: int
    committing: int
    to_confirm: int
    accepted_frames: int
    confirmed_frames: int
    #: the most frames ever unconfirmed at once (never above the window)
    high_water: int


class PublishWindow:
    """The unconfirmed frames of one publish stream (see the module docstring)."""

    def __init__(
        self,
        *,
        max_frames: int = DEFAULT_WINDOW,
        max_envelopes: int = MAX_UNCONFIRMED_ENVELOPES,
        max_bytes: int = MAX_UNCONFIRMED_BYTES,
    ) -> None:
        if max_frames < 1:
            raise ValueError("max_frames must be >= 1")
        self.max_frames = max_frames
        self.max_envelopes = max_envelopes
        self.max_bytes = max_bytes
        self._confirm: deque[PublishFrame] = deque()
        self._committing = 0
        self._frames = 0
        self._envelopes = 0
        self._bytes = 0
        self._accepted = 0
        self._confirmed = 0
        self._high_water = 0

    def has_room(self) -> bool:
        """Whether another frame may be read (each limit may be passed by that one frame)."""
        return (
            self._frames < self.max_frames
            and self._envelopes < self.max_envelopes
            and self._bytes < self.max_bytes
        )

    def has_confirms(self) -> bool:
        return bool(self._confirm)

    @property
    def empty(self) -> bool:
        """No frame is unconfirmed: everything read has been confirmed to the socket."""
        return self._frames == 0

    def accept(self, frame: PublishFrame) -> bool:
        """Take a frame that was just read. True: submit it, then report :meth:`complete` or
        :meth:`fail`; False: nothing to store, it is queued for its confirm at once."""
        self._frames += 1
        self._envelopes += frame.count
        self._bytes += frame.nbytes
        self._accepted += 1
        self._high_water = max(self._high_water, self._frames)
        if frame.error is None and frame.count:
            self._committing += 1
            return True
        self._confirm.append(frame)
        return False

    def complete(self, frame: PublishFrame, results: Sequence[Any]) -> None:
        """The commit of ``frame`` returned ``results`` (one per item, in order)."""
        if len(results) != frame.count:
            raise ValueError(f"{len(results)} results for {frame.count} items")
        frame.results = results
        self._committing -= 1
        self._confirm.append(frame)

    def fail(self, frame: PublishFrame, error: BrokerError) -> None:
        """``frame`` was refused as a whole (not queued, or its commit failed): nothing of it
        was stored."""
        frame.error = error
        self._committing -= 1
        self._confirm.append(frame)

    def take_confirms(self, max_results: int) -> list[PublishFrame]:
        """Confirms to send in one message: at least one, then while within ``max_results``."""
        frames = [self._confirm.popleft()]
        n = len(frames[0].results)
        while self._confirm and n + len(self._confirm[0].results) <= max_results:
            frame = self._confirm.popleft()
            frames.append(frame)
            n += len(frame.results)
        return frames

    def release(self, frames: Sequence[PublishFrame]) -> None:
        """The confirms of ``frames`` were handed to the socket: free their room."""
        for frame in frames:
            self._frames -= 1
            self._envelopes -= frame.count
            self._bytes -= frame.nbytes
            frame.items = []
        self._confirmed += len(frames)

    def statistics(self) -> WindowStats:
        return WindowStats(
            unconfirmed_frames=self._frames,
            unconfirmed_envelopes=self._envelopes,
            unconfirmed_bytes=self._bytes,
            committing=self._committing,
            to_confirm=len(self._confirm),
            accepted_frames=self._accepted,
            confirmed_frames=self._confirmed,
            high_water=self._high_water,
        )

    def __repr__(self) -> str:
        s = self.statistics()
        return (
            f"<PublishWindow [{s.unconfirmed_frames}/{self.max_frames} unconfirmed: "
            f"{s.committing} committing, {s.to_confirm} to confirm | "
            f"{s.accepted_frames} accepted, {s.confirmed_frames} confirmed]>"
        )

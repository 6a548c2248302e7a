"""The publish stream, ``/v1/stream/publish`` (routed and shut down by :mod:`broker.http.streams`).

The handler task reads a frame only while the :class:`~broker.streaming.PublishWindow` has room,
decodes it, and hands it to :meth:`Broker.publish_enqueue`: the same validation, authorization,
routing and audit as ``POST /v1/messages/batch``, but the writer job is queued without waiting for
its commit (no await and no task per frame), so every frame read while one commit fsyncs joins the
next group commit. The frames the server has already read behind it (a client that writes many
at once) are taken with it, up to :data:`READ_AHEAD_FRAMES` frames or
:data:`~broker.codec.MAX_BATCH_ITEMS` envelopes, and queued as ONE writer job: at one envelope
per frame, a job, its admission, its settlement and an audit op per frame were a tenth of the
stream's cost (docs/performance.md). After the commit the writer reports each frame's results;
the confirmer task sends every confirm that is ready as ONE message and only then frees the
frames' room, so a client that stops reading its confirms stops being read (TCP pushes back).
Frames enter the writer queue in the order they were read, so the store keeps a publisher's
order.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import trio

from broker.codec import MAX_BATCH_ITEMS
from broker.errors import BrokerError
from broker.http import streams
from broker.http.rawws import StreamSocket
from broker.http.streams import DRAIN_TIMEOUT_S, ConfirmsOut, ErrorOut, _error_body, _Stream, _text
from broker.service import Broker
from broker.streaming import FrameError, PublishFrame, PublishWindow, decode_publish_frame
from store.base import SystemRecord

__all__ = ["MAX_CONFIRM_RESULTS", "READ_AHEAD_FRAMES", "PublishStream"]

#: Most per-envelope results in one confirm message.
MAX_CONFIRM_RESULTS = 10_000
#: Most frames read ahead into one writer job (see the module docs).
READ_AHEAD_FRAMES = 64


class PublishStream(_Stream):
    kind = "publish"

    def __init__(self, broker: Broker, ws: StreamSocket, sender: SystemRecord, window: int) -> None:
        super().__init__(ws)
        self.broker = broker
        self.sender = sender
        self.ip = ws.remote_addr
        self.window = PublishWindow(max_frames=window)
        self._room = trio.lowlevel.ParkingLot()
        self._ready = trio.lowlevel.ParkingLot()
        self._idle = trio.lowlevel.ParkingLot()
        self._unqueued: list[PublishFrame] = []  # read, then not queued: cancelled

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._confirmer)
            with self._until_stopped():
                await self._read()
            if self._unqueued:  # read just before the stop: store them all the same
                await self._enqueue(self._unqueued)
            with trio.move_on_after(DRAIN_TIMEOUT_S):
                while not self.window.empty:
                    await self._idle.park()
            nursery.cancel_scope.cancel()
        await self._finish()

    async def _read(self) -> None:
        window = self.window
        while True:
            while not window.has_room():
                await self._room.park()
            data = await self.ws.receive()  # a cancelled receive takes no frame
            if data is None:  # the client has gone: the handler is being cancelled
                return
            frames: list[PublishFrame] = []
            items = 0
            while True:
                try:
                    frame = decode_publish_frame(data)
                except FrameError as exc:
                    if frames:  # the good frames before it are stored and confirmed
                        await self._enqueue(frames)
                    self.stop(exc.close_code, exc.error.code, ErrorOut(_error_body(exc.error)))
                    return
                if window.accept(frame):
                    frames.append(frame)
                    items += frame.count
                else:
                    self._ready.unpark_all()
                if (
                    not window.has_room()
                    or len(frames) >= READ_AHEAD_FRAMES
                    or items >= MAX_BATCH_ITEMS
                    or (data := self.ws.receive_nowait()) is None
                ):
                    break
            if frames:
                await self._enqueue(frames)

    async def _enqueue(self, frames: list[PublishFrame]) -> None:
        """Queue ``frames`` (in the order read) as one writer job."""
        items = frames[0].items if len(frames) == 1 else [i for f in frames for i in f.items]
        try:
            await self.broker.publish_enqueue(
                self.sender, items, self.ip, partial(self._settled, frames)
            )
        except BrokerError as err:  # overloaded or shutting down: nothing of it stored
            self._settled(frames, err)
        except trio.Cancelled:  # not queued (stopped, or the client left)
            self._unqueued = frames
            raise
        else:
            self._unqueued = []
            for frame in frames:
                frame.drop_items()

    def _settled(self, frames: list[PublishFrame], results: list[Any] | BrokerError) -> None:
        """From the writer task, after the frames' commit (or its failure): each frame's own
        slice of the results, in order."""
        if isinstance(results, BrokerError):
            for frame in frames:
                self.window.fail(frame, results)
        else:
            start = 0
            for frame in frames:
                self.window.complete(frame, results[start : start + frame.count])
                start += frame.count
        self._ready.unpark_all()

    async def _confirmer(self) -> None:
        window = self.window
        while True:
            while not window.has_confirms():
                await self._ready.park()
            frames = window.take_confirms(MAX_CONFIRM_RESULTS)
            await self.ws.send(_text(ConfirmsOut([streams._confirm_out(f) for f in frames])))
            window.release(frames)
            self._room.unpark_all()
            if window.empty:
                self._idle.unpark_all()

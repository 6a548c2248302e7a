"""The publish stream, ``/v1/stream/publish`` (routed and shut down by :mod:`broker.http.streams`).

The handler task reads a frame only while the :class:`~broker.streaming.PublishWindow` has room,
decodes it, and hands it to :meth:`Broker.publish_enqueue`: the same validation, authorization,
routing and audit as ``POST /v1/messages/batch``, but the writer job is queued without waiting for
its commit (no await and no task per frame), so every frame read while one commit fsyncs joins the
next group commit. After the commit the writer reports the frame's results; the confirmer task
sends every confirm that is ready as ONE message and only then frees the frames' room, so a client
that stops reading its confirms stops being read (TCP pushes back). Frames enter the writer queue
in the order they were read, so the store keeps a publisher's order.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import trio

from broker.errors import BrokerError
from broker.http import streams
from broker.http.rawws import StreamSocket
from broker.http.streams import DRAIN_TIMEOUT_S, ConfirmsOut, ErrorOut, _error_body, _Stream, _text
from broker.service import Broker
from broker.streaming import FrameError, PublishFrame, PublishWindow, decode_publish_frame
from store.base import SystemRecord

__all__ = ["MAX_CONFIRM_RESULTS", "PublishStream"]

#: Most per-envelope results in one confirm message.
MAX_CONFIRM_RESULTS = 10_000


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
        self._unqueued: PublishFrame | None = None

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._confirmer)
            with self._until_stopped():
                await self._read()
            if self._unqueued is not None:  # read just before the stop: store it all the same
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
            try:
                frame = decode_publish_frame(data)
            except FrameError as exc:
                self.stop(exc.close_code, exc.error.code, ErrorOut(_error_body(exc.error)))
                return
            if window.accept(frame):
                await self._enqueue(frame)
            else:
                self._ready.unpark_all()

    async def _enqueue(self, frame: PublishFrame) -> None:
        try:
            await self.broker.publish_enqueue(
                self.sender, frame.items, self.ip, partial(self._settled, frame)
            )
        except BrokerError as err:  # overloaded or shutting down: nothing of it stored
            self._settled(frame, err)
        except trio.Cancelled:  # not queued (stopped, or the client left)
            self._unqueued = frame
            raise
        else:
            self._unqueued = None
            frame.drop_items()

    def _settled(self, frame: PublishFrame, results: list[Any] | BrokerError) -> None:
        """From the writer task, after the frame's commit (or its failure)."""
        if isinstance(results, BrokerError):
            self.window.fail(frame, results)
        else:
            self.window.complete(frame, results)
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

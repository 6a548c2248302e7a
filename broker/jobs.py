"""The writer's unit of work: a job (ops submitted together). See :mod:`broker.writer`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import trio

from broker.errors import BrokerError
from store.base import Op, OpResult

__all__ = ["Job"]

log = logging.getLogger("dueslag.writer")


class Job:
    """Ops submitted together, their results once committed, and who to tell."""

    __slots__ = ("done", "error", "on_done", "ops", "results")

    def __init__(
        self,
        ops: Sequence[Op],
        on_done: Callable[[list[OpResult] | BrokerError], None] | None = None,
    ) -> None:
        self.ops = ops
        self.done = trio.Event()
        self.results: list[OpResult] = []
        self.error: BrokerError | None = None  # the whole batch failed or was never applied
        self.on_done = on_done  # called by the writer once the job is settled (see enqueue)

    def settle(self) -> None:
        self.done.set()
        if self.on_done is not None:
            try:
                self.on_done(self.error if self.error is not None else self.results)
            except Exception:  # a caller's bug must not stop the writer
                log.exception("an enqueue() callback failed")

"""Running a broker: open the store, start the actors, serve HTTP, shut down in order.

Supervision tree (outer to inner)::

    serve()                 owns the store: opened first, closed last
      └─ nursery
          ├─ Broker.run     writer + sweeper
          └─ hypercorn      HTTP; on shutdown it drains for graceful_timeout seconds

With ``worker`` (one of the processes of ``serve --workers N``, see broker/workers.py) the
parent has already prepared and seeded the store and ``bind`` is the inherited listening socket
(``fd://N``); this process binds its peer socket (broker/peers.py) before it loads anything from
the store, and only worker 0 runs the sweeper.

Shutdown: the trigger ends hypercorn (in-flight requests get ``graceful_timeout``), then the
actors are cancelled (a commit already running always finishes: the thread call is not
cancellable) and only then is the store closed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.typing import ASGIFramework

from broker.config import BrokerConfig, load_or_create_admin_token, load_or_create_instance_id
from broker.http import create_asgi, streams
from broker.peers import Peers, WorkerSlot
from broker.registry import Registry
from broker.service import Broker
from broker.writer import wall_ms
from store.base import Store

__all__ = ["ServerInfo", "prepare_data", "serve"]


class ServerInfo:
    """What ``serve`` reports through ``task_status.started``."""

    def __init__(
        self, binds: list[str], broker: Broker, admin_token: str, admin_token_new: bool
    ) -> None:
        self.binds = binds
        self.broker = broker
        self.admin_token = admin_token
        self.admin_token_new = admin_token_new

    @property
    def url(self) -> str:
        return self.binds[0]


def _prepare(config: BrokerConfig, writer_process: bool = False) -> tuple[str, bool, str, Store]:
    """Blocking start-up work: the data dir, the admin token, the instance id, the store
    (writing through a writer process if asked: ``store.applier``)."""
    from store import LmdbStore
    from store.applier import ApplierStore

    Path(config.data_dir).mkdir(parents=True, exist_ok=True)
    token, token_new = load_or_create_admin_token(config.data_dir, config.admin_token)
    instance_id = load_or_create_instance_id(config.data_dir)
    path = Path(config.data_dir) / "store"
    if writer_process:
        store: Store = ApplierStore(path, map_size=config.map_size, sync=config.sync)
    else:
        store = LmdbStore(path, map_size=config.map_size, sync=config.sync)
    return token, token_new, instance_id, store


def _seed_store(store: Store, registry: Registry, config: BrokerConfig) -> bool:
    """Write the bundled catalog and municipalities into a fresh store, and the demo set-up
    when asked for; whether anything may have been written. Only before any writer runs."""
    ops = registry.seed_ops()
    if ops:
        store.apply(ops, wall_ms())
    if config.demo:
        from broker.demo import ensure_demo

        ensure_demo(store, config.data_dir)
    return bool(ops) or config.demo


def _seed(broker: Broker, config: BrokerConfig) -> None:
    """Before the actors start (so writing directly is safe): :func:`_seed_store`, then the
    broker's caches are rebuilt from what was written."""
    if _seed_store(broker.store, broker.registry, config):
        broker.reload()


def prepare_data(config: BrokerConfig) -> tuple[str, bool]:
    """What the parent of several workers does once, before any of them starts: the data
    dir, the admin token, the instance id and the seeded store (opened and closed here).
    Returns the admin token and whether it was generated just now."""
    token, token_new, _, store = _prepare(config, writer_process=False)
    try:
        _seed_store(store, Registry.load(store), config)
    finally:
        store.close()
    return token, token_new


async def serve(
    config: BrokerConfig,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    clock: Callable[[], int] = wall_ms,
    worker: WorkerSlot | None = None,
    task_status: trio.TaskStatus[ServerInfo] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``shutdown_trigger`` returns (forever if None).

    ``clock`` (wall milliseconds) is injectable so tests can move time without sleeping.
    ``worker``: this process is one of several workers on one store (see the module docstring).
    """
    # Bound before the store is read: a peer's change committed from now on reaches us.
    peers = None if worker is None else Peers(worker)
    try:
        token, token_new, instance_id, store = await trio.to_thread.run_sync(
            _prepare, config, config.writer_process()
        )
    except BaseException:
        if peers is not None:
            peers.close()
        raise
    try:
        broker = Broker(
            store,
            config,
            admin_token=token,
            instance_id=instance_id,
            clock=clock,
            peers=peers,
            sweep=worker is None or worker.index == 0,
        )
        if worker is None:
            await trio.to_thread.run_sync(_seed, broker, config)
        hc = HyperConfig()
        hc.bind = [config.bind]
        hc.graceful_timeout = config.graceful_timeout_s
        hc.accesslog = None
        hc.errorlog = "-"
        # the router types ASGI messages as plain dicts; hypercorn's TypedDicts are the same
        app = cast(ASGIFramework, create_asgi(broker))
        async with trio.open_nursery() as nursery:
            await nursery.start(broker.run)

            async def trigger() -> None:
                await (shutdown_trigger or trio.sleep_forever)()
                streams.hub_of(broker).close()  # streams end now, not at graceful_timeout

            async def http(*, task_status: trio.TaskStatus[list[str]]) -> None:
                await hypercorn_serve(app, hc, shutdown_trigger=trigger, task_status=task_status)
                nursery.cancel_scope.cancel()  # HTTP has drained: now stop the actors

            binds = await nursery.start(http)
            task_status.started(ServerInfo(binds, broker, token, token_new))
    finally:
        if peers is not None:
            peers.close()
        store.close()

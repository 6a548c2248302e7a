"""dueslag's load-test workload, translated to RabbitMQ, and the Node client that drives it.

Pure parts (tested in ``tests/test_compare_rabbitmq.py`` without RabbitMQ):

* :func:`plan` makes the topology and the municipalities exactly as ``dueslag bench``'s set-up
  does (``broker/loadtest/provision.py``): :func:`~broker.loadtest.topology.plan_topology` over
  the broker's public catalog, and the seed's sample of its bundled municipalities.
* :func:`rabbit_topology` turns it into one durable topic exchange, one durable classic queue
  per mailbox and one binding per (mailbox, subscribed message type), with the message type id
  as the routing key. :func:`route` is a topic exchange's routing, to check that each type
  reaches exactly the mailboxes dueslag's plan expects.
* :func:`write_envelopes` writes the bench's own envelopes (``broker/loadtest/envelopes.py``,
  the identical bytes) with their routing keys to the file the client reads.

:func:`run_client` runs ``bench/rabbitmq_client.js`` (Node, amqplib in ``bench/.cache``, put
there by :func:`ensure_amqplib`), bounded in time.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from broker.loadtest.envelopes import EnvelopeFactory, IdScheme
from broker.loadtest.scenario import Scenario
from broker.loadtest.topology import Topology, catalog_types, plan_topology

__all__ = [
    "EXCHANGE",
    "AmqpWorkload",
    "BackgroundConsumer",
    "ensure_amqplib",
    "plan",
    "queue_name",
    "rabbit_topology",
    "route",
    "run_client",
    "topic_matches",
    "write_envelopes",
]

BENCH_DIR = Path(__file__).resolve().parent
CACHE_DIR = BENCH_DIR / ".cache"  # gitignored
CLIENT_JS = BENCH_DIR / "rabbitmq_client.js"
AMQPLIB = "amqplib@0.10"
EXCHANGE = "dueslag.bench"
NPM_TIMEOUT_S = 300.0


def queue_name(mailbox: int) -> str:
    return f"dueslag.bench.mailbox-{mailbox:03d}"


def plan(
    catalog_body: bytes, authorities: Sequence[dict[str, Any]], scenario: Scenario
) -> tuple[Topology, list[str]]:
    """The topology and municipalities (CVRs) ``dueslag bench`` plans for ``scenario``.

    ``catalog_body`` is ``GET /v1/catalog/message-types``; ``authorities`` the list in
    ``GET /v1/authorities`` (same rule as provision.py: bundled = has a kommunekode).
    """
    topology = plan_topology(catalog_types(catalog_body), scenario)
    bundled = sorted(a["cvr"] for a in authorities if a.get("kommunekode"))
    if len(bundled) < scenario.authorities:
        raise ValueError(f"{len(bundled)} bundled municipalities, need {scenario.authorities}")
    return topology, sorted(random.Random(scenario.seed).sample(bundled, scenario.authorities))


def rabbit_topology(topology: Topology) -> tuple[list[str], list[tuple[str, str]]]:
    """Queues (one per mailbox) and bindings ``(queue, routing key)`` for a topic exchange."""
    queues = [queue_name(m) for m in range(topology.mailboxes)]
    bindings = [
        (queues[m], topology.types[t].id)
        for t, mailboxes in enumerate(topology.routes)
        for m in mailboxes
    ]
    return queues, bindings


def topic_matches(pattern: str, key: str) -> bool:
    """AMQP topic matching: words split on '.', '*' is one word, '#' zero or more."""

    def match(p: list[str], k: list[str]) -> bool:
        if not p:
            return not k
        if p[0] == "#":
            return any(match(p[1:], k[i:]) for i in range(len(k) + 1))
        return bool(k) and (p[0] in ("*", k[0])) and match(p[1:], k[1:])

    return match(pattern.split("."), key.split("."))


def route(bindings: Sequence[tuple[str, str]], key: str) -> list[str]:
    """The queues a topic exchange delivers ``key`` to (each once, in binding order)."""
    out: list[str] = []
    for queue, pattern in bindings:
        if queue not in out and topic_matches(pattern, key):
            out.append(queue)
    return out


def write_envelopes(
    path: Path, topology: Topology, cvrs: Sequence[str], scenario: Scenario, count: int
) -> dict[str, Any]:
    """Envelopes ``0..count-1`` as the bench builds them, one ``key TAB json`` per line.

    Returns their sizes and the mean fan-out, for the report.
    """
    run_id = "rmq" + os.urandom(3).hex()
    factory = EnvelopeFactory(
        topology, cvrs, IdScheme(run_id), scenario.envelope_bytes, run_id=run_id
    )
    sizes, fanout = [], 0
    now = time.time_ns()
    with open(path, "wb") as f:
        for n in range(count):
            t = factory.type_of(n)
            body = factory.build(n, t, now)
            if b"\n" in body or b"\t" in body:
                raise ValueError("an envelope contains a newline or tab")
            f.write(
                topology.types[t].id.encode() + b"\t" + body + (b"\n" if n < count - 1 else b"")
            )
            sizes.append(len(body))
            fanout += len(topology.routes[t])
    return {
        "distinct_envelopes": count,
        "envelope_bytes_min": min(sizes),
        "envelope_bytes_max": max(sizes),
        "mean_fanout": round(fanout / count, 3),
    }


class AmqpWorkload:
    """What the client needs to know, written as its config file for each step."""

    def __init__(self, url: str, topology: Topology, envelopes: Path, workdir: Path) -> None:
        self.url = url
        self.queues, self.bindings = rabbit_topology(topology)
        self.envelopes = envelopes
        self.workdir = workdir

    def config(self, **fields: Any) -> dict[str, Any]:
        return {
            "url": self.url,
            "exchange": EXCHANGE,
            "queues": self.queues,
            "bindings": [list(b) for b in self.bindings],
            "envelopes": str(self.envelopes),
            **fields,
        }


def ensure_amqplib(log: Callable[[str], None] = print) -> str:
    """Install amqplib into ``bench/.cache`` with npm if it is not there; return its version.

    Error handling:
        Raises RuntimeError when node or npm is missing or npm fails.
    """
    pkg = CACHE_DIR / "node_modules" / "amqplib" / "package.json"
    if not pkg.exists():
        node, npm = shutil.which("node"), shutil.which("npm")
        if not node or not npm:
            raise RuntimeError("node and npm are needed for the RabbitMQ client (amqplib)")
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        log(f"installing {AMQPLIB} into {CACHE_DIR} (npm)")
        r = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(CACHE_DIR), AMQPLIB],
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT_S,
            check=False,
        )
        if r.returncode != 0 or not pkg.exists():
            raise RuntimeError(f"npm install {AMQPLIB} failed:\n{(r.stdout + r.stderr)[-2000:]}")
    return str(json.loads(pkg.read_text())["version"])


def _client_cmd(mode: str, cfg_path: Path) -> list[str]:
    node = shutil.which("node") or "node"
    return [node, str(CLIENT_JS), mode, str(cfg_path)]


def run_client(workload: AmqpWorkload, mode: str, timeout: float, **fields: Any) -> dict[str, Any]:
    """Run one client step to its end (bounded by ``timeout``); its JSON result."""
    cfg_path = workload.workdir / f"{mode}.json"
    cfg_path.write_text(json.dumps(workload.config(**fields)))
    r = subprocess.run(
        _client_cmd(mode, cfg_path),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if r.returncode != 0:
        raise RuntimeError(f"rabbitmq_client {mode} failed ({r.returncode}): {r.stderr[-2000:]}")
    return dict(json.loads(r.stdout.strip().splitlines()[-1]))


class BackgroundConsumer:
    """The client's ``consume`` step running beside a publish; :meth:`finish` stops it."""

    def __init__(self, workload: AmqpWorkload, timeout: float, **fields: Any) -> None:
        cfg_path = workload.workdir / "consume-concurrent.json"
        cfg_path.write_text(json.dumps(workload.config(wait_stop=True, **fields)))
        self.timeout = timeout
        self.proc = subprocess.Popen(
            _client_cmd("consume", cfg_path),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "ready": consumers are registered
        if line.strip() != "ready":
            self.kill()
            raise RuntimeError(f"the background consumer did not start: {line!r}")

    def finish(self) -> dict[str, Any]:
        """Ask it to stop once the queues are drained; its JSON result (bounded wait)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        try:
            out, err = self.proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError("the background consumer did not finish in time") from None
        if self.proc.returncode != 0:
            raise RuntimeError(f"background consumer failed: {err[-2000:]}")
        return dict(json.loads(out.strip().splitlines()[-1]))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

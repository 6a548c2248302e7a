"""``dueslag serve --workers 2``: two processes on one store behave like one broker.

Real processes (``tests/serverproc.py``) on 127.0.0.1. Each worker names itself in the
``X-Dueslag-Worker`` response header, so a test holds one keep-alive connection per worker
(:class:`Pinned`: it reconnects until the connection lands on its worker, and checks the header
of every answer) and can do something through worker A and look at it through worker B.

Rules: 127.0.0.1 only; every wait and loop is bounded; servers are always stopped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker.notices import (
    MAX_DATAGRAM,
    Notice,
    Outbox,
    decode_notice,
    encode_notices,
    notice_of,
)
from broker.peers import socket_address
from store.base import (
    ApplyOutcome,
    CreateMailbox,
    CreateSubscription,
    CreateSystem,
    DeleteDoc,
    DeleteMailbox,
    Publish,
    PutDoc,
    UpdateSubscription,
)
from tests.serverproc import (
    REPO_ROOT,
    ServerProcess,
    child_pids,
    pid_alive,
    proc_status_kb,
    tree_status_kb,
)

WORKER_HEADER = "x-dueslag-worker"
TYPE_A = "3c1d9a52-0f4e-4d7b-9a61-5b2e8c7d4f10"
HTTP_TIMEOUT = httpx.Timeout(20.0, connect=5.0)
PIN_ATTEMPTS = 200


def envelope(besked_type: str, n: int = 0, besked_id: str | None = None) -> dict[str, Any]:
    bid = besked_id or str(uuid.uuid4())
    return {
        "BeskedId": {"UUIDIdentifikator": bid},
        "BeskedVersion": "1.0",
        "Beskedkuvert": {
            "Filtreringsdata": {"Beskedtype": {"UUIDIdentifikator": besked_type}},
            "Leveranceinformation": {
                "Dannelsestidspunkt": {"TidsstempelDatoTid": "2026-11-27T08:00:00Z"}
            },
        },
        "Beskeddata": [{"json": {"n": n, "id": bid}}],
    }


class Pinned:
    """An HTTP client whose keep-alive connection is served by one given worker."""

    def __init__(self, url: str, worker: int, token: str) -> None:
        self.url = url
        self.worker = str(worker)
        self.headers = {"Authorization": f"Bearer {token}"}
        self.client = self._new()

    def _new(self) -> httpx.Client:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        return httpx.Client(
            base_url=self.url, headers=self.headers, timeout=HTTP_TIMEOUT, limits=limits
        )

    def pin(self) -> None:
        """Make sure the open connection is served by our worker (reconnect until it is)."""
        for _ in range(PIN_ATTEMPTS):
            r = self.client.get("/healthz")
            if r.headers.get(WORKER_HEADER) == self.worker:
                return
            self.client.close()
            self.client = self._new()
        raise AssertionError(f"no connection to worker {self.worker} in {PIN_ATTEMPTS} tries")

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        self.pin()
        r = self.client.request(method, path, **kw)
        assert r.headers.get(WORKER_HEADER) == self.worker, "answered by another worker"
        return r

    def close(self) -> None:
        self.client.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # writer processes: each worker commits through its own (what "auto" picks with cores to
    # spare), so these tests also hold two writer processes sharing one environment
    data = tmp_path_factory.mktemp("workers") / "data"
    with ServerProcess(data, workers=2, extra_args=["--writer", "process"]) as srv:
        yield srv


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode()


def test_each_worker_commits_through_its_own_writer_process(server: ServerProcess) -> None:
    workers = child_pids(server.pid)
    assert len(workers) == 2
    tree = [server.pid, *workers]
    for worker in workers:
        (writer,) = child_pids(worker)
        assert "--writer process" in _cmdline(worker)
        assert "-m store.applier" in _cmdline(writer)
        tree.append(writer)
    # the memory benchmark's sum (bench/backlog_rss.py) covers all five processes
    summed = tree_status_kb(server.pid, ("VmRSS",))["VmRSS"]
    each = [proc_status_kb(pid, ("VmRSS",))["VmRSS"] for pid in tree]
    assert min(each) > 0 and abs(summed - sum(each)) < 0.05 * summed  # they run: RSS moves


@pytest.fixture
def system(server: ServerProcess) -> Iterator[tuple[Pinned, Pinned]]:
    """A fresh system, and a client pinned to each worker (A = 0, B = 1) with its token."""
    with httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT) as c:
        r = c.post(
            "/v1/systems",
            json={"name": f"sys-{uuid.uuid4().hex[:8]}"},
            headers={"Authorization": f"Bearer {server.admin_token}"},
        )
        assert r.status_code == 201, r.text
        token = r.json()["token"]
    a, b = Pinned(server.url, 0, token), Pinned(server.url, 1, token)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def mailbox(c: Pinned, *types: str) -> tuple[str, list[str]]:
    r = c.request("POST", "/v1/mailboxes", json={"name": f"mb-{uuid.uuid4().hex[:6]}"})
    assert r.status_code == 201, r.text
    mb = r.json()["id"]
    subs = []
    for t in types:
        r = c.request("POST", f"/v1/mailboxes/{mb}/subscriptions", json={"message_types": [t]})
        assert r.status_code == 201, r.text
        subs.append(r.json()["id"])
    return mb, subs


def send(c: Pinned, env: dict[str, Any]) -> dict[str, Any]:
    r = c.request("POST", "/v1/messages", json=env)
    assert r.status_code == 202, r.text
    return dict(r.json())


def drain(c: Pinned, mb: str, *, expect: int, timeout: float = 20.0) -> list[str]:
    """Poll and ack until ``expect`` deliveries came (or ``timeout``); their BeskedIds."""
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while len(got) < expect and time.monotonic() < deadline:
        r = c.request("GET", f"/v1/mailboxes/{mb}/messages", params={"max": 1000, "wait": 1})
        assert r.status_code == 200, r.text
        ds = r.json()["deliveries"]
        got += [d["envelope"]["BeskedId"]["UUIDIdentifikator"] for d in ds]
        if ds:
            ids = [d["delivery_id"] for d in ds]
            a = c.request("POST", f"/v1/mailboxes/{mb}/ack", json={"delivery_ids": ids})
            assert a.status_code == 200, a.text
    return got


# ------------------------------------------------------------------------------ across workers


@pytest.mark.slow
def test_long_poll_on_one_worker_wakes_for_a_send_through_the_other(
    system: tuple[Pinned, Pinned],
) -> None:
    a, b = system
    t = str(uuid.uuid4())  # a message type of this test alone (the server is shared)
    mb, _ = mailbox(a, t)
    answer: dict[str, Any] = {}

    def long_poll() -> None:
        t0 = time.monotonic()
        r = a.request("GET", f"/v1/mailboxes/{mb}/messages", params={"max": 10, "wait": 10})
        answer["after_s"] = time.monotonic() - t0
        answer["response"] = r

    poller = threading.Thread(target=long_poll)
    poller.start()
    time.sleep(0.5)  # let the poll reach its wait (if not, it finds the delivery at once)
    sent_at = time.monotonic()
    env = envelope(t)
    assert send(b, env)["mailboxes"] == 1
    poller.join(15)
    assert not poller.is_alive()
    r = answer["response"]
    assert r.status_code == 200, r.text
    [d] = r.json()["deliveries"]
    assert d["envelope"]["BeskedId"] == env["BeskedId"]
    woke_after = time.monotonic() - sent_at
    assert answer["after_s"] < 5.0, answer  # far from wait=10: woken, not timed out
    assert woke_after < 3.0


@pytest.mark.slow
def test_subscription_changes_through_one_worker_route_sends_through_the_other(
    system: tuple[Pinned, Pinned],
) -> None:
    a, b = system
    t = str(uuid.uuid4())  # a message type of this test alone (the server is shared)
    mb, _ = mailbox(a)
    assert send(b, envelope(t))["mailboxes"] == 0  # B knows the mailbox has no subscription
    r = a.request("POST", f"/v1/mailboxes/{mb}/subscriptions", json={"message_types": [t]})
    assert r.status_code == 201, r.text
    sub = r.json()["id"]
    env = envelope(t)
    assert send(b, env)["mailboxes"] == 1
    assert drain(b, mb, expect=1) == [env["BeskedId"]["UUIDIdentifikator"]]

    r = a.request("PATCH", f"/v1/mailboxes/{mb}/subscriptions/{sub}", json={"active": False})
    assert r.status_code == 200, r.text
    assert send(b, envelope(t))["mailboxes"] == 0
    r = a.request("PATCH", f"/v1/mailboxes/{mb}/subscriptions/{sub}", json={"active": True})
    assert r.status_code == 200, r.text
    assert send(b, envelope(t))["mailboxes"] == 1
    r = a.request("DELETE", f"/v1/mailboxes/{mb}/subscriptions/{sub}")
    assert r.status_code == 204, r.text
    assert send(b, envelope(t))["mailboxes"] == 0


@pytest.mark.slow
def test_mailbox_deleted_through_one_worker_is_gone_for_the_other(
    system: tuple[Pinned, Pinned],
) -> None:
    a, b = system
    t = str(uuid.uuid4())  # a message type of this test alone (the server is shared)
    mb, _ = mailbox(a, t)
    assert b.request("GET", f"/v1/mailboxes/{mb}").status_code == 200  # B caches it
    assert send(b, envelope(t))["mailboxes"] == 1
    assert a.request("DELETE", f"/v1/mailboxes/{mb}").status_code == 204
    assert b.request("GET", f"/v1/mailboxes/{mb}").status_code == 404
    r = b.request("GET", f"/v1/mailboxes/{mb}/messages", params={"max": 1})
    assert r.status_code == 404
    assert send(b, envelope(t))["mailboxes"] == 0


@pytest.mark.slow
def test_concurrent_sends_through_both_workers_are_delivered_exactly_once(
    system: tuple[Pinned, Pinned],
) -> None:
    a, b = system
    t = str(uuid.uuid4())  # a message type of this test alone (the server is shared)
    mb1, _ = mailbox(a, t)
    mb2, _ = mailbox(b, t)
    sent: dict[str, list[str]] = {"0": [], "1": []}
    problems: list[str] = []

    def sender(c: Pinned) -> None:
        for i in range(20):
            envs = [envelope(t, i * 50 + k) for k in range(50)]
            r = c.request("POST", "/v1/messages/batch", content=json.dumps(envs).encode())
            if r.status_code != 200:
                problems.append(f"worker {c.worker}: {r.status_code} {r.text[:200]}")
                return
            for env, res in zip(envs, r.json()["results"], strict=True):
                if res.get("mailboxes") != 2 or res.get("duplicate") is not False:
                    problems.append(f"worker {c.worker}: {res}")
                sent[c.worker].append(env["BeskedId"]["UUIDIdentifikator"])

    threads = [threading.Thread(target=sender, args=(c,)) for c in (a, b)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not any(th.is_alive() for th in threads)
    assert problems == []
    every = sent["0"] + sent["1"]
    assert len(every) == len(set(every)) == 2000
    # each mailbox drained through the other worker than the one that created it
    for c, mb in ((b, mb1), (a, mb2)):
        got = drain(c, mb, expect=len(every))
        assert len(got) == len(set(got)), "a delivery came twice"
        assert set(got) == set(every)
        stats = c.request("GET", f"/v1/mailboxes/{mb}").json()
        assert (stats["ready"], stats["in_flight"], stats["copy"]) == (0, 0, len(every))


def _accepted(c: Pinned) -> float:
    text = c.request("GET", "/metrics").text
    (line,) = [x for x in text.splitlines() if x.startswith("dueslag_envelopes_accepted_total ")]
    return float(line.split()[1])


@pytest.mark.slow
def test_metrics_on_either_worker_count_the_whole_broker(
    server: ServerProcess, system: tuple[Pinned, Pinned]
) -> None:
    a, b = system
    admin = [Pinned(server.url, w, server.admin_token) for w in (0, 1)]
    try:
        before = [_accepted(c) for c in admin]
        assert before[0] == before[1]  # both render the same, summed values
        t = str(uuid.uuid4())
        mailbox(a, t)
        for c, n in ((a, 3), (b, 4)):  # 3 envelopes through worker 0, 4 through worker 1
            envs = [envelope(t) for _ in range(n)]
            r = c.request("POST", "/v1/messages/batch", content=json.dumps(envs).encode())
            assert r.status_code == 200 and r.json()["accepted"] == n
        after = [_accepted(c) for c in admin]
        assert after[0] == after[1] == before[0] + 7
    finally:
        for c in admin:
            c.close()


@pytest.mark.slow
def test_dedup_holds_across_workers(system: tuple[Pinned, Pinned]) -> None:
    a, b = system
    t = str(uuid.uuid4())  # a message type of this test alone (the server is shared)
    mailbox(a, t)
    env = envelope(t)
    first = send(a, env)
    again = send(b, env)
    assert first["duplicate"] is False
    assert again == {**first, "duplicate": True}


# ------------------------------------------------------------------------------ process lifecycle


def _wait_until(cond: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return bool(cond())


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_a_killed_parent_takes_its_workers_along(
    tmp_path: Path,
) -> None:
    srv = ServerProcess(tmp_path / "data", workers=2).start()
    try:
        workers = child_pids(srv.pid)
        assert len(workers) == 2
        os.kill(workers[1], signal.SIGKILL)
        assert _wait_until(
            lambda: len(child_pids(srv.pid)) == 2 and workers[1] not in child_pids(srv.pid), 30
        ), srv.output()
        srv.wait_ready(30)
        assert "exited with -9; restarting it" in srv.output()
        for w in (0, 1):  # both workers answer again
            c = Pinned(srv.url, w, srv.admin_token)
            c.pin()
            c.close()

        workers = child_pids(srv.pid)
        srv.kill()  # kill -9 the parent
        assert _wait_until(lambda: not any(pid_alive(p) for p in workers), 20), workers
    finally:
        srv.close()
        for p in child_pids(srv.pid) if srv.returncode is None else []:
            os.kill(p, signal.SIGKILL)


@pytest.mark.slow
def test_sigterm_stops_every_worker(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path / "data", workers=2).start()
    try:
        workers = child_pids(srv.pid)
        assert srv.stop() == 0
        assert not any(pid_alive(p) for p in workers)
        assert srv.output().count("dueslag: listening on") == 1
        assert "dueslag: stopped" in srv.output()
        assert not list((tmp_path / "data" / "run").glob("*.sock"))
    finally:
        srv.close()


@pytest.mark.slow
def test_a_second_supervisor_cannot_join_a_port_in_use(tmp_path: Path) -> None:
    # the workers' sockets share their port (SO_REUSEPORT); another supervisor must not silently
    # join that group and split the connections between two brokers
    with ServerProcess(tmp_path / "a", workers=2) as first:
        port = first.url.rsplit(":", 1)[1]
        argv = ["serve", "--workers", "2", "--data", str(tmp_path / "b")]
        other = subprocess.run(
            [sys.executable, "-m", "cli", *argv, "--bind", f"127.0.0.1:{port}"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert other.returncode == 1
        assert "cannot listen on" in other.stderr and "in use" in other.stderr
        assert httpx.get(first.url + "/readyz").status_code == 200


# ------------------------------------------------------------------------------ notices (unit)


def test_a_notice_round_trips_and_large_ones_are_split_within_the_datagram_limit() -> None:
    small = Notice(ready=("m1",), subscriptions=("s1",), docs=(("value_list", "v1"),))
    [dgram] = encode_notices(small)
    assert decode_notice(dgram) == small

    ids = tuple(str(uuid.uuid4()) for _ in range(3000))
    big = Notice(ready=ids, subscriptions=ids[:500], mailboxes=ids[:10], reload=True)
    dgrams = encode_notices(big)
    assert len(dgrams) > 1
    assert all(len(d) <= MAX_DATAGRAM for d in dgrams)
    parts = [decode_notice(d) for d in dgrams]
    assert sorted(x for p in parts for x in p.ready) == sorted(ids)
    assert sorted(x for p in parts for x in p.subscriptions) == sorted(ids[:500])
    assert sorted(x for p in parts for x in p.mailboxes) == sorted(ids[:10])
    assert sum(p.reload for p in parts) == 1
    # changes travel before wake-ups
    first_ready = next(i for i, p in enumerate(parts) if p.ready)
    assert all(not p.subscriptions for p in parts[first_ready + 1 :])


def test_an_outbox_merges_notices_and_gives_back_what_a_failed_send_took() -> None:
    box = Outbox()
    assert not box
    box.add(Notice(ready=("m1", "m2")))
    box.add(Notice(ready=("m2",), mailboxes=("m3",)))
    dgram, notice = box.take()
    assert not box
    assert sorted(notice.ready) == ["m1", "m2"] and notice.mailboxes == ("m3",)
    box.add(notice)  # the send would have blocked: nothing is lost
    again, original = decode_notice(box.take()[0]), decode_notice(dgram)

    def content(n: Notice) -> tuple[Any, ...]:  # the order inside a field carries no meaning
        return (*(frozenset(getattr(n, f)) for f in Notice.__struct_fields__[:-1]), n.reload)

    assert content(again) == content(original)


def test_bad_datagrams_are_refused() -> None:
    with pytest.raises(ValueError, match="magic"):
        decode_notice(b"hello")
    with pytest.raises(ValueError, match="malformed"):
        decode_notice(b"DQ\x01\xc1")


def test_a_commit_becomes_a_notice_of_what_peers_must_re_read() -> None:
    ops = [
        CreateSystem(id="sy", name="n", token_hash=b"h"),
        CreateMailbox(id="mb", owner="sy", name="n"),
        CreateSubscription(id="s1", mailbox_id="mb", message_types=(TYPE_A,)),
        UpdateSubscription(id="s2", mailbox_id="mb", active=False),
        DeleteMailbox(id="gone"),
        PutDoc(kind="agreement", id="ag", value=b""),
        Publish(
            sender="sy", dedup_key=b"", transaction_id="t", body=b"{}", routes=(), received_ms=1
        ),
    ]
    n = notice_of(ops, ApplyOutcome(results=[], ready=frozenset({"mb"})).ready)
    assert n == Notice(
        ready=("mb",),
        subscriptions=("s1", "s2"),
        mailboxes=("gone",),
        docs=(("agreement", "ag"),),
        reload=False,
    )
    assert notice_of([DeleteDoc(kind="k", id="i")], ()).reload


def test_a_worker_socket_address_fits_a_unix_socket(tmp_path: Path) -> None:
    assert socket_address(tmp_path, 3) == str(tmp_path.resolve() / "run" / "worker-3.sock")
    deep = tmp_path / ("d" * 120)
    addr = socket_address(deep, 0)
    assert addr.startswith("\0dueslag-") and addr == socket_address(deep, 0)
    assert addr != socket_address(deep, 1)

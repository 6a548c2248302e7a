"""kill -9 durability: every acknowledged envelope survives SIGKILL of the server, exactly once.

The server runs as a real subprocess (``tests/serverproc.py``) on 127.0.0.1 with a tmp data dir.
One system owns three mailboxes: ``pair_a`` and ``pair_b`` both subscribe to ``TYPE_PAIR``, and
``solo`` subscribes to ``TYPE_SOLO``. The senders use three message types, so each envelope goes
to 2, 1 or 0 mailboxes:

* ``TYPE_PAIR`` goes to pair_a and pair_b;
* ``TYPE_SOLO`` goes to solo;
* ``TYPE_NONE`` goes to no mailbox, but is still accepted.

Rounds 1-3 (kill while sending). Several threads send continuously, some with single
``POST /v1/messages``, some with ``POST /v1/messages/batch``. Every BeskedId is unique. A send is
*acknowledged* when its request returned 2xx with a result for that item. After a random 0.5-1.5 s
of traffic the server gets SIGKILL while requests are in flight. It is then restarted on the same
data dir, and every mailbox is drained (poll ``max=1000``, ack, until empty). The checks:

* Every acknowledged envelope is in each matching mailbox exactly once.
* An envelope that was not acknowledged is in each matching mailbox at most once.
* No envelope shows up in a mailbox it does not match. The Leverancerute names that mailbox's own
  subscription.
* After draining, ready, in_flight and dead are all 0. ``copy`` equals the number of distinct
  envelopes acked in that mailbox over the whole test, because acked copies are durable too.

Round 4 (kill while draining). A known backlog is sent first, all of it acknowledged. Then one
thread per mailbox drains it with ``lease=1``. Just before the kill, the test itself leases a few
deliveries per mailbox and never acks them. The server gets SIGKILL when a random share of the
backlog has been acked, so acks are in flight at that moment. After the restart:

* A delivery whose ack was confirmed (200, not in ``failed``) never comes back.
* Leased but unacked deliveries come back after their lease expires, with a higher attempt.
* If an ack's reply was lost in the kill, that delivery is either back or in the copy queue,
  never both.

The mailbox ledger is kept across all rounds. An envelope that was drained in round 1 and comes
back in round 3 is therefore caught as well.

Rules: 127.0.0.1 only; every loop bounded in count and time; the subprocess is always killed in a
``finally``. The random seed is printed (``-s``) and can be pinned with ``DUESLAG_CRASH_SEED``.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serverproc import REPO_ROOT, ServerProcess

pytestmark = pytest.mark.slow

TYPE_PAIR = "6f1c2a7e-3b1d-4e55-9a0c-1d2e3f405162"  # fan-out 2
TYPE_SOLO = "0b9e8d7c-6a5f-4e3d-8c2b-1a0f9e8d7c6b"  # fan-out 1
TYPE_NONE = "f0e1d2c3-b4a5-4697-8877-665544332211"  # fan-out 0 (no subscriber)
FANOUT = {TYPE_PAIR: 2, TYPE_SOLO: 1, TYPE_NONE: 0}

SEND_ROUNDS = 3
SINGLE_SENDERS = 2
BATCH_SENDERS = 2
BATCH_SIZES = (20, 200)  # each batch picks a size in this range
KILL_AFTER_S = (0.5, 1.5)
MAX_REQUESTS_PER_SENDER = 20_000
SEND_PHASE_MAX_S = 8.0  # a sender never runs longer than this, whatever happens
BACKLOG = 4000  # round 4: envelopes sent before the drain that gets killed
DRAIN_KILL_SHARE = (0.2, 0.6)  # round 4: kill once this share of the backlog is acked
DRAIN_POLL_MAX = 25  # round 4: small polls, so many acks are in flight
HELD_PER_MAILBOX = 5  # round 4: leased just before the kill and never acked
DRAIN_MAX_S = 30.0  # one full drain of all mailboxes
HTTP_TIMEOUT = httpx.Timeout(15.0, connect=5.0)
JOIN_TIMEOUT_S = 25.0  # > HTTP_TIMEOUT: a thread blocked in a request has given up by then


def _seed() -> int:
    return int(os.environ.get("DUESLAG_CRASH_SEED") or random.SystemRandom().randrange(1 << 30))


def envelope(besked_id: str, besked_type: str, n: int) -> dict[str, Any]:
    return {
        "BeskedId": {"UUIDIdentifikator": besked_id},
        "BeskedVersion": "1.0",
        "Beskedkuvert": {
            "Filtreringsdata": {"Beskedtype": {"UUIDIdentifikator": besked_type}},
            "Leveranceinformation": {
                "Dannelsestidspunkt": {"TidsstempelDatoTid": "2026-11-27T08:00:00Z"}
            },
        },
        "Beskeddata": [{"json": {"n": n, "id": besked_id}}],
    }


# ------------------------------------------------------------------------------ send ledger


class SendLedger:
    """What was sent, and which sends were acknowledged (thread-safe)."""

    def __init__(self, seed: int) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self.types: dict[str, str] = {}  # besked id -> type, recorded before the send
        self.acked: set[str] = set()
        self.unknown = 0  # requests whose outcome was lost (transport error)
        self.overloaded = 0  # 503 answers (not acknowledged, not an error)
        self.in_flight = 0
        self.problems: list[str] = []

    def new(self, k: int) -> list[dict[str, Any]]:
        out = []
        with self._lock:
            for _ in range(k):
                r = self._rng.random()
                t = TYPE_PAIR if r < 0.8 else TYPE_SOLO if r < 0.95 else TYPE_NONE
                bid = str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
                self.types[bid] = t
                out.append(envelope(bid, t, len(self.types)))
        return out

    def result(self, env: dict[str, Any], res: Any) -> None:
        bid = env["BeskedId"]["UUIDIdentifikator"]
        with self._lock:
            if not isinstance(res, dict) or "error" in res:
                self.problems.append(f"send {bid} refused: {res}")
                return
            want = FANOUT[self.types[bid]]
            if res.get("mailboxes") != want or res.get("duplicate") is not False:
                self.problems.append(f"send {bid}: {res}, expected mailboxes={want}, no duplicate")
            if not res.get("transaction_id"):
                self.problems.append(f"send {bid}: no transaction_id in {res}")
            self.acked.add(bid)

    def problem(self, text: str) -> None:
        with self._lock:
            self.problems.append(text)

    def count(self, attr: str, delta: int = 1) -> None:
        with self._lock:
            setattr(self, attr, getattr(self, attr) + delta)


def _sender(
    url: str, token: str, ledger: SendLedger, batch: bool, seed: int, stop: threading.Event
) -> None:
    rng = random.Random(seed)
    deadline = time.monotonic() + SEND_PHASE_MAX_S
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    with httpx.Client(base_url=url, headers=headers, timeout=HTTP_TIMEOUT) as c:
        for _ in range(MAX_REQUESTS_PER_SENDER):
            if stop.is_set() or time.monotonic() > deadline:
                return
            envs = ledger.new(rng.randint(*BATCH_SIZES) if batch else 1)
            body = json.dumps(envs if batch else envs[0]).encode()
            ledger.count("in_flight")
            try:
                r = c.post("/v1/messages/batch" if batch else "/v1/messages", content=body)
            except httpx.TransportError:
                ledger.count("unknown")
                return  # the server is gone; whatever was in flight is "not acknowledged"
            finally:
                ledger.count("in_flight", -1)
            if r.status_code == 503:
                ledger.count("overloaded")
                time.sleep(0.05)
                continue
            if batch and r.status_code == 200:
                results = r.json()["results"]
                if len(results) != len(envs):
                    ledger.problem(f"batch of {len(envs)} got {len(results)} results")
                    return
                for env, res in zip(envs, results, strict=True):
                    ledger.result(env, res)
            elif not batch and r.status_code == 202:
                ledger.result(envs[0], r.json())
            else:
                ledger.problem(f"send answered {r.status_code}: {r.text[:300]}")
                return


# ------------------------------------------------------------------------------ mailbox ledger


@dataclass
class Box:
    """What one mailbox handed out and what of it was acked, over the whole test."""

    name: str
    id: str
    besked_type: str
    subscription_id: str
    offered: dict[str, list[int]] = field(default_factory=dict)  # besked id -> attempts seen
    confirmed: set[str] = field(default_factory=set)  # ack answered 200 for it
    ack_lost: set[str] = field(default_factory=set)  # ack sent, reply lost in a kill
    held: dict[str, int] = field(default_factory=dict)  # leased on purpose and never acked


class Receivers:
    """Poll/ack bookkeeping for all mailboxes; every check that needs the history is here."""

    def __init__(self, boxes: list[Box]) -> None:
        self.boxes = boxes
        self._lock = threading.Lock()
        self.problems: list[str] = []

    def offered(self, box: Box, deliveries: list[dict[str, Any]]) -> list[str]:
        """Record one poll answer; return the besked ids, in delivery order."""
        ids = []
        with self._lock:
            seen_now: set[str] = set()
            for d in deliveries:
                env = d["envelope"]
                bid = env["BeskedId"]["UUIDIdentifikator"]
                ids.append(bid)
                btype = env["Beskedkuvert"]["Filtreringsdata"]["Beskedtype"]["UUIDIdentifikator"]
                if btype != box.besked_type:
                    self.problems.append(f"{box.name}: got {bid} of type {btype}")
                routes = env["Beskedkuvert"]["Leveranceinformation"]["Leveranceruter"][
                    "Leverancerute"
                ]
                via = routes[-1]["ErLeveretIHenholdTil"]["UUIDIdentifikator"]
                if via != box.subscription_id or d.get("subscription_id") != box.subscription_id:
                    self.problems.append(f"{box.name}: {bid} delivered under {via}")
                if env["Beskeddata"][0]["json"]["id"] != bid:
                    self.problems.append(f"{box.name}: {bid} has content {env['Beskeddata']}")
                if bid in seen_now:
                    self.problems.append(f"{box.name}: {bid} twice in one poll answer")
                seen_now.add(bid)
                if bid in box.confirmed:
                    self.problems.append(f"{box.name}: {bid} came back after a confirmed ack")
                attempts = box.offered.setdefault(bid, [])
                if attempts and d["attempt"] <= attempts[-1]:
                    self.problems.append(
                        f"{box.name}: {bid} offered again with attempt {d['attempt']} "
                        f"after attempt {attempts[-1]}"
                    )
                attempts.append(d["attempt"])
        return ids

    def acked(self, box: Box, bids: list[str], dids: list[str], r: httpx.Response | None) -> None:
        with self._lock:
            if r is None:
                box.ack_lost.update(bids)
                return
            if r.status_code == 409:  # every lease had expired: they come back
                return
            if r.status_code != 200:
                self.problems.append(f"{box.name}: ack answered {r.status_code}: {r.text[:300]}")
                return
            failed = {f["delivery_id"] for f in r.json().get("failed", [])}
            for bid, did in zip(bids, dids, strict=True):
                if did not in failed:
                    box.confirmed.add(bid)
                    box.ack_lost.discard(bid)


def _poll(c: httpx.Client, box: Box, *, max: int, lease: float, wait: float = 0) -> Any:
    return c.get(
        f"/v1/mailboxes/{box.id}/messages", params={"max": max, "lease": lease, "wait": wait}
    )


def drain_all(
    url: str, token: str, rx: Receivers, *, lease: float, max: int = 1000
) -> dict[str, dict[str, Any]]:
    """Poll + ack every mailbox until ready and in_flight are both 0; return the final stats.

    Waits (bounded) for leases from before a kill to expire, so those deliveries are re-offered.
    """
    headers = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + DRAIN_MAX_S
    stats: dict[str, dict[str, Any]] = {}
    with httpx.Client(base_url=url, headers=headers, timeout=HTTP_TIMEOUT) as c:
        for box in rx.boxes:
            for _ in range(100_000):
                assert time.monotonic() < deadline, f"draining {box.name} took > {DRAIN_MAX_S} s"
                r = _poll(c, box, max=max, lease=lease, wait=0.2)
                assert r.status_code == 200, r.text
                got = r.json()["deliveries"]
                if got:
                    bids = rx.offered(box, got)
                    dids = [d["delivery_id"] for d in got]
                    a = c.post(f"/v1/mailboxes/{box.id}/ack", json={"delivery_ids": dids})
                    rx.acked(box, bids, dids, a)
                    continue
                st = c.get(f"/v1/mailboxes/{box.id}").json()
                if st["ready"] == 0 and st["in_flight"] == 0:
                    stats[box.name] = st
                    break
                time.sleep(0.1)  # leases from before the kill have not expired yet
    return stats


def check(ledger: SendLedger, rx: Receivers, stats: dict[str, dict[str, Any]], when: str) -> None:
    assert not ledger.problems, f"{when}: {ledger.problems[:10]}"
    assert not rx.problems, f"{when}: {rx.problems[:10]}"
    for box in rx.boxes:
        st = stats[box.name]
        assert (st["ready"], st["in_flight"], st["dead"]) == (0, 0, 0), f"{when}: {box.name} {st}"
        # Everything that ever arrived here was finally acked: confirmed, or its ack's reply
        # was lost and it never came back (so that ack committed). Each sits once in the copy queue.
        done = box.confirmed | box.ack_lost
        assert set(box.offered) == done, f"{when}: {box.name} offered but never settled"
        assert st["copy"] == len(done), f"{when}: {box.name} copy={st['copy']}, acked {len(done)}"
        unknown = set(box.offered) - set(ledger.types)
        assert not unknown, f"{when}: {box.name} got envelopes nobody sent: {sorted(unknown)[:5]}"
        # "matching" and "acknowledged" are judged against what was sent
        expected = {b for b in ledger.acked if ledger.types[b] == box.besked_type}
        missing = expected - done
        assert not missing, (
            f"{when}: {len(missing)} acknowledged envelopes lost from {box.name}, "
            f"e.g. {sorted(missing)[:5]}"
        )
        for bid in box.offered:
            assert ledger.types[bid] == box.besked_type, f"{when}: {bid} in {box.name}"


# ------------------------------------------------------------------------------ the test


def _api(url: str, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=HTTP_TIMEOUT
    )


def _call(c: httpx.Client, method: str, path: str, expect: int, **kw: Any) -> Any:
    r = c.request(method, path, **kw)
    assert r.status_code == expect, (method, path, r.status_code, r.text)
    return r.json() if r.content else None


def setup_boxes(srv: ServerProcess) -> tuple[str, list[Box]]:
    with _api(srv.url, srv.admin_token) as admin:
        token = _call(admin, "POST", "/v1/systems", 201, json={"name": "crash"})["token"]
    boxes = []
    with _api(srv.url, token) as c:
        for name, t in (("pair_a", TYPE_PAIR), ("pair_b", TYPE_PAIR), ("solo", TYPE_SOLO)):
            mb = _call(c, "POST", "/v1/mailboxes", 201, json={"name": name, "max_deliveries": 1000})
            sub = _call(
                c, "POST", f"/v1/mailboxes/{mb['id']}/subscriptions", 201,
                json={"message_types": [t]},
            )  # fmt: skip
            boxes.append(Box(name, mb["id"], t, sub["id"]))
    return token, boxes


def check_restarted(srv: ServerProcess, token: str, boxes: list[Box]) -> None:
    """The restarted server knows the system, its mailboxes and subscriptions."""
    with _api(srv.url, token) as c:
        for box in boxes:
            subs = _call(c, "GET", f"/v1/mailboxes/{box.id}/subscriptions", 200)["subscriptions"]
            assert [s["id"] for s in subs] == [box.subscription_id]


class Threads:
    """Worker threads whose exceptions are re-raised on a bounded join."""

    def __init__(self) -> None:
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []

    def start(self, fn: Callable[..., None], *args: Any) -> None:
        def run() -> None:
            try:
                fn(*args)
            except BaseException as exc:  # surfaced by join()
                self._errors.append(exc)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        self._threads.append(t)

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        assert not alive, f"threads still running after {timeout} s: {alive}"
        if self._errors:
            raise self._errors[0]


def _wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.005)


def send_round(srv: ServerProcess, token: str, ledger: SendLedger, rng: random.Random) -> int:
    """Send from several threads and SIGKILL the server mid-traffic; return sends in flight."""
    stop = threading.Event()
    threads = Threads()
    for i in range(SINGLE_SENDERS + BATCH_SENDERS):
        batch = i >= SINGLE_SENDERS
        threads.start(_sender, srv.url, token, ledger, batch, rng.randrange(1 << 30), stop)
    try:
        n0 = len(ledger.acked)
        _wait_until(lambda: len(ledger.acked) > n0, 10.0, "the first acknowledged send")
        time.sleep(rng.uniform(*KILL_AFTER_S))
        in_flight = ledger.in_flight
        srv.kill()
    finally:
        stop.set()
        srv.kill()
        threads.join(JOIN_TIMEOUT_S)
    return in_flight


def _drainer(url: str, token: str, rx: Receivers, box: Box, stop: threading.Event) -> None:
    deadline = time.monotonic() + DRAIN_MAX_S
    with _api(url, token) as c:
        for _ in range(100_000):
            if stop.is_set() or time.monotonic() > deadline:
                return
            try:
                r = _poll(c, box, max=DRAIN_POLL_MAX, lease=1)
            except httpx.TransportError:
                return  # a lost poll answer: those leases expire and come back
            if r.status_code != 200:
                rx.problems.append(f"{box.name}: poll answered {r.status_code}: {r.text[:300]}")
                return
            got = r.json()["deliveries"]
            if not got:
                time.sleep(0.02)
                continue
            bids = rx.offered(box, got)
            dids = [d["delivery_id"] for d in got]
            try:
                a = c.post(f"/v1/mailboxes/{box.id}/ack", json={"delivery_ids": dids})
            except httpx.TransportError:
                rx.acked(box, bids, dids, None)
                return
            rx.acked(box, bids, dids, a)


def drain_kill_round(
    srv: ServerProcess, token: str, ledger: SendLedger, rx: Receivers, rng: random.Random
) -> int:
    """Send a backlog, drain it with lease=1 from one thread per mailbox, SIGKILL mid-drain.

    Returns how many deliveries were acked (confirmed) in this round before the kill.
    """
    total = 0  # deliveries in the backlog
    with _api(srv.url, token) as c:
        for _ in range(BACKLOG // 500):
            envs = ledger.new(500)
            results = _call(c, "POST", "/v1/messages/batch", 200, json=envs)["results"]
            for env, res in zip(envs, results, strict=True):
                ledger.result(env, res)
                total += res["mailboxes"]
    assert not ledger.problems, ledger.problems[:10]
    before = sum(len(box.confirmed) for box in rx.boxes)
    target = before + int(total * rng.uniform(*DRAIN_KILL_SHARE))

    stop = threading.Event()
    threads = Threads()
    for box in rx.boxes:
        threads.start(_drainer, srv.url, token, rx, box, stop)
    try:
        _wait_until(
            lambda: sum(len(box.confirmed) for box in rx.boxes) >= target,
            DRAIN_MAX_S,
            f"{target - before} of {total} deliveries acked",
        )
        with _api(srv.url, token) as c:  # lease a few and never ack them
            for box in rx.boxes:
                got = _call(c, "GET", f"/v1/mailboxes/{box.id}/messages", 200,
                            params={"max": HELD_PER_MAILBOX, "lease": 1})["deliveries"]  # fmt: skip
                for bid, d in zip(rx.offered(box, got), got, strict=True):
                    box.held[bid] = d["attempt"]
        srv.kill()
    finally:
        stop.set()
        srv.kill()
        threads.join(JOIN_TIMEOUT_S)
    acked = sum(len(box.confirmed) for box in rx.boxes) - before
    assert acked < total, f"the drain finished ({acked}/{total}) before the kill"
    return acked


def restart(old: ServerProcess) -> ServerProcess:
    """A new (not yet started) server on the same data dir; assign it before ``start()`` so
    the ``finally`` always sees the live child."""
    return ServerProcess(old.data_dir, admin_token=old.admin_token, extra_args=old.extra_args)


# process: a kill -9 of the server leaves its writer process to finish the batch in hand (its
# senders got no answer) while the restarted server starts another on the same environment
@pytest.mark.parametrize("writer", ["thread", "process"])
def test_kill_9_keeps_every_acknowledged_envelope(tmp_path: Path, writer: str) -> None:
    seed = _seed()
    print(f"\ncrash test seed {seed} (set DUESLAG_CRASH_SEED to repeat)")
    rng = random.Random(seed)
    ledger = SendLedger(rng.randrange(1 << 30))
    t0 = time.monotonic()
    srv = ServerProcess(tmp_path / "data", extra_args=["--writer", writer])
    try:
        srv.start()
        token, boxes = setup_boxes(srv)
        rx = Receivers(boxes)

        cut_sends = 0
        for rnd in range(1, SEND_ROUNDS + 1):
            acked_before = len(ledger.acked)
            in_flight = send_round(srv, token, ledger, rng)
            cut_sends += in_flight
            srv = restart(srv)
            srv.start()
            check_restarted(srv, token, boxes)
            stats = drain_all(srv.url, token, rx, lease=30)
            check(ledger, rx, stats, f"seed {seed}, send round {rnd}")
            print(
                f"round {rnd}: {len(ledger.acked) - acked_before} sends acknowledged, "
                f"{in_flight} in flight at the kill, {ledger.overloaded} x 503 so far, "
                f"ready again {srv.ready_after_s:.2f} s after restart, "
                f"copy={[stats[b.name]['copy'] for b in boxes]}"
            )
        assert cut_sends > 0, "no send was in flight at any kill; the test proved nothing"

        acked = drain_kill_round(srv, token, ledger, rx, rng)
        srv = restart(srv)
        srv.start()
        check_restarted(srv, token, boxes)
        stats = drain_all(srv.url, token, rx, lease=1)
        check(ledger, rx, stats, f"seed {seed}, drain round")
        held = [(box, bid, attempt) for box in boxes for bid, attempt in box.held.items()]
        assert held, "nothing was leased and left unacked before the kill"
        for box, bid, attempt in held:
            attempts = box.offered[bid]
            what = f"{box.name}: {bid} leased (attempt {attempt}), never acked; seen {attempts}"
            assert bid in box.confirmed, what
            assert len(attempts) >= 2, what
            assert attempts[-1] > attempt, what
        lost = sum(len(box.ack_lost) for box in boxes)
        print(
            f"drain round: {acked} acks confirmed before the kill, {len(held)} leases held "
            f"(all came back), {lost} deliveries whose ack reply was lost (committed: never redelivered), "
            f"ready again {srv.ready_after_s:.2f} s after restart; total {time.monotonic() - t0:.1f} s"
        )
    finally:
        srv.close()


def test_a_second_server_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    """Two independent servers on one data dir would both sweep and never wake each other's
    long polls: the second refuses to start, and the dir is free again once the first is gone,
    even after kill -9 (the lock is a flock the kernel drops)."""
    data = tmp_path / "data"
    with ServerProcess(data) as first:
        second = subprocess.run(
            [sys.executable, "-m", "cli", "serve", "--data", str(data), "--bind", "127.0.0.1:0"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2
        assert "another dueslag is serving" in second.stderr
        assert f"pid {first.pid}" in second.stderr
        first.kill()
    with ServerProcess(data) as again:  # the same dir serves again after the crash
        assert httpx.get(again.url + "/readyz").status_code == 200

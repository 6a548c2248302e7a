"""HTTP senders: ``POST /v1/messages/batch`` (mode ``batch``) and ``POST /v1/messages``
(mode ``single``), at a fixed rate or as fast as the broker confirms; and the baseline.

One sender is one trio task with its own keep-alive connection and its own system token; it has
one request in flight at a time, so ``senders`` is the client-side concurrency.

Timing: an envelope's send time is when it was *due*, not when the request went out. At a fixed
rate a sender that falls behind keeps its schedule, so the backlog shows up as latency instead of
silently lowering the rate (no coordinated omission). A paced request of k envelopes goes out
when its last envelope is due; the earlier ones were due ``interval / k`` apart before it, so
the time they waited to fill the batch counts too. As fast as possible, due = now.

Retries: a 503 (``overloaded``/``shutting_down``) is retried after its ``Retry-After`` (at most
:data:`RETRY_AFTER_MAX_S`), a transport error or other 5xx after a short backoff, at most
:data:`RETRIES` times, always with the same BeskedIds: the broker's dedup answers a repeat with
``"duplicate": true``, so a retry can never store an envelope twice. A 4xx for the whole request
refuses its envelopes; 401/403 also stop the sender (its set-up is wrong, retrying cannot help).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import msgspec
import trio

from broker.loadtest.leanhttp import LeanClient, LeanResponse
from broker.loadtest.ledger import LedgerFull
from broker.loadtest.state import RunState

__all__ = [
    "REQUEST_TIMEOUT_S",
    "Pacer",
    "Result",
    "ResultError",
    "bracket",
    "confirm_results",
    "run_baseline",
    "run_http_sender",
    "take_envelopes",
]

RETRIES = 5
RETRY_AFTER_MAX_S = 5.0
REQUEST_TIMEOUT_S = 60.0
BACKOFF_S = 0.1


class ResultError(msgspec.Struct):
    """The ``error`` of a refused envelope (or request)."""

    code: str
    message: str = ""


class _ErrBody(msgspec.Struct):
    error: ResultError


class Result(msgspec.Struct, kw_only=True):
    """One item of a batch (or stream) answer, or the answer to a single send."""

    transaction_id: str | None = None
    mailboxes: int | None = None
    duplicate: bool | None = None
    error: ResultError | None = None


class _BatchOut(msgspec.Struct):
    results: list[Result]


_batch_out = msgspec.json.Decoder(_BatchOut)
_single_out = msgspec.json.Decoder(Result)
_err_body = msgspec.json.Decoder(_ErrBody)


class Pacer:
    """When each request of one sender is due: every ``per_request / rate`` seconds, or now.

    Arguments:
        rate: envelopes per second for this sender, None for no limit.
        per_request: envelopes per request.
        start: the clock time the schedule starts (a sender's stagger included).
        clock: seconds, monotonic (the run's clock).
    """

    def __init__(
        self, rate: float | None, per_request: int, start: float, clock: Callable[[], float]
    ) -> None:
        self.interval = None if rate is None else per_request / rate
        #: seconds between the envelopes of one request (0 when unpaced)
        self.spacing = 0.0 if rate is None else 1.0 / rate
        self.due = start
        self.clock = clock

    async def wait(self) -> float:
        """Sleep until the next request is due; returns its due time."""
        now = self.clock()
        if self.interval is None:
            await trio.lowlevel.checkpoint()
            return now
        due = self.due
        self.due += self.interval
        if due > now:
            await trio.sleep(due - now)
        else:
            await trio.lowlevel.checkpoint()
        return due


def confirm_results(state: RunState, ns: list[int], results: list[Result], retried: bool) -> None:
    """Book the broker's per-envelope answers for envelopes ``ns`` (one request or frame)."""
    ledger = state.ledger
    now = state.clock()
    latencies: list[int] = []
    for n, res in zip(ns, results, strict=False):
        if res.error is not None:
            ledger.refuse(n, res.error.code)
            continue
        if ledger.confirm(n):
            latencies.append(int((now - ledger.sent_at[n]) * 1e6))
        if res.duplicate:
            state.events["dedup_on_retry" if retried else "duplicate_confirm_unexpected"] += 1
        if res.mailboxes is not None and res.mailboxes != ledger.expected_count(n):
            state.events["routing_mismatch"] += 1
    if len(results) != len(ns):
        state.note_error("bad_answer", f"{len(results)} results for {len(ns)} envelopes")
    if latencies:
        state.confirm_latency.record_many(latencies)
        state.t_last_confirm = now


def _error_code(resp: LeanResponse) -> str:
    try:
        return _err_body.decode(resp.content).error.code
    except msgspec.DecodeError:
        return f"http_{resp.status_code}"


def take_envelopes(state: RunState, k: int, due: float, spacing: float = 0.0) -> list[int]:
    """Register up to ``k`` new envelopes in the ledger (fewer at the count or the ledger's
    capacity, which also end the sending). The last is due at ``due``, each one before it
    ``spacing`` seconds earlier."""
    ledger, factory = state.ledger, state.factory
    count = state.scenario.count
    if count is not None:
        k = min(k, count - ledger.sent)
    ns: list[int] = []
    try:
        for i in range(max(0, k)):
            at = due - (k - 1 - i) * spacing
            ns.append(ledger.add_sent(factory.type_of(ledger.sent), at))
    except LedgerFull as exc:
        state.note_error("ledger_full", str(exc))
        state.stop_sending.set()
    if count is not None and ledger.sent >= count:
        state.stop_sending.set()
    return ns


async def run_http_sender(state: RunState, index: int, http: LeanClient) -> None:
    """One sender until ``state.stop_sending``; ``http`` carries its token and base URL."""
    sc = state.scenario
    batch = sc.mode == "batch"
    path = "/v1/messages/batch" if batch else "/v1/messages"
    per_request = sc.batch if batch else 1
    rate = None if sc.rate is None else sc.rate / sc.senders
    start = state.clock()
    if rate is not None:  # stagger the senders over one interval
        start += index * (per_request / rate) / sc.senders
    pacer = Pacer(rate, per_request, start, state.clock)
    factory = state.factory
    headers = {"Content-Type": "application/json"}
    while not state.stop_sending.is_set():
        due = await pacer.wait()
        if state.stop_sending.is_set():
            break
        ns = take_envelopes(state, per_request, due, pacer.spacing)
        if not ns:
            break
        sent_ns = time.time_ns()
        envs = [factory.build(n, factory.type_of(n), sent_ns) for n in ns]
        body = factory.batch_body(envs) if batch else envs[0]
        if not await _post(state, http, path, body, headers, ns, batch):
            break


async def _post(
    state: RunState,
    http: LeanClient,
    path: str,
    body: bytes,
    headers: dict[str, str],
    ns: list[int],
    batch: bool,
) -> bool:
    """Send one request with retries and book its answer. False: this sender must stop."""
    for attempt in range(RETRIES + 1):
        retried = attempt > 0
        if retried:
            state.events["retries"] += 1
        try:
            resp = await http.post(path, content=body, headers=headers)
        except httpx.TransportError as exc:
            state.note_error("transport_error", repr(exc))
            await trio.sleep(BACKOFF_S * 2**attempt)
            continue
        status = resp.status_code
        if status in (200, 202):
            try:
                results = (
                    _batch_out.decode(resp.content).results
                    if batch
                    else [_single_out.decode(resp.content)]
                )
            except msgspec.DecodeError as exc:
                state.note_error("bad_answer", str(exc))
                return True
            confirm_results(state, ns, results, retried)
            return True
        if status == 503:
            state.events["http_503"] += 1
            try:
                wait = float(resp.headers.get("Retry-After", "1"))
            except ValueError:
                wait = 1.0
            await trio.sleep(min(max(wait, BACKOFF_S), RETRY_AFTER_MAX_S))
            continue
        if status >= 500:
            state.note_error("http_5xx", f"{status} {resp.text[:200]}")
            await trio.sleep(BACKOFF_S * 2**attempt)
            continue
        code = _error_code(resp)
        for n in ns:
            state.ledger.refuse(n, code)
        # a whole batch refused for its token, or any 401: the set-up is wrong, stop
        if status == 401 or (batch and status == 403):
            state.note_error("sender_stopped", f"{status} {code}: {resp.text[:200]}")
            return False
        return True
    state.note_error("gave_up", f"no answer after {RETRIES} retries for {len(ns)} envelopes")
    return True


async def run_baseline(
    base_url: str,
    senders: int,
    seconds: float,
    body: bytes | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, object]:
    """``GET /healthz`` (or, with ``body``, ``POST /healthz`` carrying it) as fast as
    ``senders`` keep-alive connections go, for ``seconds``.

    The framework's per-request ceiling on this machine, in the same run as the measurement
    it is compared with: ``GET`` the barest request, ``POST`` with an envelope's bytes a
    request of the same shape as ``POST /v1/messages`` (the broker reads and drops the body).
    """
    done = 0
    failed = 0
    statuses: Counter[int] = Counter()
    headers = {"Content-Type": "application/json"}

    async def one() -> None:
        nonlocal done, failed
        async with LeanClient(base_url, timeout=REQUEST_TIMEOUT_S) as http:
            while True:
                try:
                    if body is None:
                        r = await http.get("/healthz")
                    else:
                        r = await http.post("/healthz", content=body, headers=headers)
                except httpx.TransportError:
                    failed += 1
                    await trio.sleep(BACKOFF_S)
                    continue
                if r.status_code == 200:
                    done += 1
                else:
                    failed += 1
                    statuses[r.status_code] += 1
                    if not done and failed >= senders:  # not served (an older broker): stop
                        raise _Unserved

    t0 = clock()
    with trio.move_on_after(seconds):
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(senders):
                    nursery.start_soon(one)
        except* _Unserved:
            pass
    elapsed = clock() - t0
    return {
        "endpoint": "GET /healthz" if body is None else "POST /healthz",
        "body_bytes": 0 if body is None else len(body),
        "senders": senders,
        "seconds": round(elapsed, 3),
        "requests": done,
        "failed": failed,
        "failed_statuses": {str(k): v for k, v in sorted(statuses.items())},
        "per_s": round(done / elapsed, 1) if elapsed > 0 and done else None,
    }


def bracket(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """One baseline from two runs of it, one before the load and one after: its requests over
    its seconds, so a machine that sped up or slowed down during the run moves both sides of
    the ratio alike; ``runs`` keeps the two."""
    seconds = before["seconds"] + after["seconds"]
    requests = before["requests"] + after["requests"]
    statuses = Counter({int(k): v for k, v in before["failed_statuses"].items()})
    statuses.update({int(k): v for k, v in after["failed_statuses"].items()})
    return {
        **before,
        "seconds": round(seconds, 3),
        "requests": requests,
        "failed": before["failed"] + after["failed"],
        "failed_statuses": {str(k): v for k, v in sorted(statuses.items())},
        "per_s": round(requests / seconds, 1) if seconds > 0 and requests else None,
        "runs": [before, after],
    }


class _Unserved(Exception):
    """The baseline's endpoint answers with an error: there is nothing to measure."""

"""One run, start to end: set-up, baseline, load, drain, accounting, report.

Supervision (outer to inner)::

    run_scenario                      set-up, baseline and clean-up have deadlines of their own
      └─ nursery                      hard deadline: load + drain + margins
          ├─ ticker                   the timeline, once a second (and the display)
          ├─ Receivers.run            concurrent: from the start; after: from the load's end
          └─ senders nursery          until duration/count; then SENDER_GRACE_S to finish
                                      their requests in flight, then cancelled

Phases: ``setup`` -> (``baseline``) -> ``load`` -> ``drain`` (until every confirmed envelope
reached every expected mailbox, at most ``drain_s``) -> ``stop`` (polls cancelled, queued acks
sent) -> ``done``, then the clean-up (the run's mailboxes deleted, its agreements withdrawn).
The broker's counters are scraped right before the load and after the stop, so their deltas
cover exactly this run's traffic (if nothing else uses the broker).

Bounded: every phase has a deadline, every request a timeout, the ledger a capacity; the only
host ever contacted is ``broker``.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import trio

from broker.loadtest.consumers import StreamReceivers
from broker.loadtest.envelopes import EnvelopeFactory, IdScheme
from broker.loadtest.latency import percentiles_ms
from broker.loadtest.leanhttp import LeanClient
from broker.loadtest.ledger import Ledger
from broker.loadtest.progress import Display
from broker.loadtest.provision import Provisioned, cleanup, provision
from broker.loadtest.publishers import (
    REQUEST_TIMEOUT_S,
    bracket,
    run_baseline,
    run_http_sender,
)
from broker.loadtest.receivers import MailboxConsumers, Receivers
from broker.loadtest.report import build_report, host_load
from broker.loadtest.scenario import Scenario
from broker.loadtest.servermetrics import delta, parse_metrics
from broker.loadtest.state import RunState, Sample
from broker.loadtest.transport import client

__all__ = ["BenchError", "run_scenario"]

SETUP_TIMEOUT_S = 120.0
SENDER_GRACE_S = 30.0
STOP_TIMEOUT_S = 30.0
CLEANUP_TIMEOUT_S = 60.0
TICK_S = 1.0


class BenchError(Exception):
    """The run could not be made (unreachable broker, set-up refused, no stream channel)."""


async def _scrape(
    http: httpx.AsyncClient, admin_token: str, state: RunState
) -> dict[str, float] | None:
    try:
        r = await http.get("/metrics", headers={"Authorization": f"Bearer {admin_token}"})
    except httpx.HTTPError as exc:
        state.note_error("metrics", repr(exc))
        return None
    if r.status_code != 200:
        state.note_error("metrics", f"GET /metrics answered {r.status_code}")
        return None
    return parse_metrics(r.text)


async def _ticker(state: RunState) -> None:
    """Append one timeline sample per second (until cancelled)."""
    last_c, last_d = state.ledger.confirmed, state.ledger.delivered
    while True:
        await trio.sleep(TICK_S)
        c, d = state.ledger.confirmed, state.ledger.delivered
        s = Sample(state.elapsed(), c - last_c, d - last_d)
        last_c, last_d = c, d
        delivered = percentiles_ms(state.deliver_latency.rotate(), [50.0, 99.0])
        if delivered is not None:
            s.deliver_p50, s.deliver_p99 = delivered
        confirmed = percentiles_ms(state.confirm_latency.rotate(), [99.0])
        if confirmed is not None:
            s.confirm_p99 = confirmed[0]
        state.timeline.append(s)


async def _senders(state: RunState, base_url: str, tokens: tuple[str, ...]) -> None:
    sc = state.scenario
    async with trio.open_nursery() as nursery:

        async def one(index: int, token: str) -> None:
            try:
                if sc.mode == "stream":
                    from broker.loadtest.stream import run_stream_sender

                    await run_stream_sender(state, index, base_url, token)
                else:
                    async with LeanClient(base_url, token=token, timeout=REQUEST_TIMEOUT_S) as http:
                        await run_http_sender(state, index, http)
            finally:
                state.senders_alive -= 1
                if state.senders_alive == 0:
                    state.stop_sending.set()

        state.senders_alive = len(tokens)  # before any starts: a fast one must not end it all
        for i, token in enumerate(tokens):
            nursery.start_soon(one, i, token)
        with trio.move_on_after(sc.duration_s):
            await state.stop_sending.wait()
        state.stop_sending.set()
        state.phase = "finishing"
        nursery.cancel_scope.deadline = trio.current_time() + SENDER_GRACE_S


async def _load_and_drain(
    state: RunState, base_url: str, prov: Provisioned, receivers: MailboxConsumers
) -> float:
    """The load, then the drain; returns how long the drain took."""
    sc = state.scenario
    async with trio.open_nursery() as consumers:
        state.t_load = state.clock()
        if sc.receive == "concurrent":
            state.t_receive = state.t_load
            await consumers.start(receivers.run)
        state.phase = "load"
        await _senders(state, base_url, prov.sender_tokens)
        state.t_load_end = state.clock()
        state.phase = "drain"
        if sc.receive == "after":
            state.t_receive = state.clock()
            await consumers.start(receivers.run)
        t_drain = state.clock()
        state.check_drained()
        with trio.move_on_after(sc.drain_s):
            await state.drained.wait()
        drain_s = state.clock() - t_drain
        state.phase = "stop"
        receivers.stop()
        consumers.cancel_scope.deadline = trio.current_time() + STOP_TIMEOUT_S
    state.phase = "done"
    return drain_s


async def run_scenario(
    scenario: Scenario,
    broker: str,
    admin_token: str,
    *,
    display: bool = False,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Run ``scenario`` against ``broker`` and return the report (see :mod:`.report`).

    Error handling:
        Raises :class:`BenchError` when the broker cannot be reached, a set-up step is refused,
        or the scenario needs a channel the broker does not have. Problems during the load are
        not raised: they are counted in the report (``events``, ``errors``, the accounting).
    """
    from broker.loadtest.provision import SetupError
    from broker.loadtest.stream import StreamUnavailable, check_stream

    run_id = run_id or secrets.token_hex(4)
    started = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    base_url = broker.rstrip("/")
    async with client(base_url, timeout=30.0) as http:
        t_setup = time.perf_counter()
        try:
            with trio.fail_after(SETUP_TIMEOUT_S):
                prov = await provision(http, admin_token, scenario, run_id)
                if scenario.mode == "stream":
                    await check_stream(base_url, prov.sender_tokens[0])
        except (SetupError, StreamUnavailable) as exc:
            raise BenchError(str(exc)) from None
        except trio.TooSlowError:
            raise BenchError(f"set-up did not finish within {SETUP_TIMEOUT_S:g} s") from None
        setup = {
            "seconds": round(time.perf_counter() - t_setup, 3),
            "requests": prov.requests,
            "authorities": list(prov.authorities),
            "senders": len(prov.sender_tokens),
            "receivers": len(prov.receiver_tokens),
            "mailboxes": [m.id for m in prov.mailboxes],
            **prov.topology.summary(),
        }
        ids = IdScheme(run_id)
        factory = EnvelopeFactory(
            prov.topology, prov.authorities, ids, scenario.envelope_bytes, run_id=run_id
        )
        setup["envelope_bytes"] = len(factory.build(0, factory.type_of(0), time.time_ns()))
        ledger = Ledger(
            prov.topology.routes, scenario.mailboxes, max_envelopes=scenario.planned_envelopes()
        )
        state = RunState(scenario, ledger, factory, ids)
        # the baselines run before the load and again after it (in the mirrored order), so
        # that a machine whose speed drifts during the run moves both sides of the ratio
        # alike; the POST carries a request shaped like the scenario's: one envelope of it
        body = factory.build(0, factory.type_of(0), time.time_ns())
        baselines = []
        if scenario.baseline_s > 0:
            state.phase = "baseline"
            baselines.append(await run_baseline(base_url, scenario.senders, scenario.baseline_s))
            baselines.append(
                await run_baseline(base_url, scenario.senders, scenario.baseline_s, body)
            )
        before = await _scrape(http, admin_token, state)
        host_before = host_load()
        cpu0 = time.process_time()
        receivers: MailboxConsumers = (
            StreamReceivers(state, base_url, prov.mailboxes)
            if scenario.consume == "stream"
            else Receivers(state, base_url, prov.mailboxes)
        )
        hard = scenario.duration_s + SENDER_GRACE_S + scenario.drain_s + STOP_TIMEOUT_S + 30
        drain_s = 0.0
        with contextlib.ExitStack() as stack:
            shown = stack.enter_context(Display(state)) if display else None
            with trio.move_on_after(hard) as hard_scope:
                async with trio.open_nursery() as outer:
                    outer.start_soon(_ticker, state)
                    if shown is not None:
                        outer.start_soon(shown.run)
                    drain_s = await _load_and_drain(state, base_url, prov, receivers)
                    outer.cancel_scope.cancel()
        if hard_scope.cancelled_caught:
            state.note_error("hard_deadline", f"the run was cut off after {hard:g} s")
        cpu = time.process_time() - cpu0
        host = {"before": host_before, "after": host_load()}
        after = await _scrape(http, admin_token, state)
        if baselines:
            state.phase = "baseline"
            post = await run_baseline(base_url, scenario.senders, scenario.baseline_s, body)
            get = await run_baseline(base_url, scenario.senders, scenario.baseline_s)
            state.baseline = bracket(baselines[0], get)
            state.baseline_post = bracket(baselines[1], post)
        with trio.move_on_after(CLEANUP_TIMEOUT_S) as cleanup_scope:
            setup["cleanup"] = await cleanup(http, prov)
        if cleanup_scope.cancelled_caught:
            state.note_error("cleanup", f"not finished within {CLEANUP_TIMEOUT_S:g} s")
    server = delta(before, after) if before is not None and after is not None else None
    return build_report(
        state,
        ledger.close(),
        broker=base_url,
        run_id=run_id,
        started=started,
        setup=setup,
        server=server,
        drain_s=drain_s,
        client_cpu_s=cpu,
        host=host,
    )

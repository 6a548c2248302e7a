"""``dueslag bench``: a load tester that drives a realistic municipal workload through the
public API and accounts for every envelope it sends.

Modules (each one noun):

=================  ==========================================================================
``scenario``       the workload as data (:class:`Scenario`), the built-ins, overrides
``topology``       which mailboxes subscribe to which catalog types (pure)
``envelopes``      realistic envelopes from the catalog, BeskedIds that encode their number
``provision``      systems, authority tokens, approved agreements, mailboxes, subscriptions
``ledger``         loss and duplicate accounting (pure)
``latency``        HDR histograms: send→confirm, send→delivered
``publishers``     HTTP senders (batch, single), pacing, retries; the /healthz baselines
``leanhttp``       the senders' HTTP/1.1 client (h11 over trio)
``stream``         the WebSocket publish channel (its protocol lives only here)
``leanws``         the streams' WebSocket client (wsproto over trio, no helper tasks)
``receivers``      long-poll + ack consumers
``consumers``      consume-stream consumers (credit, ack frames)
``transport``      the httpx clients of set-up, polls and clean-up; the TLS context
``state``          one run's shared state
``servermetrics``  the broker's counters before and after
``runner``         one run: set-up, load, drain, report
``report``         the JSON result and the PNG chart
``progress``       the live display (rich)
``command``        ``add_bench_arguments`` / ``run_bench`` for ``cli.py``
=================  ==========================================================================
"""

from broker.loadtest.command import add_bench_arguments as add_bench_arguments
from broker.loadtest.command import run_bench as run_bench
from broker.loadtest.scenario import BUILTIN as BUILTIN
from broker.loadtest.scenario import Scenario as Scenario
from broker.loadtest.scenario import ScenarioError as ScenarioError
from broker.loadtest.scenario import load_scenario as load_scenario

__all__ = [
    "BUILTIN",
    "Scenario",
    "ScenarioError",
    "add_bench_arguments",
    "load_scenario",
    "run_bench",
]

"""``bench/compare_rabbitmq.py`` and its helpers, without RabbitMQ, node or a server.

The pure parts: the RabbitMQ topology routes every message type to exactly the mailboxes
``dueslag bench`` plans for it (through real AMQP topic matching), the municipalities are the
ones its set-up picks, the envelope file holds the bench's own envelopes, and the contract's
JSON rows, ratios, table and arguments.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

from broker.loadtest.scenario import BUILTIN, with_overrides
from broker.loadtest.topology import CatalogType, catalog_types, plan_topology

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import compare_rabbitmq as cmp  # noqa: E402
import comparison  # noqa: E402
import rabbitmq_node  # noqa: E402
from rabbitmq_workload import (  # noqa: E402
    AmqpWorkload,
    plan,
    queue_name,
    rabbit_topology,
    route,
    topic_matches,
    write_envelopes,
)

CONTRACT_ROW = {"name", "dueslag_per_s", "rabbitmq_per_s", "ratio"}


CATALOG_FILE = Path(__file__).resolve().parent.parent / "catalog" / "data" / "demo_catalog.json"


def _catalog_body() -> bytes:
    """The bundled catalog as ``GET /v1/catalog/message-types`` answers it."""
    data = json.loads(CATALOG_FILE.read_text())
    types = data["message_types"] if isinstance(data, dict) else data
    return json.dumps({"message_types": types}).encode()


def _catalog() -> list[CatalogType]:
    return catalog_types(_catalog_body())


AUTHORITIES = [{"cvr": f"{29189000 + i}", "kommunekode": f"{100 + i}"} for i in range(98)] + [
    {"cvr": "12345678", "kommunekode": None}  # not a bundled municipality: never picked
]


# ---------------------------------------------------------------- topology


@pytest.mark.parametrize("name", ["fanout", "stream", "drain"])
def test_each_type_reaches_the_mailboxes_dueslag_plans(name: str) -> None:
    sc = BUILTIN[name]
    topology, _ = plan(_catalog_body(), AUTHORITIES, sc)
    assert topology == plan_topology(_catalog(), sc)  # the bench's own plan
    queues, bindings = rabbit_topology(topology)
    assert queues == [queue_name(m) for m in range(10)]
    assert len(set(queues)) == 10
    for t, mailboxes in enumerate(topology.routes):
        got = route(bindings, topology.types[t].id)
        assert got == [queues[m] for m in mailboxes]
        assert 1 <= len(got) <= 3
    assert len(bindings) == sum(len(r) for r in topology.routes)


def test_an_unsubscribed_type_is_routed_nowhere() -> None:
    sc = with_overrides(BUILTIN["fanout"], match_ratio=0.5)
    topology, _ = plan(_catalog_body(), AUTHORITIES, sc)
    _, bindings = rabbit_topology(topology)
    assert topology.routes[-1] == ()
    assert route(bindings, topology.types[-1].id) == []


def test_authorities_are_the_seeds_sample_of_the_bundled_municipalities() -> None:
    sc = with_overrides(BUILTIN["fanout"], authorities=3)
    _, cvrs = plan(_catalog_body(), AUTHORITIES, sc)
    bundled = sorted(a["cvr"] for a in AUTHORITIES if a["kommunekode"])
    assert cvrs == sorted(random.Random(sc.seed).sample(bundled, 3))
    assert "12345678" not in cvrs
    with pytest.raises(ValueError, match="bundled"):
        plan(_catalog_body(), AUTHORITIES[:2], sc)


@pytest.mark.parametrize(
    ("pattern", "key", "hit"),
    [
        ("a.b", "a.b", True),
        ("a.b", "a.c", False),
        ("a.*", "a.b", True),
        ("a.*", "a.b.c", False),
        ("a.#", "a", True),
        ("a.#", "a.b.c", True),
        ("#", "x.y", True),
        ("*.b.#", "a.b", True),
        ("7654895c-a3f3-4c77", "7654895c-a3f3-4c77", True),
    ],
)
def test_topic_matching(pattern: str, key: str, hit: bool) -> None:
    assert topic_matches(pattern, key) is hit


def test_envelope_file_holds_the_benchs_envelopes_with_their_routing_keys(tmp_path: Path) -> None:
    sc = BUILTIN["fanout"]
    topology, cvrs = plan(_catalog_body(), AUTHORITIES, sc)
    path = tmp_path / "env.tsv"
    info = write_envelopes(path, topology, cvrs, sc, 1000)
    lines = path.read_bytes().split(b"\n")
    assert len(lines) == 1000
    ids = {t.id for t in topology.types}
    for n, line in enumerate(lines):
        key, _, body = line.partition(b"\t")
        env = json.loads(body)
        assert key.decode() in ids
        assert env["Beskedkuvert"]["Filtreringsdata"]["Beskedtype"]["UUIDIdentifikator"] == (
            key.decode()
        )
        assert env["BeskedId"]["UUIDIdentifikator"].endswith(f"{n:012x}")
    assert 1000 <= info["envelope_bytes_min"] <= info["envelope_bytes_max"] <= 1030
    assert info["mean_fanout"] == pytest.approx(topology.expected_fanout(), abs=0.01)


def test_client_config_carries_the_topology(tmp_path: Path) -> None:
    topology, _ = plan(_catalog_body(), AUTHORITIES, BUILTIN["fanout"])
    wl = AmqpWorkload("amqp://guest:guest@127.0.0.1:5999/%2F", topology, tmp_path / "e", tmp_path)
    cfg = wl.config(window=1000)
    assert cfg["url"].startswith("amqp://guest:guest@127.0.0.1:")
    assert cfg["window"] == 1000
    assert [tuple(b) for b in cfg["bindings"]] == wl.bindings
    json.dumps(cfg)  # the client reads it as JSON


# ---------------------------------------------------------------- result, table, arguments


def test_rows_have_the_contract_keys_and_ratio_is_dueslag_over_rabbitmq() -> None:
    r = cmp.row("publish-batch", 40_000.0, 8_000.0, dueslag={"valid": True})
    assert set(r) >= CONTRACT_ROW
    assert r["ratio"] == 5.0
    assert cmp.row("consume", None, 32_000.0)["ratio"] is None
    assert cmp.row("consume", 1.0, 0.0)["ratio"] is None
    assert comparison.ratio(1.0, 3.0) == 0.33


def test_table_lists_every_row() -> None:
    rows = [cmp.row("publish-batch", 2088.8, 8002.0), cmp.row("consume", None, 31845.0)]
    text = cmp.table(rows)
    assert text.splitlines()[0].split() == ["scenario", "dueslag/s", "rabbitmq/s", "ratio"]
    assert "2,088.8" in text
    assert "0.26" in text
    assert text.splitlines()[2].split()[1] == "-"


def test_rounds_combine_into_medians_and_the_median_of_the_rounds_ratios() -> None:
    rounds = [
        [cmp.row("publish-batch", 100.0, 50.0), cmp.row("consume", 10.0, None)],
        [cmp.row("publish-batch", 300.0, 100.0), cmp.row("consume", 30.0, 10.0)],
        [cmp.row("publish-batch", 200.0, 200.0), cmp.row("consume", None, 20.0)],
    ]
    batch, consume = comparison.combine(rounds)
    assert set(batch) >= CONTRACT_ROW and batch["name"] == "publish-batch"
    assert (batch["dueslag_per_s"], batch["rabbitmq_per_s"]) == (200.0, 100.0)
    assert batch["ratio"] == 2.0  # median of 2.0, 3.0, 1.0: not 200 / 100 by chance alone
    assert [r["ratio"] for r in batch["rounds"]] == [2.0, 3.0, 1.0]
    # a side's missing figure leaves that round out of its median and of the ratios
    assert (consume["dueslag_per_s"], consume["rabbitmq_per_s"]) == (20.0, 15.0)
    assert consume["ratio"] == 3.0
    only_one_side = comparison.combine([[cmp.row("consume", 5.0, None)]])
    assert only_one_side[0]["ratio"] is None


def _report(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "scenario": "fanout", "sent": 10, "confirmed": 10, "delivered": 19, "lost": 0,
        "duplicates": 0, "throughput": {"publish_per_s": 100.0, "deliver_per_s": 190.0},
        "checks": {"envelopes_accepted": True}, "timing": {"client_cpu_share": 0.3},
    }  # fmt: skip
    return {**base, **over}


def test_dueslag_figure_takes_the_key_and_says_whether_the_run_counts() -> None:
    fig, info = cmp.dueslag_figure(_report(), "deliver_per_s")
    assert fig == 190.0
    assert info["valid"] is True
    assert cmp.dueslag_figure(_report(lost=1), "publish_per_s")[1]["valid"] is False
    assert cmp.dueslag_figure(_report(confirmed=9), "publish_per_s")[1]["valid"] is False
    bad = _report(checks={"envelopes_accepted": False})
    assert cmp.dueslag_figure(bad, "publish_per_s")[1]["valid"] is False


def test_arguments() -> None:
    args = cmp.parse_args(["--json", "x.json"])
    assert args.duration == 10.0
    assert args.scenarios == ["publish-batch", "publish-stream", "consume"]
    assert set(args.scenarios) == set(cmp.SCENARIOS)
    args = cmp.parse_args(["--json", "x.json", "--duration", "3", "--scenarios", "consume"])
    assert (args.duration, args.scenarios) == (3.0, ["consume"])
    assert args.workers == 1
    assert cmp.parse_args(["--json", "x.json", "--workers", "2"]).workers == 2
    assert args.rounds == 1
    assert cmp.parse_args(["--json", "x.json", "--rounds", "3"]).rounds == 3
    for bad in (
        ["--duration", "0"],
        ["--scenarios", "nope"],
        ["--window", "0"],
        ["--workers", "0"],
        ["--workers", "9"],
        ["--rounds", "0"],
        ["--rounds", "11"],
    ):
        with pytest.raises(SystemExit):
            cmp.parse_args(["--json", "x.json", *bad])
    with pytest.raises(SystemExit):
        cmp.parse_args([])  # --json is required


def test_both_sides_keep_the_same_envelopes_in_flight() -> None:
    assert cmp.in_flight_args("publish-batch", 1000, 1) == ["--senders", "10"]  # 10 x 100
    assert cmp.in_flight_args("publish-batch", 1000, 2) == ["--senders", "20"]
    assert cmp.in_flight_args("publish-batch", 400, 1) == []  # the built-in's own 4 x 100
    assert cmp.in_flight_args("publish-batch", 10, 1) == ["--senders", "1"]
    assert cmp.in_flight_args("publish-batch", 10**6, 1) == ["--senders", "256"]  # its bound
    assert cmp.in_flight_args("publish-stream", 1000, 1) == []  # one stream, window 1,000
    assert cmp.in_flight_args("publish-stream", 1000, 3) == ["--senders", "3"]
    # consume's ingest (its publish-alone row) keeps RabbitMQ's prefill in flight too
    assert cmp.in_flight_args("consume", 1000, 1) == ["--senders", "10"]
    assert cmp.in_flight_args("consume", 400, 1) == []  # the built-in drain's own 4 x 100
    assert BUILTIN["stream"].window == 1000


def test_scenarios_map_to_dueslag_builtins() -> None:
    assert cmp.SCENARIOS["publish-batch"] == ("fanout", "publish_per_s")
    assert cmp.SCENARIOS["publish-stream"] == ("stream", "publish_per_s")
    assert cmp.SCENARIOS["consume"] == ("drain", "deliver_per_s")
    for builtin, _ in cmp.SCENARIOS.values():
        assert BUILTIN[builtin].mailboxes == 10
        assert (BUILTIN[builtin].fanout_min, BUILTIN[builtin].fanout_max) == (1, 3)


def test_the_dueslag_server_keeps_access_control_on(tmp_path: Path) -> None:
    cmd = cmp.DueslagServer(tmp_path / "d").command(12345)
    assert "--no-access-control" not in cmd
    assert "--no-sync" not in cmd
    assert "127.0.0.1:12345" in cmd
    assert "--workers" not in cmd
    cmd = cmp.DueslagServer(tmp_path / "d", workers=2).command(12345)
    assert cmd[cmd.index("--workers") + 1] == "2"
    assert "--no-access-control" not in cmd
    served = cmp.DueslagServer(tmp_path / "d", extra_args=["--writer", "process"])
    cmd = served.command(12345)
    assert cmd[cmd.index("--writer") + 1] == "process"


def test_the_writer_mode_is_an_option_of_the_comparison() -> None:
    assert cmp.parse_args(["--json", "x.json"]).writer == "auto"
    assert cmp.parse_args(["--json", "x.json", "--writer", "thread"]).writer == "thread"
    with pytest.raises(SystemExit):
        cmp.parse_args(["--json", "x.json", "--writer", "fork"])


def test_the_rabbitmq_node_is_private_and_on_loopback(tmp_path: Path) -> None:
    node = rabbitmq_node.RabbitNode(log=lambda _: None)
    node.dir, node.port, node.epmd_port, node.dist_port = tmp_path, 5999, 5998, 5997
    env = node._env()
    assert env["RABBITMQ_NODE_IP_ADDRESS"] == "127.0.0.1"
    assert env["ERL_EPMD_ADDRESS"] == "127.0.0.1"
    assert env["HOME"] == str(tmp_path)
    assert env["RABBITMQ_MNESIA_BASE"].startswith(str(tmp_path))
    assert env["RABBITMQ_ENABLED_PLUGINS"] == ""
    node._write_config()
    assert (tmp_path / "enabled_plugins").read_text().strip() == "[]."
    assert "127.0.0.1:5999" in (tmp_path / "rabbitmq.conf").read_text()
    assert node.url == "amqp://guest:guest@127.0.0.1:5999/%2F"
    node.stop()  # never started: nothing to stop, and the directory is removed
    assert not tmp_path.exists()


def test_publish_alone_is_read_off_the_consume_row() -> None:
    consume = cmp.row(
        "consume",
        30_000.0,
        20_000.0,
        dueslag={"valid": True, "publish_per_s": 8_000.0, "deliver_per_s": 30_000.0},
        rabbitmq={"prefill": {"per_s": 4_000.0, "confirmed": 40_000}, "consume": {"per_s": 2e4}},
    )
    alone = comparison.alone_row(consume)
    assert set(alone) >= CONTRACT_ROW and alone["name"] == "publish-alone"
    assert (alone["dueslag_per_s"], alone["rabbitmq_per_s"], alone["ratio"]) == (
        8000.0,
        4000.0,
        2.0,
    )
    assert alone["dueslag"]["valid"] is True and alone["dueslag"]["from"] == "consume"
    assert alone["rabbitmq"]["publish"]["confirmed"] == 40_000
    # a side that failed leaves the row without a ratio, not without the row
    failed = cmp.row("consume", None, None, dueslag={"error": "x"}, rabbitmq={"error": "y"})
    empty = comparison.alone_row(failed)
    assert (empty["dueslag_per_s"], empty["rabbitmq_per_s"], empty["ratio"]) == (None, None, None)
    assert empty["rabbitmq"] == {"error": "y"}

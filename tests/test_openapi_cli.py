"""The OpenAPI document matches the real routes; the CLI maps its flags to the config."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import cli
from broker.config import BrokerConfig
from broker.http import create_app, streams
from broker.http.app import raw_routes
from broker.http.openapi import openapi_document
from broker.service import Broker
from store import MemoryStore
from tests.serverproc import REPO_ROOT


def stream_paths(broker: Broker) -> set[str]:
    """The WebSocket stream routes, as ``{name}`` paths (their patterns name the groups)."""
    return {re.sub(r"\(\?P<([^>]+)>[^)]*\)", r"{\1}", p) for p in streams.routes(broker)}


def _app_routes() -> set[tuple[str, str]]:
    broker = Broker(MemoryStore(), BrokerConfig(), admin_token="x")
    app = create_app(broker)
    # the WebSocket streams are served in front of Quart (broker/http/rawws.py): a GET upgrade
    routes = {("get", path) for path in stream_paths(broker)}
    # and so are the send endpoints and the probes (broker/http/rawhttp.py)
    routes |= {(method.lower(), path) for method, path in raw_routes(broker)}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                routes.add((method.lower(), path))
    return routes


def test_openapi_documents_exactly_the_routes() -> None:
    doc = openapi_document()
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    normalise = lambda s: {(m, re.sub(r"\{[^}]+\}", "{}", p)) for m, p in s}  # noqa: E731
    assert normalise(documented) == normalise(_app_routes())
    assert doc["openapi"] == "3.1.0"
    assert "Haendelsesbesked" in doc["components"]["schemas"]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            public = path in ("/healthz", "/readyz") or (
                method == "get" and path.startswith("/v1/catalog/")
            )
            assert ("security" in op) != public, (method, path)


@pytest.mark.parametrize(
    ("argv", "field", "value"),
    [
        (["serve", "--bind", "0.0.0.0:9000"], "bind", "0.0.0.0:9000"),
        (["serve", "--data", "/tmp/x"], "data", "/tmp/x"),
        (["serve", "--workers", "1"], "workers", 1),
        (["serve", "--admin-token", "t"], "admin_token", "t"),
        (["serve", "--demo"], "demo", True),
        (["serve", "--no-sync"], "no_sync", True),
        (["serve"], "writer", "auto"),
        (["serve", "--writer", "process"], "writer", "process"),
        (["poll", "mb", "--max", "5", "--wait", "2.5", "--ack"], "wait", 2.5),
        (["send", "-", "--batch"], "batch", True),
        (["admin", "system", "create", "cpr"], "name", "cpr"),
        (["mailbox", "create", "inbox", "--strict"], "strict", True),
        (["subscription", "create", "mb", "a", "b"], "message_types", ["a", "b"]),
        (
            ["bench", "--scenario", "fanout", "--duration", "3", "--json", "r.json"],
            "scenario",
            "fanout",
        ),
        (["agreement", "decide", "a1", "approve"], "decision", "approve"),
    ],
)
def test_cli_flags(argv: list[str], field: str, value: object) -> None:
    args = cli.build_parser().parse_args(argv)
    assert getattr(args, field) == value


def test_cli_reports_unreachable_broker(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["mailbox", "list", "--url", "http://127.0.0.1:9", "--token", "t"]) == 1
    assert "unreachable" in capsys.readouterr().err


def test_cli_refuses_a_worker_count_out_of_range(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--workers", "0"]) == 2
    assert "--workers" in capsys.readouterr().err


def test_send_detects_content_type() -> None:
    assert cli._detect("a.xml", b"<x/>", None, False) == ("application/xml", False)
    assert cli._detect("-", b"  [ {} ]", None, False) == ("application/json", True)
    assert cli._detect("a.ndjson", b"{}", None, False) == ("application/x-ndjson", True)
    assert cli._detect("a.json", b"{}", None, False) == ("application/json", False)


async def test_cli_against_a_live_server(
    server: object, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI's client commands end to end (the quick start's path), in a worker thread."""
    import json as _json

    import trio

    from tests.conftest import ADMIN_TOKEN, SAMPLES, TYPE1

    url = server.url  # type: ignore[attr-defined]

    def run(*argv: str, token: str = ADMIN_TOKEN) -> object:
        capsys.readouterr()
        assert cli.main([*argv, "--url", url, "--token", token]) == 0
        out = capsys.readouterr().out
        return _json.loads(out) if out.strip().startswith(("{", "[")) else out

    system = await trio.to_thread.run_sync(lambda: run("admin", "system", "create", "cli"))
    token = system["token"]  # type: ignore[index]
    mb = (await trio.to_thread.run_sync(lambda: run("mailbox", "create", "inbox", token=token)))[
        "id"
    ]  # type: ignore[index]
    await trio.to_thread.run_sync(lambda: run("subscription", "create", mb, TYPE1, token=token))
    sent = await trio.to_thread.run_sync(
        lambda: run("send", str(SAMPLES / "testbesked01.xml"), token=token)
    )
    assert sent["mailboxes"] == 1  # type: ignore[index]
    assert (await trio.to_thread.run_sync(lambda: run("mailbox", "show", mb, token=token)))[
        "ready"
    ] == 1  # type: ignore[index]
    xml = await trio.to_thread.run_sync(
        lambda: run("poll", mb, "--xml", "--ack", "--lease", "5", token=token)
    )
    assert (
        isinstance(xml, str)
        and "Haendelsesbesked" in xml
        and "callCPRBasicInformationResponse" in xml
    )
    shown = await trio.to_thread.run_sync(lambda: run("mailbox", "show", mb, token=token))
    assert (shown["ready"], shown["in_flight"], shown["copy"]) == (0, 0, 1)  # type: ignore[index]


def test_serve_on_a_busy_port_says_so(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "cli",
                "serve",
                "--data",
                str(tmp_path / "d"),
                "--bind",
                f"127.0.0.1:{port}",
                "--admin-token",
                "t" * 32,
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr
    assert "Traceback" not in out.stderr

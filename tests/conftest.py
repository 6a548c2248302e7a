"""Shared fixtures: a fake wall clock, and a real server (LMDB in tmp, HTTP on 127.0.0.1:0)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from broker.config import BrokerConfig
from broker.server import ServerInfo, serve

ADMIN_TOKEN = "test-admin-token"
SAMPLES = Path(__file__).parent / "data" / "kombit"
TYPE1 = "7654895c-a3f3-4c77-8afd-4c77330f963c"  # KOMBIT Test/TestbeskedType1
TYPE2 = "832d0676-d0a0-4522-8f57-ac126dc8270e"  # KOMBIT Test/TestbeskedType2
TYPE3 = "b677c97e-aa5e-430e-9f60-9bbbbdb4ea1b"  # KOMBIT Test/TestbeskedType3


class FakeClock:
    """Wall-clock milliseconds that only move when a test says so."""

    def __init__(self, start_ms: int = 1_800_000_000_000) -> None:
        self.now = start_ms

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1000)


class Api:
    """A tiny async client of one running server, authenticated as one principal."""

    def __init__(self, http: httpx.AsyncClient, token: str) -> None:
        self.http = http
        self.headers = {"Authorization": f"Bearer {token}"}

    async def call(
        self, method: str, path: str, *, expect: int | None = None, **kw: Any
    ) -> httpx.Response:
        headers = {**self.headers, **kw.pop("headers", {})}
        resp = await self.http.request(method, path, headers=headers, **kw)
        if expect is not None:
            assert resp.status_code == expect, (resp.status_code, resp.text)
        return resp

    async def system(self, name: str = "sys") -> Api:
        r = await self.call("POST", "/v1/systems", json={"name": name}, expect=201)
        return Api(self.http, r.json()["token"])

    async def mailbox(self, *types: str, strict: bool = False, **options: Any) -> str:
        r = await self.call(
            "POST", "/v1/mailboxes", json={"name": "mb", "strict": strict, **options}, expect=201
        )
        mb: str = r.json()["id"]
        if types:
            await self.call(
                "POST",
                f"/v1/mailboxes/{mb}/subscriptions",
                json={"message_types": list(types)},
                expect=201,
            )
        return mb

    async def send(self, envelope: dict[str, Any], expect: int = 202) -> dict[str, Any]:
        r = await self.call("POST", "/v1/messages", json=envelope, expect=expect)
        return r.json()  # type: ignore[no-any-return]

    async def poll(self, mb: str, **params: Any) -> list[dict[str, Any]]:
        r = await self.call("GET", f"/v1/mailboxes/{mb}/messages", params=params, expect=200)
        return r.json()["deliveries"]  # type: ignore[no-any-return]

    async def stats(self, mb: str) -> dict[str, Any]:
        return (await self.call("GET", f"/v1/mailboxes/{mb}", expect=200)).json()  # type: ignore[no-any-return]


def envelope(
    message_type: str = TYPE1, besked_id: str | None = None, **filtrering: Any
) -> dict[str, Any]:
    """A small valid canonical envelope."""
    import uuid

    return {
        "BeskedId": {"UUIDIdentifikator": besked_id or str(uuid.uuid4())},
        "BeskedVersion": "1.0",
        "Beskedkuvert": {
            "Filtreringsdata": {"Beskedtype": {"UUIDIdentifikator": message_type}, **filtrering},
            "Leveranceinformation": {
                "Dannelsestidspunkt": {"TidsstempelDatoTid": "2026-11-27T08:00:00Z"}
            },
        },
        "Beskeddata": [{"json": {"hello": "world", "n": 1}}],
    }


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def server(nursery: trio.Nursery, tmp_path: Path, clock: FakeClock) -> ServerInfo:
    config = BrokerConfig(
        data_dir=str(tmp_path / "data"),
        bind="127.0.0.1:0",
        admin_token=ADMIN_TOKEN,
        sweep_interval_s=3600,  # tests sweep explicitly, after moving the clock
        graceful_timeout_s=0.5,
        access_control=False,  # the delivery core; catalog and agreements: tests/test_access_e2e.py
        writer="process",  # what "auto" picks on a machine with cores to spare (thread mode:
        # tests/test_actors.py, tests/test_writer_process.py, and the workers' tests)
    )
    info: ServerInfo = await nursery.start(partial(serve, config, clock=clock))
    return info


@pytest.fixture
async def http(server: ServerInfo) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture
def admin(http: httpx.AsyncClient) -> Api:
    return Api(http, ADMIN_TOKEN)

"""Fixtures for the store conformance suite: every test runs against each backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from storekit import BACKENDS, make_store

from store.engine import KvStore


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def store(backend: str, tmp_path: Path) -> Iterator[KvStore]:
    opened = make_store(backend, tmp_path / "env")
    yield opened
    opened.close()

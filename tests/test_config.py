"""Admin token and instance id files: created once, atomically, mode 0600; the writer mode."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from broker.config import (
    BrokerConfig,
    available_cpus,
    load_or_create_admin_token,
    load_or_create_instance_id,
)


def test_admin_token_generated_once_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DUESLAG_ADMIN_TOKEN", raising=False)
    token, new = load_or_create_admin_token(tmp_path)
    assert new and token.startswith("adm_") and len(token) > 30
    assert stat.S_IMODE((tmp_path / "admin-token").stat().st_mode) == 0o600
    again, new2 = load_or_create_admin_token(tmp_path)
    assert (again, new2) == (token, False)
    assert [p.name for p in tmp_path.iterdir()] == ["admin-token"]  # no temp files left


def test_admin_token_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DUESLAG_ADMIN_TOKEN", "from-env")
    assert load_or_create_admin_token(tmp_path) == ("from-env", False)
    assert load_or_create_admin_token(tmp_path, "explicit") == ("explicit", False)
    assert not (tmp_path / "admin-token").exists()


def test_empty_file_from_a_crash_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DUESLAG_ADMIN_TOKEN", raising=False)
    (tmp_path / "admin-token").write_text("")
    (tmp_path / "instance-id").write_text("\n")
    token, new = load_or_create_admin_token(tmp_path)
    assert new and token
    instance = load_or_create_instance_id(tmp_path)
    assert len(instance) == 36 and load_or_create_instance_id(tmp_path) == instance


@pytest.mark.parametrize(
    ("writer", "workers", "cpus", "process"),
    [
        ("auto", 1, 2, False),  # this project's 2-core box: the writer process would compete
        ("auto", 1, 3, True),
        ("auto", 2, 4, False),
        ("auto", 2, 8, True),
        ("process", 1, 1, True),
        ("thread", 4, 64, False),
    ],
)
def test_writer_mode(
    monkeypatch: pytest.MonkeyPatch, writer: str, workers: int, cpus: int, process: bool
) -> None:
    monkeypatch.setattr("broker.config.available_cpus", lambda: cpus)
    config = BrokerConfig(writer=writer, workers=workers)  # type: ignore[arg-type]
    assert config.writer_process() is process


def test_available_cpus_counts_what_this_process_may_use() -> None:
    assert 1 <= available_cpus() <= (os.cpu_count() or 1)

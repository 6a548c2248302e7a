"""The in-process benchmark scripts still run: they reach into the broker's internals
(``bench/pipeline_bench.py`` prepares a store as ``serve`` does), which can drift."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.serverproc import REPO_ROOT


def test_pipeline_bench_runs_every_stage_and_reports_a_total() -> None:
    r = subprocess.run(
        [sys.executable, "bench/pipeline_bench.py", "--batch", "10", "--batches", "2"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    for stage in ("decode", "prepare", "commit", "lease", "render", "ack"):
        assert re.search(rf"^\s+{stage}\s+\d", r.stdout, re.M), (stage, r.stdout)
    assert re.search(r"total\s+[\d.]+\s+\(= [\d,]+ envelopes/s of one core\)", r.stdout)


def test_pipeline_bench_counts_the_records_each_stage_touches() -> None:
    r = subprocess.run(
        [sys.executable, "bench/pipeline_bench.py", "--batch", "10", "--batches", "2", "--records"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    rows = dict(
        (m[1], (float(m[2]), float(m[3]), float(m[4])))
        for m in re.finditer(r"^\s+(\w+)\s+([\d.]+)\s+/\s+([\d.]+)\s+/\s+([\d.]+)$", r.stdout, re.M)
    )
    assert set(rows) == {"decode", "prepare", "commit", "lease", "render", "ack"}, r.stdout
    # decoding, routing and rendering never touch the store
    assert rows["decode"] == rows["render"] == (0.0, 0.0, 0.0)
    # a publish writes at least its body, its reference count, its delivery and its dedup record
    assert rows["commit"][1] >= 4
    # a lease takes the ready record (read + delete) and reads the body; writes the flight and
    # its lease deadline; an ack reads and deletes both, and files the copy and its expiry
    assert rows["lease"][0] >= 2 and rows["lease"][1] >= 2 and rows["lease"][2] >= 1
    assert rows["ack"][0] >= 1 and rows["ack"][1] >= 2 and rows["ack"][2] >= 2
    total = re.search(r"^\s+records\s+([\d.]+) per envelope$", r.stdout, re.M)
    assert total is not None
    assert float(total[1]) == pytest.approx(sum(sum(row) for row in rows.values()), abs=0.05)

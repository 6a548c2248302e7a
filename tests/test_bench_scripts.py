"""The in-process benchmark scripts still run: they reach into the broker's internals
(``bench/pipeline_bench.py`` prepares a store as ``serve`` does), which can drift."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.serverproc import REPO_ROOT


def _pipeline_bench(*extra: str) -> str:
    """The script's output for two small batches; it must exit 0."""
    r = subprocess.run(
        [sys.executable, "bench/pipeline_bench.py", "--batch", "10", "--batches", "2", *extra],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_pipeline_bench_runs_every_stage_and_reports_a_total() -> None:
    stdout = _pipeline_bench()
    for stage in ("decode", "prepare", "commit", "lease", "render", "ack"):
        assert re.search(rf"^\s+{stage}\s+\d", stdout, re.M), (stage, stdout)
    assert re.search(r"total\s+[\d.]+\s+\(= [\d,]+ envelopes/s of one core\)", stdout)


def test_pipeline_bench_counts_the_records_each_stage_touches() -> None:
    stdout = _pipeline_bench("--records")
    rows = dict(
        (m[1], (float(m[2]), float(m[3]), float(m[4])))
        for m in re.finditer(r"^\s+(\w+)\s+([\d.]+)\s+/\s+([\d.]+)\s+/\s+([\d.]+)$", stdout, re.M)
    )
    assert set(rows) == {"decode", "prepare", "commit", "lease", "render", "ack"}, stdout
    # decoding, routing and rendering never touch the store
    assert rows["decode"] == rows["render"] == (0.0, 0.0, 0.0)
    # a publish writes at least its body, its reference count, its delivery and its dedup record
    assert rows["commit"][1] >= 4
    # a lease takes the ready record (read + delete) and reads the body, then writes the flight
    # and its lease deadline; an ack reads the flight, deletes it and its deadline, and files
    # the copy and its retention expiry
    assert rows["lease"][0] >= 2 and rows["lease"][1] >= 2 and rows["lease"][2] >= 1
    assert rows["ack"][0] >= 1 and rows["ack"][1] >= 2 and rows["ack"][2] >= 2
    total = re.search(r"^\s+records\s+([\d.]+) per envelope$", stdout, re.M)
    assert total is not None
    assert float(total[1]) == pytest.approx(sum(sum(row) for row in rows.values()), abs=0.05)


def test_pipeline_bench_puts_every_stage_beside_its_floor() -> None:
    stdout = _pipeline_bench("--floor")
    row = r"^\s+{}\s+([\d.]+)\s+\(([\d.]+)\)\s+([\d.]+)\s+\(([\d.]+)\)\s+([\d.]+)$"
    stages = ("decode", "prepare", "commit", "lease", "render", "ack")
    ours = least = 0.0
    for stage in stages:
        m = re.search(row.format(stage), stdout, re.M)
        assert m is not None, (stage, stdout)
        cpu, _, floor_cpu, _, times = (float(g) for g in m.groups())
        assert floor_cpu > 0.05, (stage, stdout)  # every floor does some work per envelope
        # the ratio is the two figures' (each printed rounded to 0.1 µs, the ratio too)
        lowest, highest = (cpu - 0.05) / (floor_cpu + 0.05), (cpu + 0.05) / (floor_cpu - 0.05)
        assert lowest - 0.05 <= times <= highest + 0.05, (stage, stdout)
        ours += cpu
        least += floor_cpu
    total = re.search(r"^\s+total\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", stdout, re.M)
    assert total is not None, stdout
    assert float(total[1]) == pytest.approx(ours, abs=0.35)
    assert float(total[2]) == pytest.approx(least, abs=0.35)

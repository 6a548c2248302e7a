"""The in-process benchmark scripts still run: they reach into the broker's internals
(``bench/pipeline_bench.py`` prepares a store as ``serve`` does), which can drift."""

from __future__ import annotations

import re
import subprocess
import sys

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

"""The benchmark runs and prints its table (a smoke run: figures are printed, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.slow
@pytest.mark.timeout(700)  # three gunicorn starts: minutes on a busy shared CI machine
def test_benchmark_smoke_runs_and_prints_a_table() -> None:
    result = subprocess.run([sys.executable, "-m", "bench.run", "--smoke"], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "| row | body | JSON floor |" in out and "HTTP p99" in out and "req/s" in out and "worker RSS" in out


@pytest.mark.parametrize("mode", [[], ["--json"], ["--http"]], ids=["split", "json", "http"])
def test_profile_modes_run_and_print_their_figures(mode: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "bench.profile", "--calls", "3", "--warmup", "1", *mode],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    wanted = {"": "validation", "--json": "parse jsonio", "--http": "http cpu"}["".join(mode)]
    assert figures[wanted] > 0, figures


def test_lock_step_ab_runs_two_trees_and_prints_both_splits_and_ratios() -> None:
    # The same tree twice: the harness runs, agrees with itself on the cards, and prints both sides.
    result = subprocess.run([sys.executable, "-m", "bench.ab", str(ROOT), str(ROOT), "--calls", "3", "--warmup", "1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["A"]["cards"] > 0 and figures["B"]["cpu"] > 0, figures
    assert figures["A/B per call (median)"]["cpu"] > 0, figures

"""benchmarks/step_breakdown.py at toy sizes: the script that measures issue 18 runs,
and the numbers it derives from the compiled programs are the ones the analysis rests on."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def table_rows(text: str, header_start: str) -> dict[str, list[str]]:
    """The rows of the markdown table whose header starts with ``header_start``, by variant."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.slow  # eight small compiles (a minute): CI's slow step
def test_the_breakdown_runs_and_the_backward_costs_two_forwards_in_flops():
    # One device, as the benchmark measures (the suite's conftest asks for eight).
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
    # With libtpu (CI's slow step has it) the XLA:TPU cost table is produced too.
    tpu = importlib.util.find_spec("libtpu") is not None
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "step_breakdown.py"), "--hidden", "64", "--layers", "2",
         "--heads", "4", "--vocab", "512", "--batch", "2", "--seq", "64", "--part-a", "40", "--rounds", "1",
         "--no-append", *(["--tpu-slice", "v5e-4"] if tpu else [])],
        cwd=REPO, env={**os.environ, "XLA_FLAGS": flags}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    main = table_rows(done.stdout, "| variant | loss |")
    split = table_rows(done.stdout, "| variant | forward ms | backward ms")
    assert set(main) == set(split) == {"full", "sparse"}
    # The sparse output layer computes the same loss as logits everywhere.
    assert abs(float(main["full"][0]) - float(main["sparse"][0])) < 1e-5
    # Every matmul's backward is two matmuls of its size: with logits everywhere (no
    # conditional whose two branches XLA's cost analysis would both count) the
    # gradient program's extra FLOPs are twice the forward's.
    assert float(split["full"][3]) == pytest.approx(2.0, abs=0.05)
    for cells in split.values():
        assert all(re.fullmatch(r"\d+(\.\d+)?", c) for c in cells)
    if tpu:
        costs = table_rows(done.stdout, "| variant | forward GFLOP | forward GB | train GFLOP")
        assert set(costs) == {"full", "sparse"}
        assert all(float(cells[4]) > 1.0 for cells in costs.values())  # the train step moves more than the forward

"""The GPU benchmark runs end to end (on CPU, tiny shapes): every row is measured, the
Fisher variants and the plan table with both solvers included."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


@pytest.mark.slow
def test_bench_gpu_smoke_measures_every_row():
    sys.path.insert(0, str(BENCH.parent))
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    text = bench.main(["--smoke", "--fisher", "sketch:1:1:iterative", "--plans"])
    scopes, plans = text.split("\n\n")
    rows = [line for line in scopes.splitlines() if line.startswith("| smoke")]
    # two lengths × 8 rows (7 + the variant), plus the batch and the generation at the
    # shorter one
    assert len(rows) == 2 * 8 + 2
    assert sum("Fisher sketch:1:1:iterative" in r for r in rows) == 2
    assert not any("out of memory" in r for r in rows)
    assert all(" s |" in r for r in rows)  # every row has a time
    plan_rows = [line for line in plans.splitlines() if line.startswith("| smoke")]
    # two distributions × each setting × two solvers
    assert len(plan_rows) == 2 * len(bench.PLAN_SETTINGS) * 2
    assert all(" ms |" in r for r in plan_rows)
    assert {r.split("|")[5].strip() for r in plan_rows} == {"gram", "iterative"}

"""The GPU benchmark runs end to end (on CPU, tiny shapes): every row is measured."""

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
    text = bench.main(["--smoke"])
    rows = [line for line in text.splitlines() if line.startswith("| smoke")]
    # two lengths × 7 rows, plus the batch and the generation at the shorter one
    assert len(rows) == 2 * 7 + 2
    assert not any("out of memory" in r for r in rows)
    assert all(" s |" in r for r in rows)  # every row has a time

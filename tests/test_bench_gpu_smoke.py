"""The GPU benchmark runs end to end (on CPU, tiny shapes): every row is measured, the
Fisher variants and the plan table with both solvers included."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import helpers

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


@pytest.mark.slow
def test_bench_gpu_smoke_measures_every_row():
    bench = load_bench()
    text = bench.main(["--smoke", "--fisher", "sketch:1:1:iterative", "--plans"])
    scopes, plans = text.split("\n\n")
    rows = [line for line in scopes.splitlines() if line.startswith("| smoke")]
    # two lengths × 13 rows (4 floors, 8 scope rows, the variant), plus the batch and the
    # generation at the shorter one
    assert len(rows) == 2 * 13 + 2
    assert sum("Semantic, through the Bridge" in r for r in rows) == 2
    assert sum("Fisher sketch:1:1:iterative" in r for r in rows) == 2
    assert sum("floor (HF SDPA, KV repeated)" in r for r in rows) == 2
    assert not any("out of memory" in r or "error" in r for r in rows)
    assert all(" s |" in r for r in rows)  # every row has a time
    plan_rows = [line for line in plans.splitlines() if line.startswith("| smoke")]
    # two distributions × each setting × two solvers
    assert len(plan_rows) == 2 * len(bench.PLAN_SETTINGS) * 2
    assert all(" ms |" in r for r in plan_rows)
    assert {r.split("|")[5].strip() for r in plan_rows} == {"gram", "iterative"}


def load_bench():
    if not helpers.has_bridge():
        pytest.skip("the benchmark wraps its models in a TransformerBridge (TransformerLens >= 3)")
    sys.path.insert(0, str(BENCH.parent))
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


@pytest.mark.slow
def test_bench_gpu_check_compares_every_scope_across_devices_and_paths():
    # on the CPU "the device" is the CPU itself: the table must still be complete and tiny
    text = load_bench().check("cpu")
    rows = [line for line in text.splitlines()[2:]]
    assert len(rows) == 7
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")[1:] if c.strip()]
        assert cells and all(float(c) < 1e-5 for c in cells), row


def test_the_kv_repeated_floor_computes_what_hugging_faces_sdpa_does():
    bench = load_bench()
    bench.register_kv_repeated()
    floor, _ = bench.build("smoke", "cpu")
    tokens = torch.randint(4, 500, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = floor.model(tokens).last_hidden_state
        with bench.attention_implementation(floor, bench.KV_REPEATED):
            repeated = floor.model(tokens).last_hidden_state
    assert floor.config._attn_implementation == "sdpa"
    torch.testing.assert_close(repeated, plain)

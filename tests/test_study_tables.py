"""benchmarks/study_tables.py: the study's four runs side by side, with signs that read right."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import study_tables
    finally:
        sys.path.remove(str(BENCHMARKS))
    return study_tables


def comparison(a: str, b: str, difference: float, p: float, metric: str = "aopc") -> dict:
    """One row as Evaluation.compare writes it: a − b."""
    return {"metric": metric, "a": a, "b": b, "mean_difference": difference, "p_value": p}


def row(text: str, start: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(start))


def test_a_pair_stored_the_other_way_round_is_reported_as_a_minus_b():
    tables = load()
    stored = pd.DataFrame(
        [
            comparison("semantic", "attention_last", 0.19, 0.01),
            comparison("attention_last", "semantic", 0.5, 0.5, metric="loo_spearman"),
        ]
    )
    line = row(tables.pair_table({"run": stored}), "| attention_last − semantic")
    assert "-0.19 (p\u00a00.010)" in line  # attention more faithful: negative, from the AOPC row


def test_every_run_shows_its_own_interval_and_a_method_on_fewer_passages_says_so(tmp_path):
    tables = load()
    s = pd.DataFrame(
        {"n": [26, 25], "aopc": [-1.0, -0.3], "aopc_low": [-1.2, -0.4], "aopc_high": [-0.8, -0.2]},
        index=pd.Index(["semantic", "integrated_gradients"], name="method"),
    )
    text = tables.metric_table({"A": s, "B": s * 2}, "aopc", {"semantic": -1.298})
    a, b = "**-1.00**<br>[-1.20,\u00a0-0.80]", "**-2.00**<br>[-2.40,\u00a0-1.60]"
    assert f"| semantic | {a} | {b} | -1.298 |" in text
    assert "| *passages* | 26 | 52 | 1000 |" in text
    subset = row(text, "| integrated_gradients")
    assert "(n\u00a0=\u00a025)" in subset and "(n\u00a0=\u00a050)" in subset


def test_a_difference_that_rounds_to_zero_shows_no_sign():
    tables = load()
    stored = pd.DataFrame([comparison("fisher", "semantic", -0.001, 0.93)])
    line = row(tables.pair_table({"run": stored}), "| fisher − semantic")
    assert "| 0.00 (p\u00a00.930) |" in line

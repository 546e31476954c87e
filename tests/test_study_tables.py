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


def test_a_pair_stored_the_other_way_round_is_reported_as_a_minus_b():
    tables = load()
    stored = pd.DataFrame(
        [
            # as Evaluation.compare writes it: semantic − attention_last
            {
                "metric": "aopc",
                "a": "semantic",
                "b": "attention_last",
                "mean_difference": 0.19,
                "p_value": 0.01,
            },
            {
                "metric": "loo_spearman",
                "a": "attention_last",
                "b": "semantic",
                "mean_difference": 0.5,
                "p_value": 0.5,
            },
        ]
    )
    text = tables.pair_table({"run": stored})
    row = next(line for line in text.splitlines() if line.startswith("| attention_last − semantic"))
    assert "-0.19 (p\u00a00.010)" in row  # attention more faithful: negative, from the AOPC row


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
    subset = next(line for line in text.splitlines() if line.startswith("| integrated_gradients"))
    assert "(n\u00a0=\u00a025)" in subset and "(n\u00a0=\u00a050)" in subset


def test_a_difference_that_rounds_to_zero_shows_no_sign():
    tables = load()
    stored = pd.DataFrame(
        [
            {
                "metric": "aopc",
                "a": "fisher",
                "b": "semantic",
                "mean_difference": -0.001,
                "p_value": 0.93,
            }
        ]
    )
    row = next(
        line
        for line in tables.pair_table({"run": stored}).splitlines()
        if line.startswith("| fisher − semantic")
    )
    assert "| 0.00 (p\u00a00.930) |" in row

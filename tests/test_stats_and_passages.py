"""The statistics behind the tables, the results file, and the LAMBADA loader."""

from __future__ import annotations

import json

import numpy as np
import pytest

import jacobian_scopes as js
from jacobian_scopes.eval import stats
from jacobian_scopes.eval.passages import (
    LAMBADA_200,
    Passage,
    as_passages,
    load_lambada,
    split_last_word,
)
from jacobian_scopes.eval.store import ResultsStore

DATA = LAMBADA_200


def pearson(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.corrcoef(a, b)[0, 1])


def test_spearman_is_the_pearson_correlation_of_average_ranks():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 30).astype(float)  # many ties
    b = a + rng.normal(0, 2, 30)
    ranks_a = [(a < v).sum() + ((a == v).sum() + 1) / 2 for v in a]
    ranks_b = [(b < v).sum() + ((b == v).sum() + 1) / 2 for v in b]
    assert stats.rankdata(a).tolist() == ranks_a
    assert stats.spearman(a, b) == pytest.approx(pearson(ranks_a, ranks_b))
    assert stats.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(stats.spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(js.errors.ScopeInputError):
        stats.spearman([1, 2], [1, 2, 3])


def test_the_bootstrap_interval_covers_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    small = rng.normal(1.0, 1.0, 20)
    large = rng.normal(1.0, 1.0, 2000)
    m, lo, hi = stats.bootstrap_ci(small, seed=3)
    assert lo < m < hi and m == pytest.approx(small.mean())
    _, lo2, hi2 = stats.bootstrap_ci(large, seed=3)
    assert hi2 - lo2 < (hi - lo) / 4
    assert stats.bootstrap_ci([np.nan, 2.0, np.inf, 4.0], seed=0)[0] == 3.0
    assert stats.bootstrap_ci([1.0, 2.0], seed=5) == stats.bootstrap_ci([1.0, 2.0], seed=5)


def test_the_paired_test_is_exact_for_few_passages_and_detects_a_shift():
    # five positive differences: 2 of the 32 sign patterns are as extreme (all +, all −)
    r = stats.paired_comparison([1.0, 2, 3, 4, 5], [0.0, 0, 0, 0, 0])
    assert r.p_value == pytest.approx(2 / 32) and r.mean_difference == 3.0 and r.n == 5
    rng = np.random.default_rng(2)
    a = rng.normal(0, 1, 200)
    shifted = stats.paired_comparison(a + 0.5 + rng.normal(0, 0.1, 200), a, seed=1)
    assert shifted.p_value < 0.001 and shifted.ci_low > 0.4
    same = stats.paired_comparison(a, a + rng.normal(0, 0.1, 200), seed=1)
    assert same.p_value > 0.01 and same.ci_low < 0 < same.ci_high
    assert stats.paired_comparison([np.nan], [1.0]).n == 0


def test_holm_adjustment():
    assert stats.holm([0.01, 0.04, 0.03]) == [0.03, 0.06, 0.06]
    assert stats.holm([0.5, np.nan])[0] == 0.5 and np.isnan(stats.holm([0.5, np.nan])[1])


def test_the_results_store_round_trips_and_guards_its_settings(tmp_path):
    path = tmp_path / "r.jsonl"
    store = ResultsStore(path, {"fractions": (0.05, 0.1)})
    store.put({"type": "method", "passage": "0:a", "name": "m", "aopc": -1.0})
    store.put({"type": "method", "passage": "0:a", "name": "m", "aopc": -2.0})  # replaces
    again = ResultsStore(path, {"fractions": [0.05, 0.1]})
    assert again.get("method", "0:a", "m")["aopc"] == -2.0
    with pytest.raises(js.errors.ScopeInputError, match="other settings"):
        ResultsStore(path, {"fractions": [0.05]})
    path.write_text(path.read_text() + '{"type": "meth')  # torn, no newline
    torn = ResultsStore(path, {"fractions": [0.05, 0.1]})
    torn.put({"type": "passage", "passage": "0:a"})
    lines = path.read_text().splitlines()
    assert all(json.loads(line) for line in lines) and len(lines) == 4
    bad = tmp_path / "bad.jsonl"
    bad.write_text('not json\n{"type": "config"}\n')
    with pytest.raises(js.errors.ScopeInputError, match="not valid JSON"):
        ResultsStore(bad, {})


def test_passages_get_stable_distinct_keys():
    ps = as_passages(["a b", [0, 5, 6], Passage("c", key="mine")])
    assert ps[0].key == as_passages(["a b"])[0].key and ps[2].key == "mine"
    with pytest.raises(js.errors.ScopeInputError, match="share a key"):
        as_passages([Passage("x", key="k"), Passage("y", key="k")])
    with pytest.raises(js.errors.ScopeInputError, match="list of prompts"):
        as_passages("a single string")
    assert split_last_word("It was her \n\n  dream ") == ("It was her", " dream")


def test_lambada_passages_end_before_their_last_word():
    ps = load_lambada(DATA)
    raw = json.loads(DATA.read_text(encoding="utf-8"))
    assert len(ps) == len(raw) == 200
    for p, entry in zip(ps, raw, strict=True):
        assert entry["text"].rstrip().endswith(p.target.strip())
        assert entry["text"].startswith(p.prompt) and not p.prompt[-1].isspace()
    assert len(load_lambada(DATA, limit=3)) == 3
    with pytest.raises(FileNotFoundError):
        load_lambada(DATA.with_name("missing.json"))

"""The faithfulness metrics: hand-checked numbers, the toy model whose causal token is known,
BOS handling, resumable results files, and the model left untouched."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import helpers
import jacobian_scopes as js
import toy
from jacobian_scopes.adapter import ModelAdapter
from jacobian_scopes.eval import baselines, evaluate, stats
from jacobian_scopes.eval.methods import Method, default_methods, random_method
from jacobian_scopes.eval.passages import Passage
from jacobian_scopes.guard import model_fingerprint
from test_model_unchanged import assert_same, user_state


def carrier_scores(tokens):
    t = tokens[0]
    return ((t == toy.CARRIER_A) | (t == toy.CARRIER_B)).float()


ORACLE = Method("oracle", lambda m, t, y: carrier_scores(t))
ANTI = Method("anti_oracle", lambda m, t, y: -carrier_scores(t))
OCCLUSION = Method("occlusion", lambda m, t, y: baselines.occlusion(m, t, y), leave_one_out=True)
SEMANTIC = Method("semantic", lambda m, t, y: js.semantic_scope(m, t, y))
GRADIENT = Method("gradient_norm", lambda m, t, y: baselines.gradient_norm(m, t, y))


@pytest.fixture
def toy_run(kind):
    model = toy.make_toy(kind)
    prompts = [t for t, _, _ in toy.prompts(12)]
    methods = [ORACLE, ANTI, OCCLUSION, SEMANTIC, GRADIENT]
    ev = evaluate.evaluate(model, prompts, methods, verbose=False)
    return ev, ev.summary(n_boot=200)


# ------------------------------------------------------------- the toy model
def test_the_toy_model_depends_on_its_carrier_token_only(kind):
    model = toy.make_toy(kind)
    adapter = ModelAdapter(model)
    for toks, where, expected in toy.prompts(4):
        r = baselines.occlusion(model, toks, measure="logprob")
        assert r.top_predictions[0].token_id == expected
        assert r.scores[where] > 4.0  # deleting the carrier costs ≥ 4 nats
        others = torch.cat([r.scores[:where], r.scores[where + 1 : -1]])
        assert others.abs().max() < 1e-5  # fillers are invisible to the attention
        assert abs(r.scores[-1]) < 0.5  # the last token only rescales the final norm
    assert adapter.n_layers == 1


def test_aopc_ranks_a_method_that_finds_the_causal_token_above_random(toy_run):
    ev, s = toy_run
    aopc = s["aopc"]
    assert aopc["oracle"] < aopc["random"] - 0.4
    assert aopc["occlusion"] == pytest.approx(aopc["oracle"], abs=0.02)
    assert aopc["semantic"] < aopc["random"] - 0.1  # finds it second, after the last token
    assert aopc["gradient_norm"] < aopc["random"] - 0.1
    assert aopc["anti_oracle"] > aopc["random"]  # never deletes the carrier
    vs_random = ev.compare("aopc", reference="random", n_perm=5000).set_index("a")
    assert vs_random.loc["oracle", "p_value"] < 0.01
    assert vs_random.loc["oracle", "ci_high"] < 0


def test_eraser_and_loo_agreement_find_the_causal_token(toy_run):
    _, s = toy_run
    assert s.loc["oracle", "comprehensiveness"] > s.loc["random", "comprehensiveness"] + 0.3
    assert s.loc["oracle", "sufficiency"] < s.loc["random", "sufficiency"] - 0.3
    # most fillers tie at a leave-one-out KL of ~0, so only the carrier's rank is informative
    assert s.loc["oracle", "loo_spearman"] > s.loc["random", "loo_spearman"] + 0.3


# ---------------------------------------------------------- hand computation
def logprob_with_zeroed(model, toks, zeroed, token):
    def hook(x, hook):
        x = x.clone()
        x[:, zeroed] = 0
        return x

    with torch.no_grad(), model.hooks(fwd_hooks=[("hook_embed", hook)]):
        return torch.log_softmax(model(toks[None])[0, -1].double(), -1)[token]


def test_metrics_match_a_hand_computation(tiny):
    model, _, _ = tiny
    toks = helpers.tokens(12, seed=3)
    fixed = torch.tensor([9.0, 1, 5, 3, 8, 2, 7, 4, 6, 0, 11, 10])  # BOS scored highest
    ev = evaluate.evaluate(
        model,
        [toks],
        [Method("fixed", lambda m, t, y: fixed)],
        random_baseline=False,
        verbose=False,
    )
    rec = ev.records.set_index("method").loc["fixed"]
    with torch.no_grad():
        top1 = int(model(toks[None])[0, -1].argmax())
    base = logprob_with_zeroed(model, toks, [], top1)
    order = [10, 11, 4, 6, 8, 2, 7, 3, 5, 1, 9]  # BOS (0) left out of the ranking
    n = len(order)
    deltas = []
    for f, k in zip((0.05, 0.1, 0.2), (1, 1, 2), strict=True):
        assert evaluate.n_deleted(f, n) == k
        deltas.append(float(logprob_with_zeroed(model, toks, order[:k], top1) - base))
        assert rec[f"deletion@{f:g}"] == pytest.approx(deltas[-1], abs=1e-5)
    area = 0.025 * (deltas[0] + deltas[1]) + 0.05 * (deltas[1] + deltas[2])
    assert rec["aopc"] == pytest.approx(area, abs=1e-5)
    comp, suff = [], []
    for b in evaluate.ERASER_BINS:
        k = evaluate.n_deleted(b, n)
        comp.append(base.exp() - logprob_with_zeroed(model, toks, order[:k], top1).exp())
        suff.append(base.exp() - logprob_with_zeroed(model, toks, order[k:], top1).exp())
    assert rec["comprehensiveness"] == pytest.approx(float(np.mean(comp)), abs=1e-5)
    assert rec["sufficiency"] == pytest.approx(float(np.mean(suff)), abs=1e-5)
    kl = baselines.occlusion(model, toks, measure="kl").scores[1:]
    rho = stats.spearman(fixed[1:].numpy(), kl.numpy())
    assert rec["loo_spearman"] == pytest.approx(rho, abs=1e-9)
    assert ev.passages.loc[0, "n_ranked"] == 11 and ev.passages.loc[0, "target"] == top1


def test_bos_is_deleted_only_when_asked(kind):
    model = helpers.make_model(kind, "gpt2")
    toks = helpers.tokens(12, seed=4)
    bos_first = Method("bos_first", lambda m, t, y: torch.arange(12, 0, -1).float())
    kw = {"random_baseline": False, "verbose": False, "metrics": ("aopc",)}
    with torch.no_grad():
        top1 = int(model(toks[None])[0, -1].argmax())
    base = logprob_with_zeroed(model, toks, [], top1)
    without = evaluate.evaluate(model, [toks], [bos_first], **kw).records.iloc[0]
    assert without["deletion@0.05"] == pytest.approx(
        float(logprob_with_zeroed(model, toks, [1], top1) - base), abs=1e-5
    )
    with_bos = evaluate.evaluate(model, [toks], [bos_first], include_bos=True, **kw).records
    assert with_bos.iloc[0]["deletion@0.05"] == pytest.approx(
        float(logprob_with_zeroed(model, toks, [0], top1) - base), abs=1e-5
    )


def test_the_reference_itself_agrees_perfectly_with_leave_one_out(tiny):
    model, _, _ = tiny
    kl = Method("kl", lambda m, t, y: baselines.occlusion(m, t, measure="kl"))
    prompts = [helpers.tokens(9, seed=s) for s in range(3)]
    ev = evaluate.loo_agreement(model, prompts, [kl], verbose=False)
    s = ev.summary(n_boot=100)
    assert s.loc["kl", "loo_spearman"] == pytest.approx(1.0)
    assert abs(s.loc["random", "loo_spearman"]) < 0.9
    assert "aopc" not in s and "comprehensiveness" not in s


# --------------------------------------------------------------- resumable runs
def counting(calls):
    """Input × gradient in two variants from one call, counting the calls."""

    def fn(m, t, y):
        calls.append(1)
        r = baselines.input_x_gradient(m, t, y, return_vectors=True)
        return {"ixg": r, "ixg_norm": r.vectors.norm(dim=-1)}

    return Method("ixg", fn, variants=("ixg_norm",))


def test_a_results_file_resumes_where_it_stopped(kind, tmp_path):
    model = helpers.make_model(kind, "llama")
    path = tmp_path / "run.jsonl"
    prompts = [helpers.tokens(8, seed=s) for s in range(3)]
    calls: list[int] = []
    kw = {"results": path, "verbose": False, "metrics": ("aopc",)}
    first = evaluate.evaluate(model, prompts, [counting(calls)], **kw)
    assert len(calls) == 3 and set(first.methods) == {"ixg", "ixg_norm", "random"}
    again = evaluate.evaluate(model, prompts, [counting(calls)], **kw)
    assert len(calls) == 3  # nothing recomputed
    cols = ["passage", "method", "aopc"]
    assert again.records[cols].equals(first.records[cols])
    more = evaluate.evaluate(model, [*prompts, helpers.tokens(8, seed=9)], [counting(calls)], **kw)
    assert len(calls) == 4 and len(more.passages) == 4
    # a new metric reuses the stored scores: no attribution is recomputed
    both = evaluate.evaluate(
        model, prompts, [counting(calls)], results=path, verbose=False, metrics=("aopc", "loo")
    )
    assert len(calls) == 4 and both.records["loo_spearman"].notna().all()
    # an interrupted write leaves a torn last line, which is skipped
    with path.open("a") as f:
        f.write('{"type": "method", "passage": "0:')
    evaluate.evaluate(model, prompts, [counting(calls)], **kw)
    assert len(calls) == 4
    assert all(json.loads(line) for line in path.read_text().splitlines())
    with pytest.raises(js.errors.ScopeInputError, match="other settings"):
        evaluate.evaluate(model, prompts, [counting(calls)], fractions=(0.1, 0.3), **kw)


def test_read_results_gives_the_finished_passages_of_a_stopped_run_without_a_model(tmp_path):
    model = helpers.make_model(helpers.model_kinds()[0], "llama")
    prompts = [helpers.tokens(8, seed=s) for s in range(4)]
    full = tmp_path / "full.jsonl"
    methods = [OCCLUSION, SEMANTIC]
    ev = evaluate.evaluate(
        model, prompts, methods, results=full, metrics=("aopc", "loo"), verbose=False
    )
    lines = full.read_text().splitlines(keepends=True)
    config = lines[0]
    # A run stopped in its third passage: every record of the first two, and the third's
    # attributions without their metrics (the passage record comes last).
    third = [i for i, line in enumerate(lines) if '"type": "passage"' in line][1] + 1
    stopped = tmp_path / "stopped.jsonl"
    stopped.write_text("".join(lines[: third + 3]) + '{"type": "meth')
    got = evaluate.read_results(stopped, prompts)
    assert len(got.passages) == 2 and got.settings == ev.settings
    cols = ["passage", "method", "aopc", "loo_spearman", "seconds"]
    first_two = ev.records[ev.records["passage"].isin(got.passages["passage"])]
    assert got.records[cols].equals(first_two[cols].reset_index(drop=True))
    assert got.seconds_per_passage() == pytest.approx(
        first_two.groupby("passage")["seconds"]
        .sum()
        .add(ev.passages.set_index("passage")["seconds"])
        .dropna()
        .mean()
    )
    # Rank files (each with its own config line) read as their merge.
    by_passage: dict[str, list[str]] = {}
    for line in lines[1:]:
        by_passage.setdefault(json.loads(line)["passage"], []).append(line)
    keys = list(by_passage)
    parts = [tmp_path / "r.rank0.jsonl", tmp_path / "r.rank1.jsonl"]
    for part, share in zip(parts, (keys[0::2], keys[1::2]), strict=True):
        part.write_text(config + "".join(line for k in share for line in by_passage[k]))
    merged = evaluate.read_results(parts, prompts)
    assert merged.records[cols].equals(ev.records[cols])
    # A file older than protocols (its config does not name one) was written under the
    # default protocol: it reads, and merges with a newer file.
    older = json.loads(config)
    del older["protocol"]
    parts[0].write_text(json.dumps(older) + "\n" + parts[0].read_text().split("\n", 1)[1])
    merged = evaluate.read_results(parts, prompts)
    assert merged.records[cols].equals(ev.records[cols]) and merged.settings == ev.settings
    other = tmp_path / "other.jsonl"
    other.write_text(config.replace('"seed": 0', '"seed": 1'))
    with pytest.raises(js.errors.ScopeInputError, match="other settings"):
        evaluate.read_results([full, other], prompts)


def test_evaluation_leaves_the_model_as_before(tiny):
    model, _, _ = tiny
    user_state(model)
    before = model_fingerprint(model)
    methods = [m for m in default_methods(ig_steps=2) if m.name != "temperature"]
    evaluate.evaluate(model, [helpers.tokens(8)], methods, verbose=False)
    assert_same(before, model_fingerprint(model))


def test_every_default_method_runs_and_is_summarised(kind):
    model = helpers.make_model(kind, "neox")
    prompts = [Passage(helpers.tokens(10, seed=s), target=13) for s in range(2)]
    ev = evaluate.evaluate(
        model,
        prompts,
        default_methods(ig_steps=2, include_token_occlusion=True),
        explain="reference",
        verbose=False,
    )
    s = ev.summary(n_boot=50)
    expected = {o for m in default_methods(include_token_occlusion=True) for o in m.outputs}
    assert set(s.index) == expected | {"random"}
    assert s[["aopc", "comprehensiveness", "sufficiency", "loo_spearman"]].notna().all().all()
    assert (s["n"] == 2).all() and ev.seconds_per_passage() > 0
    assert ev.records.set_index("method").loc["integrated_gradients", "relative_gap"].notna().all()
    curves = ev.deletion_curves(n_boot=50)
    assert len(curves) == 3 * len(expected | {"random"})
    pairs = ev.compare("comprehensiveness")
    assert len(pairs) == len(s) * (len(s) - 1) // 2
    assert (pairs["p_holm"] >= pairs["p_value"] - 1e-12).all()


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fractions": (0.2, 0.1)}, "increasing"),
        ({"fractions": (0.1,)}, "at least two"),
        ({"eraser_bins": (0.0, 0.5)}, r"\(0, 1\]"),
        ({"metrics": ("accuracy",)}, "metrics must be"),
        ({"explain": "reference"}, "has no target"),
        ({"internal_batch_size": 0}, "internal_batch_size"),
    ],
)
def test_bad_settings_get_a_clear_error(kind, kwargs, match):
    model = helpers.make_model(kind, "gpt2")
    with pytest.raises(js.errors.ScopeInputError, match=match):
        evaluate.evaluate(model, [helpers.tokens(6)], [ORACLE], verbose=False, **kwargs)


@pytest.mark.parametrize(
    ("fn", "match"),
    [
        (lambda m, t, y: torch.ones(3), "3 scores for 6 tokens"),
        (lambda m, t, y: torch.full((6,), float("nan")), "NaN"),
    ],
)
def test_a_broken_method_gets_a_clear_error(kind, fn, match):
    model = helpers.make_model(kind, "gpt2")
    with pytest.raises(js.errors.ScopeInputError, match=match):
        evaluate.evaluate(model, [helpers.tokens(6)], [Method("broken", fn)], verbose=False)
    with pytest.raises(js.errors.ScopeInputError, match="distinct"):
        evaluate.evaluate(model, [helpers.tokens(6)], [ORACLE, ORACLE], verbose=False)


def test_the_random_order_is_reproducible_per_passage():
    toks = helpers.tokens(10)[None]
    a, b = random_method(seed=1), random_method(seed=2)
    assert torch.equal(a.fn(None, toks, 0), a.fn(None, toks, 0))
    assert not torch.equal(a.fn(None, toks, 0), b.fn(None, toks, 0))
    assert not torch.equal(a.fn(None, toks, 0), a.fn(None, helpers.tokens(10, seed=5)[None], 0))

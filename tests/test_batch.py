"""Batches of prompts of different lengths equal the one-by-one results, for every scope,
on both model classes; what is written into the padded positions changes nothing."""

from __future__ import annotations

import itertools

import pytest
import torch

import helpers
import jacobian_scopes as js
from jacobian_scopes import batching
from jacobian_scopes.guard import model_fingerprint
from test_model_unchanged import assert_same, fails, user_state

LENGTHS = (4, 9, 6, 7, 3)


def prompts():
    return [helpers.tokens(n, seed=10 + i) for i, n in enumerate(LENGTHS)]


def close(a, b):
    # Float32 rounding differs between matrix products of different shapes (a batch of 5
    # against a batch of 1), and SDPA sums the keys in blocks that follow the padded
    # length (measured up to 1.4e-5 of the scale); the error is relative to the scale.
    scale = float(b.abs().max()) if b.numel() else 1.0
    torch.testing.assert_close(a, b, rtol=1e-4, atol=3e-5 * max(scale, 1e-6))


def assert_same_result(got: js.ScopeResult, want: js.ScopeResult) -> None:
    """Every field of a batched result equals the one-by-one result (scores to rounding)."""
    assert got.scope == want.scope
    assert got.scores.shape == want.scores.shape
    close(got.scores, want.scores)
    assert torch.equal(got.tokens, want.tokens)
    assert got.str_tokens == want.str_tokens
    assert (got.position, got.positions) == (want.position, want.positions)
    assert got.target == want.target
    assert [p.token_id for p in got.top_predictions] == [p.token_id for p in want.top_predictions]
    for p, q in zip(got.top_predictions, want.top_predictions, strict=True):
        assert p.prob == pytest.approx(q.prob, rel=1e-4, abs=1e-7)
    assert got.params.keys() == want.params.keys()
    for key, value in want.params.items():
        if isinstance(value, float):
            assert got.params[key] == pytest.approx(value, rel=1e-5)
        else:
            assert got.params[key] == value
    assert got.processing == want.processing and got.model_name == want.model_name
    assert got.score_axes == want.score_axes and got.source_labels == want.source_labels
    assert got.bos == want.bos
    for name in ("first_order", "vectors"):
        a, b = getattr(got, name), getattr(want, name)
        assert (a is None) == (b is None)
        if isinstance(b, dict):
            assert a.keys() == b.keys()
            for k in b:
                close(a[k], b[k])
        elif b is not None:
            close(a, b)
    assert (got.fisher is None) == (want.fisher is None)
    if want.fisher is not None:
        f, g = got.fisher, want.fisher
        assert (f.method, f.n_vjps, f.rank, f.n_probes) == (g.method, g.n_vjps, g.rank, g.n_probes)
        assert (f.support_size, f.candidate_ids) == (g.support_size, g.candidate_ids)
        assert f.trace_full == pytest.approx(g.trace_full, rel=1e-5)
        assert f.captured == pytest.approx(g.captured, rel=1e-5)
        for name in ("stderr", "contributions"):
            a, b = getattr(f, name), getattr(g, name)
            assert (a is None) == (b is None)
            if b is not None:
                close(a, b)


def check(batched, single):
    assert len(batched) == len(single)
    for got, want in zip(batched, single, strict=True):
        assert_same_result(got, want)


# Each case: (batched call, one-by-one call), both given (model, prompts).
TARGETS = [11, 12, 13, 14, 15]
CASES = {
    "semantic_per_prompt_targets": (
        lambda m, ps: js.semantic_scope(m, ps, TARGETS, return_vectors=True),
        lambda m, ps: [
            js.semantic_scope(m, p, t, return_vectors=True)
            for p, t in zip(ps, TARGETS, strict=True)
        ],
    ),
    "semantic_shared_target_logprob": (
        lambda m, ps: js.semantic_scope(m, ps, 11, mode="logprob"),
        lambda m, ps: [js.semantic_scope(m, p, 11, mode="logprob") for p in ps],
    ),
    "semantic_contrast_positions": (
        lambda m, ps: js.semantic_scope(m, ps, 11, foil=12, position=[1, 2, 0, 3, 1]),
        lambda m, ps: [
            js.semantic_scope(m, p, 11, foil=12, position=q)
            for p, q in zip(ps, [1, 2, 0, 3, 1], strict=True)
        ],
    ),
    "semantic_multi_token_of_different_lengths": (
        lambda m, ps: js.semantic_scope(
            m, ps, [[11], [12, 13, 14], [15, 16], [17], [18, 19]], multi_token=True
        ),
        lambda m, ps: [
            js.semantic_scope(m, p, t, multi_token=True)
            for p, t in zip(ps, [[11], [12, 13, 14], [15, 16], [17], [18, 19]], strict=True)
        ],
    ),
    "semantic_layerwise": (
        lambda m, ps: js.semantic_scope(m, ps, 11, sources="resid_pre"),
        lambda m, ps: [js.semantic_scope(m, p, 11, sources="resid_pre") for p in ps],
    ),
    "semantic_per_head": (
        lambda m, ps: js.semantic_scope(m, ps, 11, sources="z", batch_size=2),
        lambda m, ps: [js.semantic_scope(m, p, 11, sources="z") for p in ps],
    ),
    "temperature": (
        lambda m, ps: js.temperature_scope(m, ps, return_vectors=True),
        lambda m, ps: [js.temperature_scope(m, p, return_vectors=True) for p in ps],
    ),
    "fisher_sketch": (
        lambda m, ps: js.fisher_scope(m, ps, seed=3),
        lambda m, ps: [js.fisher_scope(m, p, seed=3) for p in ps],
    ),
    "fisher_exact_decompose": (
        lambda m, ps: js.fisher_scope(m, ps, method="exact", eps=0.05, decompose=True),
        lambda m, ps: [js.fisher_scope(m, p, method="exact", eps=0.05, decompose=True) for p in ps],
    ),
    "fisher_exact_summed": (
        lambda m, ps: js.fisher_scope(m, ps, method="exact", eps=0.0),
        lambda m, ps: [js.fisher_scope(m, p, method="exact", eps=0.0) for p in ps],
    ),
    "fisher_principal_layerwise": (
        lambda m, ps: js.fisher_scope(m, ps, method="principal", rank=2, sources="attn_out"),
        lambda m, ps: [
            js.fisher_scope(m, p, method="principal", rank=2, sources="attn_out") for p in ps
        ],
    ),
    "direction_at_a_hidden_layer": (
        lambda m, ps: js.scope(
            m, ps, torch.linspace(-1, 1, helpers.D_MODEL), at="blocks.1.hook_resid_pre"
        ),
        lambda m, ps: [
            js.scope(m, p, torch.linspace(-1, 1, helpers.D_MODEL), at="blocks.1.hook_resid_pre")
            for p in ps
        ],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_batch_equals_one_by_one(tiny, case):
    model, _, _ = tiny
    batched, single = CASES[case]
    ps = prompts()
    check(batched(model, ps), single(model, ps))


def test_predicted_targets_explain_each_prompts_own_top_token(tiny):
    model, _, _ = tiny
    ps = prompts()
    rs = js.semantic_scope(model, ps, batch_size=2)
    for p, r in zip(ps, rs, strict=True):
        top = r.top_predictions[0].token_id
        assert r.target.ids == [top]
        assert_same_result(r, js.semantic_scope(model, p, top))


def test_a_none_in_the_targets_explains_that_prompts_prediction(kind):
    model = helpers.make_model(kind, "gpt2")
    ps = prompts()[:3]
    rs = js.semantic_scope(model, ps, [11, None, 12])
    assert [r.target.ids for r in rs[::2]] == [[11], [12]]
    assert rs[1].target.ids == [rs[1].top_predictions[0].token_id]


def test_results_do_not_depend_on_the_batch_size_or_the_order(tiny):
    model, _, _ = tiny
    ps = prompts()
    ref = js.temperature_scope(model, ps, batch_size=1)
    check(js.temperature_scope(model, ps, batch_size=2), ref)
    check(js.temperature_scope(model, ps[::-1], batch_size=3), ref[::-1])


def test_string_prompts_are_tokenised_one_by_one_with_bos(kind):
    model = helpers.make_model(kind, "llama")
    texts = ["w1 w2 w3", "w4", "w5 w6 w7 w8 w9 w10"]
    rs = js.semantic_scope(model, texts, "w11")
    check(rs, [js.semantic_scope(model, t, "w11") for t in texts])
    assert [r.n_tokens for r in rs] == [4, 2, 7] and all(r.bos for r in rs)


@pytest.mark.parametrize("scope", ["semantic", "temperature", "fisher"])
def test_junk_in_the_padded_positions_changes_nothing(tiny, scope, monkeypatch):
    """The padded positions are filled with random tokens instead of the pad id: every
    score, to the last bit, stays the same."""
    model, _, _ = tiny
    ps = prompts()
    run = {
        "semantic": lambda: js.semantic_scope(model, ps, 11, batch_size=5),
        "temperature": lambda: js.temperature_scope(model, ps, batch_size=5),
        "fisher": lambda: js.fisher_scope(model, ps, method="exact", batch_size=5),
    }[scope]
    clean = run()
    real_pad = batching.pad_batch
    g = torch.Generator().manual_seed(0)

    def junk(rows, pad_id):
        out, lengths = real_pad(rows, pad_id)
        for b, n in enumerate(lengths):
            out[b, n:] = torch.randint(4, helpers.VOCAB, (out.shape[1] - n,), generator=g)
        return out, lengths

    monkeypatch.setattr(js.call, "pad_batch", junk)
    dirty = run()
    for a, b in zip(clean, dirty, strict=True):
        assert torch.equal(a.scores, b.scores)


def test_padded_positions_receive_exactly_zero_gradient(tiny):
    """Below the results: the engine's raw squared norms at padded positions are zero."""
    model, _, _ = tiny
    adapter = js.adapter.ModelAdapter(model)
    rows = [helpers.tokens(3, seed=1)[None], helpers.tokens(8, seed=2)[None]]
    tokens, lengths = batching.pad_batch(rows, pad_id=5)
    with js.engine.Trace(adapter, tokens, sources=["hook_embed", "blocks.1.hook_resid_pre"]) as tr:
        dirs = torch.randn(2, 2, 1, helpers.D_MODEL, generator=torch.Generator().manual_seed(0))
        pb = tr.pullback(torch.tensor([[2], [7]]), dirs)
    for sq in pb.squared.values():
        assert (sq[:, 0, lengths[0] :] == 0).all()
        assert (sq[:, 0, : lengths[0]] > 0).any()


def test_model_is_unchanged_after_a_batch_and_after_a_failing_batch(tiny):
    model, _, _ = tiny
    user_state(model)
    before = model_fingerprint(model)
    js.fisher_scope(model, prompts(), batch_size=2)
    js.semantic_scope(model, prompts(), 11, sources="resid_pre")
    assert_same(before, model_fingerprint(model))

    def boom(x, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        js.temperature_scope(model, prompts(), fwd_hooks=[("blocks.0.hook_resid_post", boom)])
    assert_same(before, model_fingerprint(model))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m: js.semantic_scope(m, [], 11), "empty"),
        (lambda m: js.semantic_scope(m, prompts(), [11, 12]), "2 entries for 5 prompts"),
        (lambda m: js.semantic_scope(m, prompts(), 11, batch_size=0), "batch_size"),
        (lambda m: js.semantic_scope(m, prompts(), multi_token=True), "needs a target"),
        (lambda m: js.temperature_scope(m, prompts(), position=[0, 1]), "position"),
        (lambda m: js.fisher_scope(m, prompts(), position=9), "out of range"),
        (lambda m: js.fisher_scope(m, prompts(), method="full"), "Fisher method"),
        (lambda m: js.scope(m, prompts(), torch.ones(3)), "shape"),
        (lambda m: js.scope(m, prompts(), torch.ones(helpers.D_MODEL), at="x"), "not a hook"),
        (lambda m: js.semantic_scope(m, [helpers.tokens(3), "", "w1"], 11), "empty"),
    ],
)
def test_bad_input_gets_a_clear_error(kind, call, match):
    model = helpers.warmed_model(kind)
    fails(model, match, lambda: call(model))


def test_temperature_batch_refuses_a_folded_final_norm(kind):
    folded = helpers.processed_copy(
        kind, "gpt2", fold_ln=True, center_writing_weights=False, center_unembed=False
    )
    with pytest.raises(js.errors.TemperatureUndefinedError):
        js.temperature_scope(folded, prompts())


def test_grouping_caps_rows_and_padding():
    assert batching.group_by_length([5] * 10, batch_size=4) == [(0, 4), (4, 8), (8, 10)]
    assert batching.group_by_length([120, 20, 20, 20, 18], batch_size=8) == [(0, 2), (2, 5)]
    assert batching.group_by_length([9], batch_size=1) == [(0, 1)]
    groups = batching.group_by_length([64, 60, 40, 33, 30, 8, 7, 2], batch_size=8)
    lengths = [64, 60, 40, 33, 30, 8, 7, 2]
    for start, stop in groups:
        real = sum(lengths[start:stop])
        assert stop - start == 1 or real >= 0.5 * (stop - start) * lengths[start]
    assert groups[0][0] == 0 and groups[-1][1] == 8
    assert all(a[1] == b[0] for a, b in itertools.pairwise(groups))


def test_one_prompt_gives_a_result_and_several_give_results(kind):
    model = helpers.make_model(kind, "llama")
    one = js.semantic_scope(model, "w1 w2 w3", "w4")
    assert isinstance(one, js.ScopeResult)
    ids = model.to_tokens("w1 w2 w3")  # (1, pos): one prompt, as TransformerLens returns it
    assert isinstance(js.semantic_scope(model, ids, "w4"), js.ScopeResult)
    assert isinstance(js.semantic_scope(model, ids[0].tolist(), "w4"), js.ScopeResult)
    many = js.semantic_scope(model, ["w1 w2 w3", "w5 w6"], ["w4", "w7"])
    assert isinstance(many, js.ScopeResults) and len(many) == 2
    torch.testing.assert_close(many[0].scores, one.scores, rtol=1e-4, atol=1e-6)
    rows = torch.cat([ids, model.to_tokens("w5 w6 w7")[:, :4]])  # (2, pos): two prompts
    two = js.temperature_scope(model, rows)
    assert isinstance(two, js.ScopeResults) and [r.n_tokens for r in two] == [4, 4]
    assert torch.equal(two[1].tokens, rows[1].cpu())


def test_results_of_several_prompts_save_show_and_tabulate_together(kind, tmp_path):
    model = helpers.make_model(kind, "llama")
    rs = js.semantic_scope(model, ["w1 w2 w3", "w5 w6"], ["w4", "w7"])
    frame = rs.to_dataframe()
    assert list(frame.prompt_index.unique()) == [0, 1]
    assert len(frame) == sum(r.n_tokens for r in rs)
    back = js.load(rs.save(tmp_path / "rs.json"))
    assert isinstance(back, js.ScopeResults)
    assert [torch.equal(a.scores, b.scores) for a, b in zip(back, rs, strict=True)] == [True, True]
    page = rs.save_html(tmp_path / "rs.html").read_text()
    assert page.count("ColoredTokens") >= 2


def test_a_misspelt_option_is_refused_like_a_python_keyword(kind):
    model = helpers.make_model(kind, "llama")
    for call in (js.semantic_scope, js.temperature_scope, js.fisher_scope):
        with pytest.raises(TypeError, match="unexpected keyword argument 'postion'"):
            call(model, "w1 w2", postion=0)


def test_verbose_shows_a_progress_bar_and_a_quiet_call_shows_none(capsys):
    model = helpers.warmed_model(helpers.model_kinds()[0], "gpt2")
    js.semantic_scope(model, prompts()[:2], 11)
    js.generate_scope(model, prompts()[0], 2)
    quiet = capsys.readouterr()
    assert (quiet.out, quiet.err) == ("", "")
    js.semantic_scope(model, prompts()[:2], 11, verbose=True)
    js.generate_scope(model, prompts()[0], 2, verbose=True)
    shown = capsys.readouterr().err
    assert "semantic scope" in shown and "2/2" in shown
    assert "generating" in shown

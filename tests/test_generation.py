"""Attribution across generation: the generated × context matrix from one forward and one
backward pass equals N separate single-position scope calls; generation is greedy or
sampled reproducibly; the model is left as it was."""

from __future__ import annotations

import math

import pytest
import torch

import helpers
import jacobian_scopes as js
from jacobian_scopes.generation import generate
from jacobian_scopes.guard import model_fingerprint
from test_model_unchanged import assert_same, fails, user_state

N = 5


def prompt():
    return helpers.tokens(6, seed=4)


def single(model, scope, context, position, **kw):
    if scope == "semantic":
        return js.semantic_scope(
            model, context, kw["target"], mode=kw.get("mode"), position=position
        )
    if scope == "temperature":
        return js.temperature_scope(model, context, position=position)
    return js.fisher_scope(model, context, position=position, seed=0, **kw.get("fisher", {}))


@pytest.mark.parametrize(
    "scope, options",
    [
        ("semantic", {}),
        ("semantic", {"mode": "logprob"}),
        ("temperature", {}),
        ("fisher", {}),
        ("fisher", {"method": "exact", "eps": 0.01}),
    ],
)
def test_matrix_rows_equal_single_position_scopes(tiny, scope, options):
    model, _, _ = tiny
    g = js.generate_scope(model, prompt(), N, scope, stop_at_eos=False, **options)
    assert g.n_generated == N and g.scores.shape == (N, 6 + N - 1)
    context = g.tokens[:-1]
    fisher = {k: v for k, v in options.items() if k in ("method", "eps")}
    for i, p in enumerate(g.positions):
        assert p == 6 - 1 + i
        ref = single(
            model,
            scope,
            context,
            p,
            target=g.generated_ids[i],
            mode=options.get("mode"),
            fisher=fisher,
        )
        torch.testing.assert_close(g.row(i), ref.scores[: p + 1], rtol=1e-4, atol=1e-6)
        assert (ref.scores[p + 1 :] == 0).all()  # later tokens cannot matter...
        assert torch.isnan(g.scores[i, p + 1 :]).all()  # ...and get no score
        if ref.first_order is not None:
            torch.testing.assert_close(
                g.first_order[i, : p + 1], ref.first_order[: p + 1], rtol=1e-4, atol=1e-6
            )
        if scope == "fisher":
            assert g.fisher[i].n_vjps == ref.fisher.n_vjps
            assert g.fisher[i].candidate_ids == ref.fisher.candidate_ids


def test_greedy_generation_takes_the_argmax_at_every_step(tiny):
    model, _, _ = tiny
    g = js.generate_scope(model, prompt(), N, stop_at_eos=False)
    with torch.no_grad():
        logits = model(g.tokens[None, :-1])[0]
    for i, p in enumerate(g.positions):
        assert g.generated_ids[i] == int(logits[p].argmax())
        probs = torch.softmax(logits[p].float(), dim=-1)
        assert g.token_probs[i] == pytest.approx(float(probs[g.generated_ids[i]]), rel=1e-4)


def test_sampling_is_reproducible_with_a_seed(kind):
    model = helpers.make_model(kind, "gpt2")
    a = generate(model, prompt()[None], 8, do_sample=True, seed=1, stop_at_eos=False)
    b = generate(model, prompt()[None], 8, do_sample=True, seed=1, stop_at_eos=False)
    c = generate(model, prompt()[None], 8, do_sample=True, seed=2, stop_at_eos=False)
    assert torch.equal(a, b) and not torch.equal(a, c)
    greedy = generate(model, prompt()[None], 8, stop_at_eos=False)
    top1 = generate(model, prompt()[None], 8, do_sample=True, top_k=1, stop_at_eos=False)
    assert torch.equal(greedy, top1)


def test_generation_stops_at_eos(kind, monkeypatch):
    model = helpers.make_model(kind, "gpt2")
    eos = model.tokenizer.eos_token_id
    # Make EOS the most likely next token everywhere: a large bias on its logit.
    original = model.forward

    def forward(tokens, *a, **k):
        out = original(tokens, *a, **k)
        out = out.clone()
        out[..., eos] += 1e4
        return out

    monkeypatch.setattr(model, "forward", forward)
    out = generate(model, prompt()[None], 5)
    assert out.shape[1] == 7 and int(out[0, -1]) == eos


def test_dataframe_lists_each_generated_token_with_the_context_it_saw(tiny, tmp_path):
    model, _, _ = tiny
    g = js.generate_scope(model, prompt(), 3, "temperature", stop_at_eos=False)
    df = g.to_dataframe()
    assert len(df) == sum(p + 1 for p in g.positions)
    assert not df["score"].isna().any()
    last = df[df.generated_index == 2]
    assert list(last.context_index) == list(range(g.positions[2] + 1))
    assert last.in_prompt.sum() == 6
    path = g.to_csv(tmp_path / "g.csv")
    assert path.read_text().startswith("generated_index,generated_token")
    assert math.isclose(float(last.score.iloc[0]), float(g.scores[2, 0]), rel_tol=1e-6)


def test_heat_map_has_one_row_per_generated_token(kind):
    import matplotlib

    matplotlib.use("Agg")
    model = helpers.make_model(kind, "llama")
    g = js.generate_scope(model, "w1 w2 w3", 4, stop_at_eos=False)
    fig = g.plot()
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == g.generated_tokens
    assert len(ax.get_xticklabels()) == g.scores.shape[1]


def test_model_is_unchanged(tiny):
    model, _, _ = tiny
    user_state(model)
    before = model_fingerprint(model)
    js.generate_scope(model, prompt(), 3, "fisher", stop_at_eos=False)
    js.generate_scope(model, prompt(), 3, do_sample=True, seed=3, stop_at_eos=False)
    assert_same(before, model_fingerprint(model))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"scope": "entropy"}, "unknown scope"),
        ({"do_sample": True, "temperature": 0.0}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"mode": "prob"}, "mode"),
        ({"scope": "fisher", "method": "full"}, "Fisher method"),
        ({"max_new_tokens": helpers.N_CTX}, "context"),
    ],
)
def test_bad_input_gets_a_clear_error(kind, kwargs, match):
    model = helpers.warmed_model(kind)
    fails(
        model, match, lambda: js.generate_scope(model, prompt(), **{"max_new_tokens": 3, **kwargs})
    )

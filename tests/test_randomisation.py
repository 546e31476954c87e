"""The cascading model-randomisation check (Adebayo et al., 2018) on random models: scores
change as the weights are re-initialised, a weight-independent method does not, and the
user's model is never touched."""

from __future__ import annotations

import pytest
import torch

import helpers
import jacobian_scopes as js
from jacobian_scopes.eval.methods import default_methods, random_method
from jacobian_scopes.eval.sanity import cascade, randomisation_check, reinitialise
from jacobian_scopes.guard import model_fingerprint
from test_model_unchanged import assert_same


def test_scores_change_as_the_model_is_randomised_from_the_top(tiny):
    model, _, _ = tiny
    state = {k: v.clone() for k, v in model.state_dict().items()}
    before = model_fingerprint(model)
    prompts = [helpers.tokens(12, seed=s) for s in range(4)]
    methods = [*default_methods(), random_method()]
    methods = [m for m in methods if m.name not in ("integrated_gradients", "occlusion")]
    res = randomisation_check(model, prompts, methods, verbose=False)
    table = res.table()
    labels = [label for _, label in table.index]
    assert labels == ["none", "unembed", "blocks.1", "blocks.0", "embed"]
    assert (table.loc[0] == 1.0).all().all()  # step 0 compares the original with itself
    final = table.iloc[-1]
    weight_dependent = final.drop("random")
    assert (weight_dependent < 0.8).all(), final
    assert weight_dependent.mean() < 0.5
    assert final["random"] == pytest.approx(1.0)  # a method that ignores the weights fails
    # attention cannot see the unembedding; its scores move only once blocks are reset
    assert table.loc[(1, "unembed"), "attention_last"] == pytest.approx(1.0)
    summary = res.summary(n_boot=100)
    assert set(summary.columns) >= {"step", "randomised", "method", "spearman", "low", "high"}
    # the user's model is untouched: same weights, flags, hooks
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert_same(before, model_fingerprint(model))


def test_the_cascade_goes_from_the_output_to_the_input(tiny):
    model, _, _ = tiny
    steps = [label for label, _ in cascade(model, stride=2)]
    assert steps == ["unembed", "blocks.0-1", "embed"]
    assert [label for label, _ in cascade(model, include_embed=False)][-1] == "blocks.0"
    with pytest.raises(js.errors.ScopeInputError, match="stride"):
        cascade(model, stride=0)


def test_reinitialising_the_unembedding_unties_it_from_the_embedding(kind):
    import copy

    model = helpers.make_model(kind, "gpt2")
    if kind == "bridge":  # Hugging Face GPT-2 ties its input and output embeddings
        assert model.W_U.data_ptr() == model.W_E.data_ptr() or torch.equal(model.W_U, model.W_E.T)
    work = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    assert reinitialise(cascade(work)[0][1], g) > 0
    assert torch.equal(work.W_E, model.W_E)  # the embedding is a later step
    assert not torch.allclose(work.W_U, model.W_U)
    # the new weights keep each tensor's scale
    new_std, old_std = float(work.W_U.detach().std()), float(model.W_U.detach().std())
    assert new_std == pytest.approx(old_std, rel=0.05)
    toks = helpers.tokens(6)[None]
    with torch.no_grad():
        assert not torch.allclose(work(toks), model(toks))


def test_the_users_model_holds_nothing_of_the_randomised_copy(kind):
    """TransformerLens's capture hooks survive a deep copy by reference; the copy's forward
    passes must not leave tensors of its graph in the user's model."""
    import copy

    model = helpers.make_model(kind, "llama")
    randomisation_check(model, ["w1 w2 w3 w4"], ["semantic"], stride=1, verbose=False)
    held = [
        name
        for name, module in torch.nn.Module.named_modules(model)
        if getattr(module, "_captured_pre_ln_residual", None) is not None
    ]
    assert held == []
    copy.deepcopy(model)  # raises on tensors that are not graph leaves

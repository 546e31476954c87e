"""Bad input gets a clear error (or a documented behaviour), and the model is unchanged."""

from __future__ import annotations

import pytest
import torch

import helpers
import jacobian_scopes as js
from test_model_unchanged import fails


@pytest.fixture
def model(kind):
    return helpers.warmed_model(kind)


def test_empty_string_prompt(model):
    fails(model, "empty", lambda: js.semantic_scope(model, "", 11))


def test_empty_token_prompt(model):
    fails(model, "empty", lambda: js.temperature_scope(model, torch.tensor([], dtype=torch.long)))


def test_target_of_several_tokens_without_multi_token_mode(model):
    fails(model, "multi_token=True", lambda: js.semantic_scope(model, "w1 w2", "w3 w4"))


def test_unknown_token_ids(model):
    fails(model, "outside the vocabulary", lambda: js.semantic_scope(model, "w1 w2", 10_000))
    fails(model, "outside the vocabulary", lambda: js.semantic_scope(model, "w1", -1))
    fails(
        model, "outside the vocabulary", lambda: js.temperature_scope(model, torch.tensor([0, 500]))
    )
    fails(model, "foil", lambda: js.semantic_scope(model, "w1", 11, foil=999))


def test_position_out_of_range(model):
    fails(
        model, "out of range", lambda: js.semantic_scope(model, helpers.tokens(5), 11, position=5)
    )
    fails(model, "out of range", lambda: js.fisher_scope(model, helpers.tokens(5), position=-6))
    fails(
        model,
        "must be an int",
        lambda: js.temperature_scope(model, helpers.tokens(5), position=1.0),
    )


def test_prompt_longer_than_the_context(model):
    toks = helpers.tokens(helpers.N_CTX + 1)
    fails(model, "context", lambda: js.semantic_scope(model, toks, 11))


def test_multi_token_target_that_overflows_the_context(model):
    toks = helpers.tokens(helpers.N_CTX - 1)
    fails(model, "context", lambda: js.semantic_scope(model, toks, [5, 6, 7], multi_token=True))


def test_string_prompt_for_a_model_without_a_tokenizer(kind):
    model = (
        helpers.make_hooked("gpt2", tokenizer=False)
        if kind == "hooked"
        else helpers.make_bridge("gpt2")
    )
    model.tokenizer = None
    fails(model, "no tokenizer", lambda: js.semantic_scope(model, "w1 w2", 11))
    # token ids still work, and tokens are shown by id
    r = js.semantic_scope(model, helpers.tokens(4), 11)
    assert r.str_tokens[1].startswith("<") and r.target.tokens == ["<11>"]


def test_float_or_three_dimensional_token_tensors(model):
    fails(model, "integers", lambda: js.semantic_scope(model, torch.zeros(3), 11))
    fails(
        model, "1-D", lambda: js.semantic_scope(model, torch.zeros(1, 2, 3, dtype=torch.long), 11)
    )


def test_bad_options(model):
    t = helpers.tokens(5)
    fails(model, "mode", lambda: js.semantic_scope(model, t, 11, mode="prob"))
    fails(
        model,
        "single-token",
        lambda: js.semantic_scope(model, t, [11, 12], multi_token=True, foil=3),
    )
    fails(
        model,
        "log-probs",
        lambda: js.semantic_scope(model, t, [11, 12], multi_token=True, mode="logit"),
    )
    fails(
        model,
        "last position",
        lambda: js.semantic_scope(model, t, [11, 12], multi_token=True, position=2),
    )
    fails(model, "unknown Fisher method", lambda: js.fisher_scope(model, t, method="full"))
    fails(model, "eps", lambda: js.fisher_scope(model, t, eps=1.5))
    fails(model, "decompose", lambda: js.fisher_scope(model, t, decompose=True))
    fails(
        model,
        "not a hook",
        lambda: js.semantic_scope(model, t, 11, sources=["blocks.9.hook_resid_pre"]),
    )
    fails(model, "cannot freeze", lambda: js.semantic_scope(model, t, 11, freeze=["mlp"]))
    fails(
        model, "not a hook", lambda: js.scope(model, t, torch.ones(helpers.D_MODEL), at="nowhere")
    )


def test_bad_directions(model):
    t = helpers.tokens(5)
    fails(model, "shape", lambda: js.scope(model, t, torch.ones(helpers.D_MODEL + 1)))
    fails(model, "NaN", lambda: js.scope(model, t, torch.full((helpers.D_MODEL,), float("nan"))))
    fails(model, "float", lambda: js.scope(model, t, torch.ones(helpers.D_MODEL, dtype=torch.long)))


def test_temperature_refuses_a_folded_final_norm_and_says_how_to_load(kind):
    folded = helpers.processed_copy(
        kind, "gpt2", fold_ln=True, center_writing_weights=False, center_unembed=False
    )
    fails(
        folded,
        "from_pretrained_no_processing",
        lambda: js.temperature_scope(folded, helpers.tokens(5)),
        error=js.errors.TemperatureUndefinedError,
    )


def test_temperature_refuses_unit_gain_random_init_models(kind):
    model = helpers.make_hooked("llama") if kind == "hooked" else helpers.make_bridge("llama")
    with torch.no_grad():
        gain, _ = js.adapter.ModelAdapter(model).final_norm_affine()
        for p in model.parameters():
            if p.shape == gain.shape and torch.equal(p.detach(), gain):
                p.fill_(1.0)
    fails(
        model,
        "identically zero",
        lambda: js.temperature_scope(model, helpers.tokens(5)),
        error=js.errors.TemperatureUndefinedError,
    )


def test_nan_in_activations_is_reported_not_returned(model):
    def poison(x, hook):
        return x * float("nan")

    fails(
        model,
        "NaN",
        lambda: js.semantic_scope(
            model, helpers.tokens(5), 11, fwd_hooks=[("blocks.0.hook_resid_post", poison)]
        ),
        error=js.errors.NonFiniteError,
    )


def test_inf_in_gradients_is_reported(model):
    def inf_grad(x, hook):
        # finite forward value, infinite backward: d/dx of x·(1+inf·(x−x)) is NaN
        return x + (x - x.detach()) * float("inf")

    fails(
        model,
        "NaN or inf",
        lambda: js.semantic_scope(
            model, helpers.tokens(5), 11, fwd_hooks=[("blocks.0.hook_resid_post", inf_grad)]
        ),
        error=(js.errors.NonFiniteError, js.errors.ScopeInputError),
    )


def test_inference_mode_is_refused_with_advice(model):
    with torch.inference_mode(), pytest.raises(js.errors.ScopeInputError, match="inference_mode"):
        js.semantic_scope(model, helpers.tokens(5), 11)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_give_float32_scores_close_to_float32(kind, dtype):
    """Documented behaviour: the model runs in its own dtype; scores are float32."""
    if kind == "hooked":
        full, half = helpers.make_hooked("llama"), helpers.make_hooked("llama", dtype=dtype)
    else:
        full, half = helpers.make_bridge("llama"), helpers.make_bridge("llama", dtype=dtype)
    t = helpers.tokens(6)
    for call in (
        lambda m: js.semantic_scope(m, t, 11),
        lambda m: js.temperature_scope(m, t),
        lambda m: js.fisher_scope(m, t, method="exact"),
    ):
        a, b = call(full), call(half)
        assert b.scores.dtype == torch.float32
        assert b.processing["dtype"] == str(dtype).replace("torch.", "")
        rel = ((a.scores - b.scores).norm() / a.scores.norm()).item()
        assert rel < 0.1

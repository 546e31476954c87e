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


class _InfBackward(torch.autograd.Function):
    """The identity going forward (every activation and logit stays finite); inf going back."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


def test_inf_in_gradients_is_reported(model):
    def inf_grad(x, hook):
        return _InfBackward.apply(x)

    fails(
        model,
        "gradients at 'hook_embed' contain NaN or inf",
        lambda: js.semantic_scope(
            model, helpers.tokens(5), 11, fwd_hooks=[("blocks.0.hook_resid_post", inf_grad)]
        ),
        error=js.errors.NonFiniteError,
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


def test_every_error_has_the_one_root_and_keeps_its_builtin_base():
    errors = js.errors
    for cls, base in [
        (errors.ScopeInputError, ValueError),
        (errors.TemperatureUndefinedError, ValueError),
        (errors.NonFiniteError, FloatingPointError),
        (errors.ResultFileError, ValueError),
    ]:
        assert issubclass(cls, js.JacobianScopesError) and issubclass(cls, base), cls


def _no_forward(model):
    """Counts forward passes of ``model``: a refusal must come before any."""
    calls = []
    handle = torch.nn.Module.register_forward_pre_hook(model, lambda *a: calls.append(1))
    return calls, handle


TP = "blocks.0.attn.hook_pattern"
REFUSED_BEFORE_ANY_FORWARD = {
    "a source after the explained activation": (
        lambda m: js.scope(
            m,
            "w1 w2",
            torch.ones(helpers.D_MODEL),
            at="blocks.0.hook_resid_post",
            sources=["blocks.1.hook_resid_pre"],
        ),
        "comes after the explained",
    ),
    "an explained attention pattern": (
        lambda m: js.scope(m, "w1 w2", torch.ones(4, 2, 2), at=TP),
        "not one activation per position",
    ),
    "no VJPs per pass": (lambda m: js.fisher_scope(m, "w1 w2", vjp_batch_size=0), "vjp_batch"),
    "a seed that is not an int": (lambda m: js.fisher_scope(m, "w1 w2", seed="x"), "seed"),
    "freeze=None": (lambda m: js.semantic_scope(m, "w1 w2", 11, freeze=None), "freeze"),
    "a foil equal to the target": (
        lambda m: js.semantic_scope(m, "w1 w2", "w3", foil="w3"),
        "the target itself",
    ),
    "a prompt of white space": (lambda m: js.temperature_scope(m, " \n\t "), "white space"),
    "a lone surrogate": (lambda m: js.semantic_scope(m, "w1 \ud800", 11), "lone surrogate"),
    "a target with a lone surrogate": (
        lambda m: js.semantic_scope(m, "w1", "\udc80"),
        "lone surrogate",
    ),
    "a misspelt option": (lambda m: js.temperature_scope(m, "w1", positon=0), "positon"),
}


@pytest.mark.parametrize("case", list(REFUSED_BEFORE_ANY_FORWARD))
def test_bad_options_are_refused_clearly_before_any_forward_pass(model, case):
    call, match = REFUSED_BEFORE_ANY_FORWARD[case]
    calls, handle = _no_forward(model)
    try:
        error = TypeError if case == "a misspelt option" else js.errors.ScopeInputError
        fails(model, match, lambda: call(model), error=error)
    finally:
        handle.remove()
    assert calls == []


def test_a_source_that_does_not_feed_the_explained_activation_is_refused(model):
    # The names alone do not order a norm's hooks against the MLP output of the same block;
    # autograd does, after the backward pass.
    late = next(n for n in model.hook_dict if n.startswith("blocks.0.ln2.") or "ln2.hook" in n)
    fails(
        model,
        "do not influence the explained activation",
        lambda: js.scope(
            model, "w1 w2", torch.ones(helpers.D_MODEL), at="blocks.0.hook_attn_out", sources=[late]
        ),
    )


def test_any_integer_type_is_a_position(model):
    import numpy as np

    want = js.semantic_scope(model, "w1 w2 w3", 11, position=1).scores
    for position in (np.int64(1), np.int32(1), torch.tensor(1)):
        assert torch.equal(js.semantic_scope(model, "w1 w2 w3", 11, position=position).scores, want)
    fails(
        model, "position must be an int", lambda: js.semantic_scope(model, "w1", 11, position=1.0)
    )


def test_the_logits_hook_is_refused_as_a_source_where_the_model_has_one(model):
    if "unembed.hook_out" not in model.hook_dict:
        pytest.skip("this model class has no hook on the logits")
    fails(
        model,
        "comes after the explained",
        lambda: js.semantic_scope(model, "w1 w2", 11, sources="unembed.hook_out"),
    )

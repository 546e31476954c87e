"""After any scope call, success or exception, the user's model is exactly as it was: no
hooks left, requires_grad and train/eval flags restored, no .grad accumulated."""

from __future__ import annotations

import pytest
import torch

import helpers
import jacobian_scopes as js
from jacobian_scopes.eval import baselines
from jacobian_scopes.guard import model_fingerprint

CALLS = {
    "semantic": lambda m, t: js.semantic_scope(m, t, 11, return_vectors=True),
    "semantic_logprob": lambda m, t: js.semantic_scope(m, t, 11, mode="logprob"),
    "semantic_multi": lambda m, t: js.semantic_scope(m, t, [11, 12], multi_token=True),
    "temperature": lambda m, t: js.temperature_scope(m, t),
    "fisher_exact": lambda m, t: js.fisher_scope(m, t, method="exact", decompose=True),
    "fisher_sketch": lambda m, t: js.fisher_scope(m, t),
    "fisher_principal": lambda m, t: js.fisher_scope(m, t, method="principal"),
    "direction": lambda m, t: js.scope(
        m, t, torch.ones(helpers.D_MODEL), at="blocks.0.hook_resid_post"
    ),
    "layers": lambda m, t: js.semantic_scope(m, t, 11, sources="resid_pre", freeze=["norm_scale"]),
    "attention": lambda m, t: baselines.attention(m, t, method="rollout"),
    "gradient_norm": lambda m, t: baselines.gradient_norm(m, t),
    "input_x_gradient": lambda m, t: baselines.input_x_gradient(m, t, 11),
    "integrated_gradients": lambda m, t: baselines.integrated_gradients(m, t, n_steps=3),
    "occlusion": lambda m, t: baselines.occlusion(m, t, replace="token", internal_batch_size=2),
}


def assert_same(before, after):
    assert after["requires_grad"] == before["requires_grad"]
    assert after["training"] == before["training"]
    assert after["hooks"] == before["hooks"]
    assert after["torch_hooks"] == before["torch_hooks"]
    assert len(after["grads"]) == len(before["grads"])
    for a, b in zip(after["grads"], before["grads"], strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.equal(a, b)


def fails(model, match, call, error=js.errors.ScopeInputError):
    """``call()`` raises ``error`` matching ``match``, and leaves ``model`` as it was."""
    before = model_fingerprint(model)
    with pytest.raises(error, match=match):
        call()
    assert_same(before, model_fingerprint(model))


def user_state(model):
    """A model as users leave it: trainable, in train mode, a stale .grad, a hook of theirs."""
    # The Bridge installs torch pre-hooks of its own on its norms during its first forward
    # pass; run one so that the fingerprint sees the model as users hold it.
    with torch.no_grad():
        model(helpers.tokens(3)[None])
    model.train()
    params = list(model.parameters())
    params[0].requires_grad_(False)  # a deliberately frozen parameter must stay frozen
    params[1].grad = torch.full_like(params[1], 0.5)
    calls = []
    model.add_hook("blocks.0.hook_resid_pre", lambda x, hook: calls.append(1))
    return calls


@pytest.mark.parametrize("call", list(CALLS))
def test_model_is_exactly_as_before_after_a_successful_call(tiny, call):
    model, _, _ = tiny
    calls = user_state(model)
    before = model_fingerprint(model)
    CALLS[call](model, helpers.tokens(6))
    assert_same(before, model_fingerprint(model))
    assert calls, "the user's own hook stays active during the call"


def test_model_is_exactly_as_before_after_an_exception_inside_a_user_hook(tiny):
    model, _, _ = tiny
    user_state(model)
    before = model_fingerprint(model)

    def boom(x, hook):
        raise RuntimeError("boom from a user hook")

    hooks = [("blocks.1.hook_resid_pre", boom)]
    for call in (
        lambda t: js.semantic_scope(model, t, 11, fwd_hooks=hooks),
        lambda t: baselines.integrated_gradients(model, t, fwd_hooks=hooks),
        lambda t: baselines.occlusion(model, t, fwd_hooks=hooks),
        lambda t: baselines.attention(model, t, fwd_hooks=hooks),
    ):
        with pytest.raises(RuntimeError, match="boom"):
            call(helpers.tokens(6))
        assert_same(before, model_fingerprint(model))


@pytest.mark.parametrize(
    "register",
    [
        "register_forward_hook",
        "register_forward_pre_hook",
        "register_full_backward_hook",
        "register_full_backward_pre_hook",
    ],
)
def test_torch_hooks_a_user_hook_leaves_on_other_hook_points_are_taken_off(tiny, register):
    # A call's hook that registers plain torch hooks elsewhere (a probe of the user's, say):
    # the points held none before the call, and must hold none after it.
    model, _, _ = tiny
    user_state(model)
    before = model_fingerprint(model)

    def leaves_hooks(x, hook):
        for name in ("blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"):
            getattr(model.hook_dict[name], register)(lambda *args: None)
        return x

    js.semantic_scope(model, helpers.tokens(6), 11, fwd_hooks=[("hook_embed", leaves_hooks)])
    assert_same(before, model_fingerprint(model))


def test_model_is_exactly_as_before_after_an_error_in_the_backward_phase(tiny):
    model, _, _ = tiny
    user_state(model)
    before = model_fingerprint(model)
    with pytest.raises(js.errors.ScopeInputError):
        js.scope(model, helpers.tokens(6), torch.ones(3))  # wrong shape, found after forward
    assert_same(before, model_fingerprint(model))


def test_scopes_run_inside_no_grad_blocks(tiny):
    model, _, _ = tiny
    toks = helpers.tokens(6)
    with torch.no_grad():
        inside = js.semantic_scope(model, toks, 11)
    assert torch.equal(inside.scores, js.semantic_scope(model, toks, 11).scores)
    assert torch.is_grad_enabled()


def test_parameters_receive_no_gradient_even_when_trainable(tiny):
    model, _, _ = tiny
    for p in model.parameters():
        p.requires_grad_(True)
        p.grad = None
    js.fisher_scope(model, helpers.tokens(6), method="exact")
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())

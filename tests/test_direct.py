"""The direct path: a scope from the input embeddings to the final state, with nothing else
listening, runs the Hugging Face model under a Bridge without the Bridge's wrappers. Same
scores as the Bridge's own forward pass, taken only when it skips nothing, and the model is
exactly as it was afterwards."""

from __future__ import annotations

import threading

import pytest
import torch

import helpers
import jacobian_scopes as js
from jacobian_scopes import checkpointing, direct, sdpa
from jacobian_scopes.adapter import ModelAdapter
from jacobian_scopes.engine import Trace
from jacobian_scopes.guard import model_fingerprint
from test_attention_path import llama_bridge, tiny_gemma3
from test_model_unchanged import assert_same, user_state

# A hook that changes nothing but makes a call run through the Bridge (with SDPA attention,
# as the direct path): the reference the direct path must equal.
THROUGH_BRIDGE = [("blocks.0.hook_resid_pre", lambda x, hook: x)]

CALLS = {
    "semantic": lambda m, p, **o: js.semantic_scope(m, p, 11, **o),
    "semantic_own_prediction_logprob": lambda m, p, **o: js.semantic_scope(
        m, p, mode="logprob", **o
    ),
    "temperature": lambda m, p, **o: js.temperature_scope(m, p, **o),
    "fisher": lambda m, p, **o: js.fisher_scope(m, p, **o),
    "fisher_exact": lambda m, p, **o: js.fisher_scope(m, p, method="exact", **o),
}


@pytest.fixture(scope="module")
def llama():
    return llama_bridge()


def trace_of(model, **kwargs):
    kwargs.setdefault("sources", ["hook_embed"])
    return Trace(ModelAdapter(model), helpers.tokens(6)[None], **kwargs)


def assert_same_result(a, b, rtol=1e-5):
    torch.testing.assert_close(a.scores, b.scores, rtol=rtol, atol=rtol * float(b.scores.max()))
    assert [p.token_id for p in a.top_predictions] == [p.token_id for p in b.top_predictions]
    torch.testing.assert_close(
        torch.tensor([p.prob for p in a.top_predictions]),
        torch.tensor([p.prob for p in b.top_predictions]),
    )


def test_the_default_scope_runs_on_the_unwrapped_model(llama):
    with trace_of(llama) as tr:
        assert tr.direct_blocker() is None
        assert tr.direct


@pytest.mark.parametrize("call", list(CALLS))
def test_the_direct_path_gives_the_bridges_scores(llama, call):
    prompt = helpers.tokens(9)
    assert_same_result(
        CALLS[call](llama, prompt), CALLS[call](llama, prompt, fwd_hooks=THROUGH_BRIDGE)
    )


def test_the_direct_path_gives_the_bridges_scores_for_a_padded_batch(llama):
    prompts = [helpers.tokens(9), helpers.tokens(4, seed=1), helpers.tokens(6, seed=2)]
    direct_results = js.semantic_scope(llama, prompts, 11)
    bridge_results = js.semantic_scope(llama, prompts, 11, fwd_hooks=THROUGH_BRIDGE)
    for a, b in zip(direct_results, bridge_results, strict=True):
        assert_same_result(a, b)


@pytest.mark.parametrize("scope", ["semantic", "fisher"])
def test_the_direct_path_gives_the_bridges_generation_attribution(llama, scope):
    direct_result = js.generate_scope(llama, helpers.tokens(5), 3, scope, stop_at_eos=False)
    # A hook left on the model (one that changes nothing) keeps the call on the Bridge.
    llama.add_hook(*THROUGH_BRIDGE[0])
    try:
        bridge_result = js.generate_scope(llama, helpers.tokens(5), 3, scope, stop_at_eos=False)
    finally:
        llama.reset_hooks()
    assert direct_result.generated_tokens == bridge_result.generated_tokens
    torch.testing.assert_close(
        direct_result.scores, bridge_result.scores, rtol=1e-5, atol=1e-6, equal_nan=True
    )
    torch.testing.assert_close(
        torch.tensor(direct_result.token_probs), torch.tensor(bridge_result.token_probs)
    )


@pytest.mark.parametrize("call", ["semantic", "temperature", "fisher_exact"])
def test_gemma3s_sliding_window_layers_give_the_bridges_scores_on_the_direct_path(call):
    model = tiny_gemma3()  # a window of 4, shorter than the prompt
    tokens = helpers.tokens(14, seed=2)
    with trace_of(model) as tr:
        assert tr.direct
    assert_same_result(CALLS[call](model, tokens), CALLS[call](model, tokens, attention="eager"))


@pytest.mark.parametrize("checkpoint", [True, None])
def test_the_direct_path_recomputes_its_own_layers_when_checkpointed(
    llama, monkeypatch, checkpoint
):
    tokens = helpers.tokens(8)
    plain = js.semantic_scope(llama, tokens, 11, checkpoint=False)
    if checkpoint is None:  # the budget leaves room for every layer but the first
        adapter = ModelAdapter(llama)
        keeps = checkpointing.activation_bytes(adapter, tokens[None].shape)
        monkeypatch.setattr(checkpointing, "ACTIVATIONS_ABOVE_BYTES", keeps - 1)
    with trace_of(llama, checkpoint=checkpoint) as tr:
        assert tr.direct
    layers = direct.twin(llama).base_model.layers
    runs = [0] * len(layers)

    def count(i):
        def hook(module, args):
            runs[i] += 1

        return hook

    # On a submodule: the recomputation calls the layer's own forward, past its hooks.
    handles = [layer.mlp.register_forward_pre_hook(count(i)) for i, layer in enumerate(layers)]
    try:
        ckpt = js.semantic_scope(llama, tokens, 11, checkpoint=checkpoint)
    finally:
        for handle in handles:
            handle.remove()
    # Each recomputed layer ran twice in the scope: once forward, once in the backward pass.
    recomputed = len(layers) if checkpoint else 1
    assert runs == [2] * recomputed + [1] * (len(layers) - recomputed)
    assert_same_result(ckpt, plain)


def test_logits_read_on_the_direct_path_are_the_bridges(llama):
    tokens = helpers.tokens(6)[None]
    with torch.no_grad():
        expected = llama(tokens)
    with trace_of(llama) as tr:
        assert tr.direct
        torch.testing.assert_close(tr.logits_at(0, [2, 5]), expected[0, [2, 5]])
        torch.testing.assert_close(tr.logits_at(slice(None), [5]), expected[:, [5]])
        torch.testing.assert_close(tr.logits, expected)


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"fwd_hooks": THROUGH_BRIDGE}, "hooks of the caller"),
        ({"freeze": ["blocks.0.ln1.hook_scale"]}, "hooks of the caller"),
        ({"sources": ["blocks.1.hook_resid_pre"]}, "a source other than hook_embed"),
        ({"sources": ["hook_embed", "blocks.1.hook_resid_pre"]}, "a source other than"),
        ({"at": "blocks.1.hook_resid_post"}, "an explanandum other than the final state"),
        ({"attention": "eager"}, "eager attention"),
    ],
)
def test_a_trace_that_needs_the_bridge_runs_through_it(llama, kwargs, reason):
    with trace_of(llama, **kwargs) as tr:
        assert reason in (tr.direct_blocker() or "")
        assert not tr.direct


def test_a_hook_left_on_the_model_keeps_the_call_on_the_bridge():
    model = llama_bridge()
    calls = []
    model.add_hook("blocks.1.hook_resid_post", lambda x, hook: calls.append(1))
    js.semantic_scope(model, helpers.tokens(6), 11)
    assert calls == [1]


def test_a_torch_hook_on_a_wrapped_module_keeps_the_call_on_the_bridge():
    model = llama_bridge()
    calls = []
    model.original_model.model.layers[1].mlp.register_forward_hook(lambda *a: calls.append(1))
    with trace_of(model) as tr:
        assert "a hook or a replaced forward" in (tr.direct_blocker() or "")
    assert calls == [1]


def test_the_bridges_own_capture_hooks_do_not_keep_calls_on_the_bridge():
    model = llama_bridge()
    with torch.no_grad():
        model(helpers.tokens(3)[None])  # the Bridge wires its capture hooks here
    with trace_of(model) as tr:
        assert tr.direct


def test_processed_weights_keep_the_call_on_the_bridge():
    if not helpers.has_bridge():
        pytest.skip("the direct path is the Bridge's (TransformerLens >= 3)")
    model = helpers.make_bridge("llama", compat={})
    with trace_of(model) as tr:
        assert not tr.direct


def test_an_unchecked_architecture_keeps_the_call_on_the_bridge():
    if not helpers.has_bridge():
        pytest.skip("the direct path is the Bridge's (TransformerLens >= 3)")
    with trace_of(helpers.make_bridge("gpt2")) as tr:
        assert not tr.direct


def test_the_twin_shares_the_weights_and_is_built_once():
    model = llama_bridge()
    bridges_attention = model.original_model.config._attn_implementation
    twin = direct.twin(model)
    assert direct.twin(model) is twin
    assert twin.lm_head.weight is model.original_model.lm_head.weight
    assert twin.config._attn_implementation == sdpa.implementation()
    assert model.original_model.config._attn_implementation == bridges_attention


def test_an_edited_weight_is_seen_by_the_direct_path():
    model = llama_bridge()
    before = js.semantic_scope(model, helpers.tokens(6), 11)
    with torch.no_grad():
        model.original_model.model.layers[0].mlp.down_proj.weight.mul_(3.0)
    after = js.semantic_scope(model, helpers.tokens(6), 11)
    reference = js.semantic_scope(model, helpers.tokens(6), 11, fwd_hooks=THROUGH_BRIDGE)
    assert not torch.allclose(before.scores, after.scores)
    assert_same_result(after, reference)


def test_a_replaced_module_builds_the_twin_again():
    model = llama_bridge()
    js.semantic_scope(model, helpers.tokens(6), 11)
    old = direct.twin(model)
    norm = model.original_model.model.norm.original_component
    norm.weight = torch.nn.Parameter(norm.weight.detach() * 2.0)
    assert direct.twin(model) is not old
    assert_same_result(
        js.semantic_scope(model, helpers.tokens(6), 11),
        js.semantic_scope(model, helpers.tokens(6), 11, fwd_hooks=THROUGH_BRIDGE),
    )


def test_the_model_is_exactly_as_before_after_a_direct_call():
    model = llama_bridge()
    user_state(model)  # trainable, train mode, a stale grad... and a hook: take it off
    model.reset_hooks(including_permanent=True)
    before = model_fingerprint(model)
    with trace_of(model) as tr:
        assert tr.direct
    js.fisher_scope(model, helpers.tokens(6))
    assert_same(before, model_fingerprint(model))
    assert model.training


def test_direct_calls_in_two_threads_give_one_threads_scores(llama):
    prompts = [helpers.tokens(8, seed=s) for s in range(4)]
    expected = [js.semantic_scope(llama, p, 11).scores for p in prompts]
    got: dict[int, torch.Tensor] = {}

    def work(i):
        got[i] = js.semantic_scope(llama, prompts[i], 11).scores

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, e in enumerate(expected):
        torch.testing.assert_close(got[i], e)


@pytest.mark.real
def test_the_real_models_default_scope_runs_direct_and_matches_the_bridge(smollm):
    if ModelAdapter(smollm).kind != "bridge":
        pytest.skip("the direct path is the Bridge's (TransformerLens >= 3)")
    prompt = "Tom loves Korean food. He grew up in the South and goes to Columbia. He is a"
    with Trace(ModelAdapter(smollm), smollm.to_tokens(prompt), sources=["hook_embed"]) as tr:
        assert tr.direct
    for call in ("semantic", "semantic_own_prediction_logprob", "temperature", "fisher_exact"):
        assert_same_result(
            CALLS[call](smollm, prompt), CALLS[call](smollm, prompt, fwd_hooks=THROUGH_BRIDGE)
        )
    # The sketch's support ends where the tail holds eps of the mass: the two paths' logits,
    # equal to rounding, can put one token of probability ~1e-5 on either side of that edge.
    assert_same_result(
        CALLS["fisher"](smollm, prompt),
        CALLS["fisher"](smollm, prompt, fwd_hooks=THROUGH_BRIDGE),
        rtol=1e-3,
    )


def test_a_model_the_user_drops_is_freed_with_its_twin():
    import gc
    import weakref

    model = llama_bridge()
    js.semantic_scope(model, helpers.tokens(6), 11)
    dropped = weakref.ref(model)
    del model
    gc.collect()
    assert dropped() is None

"""The attention implementation of a call: PyTorch's SDPA when no hook sits inside attention
(same scores as eager attention, memory linear in the prompt length), eager attention
whenever a hook there is needed, and the model exactly as it was afterwards."""

from __future__ import annotations

import pytest
import torch

import helpers
import jacobian_scopes as js
from jacobian_scopes import checkpointing, engine
from jacobian_scopes.adapter import ModelAdapter
from jacobian_scopes.attention import attention_path, sdpa_attention
from jacobian_scopes.guard import model_fingerprint
from test_model_unchanged import assert_same, user_state

CALLS = {
    "semantic": lambda m, p, **o: js.semantic_scope(m, p, 11, **o),
    "semantic_logprob_layers": lambda m, p, **o: js.semantic_scope(
        m, p, 11, mode="logprob", sources="resid_pre", **o
    ),
    "semantic_heads": lambda m, p, **o: js.semantic_scope(m, p, 11, sources="z", **o),
    "temperature": lambda m, p, **o: js.temperature_scope(m, p, **o),
    "temperature_mixed_sources": lambda m, p, **o: js.temperature_scope(
        m, p, sources=["hook_embed", "blocks.1.hook_resid_mid", "blocks.0.attn.hook_z"], **o
    ),
    "fisher_exact": lambda m, p, **o: js.fisher_scope(m, p, method="exact", **o),
    "fisher_layers": lambda m, p, **o: js.fisher_scope(
        m, p, method="principal", sources="resid_post", **o
    ),
}


@pytest.fixture
def sdpa_calls(monkeypatch):
    """Counts the calls of torch's scaled_dot_product_attention (eager attention makes none)."""
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return calls


def llama_bridge():
    """A tiny Llama-shaped Bridge (the SDPA path's architecture); skipped without the Bridge."""
    if not helpers.has_bridge():
        pytest.skip("the SDPA path is the Bridge's (TransformerLens >= 3)")
    return helpers.make_bridge("llama")


@pytest.fixture(scope="module")
def llama():
    return llama_bridge()


def tiny_gemma3():
    """A random-init Gemma-3 Bridge whose sliding window (4) is shorter than the prompts."""
    pytest.importorskip("transformers.models.gemma3")
    if not helpers.has_bridge():
        pytest.skip("Gemma-3 loads as a TransformerBridge only (TransformerLens >= 3)")
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(
        vocab_size=helpers.VOCAB,
        hidden_size=helpers.D_MODEL,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=helpers.N_HEADS,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=helpers.N_CTX,
        sliding_window=4,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        initializer_range=0.2,
    )
    torch.manual_seed(0)
    hf = Gemma3ForCausalLM(cfg).eval()
    helpers._perturb_norms(hf.named_parameters(), 1)
    hf.config.architectures = [type(hf).__name__]
    return TransformerBridge.boot_transformers(
        "google/gemma-3-270m", hf_model=hf, tokenizer=helpers.make_tokenizer()
    )


def prompts():
    """One prompt, and a batch of three of different lengths (right-padded together)."""
    return {
        "one": helpers.tokens(12, seed=3),
        "batch": [
            helpers.tokens(12, seed=3),
            helpers.tokens(7, seed=4),
            helpers.tokens(10, seed=5),
        ],
    }


def scores(result):
    results = result if isinstance(result, js.ScopeResults) else [result]
    return [r.scores for r in results]


def assert_same_scores(a, b):
    for x, y in zip(scores(a), scores(b), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("shape", ["one", "batch"])
@pytest.mark.parametrize("call", list(CALLS))
def test_sdpa_scores_equal_the_eager_scores(llama, sdpa_calls, call, shape):
    prompt = prompts()[shape]
    eager = CALLS[call](llama, prompt, attention="eager")
    assert not sdpa_calls
    auto = CALLS[call](llama, prompt)
    assert sdpa_calls, "the default runs SDPA where no hook sits inside attention"
    assert_same_scores(auto, eager)


def test_sdpa_with_checkpointing_equals_eager_attention(llama, sdpa_calls):
    toks = helpers.tokens(12, seed=3)
    eager = js.semantic_scope(llama, toks, 11, sources="resid_pre", attention="eager")
    both = js.semantic_scope(
        llama, toks, 11, sources="resid_pre", attention="sdpa", checkpoint=True
    )
    assert sdpa_calls
    assert_same_scores(both, eager)


def test_a_users_hook_on_z_is_applied_on_the_sdpa_path(llama, sdpa_calls):
    toks = helpers.tokens(10)

    def ablate(z, hook):
        z = z.clone()
        z[:, :, 1] = 0.0
        return z

    hooks = [("blocks.0.attn.hook_z", ablate)]
    eager = js.semantic_scope(llama, toks, 11, fwd_hooks=hooks, attention="eager")
    sdpa = js.semantic_scope(llama, toks, 11, fwd_hooks=hooks, attention="sdpa")
    assert sdpa_calls
    assert_same_scores(sdpa, eager)
    assert not torch.allclose(sdpa.scores, js.semantic_scope(llama, toks, 11).scores)


def test_gemma3_sliding_window_layers_give_the_eager_scores_on_sdpa(sdpa_calls):
    model = tiny_gemma3()
    toks = helpers.tokens(14, seed=2)
    for call in ("semantic_logprob_layers", "fisher_exact", "temperature"):
        eager = CALLS[call](model, toks, attention="eager")
        sdpa = CALLS[call](model, toks, attention="sdpa")
        assert_same_scores(sdpa, eager)
    frozen = js.semantic_scope(model, toks, 11, freeze=["norm_scale"], attention="eager")
    assert_same_scores(
        js.semantic_scope(model, toks, 11, freeze=["norm_scale"], attention="sdpa"), frozen
    )
    assert sdpa_calls


@pytest.fixture
def repeating_heads(monkeypatch):
    """The CUDA branch of jacobian_scopes.sdpa on the CPU: key/value heads repeated before
    SDPA wherever there is no mask; records the calls of torch's SDPA that it makes."""
    from jacobian_scopes import sdpa

    calls = []
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(query, key, value, **kwargs):
        calls.append((query.shape[1], key.shape[1], kwargs.get("enable_gqa", False)))
        return original(query, key, value, **kwargs)

    monkeypatch.setattr(
        sdpa, "repeats_heads", lambda q, k, mask: mask is None and k.shape[1] != q.shape[1]
    )
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return calls


@pytest.mark.parametrize("call", ["semantic", "temperature", "fisher_exact"])
def test_repeated_key_value_heads_as_on_cuda_give_the_eager_scores(llama, repeating_heads, call):
    toks = helpers.tokens(12, seed=4)
    eager = CALLS[call](llama, toks, attention="eager")
    assert_same_scores(CALLS[call](llama, toks, attention="sdpa"), eager)
    assert repeating_heads, "the SDPA path ran"
    # every call had as many key/value heads as query heads, and no enable_gqa
    assert all(q == k and not gqa for q, k, gqa in repeating_heads)


def test_gemma3_sliding_windows_keep_their_masks_under_the_registered_attention(
    repeating_heads,
):
    # Gemma-3's layers always get a mask (transformers repeats the heads itself then): what
    # this checks is that the name the SDPA path registers builds Gemma's masks as SDPA's.
    model = tiny_gemma3()
    toks = helpers.tokens(14, seed=2)
    for call in ("semantic_logprob_layers", "temperature"):
        eager = CALLS[call](model, toks, attention="eager")
        assert_same_scores(CALLS[call](model, toks, attention="sdpa"), eager)
    assert all(q == k and not gqa for q, k, gqa in repeating_heads)


def halve(x, hook):
    return 0.5 * x


@pytest.mark.parametrize("point", ["hook_pattern", "hook_attn_scores"])
def test_a_users_hook_inside_attention_keeps_the_eager_path(llama, sdpa_calls, point):
    toks = helpers.tokens(10)
    hooks = [(f"blocks.0.attn.{point}", halve)]
    hooked = js.semantic_scope(llama, toks, 11, fwd_hooks=hooks)
    assert not sdpa_calls
    assert_same_scores(
        hooked, js.semantic_scope(llama, toks, 11, fwd_hooks=hooks, attention="eager")
    )
    assert not torch.allclose(hooked.scores, js.semantic_scope(llama, toks, 11).scores)


@pytest.mark.parametrize("permanent", [False, True])
@pytest.mark.parametrize("point", ["hook_pattern", "hook_attn_scores"])
def test_a_hook_already_on_the_model_inside_attention_keeps_the_eager_path(
    sdpa_calls, point, permanent
):
    model = llama_bridge()
    toks = helpers.tokens(10)
    plain = js.semantic_scope(model, toks, 11)
    sdpa_calls.clear()
    model.add_hook(f"blocks.1.attn.{point}", halve, is_permanent=permanent)
    hooked = js.semantic_scope(model, toks, 11)
    assert not sdpa_calls
    assert not torch.allclose(hooked.scores, plain.scores)
    model.reset_hooks(including_permanent=True)
    assert_same_scores(js.semantic_scope(model, toks, 11), plain)


def test_a_names_filter_reaching_inside_attention_keeps_the_eager_path(llama, sdpa_calls):
    seen = []
    hooks = [(lambda name: name.endswith("hook_rot_q"), lambda x, hook: seen.append(hook.name))]
    js.semantic_scope(llama, helpers.tokens(8), 11, fwd_hooks=hooks)
    assert not sdpa_calls
    assert len(seen) == helpers.N_LAYERS


def test_frozen_attention_patterns_keep_the_eager_path(llama, sdpa_calls):
    toks = helpers.tokens(10)
    frozen = js.semantic_scope(llama, toks, 11, freeze=["attn_pattern"])
    assert not sdpa_calls
    assert not torch.allclose(frozen.scores, js.semantic_scope(llama, toks, 11).scores)


def test_an_attention_pattern_source_keeps_the_eager_path(llama, sdpa_calls):
    toks = helpers.tokens(10)
    r = js.semantic_scope(llama, toks, 11, sources=["blocks.1.attn.hook_rot_k"])
    assert not sdpa_calls
    assert r.scores.abs().sum() > 0


def test_asking_for_sdpa_with_a_hook_inside_attention_is_a_clear_error(llama):
    before = model_fingerprint(llama)
    with pytest.raises(js.errors.ScopeInputError, match=r"hook_pattern.*attention='auto'"):
        js.semantic_scope(llama, helpers.tokens(8), 11, freeze=["attn_pattern"], attention="sdpa")
    assert_same(before, model_fingerprint(llama))


def test_an_unknown_attention_value_is_a_clear_error(llama):
    with pytest.raises(js.errors.ScopeInputError, match="'auto', 'eager' or 'sdpa'"):
        js.semantic_scope(llama, helpers.tokens(8), 11, attention="flash")


@pytest.mark.parametrize(
    "kind, arch",
    [(k, a) for k in helpers.model_kinds() for a in helpers.ARCHS if (k, a) != ("bridge", "llama")],
)
def test_other_model_classes_and_architectures_keep_eager_attention(sdpa_calls, kind, arch):
    model = helpers.make_model(kind, arch)
    js.semantic_scope(model, helpers.tokens(8), 11)
    assert not sdpa_calls
    with pytest.raises(js.errors.ScopeInputError, match="attention='sdpa' is not possible"):
        js.semantic_scope(model, helpers.tokens(8), 11, attention="sdpa")


def test_checkpointing_on_sdpa_depends_on_the_linear_activations_only(llama, monkeypatch):
    adapter = ModelAdapter(llama)
    toks = helpers.tokens(6)[None]
    monkeypatch.setattr(checkpointing, "CHECKPOINT_ABOVE_BYTES", 0)
    assert engine.Trace(adapter, toks, sources=[]).attention == "sdpa"
    assert not engine.Trace(adapter, toks, sources=[]).checkpoint
    assert engine.Trace(adapter, toks, sources=[], attention="eager").checkpoint
    monkeypatch.setattr(
        checkpointing,
        "ACTIVATIONS_ABOVE_BYTES",
        checkpointing.activation_bytes(adapter, toks.shape) - 1,
    )
    assert engine.Trace(adapter, toks, sources=[]).checkpoint


def saved_state(model):
    layers = [b.attn for b in model.blocks]
    return (
        [("forward" in a.__dict__) for a in layers],
        [a.original_component.config._attn_implementation for a in layers],
        model.original_model.config._attn_implementation,
    )


def test_model_is_exactly_as_before_after_an_sdpa_call(sdpa_calls):
    model = llama_bridge()
    calls = user_state(model)
    before, state = model_fingerprint(model), saved_state(model)
    js.fisher_scope(model, helpers.tokens(8), sources="resid_pre", checkpoint=True)
    assert sdpa_calls
    assert_same(before, model_fingerprint(model))
    assert saved_state(model) == state
    assert state[0] == [False, False]  # no instance forward before, none left behind
    assert calls


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_model_is_exactly_as_before_after_an_exception_on_the_sdpa_path(sdpa_calls, error):
    model = llama_bridge()
    user_state(model)
    before, state = model_fingerprint(model), saved_state(model)

    def boom(x, hook):
        raise error("boom from a user hook")

    with pytest.raises(error, match="boom"):
        js.semantic_scope(
            model, helpers.tokens(8), 11, fwd_hooks=[("blocks.1.hook_resid_mid", boom)]
        )
    assert sdpa_calls
    assert_same(before, model_fingerprint(model))
    assert saved_state(model) == state


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_the_context_manager_restores_the_model_whatever_interrupts_it(error):
    model = llama_bridge()
    state = saved_state(model)
    with pytest.raises(error, match="stop"), sdpa_attention(model):
        assert saved_state(model) != state
        raise error("stop")
    assert saved_state(model) == state


def test_the_context_manager_leaves_an_own_forward_in_place():
    model = llama_bridge()
    attn = model.blocks[0].attn
    mine = attn.forward
    object.__setattr__(attn, "forward", mine)  # a user's own instance attribute
    with sdpa_attention(model):
        assert attn.__dict__["forward"] is not mine
    assert attn.__dict__["forward"] is mine


def test_the_path_is_decided_from_the_hooks_a_call_will_attach(llama):
    adapter = ModelAdapter(llama)
    assert attention_path(adapter, [("blocks.0.attn.hook_q", halve)]) == "sdpa"
    assert attention_path(adapter, [("blocks.0.attn.hook_rot_q", halve)]) == "eager"
    assert attention_path(adapter, [], "eager") == "eager"


@pytest.mark.real
def test_sdpa_and_eager_agree_on_the_default_model(smollm):
    prompt = (
        "Tom loves Korean food. He grew up in the South and goes to Columbia. He reads the "
        "news every morning, votes in every election, and argues about politics. He is a"
    )
    assert 30 <= smollm.to_tokens(prompt).shape[1] <= 50
    if ModelAdapter(smollm).kind != "bridge":
        pytest.skip("the default model is a HookedTransformer here: it has no SDPA path")
    eager = js.semantic_scope(smollm, prompt, " liberal", sources="resid_pre", attention="eager")
    sdpa = js.semantic_scope(smollm, prompt, " liberal", sources="resid_pre", attention="sdpa")
    torch.testing.assert_close(sdpa.scores, eager.scores, rtol=1e-3, atol=1e-5)
    fisher = [
        js.fisher_scope(smollm, prompt, method="principal", attention=a).scores
        for a in ("eager", "sdpa")
    ]
    torch.testing.assert_close(fisher[1], fisher[0], rtol=1e-3, atol=1e-5)


def test_another_threads_forward_pass_meanwhile_keeps_eager_attention(llama, sdpa_calls):
    import threading

    adapter = ModelAdapter(llama)
    toks, other_toks = helpers.tokens(8)[None], helpers.tokens(9, seed=1)[None]
    with torch.no_grad():
        expected = llama(other_toks)
    seen: list[int] = []
    out: dict[str, torch.Tensor] = {}

    def other() -> None:
        with (
            torch.no_grad(),
            llama.hooks([("blocks.0.attn.hook_pattern", lambda x, hook: seen.append(1))]),
        ):
            out["logits"] = llama(other_toks)

    with engine.Trace(adapter, toks, sources=["hook_embed"]) as trace:
        assert trace.attention == "sdpa" and sdpa_calls
        sdpa_calls.clear()
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert seen and not sdpa_calls
    torch.testing.assert_close(out["logits"], expected)

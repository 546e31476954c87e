"""Long prompts: block checkpointing (recompute each block in the backward pass) gives the
same scores as the plain path, turns itself on above the memory threshold, and leaves the
model exactly as it was."""

from __future__ import annotations

import warnings

import pytest
import torch

import helpers
import jacobian_scopes as js
from jacobian_scopes import checkpointing, engine
from jacobian_scopes.adapter import ModelAdapter
from jacobian_scopes.guard import model_fingerprint
from test_model_unchanged import assert_same, user_state

CALLS = {
    "semantic_layers": lambda m, t, c: js.semantic_scope(
        m,
        t,
        11,
        sources=["hook_embed", "blocks.1.hook_resid_pre", "blocks.0.attn.hook_z"],
        checkpoint=c,
    ),
    "semantic_frozen_norms": lambda m, t, c: js.semantic_scope(
        m, t, 11, freeze=["norm_scale"], checkpoint=c
    ),
    "temperature": lambda m, t, c: js.temperature_scope(m, t, checkpoint=c),
    "fisher": lambda m, t, c: js.fisher_scope(m, t, method="exact", checkpoint=c),
    "batch": lambda m, t, c: js.semantic_scope(m, [t, t[:5]], 11, checkpoint=c)[1],
}


@pytest.mark.parametrize("call", list(CALLS))
def test_checkpointed_scores_equal_the_plain_ones(tiny, call):
    model, _, _ = tiny
    toks = helpers.tokens(12, seed=5)
    plain = CALLS[call](model, toks, False)
    ckpt = CALLS[call](model, toks, True)
    torch.testing.assert_close(ckpt.scores, plain.scores, rtol=1e-5, atol=1e-7)


def test_a_users_hook_inside_a_block_is_applied_in_the_recomputation_too(tiny):
    model, _, _ = tiny
    toks = helpers.tokens(8)

    def ablate(z, hook):
        z = z.clone()
        z[:, :, 1] = 0.0
        return z

    hooks = [("blocks.0.attn.hook_z", ablate)]
    plain = js.semantic_scope(model, toks, 11, fwd_hooks=hooks, checkpoint=False)
    ckpt = js.semantic_scope(model, toks, 11, fwd_hooks=hooks, checkpoint=True)
    torch.testing.assert_close(ckpt.scores, plain.scores, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(plain.scores, js.semantic_scope(model, toks, 11).scores)


def test_hooks_inside_blocks_fire_once_more_under_checkpointing(tiny):
    """The recomputation runs the blocks again during the backward pass (documented in the
    ``fwd_hooks`` option); a hook outside the blocks fires once either way."""
    model, _, _ = tiny
    toks = helpers.tokens(8)
    counts = {"inside": 0, "outside": 0}

    def count(where):
        def hook(x, hook):
            counts[where] += 1

        return hook

    hooks = [("blocks.0.attn.hook_z", count("inside")), ("hook_embed", count("outside"))]
    js.semantic_scope(model, toks, 11, fwd_hooks=hooks, checkpoint=False)
    assert counts == {"inside": 1, "outside": 1}
    counts.update(inside=0, outside=0)
    js.semantic_scope(model, toks, 11, fwd_hooks=hooks, checkpoint=True)
    assert counts == {"inside": 2, "outside": 1}


def test_automatic_checkpointing_warns_when_the_user_gives_hooks(tiny, monkeypatch):
    model, _, _ = tiny
    toks = helpers.tokens(8)
    hooks = [("blocks.0.hook_resid_post", lambda x, hook: None)]
    monkeypatch.setattr(checkpointing, "CHECKPOINT_ABOVE_BYTES", 0)
    # the SDPA path has no patterns
    monkeypatch.setattr(checkpointing, "ACTIVATIONS_ABOVE_BYTES", 0)
    with pytest.warns(UserWarning, match="checkpoint=False"):
        js.semantic_scope(model, toks, 11, fwd_hooks=hooks)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        js.semantic_scope(model, toks, 11)  # no hooks of the user's: nothing to warn about
        js.semantic_scope(model, toks, 11, fwd_hooks=hooks, checkpoint=True)  # asked for


def test_checkpointing_turns_itself_on_above_the_threshold(tiny, monkeypatch):
    model, _, _ = tiny
    adapter = ModelAdapter(model)
    toks = helpers.tokens(6)[None]
    eager = {"sources": [], "attention": "eager"}  # SDPA keeps no patterns at all
    assert not engine.Trace(adapter, toks, **eager).checkpoint
    need = checkpointing.attention_bytes(adapter, toks.shape)
    assert need == 2 * helpers.N_LAYERS * helpers.N_HEADS * 36 * 4
    monkeypatch.setattr(checkpointing, "CHECKPOINT_ABOVE_BYTES", need - 1)
    assert engine.Trace(adapter, toks, **eager).checkpoint
    assert not engine.Trace(adapter, toks, checkpoint=False, **eager).checkpoint


def test_past_the_budget_only_the_blocks_that_do_not_fit_are_recomputed(tiny, monkeypatch):
    model, _, _ = tiny
    adapter = ModelAdapter(model)
    toks = helpers.tokens(6)[None]
    one_block = checkpointing.activation_bytes(adapter, toks.shape) // helpers.N_LAYERS
    monkeypatch.setattr(checkpointing, "ACTIVATIONS_ABOVE_BYTES", one_block)
    assert checkpointing.blocks_to_checkpoint(adapter, toks.shape, "sdpa") == helpers.N_LAYERS - 1
    layers = {"sources": ["blocks.1.hook_resid_pre"]}  # through the Bridge's own blocks
    with engine.Trace(adapter, toks, **layers) as tr:
        assert tr.checkpoint and tr.checkpoint_blocks == helpers.N_LAYERS - 1
        wrapped = ["forward" in block.__dict__ for block in model.blocks]
    assert wrapped == [True] * (helpers.N_LAYERS - 1) + [False]
    with engine.Trace(adapter, toks, checkpoint=True, **layers) as tr:
        assert tr.checkpoint_blocks == helpers.N_LAYERS
    monkeypatch.setattr(checkpointing, "ACTIVATIONS_ABOVE_BYTES", 0)
    assert checkpointing.blocks_to_checkpoint(adapter, toks.shape, "sdpa") == helpers.N_LAYERS


def test_partly_checkpointed_scores_equal_the_plain_ones(tiny, monkeypatch):
    model, _, _ = tiny
    toks = helpers.tokens(12, seed=5)
    plain = js.semantic_scope(model, toks, 11, sources="resid_pre", checkpoint=False)
    adapter = ModelAdapter(model)
    one_block = checkpointing.activation_bytes(adapter, toks[None].shape) // helpers.N_LAYERS
    monkeypatch.setattr(checkpointing, "ACTIVATIONS_ABOVE_BYTES", one_block)
    part = js.semantic_scope(model, toks, 11, sources="resid_pre")
    torch.testing.assert_close(part.scores, plain.scores, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_on_a_gpu_checkpointing_turns_on_only_past_half_the_free_memory(
    tiny, monkeypatch, attention
):
    model, _, _ = tiny
    adapter = ModelAdapter(model)
    toks = helpers.tokens(6)[None]
    keeps = checkpointing.activation_bytes(adapter, toks.shape)
    if attention == "eager":
        keeps += checkpointing.attention_bytes(adapter, toks.shape)
    # the CPU thresholds would checkpoint; a GPU with room enough does not
    monkeypatch.setattr(checkpointing, "CHECKPOINT_ABOVE_BYTES", 0)
    monkeypatch.setattr(checkpointing, "ACTIVATIONS_ABOVE_BYTES", 0)
    monkeypatch.setattr(checkpointing, "free_device_bytes", lambda device: 2 * keeps)
    assert not checkpointing.wants_checkpoint(adapter, toks.shape, attention)
    monkeypatch.setattr(checkpointing, "free_device_bytes", lambda device: 2 * keeps - 2)
    assert checkpointing.wants_checkpoint(adapter, toks.shape, attention)


def test_free_device_bytes_is_none_off_cuda():
    assert checkpointing.free_device_bytes(torch.device("cpu")) is None


def test_model_is_unchanged_after_checkpointed_calls_and_failures(tiny):
    model, _, _ = tiny
    user_state(model)
    before = model_fingerprint(model)
    own = [dict(b.__dict__) for b in model.blocks]
    js.fisher_scope(model, helpers.tokens(7), checkpoint=True)

    def boom(x, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        js.semantic_scope(
            model,
            helpers.tokens(7),
            11,
            checkpoint=True,
            fwd_hooks=[("blocks.1.hook_resid_pre", boom)],
        )
    assert_same(before, model_fingerprint(model))
    assert [set(b.__dict__) for b in model.blocks] == [set(d) for d in own]
    assert all("forward" not in b.__dict__ for b in model.blocks)


@pytest.mark.real
def test_checkpointing_on_the_default_model_at_a_moderate_length(smollm):
    toks = smollm.to_tokens(" ".join(["The quick brown fox jumps over the lazy dog."] * 30))
    assert toks.shape[1] > 300
    target = smollm.to_single_token(" fox")
    plain = js.semantic_scope(smollm, toks, target, checkpoint=False)
    ckpt = js.semantic_scope(smollm, toks, target, checkpoint=True)
    torch.testing.assert_close(ckpt.scores, plain.scores, rtol=1e-5, atol=1e-6)

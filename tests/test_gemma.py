"""The scopes on the real Gemma-3-270M (offline): where Gemma differs from Llama-like models
(embeddings scaled by √d inside the embedding layer, RMSNorm scaling by 1 + w, tied
embeddings, a 262k vocabulary, sliding-window layers) the scopes still pull back to the
embedding the network consumes and read the vector that makes its logits."""

from __future__ import annotations

import pytest
import torch

import helpers
import jacobian_scopes as js
from jacobian_scopes.adapter import ModelAdapter
from jacobian_scopes.engine import Trace
from jacobian_scopes.guard import model_fingerprint

pytestmark = pytest.mark.real

PARIS = "The Eiffel Tower stands in the heart of"


def test_gemma_predicts_paris(gemma):
    r = js.semantic_scope(gemma, PARIS, " Paris")
    top = r.top_predictions[0]
    assert top.token == " Paris" and top.prob == pytest.approx(0.79, abs=0.05)
    assert r.str_tokens[0] == "<bos>" and r.bos
    assert ModelAdapter(gemma).d_vocab == 262144


def test_final_state_reproduces_the_logits(gemma):
    # Also guards against a final logit softcap (Gemma 2 has one, Gemma 3 none): with one,
    # logits would be cap·tanh(y @ W_U / cap) and differ from y @ W_U + b_U.
    adapter = ModelAdapter(gemma)
    with Trace(adapter, gemma.to_tokens(PARIS), sources=[]) as tr:
        rebuilt = adapter.logits_from_state(tr.explanandum.detach())
        torch.testing.assert_close(rebuilt, tr.logits, atol=5e-4, rtol=1e-4)


def test_final_norm_gain_is_one_plus_the_stored_weight(gemma):
    # On the Bridge, ln_final.hook_normalized is before the gain; y is after it.
    adapter = ModelAdapter(gemma)
    gain, bias = adapter.final_norm_affine()
    assert bias is None
    seen = {}

    def keep(name):
        return lambda x, hook: seen.__setitem__(name, x.detach())

    names = ("ln_final.hook_normalized", "unembed.hook_in")
    with torch.no_grad(), gemma.hooks(fwd_hooks=[(n, keep(n)) for n in names]):
        gemma(gemma.to_tokens(PARIS))
    torch.testing.assert_close(seen[names[0]] * gain, seen[names[1]], atol=1e-4, rtol=1e-4)
    assert not adapter.final_norm_is_constant()
    assert (js.temperature_scope(gemma, PARIS).scores > 0).all()


def test_the_source_is_the_scaled_embedding_the_first_block_consumes(gemma):
    toks = gemma.to_tokens(PARIS)
    d = gemma.cfg.d_model
    seen = {}

    def keep(name):
        return lambda x, hook: seen.__setitem__(name, x.detach())

    names = ("hook_embed", "blocks.0.hook_resid_pre")
    with torch.no_grad(), gemma.hooks(fwd_hooks=[(n, keep(n)) for n in names]):
        gemma(toks)
    scaled = gemma.W_E[toks[0]].detach() * torch.tensor(d**0.5, dtype=gemma.W_E.dtype)
    torch.testing.assert_close(seen["hook_embed"][0], scaled)
    torch.testing.assert_close(seen["hook_embed"], seen["blocks.0.hook_resid_pre"])
    # Pulled back to either hook, the same scores: the scope's source is what the network
    # reads, not the unscaled table row (that would multiply every score by √d ≈ 25).
    r = js.semantic_scope(gemma, toks, " Paris", sources=list(names))
    assert r.source_labels == list(names)
    torch.testing.assert_close(r.scores[0], r.scores[1], rtol=1e-5, atol=0)


@pytest.fixture(scope="module")
def brute(gemma):
    """The full Jacobian ∂y_last/∂x (d × pos × d) of a short prompt, by brute force: the
    embeddings are replaced through a hook and torch differentiates the network (one
    vectorised backward pass per row batch instead of 640 separate ones)."""
    toks = gemma.to_tokens("The capital of France is")[0]
    f, a0 = helpers.final_state_fn(gemma, toks)
    with js.frozen(gemma):
        J = torch.autograd.functional.jacobian(lambda a: f(a)[-1], a0, vectorize=True)
        y = f(a0).detach()
    return toks, J.double(), y.double()


def test_semantic_scope_matches_the_brute_force_jacobian(gemma, brute):
    toks, J, _ = brute
    target = gemma.to_single_token(" Paris")
    W_U = gemma.W_U.detach()
    r = js.semantic_scope(gemma, toks, target)
    expected = helpers.pulled(J, W_U[:, target]).norm(dim=-1)
    torch.testing.assert_close(r.scores.double(), expected, rtol=1e-3, atol=1e-6)


def test_temperature_and_fisher_match_the_brute_force_jacobian(gemma, brute):
    toks, J, y = brute
    r = js.temperature_scope(gemma, toks)
    expected = helpers.pulled(J, y[-1] / y[-1].norm()).norm(dim=-1)
    torch.testing.assert_close(r.scores.double(), expected, rtol=1e-3, atol=1e-6)
    # Fisher over the likeliest tokens that hold half the mass (the full 262k-token support
    # would take all 640 VJPs): Σ_{j∈S} p_j ‖J_tᵀ(w_j − w̄)‖², with w̄ over every token.
    fisher = js.fisher_scope(gemma, toks, method="exact", eps=0.5, decompose=True)
    W_U = gemma.W_U.detach().double()
    p = torch.softmax(y[-1] @ W_U, dim=-1)
    probs, order = torch.sort(p, descending=True)
    mine = order[: int((torch.cumsum(probs, 0) < 0.5).sum()) + 1]
    S = torch.as_tensor(fisher.fisher.candidate_ids)
    # float32 against float64 probabilities may move the last candidate across the line
    assert len(set(S.tolist()) ^ set(mine.tolist())) <= 1 and len(S) > 1
    rows = W_U[:, S] - (W_U @ p)[:, None]  # (d, |S|)
    pulled = torch.einsum("is,itk->stk", rows, J)  # J_tᵀ(w_j − w̄) for each candidate j
    expected = (p[S][:, None] * pulled.pow(2).sum(-1)).sum(0)
    torch.testing.assert_close(fisher.scores.double(), expected, rtol=2e-3, atol=1e-7)


def test_gemma_is_left_exactly_as_it_was(gemma):
    with torch.no_grad():
        gemma(gemma.to_tokens("Hello"))  # the Bridge adds hooks of its own on a first forward
    modes = [m.training for m in gemma.modules()]
    flags = [p.requires_grad for p in gemma.parameters()]
    gemma.blocks[3].train()  # a user's deliberate mix of modes and trainable flags
    gemma.blocks[5].mlp.requires_grad_(False)
    try:
        before = model_fingerprint(gemma)
        sums = [float(p.detach().double().sum()) for p in gemma.parameters()]
        js.semantic_scope(gemma, PARIS, " Paris", sources="resid_pre")
        js.temperature_scope(gemma, PARIS)
        js.fisher_scope(gemma, PARIS)
        after = model_fingerprint(gemma)
        assert after["requires_grad"] == before["requires_grad"]
        assert after["training"] == before["training"]
        assert after["hooks"] == before["hooks"]
        assert after["torch_hooks"] == before["torch_hooks"]
        assert all(g is None for g in after["grads"])
        assert [float(p.detach().double().sum()) for p in gemma.parameters()] == sums
    finally:
        for m, mode in zip(gemma.modules(), modes, strict=True):
            m.training = mode
        for p, flag in zip(gemma.parameters(), flags, strict=True):
            p.requires_grad_(flag)


def test_gemmas_default_scopes_run_on_the_unwrapped_model_with_the_bridges_scores(gemma):
    # The twin (jacobian_scopes.direct) must scale the embeddings inside the embedding layer
    # and build the sliding-window masks as the Bridge's forward does.
    prompt = "Tom loves Korean food. He grew up in the South and goes to Columbia. He is a"
    with Trace(ModelAdapter(gemma), gemma.to_tokens(prompt), sources=["hook_embed"]) as tr:
        assert tr.direct
    through_bridge = [("blocks.0.hook_resid_pre", lambda x, hook: x)]
    for scope in (
        lambda **o: js.semantic_scope(gemma, prompt, " liberal", **o),
        lambda **o: js.temperature_scope(gemma, prompt, **o),
    ):
        torch.testing.assert_close(scope().scores, scope(fwd_hooks=through_bridge).scores)

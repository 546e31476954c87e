"""Every baseline equals a brute-force or textbook computation on tiny random models of three
architectures, on every model class this TransformerLens provides."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import helpers
import jacobian_scopes as js
from jacobian_scopes.adapter import ModelAdapter
from jacobian_scopes.eval import baselines
from test_model_unchanged import fails

ATOL = 1e-4
RTOL = 1e-4


def close(actual, expected, rtol=RTOL, atol=ATOL):
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol)


def batched_explained(model, toks, emb, target, mode="logprob", position=-1):
    """f for each row of embeddings ``emb`` (B, pos, d), from plain torch hooks: the
    embedding is *replaced*, y is read at the unembedding's input, f = log p or logit."""
    out = {}

    def pre(module, args):
        out["y"] = args[0]

    handle = model.unembed.register_forward_pre_hook(pre)
    try:
        with model.hooks(fwd_hooks=[("hook_embed", lambda x, hook: emb.to(x.dtype))]):
            model(toks[None].expand(emb.shape[0], -1))
    finally:
        handle.remove()
    logits = out["y"][:, position] @ model.W_U + model.b_U
    if mode == "logit":
        return logits[:, target]
    return torch.log_softmax(logits, dim=-1)[:, target]


def brute_gradient(model, toks, emb, target, mode="logprob"):
    """∂f/∂x for each row of ``emb`` (rows are independent sequences)."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        emb = emb.detach().clone().requires_grad_(True)
        f = batched_explained(model, toks, emb, target, mode)
        (g,) = torch.autograd.grad(f.sum(), emb)
    finally:
        for p, fl in zip(params, flags, strict=True):
            p.requires_grad_(fl)
    return g.detach(), f.detach()


@pytest.fixture
def case(tiny):
    model, _, _ = tiny
    toks = helpers.tokens(7, seed=1)
    _, x = helpers.final_state_fn(model, toks)  # the input embeddings (pos, d)
    with torch.no_grad():
        top1 = int(model(toks[None])[0, -1].argmax())
    return model, toks, x.float(), top1


# ---------------------------------------------------------------- gradient norm
def test_gradient_norm_is_the_logprob_semantic_scope(case):
    model, toks, x, _ = case
    r = baselines.gradient_norm(model, toks, 11)
    same = js.semantic_scope(model, toks, 11, mode="logprob")
    assert torch.equal(r.scores, same.scores)
    assert r.scope == "gradient_norm" and r.target.mode == "logprob"
    g, _ = brute_gradient(model, toks, x[None], 11)
    close(r.scores, g[0].norm(dim=-1))


def test_gradient_norm_explains_the_top_prediction_by_default(case):
    model, toks, x, top1 = case
    r = baselines.gradient_norm(model, toks)
    assert r.target.ids == [top1]
    g, _ = brute_gradient(model, toks, x[None], top1)
    close(r.scores, g[0].norm(dim=-1))


# ------------------------------------------------------------- input × gradient
@pytest.mark.parametrize("mode", ["logprob", "logit"])
def test_input_x_gradient_matches_brute_force(case, mode):
    model, toks, x, _ = case
    g, _ = brute_gradient(model, toks, x[None], 11, mode)
    expected = x * g[0]
    r = baselines.input_x_gradient(model, toks, 11, mode=mode, return_vectors=True)
    close(r.scores, expected.sum(-1))
    close(r.vectors, expected)
    norm = baselines.input_x_gradient(model, toks, 11, mode=mode, reduce="norm")
    close(norm.scores, expected.norm(dim=-1))
    assert r.target.ids == [11] and r.target.mode == mode
    # the Semantic scope's signed first-order terms are input × gradient by another path
    close(js.semantic_scope(model, toks, 11, mode=mode).first_order, r.scores)
    close(r.first_order, r.scores)


# --------------------------------------------------------- integrated gradients
def brute_ig(model, toks, x, x_base, target, nodes, weights, mode="logprob"):
    """Textbook IG, Σ_k w_k ∂f/∂x(x' + α_k (x − x')) ⊙ (x − x'), one batched backward."""
    alphas = torch.as_tensor(nodes, dtype=torch.float32)
    path = x_base[None] + alphas[:, None, None] * (x - x_base)[None]
    g, _ = brute_gradient(model, toks, path, target, mode)
    w = torch.as_tensor(weights, dtype=torch.float64)
    return (x - x_base).double() * torch.einsum("k,kpd->pd", w, g.double())


@pytest.mark.parametrize("rule", ["gausslegendre", "geometric", "riemann_right"])
def test_integrated_gradients_equal_the_textbook_sum_on_the_same_nodes(case, rule):
    model, toks, x, _ = case
    x_base = torch.zeros_like(x)
    x_base[0] = x[0]  # BOS stays in place by default
    nodes, weights = baselines.quadrature(12, rule)
    expected = brute_ig(model, toks, x, x_base, 11, nodes, weights)
    r = baselines.integrated_gradients(
        model,
        toks,
        11,
        n_steps=12,
        quadrature_rule=rule,
        internal_batch_size=5,
        return_vectors=True,
    )
    close(r.vectors, expected, rtol=1e-3, atol=1e-5)
    close(r.scores, expected.sum(-1), rtol=1e-3, atol=1e-5)
    assert r.scores[0] == 0  # BOS is not on the path


def test_integrated_gradients_with_a_pad_baseline_converge_to_a_fine_riemann_sum(case):
    model, toks, x, _ = case
    pad = baselines.replacement_token(ModelAdapter(model), None)
    assert pad == helpers.make_tokenizer().pad_token_id
    _, x_pad = helpers.final_state_fn(model, torch.full_like(toks, pad))
    n = 400  # midpoint rule: error O(1/n²)
    nodes, weights = (np.arange(n) + 0.5) / n, np.full(n, 1 / n)
    expected = brute_ig(model, toks, x, x_pad.float(), 11, nodes, weights, mode="logit")
    r = baselines.integrated_gradients(
        model, toks, 11, baseline="token", include_bos=True, mode="logit", n_steps=48
    )
    close(r.scores, expected.sum(-1), rtol=2e-3, atol=2e-4)
    assert r.params["replacement"] == pad and r.scores[0] != 0


# Norm-first models vary fast near α = 0 on the zero path (the first norm is scale-invariant),
# where the geometric rule puts its nodes; the pad path is smooth.
ACCURATE = {"zero": "geometric", "token": "gausslegendre"}


@pytest.mark.parametrize("baseline", ["zero", "token"])
def test_integrated_gradients_are_complete_up_to_the_quadrature_error(case, baseline):
    model, toks, x, top1 = case
    gaps = []
    for n in (4, 128):
        r = baselines.integrated_gradients(
            model, toks, baseline=baseline, n_steps=n, quadrature_rule=ACCURATE[baseline]
        )
        c = r.params["completeness"]
        assert c["sum"] == pytest.approx(float(r.scores.double().sum()), rel=1e-5, abs=1e-6)
        assert c["gap"] == pytest.approx(c["f_input"] - c["f_baseline"] - c["sum"], abs=1e-9)
        gaps.append(abs(c["gap"]))
    # f(x) is the model's own log-prob of its top-1 token
    _, f = brute_gradient(model, toks, x[None], top1)
    assert c["f_input"] == pytest.approx(float(f[0]), abs=1e-4)
    assert gaps[1] <= 1e-4 * max(1.0, abs(c["delta"]))
    assert gaps[1] <= gaps[0] + 1e-6


@pytest.mark.parametrize("rule", baselines.QUADRATURES)
def test_quadrature_rules_integrate_polynomials(rule):
    nodes, weights = baselines.quadrature(8, rule)
    assert weights.sum() == pytest.approx(1.0)
    assert (nodes >= 0).all() and (nodes <= 1).all()
    exact = {"gausslegendre": 15, "geometric": 3, "trapezoid": 1, "riemann_middle": 1}
    for degree in range(exact.get(rule, 0) + 1):
        assert (weights * nodes**degree).sum() == pytest.approx(1 / (degree + 1), rel=1e-10)
    fine, fine_w = baselines.quadrature(400, rule)
    assert (fine_w * fine**3).sum() == pytest.approx(0.25, rel=1e-2)  # first order at worst


def test_the_geometric_rule_puts_nodes_in_every_decade_near_zero():
    nodes, _ = baselines.quadrature(16, "geometric")
    for lo, hi in ((0, 1e-3), (1e-3, 1e-2), (1e-2, 1e-1), (1e-1, 1)):
        assert ((nodes > lo) & (nodes < hi)).sum() == 4


# -------------------------------------------------------------------- occlusion
def test_occlusion_equals_one_forward_per_token(case):
    model, toks, x, top1 = case
    n = len(toks)
    lp = []
    for t in range(n):
        emb = x.clone()
        emb[t] = 0
        with torch.no_grad():
            lp.append(batched_explained(model, toks, emb[None], top1)[0])
    with torch.no_grad():
        base = batched_explained(model, toks, x[None], top1)[0]
    r = baselines.occlusion(model, toks)
    close(r.scores, base - torch.stack(lp))
    assert r.target.ids == [top1]


def test_occlusion_kl_and_token_replacement(case):
    model, toks, _, top1 = case
    pad = helpers.make_tokenizer().pad_token_id
    with torch.no_grad():
        p0 = torch.log_softmax(model(toks[None])[0, -1].double(), -1)
        kls, drops = [], []
        for t in range(len(toks)):
            swapped = toks.clone()
            swapped[t] = pad
            pt = torch.log_softmax(model(swapped[None])[0, -1].double(), -1)
            kls.append((p0.exp() * (p0 - pt)).sum())
            drops.append(p0[top1].exp() - pt[top1].exp())
    kl = baselines.occlusion(model, toks, replace="token", measure="kl", internal_batch_size=3)
    close(kl.scores, torch.stack(kls))
    assert kl.target is None
    prob = baselines.occlusion(model, toks, replace="token", measure="prob", replacement=pad)
    close(prob.scores, torch.stack(drops))


def test_occlusion_leaves_tokens_after_the_position_at_zero(case):
    model, toks, _, _ = case
    r = baselines.occlusion(model, toks, 11, position=3)
    assert (r.scores[4:] == 0).all() and r.position == 3


# -------------------------------------------------------------------- attention
def patterns(model, toks):
    """Head-averaged attention pattern (query, key) of every layer."""
    seen = {}

    def grab(layer):
        def hook(pattern, hook):
            seen[layer] = pattern.detach()[0].double().mean(0)

        return hook

    hooks = [(f"blocks.{i}.attn.hook_pattern", grab(i)) for i in range(model.cfg.n_layers)]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        model(toks[None])
    return [seen[i] for i in range(model.cfg.n_layers)]


def test_attention_last_layer_is_the_head_mean_of_the_pattern_row(case):
    model, toks, _, _ = case
    expected = patterns(model, toks)[-1][-1]
    r = baselines.attention(model, toks)
    close(r.scores, expected, rtol=1e-5, atol=1e-6)
    assert r.scores.sum() == pytest.approx(1.0, abs=1e-5)
    assert r.target is None and r.scope == "attention_last"


def test_attention_rollout_multiplies_residual_mixed_layers(case):
    model, toks, _, _ = case
    n = len(toks)
    rollout = np.eye(n)
    for a in patterns(model, toks):
        mixed = 0.5 * a.numpy() + 0.5 * np.eye(n)
        rollout = (mixed / mixed.sum(1, keepdims=True)) @ rollout
    r = baselines.attention(model, toks, method="rollout", position=4)
    close(r.scores, torch.from_numpy(rollout[4]), rtol=1e-5, atol=1e-6)
    assert (r.scores[5:] == 0).all()


# -------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m, t: baselines.attention(m, t, method="mean"), "method must be one of"),
        (lambda m, t: baselines.gradient_norm(m, t, mode="prob"), "mode must be one of"),
        (lambda m, t: baselines.input_x_gradient(m, t, reduce="max"), "reduce must be one of"),
        (lambda m, t: baselines.integrated_gradients(m, t, n_steps=0), "n_steps"),
        (lambda m, t: baselines.integrated_gradients(m, t, baseline="noise"), "baseline"),
        (
            lambda m, t: baselines.integrated_gradients(m, t, quadrature_rule="simpson"),
            "quadrature",
        ),
        (lambda m, t: baselines.occlusion(m, t, measure="rank"), "measure must be one of"),
        (lambda m, t: baselines.occlusion(m, t, replace="token", replacement="w1 w2"), "not one"),
        (lambda m, t: baselines.input_x_gradient(m, t, 500), "outside the vocabulary"),
        (lambda m, t: baselines.occlusion(m, t, internal_batch_size=0), "internal_batch_size"),
    ],
)
def test_bad_input_gets_a_clear_error(kind, call, match):
    model = helpers.warmed_model(kind)
    fails(model, match, lambda: call(model, helpers.tokens(6)))


def test_baseline_results_render_like_the_scopes(kind, tmp_path):
    import matplotlib.pyplot as plt

    model = helpers.make_model(kind, "gpt2")
    prompt = "w1 w2 w3 w4"
    signed = baselines.input_x_gradient(model, prompt)
    assert (signed.scores < 0).any() and (signed.scores > 0).any()
    for r in (signed, baselines.attention(model, prompt), baselines.occlusion(model, prompt)):
        page = r.save_html(tmp_path / f"{r.scope}.html")
        assert "w3" in page.read_text()
        plt.close(r.plot())

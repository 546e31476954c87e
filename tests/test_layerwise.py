"""Layerwise drill-down: scores at any hook point, from the same single backward pass, equal
brute-force Jacobians of y with respect to each layer's activations; the public hook
functions give the same numbers as the one-call API; linearisation takes effect."""

from __future__ import annotations

import pytest
import torch

import helpers
import jacobian_scopes as js

SHORTCUTS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")


def close(a, b, rtol=2e-4, atol=2e-4):
    torch.testing.assert_close(a.double(), b.double(), rtol=rtol, atol=atol)


def jacobian_by_replacement(model, toks, src, position=-1, constants=()):
    """∂y_position/∂a for the activation a at ``src``, by replacing it through a hook.

    ``constants`` are hook names whose values are pinned to those of the unperturbed run
    (an independent way to linearise, for the freezing tests).
    """
    base = {}

    def grab(name):
        def f(x, hook):
            base[name] = x.detach().clone()

        return f

    with model.hooks(fwd_hooks=[(n, grab(n)) for n in (src, *constants)]):
        model(toks[None])

    def f(a):
        out = {}

        def pre(mod, args):
            out["y"] = args[0]

        hooks = [(src, lambda x, hook: a[None].to(x.dtype))]
        hooks += [(n, lambda x, hook, n=n: base[n]) for n in constants]
        handle = model.unembed.register_forward_pre_hook(pre)
        try:
            with model.hooks(fwd_hooks=hooks):
                model(toks[None])
        finally:
            handle.remove()
        return out["y"][0, position]

    return torch.autograd.functional.jacobian(f, base[src][0]).double()


def jacobian_from_layer(model, toks, layer, position=-1):
    """∂y/∂resid_pre[layer] with ``start_at_layer`` (HookedTransformer only)."""
    _, cache = model.run_with_cache(toks[None])
    r0 = cache[f"blocks.{layer}.hook_resid_pre"][0]

    def f(r):
        out = {}
        handle = model.unembed.register_forward_pre_hook(lambda m, args: out.update(y=args[0]))
        try:
            model(r[None], start_at_layer=layer)
        finally:
            handle.remove()
        return out["y"][0, position]

    return torch.autograd.functional.jacobian(f, r0).double()


@pytest.fixture(params=["gpt2", "llama"])
def model(kind, request):
    return helpers.make_model(kind, request.param), kind, request.param


def test_every_layer_of_resid_pre_matches_a_brute_force_jacobian(model):
    m, kind, _ = model
    toks = helpers.tokens(6, seed=5)
    w = m.W_U.detach()[:, 11].double()
    r = js.semantic_scope(m, toks, 11, sources="resid_pre")
    assert r.scores.shape == (helpers.N_LAYERS, 6) and r.score_axes == ("source", "token")
    assert r.source_labels == [
        f"blocks.{layer}.hook_resid_pre" for layer in range(helpers.N_LAYERS)
    ]
    for layer in range(helpers.N_LAYERS):
        if kind == "hooked":  # independent of hooks altogether
            J = jacobian_from_layer(m, toks, layer)
        else:  # the Bridge refuses start_at_layer: replace the activation by hand
            J = jacobian_by_replacement(m, toks, f"blocks.{layer}.hook_resid_pre")
        close(r.scores[layer], helpers.pulled(J, w).norm(dim=-1))


@pytest.mark.parametrize("shortcut", SHORTCUTS)
def test_each_shortcut_matches_brute_force_at_every_layer(model, shortcut):
    m, _, _ = model
    toks = helpers.tokens(6, seed=6)
    v = torch.randn(helpers.D_MODEL, generator=torch.Generator().manual_seed(2))
    r = js.scope(m, toks, v, sources=shortcut)
    for layer in range(helpers.N_LAYERS):
        name = js.sources.SHORTCUTS[shortcut].format(l=layer)
        if shortcut == "resid_mid":
            J = _jacobian_at_resid_mid(m, toks, layer)
        else:
            J = jacobian_by_replacement(m, toks, name)
        close(r.scores[layer], helpers.pulled(J, v).norm(dim=-1))


def _jacobian_at_resid_mid(m, toks, layer):
    """∂y/∂resid_mid without trusting any model's resid_mid hook: resid_mid = a is forced by
    replacing the attention output with a − resid_pre."""
    captured = {}

    def grab(x, hook):
        captured["pre"] = x.detach().clone()
        captured["attn"] = None

    def grab_attn(x, hook):
        captured["attn"] = x.detach().clone()

    with m.hooks(
        fwd_hooks=[
            (f"blocks.{layer}.hook_resid_pre", grab),
            (f"blocks.{layer}.hook_attn_out", grab_attn),
        ]
    ):
        m(toks[None])
    mid0 = captured["pre"][0] + captured["attn"][0]

    def f(a):
        out = {}
        handle = m.unembed.register_forward_pre_hook(lambda mod, args: out.update(y=args[0]))
        try:
            with m.hooks(
                fwd_hooks=[
                    (
                        f"blocks.{layer}.hook_attn_out",
                        lambda x, hook: (a - captured["pre"][0])[None],
                    )
                ]
            ):
                m(toks[None])
        finally:
            handle.remove()
        return out["y"][0, -1]

    return torch.autograd.functional.jacobian(f, mid0).double()


def test_resid_mid_includes_the_skip_connection_on_every_model_class(model):
    m, _, _ = model
    toks = helpers.tokens(6, seed=7)
    r = js.semantic_scope(m, toks, 11, sources="resid_mid")
    w = m.W_U.detach()[:, 11].double()
    for layer in range(helpers.N_LAYERS):
        close(
            r.scores[layer], helpers.pulled(_jacobian_at_resid_mid(m, toks, layer), w).norm(dim=-1)
        )


def test_resid_mid_is_refused_for_parallel_blocks(kind):
    m = helpers.make_model(kind, "neox")
    with pytest.raises(js.errors.ScopeInputError, match=r"parallel|not a hook"):
        js.semantic_scope(m, helpers.tokens(5), 11, sources="resid_mid")


def test_drill_down_at_the_embeddings_equals_the_plain_scope(tiny):
    m, _, _ = tiny
    toks = helpers.tokens(6, seed=8)
    plain = js.semantic_scope(m, toks, 11)
    drill = js.semantic_scope(m, toks, 11, sources=["hook_embed", "blocks.0.hook_resid_pre"])
    close(drill.scores[0], plain.scores, rtol=1e-6, atol=1e-6)
    close(drill.scores[1], plain.scores, rtol=1e-5, atol=1e-5)  # resid_pre[0] = embed (+ pos)
    close(drill.first_order[0], plain.first_order, rtol=1e-6, atol=1e-6)


def test_per_head_scores_have_a_layer_head_token_layout_and_match_brute_force(model):
    m, _, _ = model
    toks = helpers.tokens(6, seed=9)
    w = m.W_U.detach()[:, 11].double()
    r = js.semantic_scope(m, toks, 11, sources="z")
    assert r.scores.shape == (helpers.N_LAYERS, helpers.N_HEADS, 6)
    assert r.score_axes == ("layer", "head", "token")
    J = jacobian_by_replacement(m, toks, "blocks.1.attn.hook_z")  # (d, pos, head, d_head)
    close(r.scores[1], helpers.pulled(J, w).norm(dim=-1).T)


def test_first_order_terms_of_heads_sum_to_the_attention_output_s(model):
    """The linear decomposition: attn_out = Σ_h z_h W_O^h + b_O."""
    m, _, _ = model
    toks = helpers.tokens(6, seed=10)
    for layer in range(helpers.N_LAYERS):
        z, out = f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.hook_attn_out"
        r = js.semantic_scope(m, toks, 11, sources=[z, out], return_vectors=True)
        heads = r.first_order[: helpers.N_HEADS]
        attn = r.first_order[helpers.N_HEADS]
        bias_term = r.vectors[out] @ _output_bias(m, layer)
        close(heads.sum(0) + bias_term, attn, rtol=1e-4, atol=1e-4)
        assert r.source_labels[:2] == [f"{z}[0]", f"{z}[1]"]
        # the norms, by contrast, do not add up
        assert not torch.allclose(r.scores[: helpers.N_HEADS].sum(0), r.scores[helpers.N_HEADS])


def _output_bias(m, layer):
    try:
        return m.b_O[layer].detach().float()
    except (TypeError, AttributeError):  # the Bridge raises where a model has no o-bias
        return torch.zeros(helpers.D_MODEL)


def test_explanandum_at_an_intermediate_layer_is_attributed_to_earlier_sources(model):
    m, _, _ = model
    toks = helpers.tokens(6, seed=11)
    v = torch.randn(helpers.D_MODEL, generator=torch.Generator().manual_seed(3))
    at = "blocks.1.hook_resid_pre"
    r = js.scope(m, toks, v, at=at, sources="resid_post")
    # resid_post of layer 0 *is* resid_pre of layer 1: the Jacobian is the identity
    expected = torch.zeros(6)
    expected[-1] = v.norm()
    assert r.source_labels == ["blocks.0.hook_resid_post"]  # the shortcut stops at `at`
    close(r.scores[0], expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(js.errors.ScopeInputError, match="after the explained"):
        js.scope(m, toks, v, at=at, sources=["blocks.1.hook_resid_post"])
    emb = js.scope(m, toks, v, at=at)
    assert (emb.scores > 0).all()


def test_public_hooks_composed_with_a_users_ablation_give_the_one_call_numbers(tiny):
    m, _, _ = tiny
    toks = helpers.tokens(7, seed=12)

    def ablate_head_1(z, hook):
        z = z.clone()
        z[:, :, 1] = 0.0
        return z

    ablation = ("blocks.0.attn.hook_z", ablate_head_1)
    one_call = js.semantic_scope(m, toks, 11, sources="resid_pre", fwd_hooks=[ablation])
    probe = js.GradientProbe(m, sources="resid_pre")
    with js.frozen(m), m.hooks(fwd_hooks=[ablation, *probe.fwd_hooks]):
        logits = m(toks[None])
        grads = probe.backward(logits[0, -1, 11])
    assert set(grads) == {f"blocks.{layer}.hook_resid_pre" for layer in range(helpers.N_LAYERS)}
    close(grads.scores(), one_call.scores, rtol=1e-5, atol=1e-5)
    close(grads.first_order(), one_call.first_order, rtol=1e-5, atol=1e-5)
    assert one_call.params["interventions"] == ["blocks.0.attn.hook_z"]
    unablated = js.semantic_scope(m, toks, 11, sources="resid_pre")
    assert not torch.allclose(unablated.scores, one_call.scores)


def test_public_hooks_work_with_run_with_hooks_and_refuse_a_run_without_them(tiny):
    m, _, _ = tiny
    toks = helpers.tokens(5)
    probe = js.GradientProbe(m)
    logits = m.run_with_hooks(toks[None], fwd_hooks=probe.fwd_hooks)
    close(probe.backward(logits[0, -1, 11]).scores(), js.semantic_scope(m, toks, 11).scores)
    fresh = js.GradientProbe(m)
    with pytest.raises(js.errors.ScopeInputError, match="never fired"):
        fresh.backward(logits[0, -1, 11])
    with torch.no_grad():
        quiet = m.run_with_hooks(toks[None], fwd_hooks=fresh.fwd_hooks)
    with pytest.raises(js.errors.ScopeInputError, match="no_grad"):
        fresh.backward(quiet[0, -1, 11])


@pytest.mark.filterwarnings("ignore:A forward hook edited hook_scale")  # the pinned reference
def test_freezing_norm_scales_takes_effect_and_matches_pinned_scales(model):
    m, _, _ = model
    toks = helpers.tokens(6, seed=13)
    w = m.W_U.detach()[:, 11].double()
    scales = [n for n in m.hook_dict if n.endswith("hook_scale") and ("ln" in n or "norm" in n)]
    scales = list(dict.fromkeys(n for n in scales if not n.startswith("blocks.") or ".ln" in n))
    frozen = js.semantic_scope(m, toks, 11, freeze=["norm_scale"])
    free = js.semantic_scope(m, toks, 11)
    J = jacobian_by_replacement(m, toks, "hook_embed", constants=scales)
    close(frozen.scores, helpers.pulled(J, w).norm(dim=-1), rtol=1e-3, atol=1e-4)
    assert ((frozen.scores - free.scores).norm() / free.scores.norm()) > 0.01
    assert frozen.params["freeze"] == ["norm_scale"]


def test_freezing_the_final_norm_scale_gives_the_analytic_jacobian(model):
    """With its scale frozen the final norm is linear: ∂y/∂x = diag(g)(I − 11ᵀ/d)/σ (LN)."""
    m, _, arch = model
    toks = helpers.tokens(6, seed=14)
    last = f"blocks.{helpers.N_LAYERS - 1}.hook_resid_post"
    w = m.W_U.detach()[:, 11].double()
    r = js.semantic_scope(m, toks, 11, sources=[last], freeze=["norm_scale"])
    _, cache = m.run_with_cache(toks[None])
    scale = cache["ln_final.hook_scale"][0, -1].double().squeeze()
    gain, _ = js.adapter.ModelAdapter(m).final_norm_affine()
    d = helpers.D_MODEL
    centre = (
        torch.eye(d, dtype=torch.float64)
        - (arch != "llama") * torch.ones(d, d, dtype=torch.float64) / d
    )
    expected = (centre @ (gain.double() * w) / scale).norm()
    close(r.scores[0, -1], expected, rtol=1e-4, atol=1e-5)
    assert (r.scores[0, :-1] == 0).all()


def test_freezing_attention_patterns_takes_effect_and_matches_pinned_patterns(model):
    m, _, _ = model
    toks = helpers.tokens(6, seed=15)
    w = m.W_U.detach()[:, 11].double()
    patterns = [f"blocks.{layer}.attn.hook_pattern" for layer in range(helpers.N_LAYERS)]
    frozen = js.semantic_scope(m, toks, 11, freeze=["attn_pattern"])
    free = js.semantic_scope(m, toks, 11)
    J = jacobian_by_replacement(m, toks, "hook_embed", constants=patterns)
    close(frozen.scores, helpers.pulled(J, w).norm(dim=-1), rtol=1e-3, atol=1e-4)
    assert ((frozen.scores - free.scores).norm() / free.scores.norm()) > 0.05


def test_sources_by_filter_and_by_bridge_alias_are_keyed_by_the_names_asked_for(tiny):
    m, kind, _ = tiny
    toks = helpers.tokens(6)
    by_filter = js.semantic_scope(m, toks, 11, sources=lambda n: n.endswith("hook_resid_post"))
    assert by_filter.scores.shape[0] == helpers.N_LAYERS  # aliases of one hook point count once
    if kind == "bridge":
        aliased = js.semantic_scope(m, toks, 11, sources=["blocks.1.hook_in"])
        legacy = js.semantic_scope(m, toks, 11, sources=["blocks.1.hook_resid_pre"])
        assert aliased.source_labels == ["blocks.1.hook_in"]
        close(aliased.scores, legacy.scores, rtol=0, atol=0)


def test_fisher_and_temperature_drill_down_too(tiny):
    m, _, _ = tiny
    toks = helpers.tokens(6, seed=16)
    f = js.fisher_scope(m, toks, method="exact", eps=0.0, sources="resid_post")
    plain = js.fisher_scope(m, toks, method="exact", eps=0.0)
    assert f.scores.shape == (helpers.N_LAYERS, 6)
    t = js.temperature_scope(m, toks, sources=["hook_embed", "blocks.1.hook_resid_pre"])
    close(t.scores[0], js.temperature_scope(m, toks).scores, rtol=1e-6, atol=1e-6)
    # the last layer's output feeds y position by position: only the explained token counts
    assert (f.scores[-1, :-1].abs() < 1e-6).all() and f.scores[-1, -1] > 0
    assert plain.scores.shape == (6,)

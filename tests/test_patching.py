"""Activation and attribution patching against independent references, on both model
classes: a loop of single patched runs written here with plain hooks, and gradients taken
with leaf tensors put in place of the activation (not the library's taps)."""

from __future__ import annotations

import pytest
import torch

import helpers
from jacobian_scopes import patching
from jacobian_scopes.errors import ScopeInputError
from jacobian_scopes.guard import model_fingerprint

CLEAN = "w5 w6 w7 w8 w9 w10"
CORRUPT = "w5 w11 w14 w8 w12 w10"  # top prediction differs from CLEAN on both classes


@pytest.fixture
def model(kind):
    torch.manual_seed(0)
    return helpers.make_model(kind, "llama")


def _acts(model, tokens, name):
    got = {}

    def grab(x, hook):
        got["a"] = x.detach().clone()

    with model.hooks(fwd_hooks=[(name, grab)]), torch.no_grad():
        logits = model(tokens)
    return logits, got["a"]


def _logit_diff(logits, t, f):
    return float(logits[0, -1, t] - logits[0, -1, f])


def _reference(model, clean, corrupt, sources, direction):
    """One patched forward per cell, metric by hand."""
    ct, xt = model.to_tokens(clean), model.to_tokens(corrupt)
    n_layers = model.cfg.n_layers
    hook = "blocks.{}.hook_resid_pre" if sources == "resid_pre" else "blocks.{}.attn.hook_z"
    cl, _ = _acts(model, ct, hook.format(0))
    xl, _ = _acts(model, xt, hook.format(0))
    t, f = int(cl[0, -1].argmax()), int(xl[0, -1].argmax())
    lo, hi = _logit_diff(xl, t, f), _logit_diff(cl, t, f)
    base, donor = (xt, ct) if direction == "denoising" else (ct, xt)
    n = ct.shape[1]
    out = []
    for layer in range(n_layers):
        name = hook.format(layer)
        _, d = _acts(model, donor, name)
        heads = [None] if sources == "resid_pre" else range(d.shape[2])
        rows = []
        for h in heads:
            row = []
            for p in range(n):

                def put(x, hook, p=p, h=h, d=d):
                    x = x.clone()
                    if h is None:
                        x[0, p] = d[0, p]
                    else:
                        x[0, p, h] = d[0, p, h]
                    return x

                with model.hooks(fwd_hooks=[(name, put)]), torch.no_grad():
                    logits = model(base)
                row.append((_logit_diff(logits, t, f) - lo) / (hi - lo))
            rows.append(row)
        out.append(rows[0] if h is None else rows)
    return torch.tensor(out)


@pytest.mark.parametrize("sources", ["resid_pre", "z"])
@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_activation_patching_equals_a_loop_of_single_patched_runs(model, sources, direction):
    ref = _reference(model, CLEAN, CORRUPT, sources, direction)
    for method in ("batched", "transformer_lens"):
        ap = patching.activation_patching(
            model,
            CLEAN,
            CORRUPT,
            sources=sources,
            direction=direction,
            method=method,
            batch_size=5,
        )
        assert ap.values.shape == ref.shape
        torch.testing.assert_close(ap.values, ref.float(), atol=1e-4, rtol=1e-4)
    assert ap.clean_value == pytest.approx(1.0) and ap.corrupt_value == pytest.approx(0.0)
    # Where both prompts have the same tokens so far, nothing differs to patch.
    if sources == "resid_pre":
        assert float(ap.values[0, 2]) != pytest.approx(float(ap.values[0, 1]), abs=1e-4)
        assert float(ap.values[0, 0]) == pytest.approx(1.0 - (direction == "denoising"))


def test_a_user_metric_is_used_as_given(model):
    ct, xt = model.to_tokens(CLEAN), model.to_tokens(CORRUPT)

    def metric(logits):
        return logits[0, -1, 7] - logits[0, -2, 9]

    ap = patching.activation_patching(model, CLEAN, CORRUPT, metric, batch_size=4)
    _, d = _acts(model, ct, "blocks.1.hook_resid_pre")

    def put(x, hook):
        x = x.clone()
        x[0, 3] = d[0, 3]
        return x

    with model.hooks(fwd_hooks=[("blocks.1.hook_resid_pre", put)]), torch.no_grad():
        want = float(metric(model(xt)))
    assert float(ap.values[1, 3]) == pytest.approx(want, abs=1e-4)
    assert ap.clean_value == pytest.approx(
        float(metric(_acts(model, ct, "hook_embed")[0])), abs=1e-4
    )


def _gradient_at(model, tokens, name, metric):
    """d metric / d activation at ``name``, by swapping in a leaf tensor (one run per hook)."""
    _, a = _acts(model, tokens, name)
    leaf = a.clone().requires_grad_(True)
    with model.hooks(fwd_hooks=[(name, lambda x, hook: leaf)]):
        out = metric(model(tokens))
        (g,) = torch.autograd.grad(out, leaf)
    return a, g


@pytest.mark.parametrize("sources", ["resid_pre", "z"])
def test_attribution_patching_equals_its_definition(model, sources):
    at = patching.attribution_patching(model, CLEAN, CORRUPT, sources=sources)
    ct, xt = model.to_tokens(CLEAN), model.to_tokens(CORRUPT)
    hook = "blocks.{}.hook_resid_pre" if sources == "resid_pre" else "blocks.{}.attn.hook_z"
    cl, xl = _acts(model, ct, "hook_embed")[0], _acts(model, xt, "hook_embed")[0]
    t, f = int(cl[0, -1].argmax()), int(xl[0, -1].argmax())
    lo, hi = _logit_diff(xl, t, f), _logit_diff(cl, t, f)

    def metric(logits):
        return ((logits[0, -1, t] - logits[0, -1, f]) - lo) / (hi - lo)

    for layer in range(model.cfg.n_layers):
        a_corrupt, g = _gradient_at(model, xt, hook.format(layer), metric)
        _, a_clean = _acts(model, ct, hook.format(layer))
        want = ((a_clean - a_corrupt) * g)[0].sum(-1)  # (pos) or (pos, head)
        got = at.values[layer] if sources == "resid_pre" else at.values[layer].T
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert set(at.values.flatten().tolist()) != {0.0}


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_attribution_equals_activation_patching_where_the_network_is_linear(model, direction):
    # The logits are affine in the final norm's normalised output, and so is the metric.
    src = ["ln_final.hook_normalized"]
    kw = dict(sources=src, direction=direction)
    ap = patching.activation_patching(model, CLEAN, CORRUPT, **kw)
    at = patching.attribution_patching(model, CLEAN, CORRUPT, **kw)
    base = 0.0 if direction == "denoising" else 1.0
    torch.testing.assert_close(at.values + base, ap.values, atol=1e-4, rtol=1e-4)
    assert float(ap.values[0, -1] - base) != pytest.approx(0.0, abs=1e-3)


def test_clean_and_corrupt_of_different_lengths_are_refused(model):
    with pytest.raises(ScopeInputError, match="same number of tokens"):
        patching.activation_patching(model, CLEAN, "w5 w6 w7")
    with pytest.raises(ScopeInputError, match="same number of tokens"):
        patching.attribution_patching(model, CLEAN, "w5 w6 w7")
    with pytest.raises(ScopeInputError, match="same token"):
        patching.activation_patching(model, CLEAN, CORRUPT, target="w9", foil="w9")
    with pytest.raises(ScopeInputError, match="direction"):
        patching.activation_patching(model, CLEAN, CORRUPT, direction="sideways")
    with pytest.raises(ScopeInputError, match="list of hooks"):
        patching.activation_patching(
            model, CLEAN, CORRUPT, sources=["blocks.0.hook_resid_pre"], method="transformer_lens"
        )
    with pytest.raises(ScopeInputError, match="nothing for patching to recover"):
        patching.activation_patching(model, CLEAN, CLEAN, target="w9", foil="w10")


def test_model_is_unchanged_by_every_call(kind):
    model = helpers.warmed_model(kind, "llama")
    before = model_fingerprint(model)
    patching.activation_patching(model, CLEAN, CORRUPT, sources="z")
    patching.activation_patching(model, CLEAN, CORRUPT, method="transformer_lens")
    patching.attribution_patching(model, CLEAN, CORRUPT, sources="z")
    c = patching.compare(model, CLEAN, CORRUPT, sources="resid_pre", k=3)
    after = model_fingerprint(model)
    assert before["requires_grad"] == after["requires_grad"]
    assert before["training"] == after["training"]
    assert before["hooks"] == after["hooks"] and before["torch_hooks"] == after["torch_hooks"]
    assert all(g is None for g in after["grads"])
    assert list(c.table["map"])[:3] == ["scope norm", "scope first_order", "attribution patching"]


def test_compare_puts_every_map_on_the_same_cells(model):
    c = patching.compare(model, CLEAN, CORRUPT, sources="z", k=5)
    shapes = {name: tuple(m.shape) for name, m in c.maps.items()}
    assert len(set(shapes.values())) == 1, shapes
    assert c.table.shape[0] == 9 and {"spearman", "top_5"} <= set(c.table.columns)
    html = c.view().render(__import__("jacobian_scopes.viz.page", fromlist=["Page"]).Page())
    assert html.count('<table class="jsv-map">') == 4 and "jsv-agree" in html


def test_agreement():
    a = torch.tensor([[3.0, -2.0, 0.5]])
    assert patching.agreement(a, a, k=2) == {"spearman": 1.0, "top_k": 1.0}
    assert patching.agreement(a, -a, k=1)["spearman"] == pytest.approx(-1.0)
    assert patching.agreement(a, -a, k=1, signed=False)["spearman"] == pytest.approx(1.0)

"""The engine behind every scope: taps, captures and batched pullbacks."""

from __future__ import annotations

import torch

import helpers
from jacobian_scopes.adapter import ModelAdapter
from jacobian_scopes.engine import Trace


def test_batched_pullback_equals_one_prompt_at_a_time(tiny):
    model, _, _ = tiny
    adapter = ModelAdapter(model)
    rows = torch.stack([helpers.tokens(6, seed=1), helpers.tokens(6, seed=2)])
    g = torch.Generator().manual_seed(0)
    dirs = torch.randn(3, 2, 1, helpers.D_MODEL, generator=g)  # (K, batch, P, d)
    positions = torch.tensor([[5], [3]])
    with Trace(adapter, rows, sources=["hook_embed", "blocks.1.hook_resid_pre"]) as tr:
        batched = tr.pullback(positions, dirs).squared
    for b in range(2):
        with Trace(
            adapter, rows[b : b + 1], sources=["hook_embed", "blocks.1.hook_resid_pre"]
        ) as tr:
            single = tr.pullback([int(positions[b, 0])], dirs[:, b]).squared
        for name in single:
            torch.testing.assert_close(
                batched[name][:, b], single[name][:, 0], rtol=1e-5, atol=1e-6
            )


def test_summed_pullback_equals_the_sum_of_separate_ones(tiny):
    model, _, _ = tiny
    adapter = ModelAdapter(model)
    dirs = torch.randn(5, 1, helpers.D_MODEL, generator=torch.Generator().manual_seed(1))
    with Trace(adapter, helpers.tokens(6)[None], sources=["hook_embed"]) as tr:
        each = tr.pullback([5], dirs, batch_size=2, retain_graph=True).squared["hook_embed"]
        total = tr.pullback([5], dirs, keep_each=False).squared["hook_embed"]
    assert each.shape == (5, 1, 6) and total.shape == (1, 1, 6)
    torch.testing.assert_close(each.sum(0, keepdim=True), total, rtol=1e-5, atol=1e-6)


def test_tap_keeps_the_activation_it_saw(tiny):
    model, _, _ = tiny
    toks = helpers.tokens(5)[None]
    seen = {}
    with model.hooks(fwd_hooks=[("hook_embed", lambda x, hook: seen.setdefault("x", x.detach()))]):
        model(toks)
    with Trace(ModelAdapter(model), toks, sources=["hook_embed"]) as tr:
        torch.testing.assert_close(tr.taps["hook_embed"].value, seen["x"])

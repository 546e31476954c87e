"""The views on real model runs: tiny random models of every class and architecture, and
the real SmolLM2 (``real``). Patterns for the attention view come from a model run that
must leave the model exactly as it was."""

from __future__ import annotations

import pytest
import torch

import helpers
import jacobian_scopes as js
from jacobian_scopes.errors import ScopeInputError
from jacobian_scopes.guard import model_fingerprint
from jacobian_scopes.viz.report import render_document, widgets
from viz_support import artifact


def _same(a: dict, b: dict) -> bool:
    grads = all(
        (x is None and y is None) or (x is not None and y is not None and torch.equal(x, y))
        for x, y in zip(a["grads"], b["grads"], strict=True)
    )
    rest = all(a[k] == b[k] for k in ("requires_grad", "training", "hooks", "torch_hooks"))
    return grads and rest


def test_beside_attention_rows_are_the_explained_positions_attention(tiny):
    model, _, _ = tiny
    toks = helpers.tokens(9)
    r = js.semantic_scope(model, toks, 5, position=6)
    view = js.viz.beside_attention(model, r, layers=[1], heads=[0, 2])
    assert view.head_names == ["L1H0", "L1H2"]
    _, cache = model.run_with_cache(toks[None], names_filter="blocks.1.attn.hook_pattern")
    pattern = cache["blocks.1.attn.hook_pattern"][0]
    for row, h in zip(view.head_rows, (0, 2), strict=True):
        assert row.positions == [6]
        assert row.values == pytest.approx(pattern[h, 6].tolist(), abs=1e-6)
        assert sum(row.values) == pytest.approx(1.0, abs=1e-5)
    assert tuple(view.patterns.shape) == (2, 9, 9)
    [(_, props)] = [w for w in widgets(view) if w[0] == "AttentionHeads"]
    assert props["attentionHeadNames"] == ["L1H0", "L1H2"] and len(props["tokens"]) == 9


def test_beside_attention_picks_heads_like_the_scope_by_default(tiny):
    model, _, _ = tiny
    r = js.semantic_scope(model, helpers.tokens(8), 5)
    view = js.viz.beside_attention(model, r, k=3)
    assert len(view.head_rows) == 3
    sims = [float(row.meta.rsplit(" ", 1)[-1]) for row in view.head_rows]
    assert sims == sorted(sims, reverse=True)
    everything = js.viz.beside_attention(model, r, layers=[0, 1])
    assert len(everything.head_rows) == 2 * helpers.N_HEADS
    pairs = js.viz.beside_attention(model, r, heads=[(1, 3), (0, 0)])
    assert pairs.head_names == ["L1H3", "L0H0"]


def test_beside_attention_leaves_the_model_as_it_was(tiny):
    model, _, _ = tiny
    r = js.semantic_scope(model, helpers.tokens(7), 5)
    # The Bridge wires torch hooks of its own at its first forward pass (the scope above may
    # not have run one: see jacobian_scopes.direct): run one, as users' models have.
    with torch.no_grad():
        model(helpers.tokens(3)[None])
    seen = []
    model.blocks[0].hook_resid_pre.add_hook(lambda x, hook: seen.append(1))  # the user's own
    model.train()
    before = model_fingerprint(model)
    js.viz.beside_attention(model, r, layers=0)
    assert _same(before, model_fingerprint(model))
    assert model.training and seen  # user's hook ran, and is still there
    model.reset_hooks()
    model.eval()


def test_beside_attention_refuses_bad_selections(tiny):
    model, _, _ = tiny
    r = js.semantic_scope(model, helpers.tokens(6), 5)
    with pytest.raises(ScopeInputError, match="layer 9"):
        js.viz.beside_attention(model, r, layers=[9])
    with pytest.raises(ScopeInputError, match="head 7"):
        js.viz.beside_attention(model, r, layers=[0], heads=[7])
    with pytest.raises(ScopeInputError, match="not both"):
        js.viz.beside_attention(model, r, layers=[0], heads=[(0, 1)])
    with pytest.raises(ScopeInputError, match="empty"):
        js.viz.beside_attention(model, r, layers=[])
    with pytest.raises(TypeError):
        js.viz.beside_attention(torch.nn.Linear(2, 2), r)


def test_drill_down_results_show_as_maps(tiny):
    model, _, _ = tiny
    toks = helpers.tokens(6)
    layered = js.semantic_scope(model, toks, 5, sources="resid_pre")
    heads = js.fisher_scope(model, toks, sources="z")
    lt = js.viz.layer_token_map(layered)
    assert lt.rows == [f"L{i} resid_pre" for i in range(helpers.N_LAYERS)]
    assert torch.allclose(torch.tensor(lt.values), layered.scores)
    lh = js.viz.layer_head_map(heads)
    assert len(lh.rows) == helpers.N_LAYERS and len(lh.cols) == helpers.N_HEADS
    html = render_document(layered, heads)
    assert html.count("<table") == 3  # resid_pre: layer × token; z: layer × head, layer × token
    layered.plot()
    heads.plot()


def test_every_scope_renders(tiny):
    model, _, _ = tiny
    toks = helpers.tokens(7)
    results = [
        js.semantic_scope(model, toks, 5),
        js.semantic_scope(model, toks, 5, foil=6),
        js.semantic_scope(model, toks, [5, 6], multi_token=True),
        js.fisher_scope(model, toks),
        js.scope(model, toks, torch.randn(helpers.D_MODEL)),
    ]
    comps = widgets(*results)
    assert [c for c, _ in comps] == ["ColoredTokens"] * len(results)
    multi = comps[2][1]["tokens"]
    assert len(multi) == 8  # the first target token is teacher-forced into the input
    assert "<js-cont>" in multi[7] and multi[6].startswith("<js-pos>")


# ------------------------------------------------------------------ the real model
@pytest.mark.real
def test_liberal_vs_conservative_beside_attention_on_smollm(smollm, tmp_path):
    from jacobian_scopes.casestudies import CASES

    case = next(c for c in CASES if c.name == "implicit bias (liberal)")
    lib = js.semantic_scope(smollm, case.prompt, " liberal")
    con = js.semantic_scope(smollm, case.prompt, " conservative")
    before = model_fingerprint(smollm)
    att = js.viz.beside_attention(smollm, lib, k=4)
    assert _same(before, model_fingerprint(smollm))
    cmp = js.compare(lib, con, difference=True)
    assert cmp.shared_scale
    top = max(range(1, lib.n_tokens), key=lambda i: cmp.rows[0].values[i])
    assert lib.str_tokens[top] == " Columbia"
    path = js.save_html(
        artifact("viz_smollm_bias.html"),
        ("Liberal vs conservative", cmp),
        (
            "Semantic, Fisher and Temperature",
            js.compare(
                lib, js.fisher_scope(smollm, case.prompt), js.temperature_scope(smollm, case.prompt)
            ),
        ),
        ("Beside attention", att),
        title=case.prompt,
    )
    assert path.read_text(encoding="utf-8").count("var CircuitsVis=") == 1


@pytest.mark.real
def test_lorenz_time_series_on_smollm(smollm):
    from jacobian_scopes.casestudies import lorenz_series, series_prompt

    values = lorenz_series(40)
    r = js.temperature_scope(smollm, series_prompt(values))
    s = js.viz.series_influence(r)
    assert s.values == [float(v) for v in values]
    assert all(len(g) == 2 for g in s.token_groups)  # one token per digit
    fig = js.viz.plot_series(r)
    fig.savefig(artifact("viz_lorenz_series.png"), dpi=80)
    # The latest values weigh more than the series' average (SCOPES.md §7.4).
    assert max(s.influence[-3:]) > sum(s.influence) / len(s.influence)

"""The saved page in a real browser (headless Chromium): every widget mounts, nothing
errors, nothing is requested, and hostile token text is shown as text and never runs."""

from __future__ import annotations

import re

import torch

import jacobian_scopes as js
from jacobian_scopes.viz.attention import AttentionView
from jacobian_scopes.viz.tokens import token_view
from viz_support import (
    HOSTILE,
    artifact,
    fake_result,
    hostile_result,
    load_in_browser,
)


def _spaces(text: str) -> str:
    return re.sub(r"\s", " ", text)


def _attention_view(result):
    n = result.n_tokens
    patterns = torch.softmax(torch.randn(2, n, n, generator=torch.Generator().manual_seed(0)), -1)
    patterns = torch.tril(patterns)
    rows = [js.viz.colored_tokens(result.str_tokens, patterns[h, -1].tolist()) for h in range(2)]
    return AttentionView(
        scope_row=token_view(result),
        head_rows=rows,
        head_names=["L0H1", "L1H0"],
        patterns=patterns,
        tokens=list(result.str_tokens),
        title="beside attention",
    )


def test_report_renders_offline_and_inert(tmp_path):
    lib = hostile_result()
    con = hostile_result(target=" conservative")
    con.scores = con.scores.flip(0)
    layered = fake_result(
        ["<bos>", "a", " b<script>", " c"],
        torch.arange(12.0).reshape(3, 4),
        axes=("source", "token"),
        source_labels=[f"blocks.{i}.hook_resid_pre" for i in range(3)],
    )
    path = js.save_html(
        tmp_path / "report.html",
        lib,
        (
            "Side by side </h2><script>window.__pwned=9</script>",
            js.compare(lib, con, difference=True),
        ),
        ("Beside attention", _attention_view(lib)),
        ("Maps", layered),
        title="<script>window.__pwned=10</script> report",
    )
    html = path.read_text(encoding="utf-8")
    assert html.count("var CircuitsVis=") == 1  # the bundle, once for all widgets

    loaded = load_in_browser(path, screenshot=artifact("viz_report.png"), hover=3)

    assert loaded.errors == []
    assert loaded.requests == [path.resolve().as_uri()]
    assert loaded.pwned is None
    # Every widget mounted: ColoredTokens draw one element per token; AttentionHeads one
    # thumbnail (with its name) per head.
    n = lib.n_tokens
    comps = [w["component"] for w in loaded.widgets]
    assert comps == ["ColoredTokens"] * 4 + ["ColoredTokens"] * 3 + ["AttentionHeads"] + [
        "ColoredTokens"
    ]
    for w in loaded.widgets:
        if w["component"] == "ColoredTokens":
            assert w["tokens"] in (n, layered.n_tokens), w
        else:
            assert w["heads"] == 2 and w["canvases"] >= 2, w
    # The hostile tokens show exactly as they were written.
    # (CircuitsVis shows every whitespace character as a no-break space.)
    first = [_spaces(t) for t in loaded.texts[loaded.widgets[0]["id"]]]
    assert first == [_spaces(t.replace("\n", "↵")) for t in lib.str_tokens]
    for bad in HOSTILE[1:]:
        assert _spaces(bad) in first
    # Hovering shows the exact score and the rank.
    assert len(loaded.tips) == 1
    tip = _spaces(loaded.tips[0])
    assert f"score {js.viz.tokens.format_value(float(lib.scores[3]))}" in tip
    assert "rank " in tip and f"of {n - 1}" in tip


def test_notebook_output_renders_and_is_inert(tmp_path):
    # What a notebook cell shows (result._repr_html_()), put in a bare page twice: two
    # outputs on one page must both render.
    r = hostile_result()
    fragment = r._repr_html_()
    page = tmp_path / "notebook.html"
    page.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>"
        + fragment
        + r._repr_html_()
        + "</body></html>",
        encoding="utf-8",
    )
    loaded = load_in_browser(page, screenshot=artifact("viz_notebook.png"))
    assert loaded.errors == []
    assert loaded.pwned is None
    assert [w["tokens"] for w in loaded.widgets] == [r.n_tokens, r.n_tokens]
    assert loaded.requests == [page.resolve().as_uri()]

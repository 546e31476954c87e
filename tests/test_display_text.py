"""Text as the user wrote it: byte pieces merged, bidirectional controls made visible, maps
that read at a glance, labels that say what was explained, CSV rows that name it."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import helpers
import jacobian_scopes as js
from jacobian_scopes.text import merge_byte_pieces, token_label, visible_text
from jacobian_scopes.viz import maps as all_maps
from jacobian_scopes.viz.maps import MapView, normalized
from jacobian_scopes.viz.page import Page, circuitsvis_bundle
from jacobian_scopes.viz.report import render_document
from jacobian_scopes.viz.terminal import safe_text
from jacobian_scopes.viz.tokens import context, token_view
from viz_support import fake_result, load_in_browser

SPOOF = "abc\u202egnp.exe"


# ------------------------------------------------------------------ byte pieces
def test_byte_pieces_are_merged_onto_the_token_that_completes_the_character():
    text = "ü€"
    raw = text.encode()  # c3 bc e2 82 ac: one "token" per byte

    def decode(ids):
        return bytes(raw[i] for i in ids).decode("utf-8", errors="replace")

    pieces = [decode([i]) for i in range(len(raw))]
    assert all(p == "\ufffd" for p in pieces)
    merged = merge_byte_pieces(pieces, list(range(len(raw))), decode)
    assert merged == ["", "ü", "", "", "€"] and "".join(merged) == text
    # Not valid UTF-8: the replacement character stays (nothing is invented).
    bad = merge_byte_pieces(["\ufffd", "a"], [0, 1], lambda ids: "\ufffda"[: len(ids)])
    assert bad == ["\ufffd", "a"]


@pytest.mark.real
def test_real_tokenizer_shows_no_replacement_character(smollm):
    prompt = "German: Dies ist ein Aufsatz über kausale Zuschreibung. English:"
    r = js.semantic_scope(smollm, prompt, " This")
    raw = smollm.to_str_tokens(r.tokens)
    assert any("\ufffd" in t for t in raw), "the prompt no longer splits a character"
    assert not any("\ufffd" in t for t in r.str_tokens)
    assert "".join(r.str_tokens[1:]) == prompt
    # Widget props are JSON with \\u escapes for non-ASCII text (the CircuitsVis bundle
    # itself spells \\ufffd, so only the page without it is searched).
    html = render_document(r).replace(circuitsvis_bundle(), "")
    assert "\ufffd" not in html and "\\ufffd" not in html.lower() and "\\u00fc" in html
    assert "\ufffd" not in r.to_dataframe().to_csv()


def test_lists_of_top_tokens_name_an_empty_byte_piece_after_its_character():
    tokens = ["<bos>", "a", "", " ü", "ber", "", "", " €", ""]
    assert [token_label(tokens, i) for i in range(len(tokens))] == [
        "'<bos>'",
        "'a'",
        "' ü' (piece 1 of 2)",
        "' ü' (piece 2 of 2)",
        "'ber'",
        "' €' (piece 1 of 3)",
        "' €' (piece 2 of 3)",
        "' €' (piece 3 of 3)",
        "''",  # an empty token that completes nothing stays as it is
    ]


@pytest.mark.real
def test_the_cli_table_of_a_real_prompt_names_byte_pieces(smollm, monkeypatch):
    from rich.console import Console

    from jacobian_scopes.cli import attribution_table

    r = js.semantic_scope(smollm, "Der Hund läuft über die Straße und über", " die")
    console = Console(width=200, record=True)
    console.print(attribution_table([r], k=r.n_tokens - 1))
    shown = console.export_text()
    assert "' ü' (piece 1 of 2)" in shown and "''" not in shown


# ------------------------------------------------------------------ bidi controls
def test_bidirectional_controls_are_escaped_everywhere():
    assert visible_text(SPOOF) == "abc\\u202egnp.exe"
    assert safe_text(SPOOF) == "abc\\u202egnp.exe"
    r = fake_result(["<bos>", SPOOF, " b"], [1.0, 2.0, 3.0], target=" \u2066x")
    html = render_document(r)
    assert "\u202e" not in html and "\u2066" not in html
    csv = r.to_dataframe().to_csv()
    assert "\u202e" not in csv and "abc\\u202egnp.exe" in csv


def test_a_right_to_left_override_does_not_reorder_the_page(tmp_path):
    r = fake_result(["<bos>", SPOOF, " b"], [1.0, 2.0, 3.0])
    path = js.save_html(tmp_path / "bidi.html", r)
    loaded = load_in_browser(path)
    (texts,) = loaded.texts.values()
    shown = [t.replace("\xa0", " ") for t in texts]
    assert "abc\\u202egnp.exe" in shown and not any("\u202e" in t for t in shown)


# ------------------------------------------------------------------ maps
def test_row_normalisation_keeps_every_row_visible():
    grid = torch.tensor([[25.6, 1.0, 0.5], [1.25, 0.2, 1.0]])
    row = normalized(grid, "row")
    assert row[:, :].amax(1).tolist() == [1.0, 1.0]
    glob = normalized(grid, "global")
    assert float(glob[1].max()) == pytest.approx(1.25 / 25.6)
    log = normalized(grid, "log")
    assert 0.5 < float(log[1, 0]) < 1.0  # 1.3 decades below the top: still coloured
    signed = normalized(torch.tensor([[-2.0, 1.0]]), "row", signed=True)
    assert signed.tolist() == [[-1.0, 0.5]]
    with pytest.raises(ValueError, match="normalize"):
        normalized(grid, "max")


def test_signed_maps_draw_a_diverging_zero_centred_scale():
    view = MapView(values=[[-2.0, 0.0, 2.0]], rows=["L0"], cols=["a", "b", "c"], signed=True)
    html = view.render(Page())
    cells = [c.split('"')[0] for c in html.split('<td style="background: ')[1:]]
    assert cells[1] == "rgb(255,255,255)"  # zero is white
    assert cells[0] != cells[2] and "216" in cells[0] and "229" in cells[2]
    with pytest.raises(ValueError, match="signed"):
        MapView(values=[[-1.0]], rows=["L0"], cols=["a"])


def test_first_order_maps_of_a_drill_down_result(kind):
    model = helpers.make_model(kind, "gpt2")
    r = js.semantic_scope(model, helpers.tokens(5), 11, sources="z")
    views = all_maps(r, first_order=True)
    assert [v.signed for v in views] == [False, False, True, True]
    assert views[-1].values[0][1] == pytest.approx(float(r.first_order[0, :, 1].sum()), abs=1e-5)
    fig = r.plot(first_order=True, normalize="log")
    assert len(fig.axes) == 8  # four maps and their colour bars


# ------------------------------------------------------------------ labels and CSV
def test_intermediate_directions_are_labelled_as_what_they_are(kind):
    model = helpers.make_model(kind, "gpt2")
    v = torch.randn(model.cfg.d_model)
    r = js.scope(model, helpers.tokens(5), v, at="blocks.1.hook_resid_pre")
    assert "explains the direction at blocks.1.hook_resid_pre" in context(r)
    assert "prediction" not in context(r) and token_view(r).target is None
    final = js.scope(model, helpers.tokens(5), v)
    assert "prediction" in context(final)


def test_csv_rows_name_prompt_scope_target_foil_and_position(kind, tmp_path):
    model = helpers.make_model(kind, "gpt2")
    r = js.semantic_scope(model, "w5 w6 w7", "w9", foil="w10")
    df = pd.read_csv(r.to_csv(tmp_path / "r.csv"), keep_default_na=False)
    assert set(df.prompt) == {"".join(r.str_tokens[1:])}
    assert set(df.scope) == {"semantic"} and set(df.position) == {r.position}
    assert set(df.target) == {"".join(r.target.tokens)} and set(df.foil) == {r.target.foil}


# ------------------------------------------------------------------ attention
def test_beside_attention_weights_similarity_by_non_bos_mass(kind):
    model = helpers.make_model(kind, "gpt2")
    r = js.semantic_scope(model, helpers.tokens(8), 5)
    view = js.viz.beside_attention(model, r, layers=[0, 1])
    for row in view.head_rows:
        share = float(row.title.rsplit("BOS share ", 1)[1].rstrip("%")) / 100
        cos, rest = row.meta.split("cosine with the scope ")[1].split(
            " × attention on these tokens "
        )
        mass = float(rest.split("%")[0]) / 100
        assert mass == pytest.approx(1 - share, abs=0.011)
        weighted = float(row.meta.rsplit(" ", 1)[1])
        assert weighted == pytest.approx(float(cos) * mass, abs=0.01)
    scales = {row.scale for row in view.head_rows}
    assert len(scales) == 1  # one shared scale
    own = js.viz.beside_attention(model, r, layers=[0, 1], shared_scale=False)
    assert len({row.scale for row in own.head_rows}) > 1

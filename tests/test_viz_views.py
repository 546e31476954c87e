"""The views without a browser: escaping, colour scales, ranks, comparisons, maps, figures,
the terminal, and a snapshot of every widget's props (not the bundle)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
import torch
from rich.console import Console

import jacobian_scopes as js
from jacobian_scopes.viz import page as page_mod
from jacobian_scopes.viz.attention import AttentionView
from jacobian_scopes.viz.plots import mpl_text, series_influence
from jacobian_scopes.viz.report import notebook_html, render_document, widgets
from jacobian_scopes.viz.terminal import safe_text
from jacobian_scopes.viz.tokens import TokenView, colored_tokens, token_view
from viz_support import HOSTILE, fake_result, hostile_result, update_snapshots

SNAPSHOT = Path(__file__).parent / "data" / "viz_widget_props.json"


# ------------------------------------------------------------------ escaping
@pytest.mark.parametrize("token", HOSTILE)
def test_script_json_cannot_leave_the_script(token):
    text = page_mod.script_json({"tokens": [token], "x": 1.5})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text)["tokens"] == [token]


def test_script_json_refuses_nan():
    with pytest.raises(ValueError):
        page_mod.script_json({"v": float("nan")})


def test_bundle_is_inlinable_and_included_once():
    bundle = page_mod.circuitsvis_bundle()
    assert len(bundle) > 1_000_000
    assert not re.search(r"</script", bundle, re.IGNORECASE)
    assert "<!--" not in bundle and "sourceMappingURL" not in bundle
    r = hostile_result()
    html = render_document(r, js.compare(r, r), r, title="t")
    assert html.count(bundle) == 1
    assert html.count('class="jsv-widget"') == 4
    # Outside the bundle, nothing on the page points anywhere.
    rest = html.replace(bundle, "")
    assert not re.search(r"https?://|<[a-zA-Z][^>]*\b(src|href)\s*=|@import|url\(", rest)
    # The only script elements are ours: the bundle and the render calls.
    assert rest.count("<script>") == 2 and rest.count("</script>") == 2


def test_token_markup_escapes_every_token():
    view = token_view(hostile_result())
    for tok, markup in zip(view.tokens, view.token_markup(), strict=True):
        # The only tags are our custom elements; the token's own text is escaped.
        tags = re.findall(r"</?([A-Za-z][^\s/>]*)", markup)
        assert set(tags) <= {"js-tip", "js-bos", "js-pos", "js-tgt", "js-pred", "js-cont"}
        if "<" in tok:
            assert "&lt;" in markup
    # No whitespace in our own markup: CircuitsVis turns it into &nbsp;.
    tags = [t for m in view.token_markup() for t in re.findall(r"<[^>]*>", m)]
    assert tags and not any(re.search(r"\s", t) for t in tags)


# ------------------------------------------------------------------ scales and ranks
def test_bos_is_left_out_of_the_scale_but_shown():
    r = fake_result(["<bos>", "a", " b", " c"], [50.0, 1.0, 3.0, 2.0])
    view = token_view(r)
    props = view.props()
    assert props["maxValue"] == 3.0 and props["minValue"] == 0.0
    assert props["values"] == [0.0, 1.0, 3.0, 2.0]  # BOS drawn uncoloured
    assert view.ranks() == [None, 3, 1, 2]
    assert "left out of the colour scale" in props["tokens"][0]
    assert "<js-bos>" in props["tokens"][0]
    with_bos = token_view(r, include_bos=True)
    assert with_bos.props()["maxValue"] == 50.0 and with_bos.ranks()[0] == 1


def test_explained_position_and_target_are_marked():
    r = fake_result(["<bos>", "a", " b", " c"], [5.0, 1.0, 3.0, 2.0], position=2)
    markup = token_view(r).token_markup()
    assert markup[2].startswith("<js-pos>") and "<js-tgt>→ liberal</js-tgt>" in markup[2]
    assert "explained position" in markup[2]
    assert all("<js-pos>" not in m for i, m in enumerate(markup) if i != 2)
    # Without a target, the model's top prediction is shown instead, styled apart.
    t = fake_result(["<bos>", "a"], [1.0, 2.0], scope="temperature", target=None)
    assert "<js-pred>→ liberal</js-pred>" in token_view(t).token_markup()[1]


def test_hover_text_has_exact_score_and_rank():
    r = fake_result(["<bos>", "a", " b"], [9.0, 0.123456789, 2.5])
    markup = token_view(r).token_markup()
    assert "score 0.12345679 · rank 2 of 2" in markup[1]
    assert "score 2.5 · rank 1 of 2" in markup[2]


def test_signed_values_get_a_symmetric_scale():
    view = colored_tokens(["a", " b", " c"], [0.5, -2.0, 1.0])
    props = view.props()
    assert view.signed and props["minValue"] == -2.0 and props["maxValue"] == 2.0
    assert view.ranks() == [3, 1, 2]  # by magnitude
    with pytest.raises(ValueError, match="signed=True"):
        colored_tokens(["a", "b"], [1.0, -1.0], signed=False)


@pytest.mark.parametrize(
    "tokens, values, match",
    [
        (["a", "b"], [1.0], "one value per token"),
        (["a", "b"], [1.0, float("nan")], "NaN"),
        (["a"], [float("inf")], "NaN"),
    ],
)
def test_bad_values_are_refused(tokens, values, match):
    with pytest.raises(ValueError, match=match):
        colored_tokens(tokens, values)


def test_all_zero_scores_do_not_divide_by_zero():
    view = token_view(fake_result(["<bos>", "a"], [0.0, 0.0]))
    assert view.props()["maxValue"] == 1.0


# ------------------------------------------------------------------ compare
def test_compare_shares_a_scale_only_within_one_scope_and_mode():
    a = fake_result(["<bos>", "a", " b"], [9.0, 1.0, 2.0])
    b = fake_result(["<bos>", "a", " b"], [9.0, 4.0, 3.0], target=" conservative")
    same = js.compare(a, b)
    assert same.shared_scale and [r.scale for r in same.rows] == [4.0, 4.0]
    t = fake_result(["<bos>", "a", " b"], [9.0, 0.1, 0.2], scope="temperature", target=None)
    mixed = js.compare(a, t)
    assert not mixed.shared_scale
    assert [r.scale for r in mixed.rows] == pytest.approx([2.0, 0.2])


def test_compare_difference_is_signed():
    a = fake_result(["<bos>", "a", " b"], [9.0, 1.0, 2.0])
    b = fake_result(["<bos>", "a", " b"], [9.0, 4.0, 3.0], target=" conservative")
    diff = js.compare(a, b, difference=True).rows[-1]
    assert diff.signed and diff.values == [0.0, -3.0, -1.0]
    assert diff.props()["minValue"] == -3.0 and diff.props()["maxValue"] == 3.0


def test_compare_refuses_what_cannot_be_compared():
    a = fake_result(["<bos>", "a"], [1.0, 2.0])
    with pytest.raises(ValueError, match="at least two"):
        js.compare(a)
    with pytest.raises(ValueError, match="same tokens"):
        js.compare(a, fake_result(["<bos>", "b"], [1.0, 2.0]), difference=True)
    t = fake_result(["<bos>", "a"], [1.0, 2.0], scope="fisher", target=None)
    with pytest.raises(ValueError, match="same scope"):
        js.compare(a, t, difference=True)
    with pytest.raises(ValueError, match="titles"):
        js.compare(a, a, titles=["one"])
    with pytest.raises(TypeError):
        js.compare(a, "not a result")


# ------------------------------------------------------------------ maps
def test_layer_token_map_and_layer_head_map():
    scores = torch.arange(24.0).reshape(2, 3, 4)  # layer, head, token
    r = fake_result(
        ["<bos>", "a", " b", " c"],
        scores,
        axes=("layer", "head", "token"),
        source_labels=["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"],
    )
    lt = js.viz.layer_token_map(r)
    assert lt.rows == ["L0", "L1"] and len(lt.values[0]) == 4
    assert lt.values[0][1] == pytest.approx(float(scores[0, :, 1].norm()))
    lh = js.viz.layer_head_map(r)
    assert lh.cols == ["H0", "H1", "H2"]
    assert lh.values[1][2] == pytest.approx(float(scores[1, 2, 1:].norm()))  # BOS left out
    assert js.viz.layer_head_map(r, token=-1).values[0][0] == 3.0
    fisher = fake_result(
        ["<bos>", "a"], torch.ones(2, 3, 2), scope="fisher", axes=("layer", "head", "token")
    )
    assert js.viz.layer_token_map(fisher).values[0][1] == 3.0  # squared norms add
    flat = fake_result(["<bos>", "a"], [1.0, 2.0])
    with pytest.raises(ValueError, match="sources='z'"):
        js.viz.layer_head_map(flat)
    html = render_document(r)
    assert html.count("<table") == 2 and "rank 1 of" in html


# ------------------------------------------------------------------ time series
def test_series_influence_groups_digit_tokens_per_value():
    # "27,05,31," tokenised digit by digit (as SmolLM2 does), explained at the last comma.
    toks = ["<bos>", "2", "7", ",", "0", "5", ",", "3", "1", ","]
    scores = [9.0, 3.0, 4.0, 1.0, 1.0, 0.0, 1.0, 6.0, 8.0, 2.0]
    r = fake_result(toks, scores, scope="temperature", target=None)
    s = series_influence(r)
    assert s.values == [27.0, 5.0, 31.0]
    assert s.token_groups == [[1, 2], [4, 5], [7, 8]]
    assert s.influence == pytest.approx([5.0, 1.0, 10.0])  # root of the sum of squares
    assert series_influence(r, aggregate="sum").influence == [7.0, 1.0, 14.0]
    assert series_influence(r, aggregate="max").influence == [4.0, 1.0, 8.0]
    with pytest.raises(ValueError, match="aggregate"):
        series_influence(r, aggregate="mean")
    with pytest.raises(ValueError, match="fewer than two numbers"):
        series_influence(fake_result(["<bos>", "a", " b"], [1.0, 2.0, 3.0]))


# ------------------------------------------------------------------ figures
@pytest.mark.parametrize("fmt, magic", [("png", b"\x89PNG"), ("svg", b"<?xml"), ("pdf", b"%PDF")])
def test_figures_save_in_every_format(fmt, magic):
    r = hostile_result()
    layered = fake_result(
        ["<bos>", "a", " $b"], torch.rand(3, 2, 3), axes=("layer", "head", "token")
    )
    toks = ["<bos>"] + [c for v in ["12", "34", "56", "23"] for c in (*v, ",")]
    series = fake_result(toks, torch.rand(len(toks)), scope="temperature", target=None)
    for fig in (r.plot(), layered.plot(), series.plot("series"), js.viz.plot_series(series)):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt)
        assert buf.getvalue().startswith(magic)
    with pytest.raises(ValueError, match="kind"):
        r.plot("pie")


def test_matplotlib_text_is_literal():
    assert mpl_text("$x$") == r"\$x\$"
    assert mpl_text("a\nb") == "a↵b"


def test_figure_embeds_as_inline_svg():
    html = render_document(("Figure", hostile_result().plot()))
    assert "<svg" in html and "<?xml" not in html and "data:image" not in html


# ------------------------------------------------------------------ terminal
def test_terminal_view_shows_tokens_literally_and_safely():
    r = fake_result(["<bos>", "[bold]x[/bold]", "\x1b[2J", " y\n"], [9.0, 1.0, 2.0, 3.0])
    console = Console(record=True, width=100, color_system="truecolor", file=io.StringIO())
    js.viz.print_result(r, console=console)
    text = console.export_text()
    assert "[bold]x[/bold]" in text and "\\x1b[2J" in text and "y↵" in text
    assert "\x1b[2J" not in console.export_text(styles=True)
    assert "rank" in text and "3.0" in text  # the top table
    assert safe_text("\x07\x9b") == "\\x07\\x9b"


def test_show_outside_a_notebook_prints_to_the_terminal(capsys):
    js.show(js.compare(hostile_result(), hostile_result()))
    out = capsys.readouterr().out
    assert "Semantic" in out and "img/src" in out


# ------------------------------------------------------------------ save_html and notebooks
def test_save_html_accepts_results_views_sections_text_and_figures(tmp_path):
    r = hostile_result()
    path = js.save_html(
        tmp_path / "sub" / "r.html",
        r,
        "a paragraph <b>",
        ("A section", [r, js.compare(r, r)]),
        r.plot(),
        title="T",
    )
    html = path.read_text(encoding="utf-8")
    assert "<h2>A section</h2>" in html and "a paragraph &lt;b&gt;" in html
    assert html.count('class="jsv-widget"') == 4
    assert r.save_html(tmp_path / "one.html").exists()
    with pytest.raises(ValueError, match="at least one"):
        js.save_html(tmp_path / "x.html")
    with pytest.raises(TypeError, match="cannot show"):
        js.save_html(tmp_path / "x.html", 42)


def test_notebook_html_is_one_fragment_with_the_bundle():
    r = hostile_result()
    html = r._repr_html_()
    assert html.startswith('<div class="jsv">') and html.count("var CircuitsVis=") == 1
    assert "cdn" not in html.replace(page_mod.circuitsvis_bundle(), "")
    assert notebook_html(js.compare(r, r)).count("data-component") == 2
    # Each output gets its own widget ids, so several outputs can share one notebook.
    ids = re.findall(r'id="(jsv-[^"]+)"', r._repr_html_() + r._repr_html_())
    assert len(ids) == len(set(ids)) == 2


def test_views_reject_non_results():
    with pytest.raises(TypeError):
        token_view("x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="position"):
        TokenView(tokens=["a"], values=[1.0], positions=[3])


# ------------------------------------------------------------------ snapshot of the props
def _snapshot_views():
    lib = hostile_result()
    con = hostile_result(target=" conservative")
    con.scores = con.scores * 0.5
    temp = fake_result(
        ["<bos>", "1", "2", ","], [3.0, 1.0, 2.0, 0.5], scope="temperature", target=None
    )
    n = temp.n_tokens
    pattern = torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None]  # exact values
    attention = AttentionView(
        scope_row=token_view(temp),
        head_rows=[colored_tokens(temp.str_tokens, pattern[-1].tolist(), position=n - 1)],
        head_names=["L0H0"],
        patterns=pattern[None],
        tokens=["<bos>", "<b>1", "2&", ","],
    )
    return [lib, js.compare(lib, con, difference=True), temp, attention]


def test_widget_props_match_the_snapshot():
    got = [{"component": c, "props": p} for c, p in widgets(*_snapshot_views())]
    got = json.loads(json.dumps(got))  # tuples → lists, as stored
    if not SNAPSHOT.exists() and not update_snapshots():
        pytest.fail(f"{SNAPSHOT} is missing: run the test with UPDATE_SNAPSHOTS=1 to write it")
    if update_snapshots():
        SNAPSHOT.write_text(json.dumps(got, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    expected = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    assert got == expected, "widget props changed; rerun with UPDATE_SNAPSHOTS=1 if intended"

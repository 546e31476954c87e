"""What the model saw behind a merged character: the raw byte pieces on hover.

A character that byte-level BPE split over several tokens is shown once, on the token that
completes it (tests/test_display_text.py). These tests check that every view that shows
token text (coloured tokens, layer maps, patching maps) also says, on hover, which tokens
the model actually read and their bytes, and that results keep what that needs."""

from __future__ import annotations

import pytest

import jacobian_scopes as js
from jacobian_scopes import patching
from jacobian_scopes.io import dumps, loads
from jacobian_scopes.text import piece_note, token_bytes
from jacobian_scopes.viz.maps import layer_token_map
from jacobian_scopes.viz.page import Page
from jacobian_scopes.viz.tokens import TokenView, token_view


def test_token_bytes_reads_both_byte_alphabets():
    # GPT-2's byte alphabet: "Ġ" is the space byte, "Ã" is 0xC3, "¼" 0xBC, "Ċ" a newline.
    assert token_bytes("ĠÃ") == b" \xc3"
    assert token_bytes("¼ber") == b"\xbcber"
    assert token_bytes("Ċ") == b"\n"
    assert token_bytes("ðŁĺ") == "😀".encode()[:3]
    # SentencePiece's byte fallback tokens.
    assert token_bytes("<0xE2>") == b"\xe2"
    # Neither: a SentencePiece word piece, a character outside the byte alphabet.
    assert token_bytes("▁über") is None and token_bytes("日") is None


def test_piece_note_names_the_group_and_each_token_bytes():
    tokens = ["<s>", "", "", "€", "x", "", "ü"]
    raw = ["", "<0xE2>", "<0x82>", "<0xAC>", "", "<0xC3>", "<0xBC>"]
    assert piece_note(tokens, raw, 1) == (
        "byte piece of the character shown on token #3 · bytes E2"
    )
    assert piece_note(tokens, raw, 3) == "merged from tokens #1–#3 · bytes E2 | 82 | AC"
    assert piece_note(tokens, raw, 6) == "merged from tokens #5–#6 · bytes C3 | BC"
    assert piece_note(tokens, raw, 0) is None and piece_note(tokens, raw, 4) is None
    assert piece_note(tokens, None, 3) is None and piece_note(tokens, raw[:3], 1) is None
    # Strings whose bytes cannot be read (or do not spell the character) are shown as they are.
    note = piece_note(["", "ü"], ["<0xC3>", "▁x"], 1)
    assert note == "merged from tokens #0–#1 · tokens '<0xC3>' | '▁x'"
    # "Ã½" are the bytes of "ý", not of the "ü" shown: no byte is claimed.
    assert piece_note(["", "ü"], ["Ã", "½"], 1) == "merged from tokens #0–#1 · tokens 'Ã' | '½'"


def test_views_put_the_bytes_in_the_hover_text():
    v = TokenView(tokens=["a", "", " ü"], values=[1.0, 2.0, 3.0], byte_pieces=["", "ĠÃ", "¼"])
    tips = v.token_markup()
    assert "byte piece of the character shown on token #2 · bytes 20 C3" in tips[1]
    assert "merged from tokens #1–#2 · bytes 20 C3 | BC" in tips[2]
    assert "bytes" not in tips[0]
    # Without the raw pieces, the older note stays.
    plain = TokenView(tokens=["a", "", " ü"], values=[1.0, 2.0, 3.0]).token_markup()
    assert "byte piece of the character shown on the next token" in plain[1]


@pytest.mark.real
def test_real_results_and_views_carry_the_raw_pieces(smollm, tmp_path):
    prompt = "Dies ist ein Aufsatz über kausale Zuschreibung. English: This is a paper on"
    r = js.semantic_scope(smollm, prompt, " causal", sources="resid_pre")
    u = r.str_tokens.index(" ü")
    assert r.str_tokens[u - 1] == "" and r.byte_pieces is not None
    assert r.byte_pieces[u - 1 : u + 1] == ["ĠÃ", "¼"]
    assert not any(r.byte_pieces[: u - 1]) and not any(r.byte_pieces[u + 1 :])
    want = f"merged from tokens #{u - 1}–#{u} · bytes 20 C3 | BC"
    assert want in token_view(r).token_markup()[u]
    html = layer_token_map(r).render(Page())
    # Every row's cell in that column, and the column's header.
    assert html.count(want) == smollm.cfg.n_layers + 1
    assert loads(dumps(r)).byte_pieces == r.byte_pieces

    clean = "Anna sagte über Bob: Bob gab das Buch an"
    corrupt = "Bob sagte über Anna: Anna gab das Buch an"
    at = patching.attribution_patching(smollm, clean, corrupt, target=" Anna", foil=" Bob")
    u = at.str_tokens.index(" ü")
    assert at.byte_pieces is not None and at.byte_pieces[u] == "¼"
    assert f"merged from tokens #{u - 1}–#{u} · bytes 20 C3 | BC" in at.map().render(Page())

    plain = js.semantic_scope(smollm, "The capital of France is", " Paris")
    assert plain.byte_pieces is None

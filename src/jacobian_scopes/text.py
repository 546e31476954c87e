"""Token text as the user wrote it, and shown so that it cannot pretend to be other text.

* :func:`merge_byte_pieces`: byte-level BPE tokenizers (GPT-2, Llama 3, SmolLM2) split a
  character of several UTF-8 bytes over tokens ("über" → a piece with the first byte of
  "ü", then a piece with the second byte and "ber"); decoded one by one, each piece shows
  U+FFFD. The character is given to the token that completes it, the pieces before it
  become empty strings, so that the tokens still join to the decoded text.
* :func:`visible_text`: bidirectional controls (U+202A–U+202E, U+2066–U+2069, U+200E/F,
  U+061C) would make ``abc\\u202egnp.exe`` display as ``abcexe.png``; they are written as
  visible ``\\u202e`` escapes instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

BIDI_CONTROLS = frozenset([*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C])
_REPLACEMENT = "\ufffd"
# A UTF-8 character has at most four bytes, so it spans at most four byte-level tokens.
_MAX_PIECES = 4


def visible_text(text: str) -> str:
    """``text`` with every bidirectional control written as a visible ``\\uXXXX`` escape.

    Example:
        >>> from jacobian_scopes.text import visible_text
        >>> visible_text("abc\\u202egnp.exe")
        'abc\\\\u202egnp.exe'
    """
    if not any(ord(ch) in BIDI_CONTROLS for ch in text):
        return text
    return "".join(f"\\u{ord(ch):04x}" if ord(ch) in BIDI_CONTROLS else ch for ch in text)


def merge_byte_pieces(
    pieces: Sequence[str], ids: Sequence[int], decode: Callable[[list[int]], str]
) -> list[str]:
    """Token strings with multi-byte characters shown once, on the token that completes them.

    ``pieces`` are the tokens decoded one by one (as ``model.to_str_tokens`` gives them),
    ``decode`` decodes a list of ids together. Tokens without U+FFFD are kept as they are;
    a run of tokens whose pieces end in U+FFFD is decoded together, the text given to the
    run's last token and the others left empty. Input that is not valid UTF-8 keeps its
    U+FFFD (after four pieces, or at the end of the prompt).

    Example:
        >>> from jacobian_scopes.text import merge_byte_pieces
        >>> byte = {0: "\\ufffd", 1: "\\ufffdber"}
        >>> merge_byte_pieces(["\\ufffd", "\\ufffdber"], [0, 1],
        ...                   lambda ids: "über" if ids == [0, 1] else byte[ids[0]])
        ['', 'über']
    """
    out = list(pieces)
    n = len(out)
    i = 0
    while i < n:
        if _REPLACEMENT not in out[i]:
            i += 1
            continue
        done = False
        for j in range(i, min(n, i + _MAX_PIECES)):
            text = decode([int(t) for t in ids[i : j + 1]])
            if _REPLACEMENT not in text:
                out[i:j] = [""] * (j - i)
                out[j] = text
                i = j + 1
                done = True
                break
        if not done:
            i += 1
    return out


def token_label(tokens: Sequence[str], i: int) -> str:
    """Token ``i`` quoted for lists and tables, as the user would recognise it.

    A byte piece that :func:`merge_byte_pieces` left empty is named after the character it
    starts, with its place among that character's pieces: in a table of top tokens, ``''``
    would say nothing.

    Example:
        >>> from jacobian_scopes.text import token_label
        >>> tokens = ["<bos>", "", " ü", "ber"]
        >>> [token_label(tokens, i) for i in range(4)]
        ["'<bos>'", "' ü' (piece 1 of 2)", "' ü' (piece 2 of 2)", "'ber'"]
    """
    run = _piece_run(tokens, i)
    text = repr(visible_text(tokens[i if run is None else run[1]]))
    if run is None:
        return text
    first, last = run
    return f"{text} (piece {i - first + 1} of {last - first + 1})"


def _piece_run(tokens: Sequence[str], i: int) -> tuple[int, int] | None:
    # The empty pieces before a character and the token that completes it.
    last = i
    while last < len(tokens) and tokens[last] == "" and last - i < _MAX_PIECES:
        last += 1
    if last == len(tokens) or tokens[last] == "":
        return None
    first = i
    while first > 0 and tokens[first - 1] == "" and last - first < _MAX_PIECES - 1:
        first -= 1
    return (first, last) if first < last else None


def _byte_level_alphabet() -> dict[str, int]:
    # GPT-2's byte-level BPE writes each byte as one printable character (bytes_to_unicode):
    # printable Latin-1 bytes as themselves, the others shifted to U+0100 onwards.
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = list(keep)
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(keep, chars, strict=True)}


_BYTE_OF = _byte_level_alphabet()
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def token_bytes(raw: str) -> bytes | None:
    """The bytes of one token, read from the tokenizer's own string for it
    (``tokenizer.convert_ids_to_tokens``): byte-level BPE's printable byte alphabet
    (GPT-2, Llama 3, SmolLM2) or a SentencePiece byte token ``<0xC3>``; None otherwise.

    Example:
        >>> from jacobian_scopes.text import token_bytes
        >>> token_bytes("ĠÃ"), token_bytes("<0xBC>"), token_bytes("▁über")
        (b' \\xc3', b'\\xbc', None)
    """
    m = _BYTE_TOKEN.fullmatch(raw)
    if m:
        return bytes([int(m.group(1), 16)])
    try:
        return bytes(_BYTE_OF[ch] for ch in raw)
    except KeyError:
        return None


def merged_raw_pieces(
    merged: Sequence[str], pieces: Sequence[str], raw: Sequence[str]
) -> list[str]:
    """The tokenizer's own string (``raw``) of each token that :func:`merge_byte_pieces`
    changed, ``""`` for the others: what a display needs to say what the model saw.

    Example:
        >>> from jacobian_scopes.text import merged_raw_pieces
        >>> merged_raw_pieces(["a", "", "ü"], ["a", "\\ufffd", "\\ufffd"], ["a", "Ã", "¼"])
        ['', 'Ã', '¼']
    """
    return [r if m != p else "" for m, p, r in zip(merged, pieces, raw, strict=True)]


def piece_note(tokens: Sequence[str], raw: Sequence[str] | None, i: int) -> str | None:
    """What the model saw at token ``i`` when it is part of a character merged over several
    tokens (``raw`` as :func:`merged_raw_pieces` gives it): each token's bytes in hex, or
    the tokenizer's strings when the bytes cannot be read from them. None for other tokens.

    Example:
        >>> from jacobian_scopes.text import piece_note
        >>> tokens, raw = ["A", "", " ü", "ber"], ["", "ĠÃ", "¼", ""]
        >>> piece_note(tokens, raw, 1)
        'byte piece of the character shown on token #2 · bytes 20 C3'
        >>> piece_note(tokens, raw, 2)
        'merged from tokens #1–#2 · bytes 20 C3 | BC'
        >>> piece_note(tokens, raw, 3) is None
        True
    """
    if raw is None or len(raw) != len(tokens) or not 0 <= i < len(tokens) or not raw[i]:
        return None
    end = i
    while end + 1 < len(tokens) and tokens[end] == "" and raw[end + 1]:
        end += 1
    start = i
    while start > 0 and tokens[start - 1] == "" and raw[start - 1]:
        start -= 1
    group = range(start, end + 1)
    got = [token_bytes(raw[k]) for k in group]
    text = "".join(tokens[k] for k in group)
    if (
        all(b is not None for b in got)
        and b"".join(b for b in got if b is not None).decode("utf-8", "replace") == text
    ):
        shown = [" ".join(f"{x:02X}" for x in b or b"") for b in got]
        what = "bytes "
    else:
        shown = [repr(raw[k]) for k in group]
        what = "tokens "
    if i < end:
        return f"byte piece of the character shown on token #{end} · {what}{shown[i - start]}"
    if start == end:
        return f"{what}{shown[0]}"
    return f"merged from tokens #{start}–#{end} · {what}{' | '.join(shown)}"

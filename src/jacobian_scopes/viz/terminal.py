"""The terminal view (rich): tokens on coloured backgrounds, and the top tokens as a table.

Token text goes through :func:`safe_text` first: a token may hold terminal control
sequences (``\\x1b[2J`` clears the screen), which must be shown, never sent to the
terminal. rich ``Text`` objects are never parsed as markup, so ``[bold]`` stays literal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from jacobian_scopes.results import ScopeResult
from jacobian_scopes.text import BIDI_CONTROLS

if TYPE_CHECKING:
    from jacobian_scopes.viz.tokens import TokenView

_BLUE = (30, 136, 229)
_MAGENTA = (216, 27, 96)


def safe_text(token: str) -> str:
    """Token text with line breaks, tabs, control characters and bidirectional controls
    made visible.

    Example:
        >>> from jacobian_scopes.viz.terminal import safe_text
        >>> safe_text("a\\nb\\x1b[2J")
        'a↵b\\\\x1b[2J'
    """
    out = []
    for ch in token:
        if ch == "\n":
            out.append("↵")
        elif ch == "\t":
            out.append("⇥")
        elif ord(ch) < 32 or 127 <= ord(ch) < 160:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) in BIDI_CONTROLS:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def _mix(color: tuple[int, int, int], t: float) -> str:
    """``color`` mixed with white: t=0 is white, t=1 is the colour (as CircuitsVis does)."""
    t = min(max(t, 0.0), 1.0)
    r, g, b = (round(255 + (c - 255) * t) for c in color)
    return f"rgb({r},{g},{b})"


def background(value: float, scale: float, signed: bool) -> str:
    """The background colour of a value on the view's scale."""
    t = abs(value) / scale if scale > 0 else 0.0
    return _mix(_MAGENTA if signed and value < 0 else _BLUE, t)


def token_text(view: TokenView) -> Text:
    """The tokens of a view, each on its colour; BOS dim, explained position underlined."""
    text = Text()
    scale = view.scale
    in_scale = view.in_scale
    for i, (tok, v) in enumerate(zip(view.tokens, view.values, strict=True)):
        shown = safe_text(tok)
        if not in_scale[i]:
            text.append(shown, style="italic dim")
            continue
        bg = background(v, scale, view.signed)
        t = abs(v) / scale if scale > 0 else 0.0
        style = f"{'white' if t > 0.6 else 'black'} on {bg}"
        if i in view.positions:
            style += " underline bold"
        text.append(shown, style=style)
    if view.target is not None:
        style = "dim" if view.target_is_prediction else "bold magenta"
        text.append(" → " + safe_text(view.target), style=style)
    return text


def token_panel(view: TokenView, k: int = 0) -> Group:
    """Title, meta line, coloured tokens and (``k > 0``) a table of the ``k`` top tokens."""
    parts: list[Any] = []
    if view.title:
        parts.append(Text(safe_text(view.title), style="bold"))
    if view.meta:
        parts.append(Text(safe_text(view.meta), style="dim"))
    parts.append(token_text(view))
    if k > 0:
        parts.append(top_table(view, k))
    return Group(*parts)


def top_table(view: TokenView, k: int = 5) -> Table:
    """The ``k`` highest-ranked tokens with their exact values."""
    from jacobian_scopes.viz.tokens import format_value

    rank = view.ranks()
    order = sorted((r, i) for i, r in enumerate(rank) if r is not None)[:k]
    table = Table(box=None, pad_edge=False)
    table.add_column("rank", justify="right")
    table.add_column("#", justify="right")
    table.add_column("token")
    table.add_column(view.label, justify="right")
    for r, i in order:
        table.add_row(
            str(r), str(i), Text(repr(safe_text(view.tokens[i]))), format_value(view.values[i])
        )
    return table


def result_renderable(result: ScopeResult, k: int = 5) -> Group:
    """A result for the terminal: its coloured tokens and its top ``k`` tokens."""
    from jacobian_scopes.viz.tokens import token_view

    return token_panel(token_view(result), k=k)


def print_result(result: ScopeResult, *, k: int = 5, console: Console | None = None) -> None:
    """Print a result to the terminal with rich.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.viz.terminal import print_result
        >>> model = js.load_default_model()
        >>> print_result(js.temperature_scope(model, "12,15,19,"))
        Temperature
        explains the prediction after position 9 (',') · model's top prediction ...
        rank  #  token      score
           1  1  '1'     16.5...
    """
    (console or Console()).print(result_renderable(result, k=k))


__all__ = ["print_result", "safe_text"]

"""Several scopes or targets in one view: one row of coloured tokens each.

Rows of the same scope and mode (Semantic for " liberal" and for " conservative") share
one colour scale, so their colours can be compared directly; rows of different scopes
(Semantic, Fisher, Temperature) measure different things in different units, so each is
scaled to its own largest score. ``difference=True`` adds a signed row, first minus
second, on a symmetric scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from jacobian_scopes.results import ScopeResult
from jacobian_scopes.viz.page import Page, View, escape_text
from jacobian_scopes.viz.tokens import TokenView, describe, show_token, token_view


@dataclass
class Comparison(View):
    """Rows of coloured tokens, one per result (and optionally their difference).

    Example:
        >>> import jacobian_scopes as js
        >>> model = js.load_default_model()
        >>> prompt = "The capital of France is"
        >>> c = js.compare(js.semantic_scope(model, prompt, " Paris"),
        ...                js.semantic_scope(model, prompt, " Lyon"), difference=True)
        >>> c.shared_scale, c.notes, len(c.rows)
        (True, ['all rows share one colour scale'], 3)
        >>> c.rows[2].title, c.rows[2].signed
        ("difference: ' Paris' − ' Lyon'", True)
    """

    rows: list[TokenView]
    title: str | None = None
    shared_scale: bool = False
    notes: list[str] = field(default_factory=list)

    def render(self, page: Page) -> str:
        parts = ['<div class="jsv-compare">']
        if self.title:
            parts.append(f"<h3>{escape_text(self.title)}</h3>")
        for note in self.notes:
            parts.append(f'<div class="jsv-meta">{escape_text(note)}</div>')
        parts.extend(row.render(page) for row in self.rows)
        parts.append("</div>")
        return "\n".join(parts)

    def __rich__(self) -> Any:
        from rich.console import Group

        from jacobian_scopes.viz.terminal import token_panel

        return Group(*(token_panel(r) for r in self.rows))


def compare(
    *results: ScopeResult,
    titles: Sequence[str] | None = None,
    shared_scale: bool | None = None,
    difference: bool = False,
    include_bos: bool = False,
    title: str | None = None,
) -> Comparison:
    """Side by side: several results (scopes, targets or prompts) in one view.

    Args:
        results: two or more results.
        titles: one row title per result (default: what each result explains).
        shared_scale: colour every row on one scale. Default: shared when all rows are the
            same scope with the same target mode, so that their colours are comparable.
        difference: add a row ``results[0] − results[1]`` (same tokens needed), signed.
        include_bos: put the BOS token in the colour scales.
        title: a heading for the whole view.

    Example:
        >>> import jacobian_scopes as js
        >>> model = js.load_default_model()
        >>> prompt = "The capital of France is"
        >>> paris = js.semantic_scope(model, prompt, " Paris")
        >>> lyon = js.semantic_scope(model, prompt, " Lyon")
        >>> [row.title for row in js.compare(paris, lyon, difference=True).rows]
        ["Semantic · logit of ' Paris'", "Semantic · logit of ' Lyon'",
         "difference: ' Paris' − ' Lyon'"]
        >>> js.compare(paris, js.temperature_scope(model, prompt)).save_html("compare.html")
        PosixPath('compare.html')
    """
    if len(results) < 2:
        raise ValueError("compare needs at least two results")
    for r in results:
        if not isinstance(r, ScopeResult):
            raise TypeError(f"compare takes ScopeResults, got {type(r).__name__}")
    if titles is not None and len(titles) != len(results):
        raise ValueError(f"{len(titles)} titles for {len(results)} results")
    if shared_scale is None:
        kinds = {(r.scope, None if r.target is None else r.target.mode) for r in results}
        shared_scale = len(kinds) == 1
    rows = [
        token_view(r, include_bos=include_bos, title=None if titles is None else titles[i])
        for i, r in enumerate(results)
    ]
    notes = []
    if shared_scale:
        m = max(row.scale for row in rows)
        for row in rows:
            row.scale_max = m
        notes.append("all rows share one colour scale")
    else:
        notes.append("each row has its own colour scale (different scopes, different units)")
    if difference:
        rows.append(_difference(results[0], results[1], rows[0], rows[1], include_bos))
    return Comparison(rows=rows, title=title, shared_scale=shared_scale, notes=notes)


def _difference(
    a: ScopeResult, b: ScopeResult, ra: TokenView, rb: TokenView, include_bos: bool
) -> TokenView:
    if a.str_tokens != b.str_tokens:
        raise ValueError("difference=True needs two results on the same tokens")
    if (a.scope, a.target and a.target.mode) != (b.scope, b.target and b.target.mode):
        raise ValueError(
            "difference=True needs two results of the same scope and mode "
            f"(got {describe(a)!r} and {describe(b)!r}): their scores are in different units"
        )
    values = [x - y for x, y in zip(ra.values, rb.values, strict=True)]
    name_a = "".join(a.target.tokens) if a.target else describe(a)
    name_b = "".join(b.target.tokens) if b.target else describe(b)
    return TokenView(
        tokens=list(a.str_tokens),
        values=values,
        title=f"difference: {show_token(name_a)} − {show_token(name_b)}",
        meta=f"blue: more influence on {show_token(name_a)}; magenta: on {show_token(name_b)}",
        signed=True,
        label="difference",
        bos=a.bos,
        include_bos=include_bos,
        positions=list(a.positions),
        byte_pieces=a.byte_pieces,
    )

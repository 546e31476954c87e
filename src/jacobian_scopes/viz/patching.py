"""The view of :func:`jacobian_scopes.patching.compare`: the agreement table above the
scope's maps and both patching maps, side by side, each drawn by
:func:`jacobian_scopes.viz.maps.grid_map`.

Example:
    >>> import jacobian_scopes as js
    >>> from jacobian_scopes.patching import compare
    >>> from jacobian_scopes.viz.patching import comparison_view
    >>> model = js.load_default_model()
    >>> c = compare(model, "Alice met Bob. Bob thanked", "Bob met Alice. Alice thanked",
    ...             " Alice", " Bob", sources=["blocks.4.hook_resid_pre"])
    >>> comparison_view(c).save_html("side_by_side.html")
    PosixPath('side_by_side.html')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jacobian_scopes.viz.maps import MapView, grid_map
from jacobian_scopes.viz.page import Page, View, escape_text
from jacobian_scopes.viz.terminal import safe_text

__all__ = ["ComparisonView", "comparison_view"]


@dataclass
class ComparisonView(View):
    """The agreement table over the maps, drawn side by side.

    Example:
        >>> import pandas as pd
        >>> from jacobian_scopes.viz.maps import MapView
        >>> from jacobian_scopes.viz.patching import ComparisonView
        >>> table = pd.DataFrame([{"map": "a", "spearman": 0.5}])
        >>> m = MapView(values=[[1.0, 2.0]], rows=["L0"], cols=["x", "y"], title="a")
        >>> ComparisonView(table, [m]).save_html("view.html")
        PosixPath('view.html')
    """

    table: Any
    views: list[MapView]
    title: str | None = None
    meta: str | None = None

    def render(self, page: Page) -> str:
        parts = ['<div class="jsv-patching">']
        if self.title:
            parts.append(f"<h3>{escape_text(self.title)}</h3>")
        if self.meta:
            parts.append(f'<div class="jsv-meta">{escape_text(self.meta)}</div>')
        cols = list(self.table.columns)
        head = "".join(f"<th>{escape_text(str(c))}</th>" for c in cols)
        body = "".join(
            "<tr>" + "".join(f"<td>{escape_text(_cell(v))}</td>" for v in row) + "</tr>"
            for row in self.table.itertuples(index=False)
        )
        parts.append(
            f'<table class="jsv-agree"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
        )
        parts.append('<div class="jsv-side">')
        parts.extend(f'<div class="jsv-cell">{v.render(page)}</div>' for v in self.views)
        parts.append("</div></div>")
        return "\n".join(parts)

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.table import Table

        t = Table(title=safe_text(self.title or ""))
        for c in self.table.columns:
            t.add_column(str(c))
        for row in self.table.itertuples(index=False):
            t.add_row(*(safe_text(_cell(v)) for v in row))
        return Group(t, *(v.__rich__() for v in self.views))


def _cell(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def comparison_view(
    comparison: Any, *, normalize: str = "row", heads: bool | None = None
) -> ComparisonView:
    """The maps of :func:`jacobian_scopes.patching.compare` side by side, each on a scale
    that fits it: the scope's norm map and first-order map on ``normalize`` (default
    ``"row"``), both patching maps on one signed global scale (they share the metric's
    unit), and the agreement table above them. ``heads=True`` draws per-head (``"z"``)
    comparisons layer × head.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.patching import compare
        >>> model = js.load_default_model()
        >>> c = compare(model, "Alice met Bob. Bob thanked", "Bob met Alice. Alice thanked",
        ...             " Alice", " Bob")
        >>> view = c.view()
    """
    ap = comparison.activation
    per_head = ap.score_axes == ("layer", "head", "token")
    views = []
    for name, grid in comparison.maps.items():
        patch = name.endswith("patching")
        views.append(
            grid_map(
                grid,
                ap,
                name,
                signed=comparison.signed[name],
                normalize="global" if patch else normalize,
                heads=bool(heads) and per_head,
            )
        )
    meta = (
        f"clean {''.join(ap.str_tokens[1:] if ap.bos else ap.str_tokens)!r} · corrupt "
        f"{''.join(ap.corrupt_str_tokens[1:] if ap.bos else ap.corrupt_str_tokens)!r} · "
        f"{ap.metric}; agreement with activation patching over positions ≤ {ap.position}"
        + (", BOS left out" if ap.bos else "")
    )
    return ComparisonView(
        table=comparison.table, views=views, title="Scope and patching, side by side", meta=meta
    )

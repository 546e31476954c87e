"""Heat maps for drill-down results: layer × token and layer × head.

A result computed with ``sources="resid_pre"`` (or any list of hooks) has scores of shape
(source, token); with ``sources="z"``, (layer, head, token). The maps are plain HTML tables
coloured on the page's sequential scale (no script needed), each cell's exact value and
rank on hover (its ``title``). Aggregates follow :meth:`ScopeResult.token_scores`: scores
are norms, so they combine as the root of the sum of squares (the norm over the combined
activations); Fisher scores are squared norms and simply add.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from jacobian_scopes.results import ScopeResult
from jacobian_scopes.viz.page import Page, View, escape_attr, escape_text
from jacobian_scopes.viz.terminal import _BLUE, _mix, safe_text
from jacobian_scopes.viz.tokens import describe, format_value, show_token


@dataclass
class MapView(View):
    """A heat map: one row per layer (or source), one column per token or head."""

    values: list[list[float]]
    rows: list[str]
    cols: list[str]
    title: str | None = None
    meta: str | None = None
    col_kind: str = "token"
    bos: bool = False
    include_bos: bool = False
    positions: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.values) != len(self.rows) or any(len(r) != len(self.cols) for r in self.values):
            raise ValueError("a map needs one row label per row and one column label per column")

    @property
    def left_out(self) -> int | None:
        """The column left out of the scale (the BOS token), if any."""
        if self.col_kind == "token" and self.bos and not self.include_bos:
            return 0
        return None

    @property
    def scale(self) -> float:
        m = max(
            (v for row in self.values for j, v in enumerate(row) if j != self.left_out),
            default=0.0,
        )
        return m if m > 0 else 1.0

    def render(self, page: Page) -> str:
        scale = self.scale
        kept = sorted(
            (
                (-v, i, j)
                for i, row in enumerate(self.values)
                for j, v in enumerate(row)
                if j != self.left_out
            )
        )
        rank = {(i, j): r for r, (_, i, j) in enumerate(kept, start=1)}
        head = "".join(
            f"<th{' class=jsv-pos' if j in self.positions else ''}>{escape_text(safe_text(c))}</th>"
            for j, c in enumerate(self.cols)
        )
        body = []
        for i, (label, row) in enumerate(zip(self.rows, self.values, strict=True)):
            cells = []
            for j, v in enumerate(row):
                what = (
                    f"{label} · {self.col_kind} {j} {show_token(self.cols[j])} · {format_value(v)}"
                )
                if (i, j) in rank:
                    what += f" · rank {rank[(i, j)]} of {len(kept)}"
                if j == self.left_out:
                    style = "background: repeating-linear-gradient(45deg,#eee 0 3px,#fff 3px 6px)"
                    what += " · left out of the colour scale"
                else:
                    style = f"background: {_mix(_BLUE, v / scale)}"
                cells.append(f'<td style="{style}" title="{escape_attr(what)}"></td>')
            body.append(f"<tr><th>{escape_text(label)}</th>{''.join(cells)}</tr>")
        parts = ['<div class="jsv-mapview">']
        if self.title:
            parts.append(f"<h3>{escape_text(self.title)}</h3>")
        if self.meta:
            parts.append(f'<div class="jsv-meta">{escape_text(self.meta)}</div>')
        parts.append(
            f'<div class="jsv-legend"><span class="jsv-swatch" style="background: '
            f'linear-gradient(to right, #fff, {_mix(_BLUE, 1)})"></span> '
            f"0 … {escape_text(format_value(scale))}</div>"
        )
        parts.append(
            f'<table class="jsv-map"><thead><tr><th></th>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>"
        )
        return "\n".join(parts)

    def __rich__(self) -> Any:
        # A grid of two-character coloured cells, columns numbered (a table with one
        # column per token would not fit a terminal); the numbered columns are listed below.
        from rich.console import Group
        from rich.text import Text

        scale = self.scale
        width = max(len(r) for r in self.rows)
        grid = Text(" " * (width + 1) + "".join(f"{j % 100:<2d}" for j in range(len(self.cols))))
        for label, row in zip(self.rows, self.values, strict=True):
            grid.append("\n" + label.rjust(width) + " ")
            for j, v in enumerate(row):
                if j == self.left_out:
                    grid.append("··", style="dim")
                else:
                    grid.append("  ", style=f"on {_mix(_BLUE, v / scale)}")
        key = Text("  ".join(f"{j}:{safe_text(c)}" for j, c in enumerate(self.cols)), style="dim")
        title = Text(safe_text(self.title or ""), style="bold")
        return Group(title, grid, key)


def short_label(name: str) -> str:
    """``blocks.3.hook_resid_pre`` → ``L3 resid_pre``; ``blocks.3.attn.hook_z`` → ``L3 attn z``."""
    m = re.fullmatch(r"blocks\.(\d+)\.(.*)", name)
    if not m:
        return name
    rest = m.group(2).replace("hook_", "").replace(".", " ")
    return f"L{m.group(1)} {rest}".strip()


def _combine(x: Tensor, dim: int, fisher: bool) -> Tensor:
    return x.sum(dim) if fisher else x.pow(2).sum(dim).sqrt()


def layer_token_map(result: ScopeResult, *, include_bos: bool = False) -> MapView:
    """Layer (or source) × token map of a drill-down result (per-head scores are combined).

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.viz import layer_token_map
        >>> model = js.load_default_model()
        >>> r = js.semantic_scope(model, "The capital of France is", " Paris", sources="resid_pre")
        >>> layer_token_map(r).save_html("layers.html")
        PosixPath('layers.html')
    """
    scores = _scores(result)
    fisher = result.scope == "fisher"
    if result.score_axes == ("layer", "head", "token"):
        grid = _combine(scores, 1, fisher)
        rows = [short_label(s).split(" ")[0] for s in _labels(result, grid.shape[0])]
        how = "heads combined"
    else:
        grid = scores
        rows = [short_label(s) for s in _labels(result, grid.shape[0])]
        how = "one row per source"
    return MapView(
        values=grid.tolist(),
        rows=rows,
        cols=list(result.str_tokens),
        title=f"{describe(result)} · layer × token",
        meta=f"{how}; hover a cell for its exact value",
        bos=result.bos,
        include_bos=include_bos,
        positions=list(result.positions),
    )


def layer_head_map(
    result: ScopeResult, *, token: int | None = None, include_bos: bool = False
) -> MapView:
    """Layer × head map of a per-head result (``sources="z"``): each head's influence,
    combined over tokens (BOS left out unless ``include_bos``) or for one ``token``.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.viz import layer_head_map
        >>> model = js.load_default_model()
        >>> r = js.semantic_scope(model, "The capital of France is", " Paris", sources="z")
        >>> m = layer_head_map(r, token=4)
        >>> len(m.rows), len(m.cols), m.meta
        (30, 9, "token 4 ' France'")
    """
    if result.score_axes != ("layer", "head", "token"):
        raise ValueError(
            "a layer × head map needs per-head scores: compute the result with sources='z'"
        )
    scores = _scores(result)
    fisher = result.scope == "fisher"
    if token is not None:
        if not -result.n_tokens <= token < result.n_tokens:
            raise ValueError(f"token {token} is outside the {result.n_tokens} tokens")
        token %= result.n_tokens
        grid = scores[:, :, token]
        how = f"token {token} {show_token(result.str_tokens[token])}"
    else:
        start = 1 if result.bos and not include_bos else 0
        grid = _combine(scores[:, :, start:], 2, fisher)
        how = "all tokens combined" + (" (BOS left out)" if start else "")
    n_layers, n_heads = grid.shape
    return MapView(
        values=grid.tolist(),
        rows=[f"L{layer}" for layer in range(n_layers)],
        cols=[f"H{h}" for h in range(n_heads)],
        title=f"{describe(result)} · layer × head",
        meta=how,
        col_kind="head",
    )


def maps(result: ScopeResult, *, include_bos: bool = False) -> list[MapView]:
    """Every map that fits the result's layout (none for a plain per-token result).

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.viz import maps
        >>> model = js.load_default_model()
        >>> r = js.semantic_scope(model, "The capital of France is", " Paris", sources="z")
        >>> [m.title for m in maps(r)]
        ["Semantic · logit of ' Paris' · layer × head",
         "Semantic · logit of ' Paris' · layer × token"]
    """
    if result.scores.dim() == 1:
        return []
    out = [layer_token_map(result, include_bos=include_bos)]
    if result.score_axes == ("layer", "head", "token"):
        out.insert(0, layer_head_map(result, include_bos=include_bos))
    return out


def _scores(result: ScopeResult) -> Float[Tensor, "..."]:
    scores = result.scores.detach().float().cpu()
    if not torch.isfinite(scores).all():
        raise ValueError("the result's scores contain NaN or inf")
    return scores


def _labels(result: ScopeResult, n: int) -> list[str]:
    labels = result.source_labels or []
    if len(labels) != n:
        return [f"{i}" for i in range(n)]
    return labels

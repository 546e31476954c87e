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
from jacobian_scopes.text import piece_note
from jacobian_scopes.viz.page import Page, View, escape_attr, escape_text
from jacobian_scopes.viz.terminal import _BLUE, _MAGENTA, _mix, safe_text
from jacobian_scopes.viz.tokens import describe, format_value, show_token

NORMALIZE = ("row", "global", "log")
# How many decades of magnitude the "log" scale shows before it reaches white.
LOG_DECADES = 3.0


def normalized(
    grid: Tensor, how: str, *, signed: bool = False, left_out: int | None = None
) -> Tensor:
    """Colour intensities of a (row, column) grid: in [0, 1], or [−1, 1] when ``signed``.

    * ``"row"``: each row on its own scale (its largest magnitude is full colour), so no
      row is washed out by another. Scope gradients at early layers are many times larger
      than later ones (on SmolLM2, layer 0's largest norm is about 20× any other layer's),
      which on one scale leaves every later row white.
    * ``"global"``: one scale for the whole map (values compare across rows).
    * ``"log"``: one scale in magnitude decades (``LOG_DECADES`` of them), sign kept.

    ``left_out`` is a column (the BOS token) that sets no scale; its intensity is 0.

    Example:
        >>> import torch
        >>> from jacobian_scopes.viz.maps import normalized
        >>> normalized(torch.tensor([[1.0, 2.0], [10.0, 5.0]]), "row").tolist()
        [[0.5, 1.0], [1.0, 0.5]]
    """
    if how not in NORMALIZE:
        raise ValueError(f"normalize must be one of {NORMALIZE}, got {how!r}")
    x = grid.detach().float().cpu().reshape(-1, grid.shape[-1]).clone()
    if left_out is not None:
        x[:, left_out] = 0.0
    mag = x.abs()
    if how == "row":
        top = mag.amax(dim=1, keepdim=True)
        out = mag / torch.where(top > 0, top, torch.ones_like(top))
    else:
        top = mag.max()
        top = top if top > 0 else torch.tensor(1.0)
        if how == "global":
            out = mag / top
        else:
            ratio = torch.where(mag > 0, mag / top, torch.full_like(mag, 1e-30))
            out = (1.0 + torch.log10(ratio) / LOG_DECADES).clamp(0.0, 1.0)
    if signed:
        out = out * torch.sign(x)
    return out.reshape(grid.shape)


@dataclass
class MapView(View):
    """A heat map: one row per layer (or source), one column per token or head.

    ``normalize`` picks the colour scale (see :func:`normalized`; default ``"row"``, chosen
    by measurement, see the README). ``signed`` maps (``first_order``, patching) use a
    diverging scale centred on zero: magenta below, white at zero, blue above. Hover a
    cell for its exact value.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.viz import layer_token_map
        >>> model = js.load_default_model()
        >>> r = js.semantic_scope(model, "The capital of France is", " Paris", sources="resid_pre")
        >>> m = layer_token_map(r)
        >>> len(m.rows), m.rows[:2], m.cols[-2:], m.normalize
        (30, ['L0 resid_pre', 'L1 resid_pre'], [' France', ' is'], 'row')
    """

    values: list[list[float]]
    rows: list[str]
    cols: list[str]
    title: str | None = None
    meta: str | None = None
    col_kind: str = "token"
    bos: bool = False
    include_bos: bool = False
    positions: list[int] = field(default_factory=list)
    signed: bool = False
    normalize: str = "row"
    label: str = "score"
    byte_pieces: list[str] | None = None

    def __post_init__(self) -> None:
        if len(self.values) != len(self.rows) or any(len(r) != len(self.cols) for r in self.values):
            raise ValueError("a map needs one row label per row and one column label per column")
        if self.normalize not in NORMALIZE:
            raise ValueError(f"normalize must be one of {NORMALIZE}, got {self.normalize!r}")
        if not self.signed and any(v < 0 for row in self.values for v in row):
            raise ValueError("negative values need signed=True (a diverging colour scale)")

    @property
    def left_out(self) -> int | None:
        """The column left out of the scale (the BOS token), if any."""
        if self.col_kind == "token" and self.bos and not self.include_bos:
            return 0
        return None

    @property
    def scale(self) -> float:
        """The largest magnitude on the map (BOS left out): full colour on one scale."""
        m = max(
            (abs(v) for row in self.values for j, v in enumerate(row) if j != self.left_out),
            default=0.0,
        )
        return m if m > 0 else 1.0

    def row_scales(self) -> list[float]:
        """Each row's largest magnitude (BOS left out), 1.0 for an all-zero row."""
        out = []
        for row in self.values:
            m = max((abs(v) for j, v in enumerate(row) if j != self.left_out), default=0.0)
            out.append(m if m > 0 else 1.0)
        return out

    def intensities(self) -> list[list[float]]:
        """Colour intensity of every cell, in [0, 1] or [−1, 1] (signed)."""
        grid = torch.tensor(self.values, dtype=torch.float64).reshape(len(self.rows), -1)
        return normalized(grid, self.normalize, signed=self.signed, left_out=self.left_out).tolist()

    def col_note(self, j: int) -> str | None:
        """What the model saw in token column ``j`` when it is part of a character merged
        over several tokens (see :func:`jacobian_scopes.text.piece_note`)."""
        if self.col_kind != "token":
            return None
        return piece_note(self.cols, self.byte_pieces, j)

    def colour(self, t: float) -> str:
        return _mix(_MAGENTA if t < 0 else _BLUE, abs(t))

    def legend_text(self) -> str:
        if self.normalize == "row":
            ends = "each row: 0 … its largest magnitude"
        elif self.normalize == "log":
            lo = format_value(self.scale * 10 ** (-LOG_DECADES))
            ends = f"log scale {lo} … {format_value(self.scale)}"
        else:
            ends = f"0 … {format_value(self.scale)}"
        if self.signed:
            ends = "signed, white = 0 · " + ends.replace("0 … ", "−m … 0 … m, m = ")
        return ends

    def render(self, page: Page) -> str:
        kept = sorted(
            (
                (-abs(v), i, j)
                for i, row in enumerate(self.values)
                for j, v in enumerate(row)
                if j != self.left_out
            )
        )
        rank = {(i, j): r for r, (_, i, j) in enumerate(kept, start=1)}
        tint = self.intensities()
        scales = self.row_scales()
        notes = [self.col_note(j) for j in range(len(self.cols))]
        head = "".join(
            f"<th{' class=jsv-pos' if j in self.positions else ''}"
            + (f' title="{escape_attr(notes[j] or "")}"' if notes[j] else "")
            + f">{escape_text(safe_text(c))}</th>"
            for j, c in enumerate(self.cols)
        )
        body = []
        for i, (label, row) in enumerate(zip(self.rows, self.values, strict=True)):
            cells = []
            for j, v in enumerate(row):
                what = (
                    f"{label} · {self.col_kind} {j} {show_token(self.cols[j])} · "
                    f"{self.label} {format_value(v)}"
                )
                if (i, j) in rank:
                    what += f" · rank {rank[(i, j)]} of {len(kept)}"
                if notes[j]:
                    what += f" · {notes[j]}"
                if j == self.left_out:
                    style = "background: repeating-linear-gradient(45deg,#eee 0 3px,#fff 3px 6px)"
                    what += " · left out of the colour scale"
                else:
                    style = f"background: {self.colour(tint[i][j])}"
                cells.append(f'<td style="{style}" title="{escape_attr(what)}"></td>')
            note = ""
            if self.normalize == "row":
                note = f'<td class="jsv-rowmax">{scales[i]:.3g}</td>'
            body.append(f"<tr><th>{escape_text(label)}</th>{''.join(cells)}{note}</tr>")
        parts = ['<div class="jsv-mapview">']
        if self.title:
            parts.append(f"<h3>{escape_text(self.title)}</h3>")
        if self.meta:
            parts.append(f'<div class="jsv-meta">{escape_text(self.meta)}</div>')
        if self.signed:
            swatch = f"linear-gradient(to right, {_mix(_MAGENTA, 1)}, #fff, {_mix(_BLUE, 1)})"
        else:
            swatch = f"linear-gradient(to right, #fff, {_mix(_BLUE, 1)})"
        parts.append(
            f'<div class="jsv-legend"><span class="jsv-swatch" style="background: {swatch}">'
            f"</span> {escape_text(self.legend_text())}</div>"
        )
        extra = '<th class="jsv-rowmax">row max</th>' if self.normalize == "row" else ""
        parts.append(
            f'<table class="jsv-map"><thead><tr><th></th>{head}{extra}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>"
        )
        return "\n".join(parts)

    def __rich__(self) -> Any:
        # A grid of two-character coloured cells, columns numbered (a table with one
        # column per token would not fit a terminal); the numbered columns are listed below.
        from rich.console import Group
        from rich.text import Text

        tint = self.intensities()
        width = max(len(r) for r in self.rows)
        grid = Text(" " * (width + 1) + "".join(f"{j % 100:<2d}" for j in range(len(self.cols))))
        for i, label in enumerate(self.rows):
            grid.append("\n" + label.rjust(width) + " ")
            for j in range(len(self.cols)):
                if j == self.left_out:
                    grid.append("··", style="dim")
                else:
                    grid.append("  ", style=f"on {self.colour(tint[i][j])}")
        key = Text("  ".join(f"{j}:{safe_text(c)}" for j, c in enumerate(self.cols)), style="dim")
        title = Text(safe_text(self.title or ""), style="bold")
        scale = Text(self.legend_text(), style="dim")
        return Group(title, scale, grid, key)


def short_label(name: str) -> str:
    """``blocks.3.hook_resid_pre`` → ``L3 resid_pre``; ``blocks.3.attn.hook_z`` → ``L3 attn z``."""
    m = re.fullmatch(r"blocks\.(\d+)\.(.*)", name)
    if not m:
        return name
    rest = m.group(2).replace("hook_", "").replace(".", " ")
    return f"L{m.group(1)} {rest}".strip()


def _combine(x: Tensor, dim: int, fisher: bool, signed: bool = False) -> Tensor:
    # Signed first-order terms add (across heads exactly, see ScopeResult.first_order);
    # norms combine as the root of the sum of squares; Fisher's squared norms add.
    return x.sum(dim) if fisher or signed else x.pow(2).sum(dim).sqrt()


QUANTITIES = ("scores", "first_order")


def _grid(result: ScopeResult, quantity: str) -> Tensor:
    if quantity not in QUANTITIES:
        raise ValueError(f"quantity must be one of {QUANTITIES}, got {quantity!r}")
    if quantity == "scores":
        return _scores(result)
    if result.first_order is None:
        raise ValueError("this result has no first_order terms (single-direction scopes have them)")
    fo = result.first_order.detach().float().cpu()
    if not torch.isfinite(fo).all():
        raise ValueError("the result's first_order terms contain NaN or inf")
    return fo


def layer_token_map(
    result: ScopeResult,
    *,
    include_bos: bool = False,
    normalize: str = "row",
    quantity: str = "scores",
) -> MapView:
    """Layer (or source) × token map of a drill-down result (per-head scores are combined).

    ``quantity="first_order"`` maps the signed ``⟨a, J_tᵀv⟩`` on a diverging scale;
    ``normalize`` is ``"row"`` (default: every row on its own scale), ``"global"`` or
    ``"log"`` (see :func:`normalized`).

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.viz import layer_token_map
        >>> model = js.load_default_model()
        >>> r = js.semantic_scope(model, "The capital of France is", " Paris", sources="resid_pre")
        >>> layer_token_map(r).save_html("layers.html")
        PosixPath('layers.html')
        >>> signed = layer_token_map(r, quantity="first_order", normalize="global")
    """
    scores = _grid(result, quantity)
    signed = quantity == "first_order"
    fisher = result.scope == "fisher"
    if result.score_axes == ("layer", "head", "token"):
        grid = _combine(scores, 1, fisher, signed)
        rows = [short_label(s).split(" ")[0] for s in _labels(result, grid.shape[0])]
        how = "heads summed" if signed else "heads combined"
    else:
        grid = scores
        rows = [short_label(s) for s in _labels(result, grid.shape[0])]
        how = "one row per source"
    name = "first-order ⟨a, ∇⟩" if signed else "layer × token"
    return MapView(
        values=grid.tolist(),
        rows=rows,
        cols=list(result.str_tokens),
        title=f"{describe(result)} · {name}" + (" · layer × token" if signed else ""),
        meta=f"{how}; hover a cell for its exact value",
        bos=result.bos,
        include_bos=include_bos,
        positions=list(result.positions),
        signed=signed,
        normalize=normalize,
        label="first-order" if signed else "score",
        byte_pieces=result.byte_pieces,
    )


def layer_head_map(
    result: ScopeResult,
    *,
    token: int | None = None,
    include_bos: bool = False,
    normalize: str = "row",
    quantity: str = "scores",
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
    scores = _grid(result, quantity)
    signed = quantity == "first_order"
    fisher = result.scope == "fisher"
    if token is not None:
        if not -result.n_tokens <= token < result.n_tokens:
            raise ValueError(f"token {token} is outside the {result.n_tokens} tokens")
        token %= result.n_tokens
        grid = scores[:, :, token]
        how = f"token {token} {show_token(result.str_tokens[token])}"
    else:
        start = 1 if result.bos and not include_bos else 0
        grid = _combine(scores[:, :, start:], 2, fisher, signed)
        how = ("all tokens summed" if signed else "all tokens combined") + (
            " (BOS left out)" if start else ""
        )
    n_layers, n_heads = grid.shape
    return MapView(
        values=grid.tolist(),
        rows=[f"L{layer}" for layer in range(n_layers)],
        cols=[f"H{h}" for h in range(n_heads)],
        title=f"{describe(result)} · {'first-order · ' if signed else ''}layer × head",
        meta=how,
        col_kind="head",
        signed=signed,
        normalize=normalize,
        label="first-order" if signed else "score",
    )


def maps(
    result: ScopeResult,
    *,
    include_bos: bool = False,
    normalize: str = "row",
    first_order: bool = False,
) -> list[MapView]:
    """Every map that fits the result's layout (none for a plain per-token result); with
    ``first_order=True`` also the signed first-order maps.

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
    quantities = ["scores"]
    if first_order and result.first_order is not None:
        quantities.append("first_order")
    out: list[MapView] = []
    for q in quantities:
        if result.score_axes == ("layer", "head", "token"):
            out.append(
                layer_head_map(result, include_bos=include_bos, normalize=normalize, quantity=q)
            )
        out.append(
            layer_token_map(result, include_bos=include_bos, normalize=normalize, quantity=q)
        )
    return out


# ---------------------------------------------------------------------- patching
def patching_map(
    result: Any,
    *,
    normalize: str = "global",
    heads: bool | None = None,
    title: str | None = None,
) -> MapView:
    """A patching result (:mod:`jacobian_scopes.patching`) as a signed, zero-centred map.

    Layer × token for per-layer sources; for ``"z"`` results, layer × head (summed over
    positions) with ``heads=True`` (the default for them), else layer × token summed over
    heads. Patching values share one unit (the metric, 1 = the clean run), so the default
    scale is ``"global"``: a weak row is weak.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.patching import activation_patching
        >>> from jacobian_scopes.viz.maps import patching_map
        >>> model = js.load_default_model()
        >>> ap = activation_patching(model, "Alice met Bob. Bob thanked",
        ...                          "Bob met Alice. Alice thanked", target=" Alice", foil=" Bob")
        >>> patching_map(ap).save_html("patching.html")
        PosixPath('patching.html')
    """
    per_head = result.score_axes == ("layer", "head", "token")
    if heads is None:
        heads = per_head
    if heads and not per_head:
        raise ValueError("a layer × head map needs a result patched with sources='z'")
    kind = "Activation patching" if result.kind == "activation" else "Attribution patching"
    what = f"{kind} ({result.direction}) · {result.metric}"
    if heads:
        return grid_map(
            result.values,
            result,
            title=title or f"{what} · layer × head",
            signed=True,
            normalize=normalize,
            heads=True,
            meta="summed over positions",
            label="metric",
        )
    return grid_map(
        result.values,
        result,
        title=title or f"{what} · layer × token",
        signed=True,
        normalize=normalize,
        meta=("heads summed; " if per_head else "")
        + f"clean {result.clean_value:.3g}, corrupt {result.corrupt_value:.3g}",
        label="metric" if result.kind == "activation" else "estimate",
    )


def grid_map(
    grid: Tensor,
    like: Any,
    title: str,
    *,
    signed: bool,
    normalize: str = "row",
    heads: bool = False,
    meta: str | None = None,
    label: str = "score",
) -> MapView:
    """A map of any values laid out like a patching result ``like`` (rows named by its
    ``source_labels``, columns by its tokens): (source, token), or (layer, head, token) for
    per-head results, drawn layer × token (heads combined) or, with ``heads=True``, layer ×
    head (positions combined, BOS left out). Signed values add; norms combine as the root
    of the sum of squares.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.patching import attribution_patching
        >>> from jacobian_scopes.viz.maps import grid_map
        >>> model = js.load_default_model()
        >>> at = attribution_patching(model, "Alice met Bob. Bob thanked",
        ...                           "Bob met Alice. Alice thanked", sources="z")
        >>> m = grid_map(at.values.abs(), at, "|estimate|", signed=False, heads=True)
        >>> len(m.rows), len(m.cols), m.cols[0]
        (30, 9, 'H0')
    """
    grid = grid.detach().float().cpu()
    per_head = like.score_axes == ("layer", "head", "token")
    if heads and per_head:
        g = _combine(grid[:, :, 1:] if like.bos else grid, -1, False, signed)
        return MapView(
            values=g.tolist(),
            rows=[f"L{i}" for i in range(g.shape[0])],
            cols=[f"H{h}" for h in range(g.shape[1])],
            title=title,
            meta=meta,
            col_kind="head",
            signed=signed,
            normalize=normalize,
            label=label,
        )
    if per_head:
        grid = _combine(grid, 1, False, signed)
    rows = [
        short_label(s).split(" ")[0] if per_head else short_label(s) for s in like.source_labels
    ]
    return MapView(
        values=grid.tolist(),
        rows=rows,
        cols=list(like.str_tokens),
        title=title,
        meta=meta,
        bos=like.bos,
        positions=[like.position],
        signed=signed,
        normalize=normalize,
        label=label,
        byte_pieces=getattr(like, "byte_pieces", None),
    )


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


__all__ = [
    "MapView",
    "grid_map",
    "layer_head_map",
    "layer_token_map",
    "maps",
    "normalized",
    "patching_map",
]

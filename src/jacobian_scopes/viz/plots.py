"""Static figures with matplotlib: token bars, layer maps, and the time-series view.

Outside a notebook, figures are built with ``matplotlib.figure.Figure`` directly (not
pyplot), so nothing depends on, or changes, the user's backend or global figure list.
Inside a notebook they are pyplot figures, so they behave like ``plt.subplots()``:
``fig = r.plot()`` shows the figure at the end of the cell. ``fig.savefig("x.png" | "x.svg"
| "x.pdf")`` writes any format.

Token text is drawn literally: ``$`` would start matplotlib's mathtext, so it is escaped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import LinearSegmentedColormap, Normalize
from matplotlib.figure import Figure

from jacobian_scopes.results import ScopeResult
from jacobian_scopes.viz.maps import MapView, maps
from jacobian_scopes.viz.page import NEGATIVE, POSITIVE
from jacobian_scopes.viz.terminal import safe_text
from jacobian_scopes.viz.tokens import describe, show_token, target_text

_CMAP = "Blues"
_DIVERGING = LinearSegmentedColormap.from_list("jsv_signed", [NEGATIVE, "#ffffff", POSITIVE])


def mpl_text(text: str) -> str:
    """Text that matplotlib draws as written (no mathtext, no control characters).

    Example:
        >>> from jacobian_scopes.viz.plots import mpl_text
        >>> mpl_text("$x$\\n")
        '\\\\$x\\\\$↵'
    """
    return safe_text(text).replace("$", r"\$")


def tick_label(token: str, limit: int = 18) -> str:
    """A token as an axis label: literal, and cut to ``limit`` characters."""
    text = safe_text(token)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("$", r"\$")


def plot_result(
    result: ScopeResult,
    *,
    include_bos: bool = False,
    ax: Axes | None = None,
    figsize: tuple[float, float] | None = None,
    normalize: str = "row",
    first_order: bool = False,
) -> Figure:
    """A result as a figure: one bar per token, or layer maps for drill-down results
    (``normalize`` and ``first_order`` as in :func:`jacobian_scopes.viz.maps.maps`).

    The BOS bar is hatched and left out of the axis range by default (its value is written
    on it); the explained position's bar is outlined and the target is named after it.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.viz import plot_result
        >>> model = js.load_default_model()
        >>> fig = plot_result(js.semantic_scope(model, "The capital of France is", " Paris"))
        >>> fig.savefig("paris.svg")
    """
    if not isinstance(result, ScopeResult):
        raise TypeError(f"plot_result needs a ScopeResult, got {type(result).__name__}")
    if result.scores.dim() > 1:
        if ax is not None:
            raise ValueError("layer maps draw their own axes; leave ax unset")
        return _plot_maps(
            result,
            include_bos=include_bos,
            figsize=figsize,
            normalize=normalize,
            first_order=first_order,
        )
    fig, ax = _figure_and_axes(ax, figsize or (max(6.0, 0.32 * result.n_tokens + 2), 3.6))
    values = result.scores.detach().float().cpu().numpy()
    n = len(values)
    left_out = 0 if result.bos and not include_bos else None
    kept = np.delete(values, left_out) if left_out is not None else values
    top = float(kept.max()) if kept.size and kept.max() > 0 else 1.0
    cmap = colormaps[_CMAP]
    colors = [cmap(0.25 + 0.75 * min(v / top, 1.0)) for v in values]
    bars = ax.bar(np.arange(n), np.minimum(values, top * 1.08), color=colors, width=0.8)
    if left_out is not None:
        bars[0].set_facecolor("#f2f2f2")
        bars[0].set_edgecolor("#999999")
        bars[0].set_hatch("///")
        y = min(float(values[0]), top * 1.08)
        ax.text(0, y, f"BOS\n{values[0]:.3g}", ha="center", va="bottom", fontsize=7)
    for p in result.positions:
        bars[p].set_edgecolor(NEGATIVE)
        bars[p].set_linewidth(2)
    target, is_prediction = target_text(result)
    if target is not None:
        label = ("prediction " if is_prediction else "target ") + show_token(target)
        ax.annotate(
            "→ " + mpl_text(label),
            (result.positions[-1] + 0.45, top * 1.1),
            xytext=(2, 0),
            textcoords="offset points",
            color="#777" if is_prediction else NEGATIVE,
            fontsize=8,
            va="top",
        )
    ax.set_xticks(np.arange(n))
    ax.set_xticklabels([tick_label(t) for t in result.str_tokens], rotation=90, fontsize=8)
    for p in result.positions:
        ax.get_xticklabels()[p].set_color(NEGATIVE)
    ax.set_xlim(-0.6, n + 1.6)  # room for the target's name
    ax.set_ylim(0, top * 1.18)
    ax.set_ylabel("score")
    ax.set_title(mpl_text(describe(result)), fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig


def _plot_maps(
    result: ScopeResult,
    *,
    include_bos: bool,
    figsize: tuple[float, float] | None,
    normalize: str = "row",
    first_order: bool = False,
) -> Figure:
    views = maps(result, include_bos=include_bos, normalize=normalize, first_order=first_order)
    n_rows = len(views[-1].rows)
    width = max(6.0, 0.3 * result.n_tokens + 2.5)
    fig = new_figure(figsize or (width, (0.22 * n_rows + 1.8) * len(views)))
    axes = fig.subplots(len(views), 1, squeeze=False)[:, 0]
    for ax, view in zip(axes, views, strict=True):
        draw_map(fig, ax, view)
    fig.tight_layout()
    return fig


def draw_map(fig: Figure, ax: Axes, view: MapView) -> None:
    """One map on ``ax``: the raw values on one scale (``normalize="global"``) or the colour
    intensities of the view's scale (``"row"``, ``"log"``), diverging when signed."""
    if view.normalize == "global":
        grid = np.asarray(view.values, dtype=float)
        m = view.scale
        norm = Normalize(-m, m) if view.signed else Normalize(0, m)
        label = view.label
    else:
        grid = np.asarray(view.intensities(), dtype=float)
        norm = Normalize(-1, 1) if view.signed else Normalize(0, 1)
        label = "share of the row's largest magnitude" if view.normalize == "row" else "log scale"
    if view.left_out is not None:
        grid[:, view.left_out] = np.nan  # drawn blank, out of the colour range
    cmap = _DIVERGING if view.signed else colormaps[_CMAP]
    # pcolormesh draws vector quads: SVG and PDF exports stay sharp and embed no image.
    mesh = ax.pcolormesh(grid, cmap=cmap, norm=norm, edgecolors="white")
    ax.invert_yaxis()
    ax.set_yticks(np.arange(len(view.rows)) + 0.5)
    ax.set_yticklabels([mpl_text(r) for r in view.rows], fontsize=7)
    ax.set_xticks(np.arange(len(view.cols)) + 0.5)
    ax.set_xticklabels([tick_label(c) for c in view.cols], rotation=90, fontsize=7)
    for p in view.positions:
        ax.get_xticklabels()[p].set_color(NEGATIVE)
    ax.set_title(mpl_text(view.title or ""), fontsize=9)
    bar = fig.colorbar(mesh, ax=ax, fraction=0.025, pad=0.01)
    bar.set_label(label, fontsize=7)


# ---------------------------------------------------------------------- time series
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass
class SeriesInfluence:
    """Each number of a numeric prompt with the influence of its tokens.

    ``token_groups[i]`` are the token indices that spell value ``i`` (SmolLM2 writes every
    digit as its own token); ``influence[i]`` combines their scores with ``aggregate``.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.casestudies import lorenz_series, series_prompt
        >>> from jacobian_scopes.viz import series_influence
        >>> model = js.load_default_model()
        >>> s = series_influence(js.temperature_scope(model, series_prompt(lorenz_series(10))))
        >>> s.aggregate, s.values[:3], s.token_groups[:2]
        ('norm', [27.0, 19.0, 15.0], [[1, 2], [4, 5]])
        >>> [round(x, 1) for x in s.influence[:3]]
        [17.1, 5.8, 4.8]
    """

    values: list[float]
    influence: list[float]
    token_groups: list[list[int]]
    aggregate: str


def series_influence(result: ScopeResult, *, aggregate: str | None = None) -> SeriesInfluence:
    """Group a result's token scores by the numbers they spell (up to the explained position).

    ``aggregate`` combines the scores of one number's tokens:

    * ``"norm"`` (default, except for Fisher): ``sqrt(Σ s_t²)``, the scope's score of the
      number's tokens taken together (the norm of the stacked ``J_tᵀ v``);
    * ``"sum"`` (Fisher's default: its scores are squared norms and add up exactly);
    * ``"max"``: the number's most influential token.

    Separators (commas, spaces) and the BOS token belong to no number and are left out.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.casestudies import lorenz_series, series_prompt
        >>> from jacobian_scopes.viz import series_influence
        >>> model = js.load_default_model()
        >>> r = js.temperature_scope(model, series_prompt(lorenz_series(10)))
        >>> s = series_influence(r)
        >>> len(s.values), len(s.influence)
        (10, 10)
    """
    if result.scores.dim() != 1:
        raise ValueError("the time-series view needs per-token scores (leave sources unset)")
    if aggregate is None:
        aggregate = "sum" if result.scope == "fisher" else "norm"
    if aggregate not in ("norm", "sum", "max"):
        raise ValueError(f"aggregate must be 'norm', 'sum' or 'max', got {aggregate!r}")
    start = 1 if result.bos else 0
    end = result.position + 1
    spans, text = [], ""
    for tok in result.str_tokens[start:end]:
        spans.append((len(text), len(text) + len(tok)))
        text += tok
    scores = result.scores.detach().float().cpu().numpy()
    values, influence, groups = [], [], []
    for m in _NUMBER.finditer(text):
        group = [start + k for k, (a, b) in enumerate(spans) if a < m.end() and b > m.start()]
        s = scores[group]
        agg = {"norm": lambda x: float(np.sqrt((x**2).sum())), "sum": np.sum, "max": np.max}
        values.append(float(m.group()))
        influence.append(float(agg[aggregate](s)))  # type: ignore[operator]
        groups.append(group)
    if len(values) < 2:
        raise ValueError(
            "the prompt holds fewer than two numbers: the time-series view needs a numeric "
            "series such as casestudies.series_prompt(values)"
        )
    return SeriesInfluence(values, influence, groups, aggregate)


def plot_series(
    result: ScopeResult,
    *,
    aggregate: str | None = None,
    figsize: tuple[float, float] = (10.0, 5.0),
) -> Figure:
    """The numeric series of the prompt with each value's influence (SCOPES.md §7.4).

    Top: the series, each point coloured and sized by its influence; the dashed line marks
    the value being predicted (the explained position), with the model's top guesses.
    Bottom: the influence of each value as bars. For the Lorenz case study, influence
    gathers on the latest values and on earlier stretches at the same phase of the
    oscillation (the model copies what followed similar stretches).

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.casestudies import lorenz_series, series_prompt
        >>> from jacobian_scopes.viz import plot_series
        >>> model = js.load_default_model()
        >>> r = js.temperature_scope(model, series_prompt(lorenz_series(10)))
        >>> plot_series(r).savefig("lorenz.pdf")
    """
    s = series_influence(result, aggregate=aggregate)
    n = len(s.values)
    x = np.arange(n)
    infl = np.asarray(s.influence)
    top = float(infl.max()) if infl.max() > 0 else 1.0
    fig = new_figure(figsize)
    ax, bx = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    ax.plot(x, s.values, color="#999", linewidth=1, zorder=1)
    points = ax.scatter(
        x,
        s.values,
        c=infl,
        cmap=_CMAP,
        norm=Normalize(0, top),
        s=12 + 90 * infl / top,
        edgecolors="#333",
        linewidths=0.4,
        zorder=2,
    )
    fig.colorbar(points, ax=[ax, bx], fraction=0.02, pad=0.02, label=f"influence ({s.aggregate})")
    guesses = ", ".join(f"{show_token(p.token)} {p.prob:.0%}" for p in result.top_predictions[:3])
    for a in (ax, bx):
        a.axvline(n, color=NEGATIVE, linestyle="--", linewidth=1)
        a.spines[["top", "right"]].set_visible(False)
    ax.annotate(
        "next value\n(explained)",
        (n, float(np.mean(s.values))),
        xytext=(4, 0),
        textcoords="offset points",
        color=NEGATIVE,
        fontsize=8,
        va="center",
    )
    bx.bar(x, infl, color=POSITIVE, width=0.8)
    ax.set_ylabel("value")
    bx.set_ylabel("influence")
    bx.set_xlabel("index of the value in the prompt")
    bx.set_xlim(-1, n + 4)
    title = f"{describe(result)} · influence of each value"
    if guesses:
        title += f" · model's next token: {guesses}"
    ax.set_title(mpl_text(title), fontsize=10)
    return fig


def _figure_and_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Any, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig = new_figure(figsize)
    return fig, fig.subplots()


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A pyplot figure in a notebook (displayed at the end of the cell, as pyplot's are),
    a bare ``Figure`` elsewhere (no global state, no backend needed)."""
    from jacobian_scopes.viz.report import in_notebook

    if in_notebook():
        import matplotlib.pyplot as plt

        return plt.figure(figsize=figsize)
    return Figure(figsize=figsize)


__all__ = ["SeriesInfluence", "mpl_text", "plot_result", "plot_series", "series_influence"]

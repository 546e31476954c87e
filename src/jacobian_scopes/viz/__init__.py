"""Seeing scopes: notebook views, side-by-side comparisons, attention, layer maps, offline
HTML pages, matplotlib figures and the terminal.

One module per concern:

* :mod:`~jacobian_scopes.viz.page`: the offline page (CircuitsVis bundle once) and escaping;
* :mod:`~jacobian_scopes.viz.tokens`: coloured tokens (one CircuitsVis ``ColoredTokens``);
* :mod:`~jacobian_scopes.viz.compare`: several results side by side;
* :mod:`~jacobian_scopes.viz.attention`: a scope beside CircuitsVis attention heads;
* :mod:`~jacobian_scopes.viz.maps`: layer × token and layer × head heat maps;
* :mod:`~jacobian_scopes.viz.patching`: the scope and both patchings side by side;
* :mod:`~jacobian_scopes.viz.report`: sections, figures, ``save_html``, notebooks, ``show``;
* :mod:`~jacobian_scopes.viz.plots`: matplotlib figures, including the time series;
* :mod:`~jacobian_scopes.viz.terminal`: the rich terminal view.

Example:
    >>> import jacobian_scopes as js
    >>> model = js.load_default_model()
    >>> r = js.semantic_scope(model, "The capital of France is", " Paris")
    >>> js.viz.token_view(r).save_html("paris.html")
    PosixPath('paris.html')
"""

from jacobian_scopes.viz.attention import AttentionView, beside_attention
from jacobian_scopes.viz.compare import Comparison, compare
from jacobian_scopes.viz.maps import MapView, layer_head_map, layer_token_map, maps
from jacobian_scopes.viz.page import View
from jacobian_scopes.viz.plots import SeriesInfluence, plot_result, plot_series, series_influence
from jacobian_scopes.viz.report import (
    FigureView,
    Group,
    Section,
    Text,
    as_view,
    render_document,
    save_html,
    show,
)
from jacobian_scopes.viz.terminal import print_result
from jacobian_scopes.viz.tokens import TokenView, colored_tokens, token_view

__all__ = [
    "AttentionView",
    "Comparison",
    "FigureView",
    "Group",
    "MapView",
    "Section",
    "SeriesInfluence",
    "Text",
    "TokenView",
    "View",
    "as_view",
    "beside_attention",
    "colored_tokens",
    "compare",
    "layer_head_map",
    "layer_token_map",
    "maps",
    "plot_result",
    "plot_series",
    "print_result",
    "render_document",
    "save_html",
    "series_influence",
    "show",
    "token_view",
]

"""Putting views together: sections, figures, the offline page, notebooks and ``show``.

:func:`save_html` takes any mix of views, so one page can hold a whole report:

* a :class:`~jacobian_scopes.ScopeResult` (its default view: coloured tokens, plus the
  layer maps of a drill-down result);
* a view object: :class:`~jacobian_scopes.viz.tokens.TokenView`,
  :class:`~jacobian_scopes.viz.compare.Comparison`,
  :class:`~jacobian_scopes.viz.attention.AttentionView`,
  :class:`~jacobian_scopes.viz.maps.MapView`, :class:`Section`, :class:`Group`;
* a matplotlib ``Figure`` (embedded as inline SVG);
* a string (a paragraph of text) or a ``(heading, view)`` pair, where ``view`` may itself
  be a list of views.
"""

from __future__ import annotations

import io
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jacobian_scopes.results import ScopeResult
from jacobian_scopes.viz.page import CSS, Page, View, escape_text


@dataclass
class Text(View):
    """A paragraph of plain text (escaped).

    Example:
        >>> from jacobian_scopes.viz import Text
        >>> from jacobian_scopes.viz.page import Page
        >>> Text("a < b").render(Page())
        '<p>a &lt; b</p>'
    """

    text: str

    def render(self, page: Page) -> str:
        return f"<p>{escape_text(self.text)}</p>"

    def __rich__(self) -> Any:
        from rich.text import Text as RichText

        return RichText(self.text)


@dataclass
class Group(View):
    """Several views, one after the other.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.viz import Group, Text, token_view
        >>> model = js.load_default_model()
        >>> r = js.semantic_scope(model, "The capital of France is", " Paris")
        >>> group = Group([Text("Why ' Paris'?"), token_view(r)])
        >>> group.save_html("paris.html", title="Paris")
        PosixPath('paris.html')
    """

    views: list[View] = field(default_factory=list)

    def render(self, page: Page) -> str:
        return "\n".join(v.render(page) for v in self.views)

    def __rich__(self) -> Any:
        from rich.console import Group as RichGroup

        return RichGroup(*(_rich(v) for v in self.views))


@dataclass
class Section(View):
    """A heading over one or more views.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.viz import Group, Section, Text, render_document, token_view
        >>> model = js.load_default_model()
        >>> prompt = "The capital of France is"
        >>> results = [js.semantic_scope(model, prompt, t) for t in (" Paris", " Lyon")]
        >>> report = [Section(f"Why{r.target.tokens[0]}?", token_view(r)) for r in results]
        >>> render_document(*report).count("<h2>")
        2
    """

    heading: str
    body: View

    def render(self, page: Page) -> str:
        return (
            f'<section class="jsv-section"><h2>{escape_text(self.heading)}</h2>\n'
            f"{self.body.render(page)}</section>"
        )

    def __rich__(self) -> Any:
        from rich.console import Group as RichGroup
        from rich.rule import Rule

        return RichGroup(Rule(self.heading), _rich(self.body))


@dataclass
class FigureView(View):
    """A matplotlib figure, embedded as inline SVG (vector, no external file, no request).

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.viz import FigureView, plot_result, render_document
        >>> model = js.load_default_model()
        >>> figure = plot_result(js.semantic_scope(model, "The capital of France is", " Paris"))
        >>> html = render_document(FigureView(figure))
        >>> html.count("<svg"), "http://" in html.split("<svg", 1)[0]
        (1, False)
    """

    figure: Any

    def render(self, page: Page) -> str:
        buf = io.StringIO()
        self.figure.savefig(buf, format="svg", bbox_inches="tight")
        svg = buf.getvalue()
        # Drop the XML prolog and DOCTYPE: inside HTML the <svg> element stands alone.
        svg = svg[svg.index("<svg") :]
        return f'<div class="jsv-figure">{svg}</div>'

    def __rich__(self) -> Any:
        from rich.text import Text as RichText

        return RichText("[figure: see the HTML page or result.plot()]", style="dim")


def as_view(obj: Any) -> View:
    """Turn anything :func:`save_html` accepts into a view (see the module docstring).

    Example:
        >>> from jacobian_scopes.viz.report import as_view
        >>> as_view(("Notes", "plain text")).heading
        'Notes'
    """
    if isinstance(obj, View):
        return obj
    if isinstance(obj, ScopeResult):
        return result_view(obj)
    if isinstance(obj, str):
        return Text(obj)
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], str):
        return Section(obj[0], as_view(obj[1]))
    if isinstance(obj, (list, tuple)):
        return Group([as_view(o) for o in obj])
    if type(obj).__name__ == "Figure" and hasattr(obj, "savefig"):
        return FigureView(obj)
    raise TypeError(
        f"cannot show a {type(obj).__name__}: pass a ScopeResult, a view (compare, "
        "beside_attention, maps, …), a matplotlib Figure, a string, or a (heading, view) pair"
    )


def result_view(result: ScopeResult, *, include_bos: bool = False) -> View:
    """The default view of a result: coloured tokens; for a drill-down result, the per-token
    total followed by its layer maps."""
    from jacobian_scopes.viz.maps import maps
    from jacobian_scopes.viz.tokens import token_view

    tokens = token_view(result, include_bos=include_bos)
    if result.scores.dim() == 1:
        return tokens
    return Group([tokens, *maps(result, include_bos=include_bos)])


def render_document(*views: Any, title: str | None = None) -> str:
    """A complete HTML document (str) holding ``views``; see :func:`save_html`.

    Example:
        >>> from jacobian_scopes.viz.report import render_document
        >>> render_document("hello <world>", title="T").count("&lt;world&gt;")
        1
    """
    page = Page(prefix="jsv")
    body = "\n".join(as_view(v).render(page) for v in views)
    heading = f"<h1>{escape_text(title)}</h1>\n" if title else ""
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>\n"
        # Nothing on this page may come from the network, whatever a view contains.
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
        "script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:\">\n"
        f"<title>{escape_text(title or 'Jacobian Scopes')}</title>\n"
        f"<style>{CSS}</style></head>\n"
        f'<body class="jsv">\n{heading}{body}\n{page.scripts()}\n</body></html>\n'
    )


def save_html(path: str | os.PathLike[str], *views: Any, title: str | None = None) -> Path:
    """Write one self-contained, offline HTML page holding any number of views.

    The CircuitsVis bundle is included once, whatever the number of widgets; no request
    leaves the page (it also forbids any with a Content-Security-Policy). Returns the path.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.viz import beside_attention
        >>> model = js.load_default_model()
        >>> prompt = "The capital of France is"
        >>> paris = js.semantic_scope(model, prompt, " Paris")
        >>> lyon = js.semantic_scope(model, prompt, " Lyon")
        >>> js.save_html("report.html", paris,
        ...              ("Paris vs Lyon", js.compare(paris, lyon)),
        ...              ("Attention", beside_attention(model, paris, layers=[3])),
        ...              title="Capitals")
        PosixPath('report.html')
    """
    if not views:
        raise ValueError("save_html needs at least one view to show")
    path = Path(path)
    text = render_document(*views, title=title)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# Whether this kernel has already sent the CircuitsVis bundle with an output (the module
# lives as long as the kernel process, so a restarted kernel sends it again).
_bundle_sent = False


def notebook_html(view: Any) -> str:
    """HTML for one notebook output: its own styles, markup and render calls.

    Inside a notebook kernel, the 1.3 MB CircuitsVis bundle goes with the first output
    that has a widget, and later outputs use it from the page (as plotly's notebook mode
    does): ten views weigh about as much as one. Saved notebooks and their ``nbconvert``
    HTML keep that first output, so every view still renders there. Outside a kernel
    every output carries the bundle. :func:`resend_bundle` makes the next output carry it
    again (after clearing the output that had it).
    """
    global _bundle_sent
    kernel = in_notebook()
    page = Page(include_bundle=not (kernel and _bundle_sent))
    body = as_view(view).render(page)
    scripts = page.scripts()
    if kernel and page.widgets and page.include_bundle:
        _bundle_sent = True
    return f'<div class="jsv"><style>{CSS}</style>\n{body}\n{scripts}</div>'


def resend_bundle() -> None:
    """Make the next notebook output carry the CircuitsVis bundle again.

    Example:
        >>> from jacobian_scopes.viz.report import resend_bundle
        >>> resend_bundle()
    """
    global _bundle_sent
    _bundle_sent = False


def widgets(*views: Any) -> list[tuple[str, dict[str, Any]]]:
    """(component, props) of every widget the views render, in page order (for tests)."""
    page = Page(prefix="jsv")
    for v in views:
        as_view(v).render(page)
    return [(w.component, w.props) for w in page.widgets]


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where HTML output is shown)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def show(obj: Any) -> None:
    """Display ``obj`` (a result or any view): HTML in a notebook, rich text elsewhere.

    Example:
        >>> import jacobian_scopes as js
        >>> model = js.load_default_model()
        >>> js.show(js.semantic_scope(model, "The capital of France is", " Paris"))
        Semantic · logit of ' Paris'
        explains the prediction after position 5 (' is') · model's top prediction ...
    """
    view = as_view(obj)
    if in_notebook():
        from IPython.display import HTML, display

        display(HTML(notebook_html(view)))
        return
    from rich.console import Console

    Console().print(_rich(view))


def _rich(view: View) -> Any:
    rich = getattr(view, "__rich__", None)
    if rich is None:  # pragma: no cover - every view defines it
        return repr(view)
    return rich()


__all__ = [
    "FigureView",
    "Group",
    "Section",
    "Text",
    "as_view",
    "render_document",
    "resend_bundle",
    "save_html",
    "show",
]

"""One offline HTML page for any number of views: the CircuitsVis bundle once, every
widget rendered into its own ``<div>``, every piece of user text escaped.

Why not CircuitsVis' own output: ``str(html)`` and ``show_code()`` load the JavaScript
from a CDN, and ``.local_src`` inlines the 1.3 MB bundle once *per widget* inside a
self-closing ``<div/>``, so a second widget on the same page never shows. Here the page
includes the installed package's bundle exactly once and calls
``CircuitsVis.render(id, CircuitsVis.<Component>, props)`` for each widget.

Two kinds of text reach the page and both are made inert here:

* token text inside widget props: CircuitsVis writes token strings with
  ``dangerouslySetInnerHTML``, so a token such as ``<img src=x onerror=...>`` would run.
  :func:`escape_text` is applied to every token before it becomes a prop;
* the props themselves, embedded in a ``<script>``: :func:`script_json` makes sure no
  string can close the script element or open an HTML comment.
"""

from __future__ import annotations

import functools
import html
import json
import math
import re
import uuid
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

# The colour-blind-safe pair CircuitsVis documents for its scales.
POSITIVE = "#1E88E5"
NEGATIVE = "#D81B60"


def escape_text(text: str) -> str:
    """Escape text for HTML element content (``&``, ``<``, ``>``); quotes stay as they are.

    Example:
        >>> from jacobian_scopes.viz.page import escape_text
        >>> escape_text("<bos> & </script>")
        '&lt;bos&gt; &amp; &lt;/script&gt;'
    """
    return html.escape(text, quote=False)


def escape_attr(text: str) -> str:
    """Escape text for a double- or single-quoted HTML attribute value."""
    return html.escape(text, quote=True)


def script_json(value: Any) -> str:
    """JSON that is safe to embed in a ``<script>`` element.

    ``<``, ``>`` and ``&`` become ``\\u003c``, ``\\u003e`` and ``\\u0026`` inside strings
    (JSON has no bare ``<`` outside strings), so ``</script>`` or ``<!--`` in a token cannot
    end the script or change how the HTML parser reads it. Non-ASCII characters, including
    U+2028/U+2029, are written as ``\\u`` escapes. NaN and infinities are refused: JSON has
    no spelling for them and a colour scale cannot use them.

    Example:
        >>> from jacobian_scopes.viz.page import script_json
        >>> script_json({"t": "</script>"})
        '{"t": "\\\\u003c/script\\\\u003e"}'
    """
    text = json.dumps(value, ensure_ascii=True, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


@functools.lru_cache(maxsize=1)
def circuitsvis_bundle() -> str:
    """The installed CircuitsVis browser bundle (``dist/cdn/iife.js``), ready to inline.

    It defines the global ``CircuitsVis``. ``</script`` inside it (a string literal in
    React) is written ``<\\/script``, which means the same in JavaScript but cannot end the
    inline script; the source-map comment is dropped so that no tool tries to fetch it.
    """
    try:
        path = resources.files("circuitsvis") / "dist" / "cdn" / "iife.js"
        js = path.read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as exc:  # pragma: no cover
        raise RuntimeError(
            "the CircuitsVis JavaScript bundle (circuitsvis/dist/cdn/iife.js) was not found; "
            "reinstall circuitsvis>=1.43"
        ) from exc
    js = re.sub(r"</(script)", r"<\\/\1", js, flags=re.IGNORECASE)
    lines = [ln for ln in js.splitlines() if not ln.startswith("//# sourceMappingURL=")]
    js = "\n".join(lines)
    if "<!--" in js:  # pragma: no cover - not in any released bundle; would change parsing
        raise RuntimeError("this CircuitsVis bundle contains '<!--' and cannot be inlined")
    return js


@dataclass
class Widget:
    """One CircuitsVis component with its props (already escaped)."""

    component: str
    props: dict[str, Any]
    id: str = ""


@dataclass
class Page:
    """Collects the widgets of one page (or one notebook output) while views render.

    ``widget()`` returns the placeholder ``<div>`` to put where the widget should appear;
    :meth:`scripts` returns the bundle and the render calls, to put after all the markup.

    Example:
        A view of your own that shows a CircuitsVis widget renders it through the page:

        >>> from jacobian_scopes.viz.page import Page
        >>> page = Page(prefix="demo")
        >>> page.widget("ColoredTokens", {"tokens": ["Paris", " is"], "values": [1.0, 0.2]})
        '<div class="jsv-widget" id="demo-0" data-component="ColoredTokens"></div>'
        >>> scripts = page.scripts()
        >>> 'CircuitsVis.render("demo-0", CircuitsVis.ColoredTokens' in scripts
        True
    """

    prefix: str = field(default_factory=lambda: "jsv-" + uuid.uuid4().hex[:8])
    widgets: list[Widget] = field(default_factory=list)
    # False where an earlier output of the same notebook already carries the bundle.
    include_bundle: bool = True

    def widget(self, component: str, props: dict[str, Any]) -> str:
        _check_finite(props)
        w = Widget(component, props, f"{self.prefix}-{len(self.widgets)}")
        self.widgets.append(w)
        return f'<div class="jsv-widget" id="{w.id}" data-component="{component}"></div>'

    def scripts(self) -> str:
        if not self.widgets:
            return ""
        calls = "\n".join(
            # One failing widget must not stop the others; the error still reaches the
            # console (and the browser tests).
            f"try {{ CircuitsVis.render({script_json(w.id)}, CircuitsVis.{w.component}, "
            f"{script_json(w.props)}); }} catch (e) {{ console.error(e); }}"
            for w in self.widgets
        )
        if not self.include_bundle:
            # The bundle came with an earlier output. If that output is gone from the page
            # (cleared, or the notebook reopened untrusted), say so where the widget would be.
            ids = script_json([w.id for w in self.widgets])
            return (
                "<script>\nif (typeof window.CircuitsVis === 'undefined') {\n"
                f"  for (const id of {ids}) {{ const el = document.getElementById(id);\n"
                f"    if (el) el.textContent = {script_json(MISSING_BUNDLE)}; }}\n"
                "} else {\n" + calls + "\n}\n</script>"
            )
        # The bundle defines CircuitsVis (and registers TensorFlow.js kernels) when it
        # runs, so it must run once per document even where a notebook shows several
        # outputs: it is wrapped in a function (its "use strict" directive still applies)
        # that runs only if CircuitsVis is not defined yet.
        return (
            "<script>\nif (typeof window.CircuitsVis === 'undefined') { (function () {\n"
            + circuitsvis_bundle()
            + "\nwindow.CircuitsVis = CircuitsVis;\n})(); }\n</script>\n<script>\n"
            + calls
            + "\n</script>"
        )


MISSING_BUNDLE = (
    "[This view needs the CircuitsVis script, which came with an earlier output of this "
    "notebook that is no longer on the page. Run jacobian_scopes.viz.report.resend_bundle() "
    "and re-run this cell.]"
)


def _check_finite(value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("a view cannot show NaN or infinite values")
    if isinstance(value, dict):
        for v in value.values():
            _check_finite(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _check_finite(v)


# Everything is scoped under .jsv so that a notebook's own styles are left alone.
CSS = f"""
.jsv {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; }}
.jsv h1 {{ font-size: 1.5em; }}
.jsv h2 {{ font-size: 1.25em; margin: 1.2em 0 .4em; }}
.jsv h3 {{ font-size: 1.05em; margin: 1em 0 .3em; }}
.jsv .jsv-meta {{ color: #555; font-size: .85em; margin: .1em 0 .3em; }}
.jsv .jsv-widget {{ margin: 4px 0 0; }}
.jsv .colored-tokens {{ padding-bottom: 8px !important; line-height: 1.9; }}
/* CircuitsVis' own tooltip repeats the token's markup as text; ours replaces it. */
.jsv .colored-tokens > div {{ display: none !important; }}
.jsv .colored-tokens span {{ position: relative; }}
.jsv js-tip {{ display: none; }}
.jsv .colored-tokens span:hover > js-tip {{
  display: block; position: absolute; left: 0; top: 110%; z-index: 20;
  background: #222; color: #fff; padding: 4px 7px; border-radius: 4px;
  font: 12px/1.4 ui-monospace, monospace; white-space: nowrap; }}
.jsv js-bos {{ font-style: italic; color: #777; }}
.jsv js-pos {{ outline: 2px solid {NEGATIVE}; outline-offset: 1px; }}
.jsv js-cont {{ text-decoration: underline dashed {NEGATIVE}; }}
.jsv js-tgt, .jsv js-pred {{ background: #fff; color: {NEGATIVE}; font-weight: 600;
  border: 1px dashed {NEGATIVE}; margin-left: 4px; padding: 0 3px; }}
.jsv js-pred {{ color: #777; border-color: #aaa; font-weight: normal; }}
.jsv table.jsv-map {{ border-collapse: collapse; font-size: 11px; }}
.jsv table.jsv-map td {{ width: 18px; height: 16px; border: 1px solid #fff; padding: 0; }}
.jsv table.jsv-map th {{ font-weight: normal; padding: 0 4px; white-space: pre; }}
.jsv table.jsv-map thead th {{ writing-mode: vertical-rl; transform: rotate(180deg);
  text-align: left; vertical-align: bottom; max-height: 9em; overflow: hidden; }}
.jsv table.jsv-map tbody th {{ text-align: right; }}
.jsv table.jsv-map .jsv-rowmax {{ width: auto; border: 0; color: #888; font-size: 9px;
  text-align: left; padding-left: 4px; }}
.jsv table.jsv-map thead th.jsv-rowmax {{ writing-mode: horizontal-tb; transform: none;
  vertical-align: bottom; }}
.jsv .jsv-side {{ display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }}
.jsv table.jsv-agree {{ border-collapse: collapse; font-size: 12px; margin: .4em 0; }}
.jsv table.jsv-agree td, .jsv table.jsv-agree th {{ border: 1px solid #ddd; padding: 2px 8px; }}
.jsv table.jsv-map th.jsv-pos {{ color: {NEGATIVE}; font-weight: bold; }}
.jsv .jsv-figure svg {{ max-width: 100%; height: auto; }}
.jsv .jsv-legend {{ font-size: .8em; color: #555; }}
.jsv .jsv-swatch {{ display: inline-block; width: 90px; height: .8em;
  vertical-align: middle; border: 1px solid #ddd; }}
"""


class View:
    """Something a notebook, :func:`jacobian_scopes.save_html` and the terminal can show.

    Subclasses implement :meth:`render` (HTML markup, registering their widgets on the
    page) and ``__rich__`` (the terminal rendering).

    Example:
        A view of your own goes on a page with the library's views:

        >>> from jacobian_scopes.viz import View, render_document
        >>> from jacobian_scopes.viz.page import escape_text
        >>> class Note(View):
        ...     def __init__(self, text):
        ...         self.text = text
        ...     def render(self, page):
        ...         return f"<aside>{escape_text(self.text)}</aside>"
        >>> html = render_document(Note("scores < 1 are noise"), title="Notes")
        >>> "<aside>scores &lt; 1 are noise</aside>" in html
        True
    """

    def render(self, page: Page) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def _repr_html_(self) -> str:
        from jacobian_scopes.viz.report import notebook_html

        return notebook_html(self)

    def show(self) -> None:
        """Display in a notebook (HTML), or print to the terminal outside one."""
        from jacobian_scopes.viz.report import show

        show(self)

    def save_html(self, path: Any, *, title: str | None = None) -> Any:
        """Write this view as a self-contained offline page; returns the path."""
        from jacobian_scopes.viz.report import save_html

        return save_html(path, self, title=title)


__all__ = ["Page", "View", "escape_text", "script_json"]

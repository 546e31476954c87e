"""Shared by the visualisation tests: hand-made results (no model, so the same on every
TransformerLens line), hostile tokens, and a headless-Chromium page driver.

The browser is Debian's ``chromium`` driven by Playwright with ``executable_path`` (never
a browser that Playwright downloads). Tests that need it skip, with the reason, where
either is missing; ``.ci/run`` installs Chromium first so that CI runs them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from jacobian_scopes.results import Prediction, ScopeResult, Target

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"

# Each would run script, swallow text or break the page if it reached the DOM as HTML.
HOSTILE = [
    "<bos>",
    '<img/src="x"/onerror="window.__pwned=1">',
    "</script><script>window.__pwned=2;alert(1)</script>",
    "<|im_start|>",
    " &amp; <b>bold</b>",
    "<!--",
    '"><svg/onload=window.__pwned=3>',
    "\u2028line\u2029sep",
    " $x$ [red]y[/red]",
]


def fake_result(
    str_tokens: list[str],
    scores: list[float] | torch.Tensor,
    *,
    scope: str = "semantic",
    target: str | None = " liberal",
    position: int | None = None,
    bos: bool = True,
    axes: tuple[str, ...] = ("token",),
    source_labels: list[str] | None = None,
) -> ScopeResult:
    n = len(str_tokens)
    scores = torch.as_tensor(scores, dtype=torch.float32)
    pos = n - 1 if position is None else position
    return ScopeResult(
        scope=scope,
        scores=scores,
        tokens=torch.arange(n),
        str_tokens=list(str_tokens),
        position=pos,
        positions=[pos],
        top_predictions=[Prediction(7, " liberal", 0.25), Prediction(8, " <i>x</i>", 0.1)],
        params={},
        processing={},
        model_name="fake-model",
        target=None if target is None else Target([7], [target], "logit"),
        score_axes=axes,
        source_labels=source_labels,
        bos=bos,
    )


def hostile_result(**kw) -> ScopeResult:
    tokens = ["<bos>", "Tom", " loves", *HOSTILE[1:], " He", " is", " a"]
    scores = [40.0] + [float(i % 7) + 0.5 for i in range(1, len(tokens))]
    return fake_result(tokens, scores, **kw)


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]


@dataclass
class Loaded:
    """What happened while a page loaded in the browser."""

    console: list[tuple[str, str]] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    widgets: list[dict] = field(default_factory=list)
    pwned: object = None
    texts: dict[str, list[str]] = field(default_factory=dict)
    tips: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[tuple[str, str]]:
        return [(k, t) for k, t in self.console if k in ("error", "pageerror", "warning")]


_WIDGET_STATE = """() => [...document.querySelectorAll('.jsv-widget')].map(w => ({
  id: w.id,
  component: w.dataset.component,
  tokens: w.querySelectorAll('.colored-tokens > span').length,
  heads: w.querySelectorAll('h4').length,
  canvases: w.querySelectorAll('canvas').length,
}))"""

_TEXTS = """() => Object.fromEntries([...document.querySelectorAll('.jsv-widget')].map(w => [
  w.id,
  [...w.querySelectorAll('.colored-tokens > span > span')].map(s => {
    const c = s.cloneNode(true);
    c.querySelectorAll('js-tip, js-tgt, js-pred').forEach(e => e.remove());
    return c.textContent;
  }),
]))"""


def load_in_browser(path: Path, screenshot: Path | None = None, hover: int = 0) -> Loaded:
    """Open ``path`` in headless Chromium; report console output, requests, widgets."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    exe = chromium_path()
    if exe is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    out = Loaded()
    with tempfile.TemporaryDirectory() as profile, sync_api.sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            profile,
            executable_path=exe,
            headless=True,
            args=[f for f in FLAGS if f != "--headless"],
            viewport={"width": 1200, "height": 900},
        )
        try:
            page = browser.new_page()
            page.on("console", lambda m: out.console.append((m.type, m.text)))
            page.on("pageerror", lambda e: out.console.append(("pageerror", str(e))))
            browser.on("request", lambda r: out.requests.append(r.url))
            # Payloads that run would set window.__pwned or call alert/confirm/prompt.
            page.add_init_script(
                "for (const f of ['alert', 'confirm', 'prompt'])"
                " window[f] = () => { window.__pwned = f; };"
            )
            page.goto(path.resolve().as_uri(), wait_until="load")
            page.wait_for_function(
                "() => [...document.querySelectorAll('.jsv-widget')]"
                ".every(w => w.childElementCount > 0)",
                timeout=15_000,
            )
            page.wait_for_timeout(300)  # let charts draw before the screenshot
            out.widgets = page.evaluate(_WIDGET_STATE)
            out.texts = page.evaluate(_TEXTS)
            out.pwned = page.evaluate("window.__pwned === undefined ? null : window.__pwned")
            first = page.locator(".jsv-widget .colored-tokens > span").nth(hover)
            if first.count():
                first.hover()
                out.tips = page.evaluate(
                    "[...document.querySelectorAll('js-tip')]"
                    ".filter(e => getComputedStyle(e).display !== 'none').map(e => e.textContent)"
                )
            if screenshot is not None:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return out


def artifact(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name


def update_snapshots() -> bool:
    return os.environ.get("UPDATE_SNAPSHOTS") == "1"

"""The explorer app: the scopes in the browser, local or inline in a notebook.

``js.explore(model)`` (a model in memory) and ``jacobian-scopes explore`` (a model by name)
start the same Gradio app: type a prompt, click the token whose next-token prediction to
explain (default: the last), pick the target from the model's top predictions there (or
type one), choose the scope, and see the library's own views (coloured tokens, the
layer × token map, the scope beside attention), each the offline page of
:func:`jacobian_scopes.viz.render_document` in a sandboxed ``<iframe>``. The result
downloads as JSON and the page as HTML. The computations live in
:mod:`jacobian_scopes.explorer`; this module is the user interface.

Gradio is optional (``pip install "jacobian-scopes[app]"``) and imported only here, when
an app is built. Private by default: it listens on 127.0.0.1 unless told otherwise (and
warns when it is not a loopback address), Gradio's analytics are off and the theme uses
the system's fonts, so the page requests nothing from outside the machine.

The API endpoint ``attribute`` returns the scores of one call, equal to the library's:

    >>> from gradio_client import Client                               # doctest: +SKIP
    >>> Client("http://127.0.0.1:7860/").predict(
    ...     "The capital of France is", "semantic", -1, " Paris", "", "logit", "sketch",
    ...     api_name="/attribute")["scores"]                            # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import html
import ipaddress
import os
import socket
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from jacobian_scopes.errors import NonFiniteError, ScopeInputError, TemperatureUndefinedError
from jacobian_scopes.explorer import (
    CHARS_PER_TOKEN,
    METHODS,
    Explorer,
    Request,
    Views,
    compute,
    parse_token_text,
    scores_payload,
)
from jacobian_scopes.text import token_label

INSTALL_HINT = 'the explorer needs Gradio: pip install "jacobian-scopes[app]"'
DEFAULT_HOST = "127.0.0.1"
SCOPE_LABELS = {"Semantic": "semantic", "Temperature": "temperature", "Fisher": "fisher"}
EXAMPLE = "Tom loves Korean food. He grew up in the South and goes to Columbia. He is a"
FRAME_HEIGHT = 420

# Errors a user's input can cause: shown in the app, never a traceback.
USER_ERRORS = (ScopeInputError, TemperatureUndefinedError, NonFiniteError)


def gradio() -> Any:
    """The ``gradio`` module, with its analytics off, or an ImportError saying how to get it."""
    # Read by Gradio when it is imported and when a Blocks is made: set it first.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio as gr
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return gr


# --------------------------------------------------------------------------- the page
# The views' pages report their height to this page (they run in a sandbox without the
# app's origin, so the app cannot measure them); the message is only a number.
HEAD = """<script>
window.addEventListener("message", (e) => {
  const h = e.data && e.data.jsvHeight;
  if (typeof h !== "number" || !isFinite(h)) return;
  for (const f of document.querySelectorAll("iframe.jsv-frame")) {
    if (f.contentWindow === e.source) f.style.height = Math.min(Math.max(h + 24, 120), 4000) + "px";
  }
});
</script>"""

_REPORT_HEIGHT = (
    "<script>(function () { const send = () => parent.postMessage("
    "{jsvHeight: Math.ceil(document.body.getBoundingClientRect().bottom)}, '*');"
    " new ResizeObserver(send).observe(document.body); send(); })();</script>"
)

CSS = """
.jsv-status { font-size: .95em; padding: 2px 4px; color: #444; }
.jsv-status.error { color: #b00020; font-weight: 600; }
.jsv-frame { width: 100%; border: 0; }
#jsv-tokens .token { margin: 0 3px 3px 0; border: 1px solid #ddd; }
"""


def theme() -> Any:
    """Gradio's default look with the system's fonts: no font is fetched from anywhere."""
    gr = gradio()
    return gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "sans-serif"],
        font_mono=["ui-monospace", "SFMono-Regular", "Consolas", "monospace"],
    )


def frame(document: str | None, placeholder: str = "") -> str:
    """A view's offline page in a sandboxed iframe (scripts run, but without the app's
    origin: nothing in it can reach the app or its cookies)."""
    if document is None:
        return f'<div class="jsv-status">{html.escape(placeholder)}</div>'
    document = document.replace("</body>", _REPORT_HEIGHT + "</body>", 1)
    return (
        f'<iframe class="jsv-frame" sandbox="allow-scripts" style="height: {FRAME_HEIGHT}px" '
        f'srcdoc="{html.escape(document, quote=True)}"></iframe>'
    )


def status(text: str, error: bool = False) -> str:
    """A status line; its text is escaped (it may quote a user's token)."""
    cls = "jsv-status error" if error else "jsv-status"
    return f'<div class="{cls}">{html.escape(text)}</div>'


def choice_label(token: str, prob: float) -> str:
    from jacobian_scopes.viz.tokens import show_token

    return f"{show_token(token)} · {prob:.1%}"


def shown_tokens(tokens: list[str], position: int) -> list[tuple[str, str | None]]:
    """The HighlightedText value: each token (line breaks made visible), the explained one
    marked."""
    n = len(tokens)
    pos = position % n if n else 0
    return [
        (tok.replace("\n", "↵") or "∅", "explained" if i == pos else None)
        for i, tok in enumerate(tokens)
    ]


# ---------------------------------------------------------------------------- the app
def build_app(model: Any, *, max_tokens: int | None = None, n_heads_shown: int = 4) -> Any:
    """The explorer as a ``gradio.Blocks`` (not launched: see :func:`explore`/:func:`launch`).

    ``max_tokens`` caps prompts below the model's context (for a shared machine).

    Example:
        >>> app = build_app(model)                               # doctest: +SKIP
        >>> launch(app, port=7860, block=False)                  # doctest: +SKIP
    """
    gr = gradio()
    ex = Explorer(model, max_tokens=max_tokens)
    max_chars = ex.max_tokens * CHARS_PER_TOKEN if ex.max_tokens else None

    # Cancel is the app's own, not Gradio's `cancels=`: Gradio 6 marks the outputs of a run
    # it cancels mid-step "Error" when the step ends late (its front end races the /cancel
    # reply against the stream's close). Each Run click takes the session's next number
    # before it queues; Cancel stops every run of its session up to the latest number,
    # running or queued, and no other session's.
    cancelled_through: dict[str, int] = {}

    def on_prompt(prompt: str) -> tuple[Any, ...]:
        try:
            tokens = ex.tokens(prompt)
            preds = ex.predictions(prompt, -1)
        except USER_ERRORS as exc:
            empty = gr.update(choices=[], value=None)
            return [], -1, empty, {}, status(str(exc), error=bool(prompt))
        labels = {choice_label(p.token, p.prob): p.token_id for p in preds}
        first = next(iter(labels))
        msg = f"{len(tokens)} tokens · explaining the prediction after the last one"
        return (
            shown_tokens(tokens, -1),
            len(tokens) - 1,
            gr.update(choices=list(labels), value=first),
            labels,
            status(msg),
        )

    def on_click(prompt: str, evt: Any) -> tuple[Any, ...]:
        index = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        try:
            tokens = ex.tokens(prompt)
            position = int(index)
            preds = ex.predictions(prompt, position)
        except (*USER_ERRORS, TypeError, ValueError) as exc:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), status(str(exc), error=True)
        labels = {choice_label(p.token, p.prob): p.token_id for p in preds}
        from jacobian_scopes.viz.tokens import show_token

        msg = (
            f"{len(tokens)} tokens · explaining the prediction after position {position} "
            f"({show_token(tokens[position])})"
        )
        return (
            shown_tokens(tokens, position),
            position,
            gr.update(choices=list(labels), value=next(iter(labels))),
            labels,
            status(msg),
        )

    # Gradio finds the event argument by its annotation, which must be the class itself
    # (this module's annotations are strings, and gradio is imported late).
    on_click.__annotations__["evt"] = gr.SelectData

    def on_scope(label: str) -> tuple[Any, ...]:
        semantic = label == "Semantic"
        return (
            gr.update(visible=semantic),
            gr.update(visible=semantic),
            gr.update(visible=semantic),
            gr.update(visible=label == "Fisher"),
        )

    def request_from(
        prompt: str,
        scope_label: str,
        position: int,
        target: str | None,
        labels: dict[str, int],
        foil: str | None,
        mode: str,
        method: str,
    ) -> Request:
        scope = SCOPE_LABELS.get(scope_label, scope_label)
        req = Request(prompt=prompt, scope=scope, position=int(position), mode=mode, method=method)
        if scope == "semantic":
            req.target = labels[target] if target in labels else parse_token_text(target)
            req.foil = parse_token_text(foil)
        return req

    def on_run(
        prompt: str,
        scope_label: str,
        position: int,
        target: str | None,
        labels: dict[str, int],
        foil: str | None,
        mode: str,
        method: str,
        layers: bool,
        attention: bool,
        number: int,
        request: Any,
    ) -> Iterator[tuple[Any, ...]]:
        skip = (gr.skip(),) * 5
        started = time.perf_counter()
        session = request.session_hash

        def cancelled() -> bool:
            return number <= cancelled_through.get(session, 0)

        # Said again at the end, or Gradio would show this run's last yield in its place.
        # compute yields before each step, the first included: a run cancelled while it
        # waited in the queue stops there, before any work.
        stopped = (status("cancelled"), *skip)
        step = [0, 0]

        def count(fraction: tuple[int, int], desc: str = "") -> None:
            step[:] = fraction

        try:
            req = request_from(prompt, scope_label, position, target, labels, foil, mode, method)
            views: Views | None = None
            for text, done in compute(ex, req, layers=layers, attention=attention, progress=count):
                # A library call already running when Cancel was pressed still returns here:
                # it must not overwrite "cancelled" with its own progress or results.
                if cancelled():
                    yield stopped
                    return
                if done is None:
                    yield (status(f"running: {text} … (step {step[0] + 1} of {step[1]})"), *skip)
                views = done
        except USER_ERRORS as exc:
            yield (status(str(exc), error=True), *skip)
            return
        if cancelled():
            yield stopped
            return
        assert views is not None
        json_path, html_path = _downloads(views)
        from jacobian_scopes.viz.tokens import describe

        tokens = views.result.str_tokens
        top = ", ".join(f"{token_label(tokens, j)} {s:.3g}" for j, _, s in views.result.top(3))
        yield (
            status(
                f"{describe(views.result)} · top tokens: {top} · "
                f"{time.perf_counter() - started:.1f} s"
            ),
            frame(views.pages["tokens"]),
            frame(views.pages.get("layers"), "the layer × token map is off"),
            frame(views.pages.get("attention"), "the attention view is off"),
            gr.update(value=str(json_path), interactive=True),
            gr.update(value=str(html_path), interactive=True),
        )

    # Gradio finds the request argument by its annotation too.
    on_run.__annotations__["request"] = gr.Request

    def attribute(
        prompt: str,
        scope: str = "semantic",
        position: int = -1,
        target: str = "",
        foil: str = "",
        mode: str = "logit",
        method: str = "sketch",
    ) -> dict[str, Any]:
        """Scores of one scope call, equal to the library's.

        Args:
            prompt: the text (BOS is prepended as TransformerLens does).
            scope: "semantic", "temperature" or "fisher".
            position: the position whose next-token prediction is explained (-1: last).
            target: Semantic: the next token to explain, e.g. " Paris" (empty: the model's
                top prediction at position).
            foil: Semantic: explain target minus foil (empty: none).
            mode: Semantic: "logit" (the paper's default) or "logprob".
            method: Fisher: "sketch", "exact" or "principal".

        Returns:
            {"scope", "tokens", "token_ids", "scores" (one per token), "position", "bos",
            "target", "top_predictions", "model"}: the scores are those of
            semantic_scope(model, prompt, target, position=..., ...) and its siblings.
        """
        req = Request(
            prompt=prompt,
            scope=scope,
            position=int(position),
            target=target if target != "" else None,
            foil=foil if foil != "" else None,
            mode=mode,
            method=method,
        )
        try:
            return scores_payload(ex.attribute(req))
        except USER_ERRORS as exc:
            raise gr.Error(str(exc)) from exc

    private = {"api_visibility": "private"}
    with gr.Blocks(title="Jacobian Scopes explorer", analytics_enabled=False) as app:
        gr.Markdown(
            "## Jacobian Scopes explorer\n"
            "Which input tokens drive the model's next-token prediction. Type a prompt, "
            "click a token to explain the prediction after it (default: the last), pick "
            "the target, and press **Attribute**."
        )
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(
                    label=f"Prompt · {ex.name}",
                    lines=3,
                    value=EXAMPLE,
                    max_length=max_chars,
                    elem_id="jsv-prompt",
                )
                tokens = gr.HighlightedText(
                    label="Tokens: click one to explain the prediction after it",
                    combine_adjacent=False,
                    show_legend=False,
                    show_inline_category=False,
                    color_map={"explained": "#D81B60"},
                    elem_id="jsv-tokens",
                )
                note = gr.HTML(status(""), elem_id="jsv-status")
            with gr.Column(scale=2):
                scope = gr.Radio(
                    list(SCOPE_LABELS), value="Semantic", label="Scope", elem_id="jsv-scope"
                )
                target = gr.Dropdown(
                    choices=[],
                    allow_custom_value=True,
                    label="Target: the model's top predictions, or type a token",
                    info="quotes are optional; type ' Paris' to keep the leading space",
                    elem_id="jsv-target",
                )
                with gr.Row():
                    foil = gr.Textbox(
                        label="Foil (optional): explain target − foil", elem_id="jsv-foil"
                    )
                    mode = gr.Radio(
                        ["logit", "logprob"], value="logit", label="Explain the", elem_id="jsv-mode"
                    )
                method = gr.Radio(
                    list(METHODS),
                    value="sketch",
                    label="Fisher method",
                    visible=False,
                    elem_id="jsv-method",
                )
                with gr.Row():
                    layers = gr.Checkbox(True, label="layer × token map")
                    attention = gr.Checkbox(True, label="beside attention")
                with gr.Row():
                    run = gr.Button("Attribute", variant="primary", elem_id="jsv-run")
                    stop = gr.Button("Cancel", variant="stop", elem_id="jsv-cancel")
        with gr.Tabs():
            with gr.Tab("Coloured tokens", elem_id="jsv-tab-tokens"):
                tok_view = gr.HTML(frame(None, "press Attribute"), elem_id="jsv-view-tokens")
            with gr.Tab("Layer × token", elem_id="jsv-tab-layers"):
                map_view = gr.HTML(frame(None, "press Attribute"), elem_id="jsv-view-layers")
            with gr.Tab("Beside attention", elem_id="jsv-tab-attention"):
                att_view = gr.HTML(frame(None, "press Attribute"), elem_id="jsv-view-attention")
        with gr.Row():
            dl_json = gr.DownloadButton(
                "Download result (JSON)", interactive=False, size="sm", elem_id="jsv-json"
            )
            dl_html = gr.DownloadButton(
                "Download page (HTML)", interactive=False, size="sm", elem_id="jsv-html"
            )
        position = gr.State(-1)
        labels = gr.State({})

        tokenised = [tokens, position, target, labels, note]
        prompt.change(on_prompt, prompt, tokenised, trigger_mode="always_last", **private)
        app.load(on_prompt, prompt, tokenised, **private)
        tokens.select(on_click, prompt, tokenised, **private)
        scope.change(on_scope, scope, [target, foil, mode, method], **private)
        number = gr.State(0)
        run.click(lambda n: n + 1, number, number, queue=False, **private).then(
            on_run,
            [
                prompt,
                scope,
                position,
                target,
                labels,
                foil,
                mode,
                method,
                layers,
                attention,
                number,
            ],
            [note, tok_view, map_view, att_view, dl_json, dl_html],
            concurrency_limit=1,
            # The status line counts the steps; Gradio's tracker would stay on the views
            # after a Cancel, until the step under way ends.
            show_progress="hidden",
            **private,
        )

        def on_cancel(latest: int, request: Any) -> Any:
            cancelled_through[request.session_hash] = latest
            return status("cancelled")

        on_cancel.__annotations__["request"] = gr.Request
        stop.click(on_cancel, number, note, queue=False, **private)
        gr.api(attribute, api_name="attribute")
    app.explorer = ex  # for tests and notebooks: the same lock and caps
    return app


def _downloads(views: Views) -> tuple[Path, Path]:
    """The run's JSON result and HTML page, written where Gradio can serve them."""
    from jacobian_scopes.io import save

    folder = Path(tempfile.mkdtemp(prefix="jacobian-scopes-"))
    json_path = save(views.result, folder / f"{views.result.scope}-scope.json")
    html_path = folder / f"{views.result.scope}-scope.html"
    html_path.write_text(views.pages["page"], encoding="utf-8")
    return json_path, html_path


# ------------------------------------------------------------------------- launching
def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (``localhost`` or a loopback
    address; names are not looked up).

    Example:
        >>> from jacobian_scopes.app import is_loopback
        >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("0.0.0.0")
        (True, True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def public_warning(host: str) -> str:
    return (
        f"the explorer listens on {host}, not on a loopback address: other machines that can "
        "reach this one can use it, and the model, with no password. Use --host 127.0.0.1 "
        "to keep it private."
    )


def check_port(host: str, port: int | None) -> None:
    """Fail early, with a clear message, when ``host:port`` cannot be listened on."""
    if port is None:
        return
    if not 1 <= port <= 65535:
        raise ScopeInputError(f"port must be between 1 and 65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ScopeInputError(f"cannot listen on {host!r}: {exc.strerror}") from exc
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # As the server will: a port left in TIME_WAIT by a closed server is free, one
        # that something listens on is not.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as exc:
            raise ScopeInputError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc} (is the port in use?)"
            ) from exc


def launch(
    app: Any,
    *,
    host: str = DEFAULT_HOST,
    port: int | None = None,
    inline: bool | None = None,
    block: bool | None = None,
    quiet: bool = False,
) -> str:
    """Start a built app's local server; returns its URL.

    ``inline`` (default: inside a notebook) shows it in the notebook's output; ``block``
    (default: outside a notebook) keeps the call running until interrupted.
    """
    from jacobian_scopes.viz.report import in_notebook

    if not is_loopback(host):
        warnings.warn(public_warning(host), stacklevel=2)
    check_port(host, port)
    notebook = in_notebook()
    inline = notebook if inline is None else inline
    block = not notebook if block is None else block
    _, url, _ = app.launch(
        server_name=host,
        server_port=port,
        inline=inline,
        prevent_thread_lock=not block,
        share=False,
        quiet=quiet,
        theme=theme(),
        css=CSS,
        head=HEAD,
        footer_links=["api"],
        ssr_mode=False,
        mcp_server=False,
        pwa=False,
        enable_monitoring=False,
        max_file_size="1mb",
    )
    return str(url)


def explore(
    model: Any,
    *,
    host: str = DEFAULT_HOST,
    port: int | None = None,
    inline: bool | None = None,
    block: bool | None = None,
    max_tokens: int | None = None,
    quiet: bool = False,
) -> Any:
    """Explore ``model`` interactively: the explorer app, shown inline in a notebook, or
    served at a local URL otherwise (the call then blocks until Ctrl-C).

    Args:
        model: a HookedTransformer or TransformerBridge with a tokenizer.
        host: the address to listen on (default 127.0.0.1: this machine only; anything
            else warns, since the app has no password).
        port: the port (default: the first free one from 7860).
        inline: show the app in the notebook output (default: when in a notebook).
        block: keep running until interrupted (default: outside a notebook).
        max_tokens: cap prompts below the model's context.

    Returns the ``gradio.Blocks`` app (``app.close()`` stops a non-blocking one).

    Example:
        >>> import jacobian_scopes as js
        >>> app = js.explore(js.load_default_model())      # doctest: +SKIP
    """
    app = build_app(model, max_tokens=max_tokens)
    launch(app, host=host, port=port, inline=inline, block=block, quiet=quiet)
    return app


# ------------------------------------------------------------------------------- CLI
def port_number(text: str) -> int:
    """argparse type for --port."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be between 1 and 65535, got {port}")
    return port


def add_explore_command(
    sub: Any, model_arguments: Callable[[argparse.ArgumentParser], None]
) -> argparse.ArgumentParser:
    """Add ``explore`` to the ``jacobian-scopes`` subcommands; ``model_arguments`` adds the
    ``--model``/``--device`` pair every command shares."""
    e = sub.add_parser(
        "explore",
        help="the interactive explorer in the browser (needs jacobian-scopes[app])",
        description="Starts the explorer app on a local web server: type a prompt, click a "
        "token, pick a target, see the scopes. It listens on 127.0.0.1 (this machine only) "
        "unless --host says otherwise.",
    )
    model_arguments(e)
    e.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help="address to listen on (default: %(default)s; 0.0.0.0 opens it to the network)",
    )
    e.add_argument(
        "--port", type=port_number, default=None, help="port (default: the first free from 7860)"
    )
    e.add_argument(
        "--max-tokens", type=int, default=None, metavar="N", help="cap prompts at N tokens"
    )
    return e


def run_explore(args: argparse.Namespace, console: Any) -> int:
    """The ``explore`` command: check everything cheap first, then load the model and serve."""
    from rich.text import Text

    from jacobian_scopes.models import load_model

    try:
        gradio()
    except ImportError as exc:
        raise ScopeInputError(str(exc)) from exc
    if args.max_tokens is not None and args.max_tokens < 1:
        raise ScopeInputError("--max-tokens must be at least 1")
    if not is_loopback(args.host):
        console.print(Text("warning: " + public_warning(args.host), style="bold yellow"))
    check_port(args.host, args.port)
    what = "SmolLM2-135M-Instruct" if args.model == "default" else args.model
    started = time.perf_counter()
    with console.status(f"loading {what}"):
        model = load_model(args.model, args.device)
    console.print(f"loaded {what} in {time.perf_counter() - started:.1f} s", style="dim")
    app = build_app(model, max_tokens=args.max_tokens)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the public-host warning was printed above
        launch(app, host=args.host, port=args.port, inline=False, block=True)
    return 0


# The rest (theme, frame, the command-line hooks) is this app's own machinery.
__all__ = ["build_app", "explore", "is_loopback"]

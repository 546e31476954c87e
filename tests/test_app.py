"""The explorer: its computations against the library, the app in a real browser (headless
Debian Chromium driven by Playwright), the ``attribute`` API endpoint through
``gradio_client``, and the ``explore`` command's start-up and bad arguments.

Browser and client tests skip, with the reason, where Gradio, Playwright or Chromium is
missing; the rest run everywhere.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import helpers
import jacobian_scopes as js
from jacobian_scopes.errors import ScopeInputError
from jacobian_scopes.explorer import Explorer, Request, compute, model_lock, parse_token_text
from jacobian_scopes.viz.tokens import format_value, show_token

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "w1 w2 w3 w4 w5"
# Hostile token text (no whitespace: the word-level test tokenizer keeps each one whole).
HOSTILE = [
    "<img/src=x/onerror=window.__pwned=1>",
    "</script><script>window.__pwned=2</script>",
    "<svg/onload=window.__pwned=3>",
    '"><img/src=x/onerror=window.__pwned=4>',
    "<b>bold</b>",
    "&amp;",
]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return (
        helpers.make_model("bridge", "llama")
        if helpers.has_bridge()
        else helpers.make_model("hooked", "llama")
    )


def hostile_tokenizer():
    return helpers.make_tokenizer(extra=HOSTILE, name="tiny-hostile")


@pytest.fixture(scope="module")
def hostile_model():
    if not helpers.has_bridge():
        pytest.skip("needs the TransformerBridge")
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(
        "meta-llama/Llama-3.2-1B", hf_model=helpers.make_hf("llama"), tokenizer=hostile_tokenizer()
    )


# ---------------------------------------------------------------- without Gradio
def test_importing_the_package_or_the_app_module_never_imports_gradio():
    code = (
        "import sys, jacobian_scopes, jacobian_scopes.app, jacobian_scopes.cli;"
        "jacobian_scopes.cli.build_parser();"
        "assert 'gradio' not in sys.modules, 'gradio was imported'"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr


def test_without_gradio_the_error_says_how_to_install_it(monkeypatch, model):
    from jacobian_scopes import app

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio now raises ImportError
    with pytest.raises(ImportError, match=re.escape('pip install "jacobian-scopes[app]"')):
        app.build_app(model)


def test_the_explorer_gives_the_library_s_numbers(model):
    ex = Explorer(model)
    assert ex.tokens(PROMPT) == model.to_str_tokens(PROMPT)
    cases = [
        (
            Request(PROMPT, target="w7", position=3),
            js.semantic_scope(model, PROMPT, "w7", position=3),
        ),
        (
            Request(PROMPT, target="w7", foil="w9", mode="logprob"),
            js.semantic_scope(model, PROMPT, "w7", foil="w9", mode="logprob"),
        ),
        (
            Request(PROMPT, scope="temperature", position=2),
            js.temperature_scope(model, PROMPT, position=2),
        ),
        (
            Request(PROMPT, scope="fisher", method="exact"),
            js.fisher_scope(model, PROMPT, method="exact"),
        ),
    ]
    for request, expected in cases:
        got = ex.attribute(request)
        assert torch.equal(got.scores, expected.scores), request
        assert got.position == expected.position and got.target == expected.target


def test_without_a_target_semantic_explains_the_top_prediction(model):
    ex = Explorer(model)
    top = ex.predictions(PROMPT, 2)
    assert len(top) == 10 and top[0].prob >= top[1].prob
    got = ex.attribute(Request(PROMPT, position=2))
    assert got.target.ids == [top[0].token_id]
    assert torch.equal(
        got.scores, js.semantic_scope(model, PROMPT, top[0].token_id, position=2).scores
    )


def test_a_run_steps_through_scope_map_attention_and_pages(model):
    steps = list(compute(Explorer(model), Request(PROMPT, target="w3")))
    assert [s for s, _ in steps][-1] == "done"
    views = steps[-1][1]
    assert views.layered.scores.shape == (helpers.N_LAYERS, views.result.n_tokens)
    assert set(views.pages) == {"tokens", "layers", "attention", "page"}
    assert all(page.startswith("<!DOCTYPE html>") for page in views.pages.values())
    no_extras = list(compute(Explorer(model), Request(PROMPT), layers=False, attention=False))
    assert set(no_extras[-1][1].pages) == {"tokens", "page"}


def test_prompts_are_capped_at_the_context_before_anything_runs(model, monkeypatch):
    ex = Explorer(model)
    assert ex.max_tokens == helpers.N_CTX
    long = " ".join(["w1"] * helpers.N_CTX)  # + BOS: one token too many
    calls = []
    monkeypatch.setattr(js.scopes, "semantic_scope", lambda *a, **k: calls.append(a))
    with pytest.raises(ScopeInputError, match="more than the model's context of 64 tokens"):
        ex.attribute(Request(long, target="w1"))
    with pytest.raises(ScopeInputError, match="far more than"):
        ex.tokens("w1 " * 10_000)
    with pytest.raises(ScopeInputError, match="this app's limit of 3 tokens"):
        Explorer(model, max_tokens=3).tokens(PROMPT)
    with pytest.raises(ScopeInputError, match="empty"):
        ex.tokens("")
    assert calls == []


def test_bad_requests_are_refused_clearly(model):
    ex = Explorer(model)
    for request, match in [
        (Request(PROMPT, scope="sideways"), "scope must be one of"),
        (Request(PROMPT, scope="fisher", target="w1"), "semantic scope only"),
        (Request(PROMPT, mode="prob"), "mode must be"),
        (Request(PROMPT, scope="fisher", method="fast"), "method must be"),
        (Request(PROMPT, position=99), "out of range|outside"),
    ]:
        with pytest.raises(ScopeInputError, match=match):
            ex.attribute(request)


def test_typed_targets_lose_their_quotes_only():
    assert parse_token_text("' Paris'") == " Paris"
    assert parse_token_text('"x"') == "x"
    assert parse_token_text("'x") == "'x"
    assert parse_token_text("  ") is None and parse_token_text(None) is None


def test_one_lock_per_model_held_around_every_library_call(model, monkeypatch):
    ex, other = Explorer(model), Explorer(model)
    assert ex.lock is other.lock is model_lock(model)
    assert (
        model_lock(helpers.make_model("hooked" if helpers.has_hooked() else "bridge", "gpt2"))
        is not ex.lock
    )
    held = []
    real = js.scopes.semantic_scope

    def spy(*args, **kwargs):
        # RLock._is_owned: whether this thread holds it (threading has no public spelling).
        held.append(ex.lock._is_owned())
        return real(*args, **kwargs)

    monkeypatch.setattr(js.scopes, "semantic_scope", spy)
    ex.attribute(Request(PROMPT, target="w2"))
    assert held == [True]


def test_two_threads_on_one_model_get_their_own_results(model):
    # Hooks live on the model's shared hook points: without the lock, the two threads'
    # captures mix (wrong scores or an exception).
    prompts = [PROMPT, "w9 w8 w7 w6 w5 w4 w3 w2 w1"]
    expected = [js.semantic_scope(model, p, "w3").scores for p in prompts]
    ex = Explorer(model)
    errors: list[BaseException] = []
    wrong: list[str] = []

    def work(i: int) -> None:
        try:
            for _ in range(15):
                got = ex.attribute(Request(prompts[i], target="w3")).scores
                if not torch.equal(got, expected[i]):
                    wrong.append(prompts[i])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and wrong == []


# ------------------------------------------------------------------- with Gradio
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def served(model, **kwargs):
    pytest.importorskip("gradio")
    from jacobian_scopes.app import build_app, launch

    app = build_app(model, **kwargs)
    url = launch(app, port=free_port(), block=False, inline=False, quiet=True)
    try:
        yield app, url
    finally:
        app.close()


@pytest.fixture(scope="module")
def server(model):
    with served(model) as (app, url):
        yield app, url


@contextlib.contextmanager
def browser_page(url):
    """A fresh page on ``url`` recording every request, console message and dialog."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    from viz_support import FLAGS, chromium_path

    exe = chromium_path()
    if exe is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=exe, headless=True, args=[f for f in FLAGS if f != "--headless"]
        )
        try:
            context = browser.new_context(
                viewport={"width": 1280, "height": 1000}, accept_downloads=True
            )
            page = context.new_page()
            page.requests = []
            page.console_messages = []
            page.dialogs = []
            context.on("request", lambda r: page.requests.append(r.url))
            page.on("console", lambda m: page.console_messages.append((m.type, m.text)))
            page.on("pageerror", lambda e: page.console_messages.append(("pageerror", str(e))))
            page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
            context.add_init_script(
                "for (const f of ['alert', 'confirm', 'prompt'])"
                " window[f] = () => { window.__pwned = f; };"
            )
            page.goto(url, wait_until="load")
            page.wait_for_selector("#jsv-tokens .token", timeout=30_000)
            yield page
        finally:
            browser.close()


def type_prompt(page, text: str) -> None:
    page.locator("#jsv-prompt textarea").fill(text)


def wait_status(page, pattern: str, timeout: float = 30_000) -> str:
    page.wait_for_function(
        "(p) => new RegExp(p).test(document.querySelector('#jsv-status').innerText)",
        arg=pattern,
        timeout=timeout,
    )
    return page.locator("#jsv-status").inner_text()


def view_frame(page, name: str):
    """The iframe of one view tab, once its widgets (if any) have drawn."""
    # A dispatched click: Gradio's tab bar lays an element over its buttons.
    page.get_by_role("tab", name=TAB_TITLES[name]).dispatch_event("click")
    handle = page.locator(f"#jsv-view-{name} iframe").element_handle(timeout=30_000)
    frame = handle.content_frame()
    frame.wait_for_function(
        "() => [...document.querySelectorAll('.jsv-widget')].every(w => w.childElementCount > 0)",
        timeout=30_000,
    )
    return frame


TAB_TITLES = {
    "tokens": "Coloured tokens",
    "layers": "Layer × token",
    "attention": "Beside attention",
}
TIPS = "() => [...document.querySelectorAll('js-tip')].map(e => e.textContent)"


def shown_scores(frame) -> list[str]:
    """Each token's score as its hover text shows it (CircuitsVis writes spaces as U+00A0)."""
    tips = [t.replace("\xa0", " ") for t in frame.evaluate(TIPS)]
    return [re.search(r"· score (\S+) ·", t).group(1) for t in tips]


def download(page, selector: str) -> Path:
    """Press a download button as a person would and return the file it saved."""
    from playwright.sync_api import expect

    button = page.locator(selector)
    expect(button).to_be_enabled()
    # Scrolled first, on its own: below a tall view, Chromium can send the click that
    # follows a scroll within the same action into the iframe that was under the pointer.
    button.scroll_into_view_if_needed()
    page.wait_for_timeout(100)
    with page.expect_download() as info:
        button.click()
    return Path(info.value.path())


def pwned(page) -> list:
    return [
        f.evaluate("() => window.__pwned === undefined ? null : String(window.__pwned)")
        for f in page.frames
    ]


def only_local(page, url: str) -> list[str]:
    """Requests that went anywhere but the app's own server."""
    return [r for r in page.requests if not r.startswith(url.rstrip("/") + "/")]


def test_browser_prompt_click_target_scores_equal_the_library(server, model, tmp_path):
    app, url = server
    with browser_page(url) as page:
        type_prompt(page, PROMPT)
        wait_status(page, r"^6 tokens")
        assert page.locator("#jsv-tokens .token").all_inner_texts() == model.to_str_tokens(PROMPT)
        # Click the token 'w2' (position 2): the prediction after it is explained.
        page.locator("#jsv-tokens .token").nth(2).click()
        wait_status(page, r"after position 2 \('w2'\)")
        # The target list holds the model's top predictions at position 2; take the second.
        top = app.explorer.predictions(PROMPT, 2)
        page.locator("#jsv-target input").click()
        options = page.get_by_role("option")
        assert f"{show_token(top[0].token)} · {top[0].prob:.1%}" in options.nth(0).inner_text()
        options.nth(1).click()
        page.locator("#jsv-run").click()
        wait_status(page, r"top tokens")
        expected = js.semantic_scope(model, PROMPT, top[1].token_id, position=2)
        shown = shown_scores(view_frame(page, "tokens"))
        assert shown == [format_value(float(s)) for s in expected.scores]
        assert f"→{top[1].token}" in view_frame(page, "tokens").inner_text("body")
        # The layer × token map and the attention view are the library's.
        layers = view_frame(page, "layers")
        assert layers.locator("table.jsv-map tbody tr").count() == helpers.N_LAYERS
        attention = view_frame(page, "attention")
        assert attention.locator("[data-component=AttentionHeads]").count() == 1
        # Downloads: the result as JSON (loads back exactly) and the whole page.
        saved = js.load(download(page, "#jsv-json"))
        assert torch.equal(saved.scores, expected.scores) and saved.position == 2
        document = Path(download(page, "#jsv-html")).read_text(encoding="utf-8")
        assert document.startswith("<!DOCTYPE html>") and "Layer × token" in document
        page.screenshot(path=str(tmp_path / "explorer.png"), full_page=True)
        assert pwned(page) == [None] * len(page.frames)
        assert only_local(page, url) == []
        errors = [m for m in page.console_messages if m[0] in ("error", "pageerror")]
        assert errors == []


def test_browser_other_scopes_and_a_typed_target(server, model):
    _, url = server
    with browser_page(url) as page:
        type_prompt(page, PROMPT)
        wait_status(page, r"^6 tokens")
        target = page.locator("#jsv-target input")
        target.fill("'w11'")
        target.press("Enter")
        page.locator("#jsv-foil textarea, #jsv-foil input").first.fill("w12")
        page.locator("#jsv-run").click()
        wait_status(page, r"logit difference 'w11' − 'w12'")
        expected = js.semantic_scope(model, PROMPT, "w11", foil="w12")
        assert shown_scores(view_frame(page, "tokens")) == [
            format_value(float(s)) for s in expected.scores
        ]
        page.get_by_label("Fisher").check()
        page.locator("#jsv-method").get_by_label("exact").check()
        assert not page.locator("#jsv-target").is_visible()
        page.locator("#jsv-run").click()
        wait_status(page, r"Fisher · exact")
        expected = js.fisher_scope(model, PROMPT, method="exact")
        assert shown_scores(view_frame(page, "tokens")) == [
            format_value(float(s)) for s in expected.scores
        ]
        assert only_local(page, url) == []


def test_browser_a_prompt_over_the_context_runs_nothing(server, monkeypatch):
    _, url = server
    calls = []
    monkeypatch.setattr(js.scopes, "semantic_scope", lambda *a, **k: calls.append(a))
    with browser_page(url) as page:
        type_prompt(page, " ".join(["w1"] * 80))
        text = wait_status(page, "context")
        assert "81 tokens, more than the model's context of 64 tokens" in text
        page.locator("#jsv-run").click()
        wait_status(page, "context")
        page.wait_for_timeout(500)
        assert calls == []
        assert page.locator("#jsv-view-tokens iframe").count() == 0


def test_browser_hostile_tokens_are_inert_in_every_view(hostile_model):
    prompt = " ".join(["w1", *HOSTILE, "w2"])
    with served(hostile_model) as (_, url), browser_page(url) as page:
        type_prompt(page, prompt)
        wait_status(page, rf"^{len(HOSTILE) + 3} tokens")
        shown = page.locator("#jsv-tokens .token").all_inner_texts()
        assert shown == ["<bos>", "w1", *HOSTILE, "w2"]
        # Explain the prediction after a hostile token: the status line quotes it.
        page.locator("#jsv-tokens .token").nth(2).click()
        wait_status(page, "after position 2")
        assert HOSTILE[0] in page.locator("#jsv-status").inner_text()
        # Hostile text in the target list and the foil too.
        target = page.locator("#jsv-target input")
        target.fill(HOSTILE[0])
        target.press("Enter")
        page.locator("#jsv-run").click()
        wait_status(page, r"top tokens")
        tokens = view_frame(page, "tokens")
        for bad in HOSTILE:
            assert bad in tokens.inner_text("body").replace("\xa0", " ")
        assert tokens.locator("img, svg:not(.jsv-figure svg), b").count() == 0
        view_frame(page, "layers")
        view_frame(page, "attention")
        page.wait_for_timeout(300)
        assert pwned(page) == [None] * len(page.frames)
        assert page.dialogs == []
        assert page.locator("#jsv-tokens img, #jsv-status img, #jsv-tokens b").count() == 0
        assert only_local(page, url) == []


def test_browser_progress_and_cancel(model):
    release = threading.Event()
    with served(model) as (app, url), browser_page(url) as page:
        slow = app.explorer.beside_attention

        def blocked(result, k=4):
            release.wait(20)
            return slow(result, k)

        app.explorer.beside_attention = blocked
        try:
            type_prompt(page, PROMPT)
            wait_status(page, r"^6 tokens")
            page.locator("#jsv-run").click()
            wait_status(page, r"running: attention beside the scope … \(step 3 of 4\)")
            page.locator("#jsv-cancel").click()
            wait_status(page, "^cancelled$")
        finally:
            release.set()
        page.wait_for_timeout(1000)
        # Read, not awaited: a failure shows what covered "cancelled" (Gradio's cancel of
        # a run mid-step once left "Error" on its outputs).
        assert page.locator("#jsv-status").inner_text() == "cancelled"
        assert "Error" not in page.locator("body").inner_text()
        assert page.locator("#jsv-view-tokens iframe").count() == 0
        # The app still works afterwards.
        page.locator("#jsv-run").click()
        wait_status(page, "top tokens")


def test_the_attribute_endpoint_answers_with_the_library_s_numbers(server, model):
    client_mod = pytest.importorskip("gradio_client")
    _, url = server
    client = client_mod.Client(url, verbose=False)
    api = client.view_api(print_info=False, return_format="dict")
    assert "/attribute" in api["named_endpoints"]
    assert [p["parameter_name"] for p in api["named_endpoints"]["/attribute"]["parameters"]] == [
        "prompt",
        "scope",
        "position",
        "target",
        "foil",
        "mode",
        "method",
    ]
    got = client.predict(PROMPT, "semantic", 3, "w7", "", "logit", "sketch", api_name="/attribute")
    expected = js.semantic_scope(model, PROMPT, "w7", position=3)
    assert got["scores"] == expected.scores.tolist()
    assert got["tokens"] == expected.str_tokens and got["position"] == 3
    assert got["target"]["ids"] == expected.target.ids
    got = client.predict(prompt=PROMPT, scope="temperature", position=-1, api_name="/attribute")
    assert got["scores"] == js.temperature_scope(model, PROMPT).scores.tolist()
    got = client.predict(prompt=PROMPT, scope="fisher", method="principal", api_name="/attribute")
    assert got["scores"] == js.fisher_scope(model, PROMPT, method="principal").scores.tolist()
    with pytest.raises(Exception, match="more than the model's context"):
        client.predict(prompt=" ".join(["w1"] * 80), api_name="/attribute")
    # The UI's own events are not part of the documented API.
    assert set(api["named_endpoints"]) == {"/attribute"}


# --------------------------------------------------------------------------- the CLI
def cli(capsys, *args: str) -> tuple[int, str, str]:
    """``jacobian-scopes explore ARGS`` in this process: (status, stdout, stderr)."""
    from jacobian_scopes.cli import main

    try:
        code = main(["explore", *args])
    except SystemExit as exc:  # argparse
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--port", "abc"], "not a port number: 'abc'"),
        (["--port", "70000"], "between 1 and 65535"),
        (["--port", "0"], "between 1 and 65535"),
        (["--host"], "expected one argument"),
        (["--max-tokens", "0"], "--max-tokens must be at least 1"),
        (["--sideways"], "unrecognized arguments"),
    ],
)
def test_cli_bad_arguments_exit_with_status_2(capsys, args, message):
    pytest.importorskip("gradio")
    code, out, err = cli(capsys, *args)
    assert code == 2
    assert message in err + out


def test_cli_a_port_in_use_fails_before_loading_a_model(capsys, monkeypatch):
    pytest.importorskip("gradio")
    import jacobian_scopes.models

    loads = []
    monkeypatch.setattr(jacobian_scopes.models, "load_model", lambda *a: loads.append(a))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, _, err = cli(capsys, "--port", str(port), "--model", "/no/such/model")
    assert code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in err.replace("\n", " ")
    assert loads == []


def test_cli_a_public_host_is_announced(capsys):
    pytest.importorskip("gradio")
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        code, out, _ = cli(capsys, "--host", "0.0.0.0", "--port", str(s.getsockname()[1]))
    assert "warning: the explorer listens on 0.0.0.0" in out.replace("\n", " ")
    assert code == 2


def test_cli_without_gradio_says_how_to_install_it(tmp_path):
    blocker = tmp_path / "gradio.py"
    blocker.write_text("raise ImportError('no gradio here')\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT / 'src'}"}
    out = subprocess.run(
        [sys.executable, "-m", "jacobian_scopes", "explore"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 2
    assert 'pip install "jacobian-scopes[app]"' in out.stderr


def test_cli_starts_a_local_server_for_a_local_model(tmp_path):
    pytest.importorskip("gradio")
    import urllib.request

    model_dir = tmp_path / "tiny"
    helpers.make_hf("llama").save_pretrained(model_dir)
    helpers.make_tokenizer().save_pretrained(model_dir)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jacobian_scopes",
            "explore",
            "--model",
            str(model_dir),
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        lines = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Running on local URL" in line:
                break
        url = f"http://127.0.0.1:{port}"
        assert any(url in line for line in lines), "".join(lines)
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.status == 200
            assert b"Jacobian Scopes explorer" in response.read()
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# ------------------------------------------------------------- a notebook, the network
NOTEBOOK_SETUP = """
import sys
sys.path[:0] = [{src!r}, {tests!r}]
import torch, helpers
import jacobian_scopes as js
torch.manual_seed(0)
model = helpers.make_model({kind!r}, "llama")
"""

NOTEBOOK_CHECK = """
import urllib.request
from gradio_client import Client
page = urllib.request.urlopen({url!r}, timeout=30).read().decode()
got = Client({url!r}, verbose=False).predict({prompt!r}, "semantic", 3, "w7", "", "logit",
                                             "sketch", api_name="/attribute")
print("title:", "Jacobian Scopes explorer" in page)
expected = js.semantic_scope(model, {prompt!r}, "w7", position=3).scores.tolist()
print("scores:", got["scores"] == expected)
"""


@pytest.mark.slow
def test_explore_in_a_live_notebook_shows_the_app_inline_and_returns(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("gradio_client")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    kind = "bridge" if helpers.has_bridge() else "hooked"
    root = Path(__file__).resolve().parents[1]
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            NOTEBOOK_SETUP.format(src=str(root / "src"), tests=str(root / "tests"), kind=kind)
        ),
        # No inline= or block=: a kernel is detected, so the app shows in the output and the
        # cell returns while the server keeps running.
        nbformat.v4.new_code_cell(f"app = js.explore(model, port={port})"),
        nbformat.v4.new_code_cell(NOTEBOOK_CHECK.format(url=url, prompt=PROMPT)),
        nbformat.v4.new_code_cell("app.close()"),
    ]
    client = nbclient.NotebookClient(
        nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    shown = [
        o["data"]["text/html"]
        for o in nb.cells[1].get("outputs", [])
        if "text/html" in o.get("data", {})
    ]
    assert len(shown) == 1 and "<iframe" in shown[0] and f":{port}/" in shown[0]
    printed = "".join(o.get("text", "") for o in nb.cells[2].get("outputs", []))
    assert printed.split() == ["title:", "True", "scores:", "True"]


def test_the_server_reaches_nothing_but_loopback(model, monkeypatch):
    # Analytics, version checks, share links, fonts: none may leave the machine. Every
    # connection or name lookup the server process makes while it starts, serves the page
    # and answers a run is recorded; only loopback ones go through.
    client_mod = pytest.importorskip("gradio_client")
    from jacobian_scopes.app import is_loopback

    outbound: list[str] = []
    connect, connect_ex, getaddrinfo = (
        socket.socket.connect,
        socket.socket.connect_ex,
        socket.getaddrinfo,
    )

    def host_of(address) -> str:
        return address[0] if isinstance(address, tuple) else str(address)

    def guarded(real):
        def call(sock, address):
            host = host_of(address)
            if sock.family in (socket.AF_INET, socket.AF_INET6) and not is_loopback(host):
                outbound.append(host)
                raise OSError("outbound connection refused by the test")
            return real(sock, address)

        return call

    def lookup(host, *args, **kwargs):
        if host is not None and not is_loopback(str(host)):
            outbound.append(str(host))
            raise socket.gaierror("name lookup refused by the test")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded(connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guarded(connect_ex))
    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    with served(model) as (_, url):
        client = client_mod.Client(url, verbose=False)
        got = client.predict(
            PROMPT, "semantic", 3, "w7", "", "logit", "sketch", api_name="/attribute"
        )
    assert got["scores"] == js.semantic_scope(model, PROMPT, "w7", position=3).scores.tolist()
    assert outbound == []


def test_browser_cancel_stops_its_own_queued_run_and_no_other_browser_s(model):
    release = threading.Event()
    with served(model) as (app, url), browser_page(url) as first:
        # A second browser context of the same Chromium: a session of its own.
        second = first.context.browser.new_context().new_page()
        second.goto(url, wait_until="load")
        second.wait_for_selector("#jsv-tokens .token", timeout=30_000)
        slow = app.explorer.beside_attention
        calls = []

        def blocked(result, k=4):
            calls.append(result.scope)
            release.wait(20)
            return slow(result, k)

        app.explorer.beside_attention = blocked
        try:
            for page in first, second:
                type_prompt(page, PROMPT)
                wait_status(page, r"^6 tokens")
            first.locator("#jsv-run").click()
            wait_status(first, "running: attention beside the scope")
            # One run at a time: the second browser's run waits in the queue.
            second.locator("#jsv-run").click()
            second.wait_for_timeout(500)
            second.locator("#jsv-cancel").click()
            wait_status(second, "^cancelled$")
        finally:
            release.set()
        wait_status(first, "top tokens")
        second.wait_for_timeout(1500)
        assert second.locator("#jsv-status").inner_text() == "cancelled"
        assert second.locator("#jsv-view-tokens iframe").count() == 0
        assert len(calls) == 1
        view_frame(first, "tokens")

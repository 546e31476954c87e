"""The explorer's start-up and latency on the default model (needs jacobian-scopes[app],
Playwright and Chromium).

* start-up: from running ``jacobian-scopes explore`` to the server's URL line, and to a
  usable page (a browser, already started, shows the prompt's tokens);
* latency of one Semantic scope: the library call, the same call through the app's
  ``attribute`` endpoint (gradio_client, same process), and a click on Attribute in the
  browser until the views are shown (tokens only, and with the map and attention).

    OMP_NUM_THREADS=1 python benchmarks/bench_explore.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time

PROMPT = "Tom loves Korean food. He grew up in the South and goes to Columbia. He is a"
TARGET = " liberal"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def browser(p):
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    return p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])


def startup(p) -> tuple[float, float]:
    b = browser(p)
    page = b.new_page()
    port = free_port()
    exe = shutil.which("jacobian-scopes") or sys.executable
    cmd = [exe] if exe.endswith("jacobian-scopes") else [exe, "-m", "jacobian_scopes"]
    started = time.perf_counter()
    proc = subprocess.Popen(
        [*cmd, "explore", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "Running on local URL" in line:
                break
        url_at = time.perf_counter() - started
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector("#jsv-tokens .token", timeout=120_000)
        usable_at = time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        b.close()
    return url_at, usable_at


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def latency(p, repeats: int) -> dict[str, float]:
    from gradio_client import Client

    import jacobian_scopes as js
    from jacobian_scopes.app import build_app, launch

    model = js.load_default_model()
    app = build_app(model)
    url = launch(app, port=free_port(), block=False, inline=False, quiet=True)
    out = {}
    try:
        out["library"] = median_time(lambda: js.semantic_scope(model, PROMPT, TARGET), repeats)
        client = Client(url, verbose=False)
        expected = js.semantic_scope(model, PROMPT, TARGET).scores.tolist()

        def endpoint():
            got = client.predict(
                PROMPT, "semantic", -1, TARGET, "", "logit", "sketch", api_name="/attribute"
            )
            assert got["scores"] == expected

        out["endpoint"] = median_time(endpoint, repeats)
        b = browser(p)
        page = b.new_page(viewport={"width": 1300, "height": 1000})
        page.goto(url)
        page.wait_for_selector("#jsv-tokens .token")
        page.wait_for_timeout(1000)
        target = page.locator("#jsv-target input")
        target.fill(f"'{TARGET}'")
        target.press("Enter")

        def status(pattern: str) -> None:
            page.wait_for_function(
                f"() => /{pattern}/.test(document.querySelector('#jsv-status').innerText)",
                timeout=120_000,
                polling=10,
            )

        def click():
            page.locator("#jsv-run").click()
            status("running:")
            status("top tokens")
            frame = page.locator("#jsv-view-tokens iframe").element_handle().content_frame()
            frame.wait_for_selector(".colored-tokens")

        out["browser, all views"] = median_time(click, repeats)
        page.get_by_label("layer × token map").uncheck()
        page.get_by_label("beside attention").uncheck()
        out["browser, coloured tokens only"] = median_time(click, repeats)
        b.close()
    finally:
        app.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-startup", action="store_true")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        if not args.skip_startup:
            url_at, usable_at = startup(p)
            print(
                f"start-up: URL printed after {url_at:.1f} s, usable page after {usable_at:.1f} s"
            )
        for what, seconds in latency(p, args.repeats).items():
            print(f"one Semantic scope, {what}: {seconds * 1000:.0f} ms (median of {args.repeats})")


if __name__ == "__main__":
    main()

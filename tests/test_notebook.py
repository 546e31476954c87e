"""Views in a real executed notebook: the CircuitsVis bundle goes out once per kernel, so ten
views stay small, and every view still renders in the ``nbconvert --to html`` export."""

from __future__ import annotations

from pathlib import Path

import pytest

from jacobian_scopes.viz.page import MISSING_BUNDLE
from viz_support import artifact, load_in_browser

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
nbconvert = pytest.importorskip("nbconvert")

ROOT = Path(__file__).resolve().parents[1]
N_VIEWS = 10

SETUP = f"""
import sys
sys.path[:0] = [{str(ROOT / "src")!r}, {str(ROOT / "tests")!r}]
import torch
import jacobian_scopes as js
from viz_support import fake_result, hostile_result
"""

VIEW = """
r = hostile_result() if {i} % 2 else fake_result(
    ["<bos>", "a", " b", " c"], torch.arange(12.0).reshape(3, 4) + {i},
    axes=("source", "token"), source_labels=[f"blocks.{{l}}.hook_resid_pre" for l in range(3)])
r
"""


@pytest.mark.slow
def test_ten_views_in_a_notebook_stay_small_and_render_in_the_html_export(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(SETUP)] + [
        nbformat.v4.new_code_cell(VIEW.format(i=i)) for i in range(N_VIEWS)
    ]
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    path = tmp_path / "views.ipynb"
    nbformat.write(nb, path)
    size = path.stat().st_size
    html_outputs = [
        o["data"]["text/html"]
        for c in nb.cells[1:]
        for o in c.get("outputs", [])
        if "text/html" in o.get("data", {})
    ]
    assert len(html_outputs) == N_VIEWS
    carriers = [h for h in html_outputs if "window.CircuitsVis = CircuitsVis" in h]
    assert len(carriers) == 1 and html_outputs[0] is carriers[0]
    assert size <= 2_000_000, f"{size / 1e6:.2f} MB for {N_VIEWS} views"

    body, _ = nbconvert.HTMLExporter().from_notebook_node(nb)
    export = tmp_path / "views.html"
    export.write_text(body, encoding="utf-8")
    print(f"{N_VIEWS} views: notebook {size / 1e6:.2f} MB, HTML export {len(body) / 1e6:.2f} MB")
    loaded = load_in_browser(export, screenshot=artifact("viz_notebook_export.png"))
    assert loaded.pwned is None
    assert loaded.widgets and all(w["tokens"] > 0 for w in loaded.widgets)
    # The views after the first carry only the fallback note, never shown when it renders.
    assert MISSING_BUNDLE not in " ".join(
        loaded.texts.get(w["id"], [""])[0] for w in loaded.widgets
    )

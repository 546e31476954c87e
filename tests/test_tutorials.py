"""The tutorials run top to bottom on the embedded model, and are committed without outputs.

Each notebook under ``tutorials/`` is executed in a fresh kernel of this interpreter; the
executed copy is written to ``build/tutorials/`` (git-ignored), which is what the
documentation site shows. A cell that raises fails the test with the cell's traceback.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = sorted((ROOT / "tutorials").glob("*.ipynb"))
BUILD = ROOT / "build" / "tutorials"
# Per notebook; each takes well under a minute on one idle CPU thread.
TIMEOUT_S = 600


def test_there_are_tutorials():
    assert len(TUTORIALS) >= 5, [p.name for p in TUTORIALS]


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_committed_without_outputs(path: Path):
    """Outputs and execution counts make diffs unreadable: the executed copies live in build/."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    dirty = [
        i
        for i, cell in enumerate(nb["cells"])
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count"))
    ]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs; clear them before committing"


def _kernel_path(tmp: Path) -> Path:
    """A private kernel spec whose kernel is this interpreter (nothing registered globally)."""
    spec = tmp / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "Python 3", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    return tmp


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("JUPYTER_PATH", str(_kernel_path(tmp_path)))
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    # Progress bars would fill the executed copies (the docs pages) with stderr noise.
    # tqdm.auto warns at import that ipywidgets is missing, with a path of this machine.
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("PYTHONWARNINGS", "ignore:IProgress not found")
    # The notebooks' own files (reports/...) land beside the executed copies.
    BUILD.mkdir(parents=True, exist_ok=True)
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(BUILD)}}
    )
    start = time.perf_counter()
    try:
        client.execute()
    finally:
        # The partly executed copy shows where it stopped.
        nbformat.write(nb, BUILD / path.name)
    print(f"{path.name}: {time.perf_counter() - start:.1f} s")

"""The README's Python examples run as written (on the real model, offline)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.real

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
NEEDS_INTERNET = ('boot_transformers("gpt2")', "from_pretrained")


def python_blocks(page: Path) -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    return [b for b in blocks if not any(marker in b for marker in NEEDS_INTERNET)]


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_readme_and_docs_examples_run(page, smollm, monkeypatch, tmp_path):
    import jacobian_scopes as js

    monkeypatch.chdir(tmp_path)  # the examples save figures and pages

    monkeypatch.setattr(js, "load_default_model", lambda *a, **k: smollm)
    d = smollm.cfg.d_model
    namespace = {
        "direction": torch.randn(d),  # stand-ins for the user's own vectors
        "sae_feature": torch.randn(d),
    }
    blocks = python_blocks(page)
    if page == README:
        assert len(blocks) >= 2
    for block in blocks:
        exec(compile(block, str(page), "exec"), namespace)

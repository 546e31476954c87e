"""The README's Python examples run as written (on the real model, offline)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.real

README = Path(__file__).resolve().parents[1] / "README.md"
NEEDS_INTERNET = ('boot_transformers("gpt2")', "from_pretrained")


def python_blocks() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    return [b for b in blocks if not any(marker in b for marker in NEEDS_INTERNET)]


def test_readme_examples_run(smollm, monkeypatch, tmp_path):
    import jacobian_scopes as js

    monkeypatch.chdir(tmp_path)  # the examples save figures and pages

    monkeypatch.setattr(js, "load_default_model", lambda *a, **k: smollm)
    d = smollm.cfg.d_model
    namespace = {
        "direction": torch.randn(d),  # stand-ins for the user's own vectors
        "sae_feature": torch.randn(d),
    }
    blocks = python_blocks()
    assert len(blocks) >= 2
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)

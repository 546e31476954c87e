"""Every docstring example of every module of the package runs, as shown, and prints what it says.

Each module is one test case. Its examples run in an empty namespace (an example imports
what it uses and builds its own model and prompt), so that a user can paste it as it stands.
Modules whose examples load the default model run against the real SmolLM2 (the session
fixture, handed out by ``load_default_model`` so that each example does not reload it).
Every module must have at least one example: a runner that finds none passes nothing.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re

import pytest

import jacobian_scopes

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

MODULES = [
    "jacobian_scopes",
    *sorted(
        info.name
        for info in pkgutil.walk_packages(jacobian_scopes.__path__, "jacobian_scopes.")
        if info.name.rsplit(".", 1)[-1] != "__main__"
    ),
]


def _examples(module) -> list[doctest.DocTest]:
    # globs={}: no name of the module leaks into its examples.
    return [t for t in doctest.DocTestFinder().find(module, globs={}) if t.examples]


# The command line loads the default model itself (``--model default``).
USES_MODEL = re.compile(r"load_(default_)?model\(|\bmain\(\[")


def _needs_model(name: str) -> bool:
    module = importlib.import_module(name)
    return any(
        USES_MODEL.search(example.source)
        for test in _examples(module)
        for example in test.examples
        if not example.options.get(doctest.SKIP)
    )


REAL = [name for name in MODULES if _needs_model(name)]
OFFLINE = [name for name in MODULES if name not in REAL]


def _run(tests: list[doctest.DocTest], name: str) -> None:
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted >= 1, f"{name} has no docstring example"
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed"


def test_modules_found():
    # The walk must reach the subpackages, or a whole subpackage would go untested.
    assert {"jacobian_scopes.eval.evaluate", "jacobian_scopes.viz.maps"} <= set(MODULES)
    # The patching package's modules (one concern each) are walked like any other.
    patching = {"activation", "attribution", "comparison", "prepare", "result"}
    assert {f"jacobian_scopes.patching.{m}" for m in patching} <= set(REAL)
    assert "jacobian_scopes.viz.patching" in REAL
    assert "jacobian_scopes.__main__" not in MODULES
    # Examples that load the model must get the session's model, not load their own.
    assert {"jacobian_scopes.cli", "jacobian_scopes.models", "jacobian_scopes.scopes"} <= set(REAL)
    assert "jacobian_scopes.eval.stats" in OFFLINE


@pytest.mark.parametrize("name", OFFLINE)
def test_docstring_examples(name, tmp_path, monkeypatch):
    tests = _examples(importlib.import_module(name))
    monkeypatch.chdir(tmp_path)
    _run(tests, name)


@pytest.mark.real
@pytest.mark.parametrize("name", REAL)
def test_docstring_examples_on_the_real_model(name, smollm, tmp_path, monkeypatch):
    import jacobian_scopes.default_model

    # Found before the patch below, which would hide load_default_model's own docstring.
    tests = _examples(importlib.import_module(name))

    def load_default_model(*args, **kwargs):
        return smollm

    monkeypatch.setattr(jacobian_scopes, "load_default_model", load_default_model)
    monkeypatch.setattr(jacobian_scopes.default_model, "load_default_model", load_default_model)
    monkeypatch.chdir(tmp_path)
    _run(tests, name)

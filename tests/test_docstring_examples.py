"""Every docstring example of every module of the package runs, as shown, and prints what it says.

Each module is one test case. Its examples run in an empty namespace (an example imports
what it uses and builds its own model and prompt), so that a user can paste it as it stands.
Modules whose examples load the default model run against the real SmolLM2 (the session
fixture, handed out by ``load_default_model`` so that each example does not reload it).
Every module must have at least one example: a runner that finds none passes nothing.

Below, the coverage: every public class and function of every public module has an example
of its own, and every public module has a page in the API reference (docs/reference).
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import pathlib
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


# ------------------------------------------------------------------ every public name
# The public modules: the package, the modules its reference pages render, and the
# submodules of ``eval`` and ``viz``. The rest (adapter, call, batching, ...) is machinery.
PUBLIC_MODULES = [
    "jacobian_scopes",
    "jacobian_scopes.app",
    "jacobian_scopes.attention",
    "jacobian_scopes.checkpointing",
    "jacobian_scopes.engine",
    "jacobian_scopes.errors",
    "jacobian_scopes.explorer",
    "jacobian_scopes.generation",
    "jacobian_scopes.interrupts",
    "jacobian_scopes.io",
    "jacobian_scopes.options",
    "jacobian_scopes.patching",
    "jacobian_scopes.probe",
    "jacobian_scopes.results",
    "jacobian_scopes.sdpa",
    "jacobian_scopes.text",
    *(name for name in MODULES if name.startswith(("jacobian_scopes.eval", "jacobian_scopes.viz"))),
]

# Modules whose names may still lack examples (none now; kept for a module in transition).
NOT_YET_CHECKED: set[str] = set()


def public_names(name: str) -> list[str]:
    """A module's public classes and functions: its ``__all__``, or else the names it
    defines that do not start with ``_`` (what its reference page renders)."""
    module = importlib.import_module(name)
    listed = getattr(module, "__all__", None)
    if listed is None:
        listed = [
            n
            for n, obj in vars(module).items()
            if not n.startswith("_") and getattr(obj, "__module__", None) == name
        ]
    return [
        n
        for n in listed
        if inspect.isclass(getattr(module, n)) or inspect.isroutine(getattr(module, n))
    ]


def _has_example(obj: object) -> bool:
    return any(line.lstrip().startswith(">>>") for line in (inspect.getdoc(obj) or "").splitlines())


def missing_examples(modules: list[str]) -> list[str]:
    return [
        f"{name}.{n}"
        for name in modules
        for n in public_names(name)
        if not _has_example(getattr(importlib.import_module(name), n))
    ]


def test_every_public_name_has_an_example():
    missing = missing_examples([m for m in PUBLIC_MODULES if m not in NOT_YET_CHECKED])
    assert not missing, "public names without a docstring example:\n  " + "\n  ".join(missing)


def test_the_coverage_check_reads_the_public_names():
    # A module's __all__ decides where it has one (the helpers viz.tokens shares with the
    # other views stay out); otherwise every name it defines without a leading "_" counts.
    engine = set(public_names("jacobian_scopes.engine"))
    assert {"Capture", "Pullback", "Trace"} <= engine
    assert "wants_checkpoint" in public_names("jacobian_scopes.checkpointing")
    assert "describe" not in public_names("jacobian_scopes.viz.tokens")
    assert "Paired" in public_names("jacobian_scopes.eval.stats")
    assert {"jacobian_scopes.eval.stats", "jacobian_scopes.viz.page"} <= set(PUBLIC_MODULES)


def _documented_modules() -> set[str]:
    pages = pathlib.Path(__file__).resolve().parents[1] / "docs" / "reference"
    return {
        match.group(1)
        for page in pages.glob("*.md")
        for match in re.finditer(r"^::: ([\w.]+)", page.read_text(encoding="utf-8"), re.M)
    }


def test_every_public_module_has_a_reference_page():
    missing = sorted(set(PUBLIC_MODULES) - _documented_modules())
    assert not missing, f"public modules without an API reference page: {missing}"

"""The runnable examples in the faithfulness modules' docstrings (those not marked SKIP)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "baselines",
    "evaluate",
    "methods",
    "passages",
    "perturb",
    "sanity",
    "stats",
    "store",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(f"jacobian_scopes.eval.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0

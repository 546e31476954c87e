"""Jacobian Scopes: which input tokens caused a prediction, and where in the network.

Gradient-based, token-level attributions (Liu et al., 2026) for TransformerLens models,
computed with hook functions in one forward and one backward pass.

The surface is small: four scopes and ``generate_scope``, their results, hook functions for
your own forward passes (``GradientProbe``, ``frozen``), saving and showing, and
``explore`` (an interactive app; needs ``jacobian-scopes[app]``). Further in:
``jacobian_scopes.eval`` (baselines and faithfulness metrics), ``jacobian_scopes.viz``
(every view), ``jacobian_scopes.engine`` (the machinery, for building your own scopes),
``jacobian_scopes.options`` (the options every scope shares).

Example:
    >>> import jacobian_scopes as js
    >>> model = js.load_default_model()
    >>> r = js.semantic_scope(model, "The capital of France is", " Paris")
    >>> [token for _, token, _ in r.top(3)]
    ['The', ' capital', ' France']
"""

import importlib
import importlib.metadata
from typing import Any

from jacobian_scopes.default_model import load_default_model
from jacobian_scopes.errors import JacobianScopesError
from jacobian_scopes.generation import generate_scope
from jacobian_scopes.guard import frozen
from jacobian_scopes.io import load, save
from jacobian_scopes.probe import GradientProbe
from jacobian_scopes.results import GenerationResult, ScopeResult, ScopeResults
from jacobian_scopes.scopes import fisher_scope, scope, semantic_scope, temperature_scope

try:
    __version__ = importlib.metadata.version("jacobian-scopes")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a source tree on sys.path
    __version__ = "0+unknown"

# The views pull in CircuitsVis and matplotlib, the evaluation pandas: they load on first
# use, so that ``import jacobian_scopes`` stays light.
_VIEWS = {"show": "viz.report", "save_html": "viz.report", "compare": "viz.compare"}
# The explorer needs Gradio (``pip install "jacobian-scopes[app]"``), imported when it runs.
_LAZY = {**_VIEWS, "explore": "app"}
_SUBPACKAGES = ("eval", "viz", "engine", "options", "errors")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f"jacobian_scopes.{_LAZY[name]}")
        return getattr(module, name)
    if name in _SUBPACKAGES:
        return importlib.import_module(f"jacobian_scopes.{name}")
    raise AttributeError(f"module 'jacobian_scopes' has no attribute {name!r}")


__all__ = [
    "GenerationResult",
    "GradientProbe",
    "JacobianScopesError",
    "ScopeResult",
    "ScopeResults",
    "compare",
    "explore",
    "fisher_scope",
    "frozen",
    "generate_scope",
    "load",
    "load_default_model",
    "save",
    "save_html",
    "scope",
    "semantic_scope",
    "show",
    "temperature_scope",
]

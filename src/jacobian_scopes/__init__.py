"""Jacobian Scopes: which input tokens caused a prediction, and where in the network.

Gradient-based, token-level attributions (Liu et al., 2026) for TransformerLens models,
computed with hook functions in one forward and one backward pass.

Example:
    >>> import jacobian_scopes as js
    >>> model = js.load_default_model()                                  # doctest: +SKIP
    >>> js.semantic_scope(model, "The capital of France is", " Paris")   # doctest: +SKIP
"""

import importlib
from typing import Any

from jacobian_scopes.default_model import load_default_model
from jacobian_scopes.engine import Capture, GradientTap, Trace
from jacobian_scopes.errors import NonFiniteError, ScopeInputError, TemperatureUndefinedError
from jacobian_scopes.guard import frozen
from jacobian_scopes.probe import GradientCache, GradientProbe
from jacobian_scopes.results import FisherDetails, Prediction, ScopeResult, Target
from jacobian_scopes.scopes import fisher_scope, scope, semantic_scope, temperature_scope
from jacobian_scopes.viz import (
    beside_attention,
    compare,
    layer_head_map,
    layer_token_map,
    plot_series,
    print_result,
    save_html,
    show,
)

__version__ = "0.1.0"

# The faithfulness modules pull in pandas; they load on first use
# (``js.baselines``, ``js.evaluate``), so ``import jacobian_scopes`` stays light.
_LAZY = ("baselines", "evaluate", "methods", "stats")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return importlib.import_module(f"jacobian_scopes.{name}")
    raise AttributeError(f"module 'jacobian_scopes' has no attribute {name!r}")


__all__ = [
    "Capture",
    "FisherDetails",
    "GradientCache",
    "GradientProbe",
    "GradientTap",
    "NonFiniteError",
    "Prediction",
    "ScopeInputError",
    "ScopeResult",
    "Target",
    "TemperatureUndefinedError",
    "Trace",
    "baselines",
    "beside_attention",
    "compare",
    "evaluate",
    "fisher_scope",
    "frozen",
    "layer_head_map",
    "layer_token_map",
    "load_default_model",
    "methods",
    "plot_series",
    "print_result",
    "save_html",
    "scope",
    "semantic_scope",
    "show",
    "stats",
    "temperature_scope",
]

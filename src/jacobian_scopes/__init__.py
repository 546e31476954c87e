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

from jacobian_scopes.batch import (
    fisher_scope_batch,
    scope_batch,
    semantic_scope_batch,
    temperature_scope_batch,
)
from jacobian_scopes.default_model import load_default_model
from jacobian_scopes.engine import Capture, GradientTap, Trace
from jacobian_scopes.errors import NonFiniteError, ScopeInputError, TemperatureUndefinedError
from jacobian_scopes.generation import GenerationResult, generate_scope
from jacobian_scopes.guard import frozen
from jacobian_scopes.io import ResultFileError, load, save
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
    "GenerationResult",
    "GradientCache",
    "GradientProbe",
    "GradientTap",
    "NonFiniteError",
    "Prediction",
    "ResultFileError",
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
    "fisher_scope_batch",
    "frozen",
    "generate_scope",
    "layer_head_map",
    "layer_token_map",
    "load",
    "load_default_model",
    "methods",
    "plot_series",
    "print_result",
    "save",
    "save_html",
    "scope",
    "scope_batch",
    "semantic_scope",
    "semantic_scope_batch",
    "show",
    "stats",
    "temperature_scope",
    "temperature_scope_batch",
]

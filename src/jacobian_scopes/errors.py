"""The exceptions jacobian_scopes raises on purpose.

Each is a subclass of a built-in exception, so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class ScopeInputError(ValueError):
    """A prompt, target, position, direction or option that cannot be used as given."""


class TemperatureUndefinedError(ValueError):
    """The Temperature scope is identically zero on this model (‖y‖ is input-independent)."""


class NonFiniteError(FloatingPointError):
    """NaN or inf appeared in the activations, logits or gradients of a scope call."""

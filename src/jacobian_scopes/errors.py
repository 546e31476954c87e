"""The exceptions jacobian_scopes raises on purpose.

They share one root, :class:`JacobianScopesError`, so ``except JacobianScopesError`` catches
every error the library raises deliberately (the command line prints any of them as one
line). Each also keeps a built-in base, so ``except ValueError`` keeps working.

Example:
    >>> import jacobian_scopes as js
    >>> issubclass(js.errors.ScopeInputError, (js.JacobianScopesError, ValueError))
    True
"""

from __future__ import annotations


class JacobianScopesError(Exception):
    """The root of every error that jacobian_scopes raises on purpose."""


class ScopeInputError(JacobianScopesError, ValueError):
    """A prompt, target, position, direction or option that cannot be used as given."""


class TemperatureUndefinedError(JacobianScopesError, ValueError):
    """The Temperature scope is identically zero on this model (‖y‖ is input-independent)."""


class NonFiniteError(JacobianScopesError, FloatingPointError):
    """NaN or inf appeared in the activations, logits or gradients of a scope call."""


class ResultFileError(ScopeInputError):
    """A result file that is not a valid jacobian-scopes JSON file (or too large)."""

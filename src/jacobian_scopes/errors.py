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
    """The root of every error that jacobian_scopes raises on purpose.

    Example:
        >>> import jacobian_scopes as js
        >>> model = js.load_default_model()
        >>> try:
        ...     js.semantic_scope(model, "The capital of France is", " Paris", position=40)
        ... except js.JacobianScopesError as error:
        ...     print(type(error).__name__, "-", error)
        ScopeInputError - position 40 is out of range for a prompt of 6 tokens (valid: -6 … 5)
    """


class ScopeInputError(JacobianScopesError, ValueError):
    """A prompt, target, position, direction or option that cannot be used as given.

    Example:
        >>> import jacobian_scopes as js
        >>> model = js.load_default_model()
        >>> js.semantic_scope(model, "The capital of France is", "")
        Traceback (most recent call last):
        ...
        jacobian_scopes.errors.ScopeInputError: ...
    """


class TemperatureUndefinedError(JacobianScopesError, ValueError):
    """The Temperature scope is identically zero on this model (‖y‖ is input-independent).

    Example:
        A final norm without a gain of its own (as after folding LayerNorm into the
        unembedding) makes ‖y‖ the same for every input; the scope says so:

        >>> import torch, jacobian_scopes as js
        >>> model = js.load_default_model()
        >>> gain, _ = js.engine.ModelAdapter(model).final_norm_affine()
        >>> with torch.no_grad():
        ...     saved = gain.clone()
        ...     try:
        ...         _ = gain.fill_(1.0)
        ...         js.temperature_scope(model, "The capital of France is")
        ...     except js.errors.TemperatureUndefinedError as error:
        ...         print(str(error)[:57])
        ...     finally:
        ...         _ = gain.copy_(saved)
        the Temperature scope is identically zero on this model:
    """


class NonFiniteError(JacobianScopesError, FloatingPointError):
    """NaN or inf appeared in the activations, logits or gradients of a scope call.

    Example:
        >>> import jacobian_scopes as js
        >>> model = js.load_default_model()
        >>> def overflow(resid, hook):
        ...     return resid * float("inf")
        >>> try:
        ...     js.semantic_scope(model, "The capital of France is", " Paris",
        ...                       fwd_hooks=[("blocks.2.hook_resid_post", overflow)])
        ... except js.errors.NonFiniteError as error:
        ...     print(str(error)[:45])
        the forward pass produced NaN or inf (in the
    """


class ResultFileError(ScopeInputError):
    """A result file that is not a valid jacobian-scopes JSON file (or too large).

    Example:
        >>> import json, jacobian_scopes as js
        >>> with open("notes.json", "w") as f:
        ...     json.dump({"scores": [1, 2]}, f)
        >>> js.load("notes.json")
        Traceback (most recent call last):
        ...
        jacobian_scopes.errors.ResultFileError: ...
    """

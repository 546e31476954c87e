"""Leave the user's model exactly as it was, whatever happens during a scope call.

A scope call freezes every parameter (so that the backward pass computes gradients with
respect to the inputs only and nothing accumulates in ``.grad``), switches every module
to eval mode (dropout would make attributions random), and adds temporary hooks. All of
it is undone on exit, on success and on exception alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


def _all_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    # nn.Module's own registry, not model.parameters(): TransformerBridge overrides the
    # latter, while the wrapped Hugging Face model is a registered submodule of the Bridge.
    return list(torch.nn.Module.parameters(model))


def hook_counts(model: Any) -> dict[str, tuple[int, int, int, int]]:
    """Per hook point: TransformerLens forward/backward handles and torch hook counts."""
    out = {}
    for name, hp in model.hook_dict.items():
        out[name] = (
            len(getattr(hp, "fwd_hooks", [])),
            len(getattr(hp, "bwd_hooks", [])),
            len(hp._forward_hooks),
            len(hp._backward_hooks),
        )
    return out


def model_fingerprint(model: torch.nn.Module) -> dict[str, Any]:
    """Everything a scope call promises not to change, in comparable form (for tests)."""
    params = _all_parameters(model)
    return {
        "requires_grad": [p.requires_grad for p in params],
        "grads": [None if p.grad is None else p.grad.clone() for p in params],
        "training": [m.training for m in model.modules()],
        "hooks": hook_counts(model),
        "torch_hooks": [
            (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for m in model.modules()
        ],
    }


@contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """Freeze parameters and select eval mode for the duration; restore both afterwards.

    Example:
        >>> import jacobian_scopes as js
        >>> model = js.load_default_model()
        >>> with js.frozen(model):
        ...     logits = model(model.to_tokens("Hello"))
        >>> logits.shape
        torch.Size([1, 2, 49152])
    """
    # Touch only what changes: setting thousands of flags through nn.Module.__setattr__
    # would cost tens of milliseconds per call.
    trainable = [p for p in _all_parameters(model) if p.requires_grad]
    training = [m for m in model.modules() if m.training]
    try:
        for p in trainable:
            p.requires_grad_(False)
        for m in training:
            m.training = False
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)
        # Module by module: Module.train() recurses and would flatten a model whose
        # submodules were deliberately in different modes.
        for m in training:
            m.training = True

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
    # TransformerBridge overrides parameters() to present TransformerLens-style names;
    # walking nn.Module's own registry as well guarantees no parameter is missed.
    seen: dict[int, torch.nn.Parameter] = {}
    for p in list(model.parameters()) + list(torch.nn.Module.parameters(model)):
        seen.setdefault(id(p), p)
    return list(seen.values())


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
        >>> with frozen(model):                     # doctest: +SKIP
        ...     logits = model(tokens)
    """
    params = _all_parameters(model)
    flags = [p.requires_grad for p in params]
    modules = list(model.modules())
    modes = [m.training for m in modules]
    try:
        for p in params:
            p.requires_grad_(False)
        for m in modules:
            m.training = False
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        # Set the attribute module by module: Module.train() recurses and would flatten a
        # model whose submodules were deliberately in different modes.
        for m, mode in zip(modules, modes):
            m.training = mode

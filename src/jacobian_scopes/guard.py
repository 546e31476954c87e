"""Leave the user's model exactly as it was, whatever happens during a scope call.

A scope call freezes every parameter (so that the backward pass computes gradients with
respect to the inputs only and nothing accumulates in ``.grad``), switches every module
to eval mode (dropout would make attributions random), and adds temporary hooks. All of
it is undone on exit, on success and on exception alike.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from itertools import chain, repeat
from typing import Any

import torch

from jacobian_scopes.interrupts import Undoable, UndoFn, exit_if_suspended, finish
from jacobian_scopes.threads import model_lock


def all_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Every module of ``model`` once, the Bridge's wrapped Hugging Face model included.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.guard import all_modules
        >>> model = js.load_default_model()
        >>> model.original_model.model.norm in all_modules(model)
        True
    """
    # nn.Module's own registry, and through the Bridge's ``original_model`` (kept outside
    # the registered tree, so neither model.modules() nor Module.modules reaches it): the
    # wrapped Hugging Face model has modules no Bridge component wraps, such as GPT-2's
    # embedding dropout ``transformer.drop``.
    # A plain walk over each module's ``_modules``: Module.modules() goes through
    # named_modules, whose generators and name strings made this walk 26 ms of a 200 ms
    # scope call on SmolLM2 (two walks a call, ~2,000 modules each).
    seen: dict[int, torch.nn.Module] = {}
    stack = [model]
    while stack:
        module = stack.pop()
        if id(module) in seen:
            continue
        seen[id(module)] = module
        original = module.__dict__.get("original_model")
        if isinstance(original, torch.nn.Module):
            stack.append(original)
        stack.extend(reversed([c for c in module._modules.values() if c is not None]))
    return list(seen.values())


def _all_parameters(
    model: torch.nn.Module, modules: list[torch.nn.Module] | None = None
) -> list[torch.nn.Parameter]:
    # nn.Module's own registry, not model.parameters(): TransformerBridge overrides the
    # latter. Every module's own parameters, once each.
    seen: dict[int, torch.nn.Parameter] = {}
    for module in all_modules(model) if modules is None else modules:
        for p in module._parameters.values():
            if p is not None and id(p) not in seen:
                seen[id(p)] = p
    return list(seen.values())


def hook_counts(model: Any) -> dict[str, tuple[int, int, int, int, int, int]]:
    """Per hook point: TransformerLens forward/backward handles and torch hook counts."""
    out = {}
    for name, hp in model.hook_dict.items():
        out[name] = (
            len(getattr(hp, "fwd_hooks", [])),
            len(getattr(hp, "bwd_hooks", [])),
            len(hp._forward_hooks),
            len(hp._forward_pre_hooks),
            len(hp._backward_hooks),
            len(hp._backward_pre_hooks),
        )
    return out


def model_fingerprint(model: torch.nn.Module) -> dict[str, Any]:
    """Everything a scope call promises not to change, in comparable form (for tests)."""
    params = _all_parameters(model)
    return {
        "requires_grad": [p.requires_grad for p in params],
        "grads": [None if p.grad is None else p.grad.clone() for p in params],
        "training": [m.training for m in all_modules(model)],
        "hooks": hook_counts(model),
        # TransformerLens's hooks() level: one too high or low, and its later contexts
        # take off the wrong hooks
        "context_level": getattr(model, "context_level", None),
        "torch_hooks": [
            (
                len(m._forward_hooks),
                len(m._forward_pre_hooks),
                len(m._backward_hooks),
                len(m._backward_pre_hooks),
            )
            for m in all_modules(model)
        ],
    }


@contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """Freeze parameters and select eval mode for the duration; restore both afterwards.

    It holds the model's lock (:func:`jacobian_scopes.threads.model_lock`) meanwhile: a
    scope call in another thread waits, one in the same thread goes on.

    Example:
        >>> import jacobian_scopes as js
        >>> model = js.load_default_model()
        >>> with js.frozen(model):
        ...     logits = model(model.to_tokens("Hello"))
        >>> logits.shape
        torch.Size([1, 2, 49152])
    """
    with model_lock(model):
        # Touch only what changes: setting thousands of flags through nn.Module.__setattr__
        # would cost tens of milliseconds per call.
        modules = all_modules(model)
        trainable = [p for p in _all_parameters(model, modules) if p.requires_grad]
        training = [m for m in modules if m.training]
        # Built before anything changes, so that the restore is one call of C code (see
        # _set_flags): an interrupt cannot land between its start and its end.
        restore: Callable[[], object] = partial(
            deque, _flag_setters(trainable, training, True), maxlen=0
        )
        try:
            _set_flags(trainable, training, False)
            yield
        finally:
            try:
                restore()
            except BaseException:
                _restore(trainable, training)
                raise


# Module by module, never Module.train(), which recurses and would flatten a model whose
# submodules were deliberately in different modes. object.__setattr__ is what
# nn.Module.__setattr__ does for a plain flag, without a Python frame (see _set_flags).
_set_requires_grad = torch.Tensor.requires_grad_
_set_attr = object.__setattr__


def _flag_setters(
    params: list[torch.nn.Parameter], modules: list[torch.nn.Module], on: bool
) -> Iterator[Any]:
    return chain(
        map(_set_requires_grad, params, repeat(on)),
        map(_set_attr, modules, repeat("training"), repeat(on)),
    )


def _set_flags(params: list[torch.nn.Parameter], modules: list[torch.nn.Module], on: bool) -> None:
    # Only C functions run while deque consumes the iterator (map, repeat, chain,
    # requires_grad_, object.__setattr__): Python runs a signal handler (Ctrl-C's
    # KeyboardInterrupt) only between bytecodes of a Python frame, so none can stop the
    # loop halfway through.
    deque(_flag_setters(params, modules, on), maxlen=0)


def _restore(params: list[torch.nn.Parameter], modules: list[torch.nn.Module]) -> None:
    """Set every flag back, whatever exception arrives meanwhile, then raise the first one."""
    finish(_set_flags, params, modules, True)


_TORCH_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)


def forward_pre_hook(module: torch.nn.Module | None, hook: Callable[..., Any]) -> Undoable[None]:
    """``module.register_forward_pre_hook(hook)`` for the duration (``module=None``: none).

    The hook is taken off by value, not through its handle, so an interrupt landing right
    after it is registered cannot leave it behind.

    Example:
        >>> import torch
        >>> from jacobian_scopes.guard import forward_pre_hook
        >>> layer = torch.nn.Linear(2, 2)
        >>> with forward_pre_hook(layer, lambda module, args: None):
        ...     len(layer._forward_pre_hooks)
        1
        >>> len(layer._forward_pre_hooks)
        0
    """
    return Undoable(lambda undo: _add_pre_hook(undo, module, hook))


def _add_pre_hook(undo: UndoFn, module: torch.nn.Module | None, hook: Callable[..., Any]) -> None:
    if module is not None:
        undo(_remove_pre_hook, module, hook)
        module.register_forward_pre_hook(hook)


def _remove_pre_hook(module: torch.nn.Module | None, hook: Callable[..., Any]) -> None:
    if module is not None:
        for key, fn in list(module._forward_pre_hooks.items()):
            if fn is hook:
                del module._forward_pre_hooks[key]


def temporary_hooks(model: Any, fwd_hooks: list[tuple[Any, Callable[..., Any]]]) -> Undoable[None]:
    """``model.hooks(fwd_hooks=...)`` whose undoing survives an interrupt.

    TransformerLens removes a context's hooks in a Python loop: a Ctrl-C landing inside
    that loop leaves the rest of them on the model, and its ``context_level`` one too high.
    Whatever arrives, the hook points are set back afterwards to the hooks they held
    before, and the level too.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.guard import hook_counts, temporary_hooks
        >>> model = js.load_default_model()
        >>> before = hook_counts(model)
        >>> with temporary_hooks(model, [("hook_embed", lambda x, hook: x)]):
        ...     hook_counts(model) == before
        False
        >>> hook_counts(model) == before
        True
    """
    return Undoable(lambda undo: _add_hooks(undo, model, fwd_hooks))


def _add_hooks(undo: UndoFn, model: Any, fwd_hooks: list[tuple[Any, Callable[..., Any]]]) -> None:
    added = model.hooks(fwd_hooks=fwd_hooks)
    undo(_put_back, model, _held_hooks(model), model.__dict__.get("context_level"), added)
    added.__enter__()


def _put_back(model: Any, held: _Held, level: int | None, added: Any) -> None:
    # TransformerLens's own exit takes the hooks off. Left waiting at its yield, its
    # generator would run that exit whenever the garbage collector reached it, in the
    # middle of a later call: taking off that call's hooks, lowering the level once more.
    # Then put back what an interrupt inside that exit left.
    exit_if_suspended(added, None, None, None)
    _put_back_hooks(held)
    if level is not None:
        model.context_level = level


# What a hook point held: the ids of its TransformerLens handles (forward, backward) and the
# keys of each of torch's hook dicts; _NOTHING for a point that held none (most of them).
_Before = tuple[frozenset[int], frozenset[int], tuple[frozenset[Any], ...]]
_Held = list[tuple[Any, _Before]]
_NOTHING: _Before = (frozenset(), frozenset(), (frozenset(),) * len(_TORCH_HOOK_DICTS))


def _holds_hooks(hp: Any) -> bool:
    own = hp.__dict__
    # torch's other dicts (with kwargs, always called) only flag keys of these four.
    return bool(
        getattr(hp, "fwd_hooks", None)
        or getattr(hp, "bwd_hooks", None)
        or own.get("_forward_hooks")
        or own.get("_forward_pre_hooks")
        or own.get("_backward_hooks")
        or own.get("_backward_pre_hooks")
    )


def _held_hooks(model: Any) -> _Held:
    # Sets only for the few points that hold hooks: one per container of each of ~1,200
    # points (SmolLM2's Bridge) made the snapshot ~10 ms of every call, and the allocations
    # set off the garbage collector's passes over the whole model besides.
    held: _Held = []
    for hp in {id(hp): hp for hp in model.hook_dict.values()}.values():
        if not _holds_hooks(hp):
            held.append((hp, _NOTHING))
            continue
        fwd, bwd = getattr(hp, "fwd_hooks", None) or (), getattr(hp, "bwd_hooks", None) or ()
        keys = tuple(frozenset(hp.__dict__.get(name) or ()) for name in _TORCH_HOOK_DICTS)
        held.append((hp, (frozenset(map(id, fwd)), frozenset(map(id, bwd)), keys)))
    return held


def _put_back_hooks(held: _Held) -> None:
    # Idempotent, so that an interrupted pass can simply run again.
    for hp, (fwd, bwd, torch_keys) in held:
        if not _holds_hooks(hp):
            continue  # nothing to take off: most points, on every call
        for attr, kept in (("fwd_hooks", fwd), ("bwd_hooks", bwd)):
            handles = getattr(hp, attr, None)
            if handles and any(id(h) not in kept for h in handles):
                handles[:] = [h for h in handles if id(h) in kept]
        for name, keys in zip(_TORCH_HOOK_DICTS, torch_keys, strict=True):
            hooks = hp.__dict__.get(name)
            if hooks:
                for key in [k for k in hooks if k not in keys]:
                    hooks.pop(key, None)

"""Calls from several threads: one call at a time per model, and hooks that stay in their call.

Hooks live on the model's shared hook points, and a call changes shared state (parameter
flags, eval mode) for its duration. So calls on the same model take that model's lock
(:func:`model_lock`, re-entrant: a scope inside a :func:`jacobian_scopes.frozen` block or
inside another call of the same thread goes on), and each hook a call attaches acts only in
the thread that made the call (:class:`ThreadGate`): a plain ``model(tokens)`` in another
thread meanwhile passes through those hooks untouched and gets the right logits.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

import torch

_registry_lock = threading.Lock()
_locks: WeakKeyDictionary[Any, threading.RLock] = WeakKeyDictionary()

F = TypeVar("F", bound=Callable[..., Any])


def model_lock(model: Any) -> threading.RLock:
    """The re-entrant lock that serialises calls on ``model`` (one per model object).

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.threads import model_lock
        >>> model = js.load_default_model()
        >>> with model_lock(model):   # other threads' calls on this model wait meanwhile
        ...     r = js.semantic_scope(model, "The capital of France is", " Paris")  # same thread
        >>> model_lock(model) is model_lock(model)
        True
    """
    _align_thread_count()
    with _registry_lock:
        lock = _locks.get(model)
        if lock is None:
            lock = _locks[model] = threading.RLock()
        return lock


def _align_thread_count() -> None:
    # PyTorch gives a new thread its intra-op thread count (torch.set_num_threads) lazily, at
    # the thread's first parallel loop of its own; a matrix product before that runs on the
    # BLAS default instead and sums in another order. Without this, a call's first run in a
    # new thread differs from the same call in the main thread in the last bits.
    torch.set_num_threads(torch.get_num_threads())


class ThreadGate:
    """The threads in which one call's hooks act.

    That is the thread that created the gate, plus any thread while it runs work that was
    :meth:`lend`-ed to the call: under activation checkpointing the backward pass runs the
    blocks' forward again, and on CUDA autograd runs the backward in threads of its own.

    Example:
        >>> from jacobian_scopes.threads import ThreadGate
        >>> gate = ThreadGate()
        >>> [name for name, fn in gate.hooks([("hook_embed", print)])]  # each fn is gated
        ['hook_embed']
        >>> gate.acting()
        True
    """

    def __init__(self) -> None:
        self.owner = threading.get_ident()
        self._lent: dict[int, int] = {}
        self._lent_lock = threading.Lock()
        self.closed = False

    def acting(self) -> bool:
        """Whether the current thread is doing this call's work."""
        if self.closed:
            return False
        ident = threading.get_ident()
        return ident == self.owner or ident in self._lent

    def close(self) -> None:
        """From now on the hooks pass everything through (in case one outlived its call)."""
        self.closed = True

    def hook(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` (a TransformerLens hook or a torch forward/pre-hook) acting in this call only.

        Elsewhere it returns None, which both kinds of hook read as "leave it unchanged".
        """

        def gated(value: Any, *args: Any, **kwargs: Any) -> Any:
            if self.acting():
                return fn(value, *args, **kwargs)
            return None

        return gated

    def hooks(self, hooks: Sequence[tuple[Any, Callable[..., Any]]]) -> list[tuple[Any, Any]]:
        """``[(name, fn)]`` with every ``fn`` gated by :meth:`hook`."""
        return [(name, self.hook(fn)) for name, fn in hooks]

    def lend(self, fn: F) -> F:
        """``fn`` that, whichever thread runs it, counts as this call's work meanwhile."""

        def lent(*args: Any, **kwargs: Any) -> Any:
            ident = threading.get_ident()
            with self._lent_lock:
                self._lent[ident] = self._lent.get(ident, 0) + 1
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lent_lock:
                    left = self._lent.pop(ident) - 1
                    if left:
                        self._lent[ident] = left

        return lent  # type: ignore[return-value]

"""A call's stack of contexts, safe against an interrupt at any moment of entering or leaving.

``contextlib.ExitStack.enter_context`` enters a context, then registers its exit: a Ctrl-C
(an asynchronous ``KeyboardInterrupt``) landing between the two leaves the context entered
for good. For the model's lock that means every later call from another thread waits
forever; for a generator context (``frozen``) its flags stay until the generator happens
to be garbage-collected. ``ExitStack.close`` has the mirror window: an exit taken off the
stack and interrupted before it runs is lost.

:class:`Contexts` closes both windows, for one interrupt at a time:

* each exit is registered *before* its context is entered, and checks on exit whether the
  context was entered (the lock: does this thread hold it; a generator context: is its
  generator suspended at its ``yield``);
* each exit is idempotent and stays on the stack until it has run, so an interrupt while
  unwinding costs at most one exit running twice; the unwinding goes on to the end and
  raises the first interrupt afterwards.

Exits do not suppress exceptions (unlike ``ExitStack``'s): a call's contexts never do.

A ``with`` statement has one window of its own: Python checks for a pending signal as
every Python function starts, so a Ctrl-C can land as a context's ``__exit__`` (or the
first function it calls) begins, before it has undone anything, and nothing calls it
again. :class:`backstop`, listed first in the ``with`` statement, exits last and closes
whatever such an interrupt left open. A generator's ``finally`` has the same window, and
once it is cut short nothing can run it again: contexts that change the model are
therefore :class:`Undoable` ones, whose undoing is on a stack that ``close()`` finishes.

Example:
    >>> import threading
    >>> from contextlib import contextmanager
    >>> from jacobian_scopes.interrupts import Contexts
    >>> events = []
    >>> @contextmanager
    ... def step(name):
    ...     events.append(f"enter {name}")
    ...     try:
    ...         yield
    ...     finally:
    ...         events.append(f"exit {name}")
    >>> lock = threading.RLock()
    >>> stack = Contexts()
    >>> stack.hold(lock)
    >>> stack.enter(step("a"))
    >>> stack.callback(events.append, "callback")
    >>> stack.close()
    >>> events, lock._is_owned()
    (['enter a', 'callback', 'exit a'], False)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextlib import _GeneratorContextManager
from types import TracebackType
from typing import Any, Generic, TypeVar

ExitFn = Callable[[type[BaseException] | None, BaseException | None, TracebackType | None], Any]
#: ``undo(restore, *args)``: call the idempotent ``restore(*args)`` when the context closes.
UndoFn = Callable[..., None]
T = TypeVar("T")


class Contexts:
    """Entered contexts, left in reverse order by :meth:`close` (see the module).

    Example:
        >>> import threading
        >>> from jacobian_scopes.interrupts import Contexts
        >>> lock = threading.RLock()
        >>> stack = Contexts()
        >>> stack.hold(lock)
        >>> lock._is_owned()
        True
        >>> stack.close()
        >>> lock._is_owned()
        False
    """

    def __init__(self) -> None:
        self._exits: list[ExitFn] = []

    def hold(self, lock: Any) -> None:
        """Acquire a re-entrant ``lock`` (``threading.RLock``) until :meth:`close`.

        A lock this thread holds already (a caller's ``with model_lock(model):`` around the
        call) is left as it is: that hold outlasts this stack.
        """
        if lock._is_owned():
            return
        # Registered first: whatever this thread holds of the lock at close was taken here.
        self._exits.append(lambda *exc: _release_all(lock))
        lock.acquire()

    def enter(self, cm: _GeneratorContextManager[Any] | Undoable[Any]) -> Any:
        """Enter a ``@contextmanager`` or :class:`Undoable` context until :meth:`close`;
        returns what it yields (or its setup returns)."""
        if isinstance(cm, Undoable):
            self._exits.append(lambda *exc: cm.close())
            return cm.__enter__()
        gen = getattr(cm, "gen", None)
        if not inspect.isgenerator(gen):
            raise TypeError(
                f"Contexts.enter takes a @contextmanager or Undoable context, got {cm!r}"
            )

        self._exits.append(lambda *exc: exit_if_suspended(cm, *exc))
        return cm.__enter__()

    def callback(self, fn: Callable[..., Any], *args: Any) -> None:
        """Call ``fn(*args)`` at :meth:`close`. It must be harmless to call twice."""
        self._exits.append(lambda *exc: fn(*args))

    def close(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: TracebackType | None = None,
    ) -> None:
        """Run every exit, newest first, each until it has run; then raise the first
        exception an exit raised (or an interrupt meanwhile), if any."""
        pending: BaseException | None = None
        while True:
            # The loop over the exits is inside the try: Python delivers a Ctrl-C at a
            # loop's backward jump too, and one there must not skip the remaining exits
            # (the lock's release is the last of them).
            try:
                while self._exits:
                    self._exits[-1](exc_type, exc, tb)
                    self._exits.pop()
                break
            except BaseException as err:  # an exit's error, or Ctrl-C: finish first
                pending = pending or err
                if self._exits and not isinstance(err, (KeyboardInterrupt, SystemExit)):
                    self._exits.pop()  # a failing exit runs once; an interrupted one again
        if pending is not None:
            raise pending


class backstop:
    """First in a ``with`` statement: ``with backstop() as net, net(frozen(model)), net(trace):``.

    Each context passed through ``net(...)`` is registered before it is entered; at the end
    of the statement (it exits last) the backstop closes those still open, newest first:
    a ``@contextmanager`` context whose generator still waits at its ``yield``, or an
    object with an idempotent ``close()`` (a :class:`jacobian_scopes.engine.Trace`, a
    :class:`Contexts`). They are open there only when a Ctrl-C landed as their own
    ``__exit__`` began (see the module); otherwise it does nothing.

    Example:
        >>> from contextlib import contextmanager
        >>> from jacobian_scopes.interrupts import backstop
        >>> events = []
        >>> @contextmanager
        ... def step():
        ...     try:
        ...         yield
        ...     finally:
        ...         events.append("undone")
        >>> with backstop() as net, net(step()):
        ...     events.append("inside")
        >>> events
        ['inside', 'undone']
    """

    def __init__(self) -> None:
        self._contexts: list[Any] = []

    def __call__(self, context: Any) -> Any:
        self._contexts.append(context)
        return context

    def __enter__(self) -> backstop:
        return self

    def __exit__(self, *exc: Any) -> None:
        # The loop is inside close: one interrupt at a time cannot skip a context here.
        stack = Contexts()
        for context in self._contexts:
            stack.callback(_close_if_open, context)
        stack.close()


class Undoable(Generic[T]):
    """A context that changes something on entering and undoes it, to its end, on leaving.

    ``setup(undo)`` makes the changes and registers, *before* each one, the idempotent
    function that takes it back: ``undo(restore, *restore_args)``. Entering runs the setup
    (its return value is what ``with ... as`` gets); leaving runs the undos, newest first,
    each to its end whatever interrupt arrives. Unlike a ``@contextmanager`` generator,
    whose ``finally`` nothing can run again once a Ctrl-C cut it short as it began, the
    context's :meth:`close` finishes whatever is still to undo: :class:`Contexts` and
    :class:`backstop` call it.

    Example:
        >>> from jacobian_scopes.interrupts import Undoable
        >>> settings = {"mode": "eager"}
        >>> def use_sdpa(undo):
        ...     undo(settings.__setitem__, "mode", settings["mode"])
        ...     settings["mode"] = "sdpa"
        >>> with Undoable(use_sdpa):
        ...     settings["mode"]
        'sdpa'
        >>> settings["mode"]
        'eager'
    """

    def __init__(self, setup: Callable[[UndoFn], T]) -> None:
        self._setup = setup
        self._undos = Contexts()

    def __enter__(self) -> T:
        try:
            return self._setup(self._undos.callback)
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Run every undo not yet run, newest first; harmless to call again."""
        self._undos.close()


def _close_if_open(context: Any) -> None:
    if inspect.isgenerator(getattr(context, "gen", None)):
        exit_if_suspended(context, None, None, None)
    else:
        context.close()


def exit_if_suspended(cm: _GeneratorContextManager[Any], *exc: Any) -> None:
    """Run ``cm``'s exit if its generator still waits at its ``yield``.

    Left waiting (its exit cut short as it began), a generator's ``finally`` runs when the
    garbage collector reaches it: at any later moment, in the middle of another call.

    Example:
        >>> from contextlib import contextmanager
        >>> from jacobian_scopes.interrupts import exit_if_suspended
        >>> @contextmanager
        ... def step():
        ...     try:
        ...         yield
        ...     finally:
        ...         print("exit")
        >>> cm = step()
        >>> _ = cm.__enter__()
        >>> exit_if_suspended(cm, None, None, None)
        exit
        >>> exit_if_suspended(cm, None, None, None)  # left already: nothing
    """
    # Suspended: it yielded and waits for its exit. Created: never entered. Closed: left
    # already, or an interrupt inside its body ran its own finally.
    if inspect.getgeneratorstate(cm.gen) == inspect.GEN_SUSPENDED:
        cm.__exit__(*exc)


def finish(restore: Callable[..., Any], *args: Any) -> None:
    """Call an idempotent ``restore(*args)`` until it has run to its end, then raise the
    first exception that cut it short (an asynchronous one, Ctrl-C), if any.

    Example:
        >>> from jacobian_scopes.interrupts import finish
        >>> state = {}
        >>> finish(state.__setitem__, "flag", True)
        >>> state
        {'flag': True}
    """
    pending: BaseException | None = None
    while True:
        try:
            restore(*args)
            break
        except BaseException as exc:  # an asynchronous one (Ctrl-C): finish first
            pending = pending or exc
    if pending is not None:
        raise pending


def _release_all(lock: Any) -> None:
    while lock._is_owned():
        lock.release()


__all__ = ["Contexts", "Undoable", "backstop", "exit_if_suspended", "finish"]

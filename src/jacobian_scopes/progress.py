"""Progress bars, created only when the caller asked to see one.

tqdm takes a process-wide lock whenever a bar is made, even a disabled one (two locks, one
after the other). A Ctrl-C landing between the two leaves the first held by the interrupted
thread for good, and every bar made later in any other thread (a scope call in the explorer's
worker threads, or in a user's thread pool) then waits for it forever. A call that shows no
bar therefore makes none: it never touches tqdm's lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Silent(Generic[T]):
    """What a hidden bar is: the calls of a tqdm bar that the library makes, doing nothing."""

    def __init__(self, iterable: Iterable[T] | None = None) -> None:
        self.iterable = iterable

    def __iter__(self) -> Iterator[T]:
        return iter(self.iterable if self.iterable is not None else ())

    def __enter__(self) -> Silent[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: float = 1) -> None:
        return None

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        return None

    def close(self) -> None:
        return None


def progress(iterable: Iterable[T] | None = None, *, verbose: bool, **kwargs: Any) -> Any:
    """A ``tqdm.auto`` bar over ``iterable`` when ``verbose``, else a :class:`Silent` one.

    Example:
        >>> from jacobian_scopes.progress import progress
        >>> with progress(total=3, desc="prompts", verbose=False) as bar:
        ...     bar.update(3)
        >>> [x for x in progress(range(3), verbose=False)]
        [0, 1, 2]
    """
    if not verbose:
        return Silent(iterable)
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)

"""An evaluation spread over processes started by ``torchrun``.

Each rank evaluates every ``world``-th passage (passages are independent: a passage's
numbers do not depend on which process computes them, or on the others), writes its own
results file next to the requested one (``results.rank<r>.jsonl``, resumable like a
single-process file), and the ranks then exchange their records: every rank returns the
whole evaluation, and rank 0 writes the merged file. The process group uses ``nccl`` when
CUDA is available and ``gloo`` otherwise; one that the caller already set up is used as it
is.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from jacobian_scopes.eval.store import Key, record_key

__all__ = ["Ranks", "torchrun_ranks"]  # the rest is evaluate's machinery

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place among ``world`` processes.

    Example:
        >>> from jacobian_scopes.eval.distributed import Ranks
        >>> Ranks(rank=1, world=2).shard(["a", "b", "c", "d", "e"])
        ['b', 'd']
    """

    rank: int
    world: int

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share: every ``world``-th item, from the ``rank``-th."""
        return list(items[self.rank :: self.world])

    def rank_file(self, results: str | Path) -> Path:
        """Where this rank keeps its own records: ``faith.jsonl`` → ``faith.rank1.jsonl``."""
        path = Path(results)
        return path.with_name(f"{path.stem}.rank{self.rank}{path.suffix or '.jsonl'}")


def torchrun_ranks() -> Ranks | None:
    """The ranks torchrun's environment describes, or None outside torchrun (or with a
    single process).

    Example:
        >>> from jacobian_scopes.eval.distributed import torchrun_ranks
        >>> torchrun_ranks() is None   # a plain Python process
        True
    """
    if "TORCHELASTIC_RUN_ID" not in os.environ and "LOCAL_RANK" not in os.environ:
        return None
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return Ranks(rank=int(os.environ["RANK"]), world=world)


@contextmanager
def process_group() -> Iterator[None]:
    """The default process group, set up for the duration unless the caller already has."""
    if dist.is_initialized():
        yield
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    try:
        yield
    finally:
        dist.destroy_process_group()


def exchange(records: dict[Key, dict[str, Any]], ranks: Ranks) -> dict[Key, dict[str, Any]]:
    """Every rank's records, merged (the same on every rank, in rank order)."""
    gathered: list[Any] = [None] * ranks.world
    dist.all_gather_object(gathered, list(records.values()))
    merged: dict[Key, dict[str, Any]] = {}
    for part in gathered:
        for record in part:
            merged[record_key(record)] = record
    return merged


def barrier() -> None:
    dist.barrier()

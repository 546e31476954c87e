"""An evaluation spread over processes started by ``torchrun``.

Each rank evaluates every ``world``-th passage (passages are independent: a passage's
numbers do not depend on which process computes them, or on the others), writes its own
results file next to the requested one (``results.rank<r>.jsonl``, resumable like a
single-process file), and the ranks then exchange their records: every rank returns the
whole evaluation, and rank 0 writes the merged file. The process group uses ``nccl`` when
every process on a machine has a GPU of its own, and ``gloo`` otherwise (on CPU, and with
more processes than GPUs: a small model leaves a GPU idle between one process's kernels, so
several processes may share it, which NCCL refuses); one that the caller already set up is
used as it is. :func:`local_device` is the device a rank's model belongs on.
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

__all__ = ["Ranks", "local_device", "torchrun_ranks"]  # the rest is evaluate's machinery

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


def backend(local_world: int, n_gpus: int) -> str:
    """``nccl`` when each of a machine's ``local_world`` processes has one of its ``n_gpus``
    GPUs to itself, ``gloo`` otherwise.

    Example:
        >>> from jacobian_scopes.eval.distributed import backend
        >>> backend(2, 2), backend(8, 1), backend(2, 0)
        ('nccl', 'gloo', 'gloo')
    """
    return "nccl" if 0 < local_world <= n_gpus else "gloo"


def local_device() -> torch.device:
    """The device for this process's model: under torchrun with GPUs, the GPU its local rank
    maps to (ranks share GPUs round-robin when there are more of them); else the CPU or
    the one GPU.

    Example:
        >>> from jacobian_scopes.eval.distributed import local_device
        >>> local_device().type in ("cpu", "cuda")
        True
    """
    if not torch.cuda.is_available():
        return torch.device("cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return torch.device("cuda", local_rank % torch.cuda.device_count())


@contextmanager
def process_group() -> Iterator[None]:
    """The default process group, set up for the duration unless the caller already has."""
    if dist.is_initialized():
        yield
        return
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    chosen = backend(local_world, n_gpus)
    if n_gpus:
        torch.cuda.set_device(local_device())
    dist.init_process_group(backend=chosen)
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

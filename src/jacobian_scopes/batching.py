"""Several prompts in one forward pass: right padding, grouping by length, per-prompt values.

Each prompt is tokenised on its own (BOS included, exactly as alone), then the prompts of
a batch are *right*-padded to a common length. The models are causal, so every real token
attends only to real tokens before it: each explained position sees exactly the
computation of its unpadded prompt, and the gradient with respect to a padded position is
exactly zero. No attention mask and no position shift are needed (left padding would need
both, and HookedTransformer and the Bridge handle masks differently).

Prompts are sorted by length (longest first) and grouped so that padding stays under half
of each batch (:func:`group_by_length`).

Example:
    >>> import torch
    >>> from jacobian_scopes.batching import pad_batch
    >>> pad_batch([torch.tensor([[1, 2, 3]]), torch.tensor([[1, 5]])], pad_id=0)
    (tensor([[1, 2, 3],
            [1, 5, 0]]), [3, 2])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from jacobian_scopes.adapter import ModelAdapter
from jacobian_scopes.errors import ScopeInputError

# A batch holds at least this share of real (not padded) tokens.
MIN_FILL = 0.5


def pad_batch(
    rows: Sequence[Int[Tensor, "1 pos"]], pad_id: int
) -> tuple[Int[Tensor, "batch max_pos"], list[int]]:
    """Right-pad token rows to a common length; returns the batch and each row's length."""
    lengths = [int(r.shape[1]) for r in rows]
    out = torch.full((len(rows), max(lengths)), pad_id, dtype=rows[0].dtype, device=rows[0].device)
    for b, r in enumerate(rows):
        out[b, : lengths[b]] = r[0]
    return out, lengths


def pad_id(adapter: ModelAdapter) -> int:
    """The id written into padded positions. Its value cannot matter (nothing real attends
    to it); a real token keeps embeddings and logits finite."""
    tok = getattr(adapter.model, "tokenizer", None)
    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(tok, name, None)
        if isinstance(value, int) and 0 <= value < adapter.d_vocab:
            return value
    return 0


def per_prompt(value: Any, n: int, what: str) -> list[Any]:
    """A list or tuple gives one value per prompt; anything else is shared by all.

    Example:
        >>> from jacobian_scopes.batching import per_prompt
        >>> per_prompt([" Paris", " Rome"], 2, "target"), per_prompt(-1, 2, "position")
        ([' Paris', ' Rome'], [-1, -1])
    """
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ScopeInputError(
                f"{what} has {len(value)} entries for {n} prompts; give one per prompt, or a "
                "single value (a string, an int or a tensor) shared by all"
            )
        return list(value)
    return [value] * n


def stack_directions(
    positions: Sequence[list[int]], directions: Sequence[Tensor]
) -> tuple[Tensor, Tensor]:
    """Positions (B, P) and directions (K, B, P, *feature), padded with zero directions.

    ``directions[b]`` has shape (K_b, P_b, *feature). A zero direction adds nothing to the
    pulled-back scalar ``Σ vₚ·a[p]``, so rows with fewer directions (Fisher plans differ
    per prompt) or fewer explained positions (multi-token targets) are padded with zeros
    at a position of their own.
    """
    n_k = max(d.shape[0] for d in directions)
    n_p = max(len(p) for p in positions)
    first = directions[0]
    dirs = first.new_zeros((n_k, len(directions), n_p, *first.shape[2:]))
    pos = torch.zeros((len(directions), n_p), dtype=torch.long)
    for b, (p, d) in enumerate(zip(positions, directions, strict=True)):
        k, n = d.shape[:2]
        dirs[:k, b, :n] = d
        pos[b, :n] = torch.tensor(p)
        pos[b, n:] = p[-1]
    return pos, dirs


def group_by_length(
    lengths: Sequence[int], batch_size: int, min_fill: float = MIN_FILL
) -> list[tuple[int, int]]:
    """Split lengths sorted longest first into (start, stop) groups of at most
    ``batch_size``, starting a new group rather than let padding exceed ``1 − min_fill`` of
    a batch (one long prompt among short ones would otherwise multiply the work).

    Example:
        >>> from jacobian_scopes.batching import group_by_length
        >>> group_by_length([120, 20, 20, 20, 18], batch_size=8)
        [(0, 2), (2, 5)]
    """
    groups: list[tuple[int, int]] = []
    start = 0
    real = 0
    for i, n in enumerate(lengths):
        size = i - start + 1
        if size > 1 and (size > batch_size or (real + n) < min_fill * size * lengths[start]):
            groups.append((start, i))
            start, real = i, 0
        real += n
    if lengths:
        groups.append((start, len(lengths)))
    return groups

"""Long prompts: how many transformer blocks a trace recomputes in its backward pass.

A backward pass needs what the forward pass kept: in every block the activations (linear in
the prompt length, :func:`activation_bytes`) and, with eager attention, the attention
patterns (quadratic, :func:`attention_bytes`). A checkpointed block keeps only its input and
runs again during the backward pass (``torch.utils.checkpoint``, non-reentrant): the same
scores, one more forward pass of that block. ``checkpoint=None`` checkpoints the fewest
blocks that bring what the rest keep within the budget (:func:`blocks_to_checkpoint`), not
all or none: the time grows with the share of blocks checkpointed, and a prompt just past
the budget costs a few blocks' recomputation rather than a whole forward pass.

Example:
    SmolLM2 on a CPU with SDPA attention: nothing up to 2k tokens, 12 of its 30 blocks at
    4k, 21 at 8k; with eager attention, every block at 8k.

    >>> import jacobian_scopes as js
    >>> from jacobian_scopes.adapter import ModelAdapter
    >>> from jacobian_scopes.checkpointing import blocks_to_checkpoint
    >>> adapter = ModelAdapter(js.load_default_model())
    >>> [blocks_to_checkpoint(adapter, (1, n), "sdpa") for n in (2048, 4096, 8192)]
    [0, 12, 21]
    >>> blocks_to_checkpoint(adapter, (1, 8192), "eager")
    30
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from jacobian_scopes.adapter import ModelAdapter
from jacobian_scopes.interrupts import Undoable, UndoFn
from jacobian_scopes.threads import ThreadGate

#: On a CPU, the attention patterns the unrecomputed blocks may keep (eager attention).
CHECKPOINT_ABOVE_BYTES = 1 << 30
#: On a CPU, the other activations the unrecomputed blocks may keep. Chosen by measurement
#: (benchmarks/bench_long.py, SmolLM2 on SDPA against the floor): 2k tokens uncheckpointed
#: take 1.1x the floor's time and 1.5x its memory; at 4k, uncheckpointed 1.0-1.2x the time
#: but 1.7x the memory, every block checkpointed 1.2-1.5x the time and 0.6-0.9x the memory.
ACTIVATIONS_ABOVE_BYTES = 3 << 30


def free_device_bytes(device: torch.device) -> int | None:
    """The free memory of a CUDA device, in bytes; ``None`` for any other device.

    Example:
        >>> import torch
        >>> from jacobian_scopes.checkpointing import free_device_bytes
        >>> free_device_bytes(torch.device("cpu")) is None
        True
    """
    if device.type != "cuda":
        return None
    return int(torch.cuda.mem_get_info(device)[0])


def blocks_to_checkpoint(
    adapter: ModelAdapter, shape: Sequence[int], attention: str = "eager"
) -> int:
    """How many blocks (the first ones) ``checkpoint=None`` recomputes for tokens of ``shape``.

    The fewest that leave what the other blocks keep within the budget. On the CPU: their
    attention patterns (eager attention only) within :data:`CHECKPOINT_ABOVE_BYTES` and
    their other activations within :data:`ACTIVATIONS_ABOVE_BYTES`. On a CUDA device: both
    together within half of the device's free memory, since recomputing costs a GPU
    1.3-1.8x the time (measured on an H200 with Llama-3 shapes at 1k-4k tokens,
    ``benchmarks/bench_gpu.py``) while memory there is what the model leaves free.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.adapter import ModelAdapter
        >>> from jacobian_scopes.checkpointing import blocks_to_checkpoint
        >>> adapter = ModelAdapter(js.load_default_model())
        >>> blocks_to_checkpoint(adapter, (1, 512)), blocks_to_checkpoint(adapter, (1, 1024))
        (0, 16)
    """
    n = adapter.n_layers
    patterns = attention_bytes(adapter, shape) // n if attention == "eager" else 0
    others = activation_bytes(adapter, shape) // n
    free = free_device_bytes(adapter.device)
    if free is not None:
        kept = free // 2 // max(patterns + others, 1)
    else:
        kept = min(
            CHECKPOINT_ABOVE_BYTES // patterns if patterns else n,
            ACTIVATIONS_ABOVE_BYTES // others if others else n,
        )
    return max(0, n - kept)


def wants_checkpoint(adapter: ModelAdapter, shape: Sequence[int], attention: str = "eager") -> bool:
    """Whether ``checkpoint=None`` checkpoints any block for tokens of ``shape``
    (:func:`blocks_to_checkpoint` says how many).

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.adapter import ModelAdapter
        >>> from jacobian_scopes.checkpointing import wants_checkpoint
        >>> adapter = ModelAdapter(js.load_default_model())
        >>> wants_checkpoint(adapter, (1, 512)), wants_checkpoint(adapter, (1, 8192))
        (False, True)
        >>> [wants_checkpoint(adapter, (1, n), "sdpa") for n in (2048, 4096)]
        [False, True]
    """
    return blocks_to_checkpoint(adapter, shape, attention) > 0


def _bytes_per_value(adapter: ModelAdapter) -> int:
    return torch.finfo(adapter.dtype).bits // 8 if adapter.dtype.is_floating_point else 4


def activation_bytes(adapter: ModelAdapter, shape: Sequence[int]) -> int:
    """A rough estimate of the activations other than attention patterns that one forward
    pass keeps for the backward pass: about ``8 · d_model + 4 · d_mlp`` values per token
    and layer (block input, norms, q/k/v, attention output; the MLP's hidden layers).

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.adapter import ModelAdapter
        >>> from jacobian_scopes.checkpointing import activation_bytes
        >>> adapter = ModelAdapter(js.load_default_model())
        >>> f"{activation_bytes(adapter, (1, 8192)) / 1e9:.0f} GB"
        '11 GB'
    """
    batch, n_pos = int(shape[0]), int(shape[1])
    per_value = _bytes_per_value(adapter)
    d_mlp = int(getattr(adapter.cfg, "d_mlp", None) or 4 * adapter.d_model)
    per_token = 8 * adapter.d_model + 4 * d_mlp
    return adapter.n_layers * batch * n_pos * per_token * per_value


def attention_bytes(adapter: ModelAdapter, shape: Sequence[int]) -> int:
    """Bytes the attention patterns of one forward pass keep for the backward pass.

    Eager attention (the Bridge forces it; HookedTransformer always computes patterns)
    saves the scores and the pattern, ``batch × heads × pos²`` values each, in every layer.

    Example:
        SmolLM2 (30 layers, 9 heads, float32) on one prompt of 8k tokens:

        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.adapter import ModelAdapter
        >>> from jacobian_scopes.checkpointing import attention_bytes
        >>> adapter = ModelAdapter(js.load_default_model())
        >>> f"{attention_bytes(adapter, (1, 8192)) / 1e9:.0f} GB"
        '145 GB'
    """
    batch, n_pos = int(shape[0]), int(shape[1])
    per_value = _bytes_per_value(adapter)
    return 2 * adapter.n_layers * adapter.n_heads * batch * n_pos * n_pos * per_value


def checkpointed_blocks(
    blocks: Iterable[torch.nn.Module], gate: ThreadGate | None = None
) -> Undoable[None]:
    """Run each of ``blocks`` under ``torch.utils.checkpoint`` for the duration.

    ``blocks``: a TransformerLens model's ``model.blocks`` (or the first few of them), or
    the decoder layers of a Hugging Face model. The wrapper is set as an instance attribute
    with ``object.__setattr__``: the Bridge's own ``__setattr__`` would forward it to the
    wrapped Hugging Face module (and recurse). With a ``gate``, only that call's forward
    passes are checkpointed (other threads run the blocks as usual), and the recomputation
    during the backward pass counts as the call's work in whichever thread autograd runs it.

    Example:
        The gradients are the same as without checkpointing; only the memory differs.

        >>> import torch, jacobian_scopes as js
        >>> from jacobian_scopes.checkpointing import checkpointed_blocks
        >>> from jacobian_scopes.engine import GradientTap
        >>> model = js.load_default_model()
        >>> tokens = model.to_tokens("The capital of France is")
        >>> paris = model.to_single_token(" Paris")
        >>> grads = []
        >>> for checkpoint in (False, True):
        ...     tap = GradientTap("hook_embed")
        ...     with js.frozen(model), model.hooks(fwd_hooks=[(tap.name, tap)]):
        ...         with checkpointed_blocks(model.blocks) if checkpoint else torch.enable_grad():
        ...             logits = model(tokens)
        ...             grads += torch.autograd.grad(logits[0, -1, paris], tap.leaf)
        >>> torch.allclose(grads[0], grads[1])
        True
    """
    return Undoable(lambda undo: _checkpoint_blocks(undo, list(blocks), gate))


def _checkpoint_blocks(
    undo: UndoFn, blocks: list[torch.nn.Module], gate: ThreadGate | None
) -> None:
    from torch.utils.checkpoint import checkpoint

    for block in blocks:
        own = block.__dict__.get("forward")
        original = block.forward

        def run(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            if gate is None:
                return checkpoint(_original, *args, use_reentrant=False, **kwargs)
            if not gate.acting():
                return _original(*args, **kwargs)
            return checkpoint(gate.lend(_original), *args, use_reentrant=False, **kwargs)

        undo(_put_back_forward, block, own)
        object.__setattr__(block, "forward", run)


def _put_back_forward(block: torch.nn.Module, own: Any) -> None:
    if own is None:
        block.__dict__.pop("forward", None)
    else:
        object.__setattr__(block, "forward", own)


__all__ = [
    "ACTIVATIONS_ABOVE_BYTES",
    "CHECKPOINT_ABOVE_BYTES",
    "activation_bytes",
    "attention_bytes",
    "blocks_to_checkpoint",
    "checkpointed_blocks",
    "free_device_bytes",
    "wants_checkpoint",
]

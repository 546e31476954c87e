"""The attention function the SDPA path runs: transformers' own SDPA, with one change on GPUs.

For grouped-query attention (fewer key/value heads than query heads, as in Llama-3, SmolLM2
and Gemma-3) with no mask, transformers asks ``scaled_dot_product_attention`` for
``enable_gqa=True``. On CUDA no memory-efficient kernel takes that in float32 (FlashAttention
and cuDNN need 16-bit floats, the memory-efficient kernel has no GQA), so PyTorch falls back
to its math kernel, which keeps ``heads × pos²`` values per layer for the backward pass:
measured on an H200 at 4,096 tokens, 32 query and 8 key/value heads, 8.1 GiB a layer
instead of 0.4 GiB (``python benchmarks/bench_gpu.py --kernels``). Repeating the key/value
heads first, as transformers itself does whenever a mask is given, leaves SDPA every kernel.
Elsewhere (CPU, or a mask given) this is transformers' SDPA unchanged.

The function is registered with transformers under :data:`NAME` (an attention function and
its mask function, SDPA's), once per process; :func:`implementation` gives the name to set as
a config's ``_attn_implementation``, or ``"sdpa"`` where this transformers has no registry.

Example:
    >>> from transformers import AttentionInterface
    >>> from jacobian_scopes.sdpa import implementation
    >>> implementation() in AttentionInterface._global_mapping
    True
"""

from __future__ import annotations

import functools
from typing import Any

import torch

#: The name this module's attention function is registered under.
NAME = "jacobian_scopes_sdpa"


def repeats_heads(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """Whether the key/value heads are repeated before SDPA: on CUDA, for grouped-query
    attention with no mask (where transformers would ask for ``enable_gqa``).

    Example:
        >>> import torch
        >>> from jacobian_scopes.sdpa import repeats_heads
        >>> query, key = torch.zeros(1, 8, 5, 4), torch.zeros(1, 2, 5, 4)
        >>> repeats_heads(query, key, None)  # on the CPU, transformers' SDPA as it is
        False
    """
    return mask is None and query.device.type == "cuda" and key.shape[1] != query.shape[1]


def _attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    special = kwargs.get("softcap") is not None or kwargs.get("position_bias") is not None
    if special or not repeats_heads(query, key, attention_mask):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    n_rep = query.shape[1] // key.shape[1]
    # transformers' own call for this case (no mask: causal unless a single query), but
    # without enable_gqa, whose absence is the point.
    is_causal = kwargs.get("is_causal")
    is_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    out = torch.nn.functional.scaled_dot_product_attention(
        query,
        repeat_kv(key, n_rep),
        repeat_kv(value, n_rep),
        dropout_p=kwargs.get("dropout", 0.0),
        scale=kwargs.get("scaling"),
        is_causal=bool(is_causal and query.shape[2] > 1),
    )
    return out.transpose(1, 2).contiguous(), None


@functools.cache
def implementation() -> str:
    """The ``_attn_implementation`` the SDPA path sets: :data:`NAME`, registered with
    transformers on the first call, or ``"sdpa"`` where transformers has no registry.

    Example:
        >>> from jacobian_scopes.sdpa import implementation
        >>> implementation()
        'jacobian_scopes_sdpa'
    """
    # Registering twice (two threads' first calls at once) sets the same entries again.
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError:
        return "sdpa"
    AttentionInterface.register(NAME, _attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME


__all__ = ["NAME", "implementation", "repeats_heads"]

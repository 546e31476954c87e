"""Batched, gradient-free forward passes on perturbed inputs.

Occlusion, deletion AOPC, ERASER comprehensiveness/sufficiency and leave-one-out all ask
the same question many times: what are the logits at one position when some input
embeddings are zeroed (or some tokens replaced)? This module answers it for a whole batch of
perturbations at once, with two savings that matter on a CPU:

* rows are run in batches (``internal_batch_size`` at a time), under ``torch.no_grad()``;
* the forward pass stops as soon as the final hidden state ``y`` is known, and only the
  explained position is unembedded (``y[pos] @ W_U + b_U``): on SmolLM2 the unembedding of
  every position is about a fifth of the forward pass, and nothing else needs it.

Deleted tokens stay attended: their *input embedding* (the output of ``hook_embed``) is set
to zero, the attention mask is untouched and positional embeddings are kept, as in the
Jacobian Scopes paper's AOPC protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from jacobian_scopes.adapter import EMBED_HOOK, ModelAdapter
from jacobian_scopes.errors import NonFiniteError, ScopeInputError
from jacobian_scopes.guard import forward_pre_hook, frozen, temporary_hooks
from jacobian_scopes.interrupts import backstop
from jacobian_scopes.options import HookList
from jacobian_scopes.threads import ThreadGate

DEFAULT_BATCH_SIZE = 16


class _Stop(Exception):
    """Raised from a hook once everything needed from the forward pass has been captured."""


def starts_with_bos(model: Any, tokens: Int[Tensor, "batch pos"]) -> bool:
    """Whether the prompt starts with the tokenizer's BOS token (the attention sink, which the
    deletion metrics and the IG baseline leave in place by default).

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.eval.perturb import starts_with_bos
        >>> model = js.load_default_model()
        >>> starts_with_bos(model, model.to_tokens("Hello"))
        True
    """
    bos = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
    return bos is not None and tokens.shape[-1] > 0 and int(tokens.reshape(-1)[0]) == int(bos)


def zero_embeddings(mask: Bool[Tensor, "batch pos"]) -> Callable[[Tensor, Any], Tensor]:
    """A ``hook_embed`` hook that zeroes the embeddings where ``mask`` is True (per row).

    Example:
        >>> import torch, jacobian_scopes as js
        >>> from jacobian_scopes.eval.perturb import zero_embeddings
        >>> model = js.load_default_model()
        >>> tokens = model.to_tokens("Hello world")
        >>> mask = torch.tensor([[False, True, False]])
        >>> with torch.no_grad(), model.hooks(fwd_hooks=[("hook_embed", zero_embeddings(mask))]):
        ...     logits = model(tokens)
        >>> logits.shape
        torch.Size([1, 3, 49152])
    """

    def hook(x: Tensor, hook: Any) -> Tensor:
        keep = (~mask).to(device=x.device, dtype=x.dtype)
        return x * keep[..., None]

    return hook


def logits_at(
    adapter: ModelAdapter,
    tokens: Int[Tensor, "batch pos"],
    position: int,
    *,
    zero: Bool[Tensor, "batch pos"] | None = None,
    fwd_hooks: HookList = (),
    internal_batch_size: int = DEFAULT_BATCH_SIZE,
) -> Float[Tensor, "batch vocab"]:
    """Logits (float32) at ``position`` for every row of ``tokens``, without gradients.

    ``zero[b, t]`` zeroes the input embedding of token ``t`` in row ``b`` (after the user's
    ``fwd_hooks``, which fire first). The model is frozen (eval mode) for the duration and
    left exactly as it was.

    Example:
        >>> import torch, jacobian_scopes as js
        >>> from jacobian_scopes.adapter import ModelAdapter
        >>> from jacobian_scopes.eval.perturb import logits_at
        >>> model = js.load_default_model()
        >>> tokens = model.to_tokens("The capital of France is")
        >>> adapter = ModelAdapter(model)
        >>> rows = tokens.expand(3, -1)
        >>> zero = torch.eye(3, tokens.shape[1], dtype=torch.bool)
        >>> logits_at(adapter, rows, -1, zero=zero).shape
        torch.Size([3, 49152])
    """
    if tokens.dim() != 2:
        raise ScopeInputError(f"tokens must be (batch, pos), got {tuple(tokens.shape)}")
    n_rows, n_pos = tokens.shape
    if zero is not None and tuple(zero.shape) != (n_rows, n_pos):
        raise ScopeInputError(
            f"the deletion mask has shape {tuple(zero.shape)}, the tokens {tuple(tokens.shape)}"
        )
    if not -n_pos <= position < n_pos:
        raise ScopeInputError(f"position {position} is out of range for {n_pos} tokens")
    if internal_batch_size < 1:
        raise ScopeInputError(f"internal_batch_size must be at least 1, got {internal_batch_size}")
    position %= n_pos
    out = []
    with backstop() as net, torch.no_grad(), net(frozen(adapter.model)):
        for start in range(0, n_rows, internal_batch_size):
            rows = tokens[start : start + internal_batch_size].contiguous()
            hooks = list(fwd_hooks)
            if zero is not None:
                hooks.append(
                    (EMBED_HOOK, zero_embeddings(zero[start : start + internal_batch_size]))
                )
            y = _final_state(adapter, rows, hooks)[:, position]
            out.append(adapter.logits_from_state(y).float())
    logits = torch.cat(out)
    if not torch.isfinite(logits).all():
        raise NonFiniteError(
            "a perturbed forward pass produced NaN or inf logits; in half precision this is "
            "usually overflow: run the model in float32 or bfloat16."
        )
    return logits


def embeddings(
    adapter: ModelAdapter, tokens: Int[Tensor, "batch pos"], fwd_hooks: HookList = ()
) -> Float[Tensor, "batch pos d_model"]:
    """The input embeddings (``hook_embed``, after the user's hooks) of ``tokens``.

    The forward pass stops right after the embedding, so this costs almost nothing.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.adapter import ModelAdapter
        >>> from jacobian_scopes.eval.perturb import embeddings
        >>> model = js.load_default_model()
        >>> embeddings(ModelAdapter(model), model.to_tokens("The capital of France is")).shape
        torch.Size([1, 6, 576])
    """
    seen: dict[str, Tensor] = {}

    def grab(x: Tensor, hook: Any) -> None:
        seen["x"] = x.detach().clone()
        raise _Stop

    # Gated to this thread: another thread's forward meanwhile must not stop at grab.
    hooks = ThreadGate().hooks([*fwd_hooks, (EMBED_HOOK, grab)])
    with (
        backstop() as net,
        torch.no_grad(),
        net(frozen(adapter.model)),
        net(temporary_hooks(adapter.model, hooks)),
        suppress(_Stop),
    ):
        adapter.model(tokens)
    if "x" not in seen:
        raise ScopeInputError(f"{EMBED_HOOK!r} never fired during the forward pass")
    return seen["x"]


def _final_state(
    adapter: ModelAdapter, tokens: Tensor, hooks: list[tuple[Any, Callable[..., Any]]]
) -> Tensor:
    """``y`` for every position of ``tokens``; the forward pass is cut short after it."""
    seen: dict[str, Tensor] = {}
    final = adapter.final_state

    def grab(x: Tensor, hook: Any = None) -> None:
        seen["y"] = x
        raise _Stop

    def pre_hook(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        grab(args[0])

    gate = ThreadGate()  # another thread's forward meanwhile must not stop at grab
    if final.hook is not None:
        hooks = [*hooks, (final.hook, grab)]
    with (
        backstop() as net,
        net(forward_pre_hook(final.module, gate.hook(pre_hook))),
        net(temporary_hooks(adapter.model, gate.hooks(hooks))),
        suppress(_Stop),
    ):
        adapter.model(tokens)
    if "y" not in seen:
        raise ScopeInputError(f"the final state {final.label!r} was never reached")
    return seen["y"]

"""The Jacobian Scopes: Semantic, Temperature, Fisher, and any direction.

Each scope chooses directions ``v`` in the space of the explained activation (by default
``y``, the final hidden state exactly as it enters the unembedding) and scores every input
token ``t`` by ``‖J_tᵀ v‖`` (Fisher: ``tr(J_tᵀ F J_t)``), where ``J_t`` is the Jacobian of
that activation with respect to the source activation of token ``t`` (by default its input
embedding). One forward pass and one batched backward pass, whatever the sources.

Every function takes one prompt or several, as TransformerLens does (``str | list[str] |
Tensor``): one prompt gives a :class:`~jacobian_scopes.ScopeResult`, several give a
:class:`~jacobian_scopes.ScopeResults`, computed ``batch_size`` prompts per forward pass
with the same numbers as one by one. The options every scope shares are the keys of
:class:`~jacobian_scopes.options.CallOptions`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, overload

from jaxtyping import Float
from torch import Tensor
from typing_extensions import Unpack

from jacobian_scopes import call
from jacobian_scopes.batching import per_prompt
from jacobian_scopes.inputs import split_prompts
from jacobian_scopes.options import (
    CallOptions,
    FisherMethodName,
    Prompt,
    SemanticMode,
    TargetLike,
    check_options,
)
from jacobian_scopes.results import ScopeResult, ScopeResults

PromptOrPrompts = Prompt | Sequence[Prompt]
#: Several prompts for certain: a list of texts, of token tensors or of id lists.
Prompts = list[str] | list[Tensor] | list[list[int]]
#: One prompt for certain (a tensor may hold one prompt or a batch of rows).
OnePrompt = str | list[int]


def _one_or_many(results: list[ScopeResult], many: bool) -> ScopeResult | ScopeResults:
    return ScopeResults(results) if many else results[0]


@overload
def semantic_scope(
    model: Any,
    prompt: OnePrompt,
    target: TargetLike | Sequence[TargetLike | None] | None = ...,
    *,
    mode: SemanticMode | None = ...,
    foil: TargetLike | Sequence[TargetLike | None] | None = ...,
    multi_token: bool = ...,
    return_vectors: bool = ...,
    **options: Unpack[CallOptions],
) -> ScopeResult: ...


@overload
def semantic_scope(
    model: Any,
    prompt: Prompts,
    target: TargetLike | Sequence[TargetLike | None] | None = ...,
    *,
    mode: SemanticMode | None = ...,
    foil: TargetLike | Sequence[TargetLike | None] | None = ...,
    multi_token: bool = ...,
    return_vectors: bool = ...,
    **options: Unpack[CallOptions],
) -> ScopeResults: ...


@overload
def semantic_scope(
    model: Any,
    prompt: PromptOrPrompts,
    target: TargetLike | Sequence[TargetLike | None] | None = ...,
    *,
    mode: SemanticMode | None = ...,
    foil: TargetLike | Sequence[TargetLike | None] | None = ...,
    multi_token: bool = ...,
    return_vectors: bool = ...,
    **options: Unpack[CallOptions],
) -> ScopeResult | ScopeResults: ...


def semantic_scope(
    model: Any,
    prompt: PromptOrPrompts,
    target: TargetLike | Sequence[TargetLike | None] | None = None,
    *,
    mode: SemanticMode | None = None,
    foil: TargetLike | Sequence[TargetLike | None] | None = None,
    multi_token: bool = False,
    return_vectors: bool = False,
    **options: Unpack[CallOptions],
) -> ScopeResult | ScopeResults:
    """Which input tokens drive the prediction of ``target``: ``S_t = ‖J_tᵀ v‖``.

    Args:
        model: a HookedTransformer or TransformerBridge.
        prompt: text (tokenised with the model's tokenizer, BOS prepended as TransformerLens
            does by default), token ids, or a list of prompts.
        target: the next token, as text (``" Paris"``) or an id; with several prompts, one
            per prompt (a list) or one for all. ``None``: the model's own top prediction at
            the explained position. With ``multi_token=True``, a continuation of several
            tokens (for several prompts shared by all, give it as a string or a tensor).
        mode: ``"logit"`` (default: the raw logit, ``v = w_target``, as in the paper) or
            ``"logprob"`` (``v = w_target − w̄``, invariant to weight processing). Multi-token
            targets always use the teacher-forced sum of log-probs of the continuation.
        foil: a second token; then ``v = w_target − w_foil`` (the logit difference). One per
            prompt or one for all, like ``target``.
        return_vectors: keep the raw vectors ``J_tᵀ v`` in ``result.vectors``.
        **options: ``position``, ``prepend_bos``, ``sources``, ``freeze``, ``fwd_hooks``,
            ``checkpoint``, ``batch_size``, ``verbose``: see
            :class:`~jacobian_scopes.options.CallOptions`.

    Returns:
        A :class:`~jacobian_scopes.ScopeResult` for one prompt, a
        :class:`~jacobian_scopes.ScopeResults` for several.

    Example:
        >>> import jacobian_scopes as js
        >>> model = js.load_default_model()
        >>> prompt = "Tom loves Korean food. He grew up in the South and goes to Columbia. He is a"
        >>> js.semantic_scope(model, prompt, " liberal").top(1)
        [(15, ' Columbia', ...)]
        >>> rs = js.semantic_scope(model, ["The capital of France is", "The capital of Italy is"],
        ...                        [" Paris", " Rome"])
        >>> [r.target.tokens for r in rs]
        [[' Paris'], [' Rome']]
    """
    opts = check_options("semantic_scope", options)
    prompts, many = split_prompts(prompt)
    n = len(prompts)
    targets: list[Any] = per_prompt(target, n, "target") if many else [target]
    foils: list[Any] = per_prompt(foil, n, "foil") if many else [foil]
    results = call.semantic(
        model,
        prompts,
        targets,
        mode=mode,
        foils=foils,
        multi_token=multi_token,
        return_vectors=return_vectors,
        options=opts,
    )
    return _one_or_many(results, many)


@overload
def temperature_scope(
    model: Any,
    prompt: OnePrompt,
    *,
    return_vectors: bool = ...,
    **options: Unpack[CallOptions],
) -> ScopeResult: ...


@overload
def temperature_scope(
    model: Any,
    prompt: Prompts,
    *,
    return_vectors: bool = ...,
    **options: Unpack[CallOptions],
) -> ScopeResults: ...


@overload
def temperature_scope(
    model: Any,
    prompt: PromptOrPrompts,
    *,
    return_vectors: bool = ...,
    **options: Unpack[CallOptions],
) -> ScopeResult | ScopeResults: ...


def temperature_scope(
    model: Any,
    prompt: PromptOrPrompts,
    *,
    return_vectors: bool = False,
    **options: Unpack[CallOptions],
) -> ScopeResult | ScopeResults:
    """Which input tokens set the model's confidence: ``S_t = ‖∂‖y‖/∂x_t‖``.

    ``y = β ŷ`` with ``β = ‖y‖`` acting as an inverse temperature of the next-token softmax;
    the scope pulls back ``v = ŷ`` (detached). It needs a final norm whose output norm
    depends on the input: a model whose final LayerNorm was folded (HookedTransformer's
    default ``from_pretrained``, or ``enable_compatibility_mode()`` on the Bridge) gets a
    :class:`~jacobian_scopes.errors.TemperatureUndefinedError`, never silent zeros.
    Arguments and options as in :func:`semantic_scope`.

    Example:
        >>> import jacobian_scopes as js
        >>> model = js.load_default_model()
        >>> r = js.temperature_scope(model, "12, 15, 19, 24, 30,")
        >>> r.scores.shape
        torch.Size([20])
    """
    opts = check_options("temperature_scope", options)
    prompts, many = split_prompts(prompt)
    results = call.temperature(model, prompts, return_vectors=return_vectors, options=opts)
    return _one_or_many(results, many)


@overload
def fisher_scope(
    model: Any,
    prompt: OnePrompt,
    *,
    method: FisherMethodName = ...,
    eps: float = ...,
    rank: int | None = ...,
    n_probes: int = ...,
    decompose: bool = ...,
    seed: int | None = ...,
    vjp_batch_size: int | None = ...,
    **options: Unpack[CallOptions],
) -> ScopeResult: ...


@overload
def fisher_scope(
    model: Any,
    prompt: Prompts,
    *,
    method: FisherMethodName = ...,
    eps: float = ...,
    rank: int | None = ...,
    n_probes: int = ...,
    decompose: bool = ...,
    seed: int | None = ...,
    vjp_batch_size: int | None = ...,
    **options: Unpack[CallOptions],
) -> ScopeResults: ...


@overload
def fisher_scope(
    model: Any,
    prompt: PromptOrPrompts,
    *,
    method: FisherMethodName = ...,
    eps: float = ...,
    rank: int | None = ...,
    n_probes: int = ...,
    decompose: bool = ...,
    seed: int | None = ...,
    vjp_batch_size: int | None = ...,
    **options: Unpack[CallOptions],
) -> ScopeResult | ScopeResults: ...


def fisher_scope(
    model: Any,
    prompt: PromptOrPrompts,
    *,
    method: FisherMethodName = "sketch",
    eps: float = 1e-3,
    rank: int | None = None,
    n_probes: int = 1,
    decompose: bool = False,
    seed: int | None = 0,
    vjp_batch_size: int | None = None,
    **options: Unpack[CallOptions],
) -> ScopeResult | ScopeResults:
    """Which input tokens move the whole next-token distribution: ``tr(J_tᵀ F J_t)``.

    ``F`` is the Fisher information of the softmax with respect to ``y``; the score is
    ``E_{j∼p} ‖∂ log p_j/∂x_t‖²`` (twice the expected KL under a unit perturbation of
    ``x_t``). See :mod:`jacobian_scopes.fisher` for the methods:

    * ``"sketch"`` (default): ``n_probes`` (default 1) random-sign probes of ``F``, after its
      top ``rank`` (default 0) eigen-directions taken exactly: unbiased, ``rank + n_probes``
      VJPs (the default: one, as cheap as Semantic), ``result.fisher.stderr`` per token
      (with one probe, a bound: √2 × the probe's own term). ``rank=8, n_probes=8`` (16 VJPs)
      comes within about 10 % of ``exact``; the default within about 50 %, with the token
      ranking kept (Spearman ≈ 0.96): see the speed page.
    * ``"exact"``: ``min(|S|, d)`` VJPs; with ``decompose=True``, one VJP per candidate next
      token and ``result.fisher.contributions`` (candidate × token).
    * ``"principal"``: the top ``rank`` (default 1) eigen-directions (the authors' default).

    ``eps`` is the probability mass left out of the candidate support (reported as
    ``result.fisher.tail_mass``). ``seed`` seeds the sketch's probes. ``vjp_batch_size`` is
    how many vector-Jacobian products one backward pass computes (default: sized to about
    256 MiB of gradients). Options as in :func:`semantic_scope`.

    Example:
        >>> import jacobian_scopes as js
        >>> model = js.load_default_model()
        >>> r = js.fisher_scope(model, "The capital of France is")
        >>> r.fisher.method, r.fisher.n_vjps
        ('sketch', 1)
    """
    opts = check_options("fisher_scope", options)
    prompts, _many = split_prompts(prompt)
    results = call.fisher(
        model,
        prompts,
        method=method,
        eps=eps,
        rank=rank,
        n_probes=n_probes,
        decompose=decompose,
        seed=seed,
        vjp_batch_size=vjp_batch_size,
        options=opts,
    )
    return _one_or_many(results, _many)


@overload
def scope(
    model: Any,
    prompt: OnePrompt,
    direction: Float[Tensor, "*feature"] | Sequence[Float[Tensor, "*feature"]],
    *,
    at: str | None = ...,
    return_vectors: bool = ...,
    **options: Unpack[CallOptions],
) -> ScopeResult: ...


@overload
def scope(
    model: Any,
    prompt: Prompts,
    direction: Float[Tensor, "*feature"] | Sequence[Float[Tensor, "*feature"]],
    *,
    at: str | None = ...,
    return_vectors: bool = ...,
    **options: Unpack[CallOptions],
) -> ScopeResults: ...


@overload
def scope(
    model: Any,
    prompt: PromptOrPrompts,
    direction: Float[Tensor, "*feature"] | Sequence[Float[Tensor, "*feature"]],
    *,
    at: str | None = ...,
    return_vectors: bool = ...,
    **options: Unpack[CallOptions],
) -> ScopeResult | ScopeResults: ...


def scope(
    model: Any,
    prompt: PromptOrPrompts,
    direction: Float[Tensor, "*feature"] | Sequence[Float[Tensor, "*feature"]],
    *,
    at: str | None = None,
    return_vectors: bool = False,
    **options: Unpack[CallOptions],
) -> ScopeResult | ScopeResults:
    """Attribute any direction ``v`` of a hidden activation: ``S_t = ‖J_tᵀ v‖``.

    ``direction`` lives in the space of the activation at hook ``at`` (default: ``y``, the
    final hidden state entering the unembedding): a probe, an SAE feature's encoder row, a
    steering vector. It is used as given (not normalised), so scores scale with it. Its
    shape is the activation's shape after (batch, pos): ``(d_model,)`` for the residual
    stream, ``(n_heads, d_head)`` for ``attn.hook_z``. With several prompts, one direction
    for all or a list with one per prompt. Options as in :func:`semantic_scope`; the
    sources must come before ``at``.

    Example:
        >>> import torch, jacobian_scopes as js
        >>> model = js.load_default_model()
        >>> v = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
        >>> r = js.scope(model, "Hello world", v, at="blocks.6.hook_resid_post")
        >>> r.params["at"], r.scores.shape
        ('blocks.6.hook_resid_post', torch.Size([3]))
    """
    opts = check_options("scope", options)
    prompts, many = split_prompts(prompt)
    if many and isinstance(direction, (list, tuple)):
        directions = per_prompt(direction, len(prompts), "direction")
    else:
        directions = [direction] * len(prompts)
    results = call.direction(
        model, prompts, directions, at=at, return_vectors=return_vectors, options=opts
    )
    return _one_or_many(results, many)

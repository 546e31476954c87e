"""The Jacobian Scopes: Semantic, Temperature, Fisher, and any direction.

Each scope chooses directions ``v`` in the space of the explained activation (by default
``y``, the final hidden state exactly as it enters the unembedding) and scores every input
token ``t`` by ``‖J_tᵀ v‖`` (Fisher: ``tr(J_tᵀ F J_t)``), where ``J_t`` is the Jacobian of
that activation with respect to the source activation of token ``t`` (by default its input
embedding). One forward pass and one batched backward pass per call, whatever the source.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from jacobian_scopes import fisher as fisher_math
from jacobian_scopes.adapter import ModelAdapter
from jacobian_scopes.engine import HookList, Pullback, Trace
from jacobian_scopes.errors import ScopeInputError, TemperatureUndefinedError
from jacobian_scopes.inputs import (
    Prompt,
    TargetLike,
    resolve_position,
    resolve_target,
    resolve_tokens,
    single_token,
)
from jacobian_scopes.results import FisherDetails, Prediction, ScopeResult, Target
from jacobian_scopes.sources import (
    SourcesLike,
    SourceSpec,
    arrange,
    resolve_freeze,
    resolve_sources,
)

N_TOP_PREDICTIONS = 5


@dataclass
class _Call:
    """What every scope call shares: the checked inputs and where to pull back to."""

    adapter: ModelAdapter
    tokens: Tensor  # (1, pos)
    position: int
    spec: SourceSpec
    freeze: list[str]
    freeze_kinds: list[str]
    fwd_hooks: HookList
    prepend_bos: bool | None
    checkpoint: bool | None = None

    def trace(self, tokens: Tensor, at: str | None = None) -> Trace:
        """A trace with this call's sources, hooks and freezing over ``tokens``: a padded
        batch whose rows share them (see :mod:`jacobian_scopes.batch`)."""
        return Trace(
            self.adapter,
            tokens,
            sources=self.spec.taps,
            at=at,
            fwd_hooks=self.fwd_hooks,
            freeze=self.freeze,
            checkpoint=self.checkpoint,
        )

    def first_order(self, pb: Pullback) -> Tensor:
        """The signed terms ⟨a_t, J_tᵀv⟩ of a single direction, in the result layout."""
        pairs = zip(self.spec.labels, self.spec.taps, strict=True)
        return arrange(self.spec, {label: pb.dots[tap][0, 0].cpu() for label, tap in pairs})[0]

    def squared(self, pb: Pullback) -> dict[str, Tensor]:
        """Squared norms (K, pos, ...) of the single prompt, keyed by the user's source labels
        (the tapped hook may differ, see :mod:`jacobian_scopes.sources`)."""
        pairs = zip(self.spec.labels, self.spec.taps, strict=True)
        return {label: pb.squared[tap][:, 0] for label, tap in pairs}


def _setup(
    model: Any,
    prompt: Prompt,
    *,
    position: int,
    prepend_bos: bool | None,
    sources: SourcesLike,
    freeze: Sequence[str],
    fwd_hooks: HookList,
    checkpoint: bool | None = None,
) -> _Call:
    adapter = ModelAdapter(model)
    tokens = resolve_tokens(adapter, prompt, prepend_bos)
    pos = resolve_position(tokens.shape[1], position)
    spec = resolve_sources(adapter, sources)
    if isinstance(freeze, str):
        freeze = (freeze,)
    return _Call(
        adapter=adapter,
        tokens=tokens,
        position=pos,
        spec=spec,
        freeze=resolve_freeze(adapter, freeze),
        freeze_kinds=list(freeze),
        fwd_hooks=list(fwd_hooks),
        prepend_bos=prepend_bos,
        checkpoint=checkpoint,
    )


def _predictions(
    adapter: ModelAdapter, logits_row: Tensor, k: int = N_TOP_PREDICTIONS
) -> list[Prediction]:
    probs = torch.softmax(logits_row.float(), dim=-1)
    top = torch.topk(probs, min(k, probs.numel()))
    strs = adapter.to_str_tokens(top.indices.cpu())
    return [
        Prediction(int(i), s, float(p))
        for i, s, p in zip(top.indices.tolist(), strs, top.values, strict=True)
    ]


def _vectors(call: _Call, pb: Pullback) -> Tensor | dict[str, Tensor] | None:
    if not pb.vectors:
        return None
    pairs = zip(call.spec.labels, call.spec.taps, strict=True)
    by_label = {label: pb.vectors[tap][0, 0].cpu() for label, tap in pairs}
    if call.spec.layout == "embed":
        return by_label[call.spec.labels[0]]
    return by_label


def _result(
    call: _Call,
    scope: str,
    scores: dict[str, Tensor],
    logits: Tensor,
    tokens: Tensor,
    positions: list[int],
    params: dict[str, Any],
    **extra: Any,
) -> ScopeResult:
    arranged, axes, labels = arrange(call.spec, {k: v.detach().cpu() for k, v in scores.items()})
    adapter = call.adapter
    bos_id = getattr(getattr(adapter.model, "tokenizer", None), "bos_token_id", None)
    prepended = call.prepend_bos
    if prepended is None:
        prepended = bool(getattr(adapter.cfg, "default_prepend_bos", True))
    base_params = {
        "position": positions[0],
        "sources": list(call.spec.labels),
        "freeze": call.freeze_kinds,
        "interventions": [str(name) for name, _ in call.fwd_hooks],
    }
    return ScopeResult(
        scope=scope,
        scores=arranged,
        tokens=tokens[0].detach().cpu(),
        str_tokens=adapter.to_str_tokens(tokens[0].cpu()),
        position=positions[0],
        positions=positions,
        top_predictions=_predictions(adapter, logits[0, positions[0]].detach()),
        params={**base_params, **params},
        processing=adapter.processing_state(),
        model_name=adapter.name,
        score_axes=axes,
        source_labels=labels,
        bos=bool(bos_id is not None and int(tokens[0, 0]) == int(bos_id)),
        **extra,
    )


# --------------------------------------------------------------------------- Semantic
@dataclass
class SemanticTarget:
    """A checked Semantic target: token ids, an optional foil, and the mode used."""

    ids: list[int]
    mode: str  # "logit", "logprob" or "contrast"
    foil_id: int | None = None


def semantic_target(
    adapter: ModelAdapter,
    target: TargetLike,
    *,
    mode: str | None = None,
    foil: TargetLike | None = None,
    multi_token: bool = False,
) -> SemanticTarget:
    """Check a Semantic target and its options (shared by the single and batched scopes)."""
    if mode not in (None, "logit", "logprob"):
        raise ScopeInputError(f"mode must be 'logit' or 'logprob', got {mode!r}")
    if multi_token:
        ids = resolve_target(adapter, target)
        if foil is not None:
            raise ScopeInputError("a foil (contrast) needs a single-token target")
        if mode == "logit":
            raise ScopeInputError(
                "multi-token targets are explained by the sum of their log-probs; "
                "leave mode unset or use mode='logprob'"
            )
        mode_used = "logprob"
    else:
        ids = [single_token(adapter, target)]
        mode_used = mode or "logit"
    foil_id = single_token(adapter, foil, what="foil") if foil is not None else None
    if foil_id is not None:
        mode_used = "contrast"
    return SemanticTarget(ids, mode_used, foil_id)


def extend_for_target(call: _Call, target: SemanticTarget) -> list[int]:
    """Append a multi-token target's continuation (teacher forcing) to ``call.tokens``;
    returns the explained positions, one per target token."""
    tokens = call.tokens
    if len(target.ids) == 1:
        return [call.position]
    if call.position != tokens.shape[1] - 1:
        raise ScopeInputError(
            "a multi-token target continues the prompt, so it is explained from the last "
            "position; trim the prompt instead of passing position"
        )
    extra = torch.tensor([target.ids[:-1]], dtype=tokens.dtype, device=tokens.device)
    tokens = torch.cat([tokens, extra], dim=1)
    n_ctx = call.adapter.n_ctx
    if n_ctx is not None and tokens.shape[1] > n_ctx:
        raise ScopeInputError("the prompt plus the target is longer than the model's context")
    call.tokens = tokens
    return list(range(call.position, call.position + len(target.ids)))


def semantic_directions(
    adapter: ModelAdapter, target: SemanticTarget, logits_rows: Float[Tensor, "P vocab"]
) -> Float[Tensor, "P d_model"]:
    """The direction at each explained position: ``w_target`` (logit), ``w_target − w̄``
    (logprob, ``w̄`` under that position's softmax) or ``w_target − w_foil`` (contrast).
    ``logits_rows`` are the logits at the explained positions (only used for logprob)."""
    W_U = adapter.W_U
    dirs = W_U[:, target.ids].T.clone()  # (P, d)
    if target.foil_id is not None:
        dirs = dirs - W_U[:, target.foil_id]
    elif target.mode == "logprob":
        probs = torch.softmax(logits_rows.float(), dim=-1)
        dirs = dirs - (probs @ W_U.float().T).to(dirs.dtype)
    return dirs


def target_info(adapter: ModelAdapter, target: SemanticTarget) -> Target:
    foil = target.foil_id
    return Target(
        ids=list(target.ids),
        tokens=adapter.to_str_tokens(torch.tensor(target.ids)),
        mode=target.mode,
        foil_id=foil,
        foil=adapter.to_str_tokens(torch.tensor([foil]))[0] if foil is not None else None,
    )


def semantic_scope(
    model: Any,
    prompt: Prompt,
    target: TargetLike,
    *,
    mode: str | None = None,
    foil: TargetLike | None = None,
    multi_token: bool = False,
    position: int = -1,
    prepend_bos: bool | None = None,
    sources: SourcesLike = None,
    freeze: Sequence[str] = (),
    fwd_hooks: HookList = (),
    return_vectors: bool = False,
    checkpoint: bool | None = None,
) -> ScopeResult:
    """Which input tokens drive the prediction of ``target``: ``S_t = ‖J_tᵀ v‖``.

    Args:
        model: a HookedTransformer or TransformerBridge.
        prompt: text (tokenised with the model's tokenizer, BOS prepended as TransformerLens
            does by default) or token ids, 1-D or (1, pos).
        target: the next token, as text (``" Paris"``) or an id. With ``multi_token=True``,
            a continuation of several tokens.
        mode: ``"logit"`` (default: the raw logit, ``v = w_target``, as in the paper) or
            ``"logprob"`` (``v = w_target − w̄``, invariant to weight processing). Multi-token
            targets always use the teacher-forced sum of log-probs of the continuation.
        foil: a second token; then ``v = w_target − w_foil`` (the logit difference).
        position: the position whose next-token prediction is explained (default: last).
        prepend_bos: passed to ``model.to_tokens`` for string prompts.
        sources: where the scores are taken (default: input embeddings). See
            :func:`jacobian_scopes.sources.resolve_sources`.
        freeze: linearised variant: ``"norm_scale"`` and/or ``"attn_pattern"`` are detached.
        fwd_hooks: extra TransformerLens forward hooks ``[(name, fn)]`` (an ablation, a
            patch); the scope is computed on the intervened run.
        return_vectors: keep the raw vectors ``J_tᵀ v`` in ``result.vectors``.
        checkpoint: recompute each block in the backward pass to save memory on long
            prompts (same scores, one more forward pass). ``None``: automatic above
            about 1 GiB of attention patterns (SmolLM2: ~1.3k tokens). See
            :class:`jacobian_scopes.Trace`.

    Example:
        >>> from jacobian_scopes import load_default_model, semantic_scope
        >>> model = load_default_model()                                    # doctest: +SKIP
        >>> prompt = "Tom loves Korean food. He grew up in the South and goes to Columbia. He is a"
        >>> semantic_scope(model, prompt, " liberal").top(1)                # doctest: +SKIP
        [(15, ' Columbia', 11.98...)]
    """
    from jacobian_scopes import batch  # one prompt is a batch of one (batch builds on this module)

    if target is None:
        raise ScopeInputError("target is required (a token string or id)")
    (result,) = batch.semantic_scope_batch(
        model,
        [prompt],
        [target],
        mode=mode,
        foil=[foil],
        multi_token=multi_token,
        position=[position],
        prepend_bos=prepend_bos,
        sources=sources,
        freeze=freeze,
        fwd_hooks=fwd_hooks,
        return_vectors=return_vectors,
        checkpoint=checkpoint,
    )
    return result


# ------------------------------------------------------------------------ Temperature
def temperature_direction(
    y: Float[Tensor, "pos d_model"], position: int
) -> Float[Tensor, " d_model"]:
    """``ŷ = y/‖y‖`` at ``position`` (detached), after checking that ‖y‖ varies at all.

    ``y`` holds the final states of one prompt's real tokens: a norm that is the same at
    every position means the final norm makes ‖y‖ input-independent.
    """
    y = y.detach()
    norms = y.float().norm(dim=-1)
    if norms.numel() > 1 and float((norms.max() - norms.min()) / norms.max()) < 1e-5:
        raise TemperatureUndefinedError(_TEMPERATURE_HELP)
    return y[position] / y[position].norm()


def temperature_scope(
    model: Any,
    prompt: Prompt,
    *,
    position: int = -1,
    prepend_bos: bool | None = None,
    sources: SourcesLike = None,
    freeze: Sequence[str] = (),
    fwd_hooks: HookList = (),
    return_vectors: bool = False,
    checkpoint: bool | None = None,
) -> ScopeResult:
    """Which input tokens set the model's confidence: ``S_t = ‖∂‖y‖/∂x_t‖``.

    ``y = β ŷ`` with ``β = ‖y‖`` acting as an inverse temperature of the next-token softmax;
    the scope pulls back ``v = ŷ`` (detached). It needs a final norm whose output norm
    depends on the input: a model whose final LayerNorm was folded (HookedTransformer's
    default ``from_pretrained``, or ``enable_compatibility_mode()`` on the Bridge) gets a
    :class:`TemperatureUndefinedError`, never silent zeros. Arguments as in
    :func:`semantic_scope`.

    Example:
        >>> r = temperature_scope(load_default_model(), "12, 15, 19, 24, 30,")  # doctest: +SKIP
        >>> r.scores.shape                                                      # doctest: +SKIP
        torch.Size([11])
    """
    from jacobian_scopes import batch

    (result,) = batch.temperature_scope_batch(
        model,
        [prompt],
        position=[position],
        prepend_bos=prepend_bos,
        sources=sources,
        freeze=freeze,
        fwd_hooks=fwd_hooks,
        return_vectors=return_vectors,
        checkpoint=checkpoint,
    )
    return result


_TEMPERATURE_HELP = (
    "the Temperature scope is identically zero on this model: the norm of the final hidden "
    "state cannot depend on the input, because the final norm has no gain and bias of its "
    "own (LayerNorm folded into the unembedding, or a random-init model with unit gains). "
    "Load the model without folding: HookedTransformer.from_pretrained_no_processing(...) "
    "or from_pretrained(..., fold_ln=False), or a TransformerBridge without "
    "enable_compatibility_mode() (or with enable_compatibility_mode(fold_ln=False))."
)


# ----------------------------------------------------------------------------- Fisher
@dataclass
class FisherOptions:
    """The Fisher scope's options, checked once and shared by single and batched calls."""

    method: str = "sketch"
    eps: float = 1e-3
    rank: int | None = None
    n_probes: int = 1
    decompose: bool = False
    seed: int | None = 0

    def plan(self, adapter: ModelAdapter, probs: Float[Tensor, " vocab"]) -> fisher_math.FisherPlan:
        """The rows for one explained position. The sketch's probes come from a generator
        seeded afresh with ``seed`` for every position, so a prompt gets the same probes
        whether it is explained alone, in a batch, or as one step of a generation."""
        rank = 1 if self.rank is None else self.rank
        generator = None if self.seed is None else torch.Generator().manual_seed(self.seed)
        return fisher_math.plan(
            adapter.W_U,
            probs,
            method=self.method,
            eps=self.eps,
            rank=rank,
            n_probes=self.n_probes,
            decompose=self.decompose,
            generator=generator,
        )

    def check(self) -> None:
        """Raise ScopeInputError for bad options now (the checks live in fisher.plan; a
        two-token toy distribution runs them at no cost)."""
        toy = FisherOptions(self.method, self.eps, self.rank, self.n_probes, self.decompose, None)
        fisher_math.plan(
            torch.eye(2),
            torch.tensor([0.5, 0.5]),
            method=toy.method,
            eps=toy.eps,
            rank=toy.params()["rank"],
            n_probes=toy.n_probes,
            decompose=toy.decompose,
        )

    def keep_each(self, plan: fisher_math.FisherPlan) -> bool:
        return self.decompose or plan.n_probes > 0

    def params(self) -> dict[str, Any]:
        rank = 1 if self.rank is None else self.rank
        return {
            "method": self.method,
            "eps": self.eps,
            "rank": rank,
            "n_probes": self.n_probes,
            "decompose": self.decompose,
            "seed": self.seed,
        }


def fisher_combine(
    spec: SourceSpec,
    plan: fisher_math.FisherPlan,
    squared: dict[str, Tensor],
    decompose: bool = False,
) -> tuple[dict[str, Tensor], Tensor | None, Tensor | None]:
    """Scores, standard errors and per-candidate contributions from the squared norms
    ``(K, pos, ...)`` of a plan's rows (K = the plan's rows, or 1 when they were summed)."""
    stderr = None
    contributions = None
    if plan.n_probes > 0:
        k = plan.n_exact
        scores = {s: sq[:k].sum(0) + sq[k:].mean(0) for s, sq in squared.items()}
        if plan.n_probes > 1:
            spread = {s: sq[k:].std(0) / plan.n_probes**0.5 for s, sq in squared.items()}
            stderr = arrange(spec, {s: v.cpu() for s, v in spread.items()})[0]
        else:
            # One Gaussian probe of tr M has sd √2‖M‖_F ≤ √2 tr M: bound it by its own value.
            spread = {s: sq[k:].sum(0) * 2**0.5 for s, sq in squared.items()}
            stderr = arrange(spec, {s: v.cpu() for s, v in spread.items()})[0]
    else:
        scores = {s: sq.sum(0) for s, sq in squared.items()}
    if decompose:
        contributions = arrange(spec, {s: sq.cpu() for s, sq in squared.items()})[0]
    return scores, stderr, contributions


def fisher_details(
    adapter: ModelAdapter,
    options: FisherOptions,
    plan: fisher_math.FisherPlan,
    probs: Float[Tensor, " vocab"],
    stderr: Tensor | None,
    contributions: Tensor | None,
) -> FisherDetails:
    ids = plan.support_ids.tolist() if plan.per_candidate else plan.support_ids[:50].tolist()
    return FisherDetails(
        method=plan.method,
        eps=options.eps,
        n_vjps=int(plan.rows.shape[0]),
        rank=None if plan.method == "exact" else plan.n_exact,
        n_probes=plan.n_probes,
        support_size=int(plan.support_ids.numel()),
        tail_mass=plan.tail_mass,
        trace_full=plan.trace_full,
        trace_support=plan.trace_support,
        captured=1.0 if plan.method == "exact" else plan.captured,
        stderr=stderr,
        candidate_ids=ids,
        candidate_tokens=adapter.to_str_tokens(torch.tensor(ids)) if ids else [],
        candidate_probs=[float(probs[i]) for i in ids],
        contributions=contributions,
    )


def fisher_scope(
    model: Any,
    prompt: Prompt,
    *,
    method: str = "sketch",
    eps: float = 1e-3,
    rank: int | None = None,
    n_probes: int = 1,
    decompose: bool = False,
    seed: int | None = 0,
    batch_size: int | None = None,
    position: int = -1,
    prepend_bos: bool | None = None,
    sources: SourcesLike = None,
    freeze: Sequence[str] = (),
    fwd_hooks: HookList = (),
    checkpoint: bool | None = None,
) -> ScopeResult:
    """Which input tokens move the whole next-token distribution: ``tr(J_tᵀ F J_t)``.

    ``F`` is the Fisher information of the softmax with respect to ``y``; the score is
    ``E_{j∼p} ‖∂ log p_j/∂x_t‖²`` (twice the expected KL under a unit perturbation of
    ``x_t``). See :mod:`jacobian_scopes.fisher` for the methods:

    * ``"sketch"`` (default): the top ``rank`` (default 1) eigen-directions of ``F`` exactly
      plus ``n_probes`` (default 1) random probes of the rest: unbiased, ``rank + n_probes``
      VJPs (2 by default, about 1.5× a Semantic scope's cost), and ``result.fisher.stderr``
      per token (with one probe, the bound √2 × its own term: the sd of one Gaussian
      probe of tr(M) is √2‖M‖_F ≤ √2 tr M). More probes for a tighter estimate; on SmolLM2,
      2 VJPs rank tokens like the exact trace with Spearman 0.95 (rel. error ~0.35),
      16 VJPs (rank=8, n_probes=8) with 0.99 (~0.09).
    * ``"exact"``: ``min(|S|, d)`` VJPs; with ``decompose=True``, one VJP per candidate next
      token and ``result.fisher.contributions`` (candidate × token).
    * ``"principal"``: the top ``rank`` (default 1) eigen-directions (the authors' default).

    ``eps`` is the probability mass left out of the candidate support (reported as
    ``result.fisher.tail_mass``). ``batch_size`` is how many VJPs run at once. Other
    arguments as in :func:`semantic_scope`.

    Example:
        >>> prompt = "French: lentille jacobienne. English: Jacobian"
        >>> r = fisher_scope(model, prompt)                 # doctest: +SKIP
        >>> r.fisher.method, r.fisher.n_vjps                # doctest: +SKIP
        ('sketch', 2)
    """
    from jacobian_scopes import batch

    (result,) = batch.fisher_scope_batch(
        model,
        [prompt],
        method=method,
        eps=eps,
        rank=rank,
        n_probes=n_probes,
        decompose=decompose,
        seed=seed,
        vjp_batch_size=batch_size,
        position=[position],
        prepend_bos=prepend_bos,
        sources=sources,
        freeze=freeze,
        fwd_hooks=fwd_hooks,
        checkpoint=checkpoint,
    )
    return result


# ---------------------------------------------------------------------------- General
def scope(
    model: Any,
    prompt: Prompt,
    direction: Float[Tensor, "*feature"],
    *,
    at: str | None = None,
    position: int = -1,
    prepend_bos: bool | None = None,
    sources: SourcesLike = None,
    freeze: Sequence[str] = (),
    fwd_hooks: HookList = (),
    return_vectors: bool = False,
    checkpoint: bool | None = None,
) -> ScopeResult:
    """Attribute any direction ``v`` of a hidden activation: ``S_t = ‖J_tᵀ v‖``.

    ``direction`` lives in the space of the activation at hook ``at`` (default: ``y``, the
    final hidden state entering the unembedding): a probe, an SAE feature's encoder row, a
    steering vector. It is used as given (not normalised), so scores scale with it. Its
    shape is the activation's shape after (batch, pos): ``(d_model,)`` for the residual
    stream, ``(n_heads, d_head)`` for ``attn.hook_z``. Other arguments as in
    :func:`semantic_scope`.

    Example:
        >>> v = torch.randn(model.cfg.d_model)                                      # doctest: +SKIP
        >>> scope(model, "Hello world", v, at="blocks.6.hook_resid_post").scores   # doctest: +SKIP
    """
    from jacobian_scopes import batch

    (result,) = batch.scope_batch(
        model,
        [prompt],
        [direction],
        at=at,
        position=[position],
        prepend_bos=prepend_bos,
        sources=sources,
        freeze=freeze,
        fwd_hooks=fwd_hooks,
        return_vectors=return_vectors,
        checkpoint=checkpoint,
    )
    return result

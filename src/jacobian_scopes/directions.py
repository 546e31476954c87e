"""What each scope pulls back: its directions, checked options, and how scores combine.

A scope is a choice of directions ``v`` in the space of the explained activation (by
default ``y``, the final hidden state as it enters the unembedding); the engine then
computes ``‖J_tᵀ v‖`` for every token. This module holds only that choice, as functions of
the unembedding and of tensors of one forward pass: no model is run here.

Example:
    >>> import torch
    >>> from jacobian_scopes.directions import temperature_direction
    >>> temperature_direction(torch.tensor([[3.0, 4.0], [1.0, 0.0]]), position=0)
    tensor([0.6000, 0.8000])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from jacobian_scopes import fisher as fisher_math
from jacobian_scopes.adapter import ModelAdapter
from jacobian_scopes.errors import ScopeInputError, TemperatureUndefinedError
from jacobian_scopes.inputs import resolve_target, single_token
from jacobian_scopes.options import FisherMethodName, SemanticMode, TargetLike
from jacobian_scopes.results import FisherDetails, Target
from jacobian_scopes.sources import SourceSpec, arrange

TEMPERATURE_HELP = (
    "the Temperature scope is identically zero on this model: the norm of the final hidden "
    "state cannot depend on the input, because the final norm has no gain and bias of its "
    "own (LayerNorm folded into the unembedding, or a random-init model with unit gains). "
    "Load the model without folding: HookedTransformer.from_pretrained_no_processing(...) "
    "or from_pretrained(..., fold_ln=False), or a TransformerBridge without "
    "enable_compatibility_mode() (or with enable_compatibility_mode(fold_ln=False))."
)


# --------------------------------------------------------------------------- Semantic
@dataclass
class SemanticTarget:
    """A checked Semantic target: token ids, an optional foil, and the mode used."""

    ids: list[int]
    mode: str  # "logit", "logprob" or "contrast"
    foil_id: int | None = None


def check_mode(mode: object) -> None:
    if mode not in (None, "logit", "logprob"):
        raise ScopeInputError(f"mode must be 'logit' or 'logprob', got {mode!r}")


def semantic_target(
    adapter: ModelAdapter,
    target: TargetLike,
    *,
    mode: SemanticMode | None = None,
    foil: TargetLike | None = None,
    multi_token: bool = False,
) -> SemanticTarget:
    """Check a Semantic target and its options."""
    check_mode(mode)
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
        if foil_id == ids[0]:
            raise ScopeInputError(
                f"foil {foil!r} is the target itself: the logit difference would be zero for "
                "every token; choose another foil"
            )
        mode_used = "contrast"
    return SemanticTarget(ids, mode_used, foil_id)


def extend_for_target(
    adapter: ModelAdapter, tokens: Int[Tensor, "1 pos"], position: int, target: SemanticTarget
) -> tuple[Int[Tensor, "1 total"], list[int]]:
    """Append a multi-token target's continuation (teacher forcing) to ``tokens``; returns
    the tokens and the explained positions, one per target token."""
    if len(target.ids) == 1:
        return tokens, [position]
    if position != tokens.shape[1] - 1:
        raise ScopeInputError(
            "a multi-token target continues the prompt, so it is explained from the last "
            "position; trim the prompt instead of passing position"
        )
    extra = torch.tensor([target.ids[:-1]], dtype=tokens.dtype, device=tokens.device)
    tokens = torch.cat([tokens, extra], dim=1)
    n_ctx = adapter.n_ctx
    if n_ctx is not None and tokens.shape[1] > n_ctx:
        raise ScopeInputError("the prompt plus the target is longer than the model's context")
    return tokens, list(range(position, position + len(target.ids)))


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
    """The :class:`~jacobian_scopes.results.Target` a result records."""
    foil = target.foil_id
    return Target(
        ids=list(target.ids),
        tokens=adapter.to_str_tokens(torch.tensor(target.ids)),
        mode=target.mode,
        foil_id=foil,
        foil=adapter.to_str_tokens(torch.tensor([foil]))[0] if foil is not None else None,
    )


# ------------------------------------------------------------------------ Temperature
def check_temperature(adapter: ModelAdapter) -> None:
    """Refuse a model whose ‖y‖ cannot depend on the input (see :data:`TEMPERATURE_HELP`)."""
    if adapter.final_norm_is_constant():
        raise TemperatureUndefinedError(TEMPERATURE_HELP)


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
        raise TemperatureUndefinedError(TEMPERATURE_HELP)
    return y[position] / y[position].norm()


# ----------------------------------------------------------------------------- Fisher
@dataclass
class FisherOptions:
    """The Fisher scope's options, checked once (:meth:`check`) and shared by every prompt."""

    method: FisherMethodName = "sketch"
    eps: float = 1e-3
    rank: int | None = None
    n_probes: int = fisher_math.DEFAULT_N_PROBES
    decompose: bool = False
    seed: int | None = 0

    @property
    def resolved_rank(self) -> int:
        return self.rank if self.rank is not None else fisher_math.default_rank(self.method)

    def plan(self, adapter: ModelAdapter, probs: Float[Tensor, " vocab"]) -> fisher_math.FisherPlan:
        """The rows for one explained position. The sketch's probes come from a generator
        seeded afresh with ``seed`` for every position, so a prompt gets the same probes
        whether it is explained alone, among others, or as one step of a generation."""
        generator = None if self.seed is None else torch.Generator().manual_seed(self.seed)
        return fisher_math.plan(
            adapter.W_U,
            probs,
            method=self.method,
            eps=self.eps,
            rank=self.resolved_rank,
            n_probes=self.n_probes,
            decompose=self.decompose,
            generator=generator,
        )

    def check(self) -> None:
        """Raise ScopeInputError for bad options now, before any forward pass."""
        _check_int("rank", self.rank, minimum=0, optional=True)
        _check_int("n_probes", self.n_probes, minimum=0)
        _check_int("seed", self.seed, minimum=None, optional=True)
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)):
            raise ScopeInputError(f"eps must be a number in [0, 1), got {self.eps!r}")
        # The remaining checks live in fisher.plan; a two-token toy distribution runs them
        # at no cost.
        fisher_math.plan(
            torch.eye(2),
            torch.tensor([0.5, 0.5]),
            method=self.method,
            eps=self.eps,
            rank=self.resolved_rank,
            n_probes=self.n_probes,
            decompose=self.decompose,
        )

    def keep_each(self, plan: fisher_math.FisherPlan) -> bool:
        return self.decompose or plan.n_probes > 0

    def params(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "eps": self.eps,
            "rank": self.resolved_rank,
            "n_probes": self.n_probes,
            "decompose": self.decompose,
            "seed": self.seed,
        }


def _check_int(name: str, value: object, *, minimum: int | None, optional: bool = False) -> None:
    if value is None and optional:
        return
    ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok or (minimum is not None and value < minimum):  # type: ignore[operator]
        bound = "" if minimum is None else f" >= {minimum}"
        raise ScopeInputError(f"{name} must be an int{bound}, got {value!r}")


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
            # One random-sign probe of tr M has sd ≤ √2‖M‖_F ≤ √2 tr M: bound it by its own
            # value.
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
    """The :class:`~jacobian_scopes.results.FisherDetails` a result records."""
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


# ---------------------------------------------------------------------------- General
def check_direction(direction: Any) -> Tensor:
    """A user's direction as a finite float tensor."""
    if not isinstance(direction, Tensor):
        try:
            direction = torch.as_tensor(direction)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ScopeInputError(f"direction must be a float tensor, got {direction!r}") from exc
    if not direction.is_floating_point():
        raise ScopeInputError(f"direction must be a float tensor, got dtype {direction.dtype}")
    if not torch.isfinite(direction).all():
        raise ScopeInputError("direction contains NaN or inf")
    return direction

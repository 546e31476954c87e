"""Scopes for many prompts at once: right-padded batches, one forward and one backward each.

Each prompt is tokenised on its own (exactly as the single-prompt scopes do, BOS included),
then the prompts of a batch are *right*-padded to a common length. The models are causal,
so every real token attends only to real tokens before it: each explained position sees
exactly the computation of its unpadded prompt, and the gradient with respect to a padded
position is exactly zero. No attention mask and no position shift are needed (left padding
would need both, and HookedTransformer and the Bridge handle masks differently). Each
row's result is trimmed to its own tokens, so it has the shape, the fields and (up to
floating-point rounding of differently shaped matrix products) the numbers of the
one-by-one result.

Prompts are sorted by length (longest first) and grouped so that padding stays under half
of each batch (:func:`group_by_length`); the results come back in the order of the prompts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from jacobian_scopes.adapter import ModelAdapter
from jacobian_scopes.engine import HookList, Pullback, Trace
from jacobian_scopes.errors import ScopeInputError, TemperatureUndefinedError
from jacobian_scopes.fisher import FisherPlan
from jacobian_scopes.inputs import Prompt, TargetLike
from jacobian_scopes.results import ScopeResult
from jacobian_scopes.scopes import (
    _TEMPERATURE_HELP,
    FisherOptions,
    SemanticTarget,
    _Call,
    _result,
    _setup,
    _vectors,
    extend_for_target,
    fisher_combine,
    fisher_details,
    semantic_directions,
    semantic_target,
    target_info,
    temperature_direction,
)
from jacobian_scopes.sources import SourcesLike

DEFAULT_BATCH_SIZE = 8
# A batch holds at least this share of real (not padded) tokens.
MIN_FILL = 0.5


@dataclass
class _Row:
    """One prompt of a batch: what to pull back, and what its result needs afterwards."""

    call: _Call
    positions: list[int]
    directions: Tensor  # (K, P, *feature), K and P may differ between rows
    plan: FisherPlan | None = None
    target: SemanticTarget | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# A scope's batch step: given the open trace, its (detached) logits and the row index,
# build the row's directions.
Build = Callable[[Trace, Tensor, int, _Call], _Row]


def pad_batch(
    rows: Sequence[Int[Tensor, "1 pos"]], pad_id: int
) -> tuple[Int[Tensor, "batch max_pos"], list[int]]:
    """Right-pad token rows to a common length; returns the batch and each row's length.

    Example:
        >>> pad_batch([torch.tensor([[1, 2, 3]]), torch.tensor([[1, 5]])], pad_id=0)
        (tensor([[1, 2, 3],
                [1, 5, 0]]), [3, 2])
    """
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
    """A list or tuple gives one value per prompt; anything else is shared by all."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ScopeInputError(
                f"{what} has {len(value)} entries for {n} prompts; give one per prompt, or a "
                "single value (a string, an int or a tensor) shared by all"
            )
        return list(value)
    return [value] * n


def _check_prompts(prompts: Sequence[Prompt], batch_size: int) -> list[Prompt]:
    if isinstance(prompts, (str, Tensor)):
        raise ScopeInputError(
            "the batched scopes take a list of prompts; for one prompt use the scope itself "
            "(e.g. semantic_scope), or wrap it in a list"
        )
    prompts = list(prompts)
    if not prompts:
        raise ScopeInputError("the list of prompts is empty")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ScopeInputError(f"batch_size must be a positive int, got {batch_size!r}")
    return prompts


def _row_view(pb: Pullback, b: int, n_tokens: int, k: int) -> Pullback:
    """Row ``b`` of a batched pullback, trimmed to its own directions and tokens."""

    def cut(t: Tensor) -> Tensor:
        return t[:k, b : b + 1, :n_tokens]

    return Pullback(
        squared={n: cut(t) for n, t in pb.squared.items()},
        vectors={n: cut(t) for n, t in pb.vectors.items()},
        dots={n: cut(t) for n, t in pb.dots.items()},
        unused=pb.unused,
    )


def _stack_directions(rows: list[_Row]) -> tuple[Tensor, Tensor]:
    """Positions (B, P) and directions (K, B, P, *feature), padded with zero directions.

    A zero direction adds nothing to the pulled-back scalar ``Σ vₚ·a[p]``, so rows with
    fewer directions (Fisher plans differ per prompt) or fewer explained positions
    (multi-token targets) are padded with zeros at a position of their own.
    """
    n_k = max(r.directions.shape[0] for r in rows)
    n_p = max(len(r.positions) for r in rows)
    first = rows[0].directions
    dirs = first.new_zeros((n_k, len(rows), n_p, *first.shape[2:]))
    positions = torch.zeros((len(rows), n_p), dtype=torch.long)
    for b, r in enumerate(rows):
        k, p = r.directions.shape[:2]
        dirs[:k, b, :p] = r.directions
        positions[b, :p] = torch.tensor(r.positions)
        positions[b, p:] = r.positions[-1]
    return positions, dirs


def group_by_length(
    lengths: Sequence[int], batch_size: int, min_fill: float = MIN_FILL
) -> list[tuple[int, int]]:
    """Split lengths sorted longest first into (start, stop) groups of at most
    ``batch_size``, starting a new group rather than let padding exceed ``1 − min_fill`` of
    a batch (one long prompt among short ones would otherwise multiply the work).

    Example:
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


def _run(
    calls: list[_Call],
    build: Build,
    finish: Callable[[_Row, Pullback, Tensor], ScopeResult],
    *,
    batch_size: int,
    at: str | None = None,
    keep_each: Callable[[list[_Row]], bool] = lambda rows: True,
    keep_vectors: bool = False,
    keep_dots: bool = False,
    vjp_batch_size: int | None = None,
    progress: bool = False,
    desc: str = "prompts",
) -> list[ScopeResult]:
    """Group the calls by length, run one trace per group, and finish each row."""
    from tqdm.auto import tqdm

    order = sorted(range(len(calls)), key=lambda i: -calls[i].tokens.shape[1])
    results: list[ScopeResult | None] = [None] * len(calls)
    first = calls[0]
    pad = pad_id(first.adapter)
    groups = group_by_length([calls[i].tokens.shape[1] for i in order], batch_size)
    with tqdm(total=len(calls), desc=desc, unit="prompt", disable=not progress) as bar:
        for start, stop in groups:
            group = [calls[i] for i in order[start:stop]]
            tokens, lengths = pad_batch([c.tokens for c in group], pad)
            with first.trace(tokens, at=at) as tr:
                assert tr.logits is not None
                logits = tr.logits.detach()
                rows = [build(tr, logits, b, c) for b, c in enumerate(group)]
                positions, dirs = _stack_directions(rows)
                pb = tr.pullback(
                    positions,
                    dirs,
                    batch_size=vjp_batch_size,
                    keep_each=keep_each(rows),
                    keep_vectors=keep_vectors,
                    keep_dots=keep_dots,
                )
            summed = next(iter(pb.squared.values())).shape[0] == 1
            for b, (row, n) in enumerate(zip(rows, lengths, strict=True)):
                k = 1 if summed else row.directions.shape[0]
                view = _row_view(pb, b, n, k)
                results[order[start + b]] = finish(row, view, logits[b : b + 1, :n])
            bar.update(len(group))
    return [r for r in results if r is not None]


def _one_direction(
    row: _Row, scope: str, pb: Pullback, logits: Tensor, params: dict[str, Any], **extra: Any
) -> ScopeResult:
    """The result of a scope with one direction per explained position: ``‖J_tᵀv‖``, with
    the raw vectors when kept and the signed first-order terms."""
    call = row.call
    scores = {k: v[0].sqrt() for k, v in call.squared(pb).items()}
    return _result(
        call,
        scope,
        scores,
        logits,
        call.tokens,
        row.positions,
        params,
        vectors=_vectors(call, pb),
        first_order=call.first_order(pb),
        **extra,
    )


def _calls(
    model: Any,
    prompts: Sequence[Prompt],
    positions: Any,
    *,
    prepend_bos: bool | None,
    sources: SourcesLike,
    freeze: Sequence[str],
    fwd_hooks: HookList,
    checkpoint: bool | None,
) -> list[_Call]:
    return [
        _setup(
            model,
            prompt,
            position=position,
            prepend_bos=prepend_bos,
            sources=sources,
            freeze=freeze,
            fwd_hooks=fwd_hooks,
            checkpoint=checkpoint,
        )
        for prompt, position in zip(
            prompts, per_prompt(positions, len(prompts), "position"), strict=True
        )
    ]


# --------------------------------------------------------------------------- Semantic
def semantic_scope_batch(
    model: Any,
    prompts: Sequence[Prompt],
    targets: TargetLike | Sequence[TargetLike | None] | None = None,
    *,
    mode: str | None = None,
    foil: TargetLike | Sequence[TargetLike | None] | None = None,
    multi_token: bool = False,
    position: int | Sequence[int] = -1,
    prepend_bos: bool | None = None,
    sources: SourcesLike = None,
    freeze: Sequence[str] = (),
    fwd_hooks: HookList = (),
    return_vectors: bool = False,
    checkpoint: bool | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
) -> list[ScopeResult]:
    """:func:`~jacobian_scopes.semantic_scope` for many prompts, ``batch_size`` per pass.

    ``targets``, ``foil`` and ``position`` take one value per prompt (a list or tuple) or
    one value for all (a string, an int, a tensor). ``targets=None`` (or ``None`` in the
    list) explains the prompt's own top prediction at its position. A multi-token target
    shared by all prompts must therefore be a string or a tensor, not a list of ids.
    ``fwd_hooks`` see the padded batch. Returns one :class:`ScopeResult` per prompt, in
    order, equal to what the single-prompt scope returns.

    Example:
        >>> prompts = ["The capital of France is", "The capital of Italy is"]
        >>> rs = semantic_scope_batch(model, prompts, [" Paris", " Rome"])   # doctest: +SKIP
        >>> [r.top(1)[0][1] for r in rs]                                      # doctest: +SKIP
        [' France', ' Italy']
    """
    prompts = _check_prompts(prompts, batch_size)
    n = len(prompts)
    calls = _calls(
        model,
        prompts,
        position,
        prepend_bos=prepend_bos,
        sources=sources,
        freeze=freeze,
        fwd_hooks=fwd_hooks,
        checkpoint=checkpoint,
    )
    adapter = calls[0].adapter
    if targets is None and multi_token:
        raise ScopeInputError("multi_token=True needs targets (the continuations to explain)")
    foils = per_prompt(foil, n, "foil")
    # Keyed by id(call): the rows of a batch come back in length order.
    checked: dict[int, SemanticTarget] = {}
    for call, target, f in zip(calls, per_prompt(targets, n, "targets"), foils, strict=True):
        if target is None:
            if multi_token:
                raise ScopeInputError("multi_token=True needs a target for every prompt")
            continue  # explained below: the prompt's own top prediction
        checked[id(call)] = semantic_target(
            adapter, target, mode=mode, foil=f, multi_token=multi_token
        )
    positions = {
        id(c): extend_for_target(c, checked[id(c)]) if id(c) in checked else [c.position]
        for c in calls
    }
    foil_of = {id(c): f for c, f in zip(calls, foils, strict=True)}

    def build(tr: Trace, logits: Tensor, b: int, call: _Call) -> _Row:
        pos = positions[id(call)]
        target = checked.get(id(call))
        if target is None:  # the prompt's own prediction
            predicted = int(logits[b, pos[0]].argmax())
            target = semantic_target(adapter, predicted, mode=mode, foil=foil_of[id(call)])
        dirs = semantic_directions(adapter, target, logits[b, pos])
        return _Row(call, pos, dirs[None], target=target)

    def finish(row: _Row, pb: Pullback, logits: Tensor) -> ScopeResult:
        target = row.target
        assert target is not None
        params = {"mode": target.mode, "multi_token": len(target.ids) > 1}
        info = target_info(adapter, target)
        return _one_direction(row, "semantic", pb, logits, params, target=info)

    return _run(
        calls,
        build,
        finish,
        batch_size=batch_size,
        keep_vectors=return_vectors,
        keep_dots=True,
        progress=progress,
        desc="semantic scope",
    )


# ------------------------------------------------------------------------ Temperature
def temperature_scope_batch(
    model: Any,
    prompts: Sequence[Prompt],
    *,
    position: int | Sequence[int] = -1,
    prepend_bos: bool | None = None,
    sources: SourcesLike = None,
    freeze: Sequence[str] = (),
    fwd_hooks: HookList = (),
    return_vectors: bool = False,
    checkpoint: bool | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
) -> list[ScopeResult]:
    """:func:`~jacobian_scopes.temperature_scope` for many prompts, ``batch_size`` per pass.

    Arguments as in :func:`semantic_scope_batch`; one result per prompt, in order.

    Example:
        >>> rs = temperature_scope_batch(model, ["1, 2, 3,", "5, 10, 15,"])  # doctest: +SKIP
    """
    prompts = _check_prompts(prompts, batch_size)
    calls = _calls(
        model,
        prompts,
        position,
        prepend_bos=prepend_bos,
        sources=sources,
        freeze=freeze,
        fwd_hooks=fwd_hooks,
        checkpoint=checkpoint,
    )
    if calls[0].adapter.final_norm_is_constant():
        raise TemperatureUndefinedError(_TEMPERATURE_HELP)

    def build(tr: Trace, logits: Tensor, b: int, call: _Call) -> _Row:
        n = call.tokens.shape[1]
        y = tr.explanandum[b, :n]
        v = temperature_direction(y, call.position)
        norm = float(y[call.position].detach().float().norm())
        return _Row(call, [call.position], v[None, None], extra={"norm": norm})

    def finish(row: _Row, pb: Pullback, logits: Tensor) -> ScopeResult:
        return _one_direction(row, "temperature", pb, logits, {"norm": row.extra["norm"]})

    return _run(
        calls,
        build,
        finish,
        batch_size=batch_size,
        keep_vectors=return_vectors,
        keep_dots=True,
        progress=progress,
        desc="temperature scope",
    )


# ----------------------------------------------------------------------------- Fisher
def fisher_scope_batch(
    model: Any,
    prompts: Sequence[Prompt],
    *,
    method: str = "sketch",
    eps: float = 1e-3,
    rank: int | None = None,
    n_probes: int = 1,
    decompose: bool = False,
    seed: int | None = 0,
    vjp_batch_size: int | None = None,
    position: int | Sequence[int] = -1,
    prepend_bos: bool | None = None,
    sources: SourcesLike = None,
    freeze: Sequence[str] = (),
    fwd_hooks: HookList = (),
    checkpoint: bool | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
) -> list[ScopeResult]:
    """:func:`~jacobian_scopes.fisher_scope` for many prompts, ``batch_size`` per pass.

    Each prompt gets its own plan (its own candidates, eigen-directions and, for the
    sketch, probes drawn from a generator seeded with ``seed``, exactly as a single call
    draws them), so the results equal the one-by-one results. Plans with fewer rows are
    padded with zero directions, which contribute nothing; the VJPs of a batch are the
    largest plan's, run ``vjp_batch_size`` at a time (the single scope's ``batch_size``).

    Example:
        >>> rs = fisher_scope_batch(model, prompts, method="exact", eps=1e-2)  # doctest: +SKIP
    """
    prompts = _check_prompts(prompts, batch_size)
    calls = _calls(
        model,
        prompts,
        position,
        prepend_bos=prepend_bos,
        sources=sources,
        freeze=freeze,
        fwd_hooks=fwd_hooks,
        checkpoint=checkpoint,
    )
    adapter = calls[0].adapter
    options = FisherOptions(method, eps, rank, n_probes, decompose, seed)

    def build(tr: Trace, logits: Tensor, b: int, call: _Call) -> _Row:
        probs = torch.softmax(logits[b, call.position].float(), dim=-1)
        plan = options.plan(adapter, probs)
        return _Row(call, [call.position], plan.rows[:, None, :], plan=plan, extra={"p": probs})

    def finish(row: _Row, pb: Pullback, logits: Tensor) -> ScopeResult:
        call, plan = row.call, row.plan
        assert plan is not None
        scores, stderr, contributions = fisher_combine(
            call.spec, plan, call.squared(pb), options.decompose
        )
        details = fisher_details(adapter, options, plan, row.extra["p"], stderr, contributions)
        return _result(
            call,
            "fisher",
            scores,
            logits,
            call.tokens,
            row.positions,
            options.params(),
            fisher=details,
        )

    return _run(
        calls,
        build,
        finish,
        batch_size=batch_size,
        keep_each=lambda rows: any(r.plan is not None and options.keep_each(r.plan) for r in rows),
        vjp_batch_size=vjp_batch_size,
        progress=progress,
        desc="Fisher scope",
    )


# ---------------------------------------------------------------------------- General
def scope_batch(
    model: Any,
    prompts: Sequence[Prompt],
    direction: Float[Tensor, "*feature"] | Sequence[Float[Tensor, "*feature"]],
    *,
    at: str | None = None,
    position: int | Sequence[int] = -1,
    prepend_bos: bool | None = None,
    sources: SourcesLike = None,
    freeze: Sequence[str] = (),
    fwd_hooks: HookList = (),
    return_vectors: bool = False,
    checkpoint: bool | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
) -> list[ScopeResult]:
    """:func:`~jacobian_scopes.scope` for many prompts: one direction for all, or a list
    with one direction per prompt.

    Example:
        >>> rs = scope_batch(model, prompts, probe_direction)   # doctest: +SKIP
    """
    prompts = _check_prompts(prompts, batch_size)
    calls = _calls(
        model,
        prompts,
        position,
        prepend_bos=prepend_bos,
        sources=sources,
        freeze=freeze,
        fwd_hooks=fwd_hooks,
        checkpoint=checkpoint,
    )
    adapter = calls[0].adapter
    directions = [_check_direction(d) for d in per_prompt(direction, len(prompts), "direction")]
    if at is not None and not adapter.has_hook(at):
        raise ScopeInputError(f"{at!r} is not a hook of this model (see model.hook_dict)")
    index = {id(c): i for i, c in enumerate(calls)}

    def build(tr: Trace, logits: Tensor, b: int, call: _Call) -> _Row:
        v = directions[index[id(call)]].to(device=adapter.device, dtype=tr.explanandum.dtype)
        return _Row(call, [call.position], v[None, None])

    def finish(row: _Row, pb: Pullback, logits: Tensor) -> ScopeResult:
        norm = float(directions[index[id(row.call)]].norm())
        params = {"at": at or adapter.final_state.label, "direction_norm": norm}
        return _one_direction(row, "direction", pb, logits, params)

    return _run(
        calls,
        build,
        finish,
        batch_size=batch_size,
        at=at,
        keep_vectors=return_vectors,
        keep_dots=True,
        progress=progress,
        desc="scope",
    )


def _check_direction(direction: Any) -> Tensor:
    if not isinstance(direction, Tensor):
        direction = torch.as_tensor(direction)
    if not direction.is_floating_point():
        raise ScopeInputError(f"direction must be a float tensor, got dtype {direction.dtype}")
    if not torch.isfinite(direction).all():
        raise ScopeInputError("direction contains NaN or inf")
    return direction


def run_batch(
    model: Any, prompts: Sequence[Prompt], scope: str, **options: Any
) -> list[ScopeResult]:
    """Dispatch by scope name (``"semantic"``, ``"temperature"``, ``"fisher"``); what the
    command line uses.

    Example:
        >>> run_batch(model, prompts, "temperature", batch_size=16)   # doctest: +SKIP
    """
    functions: dict[str, Callable[..., list[ScopeResult]]] = {
        "semantic": semantic_scope_batch,
        "temperature": temperature_scope_batch,
        "fisher": fisher_scope_batch,
    }
    if scope not in functions:
        raise ScopeInputError(f"unknown scope {scope!r}; choose one of {sorted(functions)}")
    return functions[scope](model, prompts, **options)

"""One scope call, from checked inputs to results: the only path every scope takes.

``prompts → checked inputs (inputs.py) → length groups (batching.py) → one trace per group
(engine.py) → the scope's directions (directions.py) → one batched pullback → results``.

A single prompt is a batch of one, so one prompt and many give the same numbers (up to
floating-point rounding of differently shaped matrix products). Each scope adds only what
is its own: :func:`semantic`, :func:`temperature`, :func:`fisher`, :func:`direction`.

Example:
    >>> import jacobian_scopes as js
    >>> from jacobian_scopes.call import semantic
    >>> model = js.load_default_model()
    >>> results = semantic(model, ["The capital of France is"], [" Paris"], options={})
    >>> results[0].top(1)
    [(1, 'The', ...)]
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from jacobian_scopes import directions as dirs
from jacobian_scopes.adapter import ModelAdapter
from jacobian_scopes.attention import AttentionMode
from jacobian_scopes.batching import (
    group_by_length,
    pad_batch,
    pad_id,
    per_prompt,
    stack_directions,
)
from jacobian_scopes.engine import Pullback, Trace
from jacobian_scopes.errors import ScopeInputError
from jacobian_scopes.fisher import FisherPlan
from jacobian_scopes.inputs import resolve_position, resolve_tokens, single_token
from jacobian_scopes.interrupts import backstop
from jacobian_scopes.options import DEFAULTS, FisherMethodName, Prompt, SemanticMode, TargetLike
from jacobian_scopes.progress import progress
from jacobian_scopes.results import Prediction, ScopeResult
from jacobian_scopes.sources import (
    SourceSpec,
    arrange,
    check_explanandum,
    check_sources_precede,
    resolve_freeze,
    resolve_sources,
)

N_TOP_PREDICTIONS = 5


@dataclass
class Call:
    """One prompt's checked inputs, and where its scores are taken."""

    adapter: ModelAdapter
    tokens: Tensor  # (1, pos)
    position: int
    spec: SourceSpec
    freeze: list[str]
    freeze_kinds: list[str]
    fwd_hooks: list[Any]
    prepend_bos: bool | None
    checkpoint: bool | None
    attention: AttentionMode = "auto"


@dataclass
class Row:
    """One prompt of a group: what to pull back, and what its result needs afterwards."""

    call: Call
    positions: list[int]
    directions: Tensor  # (K, P, *feature); K and P may differ between rows
    plan: FisherPlan | None = None
    target: dirs.SemanticTarget | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------- checked inputs
def prepare(
    model: Any, prompts: Sequence[Prompt], options: dict[str, Any], *, at: str | None = None
) -> list[Call]:
    """Check every prompt and every shared option before any forward pass."""
    adapter = ModelAdapter(model)
    opts = {**DEFAULTS, **options}
    batch_size = opts["batch_size"]
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ScopeInputError(f"batch_size must be a positive int, got {batch_size!r}")
    freeze = opts["freeze"]
    if isinstance(freeze, str):
        freeze = (freeze,)
    if freeze is None or not isinstance(freeze, (list, tuple)):
        raise ScopeInputError(
            f"freeze must be a list of kinds ('norm_scale', 'attn_pattern'), got {freeze!r}; "
            "pass [] for none"
        )
    fwd_hooks = opts["fwd_hooks"]
    if fwd_hooks is None:
        fwd_hooks = []
    attention = opts["attention"]  # checked by the trace, before its forward pass
    check_explanandum(adapter, at)
    spec = resolve_sources(adapter, opts["sources"], at)
    check_sources_precede(adapter, spec, at)
    frozen_hooks = resolve_freeze(adapter, freeze)
    positions = per_prompt(opts["position"], len(prompts), "position")
    calls = []
    for prompt, position in zip(prompts, positions, strict=True):
        tokens = resolve_tokens(adapter, prompt, opts["prepend_bos"])
        calls.append(
            Call(
                adapter=adapter,
                tokens=tokens,
                position=resolve_position(tokens.shape[1], position),
                spec=spec,
                freeze=frozen_hooks,
                freeze_kinds=list(freeze),
                fwd_hooks=list(fwd_hooks),
                prepend_bos=opts["prepend_bos"],
                checkpoint=opts["checkpoint"],
                attention=attention,
            )
        )
    return calls


# ----------------------------------------------------------------------------- the run
def _trace(call: Call, tokens: Tensor, at: str | None) -> Trace:
    trace = Trace(
        call.adapter,
        tokens,
        sources=call.spec.taps,
        at=at,
        fwd_hooks=call.fwd_hooks,
        freeze=call.freeze,
        checkpoint=call.checkpoint,
        attention=call.attention,
    )
    if call.checkpoint is None and trace.checkpoint and call.fwd_hooks:
        warnings.warn(
            f"this call recomputes the first {trace.checkpoint_blocks} of the model's "
            f"{trace.adapter.n_layers} blocks to save memory (a long prompt), so your "
            "fwd_hooks inside those blocks can fire twice: once in the forward pass and "
            "once more while the backward pass recomputes the block. Pass "
            "checkpoint=False to keep them to one call (at the cost of memory), or "
            "checkpoint=True to recompute every block and silence this.",
            stacklevel=4,
        )
    return trace


def _row_view(pb: Pullback, b: int, n_tokens: int, k: int) -> Pullback:
    """Row ``b`` of a group's pullback, trimmed to its own directions and tokens."""

    def cut(t: Tensor) -> Tensor:
        return t[:k, b : b + 1, :n_tokens]

    return Pullback(
        squared={n: cut(t) for n, t in pb.squared.items()},
        vectors={n: cut(t) for n, t in pb.vectors.items()},
        dots={n: cut(t) for n, t in pb.dots.items()},
        unused=pb.unused,
    )


# build(trace, b, call): the row of batch entry b; finish(row, its pullback, the logits at its
# explained position).
Build = Callable[[Trace, int, Call], Row]
Finish = Callable[[Row, Pullback, Tensor], ScopeResult]


def _run(
    calls: list[Call],
    build: Build,
    finish: Finish,
    *,
    options: dict[str, Any],
    at: str | None = None,
    keep_each: Callable[[list[Row]], bool] = lambda rows: True,
    keep_vectors: bool = False,
    keep_dots: bool = False,
    vjp_batch_size: int | None = None,
    desc: str = "prompts",
) -> list[ScopeResult]:
    """Group the calls by length, run one trace per group, and finish each row; ``options``
    are the call's shared options (``batch_size``, ``verbose``)."""
    opts = {**DEFAULTS, **options}
    batch_size, verbose = opts["batch_size"], opts["verbose"]
    order = sorted(range(len(calls)), key=lambda i: -calls[i].tokens.shape[1])
    results: list[ScopeResult | None] = [None] * len(calls)
    first = calls[0]
    pad = pad_id(first.adapter)
    groups = group_by_length([calls[i].tokens.shape[1] for i in order], batch_size)
    with progress(total=len(calls), desc=desc, unit="prompt", verbose=verbose) as bar:
        for start, stop in groups:
            group = [calls[i] for i in order[start:stop]]
            tokens, lengths = pad_batch([c.tokens for c in group], pad)
            with backstop() as net, net(_trace(first, tokens, at)) as tr:
                rows = [build(tr, b, c) for b, c in enumerate(group)]
                explained = [tr.logits_at(b, r.positions[:1])[0] for b, r in enumerate(rows)]
                positions, stacked = stack_directions(
                    [r.positions for r in rows], [r.directions for r in rows]
                )
                pb = tr.pullback(
                    positions,
                    stacked,
                    batch_size=vjp_batch_size,
                    keep_each=keep_each(rows),
                    keep_vectors=keep_vectors,
                    keep_dots=keep_dots,
                )
            _refuse_unused(first.spec, pb)
            summed = next(iter(pb.squared.values())).shape[0] == 1
            for b, (row, n) in enumerate(zip(rows, lengths, strict=True)):
                k = 1 if summed else row.directions.shape[0]
                view = _row_view(pb, b, n, k)
                results[order[start + b]] = finish(row, view, explained[b])
            bar.update(len(group))
    return [r for r in results if r is not None]


def _refuse_unused(spec: SourceSpec, pb: Pullback) -> None:
    # A source the explained activation does not depend on would score zero everywhere:
    # that is a misplaced source, not a finding.
    unused = [label for label, tap in zip(spec.labels, spec.taps, strict=True) if tap in pb.unused]
    if unused:
        raise ScopeInputError(
            f"sources {unused} do not influence the explained activation (they come after it "
            "in the network, or outside the forward pass); choose sources before it"
        )


# --------------------------------------------------------------------------- results
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


def _by_label(call: Call, per_tap: dict[str, Tensor]) -> dict[str, Tensor]:
    # Keyed by the names the user asked for (the tapped hook may differ, see sources.py).
    return {
        label: per_tap[tap] for label, tap in zip(call.spec.labels, call.spec.taps, strict=True)
    }


def build_result(
    call: Call,
    scope: str,
    scores: dict[str, Tensor],
    logits: Tensor,
    positions: list[int],
    params: dict[str, Any],
    **extra: Any,
) -> ScopeResult:
    """The :class:`ScopeResult` of one prompt: ``scores`` per source label, ``logits`` at the
    first explained position (d_vocab,), the scope's own ``params`` and fields."""
    arranged, axes, labels = arrange(call.spec, {k: v.detach().cpu() for k, v in scores.items()})
    adapter = call.adapter
    tokens = call.tokens
    bos_id = getattr(getattr(adapter.model, "tokenizer", None), "bos_token_id", None)
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
        byte_pieces=adapter.byte_pieces(tokens[0].cpu()),
        position=positions[0],
        positions=positions,
        top_predictions=_predictions(adapter, logits.detach()),
        params={**base_params, **params},
        processing=adapter.processing_state(),
        model_name=adapter.name,
        score_axes=axes,
        source_labels=labels,
        bos=bool(bos_id is not None and int(tokens[0, 0]) == int(bos_id)),
        **extra,
    )


def _result(
    row: Row,
    scope: str,
    scores: dict[str, Tensor],
    logits: Tensor,
    params: dict[str, Any],
    **extra: Any,
) -> ScopeResult:
    return build_result(row.call, scope, scores, logits, row.positions, params, **extra)


def _one_direction(
    row: Row, scope: str, pb: Pullback, logits: Tensor, params: dict[str, Any], **extra: Any
) -> ScopeResult:
    """A scope with one direction per explained position: ``‖J_tᵀv‖``, the raw vectors
    when kept, and the signed first-order terms."""
    call = row.call
    squared = _by_label(call, {tap: sq[0, 0] for tap, sq in pb.squared.items()})
    scores = {label: sq.sqrt() for label, sq in squared.items()}
    first_order = arrange(
        call.spec, _by_label(call, {tap: d[0, 0].cpu() for tap, d in pb.dots.items()})
    )[0]
    vectors: Tensor | dict[str, Tensor] | None = None
    if pb.vectors:
        by_label = _by_label(call, {tap: v[0, 0].cpu() for tap, v in pb.vectors.items()})
        vectors = by_label[call.spec.labels[0]] if call.spec.layout == "embed" else by_label
    return _result(
        row, scope, scores, logits, params, vectors=vectors, first_order=first_order, **extra
    )


# --------------------------------------------------------------------------- Semantic
def semantic(
    model: Any,
    prompts: Sequence[Prompt],
    targets: Sequence[TargetLike | None],
    *,
    mode: SemanticMode | None = None,
    foils: Sequence[TargetLike | None] = (),
    multi_token: bool = False,
    return_vectors: bool = False,
    options: dict[str, Any],
) -> list[ScopeResult]:
    """The Semantic scope of each prompt; a ``None`` target explains the prompt's own top
    prediction at its position."""
    dirs.check_mode(mode)
    calls = prepare(model, prompts, options)
    adapter = calls[0].adapter
    foils = list(foils) or [None] * len(calls)
    checked: list[dirs.SemanticTarget | None] = []
    positions: list[list[int]] = []
    for call, target, foil in zip(calls, targets, foils, strict=True):
        if target is None:
            if multi_token:
                raise ScopeInputError("multi_token=True needs a target for every prompt")
            if foil is not None:
                single_token(adapter, foil, what="foil")
            checked.append(None)  # explained below: the prompt's own prediction
            positions.append([call.position])
            continue
        t = dirs.semantic_target(adapter, target, mode=mode, foil=foil, multi_token=multi_token)
        call.tokens, pos = dirs.extend_for_target(adapter, call.tokens, call.position, t)
        checked.append(t)
        positions.append(pos)
    index = {id(c): i for i, c in enumerate(calls)}

    def build(tr: Trace, b: int, call: Call) -> Row:
        i = index[id(call)]
        target = checked[i]
        pos = positions[i]
        logits = tr.logits_at(b, pos)
        if target is None:
            predicted = int(logits[0].argmax())
            target = dirs.semantic_target(adapter, predicted, mode=mode, foil=foils[i])
        return Row(
            call,
            pos,
            dirs.semantic_directions(adapter, target, logits)[None],
            target=target,
        )

    def finish(row: Row, pb: Pullback, logits: Tensor) -> ScopeResult:
        target = row.target
        assert target is not None
        params = {"mode": target.mode, "multi_token": len(target.ids) > 1}
        info = dirs.target_info(adapter, target)
        return _one_direction(row, "semantic", pb, logits, params, target=info)

    return _run(
        calls,
        build,
        finish,
        options=options,
        keep_vectors=return_vectors,
        keep_dots=True,
        desc="semantic scope",
    )


# ------------------------------------------------------------------------ Temperature
def temperature(
    model: Any, prompts: Sequence[Prompt], *, return_vectors: bool = False, options: dict[str, Any]
) -> list[ScopeResult]:
    """The Temperature scope of each prompt."""
    calls = prepare(model, prompts, options)
    dirs.check_temperature(calls[0].adapter)

    def build(tr: Trace, b: int, call: Call) -> Row:
        y = tr.explanandum[b, : call.tokens.shape[1]]
        v = dirs.temperature_direction(y, call.position)
        norm = float(y[call.position].detach().float().norm())
        return Row(call, [call.position], v[None, None], extra={"norm": norm})

    def finish(row: Row, pb: Pullback, logits: Tensor) -> ScopeResult:
        return _one_direction(row, "temperature", pb, logits, {"norm": row.extra["norm"]})

    return _run(
        calls,
        build,
        finish,
        options=options,
        keep_vectors=return_vectors,
        keep_dots=True,
        desc="temperature scope",
    )


# ----------------------------------------------------------------------------- Fisher
def fisher(
    model: Any,
    prompts: Sequence[Prompt],
    *,
    method: FisherMethodName = "sketch",
    eps: float = 1e-3,
    rank: int | None = None,
    n_probes: int = 1,
    decompose: bool = False,
    seed: int | None = 0,
    vjp_batch_size: int | None = None,
    options: dict[str, Any],
) -> list[ScopeResult]:
    """The Fisher scope of each prompt. Each prompt gets its own plan (candidates,
    eigen-directions, probes seeded with ``seed``), so the results equal one-by-one runs."""
    fisher_options = dirs.FisherOptions(method, eps, rank, n_probes, decompose, seed)
    fisher_options.check()
    if vjp_batch_size is not None and (
        isinstance(vjp_batch_size, bool)
        or not isinstance(vjp_batch_size, int)
        or vjp_batch_size < 1
    ):
        raise ScopeInputError(f"vjp_batch_size must be a positive int, got {vjp_batch_size!r}")
    calls = prepare(model, prompts, options)
    adapter = calls[0].adapter

    def build(tr: Trace, b: int, call: Call) -> Row:
        probs = torch.softmax(tr.logits_at(b, [call.position])[0].float(), dim=-1)
        plan = fisher_options.plan(adapter, probs)
        return Row(call, [call.position], plan.rows[:, None, :], plan=plan, extra={"p": probs})

    def finish(row: Row, pb: Pullback, logits: Tensor) -> ScopeResult:
        plan = row.plan
        assert plan is not None
        squared = _by_label(row.call, {tap: sq[:, 0] for tap, sq in pb.squared.items()})
        scores, stderr, contributions = dirs.fisher_combine(
            row.call.spec, plan, squared, fisher_options.decompose
        )
        details = dirs.fisher_details(
            adapter, fisher_options, plan, row.extra["p"], stderr, contributions
        )
        return _result(row, "fisher", scores, logits, fisher_options.params(), fisher=details)

    return _run(
        calls,
        build,
        finish,
        options=options,
        keep_each=lambda rows: any(
            r.plan is not None and fisher_options.keep_each(r.plan) for r in rows
        ),
        vjp_batch_size=vjp_batch_size,
        desc="Fisher scope",
    )


# ---------------------------------------------------------------------------- General
def direction(
    model: Any,
    prompts: Sequence[Prompt],
    directions: Sequence[Any],
    *,
    at: str | None = None,
    return_vectors: bool = False,
    options: dict[str, Any],
) -> list[ScopeResult]:
    """Any direction (one per prompt) of the activation at hook ``at`` (default: ``y``)."""
    checked = [dirs.check_direction(d) for d in directions]
    calls = prepare(model, prompts, options, at=at)
    adapter = calls[0].adapter
    index = {id(c): i for i, c in enumerate(calls)}

    def build(tr: Trace, b: int, call: Call) -> Row:
        v = checked[index[id(call)]].to(device=adapter.device, dtype=tr.explanandum.dtype)
        return Row(call, [call.position], v[None, None])

    def finish(row: Row, pb: Pullback, logits: Tensor) -> ScopeResult:
        norm = float(checked[index[id(row.call)]].norm())
        params = {"at": at or adapter.final_state.label, "direction_norm": norm}
        return _one_direction(row, "direction", pb, logits, params)

    return _run(
        calls,
        build,
        finish,
        options=options,
        at=at,
        keep_vectors=return_vectors,
        keep_dots=True,
        desc="scope",
    )

"""Activation patching and attribution patching, on the same rows and columns as the scopes.

Two prompts of the same length: ``clean`` (the model does the task, e.g. " Mary" after
"When Mary and John went to the store, John gave a drink to") and ``corrupt`` (the
decisive detail changed, e.g. the names swapped). A *metric* reads the logits of one run;
by default it is the logit difference of ``target`` over ``foil`` at the explained
position, normalised so that the corrupt run scores 0 and the clean run 1 (the
indirect-object convention).

* :func:`activation_patching`: for each source activation (a layer's residual stream at a
  position, or one head's ``z`` at a position), run the corrupt prompt with that one
  activation taken from the clean run (``direction="denoising"``), or the clean prompt with
  it taken from the corrupt run (``"noising"``), and record the metric. One patched forward
  pass per cell, run in batches.
* :func:`attribution_patching`: the first-order estimate of the same map,
  ``(a_donor − a_base) · ∇_a metric(base run)``, from one forward and one backward pass.
* :func:`compare`: the Semantic scope's maps (norm and ``first_order``), attribution
  patching and activation patching on the same cells, their rank agreement in a table, and
  one view with all of them side by side.

Layouts follow the scopes' drill-down (``sources=`` in :func:`jacobian_scopes.semantic_scope`):
``(layer, pos)`` for ``"resid_pre"`` and the other per-layer shortcuts or a list of hooks,
``(layer, head, pos)`` for ``"z"``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from jacobian_scopes.adapter import ModelAdapter
from jacobian_scopes.errors import ScopeInputError
from jacobian_scopes.eval.stats import spearman
from jacobian_scopes.guard import frozen
from jacobian_scopes.inputs import resolve_position, resolve_tokens, single_token
from jacobian_scopes.options import Prompt, SourcesLike, TargetLike
from jacobian_scopes.probe import GradientProbe
from jacobian_scopes.results import ScopeResult
from jacobian_scopes.sources import SourceSpec, arrange, resolve_sources

Metric = Callable[[Tensor], Any]
DIRECTIONS = ("denoising", "noising")
METHODS = ("batched", "transformer_lens")

# TransformerLens' own patching functions for the per-layer shortcuts, by shortcut name.
_TL_FUNCTIONS = {
    "resid_pre": "get_act_patch_resid_pre",
    "resid_mid": "get_act_patch_resid_mid",
    "resid_post": "get_act_patch_resid_post",
    "attn_out": "get_act_patch_attn_out",
    "mlp_out": "get_act_patch_mlp_out",
    "z": "get_act_patch_attn_head_out_by_pos",
}


@dataclass
class PatchingResult:
    """A patching map: one value of the metric (activation patching) or of its first-order
    estimate (attribution patching) per source cell.

    ``values`` has shape (source, pos) or, for ``sources="z"``, (layer, head, pos), with
    rows named by ``source_labels`` as in a scope result. ``clean_value`` and
    ``corrupt_value`` are the metric on the two unpatched runs (0 and 1 for the default,
    normalised metric); ``raw_clean`` and ``raw_corrupt`` the logit differences behind it.
    """

    kind: str
    values: Tensor
    score_axes: tuple[str, ...]
    source_labels: list[str]
    tokens: Tensor
    corrupt_tokens: Tensor
    str_tokens: list[str]
    corrupt_str_tokens: list[str]
    position: int
    direction: str
    method: str
    metric: str
    clean_value: float
    corrupt_value: float
    bos: bool
    model_name: str
    target: str | None = None
    foil: str | None = None
    raw_clean: float | None = None
    raw_corrupt: float | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def positions(self) -> list[int]:
        return [self.position]

    def to_dataframe(self) -> Any:
        """One row per cell: source (and head), position, clean and corrupt token, value."""
        import pandas as pd

        v = self.values.detach().float().cpu()
        rows = []
        if self.score_axes == ("layer", "head", "token"):
            for layer in range(v.shape[0]):
                for h in range(v.shape[1]):
                    for t in range(v.shape[2]):
                        rows.append(
                            self._row(self.source_labels[layer], t, float(v[layer, h, t]), h)
                        )
        else:
            for i, label in enumerate(self.source_labels):
                for t in range(v.shape[-1]):
                    rows.append(self._row(label, t, float(v[i, t])))
        return pd.DataFrame(rows)

    def _row(self, source: str, t: int, value: float, head: int | None = None) -> dict[str, Any]:
        row: dict[str, Any] = {"kind": self.kind, "source": source}
        if head is not None:
            row["head"] = head
        row.update(
            index=t,
            clean_token=self.str_tokens[t],
            corrupt_token=self.corrupt_str_tokens[t],
            value=value,
        )
        return row

    def map(self, **kwargs: Any) -> Any:
        """The layer × token map of these values (signed, zero-centred colours)."""
        from jacobian_scopes.viz.maps import patching_map

        return patching_map(self, **kwargs)

    def _repr_html_(self) -> str:
        from jacobian_scopes.viz.report import notebook_html

        return notebook_html(self.map())

    def show(self) -> None:
        from jacobian_scopes.viz.report import show

        show(self.map())

    def __repr__(self) -> str:
        return (
            f"PatchingResult({self.kind} patching, {self.direction}, {self.metric}; "
            f"shape {tuple(self.values.shape)}; clean {self.clean_value:.4g}, "
            f"corrupt {self.corrupt_value:.4g})"
        )


# ---------------------------------------------------------------------- the set-up
@dataclass
class _Setup:
    adapter: ModelAdapter
    spec: SourceSpec
    base: Tensor  # (1, pos): the run that is patched
    donor: Tensor  # (1, pos): where the patched-in activations come from
    clean: Tensor
    corrupt: Tensor
    position: int
    donor_acts: dict[str, Tensor]  # label -> (1, pos, ...)
    base_acts: dict[str, Tensor]
    metric: Metric
    metric_name: str
    clean_value: float
    corrupt_value: float
    target: str | None
    foil: str | None
    raw_clean: float | None
    raw_corrupt: float | None
    target_id: int | None
    foil_id: int | None


def _prepare(
    model: Any,
    clean: Prompt,
    corrupt: Prompt,
    metric: Metric | None,
    target: TargetLike | None,
    foil: TargetLike | None,
    sources: SourcesLike,
    direction: str,
    position: int,
    prepend_bos: bool | None,
) -> _Setup:
    if direction not in DIRECTIONS:
        raise ScopeInputError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    adapter = ModelAdapter(model)
    clean_t = resolve_tokens(adapter, clean, prepend_bos)
    corrupt_t = resolve_tokens(adapter, corrupt, prepend_bos)
    if clean_t.shape != corrupt_t.shape:
        raise ScopeInputError(
            "clean and corrupt prompts must have the same number of tokens (patching swaps "
            f"activations position by position): clean has {clean_t.shape[1]} "
            f"{adapter.to_str_tokens(clean_t[0])}, corrupt has {corrupt_t.shape[1]} "
            f"{adapter.to_str_tokens(corrupt_t[0])}"
        )
    pos = resolve_position(clean_t.shape[1], position)
    if sources is None:
        raise ScopeInputError(
            "patching needs sources with a layer axis: 'resid_pre', 'z' or hook names"
        )
    spec = resolve_sources(adapter, sources)
    for label, tap in zip(spec.labels, spec.taps, strict=True):
        if label != tap:
            # A gradient at the tap equals the gradient at the label, but the activations
            # differ, so a patch there would not be a patch of what was asked for.
            raise ScopeInputError(
                f"{label!r} cannot be patched on this model class (its hook sits on a branch "
                "only the MLP reads); patch resid_pre, resid_post, attn_out or mlp_out"
            )
    labels = list(spec.labels)
    clean_logits, clean_acts = _capture(model, adapter, clean_t, labels)
    corrupt_logits, corrupt_acts = _capture(model, adapter, corrupt_t, labels)

    target_s = foil_s = None
    raw_clean = raw_corrupt = None
    target_id = foil_id = None
    if metric is None:
        target_id = (
            int(clean_logits[0, pos].argmax())
            if target is None
            else single_token(adapter, target, "target")
        )
        foil_id = (
            int(corrupt_logits[0, pos].argmax())
            if foil is None
            else single_token(adapter, foil, "foil")
        )
        if target_id == foil_id:
            raise ScopeInputError(
                "target and foil are the same token; give target= and foil= (e.g. ' Mary' and "
                "' John') or your own metric"
            )
        raw_clean = float(clean_logits[0, pos, target_id] - clean_logits[0, pos, foil_id])
        raw_corrupt = float(corrupt_logits[0, pos, target_id] - corrupt_logits[0, pos, foil_id])
        if abs(raw_clean - raw_corrupt) < 1e-6:
            raise ScopeInputError(
                "the clean and corrupt runs give the same logit difference "
                f"({raw_clean:.4g}): there is nothing for patching to recover; choose a "
                "corruption that changes the answer, or pass metric="
            )
        target_s = adapter.to_str_tokens(torch.tensor([target_id]))[0]
        foil_s = adapter.to_str_tokens(torch.tensor([foil_id]))[0]
        metric = logit_diff_metric(target_id, foil_id, pos, raw_clean, raw_corrupt)
        name = f"logit difference {target_s!r} − {foil_s!r}, normalised (corrupt 0, clean 1)"
    else:
        if not callable(metric):
            raise ScopeInputError(f"metric must be a function of the logits, got {metric!r}")
        if target is not None or foil is not None:
            raise ScopeInputError("give either metric= or target=/foil=, not both")
        name = getattr(metric, "__name__", "metric")
    clean_value = _scalar(metric(clean_logits), "the metric")
    corrupt_value = _scalar(metric(corrupt_logits), "the metric")
    denoise = direction == "denoising"
    return _Setup(
        adapter=adapter,
        spec=spec,
        base=corrupt_t if denoise else clean_t,
        donor=clean_t if denoise else corrupt_t,
        clean=clean_t,
        corrupt=corrupt_t,
        position=pos,
        donor_acts=clean_acts if denoise else corrupt_acts,
        base_acts=corrupt_acts if denoise else clean_acts,
        metric=metric,
        metric_name=name,
        clean_value=clean_value,
        corrupt_value=corrupt_value,
        target=target_s,
        foil=foil_s,
        raw_clean=raw_clean,
        raw_corrupt=raw_corrupt,
        target_id=target_id,
        foil_id=foil_id,
    )


def logit_diff_metric(
    target_id: int, foil_id: int, position: int, clean: float, corrupt: float
) -> Metric:
    """The indirect-object metric: ``(ld − corrupt) / (clean − corrupt)`` where ``ld`` is
    ``logit[target] − logit[foil]`` at ``position``; one value per batch row is averaged.

    Example:
        >>> import torch
        >>> from jacobian_scopes.patching import logit_diff_metric
        >>> m = logit_diff_metric(1, 0, -1, clean=3.0, corrupt=-1.0)
        >>> float(m(torch.tensor([[[0.0, 1.0]]])))
        0.5
    """

    def metric(logits: Tensor) -> Tensor:
        ld = logits[:, position, target_id] - logits[:, position, foil_id]
        return ((ld - corrupt) / (clean - corrupt)).mean()

    metric.__name__ = "normalised_logit_diff"
    return metric


def _scalar(value: Any, what: str) -> float:
    t = torch.as_tensor(value)
    if t.numel() != 1:
        raise ScopeInputError(f"{what} must return a scalar, got shape {tuple(t.shape)}")
    return float(t)


def _capture(
    model: Any, adapter: ModelAdapter, tokens: Tensor, names: list[str]
) -> tuple[Tensor, dict[str, Tensor]]:
    """Logits and the named activations of one run (no gradients; hooks removed after)."""
    acts: dict[str, Tensor] = {}

    def keep(name: str) -> Callable[[Tensor, Any], None]:
        # Keyed by the name asked for: the Bridge fires aliases under other names.
        def hook_fn(tensor: Tensor, hook: Any) -> None:
            acts[name] = tensor.detach().clone()

        return hook_fn

    with frozen(model), torch.no_grad(), model.hooks(fwd_hooks=[(n, keep(n)) for n in names]):
        logits = model(tokens)
    missing = [n for n in names if n not in acts]
    if missing:
        raise ScopeInputError(f"these hooks never fired on this model: {missing}")
    return logits.detach(), acts


def _result(
    s: _Setup, kind: str, per_label: dict[str, Tensor], method: str, params: dict[str, Any]
) -> PatchingResult:
    values, axes, labels = arrange(s.spec, per_label)
    tokens = s.clean[0].detach().cpu()
    corrupt = s.corrupt[0].detach().cpu()
    bos_id = getattr(getattr(s.adapter.model, "tokenizer", None), "bos_token_id", None)
    return PatchingResult(
        kind=kind,
        values=values.detach().float().cpu(),
        score_axes=axes,
        source_labels=list(labels or s.spec.labels),
        tokens=tokens,
        corrupt_tokens=corrupt,
        str_tokens=s.adapter.to_str_tokens(tokens),
        corrupt_str_tokens=s.adapter.to_str_tokens(corrupt),
        position=s.position,
        direction=params["direction"],
        method=method,
        metric=s.metric_name,
        clean_value=s.clean_value,
        corrupt_value=s.corrupt_value,
        bos=bos_id is not None and int(tokens[0]) == int(bos_id),
        model_name=s.adapter.name,
        target=s.target,
        foil=s.foil,
        raw_clean=s.raw_clean,
        raw_corrupt=s.raw_corrupt,
        params=params,
    )


# ---------------------------------------------------------------------- activation patching
def activation_patching(
    model: Any,
    clean: Prompt,
    corrupt: Prompt,
    metric: Metric | None = None,
    *,
    target: TargetLike | None = None,
    foil: TargetLike | None = None,
    sources: SourcesLike = "resid_pre",
    direction: str = "denoising",
    position: int = -1,
    prepend_bos: bool | None = None,
    method: str = "batched",
    batch_size: int = 32,
) -> PatchingResult:
    """Patch each source activation (at each position, and each head for ``"z"``) from one
    run into the other and record the metric.

    Args:
        model: a HookedTransformer or TransformerBridge.
        clean, corrupt: prompts (text or token ids) with the same number of tokens.
        metric: ``metric(logits) -> scalar`` on logits of shape (1, pos, vocab). Default:
            the logit difference of ``target`` over ``foil`` at ``position``, normalised so
            that the corrupt run is 0 and the clean run 1. Without ``target``/``foil`` they
            are the clean and the corrupt run's top predictions.
        sources: ``"resid_pre"`` (default; also ``"resid_post"``, ``"attn_out"``,
            ``"mlp_out"``, or a list of hook names): one row per source;
            ``"z"``: one value per layer, head and position.
        direction: ``"denoising"`` patches clean activations into the corrupt run (how much
            of the clean behaviour one activation restores); ``"noising"`` patches corrupt
            activations into the clean run (how much one activation breaks it).
        position: the explained position for the default metric (default: last).
        method: ``"batched"`` (default) runs ``batch_size`` patched passes per forward call;
            ``"transformer_lens"`` calls ``transformer_lens.patching``'s
            ``get_act_patch_*`` functions (one forward per cell; per-layer shortcuts only).

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.patching import activation_patching
        >>> model = js.load_default_model()
        >>> clean, corrupt = "Alice met Bob. Bob thanked", "Bob met Alice. Alice thanked"
        >>> ap = activation_patching(model, clean, corrupt, target=" Alice", foil=" Bob")
        >>> ap.values.shape                                   # (layer, position)
        torch.Size([30, 7])
    """
    if method not in METHODS:
        raise ScopeInputError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ScopeInputError(f"batch_size must be a positive int, got {batch_size!r}")
    s = _prepare(
        model, clean, corrupt, metric, target, foil, sources, direction, position, prepend_bos
    )
    params = {"direction": direction, "sources": sources, "batch_size": batch_size}
    if method == "transformer_lens":
        per_label = _tl_patch(model, s, sources)
    else:
        per_label = _batched_patch(model, s, batch_size)
    return _result(s, "activation", per_label, method, params)


def _cells(s: _Setup) -> list[tuple[str, int, int | None]]:
    n_pos = s.base.shape[1]
    out: list[tuple[str, int, int | None]] = []
    for label, per_head in zip(s.spec.labels, s.spec.per_head, strict=True):
        if per_head:
            n_heads = s.donor_acts[label].shape[2]
            out.extend((label, p, h) for h in range(n_heads) for p in range(n_pos))
        else:
            out.extend((label, p, None) for p in range(n_pos))
    return out


def _batched_patch(model: Any, s: _Setup, batch_size: int) -> dict[str, Tensor]:
    cells = _cells(s)
    values = torch.empty(len(cells))
    for start in range(0, len(cells), batch_size):
        chunk = cells[start : start + batch_size]
        rows: dict[str, list[tuple[int, int, int | None]]] = {}
        for i, (label, p, h) in enumerate(chunk):
            rows.setdefault(label, []).append((i, p, h))
        hooks = [(label, _patch_rows(s.donor_acts[label], r)) for label, r in rows.items()]
        tokens = s.base.expand(len(chunk), -1)
        with frozen(model), torch.no_grad(), model.hooks(fwd_hooks=hooks):
            logits = model(tokens)
        for i in range(len(chunk)):
            values[start + i] = _scalar(s.metric(logits[i : i + 1]), "the metric")
    out: dict[str, Tensor] = {}
    n_pos = s.base.shape[1]
    k = 0
    for label, per_head in zip(s.spec.labels, s.spec.per_head, strict=True):
        if per_head:
            n_heads = s.donor_acts[label].shape[2]
            out[label] = values[k : k + n_heads * n_pos].reshape(n_heads, n_pos).T  # (pos, head)
            k += n_heads * n_pos
        else:
            out[label] = values[k : k + n_pos]
            k += n_pos
    return out


def _patch_rows(
    donor: Tensor, rows: list[tuple[int, int, int | None]]
) -> Callable[[Tensor, Any], Tensor]:
    def hook_fn(tensor: Tensor, hook: Any) -> Tensor:
        tensor = tensor.clone()
        for i, p, h in rows:
            if h is None:
                tensor[i, p] = donor[0, p]
            else:
                tensor[i, p, h] = donor[0, p, h]
        return tensor

    return hook_fn


def _tl_patch(model: Any, s: _Setup, sources: SourcesLike) -> dict[str, Tensor]:
    if not (isinstance(sources, str) and sources in _TL_FUNCTIONS):
        raise ScopeInputError(
            "method='transformer_lens' covers the per-layer shortcuts "
            f"{sorted(_TL_FUNCTIONS)}; use method='batched' for a list of hooks"
        )
    from transformer_lens import patching

    fn = getattr(patching, _TL_FUNCTIONS[sources])
    metric = s.metric

    def tl_metric(logits: Tensor) -> Tensor:
        return torch.as_tensor(metric(logits)).reshape(())

    # The donor activations stand in for TransformerLens' ActivationCache (it is only
    # indexed by hook name); run_with_cache is avoided because on the Bridge it leaves
    # Hugging Face output-capturing hooks on the model.
    with frozen(model), torch.no_grad():
        grid = fn(model, s.base, s.donor_acts, tl_metric).detach().float().cpu()
    # (layer, pos) or, for "z", (layer, pos, head): what arrange() expects per source.
    return {label: grid[i] for i, label in enumerate(s.spec.labels)}


# ---------------------------------------------------------------------- attribution patching
def attribution_patching(
    model: Any,
    clean: Prompt,
    corrupt: Prompt,
    metric: Metric | None = None,
    *,
    target: TargetLike | None = None,
    foil: TargetLike | None = None,
    sources: SourcesLike = "resid_pre",
    direction: str = "denoising",
    position: int = -1,
    prepend_bos: bool | None = None,
) -> PatchingResult:
    """The linear estimate of activation patching: ``(a_donor − a_base) · ∇_a metric``, with
    the gradient taken on the base run (the corrupt run when denoising), for every source
    cell at once, from one backward pass. Same arguments and layout as
    :func:`activation_patching`.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.patching import attribution_patching
        >>> model = js.load_default_model()
        >>> clean, corrupt = "Alice met Bob. Bob thanked", "Bob met Alice. Alice thanked"
        >>> at = attribution_patching(model, clean, corrupt, target=" Alice", foil=" Bob",
        ...                           sources="z")
        >>> at.values.shape                                   # (layer, head, position)
        torch.Size([30, 9, 7])
    """
    s = _prepare(
        model, clean, corrupt, metric, target, foil, sources, direction, position, prepend_bos
    )
    probe = GradientProbe(model, sources=list(s.spec.labels))
    with frozen(model), model.hooks(fwd_hooks=probe.fwd_hooks):
        logits = model(s.base)
        out = torch.as_tensor(s.metric(logits))
        if out.numel() != 1:
            raise ScopeInputError(f"the metric must return a scalar, got shape {tuple(out.shape)}")
        if not out.requires_grad:
            raise ScopeInputError(
                "the metric does not depend on the logits with gradients (is it detached?)"
            )
        grads = probe.backward(out.reshape(()))
    per_label = {}
    for label in s.spec.labels:
        delta = (s.donor_acts[label] - s.base_acts[label]).float()
        per_label[label] = (delta * grads[label].float())[0].sum(-1)
    params = {"direction": direction, "sources": sources}
    return _result(s, "attribution", per_label, "gradient", params)


# ---------------------------------------------------------------------- comparing
def agreement(
    values: Tensor | np.ndarray, reference: Tensor | np.ndarray, *, k: int = 10, signed: bool = True
) -> dict[str, float]:
    """Rank agreement of a map with a reference map over the same cells.

    ``spearman``: Spearman's ρ of the values (of their magnitudes against the reference's
    magnitudes when ``signed`` is False: a norm has no sign); ``top_k``: the share of the
    reference's ``k`` largest-magnitude cells that are also among the map's ``k`` largest.

    Example:
        >>> import torch
        >>> from jacobian_scopes.patching import agreement
        >>> agreement(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([0.9, 0.5, 0.1]), k=1)
        {'spearman': 1.0, 'top_k': 1.0}
    """
    a = np.asarray(torch.as_tensor(values).detach().float().cpu()).reshape(-1)
    b = np.asarray(torch.as_tensor(reference).detach().float().cpu()).reshape(-1)
    if a.shape != b.shape:
        raise ScopeInputError(f"maps of different sizes: {a.size} and {b.size} cells")
    rho = spearman(a, b) if signed else spearman(np.abs(a), np.abs(b))
    k = max(1, min(k, a.size))
    top_a = set(np.argsort(-np.abs(a), kind="stable")[:k].tolist())
    top_b = set(np.argsort(-np.abs(b), kind="stable")[:k].tolist())
    return {"spearman": float(rho), "top_k": len(top_a & top_b) / k}


@dataclass
class PatchingComparison:
    """The maps of :func:`compare` on the same cells, and their agreement table.

    ``maps`` maps a name to a tensor laid out like the activation-patching values:
    ``"scope norm"`` (the Semantic scope of the logit difference, ``‖J_tᵀv‖``),
    ``"scope first_order"`` (its signed ``⟨a, J_tᵀv⟩``), ``"attribution patching"`` and
    ``"activation patching"``. ``table`` (pandas) gives each map's Spearman ρ and top-k
    overlap with activation patching, over the cells that can differ (the BOS column and
    positions after the explained one are left out); the norm rows are also given with
    each map normalisation (``row``, ``global``, ``log``), since a display scale decides
    what the eye compares.
    """

    maps: dict[str, Tensor]
    signed: dict[str, bool]
    table: Any
    activation: PatchingResult
    attribution: PatchingResult
    scope: Any
    k: int

    def view(self, **kwargs: Any) -> Any:
        """All maps side by side with the agreement table (see
        :func:`jacobian_scopes.viz.maps.comparison_view`)."""
        from jacobian_scopes.viz.maps import comparison_view

        return comparison_view(self, **kwargs)

    def _repr_html_(self) -> str:
        from jacobian_scopes.viz.report import notebook_html

        return notebook_html(self.view())

    def show(self) -> None:
        from jacobian_scopes.viz.report import show

        show(self.view())

    def save_html(self, path: Any, *, title: str | None = None) -> Any:
        from jacobian_scopes.viz.report import save_html

        return save_html(path, self.view(), title=title)


def compare(
    model: Any,
    clean: Prompt,
    corrupt: Prompt,
    target: TargetLike | None = None,
    foil: TargetLike | None = None,
    *,
    sources: SourcesLike = "resid_pre",
    position: int = -1,
    prepend_bos: bool | None = None,
    batch_size: int = 32,
    k: int = 10,
) -> PatchingComparison:
    """The scope's drill-down maps next to attribution and activation patching.

    The scope is the Semantic scope of the logit difference ``target − foil`` on the clean
    prompt (``semantic_scope(model, clean, target, foil=foil, sources=sources)``); both
    patchings denoise with the normalised logit difference.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.patching import compare
        >>> model = js.load_default_model()
        >>> c = compare(model, "Alice met Bob. Bob thanked", "Bob met Alice. Alice thanked",
        ...             " Alice", " Bob")
        >>> list(c.maps)[:2]
        ['scope norm', 'scope first_order']
        >>> c.save_html("patching.html")
        PosixPath('patching.html')
    """
    from jacobian_scopes.scopes import semantic_scope
    from jacobian_scopes.viz.maps import normalized

    ap = activation_patching(
        model,
        clean,
        corrupt,
        target=target,
        foil=foil,
        sources=sources,
        position=position,
        prepend_bos=prepend_bos,
        batch_size=batch_size,
    )
    at = attribution_patching(
        model,
        clean,
        corrupt,
        target=ap.target,
        foil=ap.foil,
        sources=sources,
        position=position,
        prepend_bos=prepend_bos,
    )
    r = semantic_scope(
        model, ap.tokens, ap.target or "", foil=ap.foil, position=ap.position, sources=sources
    )
    assert isinstance(r, ScopeResult)  # one prompt's ids: one result
    if r.first_order is None:  # pragma: no cover - single-direction scopes always have it
        raise RuntimeError("the scope returned no first_order terms")
    maps = {
        "scope norm": r.scores.detach().float().cpu(),
        "scope first_order": r.first_order.detach().float().cpu(),
        "attribution patching": at.values,
        "activation patching": ap.values,
    }
    signed = {
        "scope norm": False,
        "scope first_order": True,
        "attribution patching": True,
        "activation patching": True,
    }
    keep = _comparable(ap)
    ref = ap.values[..., keep]
    rows = []
    for name, m in maps.items():
        if name == "activation patching":
            continue
        rows.append(
            {
                "map": name,
                "normalize": "none",
                **agreement(m[..., keep], ref, k=k, signed=signed[name]),
            }
        )
    for name in ("scope norm", "scope first_order"):
        for how in ("row", "global", "log"):
            m = maps[name]
            # The map as displayed: each cell's colour intensity (BOS left out of the scale).
            shown = normalized(_rows2d(m), how, signed=signed[name], left_out=0 if ap.bos else None)
            shown = shown.reshape(m.shape)[..., keep]
            rows.append(
                {"map": name, "normalize": how, **agreement(shown, ref, k=k, signed=signed[name])}
            )
    import pandas as pd

    table = pd.DataFrame(rows).rename(columns={"top_k": f"top_{k}"})
    return PatchingComparison(maps, signed, table, ap, at, r, k)


def _comparable(ap: PatchingResult) -> Tensor:
    """Columns where patching can have an effect: not BOS, not after the explained position."""
    n = ap.values.shape[-1]
    keep = torch.zeros(n, dtype=torch.bool)
    keep[: ap.position + 1] = True
    if ap.bos:
        keep[0] = False
    return keep


def _rows2d(x: Tensor) -> Tensor:
    return x.reshape(-1, x.shape[-1])


__all__ = [
    "PatchingComparison",
    "PatchingResult",
    "activation_patching",
    "agreement",
    "attribution_patching",
    "compare",
    "logit_diff_metric",
]

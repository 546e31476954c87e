"""Activation patching: one patched forward pass per source cell, run in batches, or
through TransformerLens' own ``transformer_lens.patching.get_act_patch_*`` functions.

Example:
    >>> import jacobian_scopes as js
    >>> from jacobian_scopes.patching.activation import activation_patching
    >>> model = js.load_default_model()
    >>> ap = activation_patching(model, "Alice met Bob. Bob thanked",
    ...                          "Bob met Alice. Alice thanked", direction="noising",
    ...                          sources=["blocks.5.hook_resid_pre", "blocks.5.hook_mlp_out"])
    >>> ap.values.shape, ap.clean_value, ap.corrupt_value        # (source, position)
    (torch.Size([2, 7]), 1.0, 0.0)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from jacobian_scopes.errors import ScopeInputError
from jacobian_scopes.guard import frozen, temporary_hooks
from jacobian_scopes.interrupts import backstop
from jacobian_scopes.options import Prompt, SourcesLike, TargetLike
from jacobian_scopes.patching.prepare import Metric, Setup, prepare, scalar
from jacobian_scopes.patching.result import PatchingResult, make_result

METHODS = ("batched", "transformer_lens")

# TransformerLens' own patching functions for the per-layer shortcuts, by shortcut name.
TL_FUNCTIONS = {
    "resid_pre": "get_act_patch_resid_pre",
    "resid_mid": "get_act_patch_resid_mid",
    "resid_post": "get_act_patch_resid_post",
    "attn_out": "get_act_patch_attn_out",
    "mlp_out": "get_act_patch_mlp_out",
    "z": "get_act_patch_attn_head_out_by_pos",
}


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
    s = prepare(
        model,
        clean,
        corrupt,
        metric,
        target=target,
        foil=foil,
        sources=sources,
        direction=direction,
        position=position,
        prepend_bos=prepend_bos,
    )
    if method == "transformer_lens":
        per_label = _tl_patch(model, s, sources)
    else:
        per_label = _batched_patch(model, s, batch_size)
    return make_result(s, "activation", per_label, method, batch_size=batch_size)


def _cells(s: Setup) -> list[tuple[str, int, int | None]]:
    n_pos = s.base.shape[1]
    out: list[tuple[str, int, int | None]] = []
    for label, per_head in zip(s.spec.labels, s.spec.per_head, strict=True):
        if per_head:
            n_heads = s.donor_acts[label].shape[2]
            out.extend((label, p, h) for h in range(n_heads) for p in range(n_pos))
        else:
            out.extend((label, p, None) for p in range(n_pos))
    return out


def _batched_patch(model: Any, s: Setup, batch_size: int) -> dict[str, Tensor]:
    cells = _cells(s)
    values = torch.empty(len(cells))
    for start in range(0, len(cells), batch_size):
        chunk = cells[start : start + batch_size]
        rows: dict[str, list[tuple[int, int, int | None]]] = {}
        for i, (label, p, h) in enumerate(chunk):
            rows.setdefault(label, []).append((i, p, h))
        hooks = [(label, _patch_rows(s.donor_acts[label], r)) for label, r in rows.items()]
        tokens = s.base.expand(len(chunk), -1)
        with (
            backstop() as net,
            net(frozen(model)),
            torch.no_grad(),
            net(temporary_hooks(model, hooks)),
        ):
            logits = model(tokens)
        for i in range(len(chunk)):
            values[start + i] = scalar(s.metric(logits[i : i + 1]), "the metric")
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


def _tl_patch(model: Any, s: Setup, sources: SourcesLike) -> dict[str, Tensor]:
    if not (isinstance(sources, str) and sources in TL_FUNCTIONS):
        raise ScopeInputError(
            "method='transformer_lens' covers the per-layer shortcuts "
            f"{sorted(TL_FUNCTIONS)}; use method='batched' for a list of hooks"
        )
    from transformer_lens import patching

    fn = getattr(patching, TL_FUNCTIONS[sources])
    metric = s.metric

    def tl_metric(logits: Tensor) -> Tensor:
        return torch.as_tensor(metric(logits)).reshape(())

    # The donor activations stand in for TransformerLens' ActivationCache (it is only
    # indexed by hook name); run_with_cache is avoided because on the Bridge it leaves
    # Hugging Face output-capturing hooks on the model.
    with backstop() as net, net(frozen(model)), torch.no_grad():
        grid = fn(model, s.base, s.donor_acts, tl_metric).detach().float().cpu()
    # (layer, pos) or, for "z", (layer, pos, head): what arrange() expects per source.
    return {label: grid[i] for i, label in enumerate(s.spec.labels)}

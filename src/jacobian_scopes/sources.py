"""Which activations a scope is pulled back to, and which nonlinearities are frozen.

``sources=None`` means the input embeddings (``hook_embed``), the paper's setting. Other
sources are hook names, a name filter (a callable, as TransformerLens accepts), or one of
the per-layer shortcuts in :data:`SHORTCUTS`. All of them come out of one backward pass.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from jacobian_scopes.adapter import EMBED_HOOK, ModelAdapter
from jacobian_scopes.errors import ScopeInputError

SourcesLike = str | Sequence[str] | Callable[[str], bool] | None

SHORTCUTS: dict[str, str] = {
    "resid_pre": "blocks.{l}.hook_resid_pre",
    "resid_mid": "blocks.{l}.hook_resid_mid",
    "resid_post": "blocks.{l}.hook_resid_post",
    "attn_out": "blocks.{l}.hook_attn_out",
    "mlp_out": "blocks.{l}.hook_mlp_out",
    "z": "blocks.{l}.attn.hook_z",
}

# Hooks whose activation has a head axis before the feature axis: (batch, pos, head, d_head).
_PER_HEAD = re.compile(r"attn\.hook_(z|q|k|v|result)$")

FREEZABLE = {
    "norm_scale": re.compile(r"(^|\.)(ln\w*|norm\w*)\.hook_scale$"),
    "attn_pattern": re.compile(r"attn\.hook_pattern$"),
}


@dataclass(frozen=True)
class SourceSpec:
    """Sources resolved against a model.

    ``labels`` are the names the user asked for (results are keyed by them); ``taps`` the
    hook names actually tapped (they differ only where the Bridge needs another hook to
    give the same gradient); ``per_head`` marks taps with a head axis; ``layout`` is
    ``"embed"`` (1-D scores), ``"rows"`` ((source, pos)) or ``"heads"`` ((layer, head, pos)).
    """

    labels: tuple[str, ...]
    taps: tuple[str, ...]
    per_head: tuple[bool, ...]
    layout: str


def resolve_sources(adapter: ModelAdapter, sources: SourcesLike) -> SourceSpec:
    if sources is None:
        return SourceSpec((EMBED_HOOK,), (EMBED_HOOK,), (False,), "embed")
    layout = "rows"
    if isinstance(sources, str) and sources in SHORTCUTS:
        names = [SHORTCUTS[sources].format(l=layer) for layer in range(adapter.n_layers)]
        if sources == "z":
            layout = "heads"
    elif isinstance(sources, str):
        names = [sources]
    elif callable(sources):
        names = _filter_names(adapter, sources)
        if not names:
            raise ScopeInputError("the sources filter matched no hook of this model")
    else:
        names = list(dict.fromkeys(sources))
        if not names:
            raise ScopeInputError("sources is an empty list")
    taps = tuple(_tap_for(adapter, name) for name in names)
    per_head = tuple(bool(_PER_HEAD.search(name)) for name in names)
    return SourceSpec(tuple(names), taps, per_head, layout)


def _filter_names(adapter: ModelAdapter, fn: Callable[[str], object]) -> list[str]:
    # The Bridge lists one hook point under several names; keep the first name of each.
    seen: set[int] = set()
    names = []
    for name, hp in adapter.hook_dict.items():
        if fn(name) and id(hp) not in seen:
            seen.add(id(hp))
            names.append(name)
    return names


def _tap_for(adapter: ModelAdapter, name: str) -> str:
    if not isinstance(name, str):
        raise ScopeInputError(f"a source must be a hook name, got {name!r}")
    if not adapter.has_hook(name):
        hint = ", ".join(sorted(SHORTCUTS))
        raise ScopeInputError(
            f"{name!r} is not a hook of this model (shortcuts: {hint}; see model.hook_dict)"
        )
    mid = re.fullmatch(r"blocks\.(\d+)\.hook_resid_mid", name)
    if mid and getattr(adapter.cfg, "parallel_attn_mlp", False):
        raise ScopeInputError(
            f"{name!r} does not exist in blocks with parallel attention and MLP "
            "(both read resid_pre); use resid_pre or resid_post"
        )
    if mid and adapter.kind == "bridge":
        # The Bridge fires hook_resid_mid at ln2's input, a branch that only the MLP reads:
        # a gradient taken there misses the skip connection. In a sequential block the
        # attention output enters the residual stream only through resid_mid, so the
        # gradient at hook_attn_out *is* the gradient at the true resid_mid.
        return f"blocks.{mid.group(1)}.hook_attn_out"
    return name


def resolve_freeze(adapter: ModelAdapter, freeze: Iterable[str]) -> list[str]:
    """Hook names to detach for the linearised variants (``"norm_scale"``, ``"attn_pattern"``)."""
    names: list[str] = []
    for kind in freeze:
        if kind not in FREEZABLE:
            raise ScopeInputError(f"cannot freeze {kind!r}; choose from {sorted(FREEZABLE)}")
        found = _filter_names(adapter, FREEZABLE[kind].search)
        if not found:
            raise ScopeInputError(f"this model has no hooks to freeze for {kind!r}")
        names.extend(found)
    return names


def arrange(
    spec: SourceSpec, per_source: dict[str, Tensor]
) -> tuple[Tensor, tuple[str, ...], list[str] | None]:
    """Arrange per-source tensors (*lead, pos[, head]) into the result layout.

    Returns the arranged tensor, its axis names and the row labels: (*lead, pos) for the
    embeddings, (*lead, source, pos) for a list of hooks (per-head hooks give one row per
    head), (*lead, layer, head, pos) for the ``"z"`` shortcut.
    """
    if spec.layout == "embed":
        return per_source[spec.labels[0]], ("token",), None
    parts: list[Tensor] = []
    labels: list[str] = []
    for label, per_head in zip(spec.labels, spec.per_head, strict=True):
        x = per_source[label]
        if per_head:
            x = x.movedim(-1, -2)  # (*lead, head, pos)
            labels.extend(f"{label}[{h}]" for h in range(x.shape[-2]))
        else:
            x = x.unsqueeze(-2)
            labels.append(label)
        parts.append(x)
    if spec.layout == "heads":
        return torch.stack(parts, dim=-3), ("layer", "head", "token"), list(spec.labels)
    return torch.cat(parts, dim=-2), ("source", "token"), labels

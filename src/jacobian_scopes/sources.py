"""Which activations a scope is pulled back to, and which nonlinearities are frozen.

``sources=None`` means the input embeddings (``hook_embed``), the paper's setting. Other
sources are hook names, a name filter (a callable, as TransformerLens accepts), or one of
the per-layer shortcuts in :data:`SHORTCUTS`. All of them come out of one backward pass.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor

from jacobian_scopes.adapter import EMBED_HOOK, ModelAdapter
from jacobian_scopes.errors import ScopeInputError
from jacobian_scopes.options import SourcesLike

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


def resolve_sources(
    adapter: ModelAdapter, sources: SourcesLike, at: str | None = None
) -> SourceSpec:
    """The hooks to tap for ``sources``. A per-layer shortcut stops at the block of the
    explained hook ``at`` (the later layers cannot influence it).

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.adapter import ModelAdapter
        >>> from jacobian_scopes.sources import resolve_sources
        >>> adapter = ModelAdapter(js.load_default_model())
        >>> spec = resolve_sources(adapter, "resid_pre", at="blocks.2.hook_resid_post")
        >>> spec.labels, spec.layout
        (('blocks.0.hook_resid_pre', 'blocks.1.hook_resid_pre', 'blocks.2.hook_resid_pre'), 'rows')
    """
    if sources is None:
        return SourceSpec((EMBED_HOOK,), (EMBED_HOOK,), (False,), "embed")
    if isinstance(sources, (bytes, int, float)) or sources is True or sources is False:
        raise ScopeInputError(f"sources must be hook names or a shortcut, got {sources!r}")
    layout = "rows"
    if isinstance(sources, str) and sources in SHORTCUTS:
        names = [
            SHORTCUTS[sources].format(l=layer)
            for layer in range(adapter.n_layers)
            if not _after(SHORTCUTS[sources].format(l=layer), at)
        ]
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


# Hooks whose activation is not laid out (batch, pos, ...): a direction there has no
# explained position.
_NOT_PER_POSITION = re.compile(r"attn\.hook_(pattern|attn_scores)$")
_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_AFTER_BLOCKS = re.compile(r"^(ln_final|unembed)\.")


# Where each per-layer hook sits within its block, in forward order.
_IN_BLOCK = ("hook_resid_pre", "attn.hook_z", "hook_attn_out", "hook_resid_mid", "hook_mlp_out")


def _after(name: str, at: str | None) -> bool:
    """Whether the names alone say that hook ``name`` runs after the explained hook ``at``."""
    if at is None:
        return name.startswith("unembed.") and name != "unembed.hook_in"
    if _AFTER_BLOCKS.match(name):
        return True
    source, explained = _BLOCK.match(name), _BLOCK.match(at)
    if source is None or explained is None:
        return False
    if int(source.group(1)) != int(explained.group(1)):
        return int(source.group(1)) > int(explained.group(1))
    order = {suffix: i for i, suffix in enumerate((*_IN_BLOCK, "hook_resid_post"))}
    s, a = name[source.end() :], at[explained.end() :]
    return s in order and a in order and order[s] > order[a]


def check_explanandum(adapter: ModelAdapter, at: str | None) -> None:
    """Refuse an explained hook that does not exist or has no position axis."""
    if at is None:
        return
    if not isinstance(at, str) or not adapter.has_hook(at):
        raise ScopeInputError(f"at={at!r} is not a hook of this model (see model.hook_dict)")
    if _NOT_PER_POSITION.search(at):
        raise ScopeInputError(
            f"at={at!r} holds attention (head, query, key) values, not one activation per "
            "position; explain a direction of attn.hook_z, hook_attn_out or the residual "
            "stream instead"
        )


def check_sources_precede(adapter: ModelAdapter, spec: SourceSpec, at: str | None) -> None:
    """Refuse, before any forward pass, sources that come after the explained activation.

    Only what the names make certain is checked here (a later block, the unembedding);
    anything else that turns out not to feed the explained activation is refused after
    the backward pass, where autograd knows.
    """
    for label in spec.labels:
        if _after(label, at):
            explained = at or adapter.final_state.label
            raise ScopeInputError(
                f"source {label!r} comes after the explained activation {explained!r}, so it "
                "cannot influence it; choose sources before it (e.g. sources='resid_pre')"
            )


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
            x = rearrange(x, "... pos head -> ... head pos")
            labels.extend(f"{label}[{h}]" for h in range(x.shape[-2]))
        else:
            x = x.unsqueeze(-2)
            labels.append(label)
        parts.append(x)
    if spec.layout == "heads":
        return torch.stack(parts, dim=-3), ("layer", "head", "token"), list(spec.labels)
    return torch.cat(parts, dim=-2), ("source", "token"), labels

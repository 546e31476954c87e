"""A scope beside the attention heads: the same tokens, the scope's colouring, each chosen
head's attention from the explained position, and CircuitsVis' ``AttentionHeads``.

The explained position's attention row (where that position looks) is the part of an
attention pattern that can be set against a scope, so it is drawn as its own row of
coloured tokens right under the scope's; the full patterns follow for context.

Patterns come from one forward pass with temporary hooks on the needed ``hook_pattern``s
(no gradients, parameters frozen, eval mode); the model is left as it was.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from jacobian_scopes.adapter import ModelAdapter
from jacobian_scopes.errors import ScopeInputError
from jacobian_scopes.guard import frozen, temporary_hooks
from jacobian_scopes.interrupts import backstop
from jacobian_scopes.results import ScopeResult
from jacobian_scopes.text import visible_text
from jacobian_scopes.threads import ThreadGate
from jacobian_scopes.viz.page import Page, View, escape_text
from jacobian_scopes.viz.tokens import TokenView, show_token, token_view

# AttentionHeads draws token text both as HTML (its token buttons) and on a canvas (axis
# labels, tooltips), so no HTML escaping reads right in both places. A zero-width space
# after "<" and "&" keeps them from starting a tag, a comment or a character reference
# (HTML needs a letter, "/" or "!" right after "<", and a name right after "&"), while both
# renderings still show the plain characters, with no look-alike glyph that needs a font.
_INERT = str.maketrans({"<": "<\u200b", "&": "&\u200b"})


def inert_label(token: str) -> str:
    """Token text that is inert both as HTML and as canvas text, shown as written.

    Example:
        >>> from jacobian_scopes.viz.attention import inert_label
        >>> inert_label("<bos>") == "<\u200bbos>"
        True
    """
    return visible_text(token).translate(_INERT)


@dataclass
class AttentionView(View):
    """The scope's tokens, one attention row per head, and the heads' full patterns.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.viz import beside_attention
        >>> model = js.load_default_model()
        >>> r = js.semantic_scope(model, "The capital of France is", " Paris")
        >>> view = beside_attention(model, r, heads=[(3, 0), (20, 7)])
        >>> view.head_names, tuple(view.patterns.shape), view.scope_row.title
        (['L3H0', 'L20H7'], (2, 6, 6), "Semantic · logit of ' Paris'")
    """

    scope_row: TokenView
    head_rows: list[TokenView]
    head_names: list[str]
    patterns: Float[Tensor, "head query key"]
    tokens: list[str]
    title: str | None = None

    def props(self) -> dict[str, Any]:
        """Props of the AttentionHeads widget."""
        return {
            "attention": [[[float(x) for x in row] for row in p] for p in self.patterns.tolist()],
            "tokens": [inert_label(t) for t in self.tokens],
            "attentionHeadNames": list(self.head_names),
            "maskUpperTri": True,
        }

    def render(self, page: Page) -> str:
        parts = ['<div class="jsv-attention">']
        if self.title:
            parts.append(f"<h3>{escape_text(self.title)}</h3>")
        parts.append(self.scope_row.render(page))
        parts.extend(row.render(page) for row in self.head_rows)
        parts.append("<h3>Attention patterns of these heads</h3>")
        parts.append(page.widget("AttentionHeads", self.props()))
        parts.append("</div>")
        return "\n".join(parts)

    def __rich__(self) -> Any:
        from rich.console import Group

        from jacobian_scopes.viz.terminal import token_panel

        return Group(token_panel(self.scope_row), *(token_panel(r) for r in self.head_rows))


HeadsLike = int | Sequence[int] | Sequence[tuple[int, int]] | None


def beside_attention(
    model: Any,
    result: ScopeResult,
    *,
    layers: int | Sequence[int] | None = None,
    heads: HeadsLike = None,
    k: int = 6,
    include_bos: bool = False,
    shared_scale: bool = True,
) -> AttentionView:
    """The scope's token colouring next to CircuitsVis attention heads on the same tokens.

    Args:
        model: the HookedTransformer or TransformerBridge the result came from.
        result: a scope result (its ``tokens`` are run through the model again).
        layers: layer(s) to show; with ``heads=None`` every head of these layers.
        heads: head index(es) within ``layers``, or explicit ``(layer, head)`` pairs.
        k: with neither ``layers`` nor ``heads``, the ``k`` heads whose attention row at the
            explained position looks most like the scope: the cosine similarity over the
            tokens (BOS left out unless ``include_bos``) weighted by the attention mass
            the head puts on those tokens, so that a head that parks 94% of its attention
            on BOS cannot rank high on the shape of its last 6%.
        include_bos: put the BOS token in the colour scales and the similarity.
        shared_scale: draw every head's row on one attention scale (default), so that a
            row of 2% attention looks faint; False gives each row its own 0…max scale.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.viz import beside_attention
        >>> model = js.load_default_model()
        >>> r = js.semantic_scope(model, "The capital of France is", " Paris")
        >>> beside_attention(model, r, layers=[3, 4], heads=[0, 5]).save_html("attention.html")
        PosixPath('attention.html')
        >>> beside_attention(model, r, heads=[(3, 0), (20, 7)]).head_names
        ['L3H0', 'L20H7']
    """
    if not isinstance(result, ScopeResult):
        raise TypeError(f"beside_attention needs a ScopeResult, got {type(result).__name__}")
    adapter = ModelAdapter(model)
    pairs, auto = _select(adapter.n_layers, adapter.n_heads, layers, heads)
    if k < 1:
        raise ScopeInputError(f"k must be at least 1, got {k}")
    needed = sorted({layer for layer, _ in pairs})
    patterns = _patterns(model, adapter, result, needed)  # layer -> (head, q, k)
    p = result.position
    scores = result.token_scores().float()
    keep = torch.ones(result.n_tokens, dtype=torch.bool)
    if result.bos and not include_bos:
        keep[0] = False
    cosine = {(layer, h): _cosine(patterns[layer][h, p][keep], scores[keep]) for layer, h in pairs}
    mass = {(layer, h): float(patterns[layer][h, p][keep].sum()) for layer, h in pairs}
    similarity = {lh: cosine[lh] * mass[lh] for lh in pairs}
    if auto:
        pairs = sorted(pairs, key=lambda lh: -similarity[lh])[:k]
    scope_row = token_view(result, include_bos=include_bos)
    top = max((float(patterns[lay][h, p][keep].max()) for lay, h in pairs), default=0.0)
    rows = []
    for layer, h in pairs:
        row = patterns[layer][h, p]
        bos_share = f" · BOS share {float(row[0]):.0%}" if result.bos else ""
        rows.append(
            TokenView(
                tokens=list(result.str_tokens),
                values=row.tolist(),
                title=f"L{layer}H{h}: attention from position {p} "
                f"({show_token(result.str_tokens[p])}){bos_share}",
                meta=f"cosine with the scope {cosine[(layer, h)]:.2f} × attention on these "
                f"tokens {mass[(layer, h)]:.0%} = weighted similarity "
                f"{similarity[(layer, h)]:.3f}",
                label="attention",
                bos=result.bos,
                include_bos=include_bos,
                positions=[p],
                scale_max=(top if top > 0 else 1.0) if shared_scale else None,
                byte_pieces=result.byte_pieces,
            )
        )
    how = "most similar to the scope" if auto else "chosen"
    return AttentionView(
        scope_row=scope_row,
        head_rows=rows,
        head_names=[f"L{layer}H{h}" for layer, h in pairs],
        patterns=torch.stack([patterns[layer][h] for layer, h in pairs]),
        tokens=list(result.str_tokens),
        title=f"Beside attention: {len(pairs)} heads ({how})",
    )


def _select(
    n_layers: int, n_heads: int, layers: int | Sequence[int] | None, heads: HeadsLike
) -> tuple[list[tuple[int, int]], bool]:
    """The (layer, head) pairs to show, and whether they are to be ranked automatically."""

    def check(layer: int, head: int) -> tuple[int, int]:
        if not 0 <= layer < n_layers:
            raise ScopeInputError(f"layer {layer} does not exist (the model has {n_layers})")
        if not 0 <= head < n_heads:
            raise ScopeInputError(f"head {head} does not exist (each layer has {n_heads})")
        return int(layer), int(head)

    if isinstance(layers, int):
        layers = [layers]
    if isinstance(heads, int):
        heads = [heads]
    if heads is not None and len(heads) > 0 and all(isinstance(h, tuple) for h in heads):
        if layers is not None:
            raise ScopeInputError("give heads as (layer, head) pairs or give layers, not both")
        return [check(*h) for h in heads], False  # type: ignore[misc]
    if heads is not None and not all(isinstance(h, int) for h in heads):
        raise ScopeInputError("heads must be head indices or (layer, head) pairs")
    if (layers is not None and len(layers) == 0) or (heads is not None and len(heads) == 0):
        raise ScopeInputError("layers and heads must not be empty")
    auto = layers is None and heads is None
    ls = range(n_layers) if layers is None else layers
    hs = range(n_heads) if heads is None else heads
    return [check(layer, h) for layer, h in itertools.product(ls, hs)], auto  # type: ignore[arg-type]


def _patterns(
    model: Any, adapter: ModelAdapter, result: ScopeResult, layers: list[int]
) -> dict[int, Tensor]:
    if result.n_tokens > (adapter.n_ctx or result.n_tokens):
        raise ScopeInputError("the result has more tokens than the model's context")
    if int(result.tokens.max()) >= adapter.d_vocab:
        raise ScopeInputError("the result's tokens are not in this model's vocabulary")
    names = {f"blocks.{layer}.attn.hook_pattern": layer for layer in layers}
    captured: dict[str, Tensor] = {}

    def capture(name: str) -> Any:
        # Keyed by the name we asked for: the Bridge reports its own alias in hook.name.
        def hook_fn(pattern: Tensor, hook: Any) -> None:
            captured[name] = pattern.detach()

        return hook_fn

    # Forward hooks inside model.hooks(), not run_with_cache: on the Bridge,
    # run_with_cache makes Hugging Face install output-capturing hooks that stay on the
    # model afterwards, while model.hooks() removes exactly what it added.
    hooks = ThreadGate().hooks([(name, capture(name)) for name in names])
    tokens = result.tokens[None].to(adapter.device)
    with backstop() as net, net(frozen(model)), torch.no_grad(), net(temporary_hooks(model, hooks)):
        model(tokens)
    out = {}
    for name, layer in names.items():
        pattern = captured.get(name)
        if pattern is None or pattern.dim() != 4 or pattern.shape[-1] != result.n_tokens:
            got = None if pattern is None else tuple(pattern.shape)
            raise RuntimeError(f"{name} gave no (batch, head, query, key) pattern: {got}")
        out[layer] = pattern[0].detach().float().cpu()
    return out


def _cosine(a: Tensor, b: Tensor) -> float:
    na, nb = float(a.norm()), float(b.norm())
    if na == 0 or nb == 0:
        return 0.0
    return float(a @ b) / (na * nb)


__all__ = ["AttentionView", "beside_attention"]

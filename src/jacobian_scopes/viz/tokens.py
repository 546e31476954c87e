"""One row of coloured tokens: a CircuitsVis ``ColoredTokens`` widget whose tokens carry
our own marks (explained position, target, BOS) and hover text (exact value and rank).

CircuitsVis inserts each token string as HTML. We use that on purpose, but only with
markup we build: the token's text is escaped (:func:`~jacobian_scopes.viz.page.escape_text`)
and wrapped in a few custom elements (``<js-pos>``, ``<js-tip>``, …) that the page's CSS
styles. Custom elements need no attributes, which matters because CircuitsVis replaces
every whitespace character in the string with ``&nbsp;`` (an attribute would break).

Colour scales: unsigned scores go from white (0) to blue (the largest score); signed
values use a symmetric scale (−m … m, magenta … blue) so that zero stays white. The BOS
token is an attention sink whose score usually dwarfs the rest: by default it is shown
but left out of the scale (drawn uncoloured, its exact score still on hover).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from jaxtyping import Float
from torch import Tensor

from jacobian_scopes.results import ScopeResult
from jacobian_scopes.text import piece_note, visible_text
from jacobian_scopes.viz.page import NEGATIVE, POSITIVE, Page, View, escape_text

SCOPE_NAMES = {
    "semantic": "Semantic",
    "temperature": "Temperature",
    "fisher": "Fisher",
    "direction": "Direction",
}


def format_value(x: float) -> str:
    """The shortest text that reads back as the same float32 (the scores' precision)."""
    return str(np.float32(x))


def show_token(token: str) -> str:
    """A token as readable text: quoted, with line breaks and tabs made visible."""
    return "'" + visible_text(token).replace("\n", "↵").replace("\t", "⇥") + "'"


def ranks(values: Sequence[float], in_scale: Sequence[bool], signed: bool) -> list[int | None]:
    """1-based rank of each value among those in the colour scale (by magnitude if signed)."""
    keyed = [(-abs(v) if signed else -v, i) for i, v in enumerate(values) if in_scale[i]]
    out: list[int | None] = [None] * len(values)
    for r, (_, i) in enumerate(sorted(keyed), start=1):
        out[i] = r
    return out


@dataclass
class TokenView(View):
    """Coloured tokens with marks and hover text; one CircuitsVis ``ColoredTokens`` widget.

    Build it with :func:`token_view` (from a result) or :func:`colored_tokens` (any
    values). ``scale_max`` fixes the colour scale's end (for several rows on one scale).

    Example:
        >>> import jacobian_scopes as js
        >>> model = js.load_default_model()
        >>> view = js.viz.token_view(js.semantic_scope(model, "The capital of France is", " Paris"))
        >>> view.tokens
        ['<|im_start|>', 'The', ' capital', ' of', ' France', ' is']
        >>> [round(v, 1) for v in view.values], view.ranks()
        ([13.8, 25.1, 24.0, 8.6, 14.1, 6.3], [None, 1, 2, 4, 3, 5])
    """

    tokens: list[str]
    values: list[float]
    title: str | None = None
    meta: str | None = None
    signed: bool = False
    label: str = "score"
    bos: bool = False
    include_bos: bool = False
    positions: list[int] = field(default_factory=list)
    continuation: list[int] = field(default_factory=list)
    target: str | None = None
    target_is_prediction: bool = False
    scale_max: float | None = None
    byte_pieces: list[str] | None = None

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.values):
            raise ValueError(
                f"{len(self.tokens)} tokens but {len(self.values)} values: one value per token"
            )
        self.values = [float(v) for v in self.values]
        if not all(math.isfinite(v) for v in self.values):
            raise ValueError("cannot colour tokens by NaN or infinite values")
        if self.signed is False and any(v < 0 for v in self.values):
            raise ValueError("negative values need signed=True (a symmetric colour scale)")
        for p in self.positions:
            if not 0 <= p < len(self.tokens):
                raise ValueError(f"position {p} is outside the {len(self.tokens)} tokens")

    # ------------------------------------------------------------------ the scale
    @property
    def in_scale(self) -> list[bool]:
        """Which tokens set the colour scale (all but a BOS left out)."""
        return [not (i == 0 and self.bos and not self.include_bos) for i in range(len(self.tokens))]

    @property
    def scale(self) -> float:
        """The value drawn in full colour (the scale is 0…scale, or −scale…scale if signed)."""
        if self.scale_max is not None:
            return float(self.scale_max)
        kept = [abs(v) for v, k in zip(self.values, self.in_scale, strict=True) if k]
        m = max(kept, default=0.0)
        return m if m > 0 else 1.0

    def ranks(self) -> list[int | None]:
        return ranks(self.values, self.in_scale, self.signed)

    # ------------------------------------------------------------------ markup
    def token_markup(self) -> list[str]:
        """Each token as the (escaped) HTML string handed to CircuitsVis."""
        rank = self.ranks()
        n = sum(self.in_scale)
        last = self.positions[-1] if self.positions else None
        out = []
        for i, (tok, v) in enumerate(zip(self.tokens, self.values, strict=True)):
            # A visible mark for line breaks; the "\n" itself makes CircuitsVis break the line.
            text = escape_text(visible_text(tok).replace("\n", "↵\n"))
            if rank[i] is None:
                where = "BOS (attention sink), left out of the colour scale"
            else:
                where = f"rank {rank[i]} of {n}"
            tip = f"#{i} {show_token(tok)} · {self.label} {format_value(v)} · {where}"
            note = piece_note(self.tokens, self.byte_pieces, i)
            if note is not None:
                tip += " · " + note
            elif tok == "" and i + 1 < len(self.tokens):
                # An empty piece is the first byte(s) of a character that a later token
                # completes (see jacobian_scopes.text.merge_byte_pieces).
                tip += " · byte piece of the character shown on the next token"
            if i == 0 and self.bos:
                text = f"<js-bos>{text}</js-bos>"
            if i in self.continuation:
                text = f"<js-cont>{text}</js-cont>"
            if i in self.positions:
                text = f"<js-pos>{text}</js-pos>"
                tip += " · explained position"
            if i == last and self.target is not None:
                tag = "js-pred" if self.target_is_prediction else "js-tgt"
                text += f"<{tag}>{escape_text('→' + self.target)}</{tag}>"
            out.append(text + f"<js-tip>{escape_text(tip)}</js-tip>")
        return out

    def props(self) -> dict[str, Any]:
        """The props of the ColoredTokens widget."""
        m = self.scale
        shown = [v if k else 0.0 for v, k in zip(self.values, self.in_scale, strict=True)]
        return {
            "tokens": self.token_markup(),
            "values": shown,
            "minValue": -m if self.signed else 0.0,
            "maxValue": m,
            "negativeColor": NEGATIVE,
            "positiveColor": POSITIVE,
        }

    def legend(self) -> str:
        m = format_value(self.scale)
        if self.signed:
            swatch = f"linear-gradient(to right, {NEGATIVE}, #fff, {POSITIVE})"
            ends = f"−{m} … 0 … {m}"
        else:
            swatch = f"linear-gradient(to right, #fff, {POSITIVE})"
            ends = f"0 … {m}"
        note = " · BOS left out of the scale" if self.bos and not self.include_bos else ""
        return (
            f'<div class="jsv-legend"><span class="jsv-swatch" style="background: {swatch}">'
            f"</span> {escape_text(self.label)} {escape_text(ends)}{note}</div>"
        )

    def render(self, page: Page) -> str:
        parts = []
        if self.title:
            parts.append(f"<h3>{escape_text(self.title)}</h3>")
        if self.meta:
            parts.append(f'<div class="jsv-meta">{escape_text(self.meta)}</div>')
        parts.append(self.legend())
        parts.append(page.widget("ColoredTokens", self.props()))
        return '<div class="jsv-tokens">' + "\n".join(parts) + "</div>"

    def __rich__(self) -> Any:
        from jacobian_scopes.viz.terminal import token_panel

        return token_panel(self)


def colored_tokens(
    tokens: Sequence[str],
    values: Float[Tensor, " pos"] | Sequence[float],
    *,
    signed: bool | None = None,
    title: str | None = None,
    label: str = "value",
    bos: bool = False,
    position: int | None = None,
    scale_max: float | None = None,
) -> TokenView:
    """Colour any per-token values (signed values get a symmetric scale).

    Example:
        >>> from jacobian_scopes.viz.tokens import colored_tokens
        >>> v = colored_tokens(["a", " b"], [0.5, -1.0], title="difference")
        >>> v.signed, v.scale
        (True, 1.0)
    """
    vals = _as_list(values)
    if signed is None:
        signed = any(v < 0 for v in vals)
    return TokenView(
        tokens=list(tokens),
        values=vals,
        title=title,
        signed=signed,
        label=label,
        bos=bos,
        positions=[] if position is None else [position],
        scale_max=scale_max,
    )


def token_view(
    result: ScopeResult,
    *,
    include_bos: bool = False,
    title: str | None = None,
    scale_max: float | None = None,
) -> TokenView:
    """A result's token scores as coloured tokens, with the explained position and target.

    Layerwise results are shown by their per-token total (``result.token_scores()``);
    :func:`jacobian_scopes.viz.maps.maps` shows them layer by layer.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.viz import token_view
        >>> model = js.load_default_model()
        >>> r = js.semantic_scope(model, "The capital of France is", " Paris")
        >>> token_view(r).save_html("paris.html")
        PosixPath('paris.html')
    """
    if not isinstance(result, ScopeResult):
        raise TypeError(f"token_view needs a ScopeResult, got {type(result).__name__}")
    values = result.token_scores()
    # Signed attributions (input × gradient, integrated gradients, occlusion) get the
    # symmetric scale; the scopes' norms are never negative and keep the 0…max one.
    signed = bool((values < 0).any())
    what = describe(result)
    if result.scores.dim() > 1:
        what += " · all sources combined"
    target, is_prediction = target_text(result)
    positions = list(result.positions)
    return TokenView(
        tokens=list(result.str_tokens),
        values=_as_list(values),
        title=title if title is not None else what,
        meta=context(result),
        signed=signed,
        label="score",
        bos=result.bos,
        include_bos=include_bos,
        positions=positions,
        continuation=[p + 1 for p in positions[:-1]],
        target=target,
        target_is_prediction=is_prediction,
        scale_max=scale_max,
        byte_pieces=result.byte_pieces,
    )


# ---------------------------------------------------------------------- descriptions
def describe(result: ScopeResult) -> str:
    """A one-line name for what a result explains, e.g. ``Semantic · logit of ' liberal'``."""
    name = SCOPE_NAMES.get(result.scope, result.scope)
    t = result.target
    if t is not None:
        tok = "".join(t.tokens)
        if t.mode == "contrast":
            return f"{name} · logit difference {show_token(tok)} − {show_token(t.foil or '')}"
        what = {"logit": "logit", "logprob": "log-prob"}.get(t.mode, t.mode)
        return f"{name} · {what} of {show_token(tok)}"
    if result.fisher is not None:
        return f"{name} · {result.fisher.summary}"
    if result.scope == "direction":
        return f"{name} · at {result.params.get('at', '?')}"
    return name


def intermediate_hook(result: ScopeResult) -> str | None:
    """The hook of a direction explained inside the network (not at the unembedding)."""
    at = result.params.get("at") if result.scope == "direction" else None
    if at is None or str(at).startswith(("unembed", "ln_final")):
        return None
    return str(at)


def context(result: ScopeResult) -> str:
    p = result.position
    tok = result.str_tokens[p] if 0 <= p < len(result.str_tokens) else "?"
    at = intermediate_hook(result)
    if at is not None:
        # A direction inside the network explains that activation, not a prediction.
        return (
            f"explains the direction at {at}, position {p} ({show_token(tok)}) · "
            f"{result.model_name}"
        )
    parts = [f"explains the prediction after position {p} ({show_token(tok)})"]
    if result.top_predictions:
        best = result.top_predictions[0]
        parts.append(f"model's top prediction {show_token(best.token)} ({best.prob:.1%})")
    noise = fisher_noise(result)
    if noise:
        parts.append(noise)
    parts.append(result.model_name)
    return " · ".join(parts)


def fisher_noise(result: ScopeResult) -> str | None:
    """How noisy a sketched Fisher result is, in words, so that a view of one probe's
    scores is not read as exact."""
    f = result.fisher
    if f is None or f.n_probes == 0 or f.stderr is None:
        return None
    if f.n_probes == 1:
        return "one random probe: unbiased, s.e. up to √2 × each score"
    scores, stderr = result.scores.flatten().float(), f.stderr.flatten().float()
    keep = scores > 0
    if not bool(keep.any()):
        return None
    share = float((stderr[keep] / scores[keep]).median())
    return f"{f.n_probes} random probes: s.e. {share:.0%} of a score (median)"


def target_text(result: ScopeResult) -> tuple[str | None, bool]:
    """The text appended after the explained position, and whether it is only the model's
    prediction (scopes without a target)."""
    t = result.target
    if t is not None:
        text = t.tokens[-1]
        if t.foil is not None:
            text += " − " + t.foil
        return text, False
    if result.top_predictions and intermediate_hook(result) is None:
        return result.top_predictions[0].token, True
    return None, False


def _as_list(values: Any) -> list[float]:
    if isinstance(values, Tensor):
        if values.dim() != 1:
            raise ValueError(f"expected one value per token, got shape {tuple(values.shape)}")
        return [float(v) for v in values.detach().float().cpu().tolist()]
    if isinstance(values, np.ndarray):
        return [float(v) for v in values.reshape(-1).tolist()]
    return [float(v) for v in values]


__all__ = ["TokenView", "colored_tokens", "token_view"]

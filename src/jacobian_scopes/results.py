"""What a scope returns: scores per token, and everything needed to trust and redo them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor


@dataclass
class Prediction:
    """One of the model's most probable next tokens at the explained position."""

    token_id: int
    token: str
    prob: float


@dataclass
class Target:
    """What a Semantic scope explains.

    ``mode`` is ``"logit"`` (raw logit of the target), ``"logprob"`` (its log-probability;
    the sum over the continuation for multi-token targets) or ``"contrast"`` (logit of
    ``token`` minus logit of ``foil``).
    """

    ids: list[int]
    tokens: list[str]
    mode: str
    foil_id: int | None = None
    foil: str | None = None


@dataclass
class FisherDetails:
    """How a Fisher score was computed and how far it can be from the exact trace.

    * ``method``: exact, principal or sketch; ``n_vjps`` vector-Jacobian products were used.
    * ``support_size``, ``tail_mass``: the candidates kept (most probable first) and the
      probability left out (at most ``eps``). Every method approximates
      ``tr(J_tᵀ F_S J_t)``; leaving the tail out lowers the score by at most
      ``tail_mass · max_{j∉S} ‖J_tᵀ(w_j − w̄)‖²`` (``tail_fisher_fraction`` of tr F).
    * ``captured``: share of ``tr F_S`` held by the deterministic directions (1 for exact;
      for principal, the score is a lower bound that keeps this share in the isotropic case).
    * ``stderr`` (sketch): standard error of each token's score, from the probes' spread.
    * ``contributions`` (exact, ``decompose=True``): ``p_j ‖J_tᵀ(w_j − w̄)‖²``, one row per
      candidate next token; the rows sum to the scores.
    """

    method: str
    eps: float
    n_vjps: int
    rank: int | None
    n_probes: int
    support_size: int
    tail_mass: float
    trace_full: float
    trace_support: float
    captured: float
    stderr: Tensor | None = None
    candidate_ids: list[int] = field(default_factory=list)
    candidate_tokens: list[str] = field(default_factory=list)
    candidate_probs: list[float] = field(default_factory=list)
    contributions: Tensor | None = None

    @property
    def tail_fisher_fraction(self) -> float:
        if self.trace_full <= 0:
            return 0.0
        return float(max(0.0, 1.0 - self.trace_support / self.trace_full))

    @property
    def is_unbiased(self) -> bool:
        return self.method in ("exact", "sketch")


@dataclass
class ScopeResult:
    """Scores of one scope on one prompt.

    ``scores[..., t]`` is the influence of input token ``t`` on the explained quantity.
    With the default source (the input embeddings) ``scores`` is 1-D, one entry per token
    of ``tokens``. ``position`` is where the explained prediction is made (for a multi-token
    target, ``positions`` lists every position whose prediction is summed).

    ``first_order`` (single-direction scopes) holds the signed terms ``⟨a_t, J_tᵀv⟩``: the
    linearised effect on ``vᵀy`` of zeroing each source activation (at the embeddings,
    "input × gradient"). Unlike ``scores`` (norms, which do not add up), these are additive
    wherever the network is linear: summed over heads, the per-head terms at
    ``attn.hook_z`` equal the attention output's own term minus its bias's,
    ``⟨attn_out_t − b_O, ∂L/∂attn_out_t⟩``, because ``attn_out = Σ_h z_h W_O^h + b_O``.
    Across layers nothing is additive (each layer's gradient already includes every later
    nonlinearity), which is why a layer × token map shows where influence *passes*, not a
    share of it.

    Example:
        >>> r = semantic_scope(model, "The capital of France is", " Paris")  # doctest: +SKIP
        >>> r.top(3)                                                           # doctest: +SKIP
        [(4, ' France', 3.2), ...]
    """

    scope: str
    scores: Float[Tensor, "..."]
    tokens: Int[Tensor, " pos"]
    str_tokens: list[str]
    position: int
    positions: list[int]
    top_predictions: list[Prediction]
    params: dict[str, Any]
    processing: dict[str, Any]
    model_name: str
    target: Target | None = None
    score_axes: tuple[str, ...] = ("token",)
    source_labels: list[str] | None = None
    bos: bool = False
    vectors: Tensor | dict[str, Tensor] | None = None
    first_order: Tensor | None = None
    fisher: FisherDetails | None = None

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.shape[0])

    def token_scores(self) -> Float[Tensor, " pos"]:
        """Scores per input token (summing squared scores over sources/heads if any)."""
        if self.scores.dim() == 1:
            return self.scores
        flat = self.scores.reshape(-1, self.scores.shape[-1])
        if self.scope == "fisher":
            return flat.sum(0)
        return flat.pow(2).sum(0).sqrt()

    def top(self, k: int = 5, include_bos: bool = False) -> list[tuple[int, str, float]]:
        """The ``k`` highest-scoring tokens as (index, token, score), best first."""
        s = self.token_scores().clone().float()
        if self.bos and not include_bos:
            s[0] = float("-inf")
        order = torch.argsort(s, descending=True)[: max(0, k)]
        return [
            (int(i), self.str_tokens[int(i)], float(s[int(i)]))
            for i in order
            if torch.isfinite(s[int(i)])
        ]

    def to_dataframe(self) -> Any:
        """One row per token (and per source when there are several), as a pandas DataFrame.

        Each row also names what was explained: ``prompt`` (the text, BOS left out),
        ``scope``, ``target``, ``foil`` and the explained ``position``. Token text has its
        bidirectional controls written as visible ``\\uXXXX`` escapes.
        """
        import pandas as pd

        from jacobian_scopes.text import visible_text

        rows = []
        scores = self.scores.reshape(-1, self.n_tokens) if self.scores.dim() > 1 else None
        labels = self.source_labels or [""]
        t0 = self.target
        about = {
            "prompt": visible_text("".join(self.str_tokens[1 if self.bos else 0 :])),
            "scope": self.scope,
            "target": None if t0 is None else visible_text("".join(t0.tokens)),
            "foil": None if t0 is None or t0.foil is None else visible_text(t0.foil),
            "position": self.position,
        }
        for t in range(self.n_tokens):
            base = {
                **about,
                "index": t,
                "token": visible_text(self.str_tokens[t]),
                "token_id": int(self.tokens[t]),
            }
            if scores is None:
                rows.append({**base, "score": float(self.scores[t])})
            else:
                for j in range(scores.shape[0]):
                    label = labels[j] if j < len(labels) else str(j)
                    rows.append({**base, "source": label, "score": float(scores[j, t])})
        return pd.DataFrame(rows)

    # ------------------------------------------------------------------ seeing it
    # The views live in jacobian_scopes.viz (imported on use: matplotlib and rich are
    # only loaded when a result is shown).
    def show(self, **kwargs: Any) -> None:
        """Display: CircuitsVis coloured tokens in a notebook, rich text in a terminal.

        Example:
            >>> js.semantic_scope(model, prompt, " liberal").show()     # doctest: +SKIP
        """
        from jacobian_scopes.viz.report import result_view, show

        show(result_view(self, **kwargs))

    def _repr_html_(self) -> str:
        from jacobian_scopes.viz.report import notebook_html, result_view

        return notebook_html(result_view(self))

    def save_html(self, path: Any, *, title: str | None = None) -> Any:
        """Write this result as a self-contained offline HTML page; returns the path.

        Example:
            >>> r.save_html("reports/liberal.html")                      # doctest: +SKIP
        """
        from jacobian_scopes.viz.report import save_html

        return save_html(path, self, title=title)

    def plot(self, kind: str = "auto", **kwargs: Any) -> Any:
        """A matplotlib Figure: ``"tokens"`` (bars, or layer maps for drill-down results)
        or ``"series"`` (a numeric prompt's values with their influence); ``"auto"`` picks
        tokens. Save it with ``fig.savefig("x.png" | "x.svg" | "x.pdf")``.

        Example:
            >>> r.plot().savefig("liberal.svg")                          # doctest: +SKIP
        """
        from jacobian_scopes.viz import plots

        if kind in ("auto", "tokens"):
            return plots.plot_result(self, **kwargs)
        if kind == "series":
            return plots.plot_series(self, **kwargs)
        raise ValueError(f"kind must be 'auto', 'tokens' or 'series', got {kind!r}")

    def __rich__(self) -> Any:
        from jacobian_scopes.viz.terminal import result_renderable

        return result_renderable(self)

    def __repr__(self) -> str:
        what = self.scope
        if self.target is not None:
            what += f" {self.target.mode} of {''.join(self.target.tokens)!r}"
            if self.target.foil is not None:
                what += f" vs {self.target.foil!r}"
        if self.fisher is not None:
            what += f" [{self.fisher.method}, {self.fisher.n_vjps} VJPs]"
        best = ", ".join(f"{tok!r}={s:.3g}" for _, tok, s in self.top(3))
        return (
            f"ScopeResult({what}; {self.n_tokens} tokens, position {self.position}, "
            f"shape {tuple(self.scores.shape)}; top: {best})"
        )

    # ------------------------------------------------------------------ saving it
    def to_csv(self, path: Any) -> Any:
        """Write :meth:`to_dataframe` as CSV; returns the path.

        Example:
            >>> r.to_csv("liberal.csv")      # doctest: +SKIP
        """
        self.to_dataframe().to_csv(path, index=False)
        return path

    def save(self, path: Any) -> Any:
        """Save as JSON, every field, exactly (see :func:`jacobian_scopes.save`); returns
        the path. Read it back with :func:`jacobian_scopes.load`, without the model.

        Example:
            >>> r.save("liberal.json")                               # doctest: +SKIP
            >>> js.load("liberal.json").scores.equal(r.scores)       # doctest: +SKIP
            True
        """
        from jacobian_scopes.io import save

        return save(self, path)

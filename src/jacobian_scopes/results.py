"""What a scope returns: scores per token, and everything needed to trust and redo them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor


@dataclass
class Prediction:
    """One of the model's most probable next tokens at the explained position.

    Example:
        >>> import jacobian_scopes as js
        >>> model = js.load_default_model()
        >>> r = js.temperature_scope(model, "The capital of France is")
        >>> best = r.top_predictions[0]
        >>> best.token, round(best.prob, 2)
        (' Paris', 0.75)
    """

    token_id: int
    token: str
    prob: float


@dataclass
class Target:
    """What a Semantic scope explains.

    ``mode`` is ``"logit"`` (raw logit of the target), ``"logprob"`` (its log-probability;
    the sum over the continuation for multi-token targets) or ``"contrast"`` (logit of
    ``token`` minus logit of ``foil``).

    Example:
        >>> import jacobian_scopes as js
        >>> model = js.load_default_model()
        >>> r = js.semantic_scope(model, "The capital of France is", " Paris", foil=" London")
        >>> r.target
        Target(ids=[7042], tokens=[' Paris'], mode='contrast', foil_id=4528, foil=' London')
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
      0 for the default sketch, which has none; for principal, the score is a lower bound
      that keeps this share in the isotropic case).
    * ``stderr`` (sketch): standard error of each token's score, from the probes' spread
      (with one probe, the default, the bound √2 × its own term: one random-sign probe of
      ``tr M`` has sd ``≤ √2‖M‖_F ≤ √2 tr M``).
    * ``contributions`` (exact, ``decompose=True``): ``p_j ‖J_tᵀ(w_j − w̄)‖²``, one row per
      candidate next token; the rows sum to the scores.

    Example:
        >>> import torch, jacobian_scopes as js
        >>> model = js.load_default_model()
        >>> r = js.fisher_scope(model, "The capital of France is", method="exact",
        ...                     eps=0.2, decompose=True)
        >>> d = r.fisher
        >>> d.method, d.is_unbiased, d.tail_mass <= d.eps, d.captured
        ('exact', True, True, 1.0)
        >>> d.candidate_tokens[:3], d.contributions.shape[0] == d.support_size
        ([' Paris', ' Mon', ' Le'], True)
        >>> torch.allclose(d.contributions.sum(0), r.scores, rtol=1e-4)
        True
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

    @property
    def summary(self) -> str:
        """The method and its cost, as labels show it: ``"sketch, 1 VJP"``."""
        return f"{self.method}, {self.n_vjps} VJP{'' if self.n_vjps == 1 else 's'}"


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

    ``str_tokens`` show a character that byte-level BPE split over several tokens once, on
    the token that completes it (the tokens before it are ``""``); ``byte_pieces`` then holds
    the tokenizer's own string of each of those tokens (``""`` for the others), so that views
    can show what the model saw. It is None when no character was split.

    Example:
        >>> import jacobian_scopes as js
        >>> model = js.load_default_model()
        >>> r = js.semantic_scope(model, "The capital of France is", " Paris")
        >>> r.str_tokens
        ['<|im_start|>', 'The', ' capital', ' of', ' France', ' is']
        >>> r.top(3)
        [(1, 'The', ...), (2, ' capital', ...), (4, ' France', ...)]
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
    byte_pieces: list[str] | None = None

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
            >>> import jacobian_scopes as js
            >>> model = js.load_default_model()
            >>> js.semantic_scope(model, "The capital of France is", " Paris").show()
            Semantic · logit of ' Paris'
            explains the prediction after position 5 (' is') · model's top prediction ...
        """
        from jacobian_scopes.viz.report import result_view, show

        show(result_view(self, **kwargs))

    def _repr_html_(self) -> str:
        from jacobian_scopes.viz.report import notebook_html, result_view

        return notebook_html(result_view(self))

    def save_html(self, path: Any, *, title: str | None = None) -> Any:
        """Write this result as a self-contained offline HTML page; returns the path.

        Example:
            >>> import jacobian_scopes as js
            >>> model = js.load_default_model()
            >>> r = js.semantic_scope(model, "The capital of France is", " Paris")
            >>> r.save_html("reports/paris.html")
            PosixPath('reports/paris.html')
        """
        from jacobian_scopes.viz.report import save_html

        return save_html(path, self, title=title)

    def plot(self, kind: Literal["auto", "tokens", "series"] = "auto", **kwargs: Any) -> Any:
        """A matplotlib Figure: ``"tokens"`` (bars, or layer maps for drill-down results)
        or ``"series"`` (a numeric prompt's values with their influence); ``"auto"`` picks
        tokens. Save it with ``fig.savefig("x.png" | "x.svg" | "x.pdf")``.

        Example:
            >>> import jacobian_scopes as js
            >>> model = js.load_default_model()
            >>> r = js.semantic_scope(model, "The capital of France is", " Paris")
            >>> r.plot().savefig("paris.svg")
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
            what += f" [{self.fisher.summary}]"
        best = ", ".join(f"{tok!r}={s:.3g}" for _, tok, s in self.top(3))
        return (
            f"ScopeResult({what}; {self.n_tokens} tokens, position {self.position}, "
            f"shape {tuple(self.scores.shape)}; top: {best})"
        )

    # ------------------------------------------------------------------ saving it
    def to_csv(self, path: Any) -> Any:
        """Write :meth:`to_dataframe` as CSV; returns the path.

        Example:
            >>> import jacobian_scopes as js
            >>> model = js.load_default_model()
            >>> r = js.semantic_scope(model, "The capital of France is", " Paris")
            >>> r.to_csv("paris.csv")
            'paris.csv'
        """
        self.to_dataframe().to_csv(path, index=False)
        return path

    def save(self, path: Any) -> Any:
        """Save as JSON, every field, exactly (see :func:`jacobian_scopes.save`); returns
        the path. Read it back with :func:`jacobian_scopes.load`, without the model.

        Example:
            >>> import jacobian_scopes as js
            >>> model = js.load_default_model()
            >>> r = js.semantic_scope(model, "The capital of France is", " Paris")
            >>> r.save("paris.json")
            PosixPath('paris.json')
            >>> js.load("paris.json").scores.equal(r.scores)
            True
        """
        from jacobian_scopes.io import save

        return save(self, path)


class ScopeResults(list[ScopeResult]):
    """The results of several prompts, in the order of the prompts.

    A list of :class:`ScopeResult` (index it, iterate it) that also shows, saves and
    tabulates all of them at once.

    Example:
        >>> import jacobian_scopes as js
        >>> model = js.load_default_model()
        >>> rs = js.semantic_scope(model, ["The capital of France is",
        ...                                "The capital of Italy is"], [" Paris", " Rome"])
        >>> [r.top(3)[2][1] for r in rs]
        [' France', ' Italy']
        >>> rs.to_dataframe().groupby("prompt_index").token.count().tolist()
        [6, 6]
    """

    def to_dataframe(self) -> Any:
        """Every result's :meth:`ScopeResult.to_dataframe`, one after the other, with a
        ``prompt_index`` column first."""
        import pandas as pd

        frames = []
        for i, r in enumerate(self):
            frame = r.to_dataframe()
            frame.insert(0, "prompt_index", i)
            frames.append(frame)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def to_csv(self, path: Any) -> Any:
        """Write :meth:`to_dataframe` as CSV; returns the path."""
        self.to_dataframe().to_csv(path, index=False)
        return path

    def save(self, path: Any) -> Any:
        """Save all results as one JSON file; :func:`jacobian_scopes.load` gives back a
        :class:`ScopeResults`. Returns the path."""
        from jacobian_scopes.io import save

        return save(list(self), path)

    def show(self, **kwargs: Any) -> None:
        """Display every result, one after the other (see :meth:`ScopeResult.show`)."""
        from jacobian_scopes.viz.report import result_view, show

        show([result_view(r, **kwargs) for r in self])

    def save_html(self, path: Any, *, title: str | None = None) -> Any:
        """Write every result into one self-contained offline HTML page; returns the path."""
        from jacobian_scopes.viz.report import save_html

        return save_html(path, *self, title=title)

    def _repr_html_(self) -> str:
        from jacobian_scopes.viz.report import notebook_html, result_view

        return notebook_html([result_view(r) for r in self])

    def __repr__(self) -> str:
        inner = "\n".join(f"  {r!r}," for r in self)
        return f"ScopeResults([\n{inner}\n])" if self else "ScopeResults([])"


@dataclass
class GenerationResult:
    """A generated continuation and the attribution of each generated token.

    ``tokens`` holds the prompt and the ``N`` generated tokens. ``scores[i, t]`` is the
    influence of context token ``t`` (a prompt token or an earlier generated token) on
    generated token ``i``, predicted at ``positions[i]``; the context is ``tokens[:-1]``
    (the last generated token is never an input). Entries after ``positions[i]`` are NaN:
    those tokens did not exist yet, so they get no score (their gradient is exactly zero).
    ``token_probs[i]`` is the probability the model gave generated token ``i``.

    Example:
        >>> import jacobian_scopes as js
        >>> model = js.load_default_model()
        >>> g = js.generate_scope(model, "The capital of France is", 3)
        >>> g.generated_tokens
        [' Paris', '.', ...]
        >>> g.scores.shape
        torch.Size([3, 8])
    """

    scope: str
    tokens: Int[Tensor, " seq"]
    str_tokens: list[str]
    n_prompt: int
    positions: list[int]
    scores: Float[Tensor, "generated context"]
    token_probs: list[float]
    params: dict[str, Any]
    processing: dict[str, Any]
    model_name: str
    bos: bool = False
    first_order: Float[Tensor, "generated context"] | None = None
    fisher: list[FisherDetails] | None = None

    @property
    def n_generated(self) -> int:
        return len(self.positions)

    @property
    def generated_ids(self) -> list[int]:
        return [int(t) for t in self.tokens[self.n_prompt :]]

    @property
    def generated_tokens(self) -> list[str]:
        return self.str_tokens[self.n_prompt :]

    @property
    def context_tokens(self) -> list[str]:
        return self.str_tokens[: self.scores.shape[1]]

    def row(self, i: int) -> Float[Tensor, " context"]:
        """Scores of generated token ``i`` over the tokens it could see."""
        return self.scores[i, : self.positions[i] + 1]

    def top(self, i: int, k: int = 3, include_bos: bool = False) -> list[tuple[int, str, float]]:
        """The ``k`` context tokens with the highest scores for generated token ``i``."""
        s = self.row(i).clone().float()
        if self.bos and not include_bos:
            s[0] = float("-inf")
        order = torch.argsort(s, descending=True)[: max(0, k)]
        return [
            (int(t), self.str_tokens[int(t)], float(s[int(t)]))
            for t in order
            if torch.isfinite(s[int(t)])
        ]

    def to_dataframe(self) -> Any:
        """One row per (generated token, context token it could see), as a pandas DataFrame."""
        import pandas as pd

        rows = []
        for i, p in enumerate(self.positions):
            gen = {
                "generated_index": i,
                "generated_token": self.generated_tokens[i],
                "generated_id": self.generated_ids[i],
                "position": p,
            }
            for t in range(p + 1):
                row = {
                    **gen,
                    "context_index": t,
                    "context_token": self.str_tokens[t],
                    "context_id": int(self.tokens[t]),
                    "in_prompt": t < self.n_prompt,
                    "score": float(self.scores[i, t]),
                }
                if self.first_order is not None:
                    row["first_order"] = float(self.first_order[i, t])
                rows.append(row)
        return pd.DataFrame(rows)

    def to_csv(self, path: Any) -> Any:
        """Write :meth:`to_dataframe` as CSV; returns the path."""
        self.to_dataframe().to_csv(path, index=False)
        return path

    def save(self, path: Any) -> Any:
        """Save as JSON (see :func:`jacobian_scopes.save`); returns the path."""
        from jacobian_scopes.io import save

        return save(self, path)

    def plot(self, include_bos: bool = False, ax: Any = None) -> Any:
        """The generated × context matrix as a heat map (matplotlib Figure).

        The BOS column is left out of the colour scale (it is an attention sink and would
        flatten everything else) unless ``include_bos``; cells after each token's position
        stay blank.

        Example:
            >>> import jacobian_scopes as js
            >>> model = js.load_default_model()
            >>> g = js.generate_scope(model, "The capital of France is", 3)
            >>> g.plot().savefig("generation.svg")
        """
        import matplotlib.pyplot as plt
        import numpy as np

        data = self.scores.float().numpy().copy()
        shown = data[:, 1:] if self.bos and not include_bos and data.shape[1] > 1 else data
        finite = shown[np.isfinite(shown)]
        vmax = float(finite.max()) if finite.size else 1.0
        if ax is None:
            width = min(24.0, 2.0 + 0.28 * data.shape[1])
            height = min(16.0, 1.5 + 0.3 * data.shape[0])
            fig, ax = plt.subplots(figsize=(width, height))
        else:
            fig = ax.figure
        image = ax.imshow(
            np.ma.masked_invalid(data), aspect="auto", cmap="viridis", vmin=0.0, vmax=vmax
        )
        ax.set_xticks(range(data.shape[1]))
        ax.set_xticklabels(
            [_label(s) for s in self.context_tokens], rotation=90, fontsize=7, family="monospace"
        )
        ax.set_yticks(range(data.shape[0]))
        ax.set_yticklabels(
            [_label(s) for s in self.generated_tokens], fontsize=7, family="monospace"
        )
        ax.axvline(self.n_prompt - 0.5, color="white", linewidth=1)
        ax.set_xlabel("context token (prompt | generated)")
        ax.set_ylabel("generated token")
        ax.set_title(f"{self.scope} scope across generation")
        fig.colorbar(image, ax=ax, shrink=0.8)
        fig.tight_layout()
        return fig

    def view(self, include_bos: bool = False) -> Any:
        """The matrix as an HTML heat map (a :class:`jacobian_scopes.viz.MapView`): one row
        per generated token, one column per context token; each cell's value and rank on
        hover. Cells after a token's position (not yet generated) show 0. Pass it to
        :func:`jacobian_scopes.save_html` with other views.

        Example:
            >>> import jacobian_scopes as js
            >>> model = js.load_default_model()
            >>> g = js.generate_scope(model, "The capital of France is", 3)
            >>> js.save_html("gen.html", g.view(), title="Paris")
            PosixPath('gen.html')
        """
        from jacobian_scopes.viz.maps import MapView

        values = torch.nan_to_num(self.scores.float(), nan=0.0).tolist()
        return MapView(
            values=values,
            rows=[f"{i}: {tok}" for i, tok in enumerate(self.generated_tokens)],
            cols=self.context_tokens,
            title=f"{self.scope} scope across generation",
            meta=(
                f"{self.n_prompt} prompt tokens, {self.n_generated} generated "
                f"({'sampled' if self.params.get('do_sample') else 'greedy'}); row i: which "
                "context tokens drove generated token i"
            ),
            col_kind="token",
            bos=self.bos,
            include_bos=include_bos,
            positions=[],
        )

    def save_html(self, path: Any, *, title: str | None = None) -> Any:
        """Write :meth:`view` as a self-contained offline HTML page; returns the path."""
        from jacobian_scopes.viz.report import save_html

        return save_html(path, self.view(), title=title)

    def __repr__(self) -> str:
        text = "".join(self.generated_tokens)
        return (
            f"GenerationResult({self.scope}; {self.n_prompt} prompt tokens, "
            f"{self.n_generated} generated: {text[:60]!r}; scores {tuple(self.scores.shape)})"
        )


def _label(token: str, limit: int = 14) -> str:
    # Matplotlib reads "$" as maths; newlines break the axis.
    text = token.replace("\n", "\\n").replace("$", r"\$")
    return text if len(text) <= limit else text[: limit - 1] + "…"

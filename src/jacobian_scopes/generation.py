"""Attribution across generation: which earlier tokens drove each generated token.

The model continues a prompt for N tokens (greedy, or sampled with a seeded generator).
Then one forward pass over the prompt and the generated tokens, and one batched backward
pass, give the whole generated × context matrix: the i-th generated token is predicted at
position ``p_i = n_prompt − 1 + i``, and its direction is nonzero only there (``w_{token_i}``
for the Semantic scope, ``ŷ_{p_i}`` for Temperature, the rows of ``p_i``'s Fisher plan), so
the N directions (Fisher: all plans' rows) are pulled back together, each to its own
position. Row ``i`` equals the single-prompt scope at ``position=p_i`` (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from jacobian_scopes.adapter import EMBED_HOOK, ModelAdapter
from jacobian_scopes.engine import Trace
from jacobian_scopes.errors import ScopeInputError, TemperatureUndefinedError
from jacobian_scopes.guard import frozen
from jacobian_scopes.inputs import Prompt, resolve_tokens
from jacobian_scopes.results import FisherDetails
from jacobian_scopes.scopes import (
    _TEMPERATURE_HELP,
    FisherOptions,
    SemanticTarget,
    fisher_combine,
    fisher_details,
    semantic_directions,
    temperature_direction,
)
from jacobian_scopes.sources import resolve_sources

SCOPES = ("semantic", "temperature", "fisher")


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
        >>> g = generate_scope(model, "The capital of France is", 5)   # doctest: +SKIP
        >>> g.generated_tokens                                           # doctest: +SKIP
        [' Paris', '.', ...]
        >>> g.scores.shape                                               # doctest: +SKIP
        torch.Size([5, 10])
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
            >>> g.plot().savefig("generation.svg")   # doctest: +SKIP
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
            >>> js.save_html("gen.html", g.view(), title="Lorenz")   # doctest: +SKIP
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


def generate(
    model: Any,
    tokens: Int[Tensor, "1 pos"],
    n_tokens: int,
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    stop_at_eos: bool = True,
    progress: bool = False,
) -> Int[Tensor, "1 total"]:
    """Continue ``tokens`` by up to ``n_tokens`` tokens; returns prompt + continuation.

    A plain loop of full forward passes without a KV cache (slower than the model's own
    ``generate`` on long continuations, but the same on HookedTransformer and the Bridge of
    every TransformerLens release, and reproducible): greedy by default; with
    ``do_sample`` it samples from ``softmax(logits / temperature)`` (restricted to the
    ``top_k`` most probable tokens if given) with a ``torch.Generator`` seeded by ``seed``.

    Example:
        >>> generate(model, model.to_tokens("1, 2, 3,"), 4)   # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    adapter = ModelAdapter(model)
    generator = torch.Generator().manual_seed(seed)
    eos = getattr(getattr(model, "tokenizer", None), "eos_token_id", None)
    out = tokens
    with frozen(model), torch.no_grad():
        for _ in tqdm(range(n_tokens), desc="generating", unit="token", disable=not progress):
            logits = model(out)[0, -1].float()
            if do_sample:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = torch.softmax(logits, dim=-1).cpu()
                nxt = int(torch.multinomial(probs, 1, generator=generator))
            else:
                nxt = int(logits.argmax())
            step = torch.tensor([[nxt]], dtype=out.dtype, device=adapter.device)
            out = torch.cat([out, step], dim=1)
            if stop_at_eos and eos is not None and nxt == int(eos):
                break
    return out


def generate_scope(
    model: Any,
    prompt: Prompt,
    n_tokens: int = 16,
    scope: str = "semantic",
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    stop_at_eos: bool = True,
    mode: str | None = None,
    method: str = "sketch",
    eps: float = 1e-3,
    rank: int | None = None,
    n_probes: int = 1,
    fisher_seed: int | None = 0,
    prepend_bos: bool | None = None,
    checkpoint: bool | None = None,
    progress: bool = False,
) -> GenerationResult:
    """Generate ``n_tokens`` tokens and attribute each to the prompt and the earlier
    generated tokens with the chosen scope (``"semantic"``, ``"temperature"``, ``"fisher"``).

    Sampling options as in :func:`generate`. ``mode`` is the Semantic scope's (``"logit"``
    or ``"logprob"``; the target of each row is the generated token); ``method``, ``eps``,
    ``rank``, ``n_probes`` and ``fisher_seed`` are the Fisher scope's, as in
    :func:`jacobian_scopes.fisher_scope`. The cost after generation is one forward and one
    batched backward pass over the whole sequence.

    Example:
        >>> from jacobian_scopes import generate_scope, load_default_model
        >>> model = load_default_model()                                   # doctest: +SKIP
        >>> g = generate_scope(model, "The capital of France is", 4)       # doctest: +SKIP
        >>> g.top(0)                                                       # doctest: +SKIP
        [(5, ' France', 3.1...), ...]
    """
    if scope not in SCOPES:
        raise ScopeInputError(f"unknown scope {scope!r}; choose one of {list(SCOPES)}")
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 1:
        raise ScopeInputError(f"n_tokens must be a positive int, got {n_tokens!r}")
    if do_sample and not temperature > 0:
        raise ScopeInputError(f"temperature must be positive, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ScopeInputError(f"top_k must be a positive int, got {top_k!r}")
    if mode not in (None, "logit", "logprob"):
        raise ScopeInputError(f"mode must be 'logit' or 'logprob', got {mode!r}")
    adapter = ModelAdapter(model)
    prompt_tokens = resolve_tokens(adapter, prompt, prepend_bos)
    n_prompt = int(prompt_tokens.shape[1])
    if adapter.n_ctx is not None and n_prompt + n_tokens - 1 > adapter.n_ctx:
        raise ScopeInputError(
            f"the prompt ({n_prompt} tokens) and {n_tokens} generated tokens do not fit the "
            f"model's context of {adapter.n_ctx}"
        )
    if scope == "temperature" and adapter.final_norm_is_constant():
        raise TemperatureUndefinedError(_TEMPERATURE_HELP)
    options = FisherOptions(method, eps, rank, n_probes, False, fisher_seed)
    if scope == "fisher":
        options.check()  # before generating, not after

    full = generate(
        model,
        prompt_tokens,
        n_tokens,
        do_sample=do_sample,
        temperature=temperature,
        top_k=top_k,
        seed=seed,
        stop_at_eos=stop_at_eos,
        progress=progress,
    )
    generated = [int(t) for t in full[0, n_prompt:]]
    n_gen = len(generated)
    context = full[:, :-1]  # the last generated token is never an input
    positions = list(range(n_prompt - 1, n_prompt - 1 + n_gen))
    spec = resolve_sources(adapter, None)

    with Trace(adapter, context, sources=spec.taps, checkpoint=checkpoint) as tr:
        assert tr.logits is not None
        logits = tr.logits.detach()[0]
        plans = None
        probs = None
        if scope == "semantic":
            target = SemanticTarget(generated, mode or "logit")
            rows = semantic_directions(adapter, target, logits[positions])  # (N, d)
            sizes = [1] * n_gen
        elif scope == "temperature":
            y = tr.explanandum[0]
            rows = torch.stack([temperature_direction(y, p) for p in positions])
            sizes = [1] * n_gen
        else:
            probs = torch.softmax(logits[positions].float(), dim=-1)
            plans = [options.plan(adapter, probs[i]) for i in range(n_gen)]
            rows = torch.cat([plan.rows for plan in plans])
            sizes = [int(plan.rows.shape[0]) for plan in plans]
        # Block structure: the rows of generated token i are nonzero only at slot i.
        dirs = rows.new_zeros((rows.shape[0], n_gen, rows.shape[-1]))
        owner = torch.repeat_interleave(torch.arange(n_gen), torch.tensor(sizes))
        dirs[torch.arange(rows.shape[0]), owner] = rows
        pb = tr.pullback(positions, dirs, keep_dots=scope != "fisher")

    squared = pb.squared[EMBED_HOOK][:, 0].cpu()  # (K, context)
    n_context = context.shape[1]
    scores = torch.full((n_gen, n_context), float("nan"))
    first_order = None
    details = None
    if plans is None:
        scores[:] = squared.sqrt()
        first_order = pb.dots[EMBED_HOOK][:, 0].cpu().float()
    else:
        assert probs is not None
        details = []
        starts = [0, *torch.tensor(sizes).cumsum(0).tolist()]
        for i, plan in enumerate(plans):
            block = {EMBED_HOOK: squared[starts[i] : starts[i + 1]]}
            s, stderr, _ = fisher_combine(spec, plan, block)
            scores[i] = s[EMBED_HOOK]
            if stderr is not None:
                stderr[positions[i] + 1 :] = float("nan")
            details.append(fisher_details(adapter, options, plan, probs[i].cpu(), stderr, None))
    for i, p in enumerate(positions):
        scores[i, p + 1 :] = float("nan")
        if first_order is not None:
            first_order[i, p + 1 :] = float("nan")

    probs_all = torch.softmax(logits[positions].float(), dim=-1)
    token_probs = [float(probs_all[i, g]) for i, g in enumerate(generated)]
    bos_id = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
    params: dict[str, Any] = {
        "n_tokens": n_tokens,
        "do_sample": do_sample,
        "temperature": temperature,
        "top_k": top_k,
        "seed": seed,
        "stop_at_eos": stop_at_eos,
        "generation": "own loop (full forward per token, no KV cache)",
    }
    if scope == "semantic":
        params["mode"] = mode or "logit"
    if scope == "fisher":
        fisher_params = options.params()
        for key in ("method", "eps", "rank", "n_probes"):
            params[key] = fisher_params[key]
        params["fisher_seed"] = fisher_seed
    return GenerationResult(
        scope=scope,
        tokens=full[0].detach().cpu(),
        str_tokens=adapter.to_str_tokens(full[0].cpu()),
        n_prompt=n_prompt,
        positions=positions,
        scores=scores,
        token_probs=token_probs,
        params=params,
        processing=adapter.processing_state(),
        model_name=adapter.name,
        bos=bool(bos_id is not None and int(full[0, 0]) == int(bos_id)),
        first_order=first_order,
        fisher=details,
    )

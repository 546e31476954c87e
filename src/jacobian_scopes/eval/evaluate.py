"""Is an attribution faithful? Deletion AOPC, ERASER metrics and leave-one-out agreement.

For every passage the model's original top-1 next token ``y`` at the explained position is
the measured quantity (as in the Jacobian Scopes paper); each method ranks the tokens, and
deletion means setting a token's *input embedding* to zero while it stays attended. Two
protocols say what a passage is and which prediction is explained:

* ``protocol="default"``: the prompt as given (a string gets the model's BOS); the
  prediction after its last token is explained (the model's top-1 unless
  ``explain="reference"``); the tokens are ranked without BOS (unless ``include_bos=True``:
  deleting the attention sink is a different experiment) and ``n`` counts the ranked tokens.
* ``protocol="paper"``: the authors' script exactly. A prompt is the *whole* passage,
  tokenised without BOS (``T`` tokens); the prediction at ``T − 2`` is explained, i.e. the
  passage's last token (the last piece of the final word when it has several), and methods
  that take a target explain that token; all ``T`` tokens are ranked (the last one scores 0:
  it cannot affect the prediction before it) and ``n = T``.

* **Deletion AOPC** (the paper's metric): delete the top 5%, 10%, 20% of the ``n`` ranked
  tokens (at least one; ``floor(f·n)`` as the authors' code), record ``Δ = log p(y | deleted) −
  log p(y)``, and take the trapezoid area of Δ over the fractions. More negative = more
  faithful. (The paper's Llama-3.2-1B figures are on this scale: random −0.261, Fisher
  −1.320.)
* **ERASER** (DeYoung et al., 2020), in probabilities: comprehensiveness ``p(y) −
  p(y | top k% deleted)`` (higher = better), sufficiency ``p(y) − p(y | only the top k%
  kept)`` (lower = better), each averaged over the bins 1, 5, 10, 20, 50%.
* **Leave-one-out agreement**: Spearman's ρ between a method's scores and ``KL(p(x) ‖
  p(x without t))`` over the ranked tokens (the paper: Fisher 0.59, IG 0.30).

All deletions of a passage (every method, fraction and bin, and the leave-one-out rows) go
through one batched, gradient-free pass (identical masks are run once). Results are
appended to a JSONL file as they are computed; rerunning with the same file skips what is
there. Per-passage values are kept, so :class:`Evaluation` gives bootstrap confidence
intervals and paired comparisons between methods.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from jacobian_scopes.adapter import ModelAdapter
from jacobian_scopes.errors import ScopeInputError
from jacobian_scopes.eval import baselines, perturb, stats
from jacobian_scopes.eval.distributed import barrier, exchange, process_group, torchrun_ranks
from jacobian_scopes.eval.methods import (
    Method,
    MethodLike,
    method_scores,
    random_method,
    resolve_methods,
)
from jacobian_scopes.eval.passages import Passage, as_passages
from jacobian_scopes.eval.sanity import RandomisationResult, randomisation_check
from jacobian_scopes.eval.store import Key, ResultsStore, read_records
from jacobian_scopes.inputs import resolve_target, resolve_tokens
from jacobian_scopes.options import Prompt
from jacobian_scopes.progress import progress

__all__ = [
    "DELETION_FRACTIONS",
    "ERASER_BINS",
    "Evaluation",
    "RandomisationResult",
    "aopc",
    "comprehensiveness_sufficiency",
    "evaluate",
    "loo_agreement",
    "randomisation_check",
    "read_results",
]

DELETION_FRACTIONS = (0.05, 0.1, 0.2)
ERASER_BINS = (0.01, 0.05, 0.1, 0.2, 0.5)
Metric = Literal["aopc", "eraser", "loo"]
Explain = Literal["top1", "reference"]
Protocol = Literal["default", "paper"]
METRICS: tuple[str, ...] = get_args(Metric)
PROTOCOLS: tuple[str, ...] = get_args(Protocol)
# Which way is better, for tables and plots.
HIGHER_IS_BETTER = {
    "aopc": False,
    "comprehensiveness": True,
    "sufficiency": False,
    "loo_spearman": True,
}
_FIELDS: dict[str, tuple[str, ...]] = {
    "aopc": ("aopc", "deletion"),
    "eraser": ("comprehensiveness", "sufficiency"),
    "loo": ("loo_spearman",),
}


@dataclass(frozen=True)
class Settings:
    """What the metrics depend on; stored in (and checked against) the results file."""

    fractions: tuple[float, ...] = DELETION_FRACTIONS
    eraser_bins: tuple[float, ...] = ERASER_BINS
    include_bos: bool = False
    explain: Explain = "top1"
    seed: int = 0
    protocol: Protocol = "default"

    def check(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ScopeInputError(
                f"protocol must be one of {list(PROTOCOLS)}, got {self.protocol!r}"
            )
        for name, values in (("fractions", self.fractions), ("eraser_bins", self.eraser_bins)):
            if not values or any(not 0 < f <= 1 for f in values):
                raise ScopeInputError(f"{name} must be fractions in (0, 1], got {values}")
            if list(values) != sorted(set(values)):
                raise ScopeInputError(f"{name} must be strictly increasing, got {values}")
        if len(self.fractions) < 2:
            raise ScopeInputError("the AOPC needs at least two deletion fractions")
        if self.explain not in ("top1", "reference"):
            raise ScopeInputError(f"explain must be 'top1' or 'reference', got {self.explain!r}")

    def config(self) -> dict[str, Any]:
        """These settings as a results file's config record holds them."""
        return {
            "protocol": self.protocol,
            "fractions": list(self.fractions),
            "eraser_bins": list(self.eraser_bins),
            "include_bos": self.include_bos,
            "explain": self.explain,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Settings:
        """The settings a results file's config record holds (:meth:`config`'s inverse)."""
        return cls(
            tuple(config["fractions"]),
            tuple(config["eraser_bins"]),
            bool(config["include_bos"]),
            config["explain"],
            int(config["seed"]),
            config["protocol"],
        )


# The values of settings that files written before those settings existed were written
# under.
ASSUMED: dict[str, Any] = {"protocol": "default"}


def n_deleted(fraction: float, n: int) -> int:
    """How many of ``n`` ranked tokens a fraction deletes: ``floor(f·n)``, at least one.

    Example:
        >>> from jacobian_scopes.eval.evaluate import n_deleted
        >>> [n_deleted(f, 83) for f in (0.05, 0.1, 0.2)]
        [4, 8, 16]
    """
    return max(1, min(n, int(fraction * n + 1e-9)))


def trapezoid(values: Sequence[float], fractions: Sequence[float]) -> float:
    """The trapezoid area under ``values`` over ``fractions`` (the paper's AOPC).

    Example:
        >>> from jacobian_scopes.eval.evaluate import trapezoid
        >>> round(trapezoid([-1.0, -2.0, -3.0], [0.05, 0.1, 0.2]), 6)
        -0.325
    """
    x, y = list(fractions), list(values)
    return float(sum(0.5 * (x[i + 1] - x[i]) * (y[i] + y[i + 1]) for i in range(len(x) - 1)))


def _order(scores: Tensor, eligible: Tensor, seed: int) -> Tensor:
    """Eligible positions, highest score first; ties in a seeded random order."""
    g = torch.Generator().manual_seed(seed % (2**63))
    shuffled = eligible[torch.randperm(len(eligible), generator=g)]
    rank = torch.argsort(-scores[shuffled].double(), stable=True)
    return shuffled[rank]


# --------------------------------------------------------------------------- results
@dataclass
class Evaluation:
    """Per-passage faithfulness numbers of several methods, with summaries.

    ``records`` has one row per (passage, method): ``aopc``, ``deletion@<f>``,
    ``comprehensiveness``, ``sufficiency`` (and per bin), ``loo_spearman``, ``seconds``.
    ``passages`` has one row per passage (target, base log-prob, timing).

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.eval.evaluate import aopc
        >>> model = js.load_default_model()
        >>> ev = aopc(model, ["The capital of France is"], ["semantic"], verbose=False)
        >>> ev.summary()["aopc"].round(2)
        method
        random     -0.70
        semantic   -0.21
        Name: aopc, dtype: float64
    """

    records: pd.DataFrame
    passages: pd.DataFrame
    settings: Settings
    groups: dict[str, str] = field(default_factory=dict)  # output name → method name

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(self.records["method"])) if len(self.records) else []

    def metrics(self) -> list[str]:
        return [m for m in HIGHER_IS_BETTER if m in self.records and self.records[m].notna().any()]

    def summary(self, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
        """Mean and 95% bootstrap interval (``_low``, ``_high``) of each metric per method,
        with ``n`` passages and the mean attribution ``seconds`` per passage."""
        rows = []
        for method, group in self.records.groupby("method", sort=False):
            row: dict[str, Any] = {"method": method, "n": len(group)}
            for metric in self.metrics():
                mean, low, high = stats.bootstrap_ci(group[metric], n_boot=n_boot, seed=seed)
                row.update({metric: mean, f"{metric}_low": low, f"{metric}_high": high})
            row["seconds"] = float(group["seconds"].mean())
            rows.append(row)
        table = pd.DataFrame(rows).set_index("method")
        if "aopc" in table:
            table = table.sort_values("aopc")
        return table

    def compare(
        self,
        metric: Metric = "aopc",
        reference: str | None = None,
        n_boot: int = 2000,
        n_perm: int = 10000,
        seed: int = 0,
    ) -> pd.DataFrame:
        """Paired comparisons on ``metric`` (A − B per passage): every pair, or every method
        against ``reference``; bootstrap CI of the mean difference, a sign-flip permutation
        p-value and its Holm adjustment over the comparisons made."""
        if metric not in self.metrics():
            raise ScopeInputError(f"no {metric!r} values in this evaluation")
        wide = self.records.pivot(index="passage", columns="method", values=metric)
        names = self.methods
        if reference is not None:
            if reference not in names:
                raise ScopeInputError(f"unknown reference method {reference!r}")
            pairs = [(m, reference) for m in names if m != reference]
        else:
            pairs = list(combinations(names, 2))
        rows = []
        for a, b in pairs:
            r = stats.paired_comparison(wide[a], wide[b], n_boot=n_boot, n_perm=n_perm, seed=seed)
            rows.append(
                {
                    "a": a,
                    "b": b,
                    "n": r.n,
                    "mean_difference": r.mean_difference,
                    "ci_low": r.ci_low,
                    "ci_high": r.ci_high,
                    "p_value": r.p_value,
                }
            )
        table = pd.DataFrame(rows)
        if len(table):
            table["p_holm"] = stats.holm(table["p_value"].tolist())
        return table

    def deletion_curves(self, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
        """Mean Δ log p per method and deletion fraction, with bootstrap intervals."""
        rows = []
        for method, group in self.records.groupby("method", sort=False):
            for f in self.settings.fractions:
                column = f"deletion@{f:g}"
                if column not in group:
                    continue
                mean, low, high = stats.bootstrap_ci(group[column], n_boot=n_boot, seed=seed)
                rows.append(
                    {"method": method, "fraction": f, "delta": mean, "low": low, "high": high}
                )
        return pd.DataFrame(rows)

    def seconds_per_passage(self) -> float:
        """Mean wall time per passage: every method once, plus the metric passes."""
        if not len(self.passages):
            return float("nan")
        primary = self.records[self.records["method"].map(self.groups).eq(self.records["method"])]
        per_passage = primary.groupby("passage")["seconds"].sum()
        extra = self.passages.set_index("passage")["seconds"]
        return float(per_passage.add(extra, fill_value=0.0).mean())


# ---------------------------------------------------------------------------- runner
class _Runner:
    def __init__(
        self,
        model: Any,
        methods: list[Method],
        metrics: Sequence[str],
        settings: Settings,
        store: ResultsStore,
        internal_batch_size: int,
    ):
        self.model = model
        self.adapter = ModelAdapter(model)
        self.methods = methods
        self.metrics = list(metrics)
        self.s = settings
        self.store = store
        self.internal_batch_size = internal_batch_size

    def _complete(self, key: str, name: str) -> bool:
        rec = self.store.get("method", key, name)
        if rec is None:
            return False
        return all(f in rec for m in self.metrics for f in _FIELDS[m])

    def run(self, passage: Passage, bar: Any) -> None:
        key = passage.key
        assert key is not None
        todo = [m for m in self.methods if not all(self._complete(key, o) for o in m.outputs)]
        if not todo and self.store.get("passage", key) is not None:
            return
        adapter = self.adapter
        paper = self.s.protocol == "paper"
        if paper:
            if passage.target is not None:
                raise ScopeInputError(
                    f"protocol='paper' explains each passage's own last token, but passage "
                    f"{key} has a separate target: give whole passages (for LAMBADA, "
                    "load_lambada(whole=True))"
                )
            # Strings without BOS, as the authors' add_special_tokens=False; ids as given.
            tokens = resolve_tokens(adapter, passage.prompt, prepend_bos=False)
            if tokens.shape[1] < 2:
                raise ScopeInputError(
                    f"protocol='paper' needs passages of at least 2 tokens; {key} has 1"
                )
        else:
            tokens = resolve_tokens(adapter, passage.prompt)
        n = tokens.shape[1]
        pos = n - 2 if paper else n - 1
        eligible = torch.arange(n)
        if not self.s.include_bos and perturb.starts_with_bos(self.model, tokens):
            eligible = eligible[1:]
        if len(eligible) == 0:
            raise ScopeInputError(f"passage {key} has no token to rank besides BOS")
        base = perturb.logits_at(adapter, tokens, pos)[0]
        base_logp = torch.log_softmax(base.double(), -1)
        measured = int(base.argmax())  # the metrics always measure the original top-1
        reference = None
        if paper:
            reference = int(tokens[0, n - 1])  # the passage's last token
        elif passage.target is not None:  # a reference answer's first token
            reference = resolve_target(adapter, passage.target, what="reference target")[0]
        explained = measured
        if self.s.explain == "reference":
            if reference is None:
                raise ScopeInputError(f"explain='reference' but passage {key} has no target")
            explained = reference
        # What the methods see: the tokens up to the explained position, whose last
        # prediction is the one explained (under "paper", the passage without its last token).
        context = tokens[:, : pos + 1]

        # Leave-one-out rows: the LOO reference, and the occlusion method, share them.
        loo_drop = None
        ref = self.store.get("reference", key, "loo_kl")
        need_loo_scores = any(
            m.leave_one_out and self.store.get("method", key, m.name) is None for m in todo
        )
        if ("loo" in self.metrics and ref is None) or need_loo_scores:
            t0 = time.perf_counter()
            logits = baselines.occlusion_logits(
                adapter, tokens, pos, internal_batch_size=self.internal_batch_size
            )
            # Tokens after the explained position cannot change it: their effects are 0.
            loo_kl = _pad(baselines.occlusion_effects(logits, None, "kl"), n)
            loo_drop = _pad(baselines.occlusion_effects(logits, explained, "logprob"), n)
            ref = {
                "type": "reference",
                "passage": key,
                "name": "loo_kl",
                "scores": loo_kl.tolist(),
                "seconds": time.perf_counter() - t0,
            }
            self.store.put(ref)

        records: dict[str, dict[str, Any]] = {}
        for method in todo:
            have = [self.store.get("method", key, o) for o in method.outputs]
            if all(r is not None for r in have):
                records.update({o: dict(r) for o, r in zip(method.outputs, have, strict=True) if r})
                continue
            bar.set_postfix_str(method.name)
            t0 = time.perf_counter()
            if method.leave_one_out:
                assert loo_drop is not None and ref is not None
                outs: dict[str, tuple[Tensor, dict[str, Any]]]
                outs = {method.name: (loo_drop.cpu(), {})}
                seconds = float(ref["seconds"])
            else:
                # A method that explains no position (random) ranks every token as given.
                given = tokens if method.ignores_position else context
                outs = method_scores(method, self.model, given, explained)
                seconds = time.perf_counter() - t0
            for name, (scores, info) in outs.items():
                scores = _pad(scores, n)
                records[name] = {
                    "type": "method",
                    "passage": key,
                    "name": name,
                    "method": method.name,
                    "scores": scores.tolist(),
                    # shared computations are timed once, on the method's first output
                    "seconds": seconds if name == method.name else 0.0,
                    # its time is the leave-one-out rows' (read_results needs to know)
                    **({"leave_one_out": True} if method.leave_one_out else {}),
                    **info,
                }
                # Saved at once: an interrupted run keeps every attribution it finished.
                self.store.put(records[name])
        t_metrics = time.perf_counter()
        bar.set_postfix_str("metrics")
        self._metrics(records, tokens, pos, eligible, measured, base_logp, ref, key)
        for rec in records.values():
            self.store.put(rec)
        old = self.store.get("passage", key) or {}
        self.store.put(
            {
                "type": "passage",
                "passage": key,
                "n_tokens": n,
                "n_ranked": len(eligible),
                "position": pos,
                "target": measured,
                "target_token": adapter.to_str_tokens(torch.tensor([measured]))[0],
                "explained": explained,
                "base_logprob": float(base_logp[measured]),
                "reference": reference,
                "reference_matches": None if reference is None else reference == measured,
                # the deletion and ERASER passes (attribution times are on the method records)
                "metric_seconds": float(old.get("metric_seconds", 0.0))
                + time.perf_counter()
                - t_metrics,
            }
        )

    def _metrics(
        self,
        records: dict[str, dict[str, Any]],
        tokens: Tensor,
        pos: int,
        eligible: Tensor,
        measured: int,
        base_logp: Tensor,
        ref: dict[str, Any] | None,
        key: str,
    ) -> None:
        n, s = tokens.shape[1], self.s
        masks: dict[bytes, int] = {}
        rows: list[Tensor] = []

        def row(zeroed: Tensor) -> int:
            mask = torch.zeros(n, dtype=torch.bool)
            mask[zeroed] = True
            k = mask.numpy().tobytes()
            if k not in masks:
                masks[k] = len(rows)
                rows.append(mask)
            return masks[k]

        plan: dict[str, dict[str, dict[float, int]]] = {}
        for name, rec in records.items():
            scores = torch.tensor(rec["scores"])
            seed = zlib.crc32(f"{key}|{name}".encode()) + s.seed
            order = _order(scores, eligible, seed)
            p: dict[str, dict[float, int]] = {"del": {}, "comp": {}, "suff": {}}
            if "aopc" in self.metrics:
                p["del"] = {f: row(order[: n_deleted(f, len(order))]) for f in s.fractions}
            if "eraser" in self.metrics:
                for b in s.eraser_bins:
                    top = order[: n_deleted(b, len(order))]
                    p["comp"][b] = row(top)
                    p["suff"][b] = row(order[~torch.isin(order, top)])
            plan[name] = p
            if "loo" in self.metrics:
                assert ref is not None
                kl = np.asarray(ref["scores"], dtype=float)[eligible.numpy()]
                rec["loo_spearman"] = stats.spearman(scores[eligible].numpy(), kl)
        if not rows:
            return
        logits = perturb.logits_at(
            self.adapter,
            tokens.expand(len(rows), -1),
            pos,
            zero=torch.stack(rows).to(tokens.device),
            internal_batch_size=self.internal_batch_size,
        )
        logp = torch.log_softmax(logits.double(), -1)[:, measured].cpu()
        base = float(base_logp[measured])
        for name, p in plan.items():
            rec = records[name]
            if p["del"]:
                deltas = [float(logp[p["del"][f]]) - base for f in s.fractions]
                rec["deletion"] = {f"{f:g}": d for f, d in zip(s.fractions, deltas, strict=True)}
                rec["aopc"] = trapezoid(deltas, s.fractions)
            if p["comp"]:
                comp = {
                    f"{b:g}": math.exp(base) - math.exp(float(logp[i]))
                    for b, i in p["comp"].items()
                }
                suff = {
                    f"{b:g}": math.exp(base) - math.exp(float(logp[i]))
                    for b, i in p["suff"].items()
                }
                rec["comprehensiveness"] = comp
                rec["sufficiency"] = suff


def _pad(scores: Tensor, n: int) -> Tensor:
    """Scores of the first tokens, extended with zeros to ``n`` tokens: the tokens after the
    explained position, which a causal model's prediction there cannot depend on."""
    scores = scores.detach().reshape(-1).cpu()
    if len(scores) >= n:
        return scores
    return torch.cat([scores, scores.new_zeros(n - len(scores))])


def _evaluation(
    records: dict[Key, dict[str, Any]],
    passages: list[Passage],
    groups: dict[str, str],
    settings: Settings,
    loo_is_a_method: bool,
) -> Evaluation:
    def get(kind: str, passage: Any, name: str = "") -> dict[str, Any] | None:
        return records.get((kind, str(passage), name))

    rows = []
    for p in passages:
        for out, group in groups.items():
            rec = get("method", p.key, out)
            if rec is None:
                continue
            # A variant reports the time of the computation that produced it.
            primary = get("method", p.key, group) or rec
            row: dict[str, Any] = {"passage": p.key, "method": out, "seconds": primary["seconds"]}
            if "aopc" in rec:
                row["aopc"] = rec["aopc"]
                row.update({f"deletion@{k}": v for k, v in rec["deletion"].items()})
            for metric in ("comprehensiveness", "sufficiency"):
                if metric in rec:
                    row[metric] = float(np.mean(list(rec[metric].values())))
                    row.update({f"{metric}@{k}": v for k, v in rec[metric].items()})
            if "loo_spearman" in rec:
                row["loo_spearman"] = rec["loo_spearman"]
            if "completeness" in rec:
                row["relative_gap"] = rec["completeness"]["relative_gap"]
            rows.append(row)
    passage_rows = []
    for p in passages:
        rec = get("passage", p.key)
        if rec is None:
            continue
        ref = get("reference", p.key, "loo_kl")
        # The LOO rows are timed with the reference unless the occlusion method took them.
        loo_seconds = 0.0
        if ref is not None and not loo_is_a_method:
            loo_seconds = float(ref["seconds"])
        passage_rows.append(
            {
                "passage": p.key,
                **{k: v for k, v in rec.items() if k not in ("type", "passage")},
                "seconds": float(rec["metric_seconds"]) + loo_seconds,
            }
        )
    return Evaluation(pd.DataFrame(rows), pd.DataFrame(passage_rows), settings, groups)


def evaluate(
    model: Any,
    prompts: Iterable[Prompt | Passage],
    methods: Sequence[MethodLike] | None = None,
    *,
    metrics: Sequence[str] = METRICS,
    fractions: Sequence[float] = DELETION_FRACTIONS,
    eraser_bins: Sequence[float] = ERASER_BINS,
    protocol: Protocol = "default",
    include_bos: bool | None = None,
    explain: Explain | None = None,
    random_baseline: bool = True,
    seed: int = 0,
    results: str | Path | None = None,
    internal_batch_size: int = perturb.DEFAULT_BATCH_SIZE,
    verbose: bool = True,
) -> Evaluation:
    """Run the faithfulness metrics for several methods on several prompts.

    Args:
        model: a HookedTransformer or TransformerBridge.
        prompts: texts, token ids, or :class:`~jacobian_scopes.passages.Passage` objects.
        methods: :class:`~jacobian_scopes.eval.methods.Method` objects or method names
            such as ``"semantic"`` (default: every method of
            :func:`~jacobian_scopes.eval.methods.default_methods`). A random order is added
            unless ``random_baseline=False`` or one named ``"random"`` is given.
        metrics: any of ``"aopc"``, ``"eraser"``, ``"loo"``.
        fractions: deletion fractions of the AOPC. eraser_bins: ERASER's bins.
        protocol: ``"default"`` or ``"paper"`` (the authors' AOPC script: each prompt is
            a whole passage, tokenised without BOS; the prediction of its last token, at
            position ``T − 2``, is explained; all ``T`` tokens are ranked and
            ``max(1, int(T·f))`` deleted). See the module docstring. The protocol is
            recorded in ``results``, and a file is only resumed under its own protocol.
        include_bos: rank (and delete) BOS like any token (``"default"`` only). Off by
            default: zeroing the attention sink measures something else than the passage's
            content.
        explain: what the methods explain (``"default"`` only): ``"top1"`` (the measured
            token, the default) or ``"reference"`` (each passage's ``target``; the metrics
            still measure top-1). ``"paper"`` explains each passage's last token.
        seed: for the random baseline and for breaking ties in rankings.
        results: a JSONL file; rerunning with it skips (passage, method) pairs already done.
            Under ``torchrun`` the passages are shared out among the processes, each
            writing ``<results>.rank<r>.jsonl``; every process returns the whole evaluation
            and rank 0 merges the files into ``results``
            (:mod:`jacobian_scopes.eval.distributed`).
        internal_batch_size: rows per forward pass of the deletion and leave-one-out passes.
        verbose: show a progress bar.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.eval.evaluate import evaluate
        >>> model = js.load_default_model()
        >>> ev = evaluate(model, ["The capital of France is"], ["semantic"],
        ...               results="faithfulness.jsonl", verbose=False)
        >>> ev.summary()[["n", "aopc", "comprehensiveness", "loo_spearman"]].round(2)
                  n  aopc  comprehensiveness  loo_spearman
        method
        random    1 -0.70               0.74          -0.5
        semantic  1 -0.21               0.60          -0.2
    """
    if protocol not in PROTOCOLS:
        raise ScopeInputError(f"protocol must be one of {list(PROTOCOLS)}, got {protocol!r}")
    if protocol == "paper":
        if include_bos is not None or explain is not None:
            raise ScopeInputError(
                "protocol='paper' fixes include_bos and explain (no BOS, every token ranked, "
                "the passage's last token explained); leave them unset"
            )
        # Every token is ranked; the explained token is the passage's own last one.
        include_bos, explain = True, "reference"
    include_bos = bool(include_bos)
    explain = "top1" if explain is None else explain
    settings = Settings(tuple(fractions), tuple(eraser_bins), include_bos, explain, seed, protocol)
    settings.check()
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ScopeInputError(f"metrics must be among {METRICS}, got {list(metrics)}")
    if internal_batch_size < 1:
        raise ScopeInputError(f"internal_batch_size must be at least 1, got {internal_batch_size}")
    method_list = resolve_methods(methods, seed=seed)
    if random_baseline and not any(m.name == "random" for m in method_list):
        method_list.append(random_method(seed))
    names = [o for m in method_list for o in m.outputs]
    groups = {o: m.name for m in method_list for o in m.outputs}
    loo_is_a_method = any(m.leave_one_out for m in method_list)
    if len(set(names)) != len(names) or not names:
        raise ScopeInputError(f"method names must be distinct and non-empty, got {names}")
    passages = as_passages(prompts)
    adapter = ModelAdapter(model)
    config = {"version": 1, "model": adapter.name, "d_vocab": adapter.d_vocab, **settings.config()}

    def run(store: ResultsStore, share: list[Passage]) -> None:
        runner = _Runner(model, method_list, metrics, settings, store, internal_batch_size)
        bar = progress(share, desc="faithfulness", unit="passage", verbose=verbose)
        for passage in bar:
            runner.run(passage, bar)
        bar.close()

    ranks = torchrun_ranks()
    if ranks is None:
        store = ResultsStore(results, config, assumed=ASSUMED)
        run(store, passages)
        return _evaluation(store.records, passages, groups, settings, loo_is_a_method)
    with process_group():
        mine = ResultsStore(
            None if results is None else ranks.rank_file(results), config, assumed=ASSUMED
        )
        run(mine, ranks.shard(passages))
        store = ResultsStore(None, config)
        store.records = exchange(mine.records, ranks)
        if ranks.rank == 0 and results is not None:
            merged = ResultsStore(results, config, assumed=ASSUMED)
            for key, record in store.records.items():
                if merged.get(*key) != record:
                    merged.put(record)
        barrier()
    return _evaluation(store.records, passages, groups, settings, loo_is_a_method)


def read_results(
    results: str | Path | Sequence[str | Path], prompts: Iterable[Prompt | Passage]
) -> Evaluation:
    """The evaluation that results files hold, without a model and without computing: what
    a run stopped before its end did, or the rank files of a ``torchrun`` that never merged
    them (give them all; they read as their merge).

    It has the ``prompts`` whose metrics are finished (the others are left out, so ``n``
    counts them), with every method the files score them by, under the settings the files
    were written with.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.eval.evaluate import evaluate, read_results
        >>> model = js.load_default_model()
        >>> prompts = ["The capital of France is", "One, two, three,"]
        >>> _ = evaluate(model, prompts, ["semantic"], metrics=["aopc"],
        ...              results="read.jsonl", verbose=False)
        >>> read_results("read.jsonl", prompts).summary()[["n", "aopc"]].round(2)
                  n  aopc
        method
        random    2 -0.46
        semantic  2 -0.13
    """
    paths = [results] if isinstance(results, (str, Path)) else list(results)
    records = read_records(paths, assumed=ASSUMED)
    settings = Settings.from_config(records[("config", "", "")])
    passages = [p for p in as_passages(prompts) if ("passage", str(p.key), "") in records]
    done = {str(p.key) for p in passages}
    groups = {
        str(r["name"]): str(r["method"])
        for (kind, passage, _), r in records.items()
        if kind == "method" and passage in done
    }
    loo_is_a_method = any(r.get("leave_one_out") for r in records.values())
    return _evaluation(records, passages, groups, settings, loo_is_a_method)


def aopc(
    model: Any,
    prompts: Iterable[Prompt | Passage],
    methods: Sequence[MethodLike] | None = None,
    *,
    fractions: Sequence[float] = DELETION_FRACTIONS,
    **kwargs: Any,
) -> Evaluation:
    """Deletion AOPC only (see :func:`evaluate` for the arguments, ``protocol`` among them).

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.eval.evaluate import aopc
        >>> model = js.load_default_model()
        >>> ev = aopc(model, ["The capital of France is"], ["semantic"], verbose=False)
        >>> ev.records[["method", "aopc"]].round(2)
             method  aopc
        0  semantic -0.21
        1    random -0.70
    """
    return evaluate(model, prompts, methods, metrics=("aopc",), fractions=fractions, **kwargs)


def comprehensiveness_sufficiency(
    model: Any,
    prompts: Iterable[Prompt | Passage],
    methods: Sequence[MethodLike] | None = None,
    *,
    bins: Sequence[float] = ERASER_BINS,
    **kwargs: Any,
) -> Evaluation:
    """ERASER comprehensiveness and sufficiency only (see :func:`evaluate`).

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.eval.evaluate import comprehensiveness_sufficiency
        >>> model = js.load_default_model()
        >>> ev = comprehensiveness_sufficiency(model, ["The capital of France is"], ["semantic"],
        ...                                    verbose=False)
        >>> ev.summary()[["comprehensiveness", "sufficiency"]].round(2)
                  comprehensiveness  sufficiency
        method
        semantic               0.60         0.75
        random                 0.74         0.75
    """
    return evaluate(model, prompts, methods, metrics=("eraser",), eraser_bins=bins, **kwargs)


def loo_agreement(
    model: Any,
    prompts: Iterable[Prompt | Passage],
    methods: Sequence[MethodLike] | None = None,
    **kwargs: Any,
) -> Evaluation:
    """Spearman agreement with leave-one-out KL only (see :func:`evaluate`).

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.eval.evaluate import loo_agreement
        >>> model = js.load_default_model()
        >>> ev = loo_agreement(model, ["The capital of France is"], ["semantic"], verbose=False)
        >>> ev.summary()["loo_spearman"].round(2)
        method
        semantic   -0.2
        random     -0.5
        Name: loo_spearman, dtype: float64
    """
    return evaluate(model, prompts, methods, metrics=("loo",), **kwargs)

"""Why is last-layer attention so faithful by deletion AOPC? Experiments, one question each.

    python benchmarks/attention_finding.py --limit 45 [--paper-limit N] [--model gemma-3-270m]

On the first --limit LAMBADA passages, under both protocols, it scores the same passages with
the Semantic scope, last-layer attention, the attention of every 4th layer and the last, a
random order and two orders that use no model: "recency" (the nearest tokens first) and
"earliest" (the first tokens first). It measures each ranking three ways:

* ``zero``: the harness's deletion (the input embedding zeroed; the token stays in the
  sequence, keeps its position and is still attended). This is the AOPC of
  :func:`jacobian_scopes.eval.aopc`, computed by it.
* ``knockout``: the embedding zeroed *and* no position may attend to the token (its key
  column set to −inf in every layer's attention scores, the diagonal kept so that every
  query still has a key): the token is gone, positions unchanged.
* ``remove``: the tokens dropped from the sequence (later tokens move up; under RoPE their
  relative distances change).

Knockout and removal cost a forward pass per deletion and run on the first --extra-limit
passages.

It also records, per method, where its top-ranked token sits (distance to the explained
position) and how much its ranking agrees with Semantic's. Questions it answers:

1. the metric: does attention's lead hold when deleted tokens can no longer be attended?
2. locality: does a model-free "nearest first" order reach attention's AOPC?
3. the layer: is it the last layer, or attention anywhere?
4. the explained token: passages whose final word spans several tokens against the rest
   (under the paper's protocol the explained token is then the word's last piece).
5. the model: run it with ``--model gemma-3-270m``.

Results: ``--out/<model>-<protocol>.jsonl`` (resumable) and ``--out/<model>.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

import jacobian_scopes as js
from jacobian_scopes.adapter import ModelAdapter
from jacobian_scopes.eval import evaluate as evaluation
from jacobian_scopes.eval.baselines import attention
from jacobian_scopes.eval.evaluate import n_deleted, trapezoid
from jacobian_scopes.eval.methods import Method, random_method
from jacobian_scopes.eval.passages import load_lambada
from jacobian_scopes.eval.perturb import logits_at
from jacobian_scopes.eval.stats import bootstrap_ci, paired_comparison, spearman
from jacobian_scopes.inputs import resolve_tokens

FRACTIONS = (0.05, 0.1, 0.2)
CORE = ("semantic", "attention_last", "recency", "earliest", "random")
LAYER_STRIDE = 4


def layer_attention(model: Any, tokens: Tensor, target: int) -> dict[str, Tensor]:
    """Attention paid by the explained (last) position to each token, mean over heads, for
    every layer: one forward pass."""
    rows: dict[int, Tensor] = {}

    def grab(layer: int) -> Callable[[Tensor, Any], None]:
        def hook(pattern: Tensor, hook: Any) -> None:
            rows[layer] = pattern[0, :, -1, :].float().mean(0).detach().cpu()

        return hook

    hooks = [(f"blocks.{i}.attn.hook_pattern", grab(i)) for i in layers(model)]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        model(tokens)
    return {f"attention_L{i:02d}": rows[i] for i in layers(model)}


def layers(model: Any) -> list[int]:
    """Every LAYER_STRIDE-th layer and the last (each costs its own deletion passes)."""
    n = model.cfg.n_layers
    return sorted({*range(0, n, LAYER_STRIDE), n - 1})


def recency(model: Any, tokens: Tensor, target: int) -> Tensor:
    """The nearest tokens first: the explained position, then the one before it, ..."""
    n = tokens.shape[1]
    return torch.arange(n, dtype=torch.float32) - n


def earliest(model: Any, tokens: Tensor, target: int) -> Tensor:
    """The first tokens first: the positions where attention sinks sit."""
    return -torch.arange(tokens.shape[1], dtype=torch.float32)


def methods(model: Any) -> list[Method]:
    names = tuple(f"attention_L{i:02d}" for i in layers(model))
    return [
        Method("semantic", lambda m, t, y: js.semantic_scope(m, t, y)),
        Method("attention_last", lambda m, t, y: attention(m, t)),
        Method("recency", recency),
        Method("earliest", earliest),
        Method(names[0], lambda m, t, y: dict(layer_attention(m, t, y)), names[1:]),
        random_method(0),
    ]


def knockout_hooks(model: Any, mask: Tensor) -> list[tuple[str, Callable[..., Tensor]]]:
    """Scores hooks that stop every query from attending to the masked keys (diagonal kept)."""

    def hook(scores: Tensor, hook: Any) -> Tensor:
        n = scores.shape[-1]
        block = mask[:, None, None, :n].to(scores.device).expand_as(scores).clone()
        eye = torch.eye(n, dtype=torch.bool, device=scores.device)[: scores.shape[-2]]
        block &= ~eye[None, None]
        return scores.masked_fill(block, float("-inf"))

    return [(f"blocks.{i}.attn.hook_attn_scores", hook) for i in range(model.cfg.n_layers)]


def order_of(scores: list[float], eligible: list[int]) -> list[int]:
    s = np.asarray(scores, dtype=float)
    return sorted(eligible, key=lambda t: (-s[t], t))


def other_metrics(
    adapter: ModelAdapter,
    tokens: Tensor,
    pos: int,
    eligible: list[int],
    measured: int,
    scores: dict[str, list[float]],
) -> dict[str, dict[str, float]]:
    """AOPC by knockout and by removal for each method, and where its top-1 sits."""
    model = adapter.model
    n = tokens.shape[1]
    base = float(torch.log_softmax(logits_at(adapter, tokens, pos)[0].double(), -1)[measured])
    out: dict[str, dict[str, float]] = {}
    for name, sc in scores.items():
        order = order_of(sc, eligible)
        knock, remove = [], []
        for f in FRACTIONS:
            gone = order[: n_deleted(f, len(order))]
            mask = torch.zeros(1, n, dtype=torch.bool)
            mask[0, gone] = True
            row = logits_at(adapter, tokens, pos, zero=mask, fwd_hooks=knockout_hooks(model, mask))
            knock.append(float(torch.log_softmax(row[0].double(), -1)[measured]) - base)
            keep = [t for t in range(pos + 1) if t not in set(gone)]
            short = tokens[:, keep]
            row = logits_at(adapter, short, len(keep) - 1)
            remove.append(float(torch.log_softmax(row[0].double(), -1)[measured]) - base)
        out[name] = {
            "aopc_knockout": trapezoid(knock, FRACTIONS),
            "aopc_remove": trapezoid(remove, FRACTIONS),
            "top1_distance": float(pos - order[0]),
            "top1_first": float(order[0] == eligible[0]),
        }
    return out


def run(
    model: Any, name: str, protocol: str, limit: int, out: Path, extra_limit: int
) -> pd.DataFrame:
    whole = protocol == "paper"
    passages = load_lambada(limit=limit, whole=whole)
    results = out / f"{name}-{protocol}.jsonl"
    ev = evaluation.aopc(
        model, passages, methods(model), protocol=protocol, results=results, verbose=True
    )
    extra_path = out / f"{name}-{protocol}.extra.jsonl"
    done: dict[str, Any] = {}
    if extra_path.exists():
        for line in extra_path.read_text().splitlines():
            r = json.loads(line)
            done[r["passage"]] = r
    adapter = ModelAdapter(model)
    records = [json.loads(x) for x in results.read_text().splitlines() if x.strip()]
    by_passage: dict[str, dict[str, list[float]]] = {}
    info: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.get("type") == "method" and r["name"] in CORE:
            by_passage.setdefault(r["passage"], {})[r["name"]] = r["scores"]
        if r.get("type") == "passage":
            info[r["passage"]] = r
    with extra_path.open("a") as fh:
        pairs = list(zip(ev.passages["passage"], passages, strict=False))[:extra_limit]
        for p, passage in pairs:
            if p in done:
                continue
            t0 = time.perf_counter()
            meta = info[p]
            tokens = resolve_tokens(adapter, passage.prompt, prepend_bos=False if whole else None)
            n, pos = int(meta["n_tokens"]), int(meta["position"])
            first = 0 if whole or int(meta["n_ranked"]) == n else 1
            eligible = list(range(first, n))
            m = other_metrics(adapter, tokens, pos, eligible, int(meta["target"]), by_passage[p])
            word = passage.prompt.split()[-1] if whole else None
            multi = None
            if whole and word is not None:
                multi = len(model.to_tokens(" " + word, prepend_bos=False)[0]) > 1
            rec = {"passage": p, "methods": m, "multi_token_word": multi}
            rec["seconds"] = time.perf_counter() - t0
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            done[p] = rec
            print(f"{name} {protocol} {p}: {rec['seconds']:.1f} s", file=sys.stderr, flush=True)
    rows = []
    for r in ev.records.itertuples():
        extra = done.get(r.passage, {}).get("methods", {}).get(r.method, {})
        sem = by_passage.get(r.passage, {}).get("semantic")
        mine = by_passage.get(r.passage, {}).get(r.method)
        rho = float("nan")
        if sem is not None and mine is not None:
            n = len(sem)
            first = 0 if whole else 1
            rho = spearman(np.asarray(mine[first:n]), np.asarray(sem[first:n]))
        rows.append(
            {
                "passage": r.passage,
                "method": r.method,
                "protocol": protocol,
                "aopc_zero": r.aopc,
                "aopc_knockout": extra.get("aopc_knockout", math.nan),
                "aopc_remove": extra.get("aopc_remove", math.nan),
                "top1_distance": extra.get("top1_distance", math.nan),
                "top1_first": extra.get("top1_first", math.nan),
                "rho_semantic": rho,
                "multi_token_word": done.get(r.passage, {}).get("multi_token_word"),
            }
        )
    return pd.DataFrame(rows)


def ci(values: pd.Series) -> str:
    mean, low, high = bootstrap_ci(values.dropna(), n_boot=2000, seed=0)
    return f"{mean:.3f} [{low:.2f}, {high:.2f}]"


def report(df: pd.DataFrame, name: str) -> str:
    lines = [f"# Attention finding: {name}", ""]
    for protocol, d in df.groupby("protocol", sort=False):
        n = d["passage"].nunique()
        lines += [f"## protocol={protocol} ({n} passages)", ""]
        lines += [
            "| method | AOPC zero | AOPC knockout | AOPC remove | top-1 distance (median) "
            "| top-1 is the first token | Spearman with Semantic |",
            "|---|---|---|---|---|---|---|",
        ]
        for m in CORE:
            g = d[d["method"] == m]
            lines.append(
                f"| {m} | {ci(g['aopc_zero'])} | {ci(g['aopc_knockout'])} | "
                f"{ci(g['aopc_remove'])} | {g['top1_distance'].median():.0f} | "
                f"{g['top1_first'].mean():.0%} | {g['rho_semantic'].mean():.2f} |"
            )
        lines += ["", "Paired differences, attention_last − semantic (sign-flip p):", ""]
        wide = {
            metric: d.pivot(index="passage", columns="method", values=metric)
            for metric in ("aopc_zero", "aopc_knockout", "aopc_remove")
        }
        for metric, w in wide.items():
            r = paired_comparison(w["attention_last"], w["semantic"], n_boot=2000, seed=0)
            lines.append(
                f"* {metric}: {r.mean_difference:+.3f} [{r.ci_low:.2f}, {r.ci_high:.2f}], "
                f"p = {r.p_value:.3g}"
            )
            for other in ("recency", "earliest"):
                r = paired_comparison(w[other], w["semantic"], n_boot=2000, seed=0)
                lines.append(
                    f"  {other} − semantic: {r.mean_difference:+.3f} [{r.ci_low:.2f}, "
                    f"{r.ci_high:.2f}], p = {r.p_value:.3g}"
                )
        layers = d[d["method"].str.startswith("attention_L")]
        per_layer = layers.groupby("method")["aopc_zero"].mean()
        best = per_layer.idxmin()
        lines += [
            "",
            "AOPC (zero) of each layer's attention: "
            + ", ".join(f"{k[-2:]}: {v:.2f}" for k, v in per_layer.items()),
            f"(best layer {best[-2:]}: {per_layer[best]:.3f})",
            "",
        ]
        if d["multi_token_word"].notna().any():
            lines += ["By the final word's length in tokens (zero deletion):", ""]
            for multi, g in d.groupby("multi_token_word"):
                w = g.pivot(index="passage", columns="method", values="aopc_zero")
                label = "several tokens" if multi else "one token"
                lines.append(
                    f"* {label} ({len(w)} passages): semantic {w['semantic'].mean():.3f}, "
                    f"attention_last {w['attention_last'].mean():.3f}, "
                    f"recency {w['recency'].mean():.3f}, earliest {w['earliest'].mean():.3f}, "
                    f"random {w['random'].mean():.3f}"
                )
            lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--limit", type=int, default=45)
    ap.add_argument("--paper-limit", type=int, help="passages under protocol='paper' (--limit)")
    ap.add_argument("--model", default="default")
    ap.add_argument(
        "--extra-limit", type=int, default=12, help="passages measured by knockout and removal"
    )
    ap.add_argument("--protocols", nargs="+", default=["default", "paper"])
    ap.add_argument("--out", type=Path, default=Path("reports/attention-finding"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = (
        js.load_default_model() if args.model == "default" else js.load_default_model(args.model)
    )
    name = "smollm2" if args.model == "default" else args.model
    limits = {"default": args.limit, "paper": args.paper_limit or args.limit}
    frames = [run(model, name, p, limits[p], args.out, args.extra_limit) for p in args.protocols]
    df = pd.concat(frames)
    df.to_csv(args.out / f"{name}.csv", index=False)
    text = report(df, name)
    (args.out / f"{name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

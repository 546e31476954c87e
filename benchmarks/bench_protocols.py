"""Deletion AOPC under the two protocols, and what each of their differences does.

    python benchmarks/bench_protocols.py --limit 12

Runs jacobian_scopes.eval.evaluate.aopc on the first --limit LAMBADA passages with the default
SmolLM2 under protocol="default" and protocol="paper", and on the way from one to the other,
changing one thing at a time:

1. default: the passage without its last word, BOS prepended (never deleted); the model's
   top-1 after it explained; n = the prompt's tokens without BOS.
2. no BOS: the same prompt tokenised without BOS.
3. explain the word: as 2, but the methods explain LAMBADA's word (its first token) instead of
   the top-1 (only Semantic takes a target here; the other rows are those of 2).

Steps 2-4 run --between-methods (by default without Fisher, which costs most of the time).
4. the last token: the passage without its last *token*, no BOS; the methods explain that
   token at T − 2 (inside the final word when it has several tokens); n = T − 1.
5. paper: protocol="paper": as 4, but all T tokens ranked and counted (the last one can only
   be drawn by the random order), max(1, int(T·f)) deleted.

Each run goes to --out/<step>.jsonl (resumable: rerun the same command) and the table to
--out/summary.md. The metric always measures log p of the model's top-1 at the explained
position.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

import jacobian_scopes as js
from jacobian_scopes.adapter import ModelAdapter
from jacobian_scopes.eval import evaluate
from jacobian_scopes.eval.passages import Passage, load_lambada

REPO = Path(__file__).resolve().parents[1]
METHODS = ["semantic", "temperature", "fisher", "attention_last"]
BETWEEN = ["semantic", "temperature", "attention_last"]
STEPS = {
    "default": "1 default",
    "no_bos": "2 no BOS",
    "explain_word": "3 explain the word",
    "last_token": "4 the last token (n = T−1)",
    "paper": "5 paper (n = T)",
}


def inputs(model: Any, limit: int) -> dict[str, tuple[list[Passage], dict[str, Any]]]:
    """The passages and evaluate() options of every step."""
    adapter = ModelAdapter(model)
    split = load_lambada(limit=limit)
    whole = load_lambada(limit=limit, whole=True)
    no_bos, last = [], []
    for p, w in zip(split, whole, strict=True):
        assert isinstance(p.prompt, str) and isinstance(w.prompt, str)
        no_bos.append(Passage(adapter.to_tokens(p.prompt, prepend_bos=False)[0], p.target))
        ids = adapter.to_tokens(w.prompt, prepend_bos=False)[0]
        last.append(Passage(ids[:-1], int(ids[-1])))
    return {
        "default": (split, {}),
        "no_bos": (no_bos, {}),
        "explain_word": (no_bos, {"explain": "reference", "only": ["semantic"]}),
        "last_token": (last, {"explain": "reference"}),
        "paper": (whole, {"protocol": "paper"}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--limit", type=int, default=12, help="first N passages")
    ap.add_argument("--out", type=Path, default=Path("reports/protocols"))
    ap.add_argument("--methods", nargs="+", default=METHODS, help="for steps 1 and 5")
    ap.add_argument(
        "--between-methods",
        nargs="+",
        default=BETWEEN,
        help="for steps 2-4 (default: without Fisher, the slow one)",
    )
    ap.add_argument("--steps", nargs="+", default=list(STEPS), choices=list(STEPS))
    ap.add_argument("--n-boot", type=int, default=2000)
    args = ap.parse_args()
    out = args.out if args.out.is_absolute() else REPO / args.out
    out.mkdir(parents=True, exist_ok=True)

    model = js.load_default_model()
    adapter = ModelAdapter(model)
    words = [p.target for p in load_lambada(limit=args.limit)]
    multi = sum(len(adapter.to_tokens(str(w), prepend_bos=False)[0]) > 1 for w in words)
    steps = inputs(model, args.limit)
    means: dict[str, pd.Series] = {}
    cis: dict[str, pd.Series] = {}
    for step in args.steps:
        passages, opts = steps[step]
        opts = dict(opts)
        names = args.methods if step in ("default", "paper") else args.between_methods
        names = [m for m in names if m in opts.pop("only", names)]
        started = time.perf_counter()
        ev = evaluate.aopc(
            model,
            passages,
            names,
            random_baseline="only" not in steps[step][1],
            results=out / f"{step}.jsonl",
            verbose=False,
            **opts,
        )
        s = ev.summary(n_boot=args.n_boot)
        means[step] = s["aopc"]
        cis[step] = s.apply(
            lambda r: f"{r['aopc']:.2f} [{r['aopc_low']:.2f}, {r['aopc_high']:.2f}]", axis=1
        )
        print(f"{STEPS[step]}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
        print(s["aopc"].round(3).to_string(), file=sys.stderr)

    table = pd.DataFrame(means)[[s for s in STEPS if s in means]]
    if "explain_word" in table and "no_bos" in table:  # its other rows are those of step 2
        table["explain_word"] = table["explain_word"].fillna(table["no_bos"])
    order = [m for m in dict.fromkeys([*args.methods, *args.between_methods, "random"])]
    order = [m for m in order if m in table.index]
    table = table.loc[order]
    lines = [
        "| method | " + " | ".join(STEPS[c] for c in table.columns) + " |",
        "|---|" + "---|" * len(table.columns),
    ]
    for method, row in table.iterrows():
        cells = ("–" if pd.isna(v) else f"{v:.3f}" for v in row)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    both = [c for c in ("default", "paper") if c in cis]
    ci_lines = ["| method | " + " | ".join(both) + " |", "|---|" + "---|" * len(both)]
    for method in order:
        ci_lines.append(f"| {method} | " + " | ".join(cis[c].get(method, "") for c in both) + " |")
    command = "python benchmarks/bench_protocols.py " + shlex.join(sys.argv[1:])
    text = (
        f"SmolLM2-135M-Instruct, the first {args.limit} LAMBADA passages ({multi} of them "
        f"end in a word of several tokens); deletion AOPC, mean over passages.\n"
        f"Command: `{command.strip()}`\n\n" + "\n".join(lines) + "\n\n"
        "95% bootstrap intervals:\n\n" + "\n".join(ci_lines) + "\n"
    )
    (out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

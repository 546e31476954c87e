"""The faithfulness study's tables: both models and both protocols side by side.

    python benchmarks/study_tables.py benchmarks/study   # after benchmarks/faithfulness_study.sh

Reads ``<OUT>/<model>-<protocol>/summary.csv`` and ``comparisons.csv`` (as
bench_faithfulness.py writes them) and writes ``<OUT>/study.md``: AOPC and leave-one-out ρ of
every method with 95% bootstrap intervals, the paper's Llama-3.2-1B figures beside them, the
number of passages, and the paired tests that the docs quote.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from bench_faithfulness import PAPER

RUNS = {
    "SmolLM2 default": "smollm2-135m-instruct-default",
    "SmolLM2 paper": "smollm2-135m-instruct-paper",
    "Gemma default": "gemma-3-270m-default",
    "Gemma paper": "gemma-3-270m-paper",
}
# (a, b): the comparisons the faithfulness page discusses.
PAIRS = [
    ("attention_last", "semantic"),
    ("fisher", "semantic"),
    ("temperature", "semantic"),
    ("semantic", "gradient_norm"),
    ("semantic", "random"),
    ("fisher", "random"),
]


def cell(row: pd.Series, metric: str, n_run: int) -> str:
    if metric not in row or pd.isna(row[metric]):
        return "–"
    # The interval on a line of its own, unbroken: a wrapped "[-1.36,\n-1.04]" misreads.
    low, high = row[f"{metric}_low"], row[f"{metric}_high"]
    text = f"**{row[metric]:.2f}**<br>[{low:.2f},\u00a0{high:.2f}]"
    # A method run on a subset of the passages (integrated gradients) says on how many.
    return text if int(row["n"]) == n_run else f"{text}<br>(n\u00a0=\u00a0{int(row['n'])})"


def metric_table(summaries: dict[str, pd.DataFrame], metric: str, paper: dict[str, float]) -> str:
    methods = list(next(iter(summaries.values())).index)
    head = ["method", *summaries, "paper, Llama-3.2-1B"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        cells = [
            cell(s.loc[m], metric, int(s["n"].max())) if m in s.index else "–"
            for s in summaries.values()
        ]
        ref = paper.get(m)
        lines.append(
            f"| {m} | " + " | ".join(cells) + f" | {'' if ref is None else f'{ref:.3f}'} |"
        )
    ns = [f"{int(s['n'].max())}" for s in summaries.values()]
    lines.append("| *passages* | " + " | ".join(ns) + " | 1000 |")
    return "\n".join(lines)


def pair_table(comparisons: dict[str, pd.DataFrame]) -> str:
    head = ["AOPC, a − b", *comparisons]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a, b in PAIRS:
        cells = []
        for c in comparisons.values():
            c = c[c["metric"] == "aopc"]
            hit = c[(c["a"] == a) & (c["b"] == b)]
            sign = 1.0
            if hit.empty:
                hit, sign = c[(c["a"] == b) & (c["b"] == a)], -1.0
            if hit.empty:
                cells.append("–")
                continue
            r = hit.iloc[0]
            pv = r["p_value"]
            # no-break spaces: "p <" on one line and "0.001" on the next misreads
            pv_text = "p\u00a0<\u00a00.001" if pv < 0.001 else f"p\u00a0{pv:.3f}"
            diff = sign * r["mean_difference"]
            # A difference that rounds to zero has no sign to show ("-0.00" reads as a lead).
            text = "0.00" if round(diff, 2) == 0 else f"{diff:+.2f}"
            cells.append(f"{text} ({pv_text})")
        lines.append(f"| {a} − {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out", type=Path, nargs="?", default=Path("benchmarks/study"))
    args = ap.parse_args()
    summaries, comparisons = {}, {}
    for label, name in RUNS.items():
        run = args.out / name
        if (run / "summary.csv").exists():
            s = pd.read_csv(run / "summary.csv", index_col="method")
            summaries[label] = s.sort_values("aopc") if not summaries else s
            comparisons[label] = pd.read_csv(run / "comparisons.csv")
    if not summaries:
        raise SystemExit(f"no summary.csv under {args.out}/<model>-<protocol>/")
    text = "\n\n".join(
        [
            "**Deletion AOPC ↓** (mean, 95% bootstrap interval)",
            metric_table(summaries, "aopc", PAPER["aopc"]),
            "**Leave-one-out agreement ρ ↑**",
            metric_table(summaries, "loo_spearman", PAPER["loo_spearman"]),
            "**Paired differences in AOPC** (negative: a more faithful; sign-flip test)",
            pair_table(comparisons),
        ]
    )
    (args.out / "study.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

"""Is it faithful? Every scope and baseline on LAMBADA passages with an embedded real model.

    python benchmarks/bench_faithfulness.py --limit 200            # the full benchmark
    python benchmarks/bench_faithfulness.py --limit 5 --metrics aopc   # a quick look
    python benchmarks/bench_faithfulness.py --limit 12 --protocol paper  # the authors' protocol
    python benchmarks/bench_faithfulness.py --model gemma-3-270m   # the second model family
    torchrun --standalone --nproc-per-node 4 benchmarks/bench_faithfulness.py ...  # 4 processes

Under torchrun the passages are shared out among the processes (each keeps
``results.rank<r>.jsonl``; rank 0 merges them and writes the tables). A run stopped before the
merge loses nothing: the rank files, concatenated into ``results.jsonl``, resume it.

Runs deletion AOPC (the paper's metric; --protocol default or paper, see
jacobian_scopes.eval.evaluate), ERASER comprehensiveness/sufficiency and the
Spearman agreement with leave-one-out KL for the three scopes, the baselines and a random
order (see jacobian_scopes.evaluate), and optionally the cascading randomisation check.
Writes to --out (default reports/faithfulness[-<model>][-paper]/):

* results.jsonl: every per-passage number, appended as it is computed. Rerunning the same
  command resumes: finished (passage, method) pairs are skipped, so the run can be stopped
  and restarted, or extended with a larger --limit.
* summary.csv / summary.md: mean and 95% bootstrap interval per method, next to the
  paper's Llama-3.2-1B figures; comparisons.csv: paired tests between methods;
  deletion_curves.csv; faithfulness.png; meta.json (command, n, timing).
* randomisation.csv / randomisation.md with --randomisation N (N passages).

Prints the measured seconds per passage and an estimate for the whole data file.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import pandas as pd
import torch

import jacobian_scopes as js
from jacobian_scopes.adapter import ModelAdapter
from jacobian_scopes.default_model import packaged_model
from jacobian_scopes.eval import evaluate
from jacobian_scopes.eval.distributed import local_device, torchrun_ranks
from jacobian_scopes.eval.methods import default_methods
from jacobian_scopes.eval.passages import LAMBADA_200, load_lambada

REPO = Path(__file__).resolve().parents[1]
DATA = LAMBADA_200  # shipped with the package

# Liu et al. (2026), Llama-3.2-1B, 1000 LAMBADA passages. Their input × gradient and IG
# score tokens by the L2 norm of the attribution vector: our *_norm rows.
PAPER = {
    "aopc": {
        "random": -0.261,
        "integrated_gradients_norm": -1.095,
        "input_x_gradient_norm": -1.284,
        "semantic": -1.298,
        "temperature": -1.317,
        "fisher": -1.320,
    },
    "loo_spearman": {"fisher": 0.59, "integrated_gradients_norm": 0.30},
}
LABELS = {
    "aopc": "AOPC ↓",
    "comprehensiveness": "compr. ↑",
    "sufficiency": "suff. ↓",
    "loo_spearman": "LOO ρ ↑",
}


def fmt(mean: float, low: float, high: float) -> str:
    if pd.isna(mean):
        return "–"
    if pd.isna(low):
        return f"{mean:.3f}"
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def markdown(table: pd.DataFrame) -> str:
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


def summary_table(ev: evaluate.Evaluation, n_boot: int, seed: int) -> tuple[pd.DataFrame, str]:
    s = ev.summary(n_boot=n_boot, seed=seed)
    rows = []
    for method, r in s.iterrows():
        row = {"method": method, "n": int(r["n"])}
        for metric, label in LABELS.items():
            if metric in s:
                row[label] = fmt(r[metric], r[f"{metric}_low"], r[f"{metric}_high"])
        for metric, values in PAPER.items():
            if metric in s:
                paper = values.get(str(method))
                row[f"paper {LABELS[metric].split()[0]}"] = "" if paper is None else f"{paper:.3f}"
        row["s/passage"] = f"{r['seconds']:.1f}"
        rows.append(row)
    table = pd.DataFrame(rows)
    return s, markdown(table)


def plot(
    ev: evaluate.Evaluation, s: pd.DataFrame, path: Path, n_boot: int, seed: int, model: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in ("aopc", "comprehensiveness", "loo_spearman") if m in s]
    has_curves = "aopc" in s
    n_panels = len(metrics) + int(has_curves)
    fig, axes = plt.subplots(1, n_panels, figsize=(5.2 * n_panels, 4.8), squeeze=False)
    axes = axes[0]
    i = 0
    if has_curves:
        curves = ev.deletion_curves(n_boot=n_boot, seed=seed)
        colors = plt.get_cmap("tab20").colors
        for k, (method, c) in enumerate(curves.groupby("method", sort=False)):
            style = "--" if method == "random" else "-"
            axes[0].plot(
                c["fraction"],
                c["delta"],
                style,
                marker="os^vD"[k % 5],
                color=colors[k % 20],
                label=method,
            )
        axes[0].set_xlabel("fraction of tokens deleted (embedding zeroed)")
        axes[0].set_ylabel("mean Δ log p(original top-1)")
        axes[0].set_title("Deletion curves")
        axes[0].legend(fontsize=7)
        i = 1
    for ax, metric in zip(axes[i:], metrics, strict=True):
        order = s[metric].sort_values(ascending=not evaluate.HIGHER_IS_BETTER[metric])
        y = range(len(order))
        err = [
            order - s.loc[order.index, f"{metric}_low"],
            s.loc[order.index, f"{metric}_high"] - order,
        ]
        colors = ["tab:gray" if m == "random" else "tab:blue" for m in order.index]
        ax.barh(list(y), order.values, xerr=err, color=colors, capsize=2)
        ax.set_yticks(list(y), list(order.index), fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"{LABELS[metric]} (95% bootstrap CI)")
        ax.axvline(0, color="black", linewidth=0.5)
    fig.suptitle(f"{model}, LAMBADA, n = {len(ev.passages)} passages")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="an embedded model: smollm2-135m-instruct or gemma-3-270m",
    )
    ap.add_argument("--device", default=None, help="default: the GPU if there is one")
    ap.add_argument("--data", type=Path, default=DATA, help="relative to the repository root")
    ap.add_argument("--limit", type=int, default=None, help="first N passages (default: all)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--protocol",
        choices=evaluate.PROTOCOLS,
        default="default",
        help="default: the passage without its last word, BOS kept and never deleted, the "
        "top-1 after it explained; paper: the authors' script (whole passage, no BOS, its last "
        "token explained at T-2, all T tokens ranked)",
    )
    ap.add_argument("--metrics", nargs="+", default=list(evaluate.METRICS))
    ap.add_argument("--methods", nargs="+", default=None, help="subset of method names")
    ap.add_argument("--ig-steps", type=int, default=16)
    ap.add_argument("--token-occlusion", action="store_true", help="add occlusion_token")
    ap.add_argument("--include-bos", action="store_true", help="rank and delete BOS too")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--randomisation", type=int, default=0, metavar="N", help="passages")
    ap.add_argument("--randomisation-stride", type=int, default=6)
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="no model, nothing computed: the tables of the passages that --out's results "
        "files finished (a stopped run's, or the rank files of a stopped torchrun)",
    )
    args = ap.parse_args()
    if args.protocol == "paper" and args.include_bos:
        ap.error("--include-bos is for --protocol default (the paper's passages have no BOS)")
    spec = packaged_model(args.model)
    if args.out is None:
        suffix = "" if spec.name == "smollm2-135m-instruct" else f"-{spec.name}"
        suffix += "" if args.protocol == "default" else f"-{args.protocol}"
        args.out = Path(f"reports/faithfulness{suffix}")

    data = args.data if args.data.is_absolute() else REPO / args.data
    out = args.out if args.out.is_absolute() else REPO / args.out
    out.mkdir(parents=True, exist_ok=True)
    passages = load_lambada(data, limit=args.limit, whole=args.protocol == "paper")
    total = len(load_lambada(data))
    methods = default_methods(
        ig_steps=args.ig_steps,
        seed=args.seed,
        include_token_occlusion=args.token_occlusion,
        internal_batch_size=min(args.batch_size, 8),
    )
    if args.methods is not None:
        unknown = set(args.methods) - {m.name for m in methods} - {"random"}
        if unknown:
            sys.exit(f"unknown methods {sorted(unknown)}; choose from {[m.name for m in methods]}")
        methods = [m for m in methods if m.name in args.methods]

    previous = json.loads((out / "meta.json").read_text()) if (out / "meta.json").exists() else {}
    if args.report_only:
        files = [out / "results.jsonl", *sorted(out.glob("results.rank*.jsonl"))]
        files = [f for f in files if f.exists()]
        if not files:
            sys.exit(f"--report-only: no results files in {out}")
        ev = evaluate.read_results(files, passages)
        if not len(ev.passages):
            sys.exit(f"--report-only: {out}'s results files have no finished passage")
        # The config record is each file's first line: no need to parse the files again.
        with files[0].open(encoding="utf-8") as f:
            model_name = str(json.loads(f.readline())["model"])
        wall = float(previous.get("wall_seconds_this_run", float("nan")))
        machine = str(previous.get("machine", "not recorded"))
    else:
        # Under torchrun each rank's model goes to its own GPU, or shares one round-robin.
        model = js.load_default_model(spec.name, device=args.device or local_device())
        model_name = ModelAdapter(model).name
        started = time.perf_counter()
        ev = evaluate.evaluate(
            model,
            passages,
            methods,
            metrics=args.metrics,
            protocol=args.protocol,
            include_bos=args.include_bos if args.protocol == "default" else None,
            seed=args.seed,
            results=out / "results.jsonl",
            internal_batch_size=args.batch_size,
            verbose=not args.no_progress,
        )
        wall = time.perf_counter() - started
        ranks = torchrun_ranks()
        if ranks is not None and ranks.rank != 0:
            return  # rank 0 writes the tables for all
        machine = (
            f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} "
            f"threads, {model.cfg.device}, {1 if ranks is None else ranks.world} process(es)"
        )

    s, md = summary_table(ev, args.n_boot, args.seed)
    s.to_csv(out / "summary.csv")
    ev.records.to_csv(out / "per_passage.csv", index=False)
    if "aopc" in s:
        ev.deletion_curves(n_boot=args.n_boot, seed=args.seed).to_csv(
            out / "deletion_curves.csv", index=False
        )
    comparisons = []
    for metric in ev.metrics():
        c = ev.compare(metric, n_boot=args.n_boot, seed=args.seed)
        c.insert(0, "metric", metric)
        comparisons.append(c)
    if comparisons:
        pd.concat(comparisons).to_csv(out / "comparisons.csv", index=False)
    plot(ev, s, out / "faithfulness.png", args.n_boot, args.seed, model_name)

    per_passage = ev.seconds_per_passage()
    command = "python benchmarks/bench_faithfulness.py " + shlex.join(sys.argv[1:])
    if args.report_only:  # the command that computed the numbers
        command = previous.get("command", command)
    gaps = ev.records.get("relative_gap")
    meta = {
        "command": previous.get("command", command.strip())
        if args.report_only
        else command.strip(),
        "n_passages": len(ev.passages),
        "data": str(args.data),
        "model": model_name,
        "methods": ev.methods,
        "metrics": ev.metrics(),
        "protocol": args.protocol,
        "include_bos": args.include_bos,
        "ig_steps": args.ig_steps,
        "seconds_per_passage": per_passage,
        "estimate_all_passages_hours": per_passage * total / 3600,
        "wall_seconds_this_run": wall,
        "ig_median_abs_relative_gap": None if gaps is None else float(gaps.abs().median()),
        "top1_is_reference": float(ev.passages["reference_matches"].mean()),
        "machine": machine,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    how = {
        "default": f"protocol default (BOS {'ranked' if args.include_bos else 'never deleted'})",
        "paper": "protocol paper (whole passage, no BOS, its last token explained)",
    }[args.protocol]
    header = (
        f"{model_name}, LAMBADA (`{args.data}`), n = {len(ev.passages)} passages; "
        f"{how}; 95% bootstrap intervals.\n"
        f"Command: `{meta['command']}`\n"
    )
    (out / "summary.md").write_text(header + "\n" + md + "\n")
    print(header)
    print(md)
    print(
        f"\n{per_passage:.1f} s per passage (all methods and metrics) on "
        f"{meta['machine']}; the {total} passages of {args.data.name} would take about "
        f"{meta['estimate_all_passages_hours']:.1f} h (resumable: rerun the same command)."
    )
    if gaps is not None and gaps.notna().any():
        print(f"IG completeness: median |relative gap| {meta['ig_median_abs_relative_gap']:.3f}")

    if args.randomisation > 0:
        res = evaluate.randomisation_check(
            model,
            passages[: args.randomisation],
            stride=args.randomisation_stride,
            seed=args.seed,
            verbose=not args.no_progress,
        )
        res.per_prompt.to_csv(out / "randomisation.csv", index=False)
        table = res.table().round(3).reset_index()
        (out / "randomisation.md").write_text(markdown(table) + "\n")
        print("\nSpearman ρ with the original scores after cascading re-initialisation:")
        print(markdown(table))


if __name__ == "__main__":
    main()

"""Batched scopes against one prompt at a time, on 64 LAMBADA passages.

    python benchmarks/bench_batch.py [--n 64] [--batch-sizes 8 16] [--scopes semantic temperature]
                                     [--repeats 3] [--device cpu|cuda] [--out reports/bench_batch]

Each passage loses its last word (the prompt); the word's first token is the Semantic
target, as in the paper's AOPC set-up. For every scope: the time of the one-by-one loop and
of the batched call (medians of ``--repeats``, the two interleaved so that both see the
same machine load), the throughput in prompts per second, their ratio, and the largest
relative difference between the two sets of scores (they must agree).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import jacobian_scopes as js
from jacobian_scopes.eval.passages import LAMBADA_200

DATA = LAMBADA_200


def lambada(model, n: int) -> tuple[list[str], list[int]]:
    texts = [d["text"] for d in json.loads(DATA.read_text())][:n]
    prompts, targets = [], []
    for text in texts:
        cut = text.rstrip().rfind(" ")
        prompts.append(text[:cut])
        targets.append(int(model.to_tokens(text[cut:], prepend_bos=False)[0, 0]))
    return prompts, targets


def one_by_one(model, scope, prompts, targets):
    if scope == "semantic":
        return [js.semantic_scope(model, p, t) for p, t in zip(prompts, targets, strict=True)]
    if scope == "temperature":
        return [js.temperature_scope(model, p) for p in prompts]
    return [js.fisher_scope(model, p) for p in prompts]


def batched(model, scope, prompts, targets, batch_size):
    if scope == "semantic":
        return js.semantic_scope(model, prompts, targets, batch_size=batch_size)
    if scope == "temperature":
        return js.temperature_scope(model, prompts, batch_size=batch_size)
    return js.fisher_scope(model, prompts, batch_size=batch_size)


def timed(fn, device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def max_rel_gap(a, b) -> float:
    return max(
        float((x.scores - y.scores).abs().max() / y.scores.abs().max())
        for x, y in zip(a, b, strict=True)
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--scopes", nargs="+", default=["semantic", "temperature"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=Path("reports/bench_batch"))
    args = ap.parse_args()
    model = js.load_default_model(device=args.device)
    prompts, targets = lambada(model, args.n)
    lengths = [model.to_tokens(p).shape[1] for p in prompts]
    device_name = (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.machine()
    )
    out: dict = {
        "machine": f"{device_name}, {torch.get_num_threads()} CPU threads, torch "
        f"{torch.__version__}",
        "prompts": args.n,
        "tokens": {"min": min(lengths), "median": statistics.median(lengths), "max": max(lengths)},
        "rows": [],
    }
    # Warm-up: the first calls pay for allocations and lazy imports.
    one_by_one(model, args.scopes[0], prompts[:2], targets[:2])
    batched(model, args.scopes[0], prompts[:2], targets[:2], 2)
    for scope in args.scopes:
        times: dict[str, list[float]] = {"one": []} | {f"b{b}": [] for b in args.batch_sizes}
        results = {}
        for _ in range(args.repeats):
            t, results["one"] = timed(
                lambda s=scope: one_by_one(model, s, prompts, targets), args.device
            )
            times["one"].append(t)
            for b in args.batch_sizes:
                t, results[f"b{b}"] = timed(
                    lambda s=scope, b=b: batched(model, s, prompts, targets, b), args.device
                )
                times[f"b{b}"].append(t)
        base = statistics.median(times["one"])
        row = {"scope": scope, "one_by_one_s": base, "one_by_one_per_s": args.n / base}
        for b in args.batch_sizes:
            med = statistics.median(times[f"b{b}"])
            row[f"batch{b}_s"] = med
            row[f"batch{b}_per_s"] = args.n / med
            row[f"batch{b}_speedup"] = base / med
            row[f"batch{b}_max_rel_gap"] = max_rel_gap(results[f"b{b}"], results["one"])
        out["rows"].append(row)
        print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(out, indent=2))
    text = markdown(out, args.batch_sizes)
    args.out.with_suffix(".md").write_text(text)
    print(text)


def markdown(out: dict, sizes: list[int]) -> str:
    tok = out["tokens"]
    lines = [
        f"Machine: {out['machine']}; {out['prompts']} LAMBADA prompts of {tok['min']}–"
        f"{tok['max']} tokens (median {tok['median']})",
        "",
        "| scope | one by one | "
        + " | ".join(f"batch {b} (speed-up, max rel. gap)" for b in sizes)
        + " |",
        "|---|---|" + "---|" * len(sizes),
    ]
    for r in out["rows"]:
        cells = [
            f"{r[f'batch{b}_s']:.1f} s = {r[f'batch{b}_per_s']:.2f}/s "
            f"({r[f'batch{b}_speedup']:.2f}×, {r[f'batch{b}_max_rel_gap']:.1e})"
            for b in sizes
        ]
        lines.append(
            f"| {r['scope']} | {r['one_by_one_s']:.1f} s = {r['one_by_one_per_s']:.2f}/s | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

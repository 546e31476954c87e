"""The two Fisher eigen-solvers on SmolLM2's own next-token distributions: time of one plan
and agreement of the eigen-directions.

    OMP_NUM_THREADS=1 python benchmarks/bench_plans.py [--passages 6] [--ranks 1 8]

The distributions are the next-token distributions after the first ``--passages`` LAMBADA
passages and two short prompts. For each rank, the plan of ``principal`` is timed under
each solver (median of ``--repeats`` after a warm-up; rounds alternate the solvers), and
the iterative solver's eigenvalues and directions are compared with the Gram matrix's full
eigendecomposition: the largest eigenvalue error relative to λ₁ and the smallest |cos|
between matching directions, over all distributions. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
from functools import partial
from typing import Any

import torch

import jacobian_scopes as js
from common import timed_rounds
from jacobian_scopes import fisher
from jacobian_scopes.adapter import ModelAdapter
from jacobian_scopes.eval.passages import LAMBADA_200

PROMPTS = ["The capital of France is", "1, 2, 3, 4,"]


def distributions(model: Any, n_passages: int) -> list[torch.Tensor]:
    texts = [e["text"] for e in json.loads(LAMBADA_200.read_text(encoding="utf-8"))]
    out = []
    for text in texts[:n_passages] + PROMPTS:
        with torch.no_grad():
            logits = model(model.to_tokens(text))
        out.append(torch.softmax(logits[0, -1].float(), -1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--passages", type=int, default=6)
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    model = js.load_default_model()
    W = ModelAdapter(model).W_U
    ps = distributions(model, args.passages)
    sizes = [fisher.support(p, 1e-3).numel() for p in ps]
    print(
        f"{len(ps)} distributions, |S| at eps = 1e-3: {min(sizes)}-{max(sizes)}; d = {W.shape[0]}"
    )
    print("| rank | gram plan | iterative plan | eigenvalue error / λ₁ | min \\|cos\\| |")
    print("|---|---|---|---|---|")
    for k in args.ranks:
        times: dict[str, list[float]] = {"gram": [], "iterative": []}
        errors, cosines = [], []
        for p in ps:
            plans = {s: fisher.plan(W, p, method="principal", rank=k, solver=s) for s in times}
            each = timed_rounds(
                {
                    s: partial(fisher.plan, W, p, method="principal", rank=k, solver=s)
                    for s in times
                },
                args.repeats,
            )
            for s in times:
                times[s].append(statistics.median(each[s]))
            gram, it = plans["gram"], plans["iterative"]
            assert gram.eigenvalues is not None and it.eigenvalues is not None
            errors.append(float((it.eigenvalues[:k] - gram.eigenvalues[:k]).abs().max()))
            errors[-1] /= float(gram.eigenvalues[0])
            u, v = (pl.rows / pl.rows.norm(dim=1, keepdim=True) for pl in (it, gram))
            cosines.append(float((u * v).sum(1).abs().min()))
        cells = [f"{statistics.median(times[s]) * 1000:.0f} ms" for s in ("gram", "iterative")]
        print(f"| {k} | {cells[0]} | {cells[1]} | {max(errors):.1e} | {min(cosines):.5f} |")
    print(f"\nmedian over distributions; threads: {torch.get_num_threads()}")


if __name__ == "__main__":
    main()

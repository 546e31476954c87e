"""How close each Fisher method comes to the exact trace, from full Jacobians.

    python benchmarks/fisher_agreement.py --dump DIR [--lambada N] [--threads K]  # slow
    python benchmarks/fisher_agreement.py --evaluate DIR            # minutes
    python benchmarks/fisher_agreement.py --evaluate DIR --draws 64 # random signs vs Gaussian

``--dump`` saves, for the SCOPES.md §7 prompts and N LAMBADA passages on SmolLM2, the full
Jacobian ``J_t = ∂y/∂x_t`` of the final state at the last position (d VJPs, one per output
coordinate) and the next-token distribution. ``--evaluate`` then scores every candidate
method without running the model again: any row r pulls back as ``J_tᵀ r = Σ_i r_i J_tᵀ e_i``,
and the exact score is ``tr(J_tᵀ F J_t)`` with F over the whole vocabulary (ε = 0). It
prints, per method, the VJPs used, the relative error ``‖s − s*‖/‖s*‖`` and the Spearman
correlation of the token ranking (BOS left out), median and worst over prompts.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import torch

import jacobian_scopes as js
from jacobian_scopes import fisher
from jacobian_scopes.adapter import ModelAdapter
from jacobian_scopes.casestudies import CASES
from jacobian_scopes.engine import Trace
from jacobian_scopes.eval.passages import load_lambada

# (label, method, rank, n_probes); "adaptive:x" keeps the smallest rank whose eigenvalues
# hold a share x of tr F_S (at most 8). Every candidate runs with both solvers (see
# jacobian_scopes.fisher): their eigen-directions agree to the iterative solver's tolerance,
# but their probes differ, so the sketch's figures are two draws of the same estimator (a
# sketch with k=0 needs no solver: both rows are the same draw).
CANDIDATES = [
    ("principal k=1", "principal", 1, 0),
    ("principal k=2", "principal", 2, 0),
    ("principal k=4", "principal", 4, 0),
    ("principal k=8", "principal", 8, 0),
    ("adaptive 50%", "adaptive:0.5", 8, 0),
    ("adaptive 80%", "adaptive:0.8", 8, 0),
    ("sketch k=0 + 1 probe (the default)", "sketch", 0, 1),
    ("sketch k=0 + 2 probes", "sketch", 0, 2),
    ("sketch k=1 + 1 probe", "sketch", 1, 1),
    ("sketch k=1 + 3 probes", "sketch", 1, 3),
    ("sketch k=0 + 4 probes", "sketch", 0, 4),
    ("sketch k=8 + 8 probes (the former default)", "sketch", 8, 8),
]


def dump(out: Path, n_lambada: int) -> None:
    model = js.load_default_model()
    adapter = ModelAdapter(model)
    prompts: list[str] = list(dict.fromkeys(c.prompt for c in CASES))
    passages = sorted(load_lambada(), key=lambda p: len(p.prompt))
    step = max(1, 40 // max(1, n_lambada))
    prompts += [str(p.prompt) for p in passages[: step * n_lambada : step]]
    out.mkdir(parents=True, exist_ok=True)
    for i, prompt in enumerate(prompts):
        if (out / f"{i:02d}.pt").exists():  # resumable: the prompts come in a fixed order
            continue
        tokens = model.to_tokens(prompt)
        start = time.perf_counter()
        with Trace(adapter, tokens, sources=["hook_embed"]) as tr:
            eye = torch.eye(adapter.d_model)[:, None, :]
            pb = tr.pullback([tokens.shape[1] - 1], eye, keep_vectors=True, batch_size=64)
            J = pb.vectors["hook_embed"][:, 0]  # (d_out, pos, d_in)
            p = torch.softmax(tr.logits_at(0, [-1])[0].float(), -1)
        torch.save({"prompt": prompt, "tokens": tokens, "J": J, "p": p}, out / f"{i:02d}.pt")
        print(i, tokens.shape[1], f"{time.perf_counter() - start:.0f} s", flush=True)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = a.argsort().argsort().double()
    rb = b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra @ rb) / (ra.norm() * rb.norm()))


def dense_fisher(W_U: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """F = Wᵀ(diag p − p pᵀ)W over the whole vocabulary, in float64."""
    W = W_U.double()
    p = p.double()
    wbar = W @ p
    return (W * p) @ W.T - torch.outer(wbar, wbar)


def rows_for(
    W: torch.Tensor,
    p: torch.Tensor,
    method: str,
    rank: int,
    n_probes: int,
    solver: str,
    seed: int = 0,
) -> tuple[torch.Tensor, int, int]:
    if method == "gaussian":  # the sketch's probes before they became random signs
        ids = fisher.support(p, 1e-3)
        g = torch.randn((n_probes, ids.numel()), generator=torch.Generator().manual_seed(seed))
        return g @ fisher.candidate_rows(W, p, W @ p, ids), 0, n_probes
    if method.startswith("adaptive:"):
        share = float(method.split(":")[1])
        full = fisher.plan(W, p, method="principal", rank=rank, solver=solver)  # type: ignore[arg-type]
        assert full.eigenvalues is not None
        held = torch.cumsum(full.eigenvalues, 0) / max(full.trace_support, 1e-30)
        k = int((held < share).sum()) + 1
        k = min(k, rank)
        return full.rows[:k], k, 0
    plan = fisher.plan(
        W,
        p,
        method=method,  # type: ignore[arg-type]
        rank=rank,
        n_probes=n_probes,
        generator=torch.Generator().manual_seed(seed),
        solver=solver,  # type: ignore[arg-type]
    )
    return plan.rows, plan.n_exact, plan.n_probes


def _score(J: torch.Tensor, rows: torch.Tensor, n_exact: int, n_probes: int) -> torch.Tensor:
    pulled = torch.einsum("kd,dti->kti", rows.double(), J)
    sq = pulled.pow(2).sum(-1)[:, 1:]
    return sq[:n_exact].sum(0) + (sq[n_exact:].mean(0) if n_probes else 0)


def _prompts(
    folder: Path, W: torch.Tensor
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(J, p, exact scores without BOS) of each dumped prompt, in order; prints its length."""
    for f in sorted(folder.glob("*.pt")):
        data = torch.load(f)
        J, p = data["J"].double(), data["p"]
        exact = torch.einsum("itk,ij,jtk->t", J, dense_fisher(W, p), J)[1:]
        yield J, p, exact
        print(f.name, int(J.shape[1]), "tokens", flush=True)


def draws(folder: Path, n: int) -> None:
    """Expected error of one-VJP and two-VJP probes over ``n`` draws per prompt: random
    signs (the plan's) against Gaussian weights."""
    model = js.load_default_model()
    W = model.W_U.detach()
    kinds = [("1 random-sign probe", "sketch", 1), ("1 Gaussian probe", "gaussian", 1)]
    kinds += [("2 random-sign probes", "sketch", 2), ("2 Gaussian probes", "gaussian", 2)]
    out: dict[str, list[tuple[float, float, float]]] = {k[0]: [] for k in kinds}
    for J, p, exact in _prompts(folder, W):
        for label, method, n_probes in kinds:
            rel, rho = [], []
            for seed in range(n):
                rows, k, m = rows_for(W, p, method, 0, n_probes, "gram", seed)
                score = _score(J, rows, k, m)
                rel.append(float((score - exact).norm() / exact.norm()))
                rho.append(spearman(score, exact))
            out[label].append((statistics.mean(rel), statistics.mean(rho), max(rel)))
    print(f"\n{n} draws a prompt; mean over draws, then median / worst over prompts\n")
    print("| probes | rel. error median / worst | Spearman median / worst | worst draw |")
    print("|---|---|---|---|")
    for label, rows_ in out.items():
        e, r, w = zip(*rows_, strict=True)
        print(
            f"| {label} | {statistics.median(e):.3f} / {max(e):.3f} "
            f"| {statistics.median(r):.3f} / {min(r):.3f} | {max(w):.2f} |"
        )


def evaluate(folder: Path) -> None:
    model = js.load_default_model()
    W = model.W_U.detach()
    labels = [f"{c[0]}, {s}" for c in CANDIDATES for s in fisher.SOLVERS]
    results: dict[str, list[tuple[float, float, int]]] = {label: [] for label in labels}
    n_prompts = 0
    for J, p, exact in _prompts(folder, W):
        n_prompts += 1
        for (label, method, rank, n_probes), solver in (
            (c, s) for c in CANDIDATES for s in fisher.SOLVERS
        ):
            label = f"{label}, {solver}"
            rows, n_exact, n_pr = rows_for(W, p, method, rank, n_probes, solver)
            score = _score(J, rows, n_exact, n_pr)
            rel = float((score - exact).norm() / exact.norm())
            results[label].append((rel, spearman(score, exact), n_exact + n_pr))
    print(f"\n{n_prompts} prompts; exact = tr(J_tᵀ F J_t) over the whole vocabulary\n")
    print("| method | VJPs (median) | rel. error median / worst | Spearman median / worst |")
    print("|---|---|---|---|")
    for label, figures in results.items():
        errors = [r[0] for r in figures]
        rho = [r[1] for r in figures]
        vjps = statistics.median(r[2] for r in figures)
        print(
            f"| {label} | {vjps:g} | {statistics.median(errors):.3f} / {max(errors):.3f} "
            f"| {statistics.median(rho):.3f} / {min(rho):.3f} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--dump", type=Path)
    ap.add_argument("--evaluate", type=Path)
    ap.add_argument("--lambada", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--draws", type=int, default=0, help="with --evaluate: N draws a prompt")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.dump:
        dump(args.dump, args.lambada)
    if args.evaluate and args.draws:
        draws(args.evaluate, args.draws)
    elif args.evaluate:
        evaluate(args.evaluate)


if __name__ == "__main__":
    main()

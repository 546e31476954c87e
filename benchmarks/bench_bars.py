"""The speed bars: each scope's time as a multiple of the floor, on SmolLM2, on this CPU.

    OMP_NUM_THREADS=1 python benchmarks/bench_bars.py [--lengths 20 256 1024] [--long]
        [--solver gram|iterative] [--fisher sketch:8:8:gram sketch:1:1:iterative ...]

The floor is the Hugging Face model itself with PyTorch SDPA attention: a forward pass to
the final hidden state and one backward pass to the input embeddings only, parameters
frozen. "TransformerLens model alone" is the same work through the TransformerBridge that
the scopes run on (a hook makes the embeddings a leaf, no scope): what TransformerLens
itself costs over the floor. Every length runs in a fresh process (one torch thread unless
OMP_NUM_THREADS says otherwise), the floor and the scopes in that same process, after a
warm-up, in rounds: each round times the floor and then every scope once, and a scope's
ratio is the median over rounds of its time over that round's floor (the floor's seconds
are the median too).
``--long`` adds T = 4096 (about 10 minutes; without the "TransformerLens model alone" row,
whose eager attention would keep 36 GB of patterns). ``--fisher`` adds Fisher variants as
``method:rank:n_probes[:solver]`` (the solver of the eigen-directions, ``gram`` or
``iterative``; see :mod:`jacobian_scopes.fisher`); ``--solver`` sets the one of every
Fisher row that names none, the two default rows included. Prints a
Markdown table; ``--json`` writes the raw figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from common import fisher_solver, fisher_variant, timed_rounds
from jacobian_scopes.eval.passages import LAMBADA_200 as LAMBADA


def _tokens(tokenizer: Any, n: int) -> torch.Tensor:
    """``n`` tokens of English text (LAMBADA passages, or a fixed paragraph), BOS first."""
    if LAMBADA.exists():
        text = " ".join(e["text"] for e in json.loads(LAMBADA.read_text(encoding="utf-8")))
    else:
        text = (
            "The capital of France is Paris, and the river that runs through it is the Seine. "
            * 400
        )
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    while len(ids) < n:
        ids = ids + ids
    bos = tokenizer.bos_token_id
    head = [bos] if bos is not None else []
    return torch.tensor([head + ids[: n - len(head)]])


def measure(n: int, fisher_variants: list[str], repeats: int, solver: str | None) -> dict[str, Any]:
    """One length, in this process: the floor and every scope, seconds (median)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import jacobian_scopes as js
    from jacobian_scopes.default_model import default_checkpoint

    path = default_checkpoint()
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    hf.eval()
    for p in hf.parameters():
        p.requires_grad_(False)
    tokens = _tokens(AutoTokenizer.from_pretrained(path), n)
    model = js.load_default_model()
    for p in model.parameters():
        p.requires_grad_(False)
    target = int(tokens[0, -1])
    w = hf.lm_head.weight[target].detach()

    def floor() -> torch.Tensor:
        emb = hf.model.embed_tokens(tokens).detach().requires_grad_(True)
        y = hf.model(inputs_embeds=emb, use_cache=False).last_hidden_state
        (g,) = torch.autograd.grad(y[0, -1] @ w, emb)
        return g

    def bridge_alone() -> torch.Tensor:
        # The TransformerLens model with what any scope needs and nothing else: the input
        # embeddings made a leaf by a hook, the final state read before the unembedding.
        box: dict[str, torch.Tensor] = {}

        def leaf(x: torch.Tensor, hook: Any) -> torch.Tensor:
            box["emb"] = x.detach().requires_grad_(True)
            return box["emb"]

        def read(module: Any, args: tuple[torch.Tensor, ...]) -> None:
            box["y"] = args[0]

        handle = model.unembed.register_forward_pre_hook(read)
        try:
            with torch.enable_grad(), model.hooks(fwd_hooks=[("hook_embed", leaf)]):
                model(tokens)
        finally:
            handle.remove()
        (g,) = torch.autograd.grad(box["y"][0, -1] @ w, box["emb"])
        return g

    work: dict[str, Any] = {
        "floor (HF SDPA)": floor,
        "TransformerLens model alone (no scope)": bridge_alone,
        "Semantic": lambda: js.semantic_scope(model, tokens, target),
        "Temperature": lambda: js.temperature_scope(model, tokens),
        "Fisher principal": lambda: js.fisher_scope(model, tokens, method="principal"),
        "Fisher default": lambda: js.fisher_scope(model, tokens),
    }
    if n > 2048:
        # The Bridge's own attention is eager: its patterns alone would take 36 GB at 4096.
        del work["TransformerLens model alone (no scope)"]
    for spec in fisher_variants:
        kwargs, named = fisher_variant(spec)

        def variant(kw: dict[str, Any] = kwargs, s: str | None = named or solver) -> Any:
            with fisher_solver(s):
                return js.fisher_scope(model, tokens, **kw)

        work[f"Fisher {spec}"] = variant
    reps = repeats if repeats else (7 if n <= 256 else 3 if n <= 1024 else 1)
    out: dict[str, Any] = {"tokens": n, "threads": torch.get_num_threads()}
    with fisher_solver(solver):
        # The floor first in each round; a ratio is taken within its round.
        times = timed_rounds(work, reps)
    floor_times = times["floor (HF SDPA)"]
    out["seconds"] = {name: statistics.median(ts) for name, ts in times.items()}
    out["ratios"] = {
        name: statistics.median(t / f for t, f in zip(ts, floor_times, strict=True))
        for name, ts in times.items()
    }
    for name in work:
        print(f"  T={n} {name}: {out['seconds'][name]:.3f} s", file=sys.stderr, flush=True)
    from jacobian_scopes import fisher

    with fisher_solver(solver):
        result = js.fisher_scope(model, tokens)
        assert isinstance(result, js.ScopeResult) and result.fisher is not None
        default = result.fisher
        out["fisher_default"] = f"{default.summary}, solver {fisher.DEFAULT_SOLVER}"
    return out


def table(rows: list[dict[str, Any]]) -> str:
    names = list(rows[0]["seconds"])
    head = "| work | " + " | ".join(f"T = {r['tokens']}" for r in rows) + " |"
    lines = [head, "|---" * (len(rows) + 1) + "|"]
    for name in names:
        cells = []
        for r in rows:
            s = r["seconds"].get(name)
            if s is None:
                cells.append("")
            elif name.startswith("floor"):
                cells.append(f"{s:.2f} s")
            else:
                cells.append(f"{r['ratios'][name]:.2f}×")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Fisher default: {rows[0]['fisher_default']}; threads: {rows[0]['threads']}.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--lengths", type=int, nargs="+", default=[20, 256, 1024])
    ap.add_argument("--long", action="store_true", help="add T = 4096")
    ap.add_argument(
        "--fisher", nargs="*", default=[], help="extra variants method:rank:probes[:solver]"
    )
    ap.add_argument("--solver", choices=["gram", "iterative"], help="for rows that name none")
    ap.add_argument("--repeats", type=int, default=0, help="0: 5 up to 256 tokens, then 2, 1")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # worker: one length
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one, args.fisher, args.repeats, args.solver)))
        return
    lengths = args.lengths + ([4096] if args.long and 4096 not in args.lengths else [])
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    rows = []
    for n in lengths:
        cmd = [sys.executable, __file__, "--one", str(n), "--repeats", str(args.repeats)]
        if args.fisher:
            cmd += ["--fisher", *args.fisher]
        if args.solver:
            cmd += ["--solver", args.solver]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"T={n} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"T={n} done", file=sys.stderr, flush=True)
    text = table(rows)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

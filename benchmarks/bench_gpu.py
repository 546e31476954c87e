"""GPU figures: every scope against the floor on Llama-3-shaped random models.

    python benchmarks/bench_gpu.py                       # on a CUDA GPU, minutes
    python benchmarks/bench_gpu.py --smoke               # tiny shapes on CPU, seconds

Models are random-init ``LlamaForCausalLM`` with the shapes of Llama-3.2-1B (float32) and
Llama-3.1-8B (bfloat16), wrapped as a TransformerBridge offline (no Hub). For each model
and length T (128, 1024, 4096) it times, as the median of a few repeats after a warm-up:

* the floor: the Hugging Face model with SDPA attention, forward to the final hidden
  state and backward to the input embeddings only, parameters frozen;
* the Bridge's own floor: the same forward + input-gradient backward through the Bridge
  (eager attention), by hand;
* Semantic, Temperature, Fisher principal, Fisher default, Semantic with all-layer sources
  (every ``resid_pre``), and each ``--fisher method:rank:n_probes[:solver]`` variant;
* at T = 128 only: a batch of 32 prompts (Semantic) and a 32-token generation attribution.

Each row gives seconds, the ratio to both floors, and peak GPU memory (``--smoke``: peak
resident memory is not measured, the figures only show that every path runs). Out of
memory is reported as such and the run goes on. ``--solver gram|iterative`` sets the
eigen-solver of every Fisher row that names none (``jacobian_scopes.fisher.DEFAULT_SOLVER``);
``--plans`` adds a table of the plan alone (no model: the unembedding and a next-token
distribution), both solvers, for each Fisher setting. Prints Markdown tables; ``--json``
saves the rows.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from common import fisher_solver, fisher_variant

SHAPES: dict[str, dict[str, Any]] = {
    "llama-3.2-1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        dtype=torch.float32,
    ),
    "llama-3.1-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        dtype=torch.bfloat16,
    ),
    "smoke": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        dtype=torch.float32,
    ),
}


def build(shape: str, device: str) -> tuple[Any, Any]:
    """(the HF model, the Bridge wrapped around it). The floor runs the HF model itself;
    the Bridge's own forward computes attention in its own (eager) code either way."""
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import helpers  # the tests' offline word-level tokenizer
    from jacobian_scopes.default_model import bridge_from_hf

    spec = dict(SHAPES[shape])
    dtype = spec.pop("dtype")
    cfg = LlamaConfig(**spec, max_position_embeddings=8192, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        hf = LlamaForCausalLM(cfg).to(dtype).eval()
        # unit norm gains make ‖y‖ constant (Temperature undefined): perturb them
        for name, p in hf.named_parameters():
            if name.endswith("norm.weight"):
                p.data.uniform_(0.5, 1.5)
    for p in hf.parameters():
        p.requires_grad_(False)
    hf.config._attn_implementation = "sdpa"
    bridge = bridge_from_hf(
        "meta-llama/Llama-3.2-1B",
        hf,
        helpers.make_tokenizer(cfg.vocab_size),
        device=device,
        dtype=dtype,
    )
    return hf, bridge


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Any, device: str, repeats: int) -> tuple[float | None, float | None, str]:
    """(median seconds, peak GPU GiB, note)."""
    try:
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        fn()
        sync(device)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - start)
        peak = None
        if device.startswith("cuda"):
            peak = (torch.cuda.max_memory_allocated() - base) / 2**30
        return statistics.median(times), peak, ""
    except torch.OutOfMemoryError:
        return None, None, "out of memory"


def run(
    shape: str, lengths: list[int], device: str, repeats: int, args: argparse.Namespace
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the scope rows, the plan rows) of one model."""
    hf, bridge = build(shape, device)
    with fisher_solver(args.solver):
        rows = [
            one_length(hf, bridge, shape, n, n == min(lengths), device, repeats, args.fisher)
            for n in lengths
        ]
    plans = plan_rows(bridge, shape, device, repeats, args.fisher) if args.plans else []
    gc.collect()
    return rows, plans


PLAN_SETTINGS = ["sketch:0:1", "sketch:8:8", "sketch:1:1", "principal:1:0"]


def plan_rows(
    bridge: Any, shape: str, device: str, repeats: int, variants: list[str]
) -> list[dict[str, Any]]:
    """The Fisher plan alone (no model run), both solvers, on this model's unembedding: for
    the next-token distribution of a random prompt (a random model's is nearly flat, so
    its support is most of the vocabulary) and for a peaked one (softmax of 4·N(0, 1))."""
    from jacobian_scopes import fisher
    from jacobian_scopes.adapter import ModelAdapter

    W_U = ModelAdapter(bridge).W_U.detach()
    vocab = int(SHAPES[shape]["vocab_size"])
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(4, vocab, (1, 32), generator=gen).to(device)
    with torch.no_grad():
        logits = bridge(tokens)[0, -1].float()
    dists = {
        "model": torch.softmax(logits, -1),
        "peaked": torch.softmax(4 * torch.randn(vocab, generator=gen), -1).to(device),
    }
    settings = list(
        dict.fromkeys(
            PLAN_SETTINGS + [v.rsplit(":", 1)[0] if v.count(":") == 3 else v for v in variants]
        )
    )
    out = []
    for label, p in dists.items():
        size = int(fisher.support(p, 1e-3).numel())
        for setting in settings:
            kwargs, _ = fisher_variant(setting)
            for solver in fisher.SOLVERS:

                def once(kw: dict[str, Any] = kwargs, sv: str = solver, q: Any = p) -> None:
                    fisher.plan(W_U, q, generator=torch.Generator().manual_seed(0), solver=sv, **kw)  # type: ignore[arg-type]

                s, peak, note = timed(once, device, repeats)
                out.append(
                    {
                        "model": shape,
                        "distribution": label,
                        "support": size,
                        "setting": setting,
                        "solver": solver,
                        "s": s,
                        "peak_gib": peak,
                        "note": note,
                    }
                )
                print(f"plan {shape} {label} {setting} {solver}: {s} s {note}", file=sys.stderr)
    return out


def plan_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | distribution | support | setting | solver | plan time | peak GPU |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        time_ = r["note"] if r["s"] is None else f"{r['s'] * 1e3:.1f} ms"
        peak = "" if r["peak_gib"] is None else f"{r['peak_gib']:.2f} GiB"
        lines.append(
            f"| {r['model']} | {r['distribution']} | {r['support']} | {r['setting']} "
            f"| {r['solver']} | {time_} | {peak} |"
        )
    return "\n".join(lines)


def one_length(
    hf: Any,
    bridge: Any,
    shape: str,
    n: int,
    extras: bool,
    device: str,
    repeats: int,
    variants: list[str],
) -> dict[str, Any]:
    import jacobian_scopes as js
    from jacobian_scopes.adapter import EMBED_HOOK

    vocab = SHAPES[shape]["vocab_size"]
    gen = torch.Generator().manual_seed(n)
    tokens = torch.randint(4, int(vocab), (1, n), generator=gen).to(device)
    target = int(tokens[0, -1])
    w = hf.lm_head.weight[target].detach()

    def floor_sdpa() -> None:
        emb = hf.model.embed_tokens(tokens).detach().requires_grad_(True)
        y = hf.model(inputs_embeds=emb, use_cache=False).last_hidden_state
        torch.autograd.grad(y[0, -1] @ w, emb)

    def floor_bridge() -> None:
        store = {}

        def leaf(x: torch.Tensor, hook: Any) -> torch.Tensor:
            store["x"] = x.detach().requires_grad_(True)
            return store["x"]

        with bridge.hooks(fwd_hooks=[(EMBED_HOOK, leaf)]):
            logits = bridge(tokens)
        torch.autograd.grad(logits[0, -1, target], store["x"])

    work: dict[str, Any] = {
        "floor (HF SDPA)": floor_sdpa,
        "floor (Bridge, eager)": floor_bridge,
        "Semantic": lambda: js.semantic_scope(bridge, tokens, target),
        "Temperature": lambda: js.temperature_scope(bridge, tokens),
        "Fisher principal": lambda: js.fisher_scope(bridge, tokens, method="principal"),
        "Fisher default": lambda: js.fisher_scope(bridge, tokens),
        "Semantic, all resid_pre": lambda: js.semantic_scope(
            bridge, tokens, target, sources="resid_pre"
        ),
    }
    for spec in variants:
        kwargs, named = fisher_variant(spec)

        def variant(kw: dict[str, Any] = kwargs, sv: str | None = named) -> Any:
            with fisher_solver(sv):
                return js.fisher_scope(bridge, tokens, **kw)

        work[f"Fisher {spec}"] = variant
    if extras:
        prompts = [torch.randint(4, int(vocab), (n,), generator=gen).to(device) for _ in range(32)]
        work["Semantic, batch of 32"] = lambda: js.semantic_scope(bridge, prompts, [target] * 32)
        work["generation, 32 tokens"] = lambda: js.generate_scope(
            bridge, tokens[0], 32, stop_at_eos=False
        )
    figures: dict[str, Any] = {}
    for name, fn in work.items():
        s, peak, note = timed(fn, device, repeats)
        figures[name] = {"s": s, "peak_gib": peak, "note": note}
        print(f"{shape} T={n} {name}: {s} s, {peak} GiB {note}", file=sys.stderr, flush=True)
    return {"model": shape, "tokens": n, "figures": figures}


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | T | work | time | × floor (SDPA) | × Bridge floor | peak GPU |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        f = r["figures"]
        base = f["floor (HF SDPA)"]["s"]
        bridge = f["floor (Bridge, eager)"]["s"]
        for name, v in f.items():
            s = v["s"]
            if s is None:
                lines.append(f"| {r['model']} | {r['tokens']} | {name} | {v['note']} | | | |")
                continue
            ratio = f"{s / base:.2f}×" if base else ""
            ratio_b = f"{s / bridge:.2f}×" if bridge else ""
            peak = "" if v["peak_gib"] is None else f"{v['peak_gib']:.2f} GiB"
            lines.append(
                f"| {r['model']} | {r['tokens']} | {name} | {s:.3f} s | {ratio} | {ratio_b} "
                f"| {peak} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, CPU, two lengths")
    ap.add_argument("--models", nargs="+", default=["llama-3.2-1b", "llama-3.1-8b"])
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 1024, 4096])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--fisher", nargs="*", default=[], help="extra variants method:rank:probes[:solver]"
    )
    ap.add_argument("--solver", choices=["gram", "iterative"], help="for rows that name none")
    ap.add_argument("--plans", action="store_true", help="time the Fisher plan alone too")
    args = ap.parse_args(argv)
    if args.smoke:
        models, lengths, device, repeats = ["smoke"], [8, 16], "cpu", 1
    else:
        if not torch.cuda.is_available():
            sys.exit("no CUDA GPU: run with --smoke for the CPU check")
        models, lengths, device, repeats = args.models, args.lengths, "cuda", args.repeats
    rows: list[dict[str, Any]] = []
    plans: list[dict[str, Any]] = []
    for shape in models:
        more, more_plans = run(shape, lengths, device, repeats, args)
        rows += more
        plans += more_plans
    text = table(rows)
    if plans:
        text += "\n\n" + plan_table(plans)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"scopes": rows, "plans": plans}, indent=2))
    return text


if __name__ == "__main__":
    main()

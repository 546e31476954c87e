"""Core scopes against a hand-written forward + input-gradient backward, in one run.

    python benchmarks/bench_core.py [--repeats 7] [--fisher-prompts 6] [--out reports/bench_core]

Reports, on SmolLM2-135M (the embedded default) and a GPT-2-small-shaped random model:
* Semantic and Temperature time as a ratio to the hand-written reference (median of repeats);
* Fisher sketch (the default: one probe, one VJP) and exact at eps=1e-3 on the SCOPES.md §7
  prompts: VJPs used and time relative to Semantic on the same prompt;
* peak resident-memory growth of each call, and that no parameter ever holds a gradient.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

import jacobian_scopes as js
from common import (
    fmt_bytes,
    gpt2_small_random,
    handwritten_input_gradient,
    median_time,
    peak_rss_delta,
)
from jacobian_scopes.casestudies import CASES

BIAS = "Tom loves Korean food. He grew up in the South and goes to Columbia. He is a"


def ratios(model, tokens, target, repeats):
    base = median_time(lambda: handwritten_input_gradient(model, tokens, target), repeats)
    sem = median_time(lambda: js.semantic_scope(model, tokens, target), repeats)
    tmp = median_time(lambda: js.temperature_scope(model, tokens), repeats)
    # the two must agree on what they compute
    ref = handwritten_input_gradient(model, tokens, target)
    torch.testing.assert_close(
        js.semantic_scope(model, tokens, target).scores, ref, rtol=1e-4, atol=1e-5
    )
    mem_base, _ = peak_rss_delta(lambda: handwritten_input_gradient(model, tokens, target))
    mem_sem, _ = peak_rss_delta(lambda: js.semantic_scope(model, tokens, target))
    return {
        "tokens": int(tokens.shape[1]),
        "reference_s": base,
        "semantic_s": sem,
        "temperature_s": tmp,
        "semantic_ratio": sem / base,
        "temperature_ratio": tmp / base,
        "reference_peak": mem_base,
        "semantic_peak": mem_sem,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--fisher-prompts", type=int, default=6)
    ap.add_argument("--out", type=Path, default=Path("reports/bench_core"))
    args = ap.parse_args()
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    out: dict = {"machine": f"{platform.machine()}, {threads} threads, torch {torch.__version__}"}

    smol = js.load_default_model()
    gpt2 = gpt2_small_random()
    for m in (smol, gpt2):
        for p in m.parameters():
            p.requires_grad_(True)  # as users hold them: the scopes must freeze them themselves
            p.grad = None
    tok = smol.to_tokens(BIAS)
    out["smollm2"] = ratios(smol, tok, smol.to_single_token(" liberal"), args.repeats)
    gtok = torch.randint(0, 50257, (1, 64), generator=torch.Generator().manual_seed(0))
    out["gpt2_small_random"] = ratios(gpt2, gtok, 11, args.repeats)

    prompts = [c.prompt for c in CASES if c.scope != "temperature"]
    prompts = list(dict.fromkeys(prompts))[: args.fisher_prompts]
    fisher_rows = [fisher_row(smol, prompt) for prompt in prompts]
    out["fisher"] = fisher_rows
    out["parameters_with_grad"] = sum(
        p.grad is not None for m in (smol, gpt2) for p in m.parameters()
    )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(out, indent=2))
    text = markdown(out)
    args.out.with_suffix(".md").write_text(text)
    print(text)


def fisher_row(model, prompt: str) -> dict:
    tokens = model.to_tokens(prompt)
    target = int(model(tokens)[0, -1].argmax())
    sem = median_time(lambda: js.semantic_scope(model, tokens, target), 3)
    sketch_s = median_time(lambda: js.fisher_scope(model, tokens), 3)
    peak, exact = peak_rss_delta(lambda: js.fisher_scope(model, tokens, method="exact", eps=1e-3))
    exact_s = median_time(
        lambda: js.fisher_scope(model, tokens, method="exact", eps=1e-3), 1, warmup=0
    )
    sketch = js.fisher_scope(model, tokens)
    gap = (sketch.scores[1:] - exact.scores[1:]).norm() / exact.scores[1:].norm()
    row = {
        "prompt": prompt[:48],
        "tokens": int(tokens.shape[1]),
        "support": exact.fisher.support_size,
        "exact_vjps": exact.fisher.n_vjps,
        "semantic_s": sem,
        "sketch_s": sketch_s,
        "exact_s": exact_s,
        "sketch_over_semantic": sketch_s / sem,
        "exact_over_semantic": exact_s / sem,
        "sketch_rel_error": float(gap),
        "exact_peak": peak,
    }
    print(row, flush=True)
    return row


def markdown(out: dict) -> str:
    lines = [
        f"Machine: {out['machine']}",
        "",
        "| model | tokens | reference fwd+bwd | Semantic | ratio | Temperature | ratio "
        "| peak (ref / Semantic) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("smollm2", "gpt2_small_random"):
        r = out[name]
        lines.append(
            f"| {name} | {r['tokens']} | {r['reference_s'] * 1e3:.0f} ms "
            f"| {r['semantic_s'] * 1e3:.0f} ms | {r['semantic_ratio']:.2f}× "
            f"| {r['temperature_s'] * 1e3:.0f} ms | {r['temperature_ratio']:.2f}× "
            f"| {fmt_bytes(r['reference_peak'])} / {fmt_bytes(r['semantic_peak'])} |"
        )
    lines += [
        "",
        "| prompt | tokens | \\|S\\| at ε=1e-3 | exact VJPs | Semantic | sketch (default, 1 VJP) "
        "| exact | sketch rel. error | exact peak |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out["fisher"]:
        lines.append(
            f"| {r['prompt']}… | {r['tokens']} | {r['support']} | {r['exact_vjps']} "
            f"| {r['semantic_s']:.2f} s | {r['sketch_s']:.2f} s ({r['sketch_over_semantic']:.1f}×) "
            f"| {r['exact_s']:.1f} s ({r['exact_over_semantic']:.0f}×) "
            f"| {r['sketch_rel_error']:.3f} | {fmt_bytes(r['exact_peak'])} |"
        )
    lines += ["", f"Parameters holding a gradient after all calls: {out['parameters_with_grad']}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

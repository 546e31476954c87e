"""Layerwise drill-down against the plain scope, in one run.

    python benchmarks/bench_layers.py [--repeats 7] [--out reports/bench_layers]

For SmolLM2-135M and a GPT-2-small-shaped random model: the time of a Semantic scope with
scores at every layer's resid_pre (and at every head's z) as a ratio to the plain scope
(embeddings only), medians of repeats; peak resident-memory growth; and how much the
linearised variants (frozen norm scales, frozen attention patterns) move the scores.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

import jacobian_scopes as js
from common import fmt_bytes, gpt2_small_random, median_time, peak_rss_delta

BIAS = "Tom loves Korean food. He grew up in the South and goes to Columbia. He is a"


def measure(model, tokens, target, repeats) -> dict:
    plain = median_time(lambda: js.semantic_scope(model, tokens, target), repeats)
    layers = median_time(
        lambda: js.semantic_scope(model, tokens, target, sources="resid_pre"), repeats
    )
    heads = median_time(lambda: js.semantic_scope(model, tokens, target, sources="z"), repeats)
    mem_plain, base = peak_rss_delta(lambda: js.semantic_scope(model, tokens, target))
    mem_layers, _ = peak_rss_delta(
        lambda: js.semantic_scope(model, tokens, target, sources="resid_pre")
    )

    def change(freeze):
        r = js.semantic_scope(model, tokens, target, freeze=freeze)
        return float((r.scores - base.scores).norm() / base.scores.norm())

    return {
        "tokens": int(tokens.shape[1]),
        "layers": model.cfg.n_layers,
        "plain_s": plain,
        "resid_pre_s": layers,
        "z_s": heads,
        "resid_pre_ratio": layers / plain,
        "z_ratio": heads / plain,
        "plain_peak": mem_plain,
        "resid_pre_peak": mem_layers,
        "freeze_norm_change": change(["norm_scale"]),
        "freeze_pattern_change": change(["attn_pattern"]),
        "freeze_both_change": change(["norm_scale", "attn_pattern"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path("reports/bench_layers"))
    args = ap.parse_args()
    threads = torch.get_num_threads()
    out: dict = {"machine": f"{platform.machine()}, {threads} threads, torch {torch.__version__}"}
    smol = js.load_default_model()
    out["smollm2"] = measure(
        smol, smol.to_tokens(BIAS), smol.to_single_token(" liberal"), args.repeats
    )
    gpt2 = gpt2_small_random()
    tokens = torch.randint(0, 50257, (1, 64), generator=torch.Generator().manual_seed(0))
    out["gpt2_small_random"] = measure(gpt2, tokens, 11, args.repeats)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(out, indent=2))
    lines = [
        f"Machine: {out['machine']}",
        "",
        "| model | tokens | plain | every resid_pre | ratio | every head's z | ratio "
        "| peak (plain / resid_pre) | frozen norms | frozen patterns | both |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("smollm2", "gpt2_small_random"):
        r = out[name]
        lines.append(
            f"| {name} ({r['layers']} layers) | {r['tokens']} | {r['plain_s'] * 1e3:.0f} ms "
            f"| {r['resid_pre_s'] * 1e3:.0f} ms | {r['resid_pre_ratio']:.2f}× "
            f"| {r['z_s'] * 1e3:.0f} ms | {r['z_ratio']:.2f}× "
            f"| {fmt_bytes(r['plain_peak'])} / {fmt_bytes(r['resid_pre_peak'])} "
            f"| {r['freeze_norm_change']:.0%} | {r['freeze_pattern_change']:.0%} "
            f"| {r['freeze_both_change']:.0%} |"
        )
    lines += ["", "Frozen columns: relative change ‖s_frozen − s‖/‖s‖ of the embedding scores."]
    text = "\n".join(lines) + "\n"
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

"""Long prompts: time and peak memory of a Semantic scope on SmolLM2 at growing lengths.

    python benchmarks/bench_long.py [--lengths 512 1024 2048] [--checkpoint auto|on|off]
                                    [--layers N] [--check-equal 512] [--out reports/bench_long]

The Bridge runs eager attention, which keeps ``heads × pos²`` values per layer for the
backward pass (SmolLM2 at 8k tokens: ~140 GB over its 30 layers). With block
checkpointing (``checkpoint=True``, automatic above ~1 GiB of patterns) only one block's
attention is alive at a time, so the peak no longer grows with the depth; ``--layers N``
keeps the first N blocks of SmolLM2 (same width and heads) to measure that per-block peak
at lengths whose full-depth run would take too long on two cores. Each length runs in a
fresh process, and is skipped when a conservative estimate of its peak exceeds the memory
available now.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

import jacobian_scopes as js
from common import fmt_bytes, peak_rss_delta
from jacobian_scopes.adapter import ModelAdapter
from jacobian_scopes.engine import attention_bytes
from jacobian_scopes.eval.passages import LAMBADA_200


def smollm(layers: int | None):
    if layers is None:
        return js.load_default_model()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from jacobian_scopes.default_model import HF_NAME, bridge_from_hf, default_checkpoint

    path = default_checkpoint()
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    hf.model.layers = hf.model.layers[:layers]
    hf.config.num_hidden_layers = layers
    return bridge_from_hf(HF_NAME, hf, AutoTokenizer.from_pretrained(path))


def available_bytes() -> int:
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    return info["MemAvailable"]


def estimate(adapter: ModelAdapter, n: int, checkpoint: bool) -> int:
    """A deliberately high guess of the peak: all patterns (plain), or one block's
    attention intermediates (scores, softmax, their gradients: ~5 copies; 3.7 measured) plus the
    saved block inputs (checkpointed); the logits over the vocabulary in both cases."""
    per_layer = attention_bytes(adapter, (1, n)) // adapter.n_layers // 2  # one copy
    logits = 2 * n * adapter.d_vocab * 4  # the logits at every position, and a softmax
    if not checkpoint:
        return int(1.5 * attention_bytes(adapter, (1, n))) + logits + (1 << 30)
    saved = 4 * adapter.n_layers * n * adapter.d_model * 4  # the blocks' inputs, and more
    return 5 * per_layer + saved + logits + (1 << 30)


def prompt_tokens(model, n: int) -> torch.Tensor:
    """Real text (LAMBADA passages, repeated) cut to exactly n tokens, BOS first."""
    data = LAMBADA_200
    texts = [d["text"] for d in json.loads(data.read_text())]
    ids = model.to_tokens(" ".join(texts), truncate=False)[0]
    while ids.numel() < n:
        ids = torch.cat([ids, ids[1:]])
    return ids[:n]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--checkpoint", choices=("auto", "on", "off"), default="auto")
    ap.add_argument("--layers", type=int, default=None, help="keep the first N blocks only")
    ap.add_argument(
        "--check-equal",
        type=int,
        default=0,
        metavar="N",
        help="first check that checkpointing gives the plain scores at N tokens",
    )
    ap.add_argument("--out", type=Path, default=Path("reports/bench_long"))
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.layers, args.child, args.checkpoint)))
        return
    out: dict = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__} (shared machine)",
        "layers": args.layers or "all",
        "rows": [],
    }
    if args.check_equal:
        model = smollm(args.layers)
        target = model.to_single_token(" the")
        toks = prompt_tokens(model, args.check_equal)
        plain = js.semantic_scope(model, toks, target, checkpoint=False).scores
        ckpt = js.semantic_scope(model, toks, target, checkpoint=True).scores
        gap = float((plain - ckpt).abs().max() / plain.abs().max())
        out["check_equal"] = {"tokens": args.check_equal, "max_rel_gap": gap}
        print(f"checkpointed vs plain at {args.check_equal} tokens: max rel. gap {gap:.2e}")
        del model
    for n in args.lengths:
        # One process per length: memory freed by an earlier run but kept by the allocator
        # would hide part of the next run's growth.
        cmd = [sys.executable, __file__, "--child", str(n), "--checkpoint", args.checkpoint]
        if args.layers:
            cmd += ["--layers", str(args.layers)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        out["rows"].append(row)
        if row.get("skipped"):
            print(f"{n} tokens: skipped (estimated peak {fmt_bytes(row['estimate'])} > available)")
            continue
        print(
            f"{n} tokens: {row['seconds']:.1f} s, peak +{fmt_bytes(row['peak'])} "
            f"(checkpoint {row['checkpoint']}; all patterns would be "
            f"{fmt_bytes(row['attention_patterns'])})",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    suffix = f"_{args.layers}layers" if args.layers else ""
    args.out.with_name(args.out.name + suffix).with_suffix(".json").write_text(
        json.dumps(out, indent=2)
    )


def measure(layers: int | None, n: int, checkpoint: str) -> dict:
    """One length, in a fresh process: time and peak resident-memory growth of the call."""
    model = smollm(layers)
    adapter = ModelAdapter(model)
    target = model.to_single_token(" the")
    flag = {"auto": None, "on": True, "off": False}[checkpoint]
    used = attention_bytes(adapter, (1, n)) > js.engine.CHECKPOINT_ABOVE_BYTES
    used = used if flag is None else flag
    guess = estimate(adapter, n, used)
    if guess > available_bytes() - (2 << 30):
        return {"tokens": n, "skipped": True, "estimate": guess}
    toks = prompt_tokens(model, n)
    start = time.perf_counter()
    peak, r = peak_rss_delta(lambda: js.semantic_scope(model, toks, target, checkpoint=flag))
    return {
        "tokens": n,
        "checkpoint": used,
        "seconds": time.perf_counter() - start,
        "peak": peak,
        "estimate": guess,
        "attention_patterns": attention_bytes(adapter, (1, n)),
        "finite": bool(torch.isfinite(r.scores).all()),
    }


if __name__ == "__main__":
    main()

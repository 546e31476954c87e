"""Long prompts: time and peak memory of a Semantic scope on SmolLM2 at growing lengths.

    python benchmarks/bench_long.py [--lengths 512 1024 2048] [--checkpoint auto|on|off]
                                    [--attention auto|eager|sdpa] [--floor]
                                    [--layers N] [--check-equal 512] [--out reports/bench_long]

By default (``--attention auto``) the Bridge's attention runs on PyTorch's SDPA, which
keeps no attention pattern: memory grows linearly with the prompt length, and the fewest
blocks are checkpointed that keep the other activations within ~3 GiB (SmolLM2: none up to
~2.5k tokens, 12 of 30 at 4k, 21 at 8k). ``--attention eager`` measures the eager path,
which keeps ``heads × pos²`` values per layer for the backward pass (SmolLM2 at 8k tokens:
~140 GB over its 30 layers); checkpointed blocks (enough to keep ~1 GiB of patterns)
hold one block's attention at a time. ``--floor`` also measures the floor at each length:
Hugging Face SmolLM2 with SDPA, forward to the final hidden state and backward to the input
embeddings only, parameters frozen. ``--layers N`` keeps the first N blocks of SmolLM2 (same width
and heads) to measure per-block peaks at lengths whose full-depth run would take too long
on two cores. Each measurement runs in a fresh process (memory kept by the allocator
from an earlier run would hide part of the next one's growth), and is skipped when a
conservative estimate of its peak exceeds the memory available now.
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
from jacobian_scopes.attention import attention_path
from jacobian_scopes.checkpointing import activation_bytes, attention_bytes, blocks_to_checkpoint
from jacobian_scopes.eval.passages import LAMBADA_200


def hf_smollm(layers: int | None, attn_implementation: str = "eager"):
    from transformers import AutoModelForCausalLM

    from jacobian_scopes.default_model import default_checkpoint

    hf = AutoModelForCausalLM.from_pretrained(
        default_checkpoint(), dtype=torch.float32, attn_implementation=attn_implementation
    ).eval()
    if layers is not None:
        hf.model.layers = hf.model.layers[:layers]
        hf.config.num_hidden_layers = layers
    return hf


def smollm(layers: int | None):
    if layers is None:
        return js.load_default_model()
    from transformers import AutoTokenizer

    from jacobian_scopes.default_model import HF_NAME, bridge_from_hf, default_checkpoint

    tok = AutoTokenizer.from_pretrained(default_checkpoint())
    return bridge_from_hf(HF_NAME, hf_smollm(layers), tok)


def available_bytes() -> int:
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    return info["MemAvailable"]


def estimate(adapter: ModelAdapter, n: int, blocks: int, path: str = "eager") -> int:
    """A deliberately high guess of the peak with the first ``blocks`` blocks checkpointed:
    the patterns (eager) and other activations of the blocks that are not, one block's
    attention intermediates (scores, softmax, their gradients: ~5 copies; 3.7 measured) and
    the saved block inputs (if any is); the logits over the vocabulary in every case."""
    logits = 2 * n * adapter.d_vocab * 4  # the logits at every position, and a softmax
    saved = 4 * adapter.n_layers * n * adapter.d_model * 4 if blocks else 0  # inputs, and more
    per_layer = attention_bytes(adapter, (1, n)) // adapter.n_layers // 2  # one copy
    one_block = activation_bytes(adapter, (1, n)) // adapter.n_layers
    kept = (adapter.n_layers - blocks) * one_block + (2 * one_block if blocks else 0)
    if path == "sdpa":
        return int(1.5 * (kept + saved)) + logits + (1 << 30)
    patterns = 3 * (adapter.n_layers - blocks) * per_layer + (5 * per_layer if blocks else 0)
    return patterns + kept + saved + logits + (1 << 30)


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
    ap.add_argument("--attention", choices=("auto", "eager", "sdpa"), default="auto")
    ap.add_argument("--floor", action="store_true", help="also measure the floor (HF, SDPA)")
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
    ap.add_argument("--child-floor", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        if args.child_floor:
            print(json.dumps(measure_floor(args.layers, args.child)))
        else:
            print(json.dumps(measure(args.layers, args.child, args.checkpoint, args.attention)))
        return
    out: dict = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__} (shared machine)",
        "layers": args.layers or "all",
        "attention": args.attention,
        "rows": [],
        "floor": [],
    }
    if args.check_equal:
        model = smollm(args.layers)
        target = model.to_single_token(" the")
        toks = prompt_tokens(model, args.check_equal)
        mode = args.attention
        plain = js.semantic_scope(model, toks, target, checkpoint=False, attention=mode).scores
        ckpt = js.semantic_scope(model, toks, target, checkpoint=True, attention=mode).scores
        gap = float((plain - ckpt).abs().max() / plain.abs().max())
        out["check_equal"] = {"tokens": args.check_equal, "max_rel_gap": gap}
        print(f"checkpointed vs plain at {args.check_equal} tokens: max rel. gap {gap:.2e}")
        del model
    for n in args.lengths:
        # One process per measurement: memory freed by an earlier run but kept by the
        # allocator would hide part of the next run's growth.
        cmd = [sys.executable, __file__, "--child", str(n), "--checkpoint", args.checkpoint]
        cmd += ["--attention", args.attention]
        if args.layers:
            cmd += ["--layers", str(args.layers)]
        floor = None
        if args.floor:
            floor = child([*cmd, "--child-floor"])
            out["floor"].append(floor)
            if floor.get("skipped"):
                print(f"{n} tokens, floor: skipped (estimated {fmt_bytes(floor['estimate'])})")
                floor = None
            else:
                print(
                    f"{n} tokens, floor: {floor['seconds']:.1f} s, "
                    f"peak +{fmt_bytes(floor['peak'])}",
                    flush=True,
                )
        row = child(cmd)
        out["rows"].append(row)
        if row.get("skipped"):
            print(f"{n} tokens: skipped (estimated peak {fmt_bytes(row['estimate'])} > available)")
            continue
        ratio = ""
        if floor is not None:
            ratio = (
                f"; {row['seconds'] / floor['seconds']:.2f}x the floor's time, "
                f"{row['peak'] / max(1, floor['peak']):.2f}x its memory"
            )
        print(
            f"{n} tokens: {row['seconds']:.1f} s, peak +{fmt_bytes(row['peak'])} "
            f"({row['attention']} attention, {row['checkpointed_blocks']} of {row['blocks']} "
            f"blocks checkpointed{ratio})",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    suffix = f"_{args.layers}layers" if args.layers else ""
    args.out.with_name(args.out.name + suffix).with_suffix(".json").write_text(
        json.dumps(out, indent=2)
    )


def child(cmd: list[str]) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(layers: int | None, n: int, checkpoint: str, attention: str = "auto") -> dict:
    """One length, in a fresh process: time and peak resident-memory growth of the call."""
    model = smollm(layers)
    adapter = ModelAdapter(model)
    target = model.to_single_token(" the")
    flag = {"auto": None, "on": True, "off": False}[checkpoint]
    path = attention_path(adapter, [], attention)  # type: ignore[arg-type]
    if flag is None:
        used = blocks_to_checkpoint(adapter, (1, n), path)
    else:
        used = adapter.n_layers if flag else 0
    guess = estimate(adapter, n, used, path)
    if guess > available_bytes() - (2 << 30):
        return {"tokens": n, "skipped": True, "estimate": guess}
    toks = prompt_tokens(model, n)
    start = time.perf_counter()
    peak, r = peak_rss_delta(
        lambda: js.semantic_scope(model, toks, target, checkpoint=flag, attention=attention)
    )
    return {
        "tokens": n,
        "attention": path,
        "checkpointed_blocks": used,
        "blocks": adapter.n_layers,
        "seconds": time.perf_counter() - start,
        "peak": peak,
        "estimate": guess,
        "attention_patterns": attention_bytes(adapter, (1, n)),
        "finite": bool(torch.isfinite(r.scores).all()),
    }


def measure_floor(layers: int | None, n: int) -> dict:
    """The floor at one length, in a fresh process: Hugging Face SmolLM2 with SDPA, forward
    to the final hidden state, backward to the input embeddings only, parameters frozen."""
    hf = hf_smollm(layers, "sdpa")
    for p in hf.parameters():
        p.requires_grad_(False)
    model = smollm(layers)  # the tokenizer and the prompt, exactly as the scope's
    adapter = ModelAdapter(model)
    toks = prompt_tokens(model, n)[None]
    w = hf.lm_head.weight[model.to_single_token(" the")]
    del model
    guess = int(1.5 * activation_bytes(adapter, (1, n))) + (1 << 30)
    if guess > available_bytes() - (2 << 30):
        return {"tokens": n, "skipped": True, "estimate": guess}

    def floor() -> torch.Tensor:
        emb = hf.model.embed_tokens(toks).detach().requires_grad_(True)
        y = hf.model(inputs_embeds=emb, use_cache=False).last_hidden_state
        (g,) = torch.autograd.grad(y[0, -1] @ w, emb)
        return g

    start = time.perf_counter()
    peak, g = peak_rss_delta(floor)
    return {
        "tokens": n,
        "seconds": time.perf_counter() - start,
        "peak": peak,
        "finite": bool(torch.isfinite(g).all()),
    }


if __name__ == "__main__":
    main()

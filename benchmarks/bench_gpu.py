"""GPU figures: every scope against the floor on Llama-3-shaped random models.

    python benchmarks/bench_gpu.py --json out.json       # on a CUDA GPU, minutes
    python benchmarks/bench_gpu.py --smoke               # tiny shapes on CPU, seconds
    python benchmarks/bench_gpu.py --check               # GPU scores == CPU scores, seconds

Models are random-init ``LlamaForCausalLM`` with the shapes of Llama-3.2-1B (float32) and
Llama-3.1-8B (bfloat16), wrapped as a TransformerBridge offline (no Hub). For each model
and length T (128, 1024, 4096) it times, as the median of a few repeats after a warm-up:

* the floor: the Hugging Face model with SDPA attention (a copy of the one the Bridge
  wraps, which the Bridge turns to its own eager attention), forward to the final hidden
  state and backward to the input embeddings only, parameters frozen; the same with the
  key/value heads repeated before SDPA, and with SDPA's math kernel forbidden (an error
  there says that transformers' own call can only run the math kernel: see ``--kernels``);
* the Bridge's own floor: the same forward + input-gradient backward through the Bridge
  (eager attention), by hand;
* Semantic, Temperature, Fisher principal, Fisher default, Semantic with all-layer sources
  (every ``resid_pre``), with eager attention, without checkpointing, and through the Bridge
  (a hook that changes nothing keeps a call off the direct path, jacobian_scopes.direct),
  and each ``--fisher method:rank:n_probes[:solver]`` variant;
* at T = 128 only: a batch of 32 prompts (Semantic) and a 32-token generation attribution.

Each row gives seconds, the ratio to both floors, and peak GPU memory above the weights
(``--smoke``: peak resident memory is not measured, the figures only show that every path
runs). Out of memory, or any other error, is reported in its row and the run goes on;
``--json`` is rewritten after every length, so a run cut short keeps what it measured.

``--check`` runs first what a GPU could get wrong: on a small random Llama (float32), every
scope's scores on the GPU against the same model's scores on the CPU, and on the GPU the
SDPA path against eager attention and against activation checkpointing.

``--solver gram|iterative`` sets the eigen-solver of every Fisher row that names none
(``jacobian_scopes.fisher.DEFAULT_SOLVER``); ``--plans`` adds a table of the plan alone
(no model: the unembedding and a next-token distribution), both solvers, for each Fisher
setting. Prints Markdown tables; ``--json`` saves the rows.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from common import fisher_solver, fisher_variant, median_time

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
    the Bridge's own forward computes attention in its own (eager) code either way. The
    smoke shape is drawn on the CPU, so that it has the same weights on every device; the
    large ones are drawn where they run (an 8B model drawn on the CPU takes minutes)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import helpers  # the tests' offline word-level tokenizer
    from jacobian_scopes.default_model import bridge_from_hf

    spec = dict(SHAPES[shape])
    dtype = spec.pop("dtype")
    cfg = LlamaConfig(**spec, max_position_embeddings=8192, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("cpu" if shape == "smoke" else device):
        hf = LlamaForCausalLM(cfg).to(dtype).eval()
        # unit norm gains make ‖y‖ constant (Temperature undefined): perturb them
        for name, p in hf.named_parameters():
            if name.endswith("norm.weight"):
                p.data.uniform_(0.5, 1.5)
    hf = hf.to(device)
    for p in hf.parameters():
        p.requires_grad_(False)
    # The Bridge takes over the model it wraps (its attention modules run eager code), so
    # the floor runs a copy that stays plain Hugging Face.
    floor = copy.deepcopy(hf)
    floor.config._attn_implementation = "sdpa"
    bridge = bridge_from_hf(
        "meta-llama/Llama-3.2-1B",
        hf,
        helpers.make_tokenizer(cfg.vocab_size),
        device=device,
        dtype=dtype,
    )
    return floor, bridge


#: The floor's own attention: Hugging Face's SDPA with the key/value heads repeated first.
#: With grouped-query attention and no mask, transformers asks SDPA for ``enable_gqa=True``,
#: which the memory-efficient kernel does not take (see ``--kernels``); repeating the heads,
#: as transformers does whenever a mask is given, leaves SDPA every kernel.
KV_REPEATED = "sdpa_kv_repeated"


def register_kv_repeated() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    from transformers.models.llama.modeling_llama import repeat_kv

    def kv_repeated(
        module: Any,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        dropout: float = 0.0,
        scaling: float | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        n_rep = query.shape[1] // key.shape[1]
        out = torch.nn.functional.scaled_dot_product_attention(
            query,
            repeat_kv(key, n_rep),
            repeat_kv(value, n_rep),
            attn_mask=attention_mask,
            is_causal=attention_mask is None and query.shape[2] > 1,
            scale=scaling,
        )
        return out.transpose(1, 2).contiguous(), None

    AttentionInterface.register(KV_REPEATED, kv_repeated)
    AttentionMaskInterface.register(KV_REPEATED, sdpa_mask)


@contextmanager
def attention_implementation(hf: Any, name: str) -> Iterator[None]:
    old = hf.config._attn_implementation
    hf.config._attn_implementation = name
    try:
        yield
    finally:
        hf.config._attn_implementation = old


def kernels(device: str, n: int = 4096) -> str:
    """Markdown: which SDPA kernels take a causal grouped-query attention (32 query heads,
    8 key/value heads, head size 128, ``n`` tokens) forward and backward, with
    ``enable_gqa=True`` (what transformers asks for when no mask is given) or with the
    key/value heads repeated first, and the peak memory of each."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kinds = ["FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"]
    backends: list[tuple[str, Any]] = [("default", None)] + [
        (k.split("_")[0].lower(), getattr(SDPBackend, k)) for k in kinds
    ]
    lines = [
        "| dtype | keys/values | " + " | ".join(name for name, _ in backends) + " |",
        "|---|---|" + "---|" * len(backends),
    ]
    gen = torch.Generator(device=device).manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        for gqa in (True, False):
            cells = []
            for _, backend in backends:
                q = torch.randn(1, 32, n, 128, generator=gen, device=device, dtype=dtype)
                q.requires_grad_(True)
                kv = [
                    torch.randn(1, 8, n, 128, generator=gen, device=device, dtype=dtype)
                    for _ in range(2)
                ]
                if not gqa:
                    kv = [x.repeat_interleave(4, dim=1) for x in kv]

                def once(
                    q: torch.Tensor = q,
                    kv: list[torch.Tensor] = kv,
                    b: Any = backend,
                    g: bool = gqa,
                ) -> None:
                    with sdpa_kernel([b]) if b is not None else nullcontext():
                        out = torch.nn.functional.scaled_dot_product_attention(
                            q, kv[0], kv[1], is_causal=True, enable_gqa=g
                        )
                        torch.autograd.grad(out.sum(), q)

                s, peak, note = timed(once, device, 3)
                if s is None:
                    cells.append(
                        "no"
                        if "No available kernel" in note or "No viable backend" in note
                        else note[:60]
                    )
                else:
                    cells.append(f"{s * 1e3:.1f} ms, {peak:.2f} GiB" if peak is not None else "ok")
            label = "enable_gqa=True" if gqa else "repeated"
            lines.append(f"| {str(dtype).split('.')[-1]} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
        seconds = median_time(fn, repeats, sync=lambda: sync(device))
        peak = None
        if device.startswith("cuda"):
            peak = (torch.cuda.max_memory_allocated() - base) / 2**30
        return seconds, peak, ""
    except torch.OutOfMemoryError:
        return None, None, "out of memory"
    except Exception as err:  # one broken path must not cost the rest of a GPU lease
        traceback.print_exc()
        return None, None, f"error: {type(err).__name__}: {str(err)[:160]}"


def run(
    shape: str,
    lengths: list[int],
    device: str,
    repeats: int,
    args: argparse.Namespace,
    out: dict[str, list[dict[str, Any]]],
) -> None:
    """Append one model's scope rows and plan rows to ``out``, saving after each length."""
    hf, bridge = build(shape, device)
    with fisher_solver(args.solver):
        for n in lengths:
            out["scopes"].append(
                one_length(hf, bridge, shape, n, n == min(lengths), device, repeats, args.fisher)
            )
            save(args.json, out)
    if args.plans:
        out["plans"] += plan_rows(bridge, shape, device, repeats, args.fisher)
        save(args.json, out)
    del hf, bridge
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def save(path: Path | None, out: dict[str, list[dict[str, Any]]]) -> None:
    if path is not None:
        path.write_text(json.dumps(out, indent=2))


def check(device: str) -> str:
    """Markdown: each scope's largest score difference, relative to its largest score, of
    the smoke model on ``device`` against the same model on the CPU, and on ``device`` of
    the SDPA path against eager attention and against activation checkpointing."""
    import jacobian_scopes as js

    _, cpu = build("smoke", "cpu")
    _, dev = build("smoke", device)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(4, int(SHAPES["smoke"]["vocab_size"]), (1, 48), generator=gen)
    target = int(tokens[0, -1])
    calls: dict[str, Any] = {
        "Semantic": lambda m, **kw: js.semantic_scope(m, tokens, target, **kw),
        "Temperature": lambda m, **kw: js.temperature_scope(m, tokens, **kw),
        "Fisher principal": lambda m, **kw: js.fisher_scope(m, tokens, method="principal", **kw),
        "Fisher default": lambda m, **kw: js.fisher_scope(m, tokens, **kw),
        "Fisher exact": lambda m, **kw: js.fisher_scope(m, tokens, method="exact", **kw),
        "Semantic, all resid_pre": lambda m, **kw: js.semantic_scope(
            m, tokens, target, sources="resid_pre", **kw
        ),
    }

    def scores(result: Any) -> torch.Tensor:
        return result.scores.detach().float().cpu()

    def gap(a: torch.Tensor, b: torch.Tensor) -> str:
        # a generation's scores are NaN where a token comes after the one explained
        if not a.isnan().equal(b.isnan()):
            return "NaN in different places"
        a, b = a.nan_to_num(0.0), b.nan_to_num(0.0)
        return f"{float((a - b).abs().max() / b.abs().max()):.1e}"

    lines = [
        f"| scope | {device} vs CPU | SDPA vs eager ({device}) | plain vs checkpointed "
        f"({device}) |",
        "|---|---|---|---|",
    ]
    for name, call in calls.items():
        try:
            here = scores(call(dev))
            cells = [
                gap(here, scores(call(cpu))),
                gap(here, scores(call(dev, attention="eager"))),
                gap(here, scores(call(dev, checkpoint=True))),
            ]
        except Exception as err:
            traceback.print_exc()
            cells = [f"error: {type(err).__name__}: {str(err)[:120]}", "", ""]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    gen_here = js.generate_scope(dev, tokens[0, :16], 8, stop_at_eos=False)
    gen_cpu = js.generate_scope(cpu, tokens[0, :16], 8, stop_at_eos=False)
    same = gen_here.tokens.cpu().equal(gen_cpu.tokens.cpu())
    shown = gap(scores(gen_here), scores(gen_cpu)) if same else "different tokens"
    lines.append(f"| generation, 8 tokens | {shown} | | |")
    return "\n".join(lines)


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

    def floor_kv_repeated() -> None:
        with attention_implementation(hf, KV_REPEATED):
            floor_sdpa()

    def floor_no_math() -> None:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        kinds = [
            SDPBackend.FLASH_ATTENTION,
            SDPBackend.EFFICIENT_ATTENTION,
            SDPBackend.CUDNN_ATTENTION,
        ]
        with sdpa_kernel(kinds):
            floor_sdpa()

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
        "floor (HF SDPA, KV repeated)": floor_kv_repeated,
        "floor (HF SDPA, no math kernel)": floor_no_math,
        "floor (Bridge, eager)": floor_bridge,
        "Semantic": lambda: js.semantic_scope(bridge, tokens, target),
        "Temperature": lambda: js.temperature_scope(bridge, tokens),
        "Fisher principal": lambda: js.fisher_scope(bridge, tokens, method="principal"),
        "Fisher default": lambda: js.fisher_scope(bridge, tokens),
        "Semantic, all resid_pre": lambda: js.semantic_scope(
            bridge, tokens, target, sources="resid_pre"
        ),
        "Semantic, eager attention": lambda: js.semantic_scope(
            bridge, tokens, target, attention="eager"
        ),
        "Semantic, no checkpointing": lambda: js.semantic_scope(
            bridge, tokens, target, checkpoint=False
        ),
        # A hook that changes nothing keeps the call on the Bridge (jacobian_scopes.direct):
        # what the direct path saves.
        "Semantic, through the Bridge": lambda: js.semantic_scope(
            bridge, tokens, target, fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: x)]
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


FLOORS = {
    "floor (HF SDPA)": "× HF SDPA",
    "floor (HF SDPA, KV repeated)": "× KV repeated",
    "floor (Bridge, eager)": "× Bridge",
}


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | T | work | time | " + " | ".join(FLOORS.values()) + " | peak GPU |",
        "|---|---|---|---|" + "---|" * len(FLOORS) + "---|",
    ]
    for r in rows:
        f = r["figures"]
        for name, v in f.items():
            s = v["s"]
            head = f"| {r['model']} | {r['tokens']} | {name} |"
            if s is None:
                lines.append(f"{head} {v['note']} |" + " |" * len(FLOORS) + " |")
                continue
            ratios = []
            for floor in FLOORS:
                base = f.get(floor, {}).get("s")
                ratios.append(f"{s / base:.2f}×" if base else "")
            peak = "" if v["peak_gib"] is None else f"{v['peak_gib']:.2f} GiB"
            lines.append(f"{head} {s:.3f} s | " + " | ".join(ratios) + f" | {peak} |")
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
    ap.add_argument("--check", action="store_true", help="GPU scores against CPU scores")
    ap.add_argument("--kernels", action="store_true", help="which SDPA kernels take GQA")
    args = ap.parse_args(argv)
    if args.check:
        if not torch.cuda.is_available():
            sys.exit("no CUDA GPU to check")
        text = check("cuda")
        print(text)
        return text
    if args.kernels:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        text = kernels(device, 64 if args.smoke else 4096)
        print(text)
        return text
    register_kv_repeated()
    if args.smoke:
        models, lengths, device, repeats = ["smoke"], [8, 16], "cpu", 1
    else:
        if not torch.cuda.is_available():
            sys.exit("no CUDA GPU: run with --smoke for the CPU check")
        models, lengths, device, repeats = args.models, args.lengths, "cuda", args.repeats
    out: dict[str, list[dict[str, Any]]] = {"scopes": [], "plans": []}
    for shape in models:
        run(shape, lengths, device, repeats, args, out)
    text = table(out["scopes"])
    if out["plans"]:
        text += "\n\n" + plan_table(out["plans"])
    print(text)
    return text


if __name__ == "__main__":
    main()

"""Activation patching, attribution patching and the scope's drill-down on clean/corrupt pairs.

    OMP_NUM_THREADS=1 python benchmarks/bench_patching.py [--out reports/bench_patching]

On the default model (SmolLM2-135M): the time of activation patching (TransformerLens'
``get_act_patch_*`` functions and this library's batched runs; resid_pre and z), of
attribution patching and of one Semantic scope with all-layer sources; and, for every pair,
the agreement (Spearman ρ, top-10 overlap) with activation patching of each map under each
display normalisation. Each timing is a single run (patching runs take tens of seconds).
TransformerLens' per-head patching makes one forward pass per (layer, position, head); it is
timed on the first ``--tl-z-layers`` layers and its per-cell time is scaled to all layers
(marked "extrapolated").
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import pandas as pd
import torch

import jacobian_scopes as js
from jacobian_scopes import patching

PAIRS = [
    # (label, clean, corrupt, target, foil)
    (
        "IOI (names swapped)",
        "When Mary and John went to the store, John gave a drink to",
        "When John and Mary went to the store, Mary gave a drink to",
        " Mary",
        " John",
    ),
    (
        "names 2",
        "After Alice and Bob finished lunch, Bob handed the bill to",
        "After Bob and Alice finished lunch, Alice handed the bill to",
        " Alice",
        " Bob",
    ),
    (
        "place: landmark",
        "The Eiffel Tower is located in the city of",
        "The Colosseum is located in the city of",
        " Paris",
        " Rome",
    ),
    (
        "place: capital",
        "Berlin is the capital of",
        "Madrid is the capital of",
        " Germany",
        " Spain",
    ),
    ("numbers: words", "one, two, three, four,", "two, three, four, five,", " five", " six"),
    (
        "numbers: weekdays",
        "Monday, Tuesday, Wednesday,",
        "Tuesday, Wednesday, Thursday,",
        " Thursday",
        " Friday",
    ),
]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="reports/bench_patching")
    ap.add_argument("--tl-z-layers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="resid_pre only: no z maps, no TransformerLens reference timings",
    )
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = js.load_default_model()
    timings: list[dict] = []
    tables: list[pd.DataFrame] = []
    bs = args.batch_size

    for i, pair in enumerate(PAIRS):
        row, tabs = measure_pair(model, pair, i == 0 and not args.quick, bs, args.tl_z_layers)
        tables.extend(tabs)
        timings.append(row)
        print(row, flush=True)

    table = pd.concat(tables, ignore_index=True)
    summary = (
        table[~table["pair"].str.endswith("[z]")]
        .groupby(["map", "normalize"], sort=False)[["spearman", "top_10"]]
        .mean()
        .reset_index()
    )
    times = pd.DataFrame(timings)
    info = {
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }
    out.with_suffix(".json").write_text(
        json.dumps(
            {
                "info": info,
                "timings_s": timings,
                "agreement": table.to_dict("records"),
                "agreement_mean": summary.to_dict("records"),
            },
            indent=1,
        )
    )
    md = [
        f"# Patching benchmark ({info})",
        "",
        "## Time (s, one run each)",
        markdown(times, ".2f"),
        "",
        "## Agreement with activation patching, per pair",
        markdown(table, ".3f"),
        "",
        "## Mean over the resid_pre pairs",
        markdown(summary, ".3f"),
    ]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def measure_pair(model, pair, slow: bool, bs: int, tl_z_layers: int):
    label, clean, corrupt, target, foil = pair
    tables = []
    n = len(model.to_str_tokens(clean))
    kw = dict(target=target, foil=foil)
    t_cmp, c = timed(lambda: patching.compare(model, clean, corrupt, target, foil, batch_size=bs))
    tab = c.table.copy()
    tab.insert(0, "pair", label)
    tables.append(tab)
    row = {"pair": label, "tokens": n, "compare (resid_pre)": t_cmp}
    row["ours resid_pre"], ours = timed(
        lambda: patching.activation_patching(model, clean, corrupt, **kw, batch_size=bs)
    )
    row["attribution resid_pre"], _ = timed(
        lambda: patching.attribution_patching(model, clean, corrupt, **kw)
    )
    row["scope resid_pre"], _ = timed(
        lambda: js.semantic_scope(model, clean, target, foil=foil, sources="resid_pre")
    )
    if slow:  # the slow ones, on the IOI pair only
        row["TL resid_pre"], tl = timed(
            lambda: patching.activation_patching(
                model, clean, corrupt, **kw, method="transformer_lens"
            )
        )
        row["max |TL − ours| resid_pre"] = float((tl.values - ours.values).abs().max())
        row["ours z"], ours_z = timed(
            lambda: patching.activation_patching(
                model, clean, corrupt, **kw, sources="z", batch_size=bs
            )
        )
        row["attribution z"], _ = timed(
            lambda: patching.attribution_patching(model, clean, corrupt, **kw, sources="z")
        )
        row["scope z"], _ = timed(
            lambda: js.semantic_scope(model, clean, target, foil=foil, sources="z")
        )
        row["TL z (extrapolated)"] = _tl_z(model, clean, corrupt, ours_z, tl_z_layers)
        zc = patching.compare(model, clean, corrupt, target, foil, sources="z", batch_size=bs)
        ztab = zc.table.copy()
        ztab.insert(0, "pair", label + " [z]")
        tables.append(ztab)
    return row, tables


def markdown(df: pd.DataFrame, fmt: str) -> str:
    def cell(v):
        return format(v, fmt) if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _tl_z(model, clean, corrupt, ours, n_layers: int) -> float:
    """TransformerLens' per-head patching on the first layers, scaled to all layers; checked
    against our values on those layers."""
    from transformer_lens.patching import get_act_patch_attn_head_out_by_pos, make_df_from_ranges

    from jacobian_scopes.guard import frozen

    ct, xt = model.to_tokens(clean), model.to_tokens(corrupt)
    acts = {}
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(n_layers)]

    def keep(name):
        def fn(x, hook):
            acts[name] = x.detach().clone()

        return fn

    with frozen(model), torch.no_grad(), model.hooks(fwd_hooks=[(n, keep(n)) for n in names]):
        model(ct)
    metric = patching.logit_diff_metric(
        model.to_single_token(" Mary"),
        model.to_single_token(" John"),
        -1,
        ours.raw_clean,
        ours.raw_corrupt,
    )
    n_pos, n_heads = ct.shape[1], model.cfg.n_heads
    index = make_df_from_ranges([n_layers, n_pos, n_heads], ["layer", "pos", "head"])
    with frozen(model), torch.no_grad():
        start = time.perf_counter()
        flat = get_act_patch_attn_head_out_by_pos(
            model, xt, acts, metric, index_axis_names=None, index_df=index
        )
        elapsed = time.perf_counter() - start
    tl = flat.reshape(n_layers, n_pos, n_heads).permute(0, 2, 1)
    err = float((tl - ours.values[:n_layers]).abs().max())
    print(f"TL z on {n_layers} layers: {elapsed:.1f} s, max |TL − ours| = {err:.2e}", flush=True)
    return elapsed * model.cfg.n_layers / n_layers


if __name__ == "__main__":
    main()

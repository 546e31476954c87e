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

The ``z`` section (per-head output, ``attn.hook_z``, on the first pair) gives the agreement of
attribution patching and of the scope's maps with activation patching at ``z`` (the
unnormalised rows of ``compare``'s table, from the timed runs), and the time of each way to
get a per-head map, each run once: ours (batched, one cell per (layer, head, position)),
TransformerLens' ``get_act_patch_attn_head_out_by_pos`` (the same cells, one forward each)
and ``get_act_patch_attn_head_out_all_pos`` (one cell per (layer, head), each head patched at
every position at once: fewer, coarser cells), attribution patching and the scope.

    OMP_NUM_THREADS=1 python benchmarks/bench_patching.py --z-only   # the z section alone
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
    ap.add_argument("--z-only", action="store_true", help="only the z section (first pair)")
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = js.load_default_model()
    timings: list[dict] = []
    tables: list[pd.DataFrame] = []
    bs = args.batch_size

    z_times: list[dict] = []
    z_table = None
    if not args.quick:
        z_times, z_table = measure_z(model, PAIRS[0], bs, args.tl_z_layers)
    for i, pair in enumerate([] if args.z_only else PAIRS):
        row, tabs = measure_pair(model, pair, i == 0 and not args.quick, bs)
        tables.extend(tabs)
        timings.append(row)
        print(row, flush=True)

    info = {
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }
    record: dict = {"info": info}
    md = [f"# Patching benchmark ({info})"]
    if tables:
        table = pd.concat(tables, ignore_index=True)
        summary = (
            table.groupby(["map", "normalize"], sort=False)[["spearman", "top_10"]]
            .mean()
            .reset_index()
        )
        record.update(
            timings_s=timings,
            agreement=table.to_dict("records"),
            agreement_mean=summary.to_dict("records"),
        )
        md += [
            "",
            "## Time (s, one run each)",
            markdown(pd.DataFrame(timings), ".2f"),
            "",
            "## Agreement with activation patching, per pair",
            markdown(table, ".3f"),
            "",
            "## Mean over the resid_pre pairs",
            markdown(summary, ".3f"),
        ]
    if z_table is not None:
        record.update(z_timings=z_times, z_agreement=z_table.to_dict("records"))
        md += [
            "",
            f"## z (per-head output, attn.hook_z), pair {PAIRS[0][0]!r}",
            "",
            "Agreement with activation patching at z (same cells: layer, head, position):",
            "",
            markdown(z_table, ".3f"),
            "",
            "Time (s, one run each):",
            "",
            markdown(pd.DataFrame(z_times), ".2f"),
        ]
    out.with_suffix(".json").write_text(json.dumps(record, indent=1))
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def measure_pair(model, pair, slow: bool, bs: int):
    label, clean, corrupt, target, foil = pair
    n = len(model.to_str_tokens(clean))
    kw = dict(target=target, foil=foil)
    t_cmp, c = timed(lambda: patching.compare(model, clean, corrupt, target, foil, batch_size=bs))
    tab = c.table.copy()
    tab.insert(0, "pair", label)
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
    if slow:  # TransformerLens' one forward per cell, on the first pair only
        row["TL resid_pre"], tl = timed(
            lambda: patching.activation_patching(
                model, clean, corrupt, **kw, method="transformer_lens"
            )
        )
        row["max |TL − ours| resid_pre"] = float((tl.values - ours.values).abs().max())
    return row, [tab]


def measure_z(model, pair, bs: int, tl_z_layers: int):
    """Per-head (``attn.hook_z``) patching on one pair: the time of each method, with its
    number of cells, and each map's agreement with activation patching at z (the rows of
    ``patching.compare(..., sources="z")`` without normalisations, from the same runs)."""
    label, clean, corrupt, target, foil = pair
    kw = dict(target=target, foil=foil)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    n_pos = len(model.to_str_tokens(clean))
    by_pos = n_layers * n_heads * n_pos
    rows = []
    t, ours = timed(
        lambda: patching.activation_patching(
            model, clean, corrupt, **kw, sources="z", batch_size=bs
        )
    )
    rows.append(
        {"method": f"ours, activation (batched, {bs} per pass)", "cells": by_pos, "time_s": t}
    )
    t, at = timed(lambda: patching.attribution_patching(model, clean, corrupt, **kw, sources="z"))
    rows.append({"method": "ours, attribution (1 fwd + 1 bwd)", "cells": by_pos, "time_s": t})
    t, scope = timed(lambda: js.semantic_scope(model, clean, target, foil=foil, sources="z"))
    rows.append({"method": "Semantic scope, sources='z'", "cells": by_pos, "time_s": t})
    t_by_pos, err = _tl_z(model, clean, corrupt, ours, tl_z_layers)
    rows.append(
        {
            "method": f"TL get_act_patch_attn_head_out_by_pos (extrapolated from {tl_z_layers} "
            f"layers; max abs difference from ours {err:.1e})",
            "cells": by_pos,
            "time_s": t_by_pos,
        }
    )
    t_all = _tl_z_all_pos(model, clean, corrupt, ours)
    rows.append(
        {
            "method": "TL get_act_patch_attn_head_out_all_pos (each head at all positions)",
            "cells": n_layers * n_heads,
            "time_s": t_all,
        }
    )
    for r in rows:
        print(r, flush=True)
    # The cells that can differ, as compare() takes them: not BOS, not after the position.
    keep = torch.zeros(n_pos, dtype=torch.bool)
    keep[: ours.position + 1] = True
    keep[0] = not ours.bos
    ref = ours.values[..., keep]
    maps = {
        "scope norm": (scope.scores, False),
        "scope first_order": (scope.first_order, True),
        "attribution patching": (at.values, True),
    }
    table = pd.DataFrame(
        [
            {"pair": label + " [z]", "map": name, "normalize": "none"}
            | patching.agreement(m[..., keep], ref, k=10, signed=signed)
            for name, (m, signed) in maps.items()
        ]
    ).rename(columns={"top_k": "top_10"})
    print(table, flush=True)
    return rows, table


def markdown(df: pd.DataFrame, fmt: str) -> str:
    def cell(v):
        return format(v, fmt) if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _z_cache(model, tokens, names):
    from jacobian_scopes.guard import frozen

    acts = {}

    def keep(name):
        def fn(x, hook):
            acts[name] = x.detach().clone()

        return fn

    with frozen(model), torch.no_grad(), model.hooks(fwd_hooks=[(n, keep(n)) for n in names]):
        model(tokens)
    return acts


def _metric_of(model, ours):
    return patching.logit_diff_metric(
        model.to_single_token(ours.target),
        model.to_single_token(ours.foil),
        -1,
        ours.raw_clean,
        ours.raw_corrupt,
    )


def _tl_z_all_pos(model, clean, corrupt, ours) -> float:
    """TransformerLens' per-head patching at all positions at once: one forward per head."""
    from transformer_lens.patching import get_act_patch_attn_head_out_all_pos

    from jacobian_scopes.guard import frozen

    ct, xt = model.to_tokens(clean), model.to_tokens(corrupt)
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    acts = _z_cache(model, ct, names)
    metric = _metric_of(model, ours)
    with frozen(model), torch.no_grad():
        start = time.perf_counter()
        grid = get_act_patch_attn_head_out_all_pos(model, xt, acts, metric)
        elapsed = time.perf_counter() - start
    print(f"TL z all_pos: {elapsed:.1f} s, shape {tuple(grid.shape)}", flush=True)
    return elapsed


def _tl_z(model, clean, corrupt, ours, n_layers: int) -> tuple[float, float]:
    """TransformerLens' per-head patching on the first layers, scaled to all layers; checked
    against our values on those layers."""
    from transformer_lens.patching import get_act_patch_attn_head_out_by_pos, make_df_from_ranges

    from jacobian_scopes.guard import frozen

    ct, xt = model.to_tokens(clean), model.to_tokens(corrupt)
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(n_layers)]
    acts = _z_cache(model, ct, names)
    metric = _metric_of(model, ours)
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
    return elapsed * model.cfg.n_layers / n_layers, err


if __name__ == "__main__":
    main()

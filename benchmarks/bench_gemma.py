"""Load time, peak memory and seconds per scope call of the embedded Gemma-3-270M, in one run.

    python benchmarks/bench_gemma.py [--fresh] [--repeats 3]

``--fresh`` loads through an empty temporary cache, so the load includes assembling the
GGUF file and dequantising it to float32 (the first load on a new machine); without it the
load reads the cached checkpoint. Then the Semantic, Temperature and Fisher (sketch) scopes
on a 25-token prompt, median of ``--repeats`` calls after one warm-up, and the process's
peak resident memory (what one test worker holding the model needs).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

import torch

from common import median_time

PROMPT = "The Eiffel Tower, which was built for the 1889 World's Fair, stands in the heart of"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh", action="store_true", help="load through an empty cache")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    with tempfile.TemporaryDirectory() as tmp:
        if args.fresh:
            os.environ["JACOBIAN_SCOPES_CACHE"] = tmp
        import jacobian_scopes as js

        start = time.perf_counter()
        model = js.load_default_model("gemma-3-270m")
        load = time.perf_counter() - start
        peak_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        what = "first" if args.fresh else "cached"
        print(f"{what} load: {load:.1f} s; peak RSS {peak_load:.2f} GiB")
        print(f"prompt: {model.to_tokens(PROMPT).shape[1]} tokens (BOS included)")
        calls = {
            "semantic": lambda: js.semantic_scope(model, PROMPT, " Paris"),
            "temperature": lambda: js.temperature_scope(model, PROMPT),
            "fisher (sketch)": lambda: js.fisher_scope(model, PROMPT),
        }
        for name, call in calls.items():
            print(f"{name}: {median_time(call, repeats=args.repeats):.2f} s per call")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"peak RSS of the process: {peak:.2f} GiB")


if __name__ == "__main__":
    main()

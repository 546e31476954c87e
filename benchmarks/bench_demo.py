"""The demo's wall time: first run (empty model cache: the packaged GGUF file is
dequantised) and second run (the cached float32 checkpoint).

    python benchmarks/bench_demo.py [--runs 2] [--out reports/bench_demo]

Each run is ``python -m jacobian_scopes demo`` in a fresh process with
``JACOBIAN_SCOPES_CACHE`` pointing at a new, empty directory (kept for the later runs), as on
a fresh machine whose packages are installed; the installation itself (pip) is not timed.
The demo's own breakdown (load, cases, generation) comes from its JSON report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("reports/bench_demo"))
    args = ap.parse_args()
    import jacobian_scopes as js

    work = Path(tempfile.mkdtemp(prefix="bench-demo-"))
    env = {**os.environ, "JACOBIAN_SCOPES_CACHE": str(work / "cache")}
    rows = []
    for run in range(args.runs):
        report = work / f"demo{run}.html"
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "jacobian_scopes", "demo", "--out", str(report), "--quiet"],
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-2000:])
        seconds = js.load(report.with_suffix(".json"))["seconds"]
        row = {"run": run, "cache": "empty" if run == 0 else "warm", "wall_s": wall, **seconds}
        rows.append(row)
        print(json.dumps(row), flush=True)
    import torch

    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} (shared machine)",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(out, indent=2))
    lines = [
        f"Machine: {out['machine']}",
        "",
        "| run | model cache | wall (process) | model load | case studies | generation |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['run'] + 1} | {r['cache']} | {r['wall_s']:.1f} s | {r['load']:.1f} s "
            f"| {r['cases']:.1f} s | {r['generation']:.1f} s |"
        )
    text = "\n".join(lines) + "\n"
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

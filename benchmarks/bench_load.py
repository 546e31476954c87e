"""Peak memory and time of ``load`` on hostile result files of about 60 MB, in one run.

    python benchmarks/bench_load.py [--mb 60] [--out reports/bench_load]

Each file is loaded in a fresh Python process (so that memory the allocator kept from one
case does not hide the next one's): peak resident-memory growth during ``load`` and its
wall time, as a multiple of the file size too. The cases: a flood of empty lists
(``[],`` repeated), of empty objects, a plain list of ``1,`` (and of ``1.5,``), the same
numbers as a float tensor's data, a list of ``Prediction`` objects, brackets inside
strings, and for reference a legitimate float32 tensor saved by ``save``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HEADER = '{"format":"jacobian-scopes","version":1,"content":'
PREDICTION = '{"$obj":"Prediction","fields":{"token_id":7,"token":" the","prob":0.25}},'
# Long enough per object to pass the bound on result objects per character.
LONG_PREDICTION = PREDICTION.replace(" the", " the" * 20)


def _repeat(unit: str, size: int) -> str:
    return unit * max(1, size // len(unit))


def write_cases(folder: Path, size: int) -> dict[str, Path]:
    """The hostile files, each about ``size`` bytes."""
    texts = {
        "empty lists [],": HEADER + "[" + _repeat("[],", size) + "[]]}",
        "empty objects {},": HEADER + "[" + _repeat("{},", size) + "{}]}",
        "ints 1,": HEADER + "[" + _repeat("1,", size) + "1]}",
        "floats 1.5,": HEADER + "[" + _repeat("1.5,", size) + "1.5]}",
        "predictions (73 chars each)": HEADER
        + "["
        + _repeat(PREDICTION, size)
        + PREDICTION[:-1]
        + "]}",
        "predictions (149 chars each)": HEADER
        + "["
        + _repeat(LONG_PREDICTION, size)
        + LONG_PREDICTION[:-1]
        + "]}",
        "brackets in strings": HEADER + "[" + _repeat('"[[[[{{{{",', size) + '""]}',
    }
    n = size // 2
    texts["float tensor of 1,"] = (
        HEADER + '{"$tensor":{"dtype":"float32","shape":[' + str(n + 1) + '],"data":['
        "" + "1," * n + "1]}}}"
    )
    paths = {}
    for i, (name, text) in enumerate(texts.items()):
        paths[name] = folder / f"case{i}.json"
        paths[name].write_text(text)
    import torch

    import jacobian_scopes as js

    legit = folder / "legit.json"
    js.save({"scores": torch.randn(size // 21, generator=torch.Generator().manual_seed(0))}, legit)
    paths["legit float32 tensor (save)"] = legit
    return paths


CHILD = """
import json, sys, time
sys.path.insert(0, {bench!r})
from common import peak_rss_delta
import jacobian_scopes as js
def run():
    try:
        js.load({path!r})
        return "loaded"
    except js.errors.ResultFileError as exc:
        return "refused: " + str(exc)[-90:]
from common import _rss
def high_water():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))
try:  # Linux: reset the high-water mark, so that it measures load alone
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    reset = True
except OSError:
    reset = False
before = _rss()
start = time.perf_counter()
grew, outcome = peak_rss_delta(run)
seconds = time.perf_counter() - start
# The high-water mark as well: the sampling thread cannot run while a C call (json's
# parser) holds the interpreter.
high = high_water() - before if reset else 0
print(json.dumps({{"seconds": seconds, "peak_rss_bytes": max(grew, high), "outcome": outcome}}))
"""


def measure(path: Path) -> dict:
    code = CHILD.format(bench=str(Path(__file__).parent), path=str(path))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=900
    )
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["file_bytes"] = path.stat().st_size
    row["rss_per_file_byte"] = round(row["peak_rss_bytes"] / row["file_bytes"], 2)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--mb", type=float, default=60.0)
    ap.add_argument("--out", default="reports/bench_load")
    args = ap.parse_args()
    size = int(args.mb * 2**20)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in write_cases(Path(tmp), size).items():
            rows[name] = measure(path)
            r = rows[name]
            print(
                f"{name:30s} {r['file_bytes'] / 2**20:6.1f} MB  {r['seconds']:6.2f} s  "
                f"+{r['peak_rss_bytes'] / 2**20:7.1f} MB RSS ({r['rss_per_file_byte']}x)  "
                f"{r['outcome'][:60]}",
                flush=True,
            )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"machine": platform.platform(), "python": sys.version.split()[0], "cases": rows}
    (out / "bench_load.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""``evaluate`` under torchrun: two CPU processes (gloo) share the passages out, each writes
its own results file, rank 0 merges them, and the merged numbers equal a single-process
run's exactly."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import helpers
from jacobian_scopes.eval import distributed
from jacobian_scopes.eval.distributed import Ranks, backend, local_device, torchrun_ranks
from jacobian_scopes.eval.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[1]
PASSAGES = [helpers.tokens(n, seed=n) for n in (6, 7, 8, 9, 10)]
METHODS = ["semantic", "temperature", "input_x_gradient"]

SCRIPT = """
import sys
sys.path[:0] = [{src!r}, {tests!r}]
import torch, helpers
from jacobian_scopes.eval.evaluate import evaluate
model = helpers.make_model({kind!r}, "gpt2")
passages = [helpers.tokens(n, seed=n) for n in (6, 7, 8, 9, 10)]
ev = evaluate(model, passages, {methods!r}, results={results!r}, verbose=False)
rank = int(__import__("os").environ["RANK"])
ev.records.drop(columns=["seconds"]).to_pickle({out!r} + f".rank{{rank}}.pkl")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _numbers(records: pd.DataFrame) -> pd.DataFrame:
    return (
        records.drop(columns=["seconds"]).sort_values(["passage", "method"]).reset_index(drop=True)
    )


def test_ranks_share_the_passages_out_without_overlap():
    ranks = [Ranks(r, 3) for r in range(3)]
    shares = [r.shard(list(range(10))) for r in ranks]
    assert sorted(x for share in shares for x in share) == list(range(10))
    assert Ranks(1, 3).rank_file("out/faith.jsonl") == Path("out/faith.rank1.jsonl")


def test_torchrun_is_detected_from_its_environment(monkeypatch):
    for name in ("TORCHELASTIC_RUN_ID", "LOCAL_RANK", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert torchrun_ranks() is None
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert torchrun_ranks() == Ranks(1, 2)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert torchrun_ranks() is None


def test_nccl_only_when_every_local_process_has_a_gpu_of_its_own():
    assert backend(1, 1) == "nccl"
    assert backend(4, 8) == "nccl"
    assert backend(2, 1) == "gloo"  # two ranks sharing one GPU: NCCL refuses
    assert backend(2, 0) == "gloo"


def test_ranks_share_gpus_round_robin(monkeypatch):
    monkeypatch.setattr(distributed.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(distributed.torch.cuda, "device_count", lambda: 2)
    for local_rank, index in ((0, 0), (1, 1), (2, 0), (5, 1)):
        monkeypatch.setenv("LOCAL_RANK", str(local_rank))
        assert local_device() == torch.device("cuda", index)
    monkeypatch.setattr(distributed.torch.cuda, "is_available", lambda: False)
    assert local_device() == torch.device("cpu")


@pytest.mark.slow
def test_two_processes_under_torchrun_equal_one_process_exactly(tmp_path):
    kind = helpers.model_kinds()[0]
    results = tmp_path / "faith.jsonl"
    out = str(tmp_path / "records")
    script = tmp_path / "run.py"
    script.write_text(
        SCRIPT.format(
            src=str(ROOT / "src"),
            tests=str(ROOT / "tests"),
            kind=kind,
            methods=METHODS,
            results=str(results),
            out=out,
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(script),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    torch.manual_seed(0)
    # One thread, as each rank had: other thread counts sum in another order (1e-6 apart).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = evaluate(helpers.make_model(kind, "gpt2"), PASSAGES, METHODS, verbose=False)
    finally:
        torch.set_num_threads(threads)
    expected = _numbers(single.records)
    for rank in (0, 1):  # every rank returns the whole evaluation
        got = pd.read_pickle(f"{out}.rank{rank}.pkl")
        got = got.sort_values(["passage", "method"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(got, expected, check_exact=True, check_dtype=False)
    # Each rank kept its own file with its share; rank 0 merged them into the requested one.
    shares = [
        {json.loads(line).get("passage") for line in (tmp_path / f"faith.rank{r}.jsonl").open()}
        - {None}
        for r in (0, 1)
    ]
    assert not shares[0] & shares[1] and len(shares[0] | shares[1]) == len(PASSAGES)
    merged = evaluate(
        helpers.make_model(kind, "gpt2"), PASSAGES, METHODS, results=results, verbose=False
    )  # resumes from the merged file: nothing left to compute
    pd.testing.assert_frame_equal(_numbers(merged.records), expected, check_exact=True)

"""Shared measuring tools: medians of repeated timings, peak resident memory, models."""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch


def median_time(
    fn: Callable[[], Any], repeats: int = 5, warmup: int = 1, sync: Callable[[], Any] = lambda: None
) -> float:
    """The median of ``repeats`` timed calls after ``warmup`` untimed ones; ``sync`` waits
    for the device to finish (``torch.cuda.synchronize`` on a GPU)."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed_rounds(work: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each of ``work``'s calls over ``repeats`` rounds, each round calling every
    one once in order, after one warm-up call each. Ratios taken within a round stay
    meaningful when a shared machine's speed drifts during the run."""
    for fn in work.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in work}
    for _ in range(repeats):
        for name, fn in work.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_delta(fn: Callable[[], Any], interval: float = 0.001) -> tuple[int, Any]:
    """Peak growth of resident memory while ``fn`` runs (bytes), sampled by a thread."""
    import gc

    gc.collect()
    start = _rss()
    peak = start
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss())
            time.sleep(interval)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        out = fn()
    finally:
        done.set()
        t.join()
    return max(0, max(peak, _rss()) - start), out


def handwritten_input_gradient(model: Any, tokens: torch.Tensor, target: int) -> torch.Tensor:
    """The reference: one forward with the embedding as a leaf, one backward to it only."""
    store = {}

    def leaf(x: torch.Tensor, hook: Any) -> torch.Tensor:
        x = x.detach().requires_grad_(True)
        store["x"] = x
        return x

    with model.hooks(fwd_hooks=[("hook_embed", leaf)]):
        logits = model(tokens)
    (g,) = torch.autograd.grad(logits[0, -1, target], store["x"])
    return g[0].norm(dim=-1)


def freeze(model: Any) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def gpt2_small_random(seed: int = 0) -> Any:
    """A GPT-2-small-shaped random model (124M parameters) as a TransformerBridge, offline."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, GPT2Config

    import helpers  # the tests' offline tokenizer

    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(GPT2Config()).eval()
    # unit norm gains would make ‖y‖ constant (Temperature undefined): perturb them
    helpers._perturb_norms(hf.named_parameters(), seed + 1)
    return TransformerBridge.boot_transformers(
        "gpt2", hf_model=hf, tokenizer=helpers.make_tokenizer(GPT2Config().vocab_size)
    )


def fmt_bytes(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


@contextmanager
def fisher_solver(name: str | None) -> Iterator[None]:
    """Plan the Fisher scope with the eigen-solver ``name`` (``"gram"`` or ``"iterative"``)
    inside the block; ``None`` leaves the library's default. The solver is no option of
    ``fisher_scope``: benchmarks choose it through ``jacobian_scopes.fisher.DEFAULT_SOLVER``."""
    from jacobian_scopes import fisher

    if name is None:
        yield
        return
    if name not in fisher.SOLVERS:
        raise SystemExit(f"unknown solver {name!r}; choose one of {fisher.SOLVERS}")
    old = fisher.DEFAULT_SOLVER
    fisher.DEFAULT_SOLVER = name  # type: ignore[assignment]
    try:
        yield
    finally:
        fisher.DEFAULT_SOLVER = old


def fisher_variant(spec: str) -> tuple[dict[str, Any], str | None]:
    """``method:rank:n_probes[:solver]`` -> (``fisher_scope`` keyword arguments, solver)."""
    parts = spec.split(":")
    if len(parts) not in (3, 4):
        raise SystemExit(f"a Fisher variant is method:rank:n_probes[:solver], got {spec!r}")
    kwargs = {"method": parts[0], "rank": int(parts[1]), "n_probes": int(parts[2])}
    return kwargs, parts[3] if len(parts) == 4 else None

"""Several threads on one model: scope calls are serialised per model, and a call's hooks act
only in its own thread, so every result equals the sequential one bit for bit and a plain
forward pass in another thread meanwhile gets the right logits."""

from __future__ import annotations

import sys
import threading
import time
import traceback

import pytest
import torch

import helpers
import jacobian_scopes as js
from jacobian_scopes.guard import model_fingerprint


def _ablate(x, hook):
    return x * 0.5


CALLS = {
    "semantic": lambda m, t: js.semantic_scope(m, t, 11).scores,
    "temperature": lambda m, t: js.temperature_scope(m, t).scores,
    "semantic_layers_ckpt": lambda m, t: (
        js.semantic_scope(m, t, 12, sources="resid_pre", checkpoint=True).scores
    ),
    "semantic_ablated": lambda m, t: (
        js.semantic_scope(m, t, 13, fwd_hooks=[("blocks.0.hook_resid_post", _ablate)]).scores
    ),
}
PROMPTS = [helpers.tokens(n, seed=n) for n in (5, 6, 7, 8)]
JOBS = [(name, i) for name in CALLS for i in range(len(PROMPTS))]


@pytest.fixture(params=helpers.model_kinds())
def model(request):
    return helpers.warmed_model(request.param, "gpt2")


def _sequential(model):
    return {job: CALLS[job[0]](model, PROMPTS[job[1]]) for job in JOBS}


def _stacks(threads) -> str:
    # Where each hung thread is stuck: a hang on another machine is otherwise undiagnosable.
    frames = sys._current_frames()
    return "\n".join(
        "".join(traceback.format_stack(frames[th.ident])) for th in threads if th.ident in frames
    )


def _run_threads(n_threads, target, *args):
    errors: list[BaseException] = []

    def run(k):
        try:
            target(k, *args)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    # Daemons: a hung thread must fail its test, not keep the worker process from exiting.
    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(n_threads)]
    for th in threads:
        th.start()
    deadline = time.monotonic() + 120  # one wait for all: hung threads must not add up
    for th in threads:
        th.join(timeout=max(0.0, deadline - time.monotonic()))
    hung = [th for th in threads if th.is_alive()]
    assert not hung, "a thread hung:\n" + _stacks(hung)
    if errors:
        raise errors[0]


@pytest.mark.parametrize("n_threads", [2, 4])
def test_threads_give_the_sequential_results_bit_for_bit(model, n_threads):
    expected = _sequential(model)
    before = model_fingerprint(model)
    wrong: list[tuple] = []

    def worker(k):
        for rep in range(4 // n_threads):
            for j in range(len(JOBS)):
                job = JOBS[(j + 3 * k + rep) % len(JOBS)]  # threads interleave different calls
                got = CALLS[job[0]](model, PROMPTS[job[1]])
                if not torch.equal(got, expected[job]):
                    wrong.append((k, rep, job))

    _run_threads(n_threads, worker)
    assert wrong == []
    after = model_fingerprint(model)
    assert after["requires_grad"] == before["requires_grad"]
    assert after["training"] == before["training"]
    assert after["hooks"] == before["hooks"]


def test_a_first_call_in_a_new_thread_equals_the_main_threads_after_set_num_threads(model):
    # The user set torch's thread count in the main thread (as pytest-xdist workers do); a
    # new thread must not run its first matrix products on the BLAS default instead.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = [CALLS["semantic"](model, p) for p in PROMPTS]
        got: list[torch.Tensor] = []
        for p in PROMPTS:  # each in a new thread, where it is that thread's first call
            _run_threads(1, lambda k, p=p: got.append(CALLS["semantic"](model, p)))
    finally:
        torch.set_num_threads(threads)
    assert [torch.equal(g, e) for g, e in zip(got, expected, strict=True)] == [True] * len(PROMPTS)


def test_plain_forward_in_another_thread_during_scopes(model):
    toks = PROMPTS[3][None]
    with torch.no_grad():
        clean = model(toks)
    expected = _sequential(model)
    stop = threading.Event()
    wrong_logits: list[int] = []
    wrong_scores: list[tuple] = []
    n_forwards = [0]

    def forward_loop():
        while not stop.is_set() or n_forwards[0] < 20:
            with torch.no_grad():
                out = model(toks)
            n_forwards[0] += 1
            if not torch.equal(out, clean):
                wrong_logits.append(n_forwards[0])

    other = threading.Thread(target=forward_loop)
    other.start()
    try:
        for _ in range(3):
            for job in JOBS:
                if not torch.equal(CALLS[job[0]](model, PROMPTS[job[1]]), expected[job]):
                    wrong_scores.append(job)
    finally:
        stop.set()
        other.join(timeout=120)
    assert not other.is_alive()
    assert wrong_logits == []
    assert wrong_scores == []


def test_a_call_waits_while_another_thread_holds_the_model(model):
    toks = PROMPTS[0]
    expected = js.semantic_scope(model, toks, 11).scores
    done = threading.Event()
    got = {}

    def call():
        got["scores"] = js.semantic_scope(model, toks, 11).scores
        done.set()

    with js.frozen(model):
        other = threading.Thread(target=call, daemon=True)
        other.start()
        # The other thread's call waits for the lock: it cannot finish meanwhile.
        assert not done.wait(0.5)
        # The same thread goes on (the lock is re-entrant), also inside a probe's run.
        assert torch.equal(js.semantic_scope(model, toks, 11).scores, expected)
        probe = js.GradientProbe(model)
        with model.hooks(fwd_hooks=probe.fwd_hooks):
            logits = model(toks[None])
            probe.backward(logits[0, -1, 11])
            assert torch.equal(js.semantic_scope(model, toks, 11).scores, expected)
    assert done.wait(60), _stacks([other])
    other.join()
    assert torch.equal(got["scores"], expected)


@pytest.mark.parametrize(
    "call",
    [
        lambda m, t: js.semantic_scope(m, t, 11),
        lambda m, t: js.semantic_scope(m, [t, t[:-1]], 11),
        lambda m, t: js.generate_scope(m, t, 2),
    ],
    ids=["one prompt", "a batch", "generation"],
)
def test_a_call_in_another_thread_does_not_wait_for_tqdms_lock(model, call):
    # tqdm takes a process-wide lock (two, one after the other) whenever a bar is made, even a
    # disabled one: a Ctrl-C between the two leaves the first held by the interrupted thread
    # for good. The main thread holds it here as such an interrupt leaves it; a call that shows
    # no bar must not need it.
    from tqdm import tqdm

    lock = tqdm.get_lock()
    lock.acquire()
    try:
        _run_threads(1, lambda k: call(model, PROMPTS[1]))
    finally:
        lock.release()


def test_the_lock_is_per_model():
    a = helpers.warmed_model(helpers.model_kinds()[0], "gpt2")
    b = helpers.warmed_model(helpers.model_kinds()[0], "gpt2")
    toks = PROMPTS[0]
    done = threading.Event()
    other = threading.Thread(
        target=lambda: (js.semantic_scope(b, toks, 11), done.set()), daemon=True
    )
    with js.frozen(a):
        start = time.perf_counter()
        other.start()
        assert done.wait(60), "a call on another model waited:\n" + _stacks([other])
    other.join()
    assert time.perf_counter() - start < 60


def test_checkpoint_recomputation_in_another_thread_counts_as_the_calls_work(model):
    # On CUDA autograd runs the backward pass, and with it the recomputation of
    # checkpointed blocks, in threads of its own; here a thread of ours stands in for it.
    from jacobian_scopes.adapter import ModelAdapter
    from jacobian_scopes.engine import Trace

    adapter = ModelAdapter(model)
    toks = PROMPTS[2][None]
    v = adapter.W_U[:, 11][None, None]
    squared = {}
    for checkpoint in (False, True):
        with Trace(adapter, toks, ["blocks.1.hook_resid_pre"], checkpoint=checkpoint) as tr:
            out = {}
            worker = threading.Thread(
                target=lambda tr=tr, out=out: out.update(
                    sq=tr.pullback([toks.shape[1] - 1], v).squared["blocks.1.hook_resid_pre"]
                )
            )
            worker.start()
            worker.join(60)
        squared[checkpoint] = out["sq"]
    assert torch.equal(squared[True], squared[False])

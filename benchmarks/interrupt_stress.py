"""Ctrl-C at random moments of many scope calls: does any leave the model changed or its lock
held? ``tests/test_interrupts.py`` does this 60 times per run; this does it thousands of times.

A timer's signal raises KeyboardInterrupt after a random delay within 1.5 calls' time. Each
call is, at random, one on the Hugging Face model run directly, one through the Bridge (a
model holding a hook of its own), or one through the Bridge checkpointed. After each
interrupted call it checks, while the interrupt (and so the call's frames) is still held, as
an interactive session keeps its last traceback: the model's lock (free, or held by this
thread) and its fingerprint (parameter flags, modes, hooks, TransformerLens's context level).
Every 100 calls it drops the last traceback, runs the garbage collector, and checks again:
a context left waiting would change the model then. It prints each leak with the
interrupt's traceback: where it landed.

    OMP_NUM_THREADS=1 python benchmarks/interrupt_stress.py --seed 0 --calls 3000
"""

from __future__ import annotations

import argparse
import gc
import random
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import helpers
import jacobian_scopes as js
from jacobian_scopes.guard import model_fingerprint
from jacobian_scopes.threads import model_lock

CHECKED = ("requires_grad", "training", "hooks", "torch_hooks", "context_level")


def _fingerprint(model: Any) -> dict[str, Any]:
    # TransformerLens's hooks() level read here too: older fingerprints lacked it.
    return {**model_fingerprint(model), "context_level": getattr(model, "context_level", None)}


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()

    direct = helpers.warmed_model(helpers.model_kinds()[0], "gpt2")
    hooked = helpers.warmed_model(helpers.model_kinds()[0], "gpt2")
    hooked.add_hook("blocks.0.hook_resid_pre", lambda x, hook: None)  # keeps it on the Bridge
    models = (direct, hooked)
    for model in models:
        model.train()  # every module's flag has something to restore
    toks = helpers.tokens(6)
    before = [_fingerprint(m) for m in models]
    calls = [
        lambda: js.semantic_scope(direct, toks, 11),
        lambda: js.semantic_scope(hooked, toks, 11),
        lambda: js.semantic_scope(hooked, toks, 11, checkpoint=True),
    ]

    start = time.perf_counter()
    for call in calls * 2:
        call()
    longest = 1.5 * (time.perf_counter() - start) / 2
    signal.signal(signal.SIGALRM, _interrupt)
    rng = random.Random(args.seed)
    hits = leaks = 0

    def leaked(i: int, when: str, caught: BaseException | None) -> int:
        found = 0
        for model, fingerprint in zip(models, before, strict=True):
            lock = model_lock(model)
            after = _fingerprint(model)
            changed = [k for k in CHECKED if after[k] != fingerprint[k]]
            if lock._is_owned() or changed:
                found = 1
                print(f"call {i} ({when}): lock held {lock._is_owned()}, changed {changed}")
                if caught is not None:
                    traceback.print_exception(caught)
                while lock._is_owned():
                    lock.release()
        return found

    caught: BaseException | None = None
    for i in range(args.calls):
        try:
            signal.setitimer(signal.ITIMER_REAL, rng.uniform(1e-6, longest))
            rng.choice(calls)()
            time.sleep(longest)  # the timer fires here if the call was quicker
        except KeyboardInterrupt as interrupt:
            signal.setitimer(signal.ITIMER_REAL, 0)
            hits += 1
            caught = interrupt
            leaks += leaked(i, "interrupt held", caught)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if i % 100 == 99:
            caught = None
            gc.collect()
            leaks += leaked(i, "after garbage collection", None)
    print(f"{hits} interrupts in {args.calls} calls, {leaks} left the model changed or locked")


if __name__ == "__main__":
    main()

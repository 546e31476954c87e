"""Ctrl-C at random moments of many scope calls: does any leave the model changed or its lock
held? ``tests/test_interrupts.py`` does this 60 times per run; this does it thousands of times.

A timer's signal raises KeyboardInterrupt after a random delay within 1.5 calls' time. After
each interrupted call it checks, while the interrupt (and so the call's frames) is still held,
as an interactive session keeps its last traceback: the model's lock (free, or held by this
thread) and its fingerprint (parameter flags, modes, hooks). It prints each leak with the
interrupt's traceback: where it landed.

    OMP_NUM_THREADS=1 python benchmarks/interrupt_stress.py --seed 0 --calls 3000
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import helpers
import jacobian_scopes as js
from jacobian_scopes.guard import model_fingerprint
from jacobian_scopes.threads import model_lock

CHECKED = ("requires_grad", "training", "hooks", "torch_hooks")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()

    model = helpers.warmed_model(helpers.model_kinds()[0], "gpt2")
    model.train()  # every module's flag has something to restore
    toks = helpers.tokens(6)
    lock = model_lock(model)
    before = model_fingerprint(model)

    def call() -> None:
        js.semantic_scope(model, toks, 11)

    start = time.perf_counter()
    call()
    call()
    longest = 1.5 * (time.perf_counter() - start) / 2
    signal.signal(signal.SIGALRM, _interrupt)
    rng = random.Random(args.seed)
    hits = leaks = 0
    for i in range(args.calls):
        try:
            signal.setitimer(signal.ITIMER_REAL, rng.uniform(1e-6, longest))
            call()
            time.sleep(longest)  # the timer fires here if the call was quicker
        except KeyboardInterrupt as caught:
            signal.setitimer(signal.ITIMER_REAL, 0)
            hits += 1
            after = model_fingerprint(model)
            changed = [k for k in CHECKED if after[k] != before[k]]
            if lock._is_owned() or changed:
                leaks += 1
                print(f"call {i}: lock held {lock._is_owned()}, changed {changed}")
                traceback.print_exception(caught)
                while lock._is_owned():
                    lock.release()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    print(f"{hits} interrupts in {args.calls} calls, {leaks} left the model changed or locked")


if __name__ == "__main__":
    main()

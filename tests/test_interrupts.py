"""Ctrl-C at any moment of a call leaves the model as it was: an asynchronous
KeyboardInterrupt (here from a timer's signal handler, at random times) that lands while
``frozen`` restores the flags is raised only after every flag is back."""

from __future__ import annotations

import contextlib
import gc
import inspect
import random
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
import transformer_lens

import helpers
import jacobian_scopes as js
from jacobian_scopes.guard import model_fingerprint
from jacobian_scopes.interrupts import Contexts, finish
from jacobian_scopes.threads import model_lock

pytestmark = pytest.mark.skipif(
    not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread(),
    reason="needs POSIX interval timers in the main thread",
)


def _raise(signum, frame):
    raise KeyboardInterrupt


def _flags(model) -> dict:
    fp = model_fingerprint(model)
    return {"requires_grad": fp["requires_grad"], "training": fp["training"]}


def _user_model():
    model = helpers.warmed_model(helpers.model_kinds()[0], "gpt2")
    model.train()  # every module's flag has something to restore
    return model


def _interrupt_at_random(call, n: int, longest: float, seed: int = 0) -> int:
    """Run ``call`` ``n`` times with an interrupt due after a random delay in [0, longest];
    returns how many calls the interrupt reached."""
    rng = random.Random(seed)
    hit = 0
    previous = signal.signal(signal.SIGALRM, _raise)
    try:
        for _ in range(n):
            try:
                signal.setitimer(signal.ITIMER_REAL, rng.uniform(1e-6, longest))
                call()
                # The timer fires in whatever comes next if the call was quicker.
                time.sleep(longest)
            except KeyboardInterrupt:
                hit += 1
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.signal(signal.SIGALRM, previous)
    return hit


def _duration(call, repeats: int = 5) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - start) / repeats


def test_interrupts_inside_frozen_leave_no_flag_behind():
    model = _user_model()
    before = _flags(model)
    leaks = []

    def call():
        with js.frozen(model):
            pass
        if _flags(model) != before:  # not inside the timed window's aftermath
            leaks.append("during")

    longest = 2 * _duration(call)
    hit = _interrupt_at_random(call, 300, longest)
    assert hit > 75  # the interrupts did land, mostly in the call
    assert _flags(model) == before
    assert leaks == []
    # The lock was released every time: another thread can still use the model.
    assert _lock_is_free(model)


def test_interrupts_during_scope_calls_leave_the_model_as_it_was():
    model = _user_model()
    toks = helpers.tokens(6)
    before = model_fingerprint(model)

    def call():
        js.semantic_scope(model, toks, 11)

    longest = 1.5 * _duration(call, 2)
    hit = _interrupt_at_random(call, 60, longest, seed=1)
    assert hit > 20
    after = model_fingerprint(model)
    assert after["requires_grad"] == before["requires_grad"]
    assert after["training"] == before["training"]
    assert after["hooks"] == before["hooks"]
    assert after["torch_hooks"] == before["torch_hooks"]
    assert all(g is None for g in after["grads"])
    # And the model still gives the uninterrupted scores.
    model.eval()
    expected = js.semantic_scope(helpers.warmed_model(helpers.model_kinds()[0], "gpt2"), toks, 11)
    assert torch.equal(js.semantic_scope(model, toks, 11).scores, expected.scores)
    # Nothing an interrupt cut short is left held: a call in another thread goes through.
    got: list[torch.Tensor] = []
    other = threading.Thread(
        target=lambda: got.append(js.semantic_scope(model, toks, 11).scores), daemon=True
    )
    other.start()
    other.join(60)
    assert len(got) == 1 and torch.equal(got[0], expected.scores)


@pytest.mark.parametrize("kind", helpers.model_kinds())
@pytest.mark.parametrize("nth", [1, 2])
def test_an_interrupt_inside_transformerlens_hook_cleanup_leaves_no_hook(monkeypatch, kind, nth):
    # Where the random timer rarely lands: TransformerLens's own loop that removes a
    # context's hooks. The interrupt arrives right after the nth handle is removed (one
    # source per layer: several handles to remove).
    from torch.utils.hooks import RemovableHandle

    model = helpers.warmed_model(kind, "gpt2")
    toks = helpers.tokens(6)
    expected = js.semantic_scope(model, toks, 11, sources="resid_pre").scores
    before = model_fingerprint(model)
    level = getattr(model, "context_level", None)
    remove = RemovableHandle.remove
    removed = [0]

    def interrupted_remove(handle):
        remove(handle)
        removed[0] += 1
        if removed[0] == nth:
            raise KeyboardInterrupt

    monkeypatch.setattr(RemovableHandle, "remove", interrupted_remove)
    with pytest.raises(KeyboardInterrupt):
        js.semantic_scope(model, toks, 11, sources="resid_pre")
    monkeypatch.undo()
    after = model_fingerprint(model)
    assert after["hooks"] == before["hooks"]
    assert after["torch_hooks"] == before["torch_hooks"]
    assert getattr(model, "context_level", None) == level
    assert torch.equal(js.semantic_scope(model, toks, 11, sources="resid_pre").scores, expected)


# The window a random timer rarely hits, made certain: an interrupt right after a context is
# entered, before anything else runs. ExitStack.enter_context lost such a context (entered,
# its exit never registered): the model's lock stayed held, or flags and hooks stayed set.


class _InterruptAfterAcquire:
    """The model's lock, with a Ctrl-C arriving just after each acquisition."""

    def __init__(self, lock):
        self.lock = lock

    def acquire(self, *args, **kwargs):
        self.lock.acquire(*args, **kwargs)
        raise KeyboardInterrupt

    def release(self):
        self.lock.release()

    def _is_owned(self):
        return self.lock._is_owned()

    def __enter__(self):
        self.acquire()

    def __exit__(self, *exc):
        self.release()


def _interrupted_on_entry(factory):
    """``factory``'s contexts, with a Ctrl-C arriving just after each is entered."""

    def make(*args, **kwargs):
        context = factory(*args, **kwargs)
        enter = context.__enter__

        def entered_then_interrupted():
            enter()
            raise KeyboardInterrupt

        context.__enter__ = entered_then_interrupted
        return context

    return make


def _lock_is_free(model) -> bool:
    got = []

    def take() -> None:
        got.append(model_lock(model).acquire(timeout=5))
        if got[0]:
            model_lock(model).release()

    other = threading.Thread(target=take)
    other.start()
    other.join()
    return got == [True]


def _state(model):
    """The fingerprint, plus what the SDPA path and checkpointing change."""
    from jacobian_scopes import direct
    from jacobian_scopes.attention import _attention_bridges, _configs

    bridge = hasattr(model, "original_model")
    twin = direct._TWINS.get(model) if bridge else None
    return {
        # The direct path's own layers, wrapped while it recomputes them (the twin is
        # built at a model's first call, so only a wrapped layer counts).
        "twin layers wrapped": twin is not None
        and any("forward" in m.__dict__ for m in twin[1].base_model.layers),
        **{k: v for k, v in model_fingerprint(model).items() if k != "grads"},
        "forwards": [
            "forward" in m.__dict__
            for m in [*model.blocks, *(_attention_bridges(model) if bridge else [])]
        ],
        "attention": [
            c.__dict__.get("_attn_implementation_internal")
            for c in (_configs(model) if bridge else [])
        ],
        "warning filters": list(warnings.filters),
        "grad enabled": torch.is_grad_enabled(),
    }


def test_an_interrupt_just_after_the_lock_is_taken_leaves_it_free(monkeypatch):
    from jacobian_scopes import engine

    model = _user_model()
    before = _state(model)
    monkeypatch.setattr(engine, "model_lock", lambda m: _InterruptAfterAcquire(model_lock(m)))
    with pytest.raises(KeyboardInterrupt) as caught:  # kept: it holds the call's frames
        js.semantic_scope(model, helpers.tokens(6), 11)
    assert caught.value is not None
    assert _lock_is_free(model)
    assert _state(model) == before


@pytest.mark.parametrize(
    "context, kind, options",
    [
        ("frozen", "bridge", {}),
        ("temporary_hooks", "bridge", {}),
        # HookedTransformer's final state is read by a torch pre-hook on its unembedding
        ("forward_pre_hook", "hooked", {}),
        ("_scale_edits_allowed", "bridge", {"freeze": ["norm_scale"]}),
        ("checkpointed_blocks", "bridge", {"checkpoint": True}),
        ("sdpa_attention", "bridge", {"attention": "sdpa"}),
    ],
)
def test_an_interrupt_just_after_a_context_is_entered_undoes_it(
    monkeypatch, context, kind, options
):
    from jacobian_scopes import engine

    if kind not in helpers.model_kinds():
        pytest.skip(f"no {kind} model in this TransformerLens")
    model = helpers.warmed_model(kind, "llama" if kind == "bridge" else "gpt2")
    model.train()
    model.add_hook("blocks.0.hook_resid_pre", lambda x, hook: None)
    toks = helpers.tokens(6)
    before = _state(model)
    expected = js.semantic_scope(model, toks, 11, **options).scores
    assert _state(model) == before
    monkeypatch.setattr(engine, context, _interrupted_on_entry(getattr(engine, context)))
    with pytest.raises(KeyboardInterrupt) as caught:  # kept: it holds the call's frames
        js.semantic_scope(model, toks, 11, **options)
    assert caught.value is not None
    assert _state(model) == before
    assert _lock_is_free(model)
    monkeypatch.undo()
    assert torch.equal(js.semantic_scope(model, toks, 11, **options).scores, expected)


def test_a_transformerlens_exit_cut_short_leaves_nothing_for_the_garbage_collector(monkeypatch):
    # Cut short as it began, TransformerLens's hooks() exit waits at its yield until the
    # traceback goes; the collector then ran its finally, which took off the hooks at its
    # level (another call's, by then) and lowered the model's context_level.
    from jacobian_scopes.guard import temporary_hooks

    model = helpers.make_model(helpers.model_kinds()[0], "llama")
    before, level = _state(model), model.context_level
    exit_ = contextlib._GeneratorContextManager.__exit__

    def cut_short_in_transformer_lens(self, *exc):
        if "transformer_lens" in self.gen.gi_code.co_filename:
            monkeypatch.undo()
            raise KeyboardInterrupt
        return exit_(self, *exc)

    monkeypatch.setattr(
        contextlib._GeneratorContextManager, "__exit__", cut_short_in_transformer_lens
    )
    with (
        pytest.raises(KeyboardInterrupt) as caught,
        temporary_hooks(model, [("hook_embed", lambda x, hook: x)]),
    ):
        pass
    assert _state(model) == before
    del caught
    gc.collect()
    assert _state(model) == before
    assert model.context_level == level


def _step(events, name, interrupt_before_yield=False):
    @contextlib.contextmanager
    def step():
        events.append(f"enter {name}")
        try:
            if interrupt_before_yield:
                raise KeyboardInterrupt
            yield
        finally:
            events.append(f"exit {name}")

    return step()


def test_contexts_leave_in_reverse_order_and_each_failing_exit_runs_once():
    events = []
    stack = Contexts()
    stack.enter(_step(events, "a"))
    stack.callback(lambda: events.append("boom") or 1 / 0)
    stack.enter(_step(events, "b"))
    with pytest.raises(ZeroDivisionError):
        stack.close()
    assert events == ["enter a", "enter b", "exit b", "boom", "exit a"]
    stack.close()  # nothing left
    assert len(events) == 5


def test_contexts_run_an_interrupted_exit_again_and_raise_the_interrupt_after():
    events = []
    interrupts = [KeyboardInterrupt()]

    def exit_once_interrupted():
        events.append("exit")
        if interrupts:
            raise interrupts.pop()

    stack = Contexts()
    stack.enter(_step(events, "a"))
    stack.callback(exit_once_interrupted)
    with pytest.raises(KeyboardInterrupt):
        stack.close()
    assert events == ["enter a", "exit", "exit", "exit a"]


def test_contexts_skip_the_exit_of_a_context_its_own_body_left():
    events = []
    stack = Contexts()
    with pytest.raises(KeyboardInterrupt):
        stack.enter(_step(events, "a", interrupt_before_yield=True))
    stack.close()
    assert events == ["enter a", "exit a"]


class _InterruptBeforeEntry(contextlib._GeneratorContextManager):
    def __enter__(self):
        raise KeyboardInterrupt


def test_contexts_never_exit_a_context_that_was_not_entered():
    events = []
    cm = _step(events, "a")
    stack = Contexts()
    with pytest.raises(KeyboardInterrupt):
        stack.enter(_InterruptBeforeEntry(cm.func, cm.args, cm.kwds))
    stack.close()
    assert events == []


def test_contexts_hold_a_lock_once_and_leave_a_callers_hold_alone():
    lock = threading.RLock()
    stack = Contexts()
    stack.hold(lock)
    stack.hold(lock)  # held already: nothing added
    lock.release()
    assert not lock._is_owned()
    stack.close()
    stack = Contexts()
    stack.hold(lock)
    stack.close()
    assert not lock._is_owned()
    with lock:  # the caller's hold outlasts the stack
        inner = Contexts()
        inner.hold(lock)
        inner.close()
        assert lock._is_owned()


def test_contexts_enter_takes_contextmanager_contexts_only():
    with pytest.raises(TypeError, match="@contextmanager"):
        Contexts().enter(threading.RLock())


def test_finish_runs_an_interrupted_restore_again_and_raises_the_interrupt_after():
    calls = []

    def restore(value):
        calls.append(value)
        if len(calls) == 1:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the first pass

    with pytest.raises(KeyboardInterrupt):
        finish(restore, "flags")
    assert calls == ["flags", "flags"]


def test_an_interrupt_while_checkpointing_is_undone_leaves_every_block_plain(monkeypatch):
    from jacobian_scopes import checkpointing

    model = helpers.make_model(helpers.model_kinds()[0], "llama")
    put_back = checkpointing._put_back_forward
    calls = []

    def interrupted_once(block, own):
        calls.append(block)
        if len(calls) == 2:  # Ctrl-C as the second block is about to be put back
            raise KeyboardInterrupt
        put_back(block, own)

    monkeypatch.setattr(checkpointing, "_put_back_forward", interrupted_once)
    with pytest.raises(KeyboardInterrupt), checkpointing.checkpointed_blocks(model.blocks):
        assert all("forward" in vars(b) for b in model.blocks)
    # The interrupted one runs again, and the rest after it; the interrupt comes after.
    assert len(calls) == len(model.blocks) + 1
    assert not any("forward" in vars(b) for b in model.blocks)


def test_contexts_an_interrupt_between_two_exits_still_runs_the_rest():
    events: list[str] = []
    stack = Contexts()
    stack.callback(events.append, "first registered")
    stack.callback(events.append, "last registered")

    class InterruptedOnce(list):
        # Ctrl-C at the loop's check after the first exit, where Python delivers it
        fired = False

        def __bool__(self):
            if not self.fired and list.__len__(self) == 1:
                self.fired = True
                raise KeyboardInterrupt
            return list.__len__(self) > 0

    stack._exits = InterruptedOnce(stack._exits)
    with pytest.raises(KeyboardInterrupt):
        stack.close()
    assert events == ["last registered", "first registered"]


# Python checks for a pending signal as every Python function begins, so a Ctrl-C can land
# as an exit begins, before it has undone anything: a ``with`` statement never calls that
# exit again. The sweep below raises the interrupt at each entry, in turn, of every
# function that leaves a context (the exits themselves, and what they call first).
def _exit_functions():
    import contextlib as cl

    from jacobian_scopes import attention, checkpointing, engine, guard, interrupts

    return [
        (cl._GeneratorContextManager, "__exit__"),
        (warnings.catch_warnings, "__exit__"),
        (engine.Trace, "__exit__"),
        (engine.Trace, "close"),
        (interrupts.Contexts, "close"),
        (interrupts.backstop, "__exit__"),
        (interrupts, "_release_all"),
        (interrupts, "_close_if_open"),
        (interrupts.Undoable, "__exit__"),
        (interrupts.Undoable, "close"),
        (engine, "finish"),
        (guard, "finish"),
        (guard, "_put_back"),
        (guard, "_remove_pre_hook"),
        (checkpointing, "_put_back_forward"),
        (engine, "_leave"),
        (attention, "_restore"),
    ]


def _counting(fn, sites, interrupt_at=None):
    """``fn``, counting its calls by call site (the caller's file and line), raising a
    Ctrl-C instead of running at the call ``interrupt_at``: (site, nth call from it)."""

    def counted(*args, **kwargs):
        caller = sys._getframe(1)
        site = (caller.f_code.co_filename, caller.f_lineno)
        sites[site] = sites.get(site, 0) + 1
        if (site, sites[site]) == interrupt_at:
            raise KeyboardInterrupt
        return fn(*args, **kwargs)

    return counted


def _recording_contexts(patch) -> list:
    """Every ``@contextmanager`` context created from now on, while ``patch`` lasts."""
    created: list = []
    init = contextlib._GeneratorContextManager.__init__

    def recorded(self, *args, **kwargs):
        init(self, *args, **kwargs)
        created.append(self)

    patch.setattr(contextlib._GeneratorContextManager, "__init__", recorded)
    return created


def _still_waiting(contexts: list) -> list[str]:
    """The library's and TransformerLens's contexts among ``contexts`` still waiting at their
    ``yield``: collected later, their ``finally`` would run in the middle of another call.
    (torch's own checkpoint leaves a ``fork_rng`` so; it restores only the random state.)"""
    packages = tuple(str(Path(m.__file__).parent) for m in (js, transformer_lens))
    return [
        cm.gen.gi_code.co_qualname
        for cm in contexts
        if cm.gen.gi_code.co_filename.startswith(packages)
        and inspect.getgeneratorstate(cm.gen) == inspect.GEN_SUSPENDED
    ]


def _model_for_sweep(kind: str, hooked_on_model: bool):
    model = helpers.warmed_model(kind, "llama")
    model.train()
    if hooked_on_model:  # keeps the call on the Bridge (see jacobian_scopes.direct)
        model.add_hook("blocks.0.hook_resid_pre", lambda x, hook: None)
    return model


_SWEEP_CALLS = {
    "semantic, direct path": (
        False,
        lambda m, toks: js.semantic_scope(m, toks, 11).scores,
    ),
    "semantic, direct path, checkpointed": (
        False,
        lambda m, toks: js.semantic_scope(m, toks, 11, checkpoint=True).scores,
    ),
    "semantic, checkpointed": (
        True,
        lambda m, toks: (
            js.semantic_scope(m, toks, 11, checkpoint=True, freeze=["norm_scale"]).scores
        ),
    ),
    "fisher, SDPA attention where the model has it": (
        True,
        lambda m, toks: js.fisher_scope(m, toks).scores,
    ),
    "generation attribution": (
        False,
        lambda m, toks: js.generate_scope(m, toks, max_new_tokens=2).scores,
    ),
    "patching comparison": (
        False,
        lambda m, toks: patching_compare(m, toks),
    ),
    "attention, input x gradient and occlusion baselines": (
        False,
        lambda m, toks: baselines_scores(m, toks),
    ),
}


def baselines_scores(model, toks):
    from jacobian_scopes.eval import baselines

    methods = (baselines.attention, baselines.input_x_gradient, baselines.occlusion)
    return torch.cat([method(model, toks).scores for method in methods])


def patching_compare(model, toks):
    from jacobian_scopes import patching

    corrupt = toks.clone()
    corrupt[2:4] = torch.tensor([13, 17])
    got = patching.compare(model, toks, corrupt, target=11, foil=12)
    return torch.cat([got.activation.values.flatten(), got.attribution.values.flatten()])


@pytest.mark.parametrize("kind", helpers.model_kinds())
@pytest.mark.parametrize("call", list(_SWEEP_CALLS))
def test_an_interrupt_as_any_exit_begins_leaves_the_model_as_it_was(monkeypatch, kind, call):
    hooked_on_model, run = _SWEEP_CALLS[call]
    model = _model_for_sweep(kind, hooked_on_model)
    toks = helpers.tokens(6)
    before = _state(model)
    expected = run(model, toks)
    assert _state(model) == before
    sites: dict = {key: {} for key in _exit_functions()}
    with monkeypatch.context() as patch:
        for (owner, name), seen in sites.items():
            patch.setattr(owner, name, _counting(getattr(owner, name), seen))
        run(model, toks)
    # Others' catch_warnings (pandas's) change the filters whoever calls them; the sweep
    # holds the library to its own.
    sites[(warnings.catch_warnings, "__exit__")] = {
        site: n
        for site, n in sites[(warnings.catch_warnings, "__exit__")].items()
        if site[0].startswith(str(Path(js.__file__).parent))
    }
    swept = 0
    # The first call from each call site: a site in a loop (a context per batch) leaves the
    # same context each time.
    for (owner, name), seen in sites.items():
        for site in seen:
            with monkeypatch.context() as patch:
                created = _recording_contexts(patch)
                patch.setattr(owner, name, _counting(getattr(owner, name), {}, (site, 1)))
                with pytest.raises(KeyboardInterrupt) as caught:  # kept: it holds the frames
                    run(model, toks)
            assert caught.value is not None
            where = f"{getattr(owner, '__name__', owner)}.{name} called from {site}"
            assert _state(model) == before, where
            assert _lock_is_free(model), where
            assert not _still_waiting(created), where
            swept += 1
    assert swept >= 5  # the exits ran, and each was interrupted
    torch.testing.assert_close(run(model, toks), expected, rtol=0, atol=0, equal_nan=True)

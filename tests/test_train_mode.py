"""A model left in train mode with dropout gives the eval-mode scores bit for bit: every
module that runs in the forward pass is in eval mode during a call (on the Bridge that
includes the wrapped Hugging Face model's own modules, such as GPT-2's embedding dropout),
and each module's training flag is restored afterwards."""

from __future__ import annotations

import torch

import helpers
import jacobian_scopes as js

DROPOUT = 0.2
CALLS = {
    "semantic": lambda m, t: js.semantic_scope(m, t, 11).scores,
    "temperature": lambda m, t: js.temperature_scope(m, t).scores,
    "fisher": lambda m, t: js.fisher_scope(m, t, method="exact").scores,
}


def _set_dropout(model) -> int:
    """Dropout ``DROPOUT`` wherever the model has one; returns how many were set."""
    n = 0
    hf = model.__dict__.get("original_model")
    configs = [getattr(model, "cfg", None), getattr(hf, "config", None)]
    names = ("attn_pdrop", "resid_pdrop", "embd_pdrop", "attention_dropout", "hidden_dropout")
    for cfg in configs:
        for name in names:
            if isinstance(getattr(cfg, name, None), float):
                setattr(cfg, name, DROPOUT)
    modules = [*torch.nn.Module.modules(model), *(hf.modules() if hf is not None else [])]
    for module in modules:
        if isinstance(module, torch.nn.Dropout):
            module.p = DROPOUT
            n += 1
        # Hugging Face attention reads its dropout from a float attribute in train mode.
        if isinstance(module.__dict__.get("attention_dropout"), float):
            module.attention_dropout = DROPOUT
            n += 1
    return n


def _modes(model) -> list[bool]:
    hf = model.__dict__.get("original_model")
    modules = [*torch.nn.Module.modules(model), *(hf.modules() if hf is not None else [])]
    return [m.training for m in modules]


def test_train_mode_gives_the_eval_scores(tiny):
    model, kind, _ = tiny
    n_dropouts = _set_dropout(model)
    toks = helpers.tokens(9)
    with torch.no_grad():
        model(toks[None])  # the Bridge's first forward adds hooks of its own
    model.eval()
    expected = {name: call(model, toks) for name, call in CALLS.items()}

    model.train()
    if n_dropouts:
        # The dropout is really on in train mode, so the test can see it leak.
        with torch.no_grad():
            assert not torch.equal(model(toks[None]), model(toks[None]))
    else:
        assert kind == "hooked"  # HookedTransformer has no dropout
    modes = _modes(model)
    assert all(modes)
    for _ in range(2):
        for name, call in CALLS.items():
            assert torch.equal(call(model, toks), expected[name]), name
    assert _modes(model) == modes

    # A model whose submodules are in different modes keeps each one's own.
    mixed = [i % 3 == 0 for i in range(len(modes))]
    hf = model.__dict__.get("original_model")
    modules = [*torch.nn.Module.modules(model), *(hf.modules() if hf is not None else [])]
    for module, mode in zip(modules, mixed, strict=True):
        module.training = mode
    mixed = _modes(model)  # a module listed twice keeps its last setting
    assert torch.equal(CALLS["semantic"](model, toks), expected["semantic"])
    assert _modes(model) == mixed

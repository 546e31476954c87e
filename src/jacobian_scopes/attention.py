"""Which attention implementation a trace runs: PyTorch's SDPA when nothing needs more.

The Bridge re-implements attention eagerly so that ``hook_attn_scores`` and
``hook_pattern`` fire; that keeps ``heads × pos²`` values per layer for the backward pass,
which is what made long prompts slow (checkpointing) and memory-hungry. When a call needs
no hook inside attention, the Hugging Face attention module can run instead, with
``scaled_dot_product_attention``: memory linear in the prompt length, no recomputation.
The projections are TransformerLens bridges, so ``hook_q``/``hook_k``/``hook_v``/``hook_z``
still fire on that path; ``attn.hook_in`` and ``attn.hook_out`` are fired around it.

The SDPA path is used only where it gives the eager path's numbers (checked in the tests)
and skips no hook anyone listens to:

* a Bridge whose attention blocks are the rotary-attention bridge over a Hugging Face
  module in :data:`SDPA_MODULES` (Llama, SmolLM2, Gemma-3); other architectures
  (GPT-2, GPT-NeoX, ...) keep eager attention;
* no hook, the caller's or already on the model (permanent ones included), on a hook
  point the SDPA path skips (``hook_attn_scores``, ``hook_pattern``, ``hook_rot_q``,
  ``hook_rot_k``, ``hook_cos``, ``hook_sin``, ``hook_q_normed``, ...): attention-pattern
  sources and
  ``freeze=["attn_pattern"]`` are such hooks;
* none of the Bridge's split-input or per-head-result modes.

HookedTransformer computes its attention patterns itself and has no SDPA switch in any
TransformerLens release; it always runs eager.

Example:
    >>> import jacobian_scopes as js
    >>> from jacobian_scopes.adapter import ModelAdapter
    >>> from jacobian_scopes.attention import attention_path
    >>> adapter = ModelAdapter(js.load_default_model())
    >>> attention_path(adapter, [("hook_embed", lambda x, hook: x)])
    'sdpa'
    >>> attention_path(adapter, [("blocks.3.attn.hook_pattern", lambda x, hook: x)])
    'eager'
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import torch

from jacobian_scopes import sdpa
from jacobian_scopes.adapter import ModelAdapter
from jacobian_scopes.errors import ScopeInputError
from jacobian_scopes.interrupts import Undoable, UndoFn
from jacobian_scopes.threads import ThreadGate

#: How a call runs attention: decided per call (``"auto"``), or forced.
AttentionMode = Literal["auto", "eager", "sdpa"]

#: Hugging Face attention modules whose own forward (with ``sdpa``) was checked against
#: the Bridge's eager re-implementation: Llama (SmolLM2) and Gemma-3, whose sliding-window
#: layers get their window from the mask the model builds for SDPA.
SDPA_MODULES = frozenset({"LlamaAttention", "Gemma3Attention"})

# The bridge class whose forward the SDPA path replaces (see _sdpa_forward).
_BRIDGE_CLASS = "PositionEmbeddingsAttentionBridge"

# The projections and Gemma's q/k norms: bridges the Hugging Face module calls itself, so
# their hook points fire on the SDPA path too.
_FIRED_PARTS = frozenset({"q", "k", "v", "o", "q_norm", "k_norm"})

# Bridge config flags that route attention through hook points the SDPA path lacks.
_EAGER_FLAGS = ("use_split_qkv_input", "use_attn_in", "use_attn_result")


def attention_path(
    adapter: ModelAdapter,
    hooks: Sequence[tuple[Any, Callable[..., Any]]],
    mode: AttentionMode = "auto",
) -> Literal["eager", "sdpa"]:
    """The attention a trace with ``hooks`` (the hooks it will attach) runs on.

    ``"auto"`` gives ``"sdpa"`` where :func:`sdpa_blocker` finds nothing against it;
    ``"sdpa"`` insists and raises :class:`~jacobian_scopes.errors.ScopeInputError` when it
    cannot be honoured; ``"eager"`` always keeps the model's own attention.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.adapter import ModelAdapter
        >>> from jacobian_scopes.attention import attention_path
        >>> adapter = ModelAdapter(js.load_default_model())
        >>> frozen = [("blocks.0.attn.hook_pattern", lambda x, hook: x.detach())]
        >>> attention_path(adapter, []), attention_path(adapter, frozen)
        ('sdpa', 'eager')
        >>> attention_path(adapter, frozen, "sdpa")
        Traceback (most recent call last):
        ...
        jacobian_scopes.errors.ScopeInputError: attention='sdpa' is not possible here: a hook on ...
    """
    if mode not in ("auto", "eager", "sdpa"):
        raise ScopeInputError(f"attention must be 'auto', 'eager' or 'sdpa', got {mode!r}")
    if mode == "eager":
        return "eager"
    reason = sdpa_blocker(adapter, hooks)
    if reason is None:
        return "sdpa"
    if mode == "sdpa":
        raise ScopeInputError(
            f"attention='sdpa' is not possible here: {reason}. Use attention='auto' (which "
            "falls back to eager attention by itself) or attention='eager'."
        )
    return "eager"


def sdpa_blocker(
    adapter: ModelAdapter, hooks: Sequence[tuple[Any, Callable[..., Any]]]
) -> str | None:
    """Why the SDPA path cannot serve this trace, or None when it can.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.adapter import ModelAdapter
        >>> from jacobian_scopes.attention import sdpa_blocker
        >>> adapter = ModelAdapter(js.load_default_model())
        >>> sdpa_blocker(adapter, [("blocks.0.attn.hook_attn_scores", lambda x, hook: x)])
        'a hook on blocks.0.attn.hook_attn_scores, which only eager attention runs'
    """
    if adapter.kind != "bridge":
        return "HookedTransformer computes attention eagerly (it has no SDPA option)"
    model = adapter.model
    cfg = model.cfg
    for flag in _EAGER_FLAGS:
        if getattr(cfg, flag, False):
            return f"the model's {flag} mode fires hooks only eager attention runs"
    layers = _attention_bridges(model)
    if not layers:
        return "the model has no attention blocks"
    for attn in layers:
        kind = type(attn).__name__
        hf = type(getattr(attn, "original_component", None)).__name__
        if kind != _BRIDGE_CLASS or hf not in SDPA_MODULES:
            return f"its attention ({kind} over {hf}) is not one the SDPA path was checked on"
    if getattr(_hf_config(model), "_attn_implementation", None) is None:
        return "the wrapped model has no attention-implementation setting"
    skipped = _skipped_points(model, layers)
    inside = {name: hp for name, hp in model.hook_dict.items() if id(hp) in skipped}
    for name, hp in inside.items():
        if _has_hooks(hp):
            return f"a hook already on the model at {name}, which only eager attention runs"
    for where, _ in hooks:
        if callable(where):
            hit = next((name for name in inside if where(name)), None)
        else:
            hit = where if where in inside else None
        if hit is not None:
            return f"a hook on {hit}, which only eager attention runs"
    return None


def sdpa_attention(model: Any, gate: ThreadGate | None = None) -> Undoable[None]:
    """Run the Bridge's attention with the Hugging Face module and SDPA for the duration.

    Sets ``_attn_implementation`` on the wrapped model's configs to transformers' SDPA (so
    that its mask is built for SDPA; on CUDA with the key/value heads repeated where that
    lets SDPA use a memory-efficient kernel: see :mod:`jacobian_scopes.sdpa`) and gives each
    attention bridge an instance ``forward`` that fires ``hook_in``, calls the Hugging Face
    module and fires ``hook_out``. Everything is put back on exit, whatever arrives
    meanwhile. Check :func:`sdpa_blocker` first: this context manager does not. With a
    ``gate``, forward passes of other threads meanwhile keep the Bridge's eager attention
    (and their hooks inside it); the masks the model builds for SDPA (none, or boolean) are
    ones it reads correctly.

    Example:
        >>> import torch, jacobian_scopes as js
        >>> from jacobian_scopes.attention import sdpa_attention
        >>> model = js.load_default_model()
        >>> tokens = model.to_tokens("The capital of France is")
        >>> with torch.no_grad():
        ...     eager = model(tokens)
        ...     with sdpa_attention(model):
        ...         sdpa = model(tokens)
        >>> torch.allclose(eager, sdpa, atol=1e-4)
        True
    """
    return Undoable(lambda undo: _use_sdpa(undo, model, gate))


def _use_sdpa(undo: UndoFn, model: Any, gate: ThreadGate | None) -> None:
    configs = list({id(c): c for c in _configs(model)}.values())
    # The raw attributes, not the property: transformers' setter also rewrites sub-configs.
    saved_impl = [(c, key, c.__dict__.get(key, _MISSING)) for c in configs for key in _IMPL_KEYS]
    layers = _attention_bridges(model)
    saved_forward = [(attn, attn.__dict__.get("forward", _MISSING)) for attn in layers]
    name = sdpa.implementation()
    undo(_restore, saved_impl, saved_forward)
    for c in configs:
        c._attn_implementation = name
    for attn in layers:
        # object.__setattr__: the Bridge's __setattr__ forwards attributes to the
        # wrapped module (see checkpointing.checkpointed_blocks).
        object.__setattr__(attn, "forward", _sdpa_forward(attn, gate))


_MISSING = object()
# Where configs keep the setting: a property over the first (transformers 4.4x and 5.x),
# or a plain attribute (older releases).
_IMPL_KEYS = ("_attn_implementation_internal", "_attn_implementation")


def _restore(
    saved_impl: list[tuple[Any, str, Any]], saved_forward: list[tuple[torch.nn.Module, Any]]
) -> None:
    # Idempotent, so that an interrupted pass can simply run again.
    for c, key, value in saved_impl:
        if value is _MISSING:
            c.__dict__.pop(key, None)
        else:
            c.__dict__[key] = value
    for attn, own in saved_forward:
        if own is _MISSING:
            attn.__dict__.pop("forward", None)
        else:
            object.__setattr__(attn, "forward", own)


def _sdpa_forward(attn: Any, gate: ThreadGate | None) -> Callable[..., Any]:
    hf = attn.original_component
    eager = attn.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        if gate is not None and not gate.acting():
            return eager(*args, **kwargs)
        if "hidden_states" in kwargs:
            hidden_states = kwargs.pop("hidden_states")
        else:
            hidden_states, *rest = args
            args = tuple(rest)
        hidden_states = attn.hook_in(hidden_states)
        # The mask built for SDPA, and SDPA's own weights (None): never output_attentions.
        kwargs.pop("output_attentions", None)
        out, weights = hf(hidden_states, *args, **kwargs)
        return attn.hook_out(out), weights

    return forward


def _attention_bridges(model: Any) -> list[Any]:
    return [b.attn for b in getattr(model, "blocks", []) if hasattr(b, "attn")]


def _hf_config(model: Any) -> Any:
    return getattr(getattr(model, "original_model", None), "config", None)


def _configs(model: Any) -> Iterator[Any]:
    """Every Hugging Face config the attention reads ``_attn_implementation`` from."""
    todo = [_hf_config(model)]
    todo += [getattr(attn.original_component, "config", None) for attn in _attention_bridges(model)]
    while todo:
        config = todo.pop()
        if config is None:
            continue
        yield config
        todo += [getattr(config, key, None) for key in getattr(config, "sub_configs", {})]


def _skipped_points(model: Any, layers: list[Any]) -> set[int]:
    """Ids of the hook points inside attention that the SDPA path does not fire."""
    skipped: set[int] = set()
    for attn in layers:
        # The bridge's own hook points and its submodules', not the wrapped module's tree
        # (whose projections are the same bridges, reached here by their own names).
        for name, child in attn.named_children():
            if name in ("hook_in", "hook_out") or name in _FIRED_PARTS:
                continue
            if "original_component" in name:
                continue
            skipped |= {id(m) for m in child.modules() if _is_hook_point(m)}
    return skipped


def _is_hook_point(module: Any) -> bool:
    return type(module).__name__ == "HookPoint"


def _has_hooks(hp: Any) -> bool:
    return bool(
        getattr(hp, "fwd_hooks", None)
        or getattr(hp, "bwd_hooks", None)
        or hp._forward_hooks
        or hp._forward_pre_hooks
        or hp._backward_hooks
    )


__all__ = ["SDPA_MODULES", "AttentionMode", "attention_path", "sdpa_attention", "sdpa_blocker"]

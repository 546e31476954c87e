"""The wrapped Hugging Face model, run on its own when a trace needs nothing of TransformerLens.

The Bridge runs the Hugging Face model through its own components, a Python wrapper and hook
points around every module: 1.2-1.4x the time of the Hugging Face model itself on SmolLM2
from 20 to 1,024 tokens (``benchmarks/bench_bars.py``, "TransformerLens model alone"), more
than a scope adds. The default scope (from the input embeddings to the unembedding's input)
needs only those two activations. When nothing else listens, a trace therefore runs an
unwrapped twin of the Hugging Face model: the same modules' code and the same parameter and
buffer objects (shared, not copied), without the Bridge's wrappers, with SDPA attention. Its
numbers are the Bridge's SDPA path's to float tolerance (tested on both real models and on
random ones).

"Nothing else listens" means all of (:func:`route` says which one failed):

* the trace's attention path is SDPA (:mod:`jacobian_scopes.attention`: a Llama or Gemma-3
  Bridge, no hook inside attention);
* its only source is ``hook_embed``, it explains the final state, and the caller passes
  no hooks (no ``fwd_hooks``, no ``freeze``);
* no hook of any kind is on the model (TransformerLens hooks, torch module hooks, a
  replaced ``forward``, such as accelerate's offloading), since the twin would skip it;
* the Bridge's weights are unprocessed and it is not in compatibility mode (processing
  puts weights in the Bridge's components that the Hugging Face modules do not read).

The twin is built once per model (about 14 ms on SmolLM2) and kept while the model's
modules, parameters and buffers are the same objects; ``model.to(...)``, which replaces
buffers, or a replaced module builds it again.

Example:
    A trace says which path it took, and why not the direct one:

    >>> import jacobian_scopes as js
    >>> from jacobian_scopes.adapter import ModelAdapter
    >>> from jacobian_scopes.engine import Trace
    >>> model = js.load_default_model()
    >>> tokens = model.to_tokens("The capital of France is")
    >>> with Trace(ModelAdapter(model), tokens, sources=["hook_embed"]) as tr:
    ...     tr.direct
    True
    >>> with Trace(ModelAdapter(model), tokens, sources=["blocks.3.hook_resid_pre"]) as tr:
    ...     tr.direct, tr.direct_blocker()
    (False, 'a source other than hook_embed')
"""

from __future__ import annotations

import copy
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from jacobian_scopes import sdpa
from jacobian_scopes.adapter import ModelAdapter
from jacobian_scopes.guard import all_modules

#: The Hugging Face classes whose unwrapped forward was checked against the Bridge's.
CHECKED = frozenset({"LlamaForCausalLM", "Gemma3ForCausalLM"})

_TWINS: weakref.WeakKeyDictionary[Any, tuple[tuple[int, ...], torch.nn.Module]] = (
    weakref.WeakKeyDictionary()
)
_BUILDING = threading.Lock()


def route(
    adapter: ModelAdapter,
    sources: Sequence[str],
    at: str | None,
    caller_hooks: bool,
    attention: str,
) -> tuple[Any, str | None]:
    """``(twin, None)`` when the twin can serve this trace, else ``(None, why not)``.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.adapter import ModelAdapter
        >>> from jacobian_scopes.direct import route
        >>> adapter = ModelAdapter(js.load_default_model())
        >>> twin, why = route(adapter, ["hook_embed"], None, False, "sdpa")
        >>> type(twin).__name__, why
        ('LlamaForCausalLM', None)
        >>> route(adapter, ["hook_embed"], None, True, "sdpa")
        (None, 'hooks of the caller')
    """
    reason = _call_blocker(sources, at, caller_hooks, attention)
    if reason is not None:
        return None, reason
    # One walk over the model's modules serves both the check and the twin's key.
    modules = all_modules(adapter.model)
    reason = _model_blocker(adapter.model, modules)
    if reason is not None:
        return None, reason
    return twin(adapter.model, modules), None


def _call_blocker(
    sources: Sequence[str], at: str | None, caller_hooks: bool, attention: str
) -> str | None:
    if attention != "sdpa":
        return "eager attention"
    if list(sources) != ["hook_embed"]:
        return "a source other than hook_embed"
    if at is not None:
        return "an explanandum other than the final state"
    if caller_hooks:
        return "hooks of the caller"
    return None


def _model_blocker(model: Any, modules: list[torch.nn.Module]) -> str | None:
    hf = getattr(model, "original_model", None)
    if hf is None or type(hf).__name__ not in CHECKED:
        return f"a wrapped {type(hf).__name__}, whose unwrapped forward was not checked"
    if getattr(model, "_weights_processed", False) or getattr(model, "compatibility_mode", False):
        return "processed weights (compatibility mode)"
    if getattr(hf.config, "final_logit_softcapping", None) is not None:
        return "soft-capped logits"
    for module in modules:
        if _listened(module):
            return f"a hook or a replaced forward on the model ({type(module).__name__})"
    return None


def twin(model: Any, modules: list[torch.nn.Module] | None = None) -> Any:
    """The unwrapped twin of the Hugging Face model under a Bridge, built once and reused
    while the model's modules, parameters and buffers are the same objects (``modules``:
    the model's, where the caller has walked them already).

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.direct import twin
        >>> model = js.load_default_model()
        >>> type(twin(model)).__name__, twin(model) is twin(model)
        ('LlamaForCausalLM', True)
        >>> twin(model).lm_head.weight is model.original_model.lm_head.weight
        True
    """
    key = _key(all_modules(model) if modules is None else modules)
    cached = _TWINS.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    with _BUILDING:
        cached = _TWINS.get(model)
        if cached is not None and cached[0] == key:
            return cached[1]
        built = _unwrapped(model.original_model)
        _TWINS[model] = (key, built)
        return built


def forward(twin: Any, tokens: Tensor, tap: Callable[[Tensor, Any], Tensor]) -> Tensor:
    """The unembedding's input ``y`` for ``tokens``, computed by ``twin`` with ``tap`` applied
    to the embeddings, as the Bridge's ``hook_embed`` would (no logits: the caller computes
    them where it reads them, with ``twin.get_output_embeddings()``).

    Example:
        >>> import torch, jacobian_scopes as js
        >>> from jacobian_scopes.direct import forward, twin
        >>> model = js.load_default_model()
        >>> tokens = model.to_tokens("The capital of France is")
        >>> y = forward(twin(model), tokens, lambda x, hook: x)
        >>> logits = twin(model).get_output_embeddings()(y)
        >>> bool(torch.allclose(logits, model(tokens), atol=1e-4)), y.shape
        (True, torch.Size([1, 6, 576]))
    """
    embeddings = tap(twin.get_input_embeddings()(tokens), None)
    out = twin.base_model(inputs_embeds=embeddings, use_cache=False)
    return out.last_hidden_state


def layers(twin: Any) -> list[torch.nn.Module]:
    """The twin's decoder layers, in order: what a long prompt's trace checkpoints
    (:func:`jacobian_scopes.checkpointing.checkpointed_blocks`) in place of the Bridge's
    blocks.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.direct import layers, twin
        >>> len(layers(twin(js.load_default_model())))
        30
    """
    return list(twin.base_model.layers)


def _listened(module: torch.nn.Module) -> bool:
    """Whether running the twin would skip something attached to ``module``."""
    # Read from the instance's __dict__: getattr of a missing name goes through
    # nn.Module.__getattr__, which raised and caught 4,000 times a call (9 ms on SmolLM2).
    attributes = module.__dict__
    if "forward" in attributes:
        return True
    if attributes.get("fwd_hooks") or attributes.get("bwd_hooks"):
        return True  # TransformerLens hooks on a hook point (add_hook, hooks(), run_with_hooks)
    registries = (
        attributes["_forward_hooks"],
        attributes["_forward_pre_hooks"],
        attributes["_backward_hooks"],
        attributes["_backward_pre_hooks"],
    )
    if not any(registries):  # nearly every module: answered without a generator per module
        return False
    return any(not _bridge_machinery(fn) for registry in registries for fn in registry.values())


def _bridge_machinery(fn: Any) -> bool:
    # The Bridge wires torch pre-hooks of its own onto its norms at its first forward pass
    # (BlockBridge._maybe_wire_capture_hooks): they hand activations to hook points such as
    # hook_mlp_in, whose own hooks are checked above, and change nothing else. A hook added
    # through TransformerLens is recorded in the hook point's fwd_hooks/bwd_hooks instead.
    return str(getattr(fn, "__module__", "")).startswith("transformer_lens.")


def _key(modules: list[torch.nn.Module]) -> tuple[int, ...]:
    return (
        *map(id, modules),
        *(id(t) for m in modules for t in m._parameters.values()),
        *(id(t) for m in modules for t in m._buffers.values()),
    )


def _unwrapped(hf: torch.nn.Module) -> torch.nn.Module:
    """A twin of ``hf`` with every Bridge component replaced by the module it wraps.

    Each module is a shallow copy: its own child registry and config, the same parameter and
    buffer tensors. The Bridge sets ``_attn_implementation="eager"`` on the wrapped model's
    config; the twin's configs are copies set to SDPA, the Bridge's left as they are.
    """
    configs: dict[int, Any] = {}

    def config_for(config: Any) -> Any:
        if id(config) not in configs:
            twin_config = copy.deepcopy(config)
            twin_config._attn_implementation = sdpa.implementation()
            for sub in getattr(twin_config, "sub_configs", {}):
                inner = getattr(twin_config, sub, None)
                if inner is not None:
                    inner._attn_implementation = sdpa.implementation()
            configs[id(config)] = twin_config
        return configs[id(config)]

    def unwrap(module: torch.nn.Module) -> torch.nn.Module:
        while hasattr(module, "original_component") and module is not hf:
            inner = module.original_component
            if not isinstance(inner, torch.nn.Module):
                break
            module = inner
        twin = copy.copy(module)  # a new __dict__, so the registries below are the twin's
        twin._parameters = dict(module._parameters)
        twin._buffers = dict(module._buffers)
        twin._modules = OrderedDict(
            (name, None if child is None else unwrap(child))
            for name, child in module._modules.items()
        )
        for hooks in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks"):
            setattr(twin, hooks, OrderedDict())
        twin._backward_pre_hooks = OrderedDict()
        config = twin.__dict__.get("config")
        if config is not None and hasattr(config, "_attn_implementation"):
            twin.config = config_for(config)
        twin.training = False
        return twin

    return unwrap(hf)


__all__ = ["CHECKED", "forward", "layers", "route", "twin"]

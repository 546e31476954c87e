"""Scopes as TransformerLens hook functions, for forward passes you run yourself.

The one-call scopes (:func:`jacobian_scopes.semantic_scope` and friends) attach these
hooks for you. When you want to compose them with your own hooks (an ablation, a patch, a
cache), take :attr:`GradientProbe.fwd_hooks`, run the model however you like, and pull
any scalar back to the sources, the way ``run_with_cache`` gives you activations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from jacobian_scopes.adapter import ModelAdapter
from jacobian_scopes.engine import GradientTap, detach_hook
from jacobian_scopes.errors import ScopeInputError
from jacobian_scopes.options import SourcesLike
from jacobian_scopes.sources import (
    SourceSpec,
    arrange,
    resolve_freeze,
    resolve_sources,
)


class GradientCache(dict[str, Tensor]):
    """Gradients of one scalar with respect to each source, keyed by source name.

    Each value has the activation's shape, (batch, pos, ...). :meth:`scores` and
    :meth:`first_order` reduce them per token in the same layout as a scope result.

    Example:
        Pulling the " Paris" logit back to the input embeddings gives the Semantic scope:

        >>> import torch, jacobian_scopes as js
        >>> model = js.load_default_model()
        >>> tokens = model.to_tokens("The capital of France is")
        >>> probe = js.GradientProbe(model)
        >>> with js.frozen(model), model.hooks(fwd_hooks=probe.fwd_hooks):
        ...     logits = model(tokens)
        ...     grads = probe.backward(logits[0, -1, model.to_single_token(" Paris")])
        >>> list(grads), grads["hook_embed"].shape
        (['hook_embed'], torch.Size([1, 6, 576]))
        >>> r = js.semantic_scope(model, "The capital of France is", " Paris")
        >>> torch.allclose(grads.scores(), r.scores, atol=1e-4)
        True
        >>> torch.allclose(grads.first_order(), r.first_order, atol=1e-4)
        True

        (Equal to float32 rounding, not bit for bit: the scope runs attention with SDPA, the
        forward pass here runs it eagerly; ``attention="eager"`` in the scope makes them equal.)
    """

    def __init__(self, spec: SourceSpec, grads: dict[str, Tensor], values: dict[str, Tensor]):
        super().__init__(grads)
        self.spec = spec
        self._values = values

    def scores(self, batch: int = 0) -> Tensor:
        """``‖∂L/∂a_t‖`` per source and token, laid out like ``ScopeResult.scores``."""
        norms = {k: v[batch].float().norm(dim=-1) for k, v in self.items()}
        return arrange(self.spec, norms)[0]

    def first_order(self, batch: int = 0) -> Tensor:
        """The signed ``⟨a_t, ∂L/∂a_t⟩`` per source and token (see ``ScopeResult.first_order``)."""
        dots = {
            k: (v[batch].float() * self._values[k][batch].float()).sum(-1) for k, v in self.items()
        }
        return arrange(self.spec, dots)[0]


class GradientProbe:
    """Differentiable taps at chosen hook points, as TransformerLens forward hooks.

    ``sources`` takes what the scopes take: None (the input embeddings), hook names, a
    name filter, or a shortcut (``"resid_pre"``, ``"resid_mid"``, ``"resid_post"``,
    ``"attn_out"``, ``"mlp_out"``, ``"z"``). ``freeze`` adds the linearisation hooks
    (``"norm_scale"``, ``"attn_pattern"``). After your forward pass, :meth:`backward` pulls
    any scalar of that pass back to every source at once.

    Example:
        >>> import jacobian_scopes as js
        >>> model = js.load_default_model()
        >>> tokens = model.to_tokens("The capital of France is")
        >>> target = model.to_single_token(" Paris")
        >>> probe = js.GradientProbe(model, sources="resid_pre")
        >>> def ablate(z, hook):
        ...     z[:, :, 5] = 0.0
        >>> hooks = [*probe.fwd_hooks, ("blocks.3.attn.hook_z", ablate)]
        >>> with js.frozen(model), model.hooks(fwd_hooks=hooks):
        ...     logits = model(tokens)
        ...     grads = probe.backward(logits[0, -1, target])
        >>> grads["blocks.2.hook_resid_pre"].shape
        torch.Size([1, 6, 576])
        >>> grads.scores().shape
        torch.Size([30, 6])

    Your hooks may come before or after the probe's in the list: the probe's tap only
    adds a zero, so what matters is the value that flows on, which the tap's gradient
    follows. Freeze the parameters (:func:`jacobian_scopes.frozen`) to spare the memory of
    a parameter graph; nothing is ever written to ``.grad`` either way.
    """

    def __init__(self, model: Any, sources: SourcesLike = None, freeze: Sequence[str] = ()):
        adapter = ModelAdapter(model)
        self.spec = resolve_sources(adapter, sources)
        self.taps = {name: GradientTap(name) for name in dict.fromkeys(self.spec.taps)}
        self.frozen_hooks = resolve_freeze(
            adapter, (freeze,) if isinstance(freeze, str) else freeze
        )

    @property
    def fwd_hooks(self) -> list[tuple[str, Callable[..., Any]]]:
        """``[(hook_name, fn)]`` to pass to ``model.hooks`` or ``run_with_hooks``."""
        frozen = [(name, detach_hook) for name in self.frozen_hooks]
        return [*frozen, *((tap.name, tap) for tap in self.taps.values())]

    def backward(
        self,
        output: Float[Tensor, "..."],
        grad_output: Tensor | None = None,
        retain_graph: bool = False,
    ) -> GradientCache:
        """Gradients of ``output`` (a scalar, or any tensor with ``grad_output``) at each source."""
        names = list(self.taps)
        leaves = [self.taps[name].leaf for name in names]
        missing = [name for name, leaf in zip(names, leaves, strict=True) if leaf is None]
        if missing:
            raise ScopeInputError(
                f"the probe's hooks never fired for {missing}: run the forward pass with "
                "probe.fwd_hooks attached first"
            )
        if not output.requires_grad:
            raise ScopeInputError(
                "the output does not depend on the probe's taps with gradients: was the forward "
                "pass run under torch.no_grad() or inference_mode(), or without probe.fwd_hooks?"
            )
        inputs = [leaf for leaf in leaves if leaf is not None]
        grads = torch.autograd.grad(
            output, inputs, grad_outputs=grad_output, retain_graph=retain_graph, allow_unused=True
        )
        by_tap = {
            name: torch.zeros_like(leaf) if g is None else g
            for name, leaf, g in zip(names, inputs, grads, strict=True)
        }
        pairs = list(zip(self.spec.labels, self.spec.taps, strict=True))
        values = {label: self.taps[tap].value for label, tap in pairs}
        return GradientCache(
            self.spec,
            {label: by_tap[tap] for label, tap in pairs},
            {k: v for k, v in values.items() if v is not None},
        )

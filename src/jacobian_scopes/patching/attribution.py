"""Attribution patching: the first-order estimate of activation patching,
``(a_donor − a_base) · ∇_a metric``, for every source cell from one backward pass.

Example:
    >>> import jacobian_scopes as js
    >>> from jacobian_scopes.patching.attribution import attribution_patching
    >>> model = js.load_default_model()
    >>> at = attribution_patching(model, "Alice met Bob. Bob thanked",
    ...                           "Bob met Alice. Alice thanked")
    >>> at.method, float(at.values[:, 0].abs().max())          # BOS: the same in both runs
    ('gradient', 0.0)
"""

from __future__ import annotations

from typing import Any

import torch

from jacobian_scopes.errors import ScopeInputError
from jacobian_scopes.guard import frozen, temporary_hooks
from jacobian_scopes.interrupts import backstop
from jacobian_scopes.options import Prompt, SourcesLike, TargetLike
from jacobian_scopes.patching.prepare import Metric, prepare
from jacobian_scopes.patching.result import PatchingResult, make_result
from jacobian_scopes.probe import GradientProbe


def attribution_patching(
    model: Any,
    clean: Prompt,
    corrupt: Prompt,
    metric: Metric | None = None,
    *,
    target: TargetLike | None = None,
    foil: TargetLike | None = None,
    sources: SourcesLike = "resid_pre",
    direction: str = "denoising",
    position: int = -1,
    prepend_bos: bool | None = None,
) -> PatchingResult:
    """The linear estimate of activation patching: ``(a_donor − a_base) · ∇_a metric``, with
    the gradient taken on the base run (the corrupt run when denoising), for every source
    cell at once, from one backward pass. Same arguments and layout as
    :func:`~jacobian_scopes.patching.activation_patching`.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.patching import attribution_patching
        >>> model = js.load_default_model()
        >>> clean, corrupt = "Alice met Bob. Bob thanked", "Bob met Alice. Alice thanked"
        >>> at = attribution_patching(model, clean, corrupt, target=" Alice", foil=" Bob",
        ...                           sources="z")
        >>> at.values.shape                                   # (layer, head, position)
        torch.Size([30, 9, 7])
    """
    s = prepare(
        model,
        clean,
        corrupt,
        metric,
        target=target,
        foil=foil,
        sources=sources,
        direction=direction,
        position=position,
        prepend_bos=prepend_bos,
    )
    probe = GradientProbe(model, sources=list(s.spec.labels))
    with backstop() as net, net(frozen(model)), net(temporary_hooks(model, probe.fwd_hooks)):
        logits = model(s.base)
        out = torch.as_tensor(s.metric(logits))
        if out.numel() != 1:
            raise ScopeInputError(f"the metric must return a scalar, got shape {tuple(out.shape)}")
        if not out.requires_grad:
            raise ScopeInputError(
                "the metric does not depend on the logits with gradients (is it detached?)"
            )
        grads = probe.backward(out.reshape(()))
    per_label = {}
    for label in s.spec.labels:
        delta = (s.donor_acts[label] - s.base_acts[label]).float()
        per_label[label] = (delta * grads[label].float())[0].sum(-1)
    return make_result(s, "attribution", per_label, "gradient")

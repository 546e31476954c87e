"""What activation and attribution patching share: their arguments checked, the two
unpatched runs, and the metric.

:func:`prepare` turns the arguments both patchings take (two prompts, a metric or a
target and foil, sources, direction, position) into a :class:`Setup`: the token ids of
both runs, which one is patched (the *base*) and which one gives the activations (the
*donor*), both runs' activations at every source, and the metric with its value on the two
unpatched runs.

Example:
    >>> import jacobian_scopes as js
    >>> from jacobian_scopes.patching.prepare import prepare
    >>> model = js.load_default_model()
    >>> s = prepare(model, "Alice met Bob. Bob thanked", "Bob met Alice. Alice thanked",
    ...             target=" Alice", foil=" Bob")
    >>> s.clean_value, s.corrupt_value, s.params
    (1.0, 0.0, {'direction': 'denoising', 'sources': 'resid_pre'})
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from jacobian_scopes.adapter import ModelAdapter
from jacobian_scopes.errors import ScopeInputError
from jacobian_scopes.guard import frozen, temporary_hooks
from jacobian_scopes.inputs import resolve_position, resolve_tokens, single_token
from jacobian_scopes.interrupts import backstop
from jacobian_scopes.options import Prompt, SourcesLike, TargetLike
from jacobian_scopes.sources import SourceSpec, resolve_sources

Metric = Callable[[Tensor], Any]
DIRECTIONS = ("denoising", "noising")


@dataclass
class Setup:
    """Both runs of a patching call, ready to patch.

    ``base`` is the run that is patched and ``donor`` the run the patched-in activations
    come from (corrupt and clean when denoising); ``donor_acts`` and ``base_acts`` hold
    each source's activation, keyed by the label asked for, shape (1, pos, ...). ``params``
    are the call's arguments that a result records.
    """

    adapter: ModelAdapter
    spec: SourceSpec
    base: Tensor  # (1, pos)
    donor: Tensor  # (1, pos)
    clean: Tensor
    corrupt: Tensor
    position: int
    donor_acts: dict[str, Tensor]
    base_acts: dict[str, Tensor]
    metric: Metric
    metric_name: str
    clean_value: float
    corrupt_value: float
    target: str | None
    foil: str | None
    raw_clean: float | None
    raw_corrupt: float | None
    target_id: int | None
    foil_id: int | None
    params: dict[str, Any]


def prepare(
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
) -> Setup:
    """Check the arguments of a patching call and run both prompts once (no gradients),
    keeping every source's activation. The arguments are those of
    :func:`~jacobian_scopes.patching.activation_patching`.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.patching.prepare import prepare
        >>> model = js.load_default_model()
        >>> s = prepare(model, "Alice met Bob. Bob thanked", "Bob met Alice. Alice thanked",
        ...             sources="z", direction="noising")
        >>> s.target, s.foil                  # the clean and the corrupt run's top predictions
        (' me', ' Alice')
        >>> s.donor_acts["blocks.0.attn.hook_z"].shape       # noising: from the corrupt run
        torch.Size([1, 7, 9, 64])
    """
    if direction not in DIRECTIONS:
        raise ScopeInputError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    adapter = ModelAdapter(model)
    clean_t = resolve_tokens(adapter, clean, prepend_bos)
    corrupt_t = resolve_tokens(adapter, corrupt, prepend_bos)
    if clean_t.shape != corrupt_t.shape:
        raise ScopeInputError(
            "clean and corrupt prompts must have the same number of tokens (patching swaps "
            f"activations position by position): clean has {clean_t.shape[1]} "
            f"{adapter.to_str_tokens(clean_t[0])}, corrupt has {corrupt_t.shape[1]} "
            f"{adapter.to_str_tokens(corrupt_t[0])}"
        )
    pos = resolve_position(clean_t.shape[1], position)
    if sources is None:
        raise ScopeInputError(
            "patching needs sources with a layer axis: 'resid_pre', 'z' or hook names"
        )
    spec = resolve_sources(adapter, sources)
    for label, tap in zip(spec.labels, spec.taps, strict=True):
        if label != tap:
            # A gradient at the tap equals the gradient at the label, but the activations
            # differ, so a patch there would not be a patch of what was asked for.
            raise ScopeInputError(
                f"{label!r} cannot be patched on this model class (its hook sits on a branch "
                "only the MLP reads); patch resid_pre, resid_post, attn_out or mlp_out"
            )
    labels = list(spec.labels)
    clean_logits, clean_acts = capture(model, clean_t, labels)
    corrupt_logits, corrupt_acts = capture(model, corrupt_t, labels)

    target_s = foil_s = None
    raw_clean = raw_corrupt = None
    target_id = foil_id = None
    if metric is None:
        target_id = (
            int(clean_logits[0, pos].argmax())
            if target is None
            else single_token(adapter, target, "target")
        )
        foil_id = (
            int(corrupt_logits[0, pos].argmax())
            if foil is None
            else single_token(adapter, foil, "foil")
        )
        if target_id == foil_id:
            raise ScopeInputError(
                "target and foil are the same token; give target= and foil= (e.g. ' Mary' and "
                "' John') or your own metric"
            )
        raw_clean = float(clean_logits[0, pos, target_id] - clean_logits[0, pos, foil_id])
        raw_corrupt = float(corrupt_logits[0, pos, target_id] - corrupt_logits[0, pos, foil_id])
        if abs(raw_clean - raw_corrupt) < 1e-6:
            raise ScopeInputError(
                "the clean and corrupt runs give the same logit difference "
                f"({raw_clean:.4g}): there is nothing for patching to recover; choose a "
                "corruption that changes the answer, or pass metric="
            )
        target_s = adapter.to_str_tokens(torch.tensor([target_id]))[0]
        foil_s = adapter.to_str_tokens(torch.tensor([foil_id]))[0]
        metric = logit_diff_metric(target_id, foil_id, pos, raw_clean, raw_corrupt)
        name = f"logit difference {target_s!r} − {foil_s!r}, normalised (corrupt 0, clean 1)"
    else:
        if not callable(metric):
            raise ScopeInputError(f"metric must be a function of the logits, got {metric!r}")
        if target is not None or foil is not None:
            raise ScopeInputError("give either metric= or target=/foil=, not both")
        name = getattr(metric, "__name__", "metric")
    clean_value = scalar(metric(clean_logits), "the metric")
    corrupt_value = scalar(metric(corrupt_logits), "the metric")
    denoise = direction == "denoising"
    return Setup(
        adapter=adapter,
        spec=spec,
        base=corrupt_t if denoise else clean_t,
        donor=clean_t if denoise else corrupt_t,
        clean=clean_t,
        corrupt=corrupt_t,
        position=pos,
        donor_acts=clean_acts if denoise else corrupt_acts,
        base_acts=corrupt_acts if denoise else clean_acts,
        metric=metric,
        metric_name=name,
        clean_value=clean_value,
        corrupt_value=corrupt_value,
        target=target_s,
        foil=foil_s,
        raw_clean=raw_clean,
        raw_corrupt=raw_corrupt,
        target_id=target_id,
        foil_id=foil_id,
        params={"direction": direction, "sources": sources},
    )


def logit_diff_metric(
    target_id: int, foil_id: int, position: int, clean: float, corrupt: float
) -> Metric:
    """The indirect-object metric: ``(ld − corrupt) / (clean − corrupt)`` where ``ld`` is
    ``logit[target] − logit[foil]`` at ``position``; one value per batch row is averaged.

    Example:
        >>> import torch
        >>> from jacobian_scopes.patching import logit_diff_metric
        >>> m = logit_diff_metric(1, 0, -1, clean=3.0, corrupt=-1.0)
        >>> float(m(torch.tensor([[[0.0, 1.0]]])))
        0.5
    """

    def metric(logits: Tensor) -> Tensor:
        ld = logits[:, position, target_id] - logits[:, position, foil_id]
        return ((ld - corrupt) / (clean - corrupt)).mean()

    metric.__name__ = "normalised_logit_diff"
    return metric


def scalar(value: Any, what: str) -> float:
    """``value`` as a float, or a clear error naming ``what`` returned a non-scalar.

    Example:
        >>> import torch
        >>> from jacobian_scopes.patching.prepare import scalar
        >>> scalar(torch.tensor([2.5]), "the metric")
        2.5
    """
    t = torch.as_tensor(value)
    if t.numel() != 1:
        raise ScopeInputError(f"{what} must return a scalar, got shape {tuple(t.shape)}")
    return float(t)


def capture(model: Any, tokens: Tensor, names: list[str]) -> tuple[Tensor, dict[str, Tensor]]:
    """Logits and the named activations of one run (no gradients; hooks removed after).

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.patching.prepare import capture
        >>> model = js.load_default_model()
        >>> logits, acts = capture(model, model.to_tokens("Hi there"), ["blocks.0.hook_resid_pre"])
        >>> logits.shape[:2], acts["blocks.0.hook_resid_pre"].shape
        (torch.Size([1, 3]), torch.Size([1, 3, 576]))
    """
    acts: dict[str, Tensor] = {}

    def keep(name: str) -> Callable[[Tensor, Any], None]:
        # Keyed by the name asked for: the Bridge fires aliases under other names.
        def hook_fn(tensor: Tensor, hook: Any) -> None:
            acts[name] = tensor.detach().clone()

        return hook_fn

    hooks = [(n, keep(n)) for n in names]
    with backstop() as net, net(frozen(model)), torch.no_grad(), net(temporary_hooks(model, hooks)):
        logits = model(tokens)
    missing = [n for n in names if n not in acts]
    if missing:
        raise ScopeInputError(f"these hooks never fired on this model: {missing}")
    return logits.detach(), acts

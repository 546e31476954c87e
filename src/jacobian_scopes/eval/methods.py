"""Attribution methods as the faithfulness evaluation sees them: named score functions.

A :class:`Method` wraps ``fn(model, tokens, target) -> scores``: ``tokens`` is a (1, pos)
LongTensor, ``target`` the id of the explained next token (by default the model's own
top-1, the token whose log-probability the deletion metrics measure), and ``scores`` one
number per token (higher = more important). One computation may yield several named score
vectors (``variants``), e.g. the signed and the norm-reduced integrated gradients.

:func:`default_methods` lists what the benchmark compares: the three scopes with their
defaults, every baseline of :mod:`jacobian_scopes.baselines`, and a random order.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from jacobian_scopes.errors import ScopeInputError
from jacobian_scopes.eval import baselines
from jacobian_scopes.results import ScopeResult, ScopeResults
from jacobian_scopes.scopes import fisher_scope, semantic_scope, temperature_scope

Output = Tensor | ScopeResult
ScoreFn = Callable[[Any, Tensor, int], Output | Mapping[str, Output]]


@dataclass(frozen=True)
class Method:
    """A named attribution method for :mod:`jacobian_scopes.evaluate`.

    ``fn`` returns a score tensor (or a :class:`ScopeResult`), or, when ``variants`` are
    declared, a mapping from every name in :attr:`outputs` to one. ``leave_one_out=True``
    marks a method whose scores are exactly the leave-one-out drop of log p(target) with
    the embedding zeroed: the evaluation computes those rows anyway for its LOO reference,
    so it reuses them instead of calling ``fn`` (which stays the standalone definition).
    ``ignores_position=True`` marks scores that explain no prediction (a random order): the
    evaluation then gives ``fn`` every token of the passage, even those after the explained
    position (under ``protocol="paper"``, the passage's last token), so that all of them
    can be drawn, as in the authors' random deletion. The name identifies the method in a
    results file: rename it when you change it.

    Example:
        >>> import torch
        >>> from jacobian_scopes.eval.methods import Method
        >>> m = Method("saliency", lambda model, tokens, target: torch.ones(tokens.shape[1]))
        >>> m.outputs
        ('saliency',)
    """

    name: str
    fn: ScoreFn
    variants: tuple[str, ...] = ()
    leave_one_out: bool = False
    ignores_position: bool = False

    @property
    def outputs(self) -> tuple[str, ...]:
        return (self.name, *self.variants)


def method_scores(
    method: Method, model: Any, tokens: Tensor, target: int
) -> dict[str, tuple[Tensor, dict[str, Any]]]:
    """Call ``method`` and check what it returns: ``{output name: (scores (pos,), info)}``.

    ``info`` keeps what a :class:`ScopeResult` reports beyond its scores that the
    evaluation records (integrated gradients' completeness gap).

    Example:
        >>> import torch
        >>> from jacobian_scopes.eval.methods import Method, method_scores
        >>> m = Method("ones", lambda model, tokens, target: torch.ones(tokens.shape[1]))
        >>> method_scores(m, None, torch.tensor([[0, 5, 6]]), 0)["ones"][0]
        tensor([1., 1., 1.])
    """
    out = method.fn(model, tokens, target)
    if isinstance(out, Mapping):
        named = dict(out)
        if set(named) != set(method.outputs):
            raise ScopeInputError(
                f"method {method.name!r} returned {sorted(named)}, expected {list(method.outputs)}"
            )
    elif method.variants:
        raise ScopeInputError(f"method {method.name!r} declares variants but returned one output")
    else:
        named = {method.name: out}
    n = tokens.shape[-1]
    checked = {}
    for name in method.outputs:
        value, info = named[name], {}
        if isinstance(value, ScopeResult):
            if "completeness" in value.params:
                info["completeness"] = value.params["completeness"]
            value = value.token_scores()
        scores = torch.as_tensor(value).detach().float().cpu().reshape(-1)
        if scores.numel() != n:
            raise ScopeInputError(f"method {name!r} gave {scores.numel()} scores for {n} tokens")
        if not torch.isfinite(scores).all():
            raise ScopeInputError(f"method {name!r} gave NaN or inf scores")
        checked[name] = (scores, info)
    return checked


def random_method(seed: int = 0, name: str = "random") -> Method:
    """Uniform random scores: a random deletion order.

    The draw depends only on ``seed`` and the prompt's tokens, so a resumed or repeated run
    gives the same order for the same passage.

    Example:
        >>> import torch
        >>> from jacobian_scopes.eval.methods import random_method
        >>> r = random_method(seed=1)
        >>> toks = torch.tensor([[0, 5, 6]])
        >>> torch.equal(r.fn(None, toks, 0), r.fn(None, toks, 0))
        True
    """

    def fn(model: Any, tokens: Tensor, target: int) -> Tensor:
        key = zlib.crc32(tokens.detach().cpu().numpy().tobytes())
        g = torch.Generator().manual_seed((seed * 1_000_003 + key) % (2**63))
        return torch.rand(tokens.shape[-1], generator=g)

    return Method(name, fn, ignores_position=True)


def _one(result: ScopeResult | ScopeResults) -> ScopeResult:
    assert isinstance(result, ScopeResult)
    return result


def _two_ways(result: ScopeResult, name: str) -> dict[str, Output]:
    """The signed per-token sum and the L2 norm of ``result.vectors`` (pos, d)."""
    assert isinstance(result.vectors, Tensor)  # input embeddings: one (pos, d) tensor
    return {name: result, f"{name}_norm": result.vectors.norm(dim=-1)}


def default_methods(
    *,
    ig_steps: int = 16,
    ig_baseline: baselines.IGBaseline = "zero",
    fisher_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
    include_token_occlusion: bool = False,
    internal_batch_size: int = 8,
) -> list[Method]:
    """The scopes and baselines the faithfulness benchmark compares (random excluded: the
    evaluation adds it).

    * ``semantic`` (raw logit of the target, the paper's default), ``temperature``,
      ``fisher`` (the sketch with 8 eigen-directions and 8 probes, within about 10 % of
      the exact trace, where the scope's one-probe default is within about 50 %: the study
      measures the Fisher score, not one probe's noise; ``fisher_kwargs`` overrides it and
      ``seed`` fixes the probes);
    * ``gradient_norm`` (‖∂ log p/∂x_t‖), ``input_x_gradient`` (signed) and
      ``input_x_gradient_norm`` (‖x_t ⊙ ∇‖, the authors' variant),
      ``integrated_gradients`` (signed, ``ig_steps`` Gauss–Legendre nodes, zero baseline)
      and ``integrated_gradients_norm``;
    * ``attention_last``, ``attention_rollout``;
    * ``occlusion`` (leave-one-out drop of log p, embedding zeroed) and, if asked,
      ``occlusion_token`` (token replaced by pad/unk/eos).

    Example:
        >>> from jacobian_scopes.eval.methods import default_methods
        >>> [m.name for m in default_methods()][:3]
        ['semantic', 'temperature', 'fisher']
    """
    fisher_opts = {"seed": seed, "rank": 8, "n_probes": 8, **(fisher_kwargs or {})}

    def ig(model: Any, tokens: Tensor, target: int) -> dict[str, Output]:
        r = baselines.integrated_gradients(
            model,
            tokens,
            target,
            n_steps=ig_steps,
            baseline=ig_baseline,
            internal_batch_size=internal_batch_size,
            return_vectors=True,
        )
        return _two_ways(r, "integrated_gradients")

    def ixg(model: Any, tokens: Tensor, target: int) -> dict[str, Output]:
        r = baselines.input_x_gradient(model, tokens, target, return_vectors=True)
        return _two_ways(r, "input_x_gradient")

    methods = [
        # ``t`` is one prompt's (1, pos) ids: each scope gives one ScopeResult.
        Method("semantic", lambda m, t, y: _one(semantic_scope(m, t, y))),
        Method("temperature", lambda m, t, y: _one(temperature_scope(m, t))),
        Method("fisher", lambda m, t, y: _one(fisher_scope(m, t, **fisher_opts))),
        Method("gradient_norm", lambda m, t, y: baselines.gradient_norm(m, t, y)),
        Method("input_x_gradient", ixg, variants=("input_x_gradient_norm",)),
        Method("integrated_gradients", ig, variants=("integrated_gradients_norm",)),
        Method("attention_last", lambda m, t, y: baselines.attention(m, t)),
        Method("attention_rollout", lambda m, t, y: baselines.attention(m, t, method="rollout")),
        Method(
            "occlusion",
            lambda m, t, y: baselines.occlusion(m, t, y, internal_batch_size=internal_batch_size),
            leave_one_out=True,
        ),
    ]
    if include_token_occlusion:
        methods.append(
            Method(
                "occlusion_token",
                lambda m, t, y: baselines.occlusion(
                    m, t, y, replace="token", internal_batch_size=internal_batch_size
                ),
            )
        )
    return methods


MethodLike = Method | str


def resolve_methods(
    methods: Sequence[MethodLike] | None, *, seed: int = 0, **defaults: Any
) -> list[Method]:
    """Methods given as :class:`Method` objects or by name (``"semantic"``, ``"fisher"``,
    ``"random"``, a variant such as ``"input_x_gradient_norm"``…); ``None``: every default.

    A variant's name selects the method that computes it. Names are looked up in
    :func:`default_methods` (``seed`` and ``defaults`` are passed to it).

    Example:
        >>> from jacobian_scopes.eval.methods import resolve_methods
        >>> [m.name for m in resolve_methods(["semantic", "random"])]
        ['semantic', 'random']
        >>> [m.name for m in resolve_methods(["input_x_gradient_norm"])]
        ['input_x_gradient']
    """
    known = default_methods(seed=seed, **defaults)
    if methods is None:
        return known
    if isinstance(methods, (str, Method)):
        methods = [methods]
    by_output = {o: m for m in known for o in m.outputs}
    out: list[Method] = []
    for m in methods:
        if isinstance(m, Method):
            out.append(m)  # as given: the evaluation refuses two methods of one name
            continue
        if isinstance(m, str) and m == "random":
            chosen = random_method(seed)
        elif isinstance(m, str) and m in by_output:
            chosen = by_output[m]
        else:
            names = sorted([*by_output, "random"])
            raise ScopeInputError(f"unknown method {m!r}; give a Method or one of {names}")
        if chosen not in out:  # a method and its variant name the same computation
            out.append(chosen)
    return out

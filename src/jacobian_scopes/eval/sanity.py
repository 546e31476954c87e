"""The model-randomisation sanity check of Adebayo et al. (2018), cascading from the top.

An attribution that explains the *model* must change when the model's learned weights are
destroyed. The check re-initialises the weights of a deep copy step by step, from the output
side down: the unembedding and final norm, then the blocks from the last to the first
(``stride`` at a time), then (optionally) the embeddings. After each step every method is
recomputed for the same prompts and the same target token (the original model's top-1,
held fixed), and Spearman's ρ with the original scores is recorded. ρ near 1 after the
weights are gone means the method does not depend on them.

Re-initialisation draws every entry of a parameter i.i.d. from a normal distribution with
that parameter's own mean and standard deviation: learned structure is destroyed while each
tensor keeps its scale, so activations stay finite in a deep model and a norm's gain does not
become constant (which would make the Temperature scope undefined). Parameters shared with
weights not yet randomised (tied embeddings) are untied in the copy, so each step changes
exactly what it names. The user's model is never modified: everything runs on the copy.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from jacobian_scopes.adapter import ModelAdapter, copy_model
from jacobian_scopes.errors import ScopeInputError
from jacobian_scopes.eval import perturb, stats
from jacobian_scopes.eval.methods import MethodLike, default_methods, method_scores, resolve_methods
from jacobian_scopes.eval.passages import Passage, as_passages
from jacobian_scopes.inputs import resolve_tokens
from jacobian_scopes.options import Prompt
from jacobian_scopes.progress import progress


@dataclass
class RandomisationResult:
    """Spearman ρ between original and randomised scores, per step, method and prompt.

    ``per_prompt`` has columns ``step`` (0 = original), ``randomised`` (what the step
    re-initialised), ``method``, ``passage`` and ``spearman``.

    Example:
        >>> import pandas as pd
        >>> from jacobian_scopes.eval.sanity import RandomisationResult
        >>> res = RandomisationResult(pd.DataFrame({
        ...     "step": [0, 0, 1, 1], "randomised": ["none", "none", "unembed", "unembed"],
        ...     "method": ["semantic"] * 4, "passage": ["0:a", "1:b", "0:a", "1:b"],
        ...     "spearman": [1.0, 1.0, 0.25, 0.75]}))
        >>> res.summary()[["randomised", "method", "spearman", "n"]]
          randomised    method  spearman  n
        0       none  semantic       1.0  2
        1    unembed  semantic       0.5  2
    """

    per_prompt: pd.DataFrame

    def summary(self, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
        """Mean ρ (and its 95% bootstrap interval) per step and method."""
        rows = []
        keys = ["step", "randomised", "method"]
        for (step, what, method), group in self.per_prompt.groupby(keys, sort=False):
            mean, low, high = stats.bootstrap_ci(group["spearman"], n_boot=n_boot, seed=seed)
            rows.append(
                {
                    "step": step,
                    "randomised": what,
                    "method": method,
                    "spearman": mean,
                    "low": low,
                    "high": high,
                    "n": int(group["spearman"].notna().sum()),
                }
            )
        return pd.DataFrame(rows)

    def table(self) -> pd.DataFrame:
        """Mean ρ as a step × method table (rows in cascade order)."""
        wide = self.per_prompt.pivot_table(
            index=["step", "randomised"], columns="method", values="spearman", sort=False
        )
        return wide.sort_index(level="step")


def cascade(model: Any, stride: int = 1, include_embed: bool = True) -> list[tuple[str, list[Any]]]:
    """The modules re-initialised at each step, output side first: ``[(label, modules)]``.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.eval.sanity import cascade
        >>> [label for label, _ in cascade(js.load_default_model(), stride=2)]
        ['unembed', 'blocks.28-29', ..., 'blocks.0-1', 'embed']
    """
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ScopeInputError(f"stride must be a positive int, got {stride!r}")
    adapter = ModelAdapter(model)
    top = [m for m in (getattr(model, "unembed", None), getattr(model, "ln_final", None)) if m]
    steps: list[tuple[str, list[Any]]] = [("unembed", top)]
    for hi in range(adapter.n_layers - 1, -1, -stride):
        lo = max(0, hi - stride + 1)
        label = f"blocks.{hi}" if lo == hi else f"blocks.{lo}-{hi}"
        steps.append((label, [model.blocks[i] for i in range(lo, hi + 1)]))
    if include_embed:
        embed = [m for m in (getattr(model, "embed", None), getattr(model, "pos_embed", None)) if m]
        steps.append(("embed", embed))
    return steps


def _draw(p: Tensor, generator: torch.Generator) -> Tensor:
    data = p.detach().float().cpu()
    if data.numel() < 2:
        return p.detach().clone()
    noise = torch.randn(data.shape, generator=generator)
    return (data.mean() + data.std() * noise).to(dtype=p.dtype, device=p.device)


def reinitialise(modules: Iterable[Any], generator: torch.Generator) -> int:
    """Replace every parameter of ``modules`` by fresh draws (see module doc); returns how
    many were replaced. New ``Parameter`` objects are installed, which unties any weight
    shared with a module outside ``modules``.

    Example:
        A weight tied to a module outside the list is untied, and keeps its values there:

        >>> import torch
        >>> from jacobian_scopes.eval.sanity import reinitialise
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
        >>> net[1].weight = net[0].weight
        >>> before = net[0].weight.detach().clone()
        >>> reinitialise([net[0]], torch.Generator().manual_seed(0))
        2
        >>> torch.equal(net[0].weight, before), torch.equal(net[1].weight, before)
        (False, True)
    """
    fresh: dict[int, torch.nn.Parameter] = {}
    for module in modules:
        for sub in module.modules():
            for name, p in list(sub._parameters.items()):
                if p is None:
                    continue
                if id(p) not in fresh:
                    fresh[id(p)] = torch.nn.Parameter(_draw(p, generator), p.requires_grad)
                sub._parameters[name] = fresh[id(p)]
    return len(fresh)


def randomisation_check(
    model: Any,
    prompts: Iterable[Prompt | Passage],
    methods: Sequence[MethodLike] | None = None,
    *,
    stride: int = 1,
    include_embed: bool = True,
    include_bos: bool = False,
    seed: int = 0,
    verbose: bool = True,
) -> RandomisationResult:
    """Cascading model randomisation (Adebayo et al., 2018) on a deep copy of ``model``.

    Args:
        model: a HookedTransformer or TransformerBridge (left untouched).
        prompts: texts, token ids or :class:`~jacobian_scopes.passages.Passage` objects.
        methods: :class:`~jacobian_scopes.eval.methods.Method` objects or names (default: the three
            scopes, gradient norm, input × gradient and attention).
        stride: blocks re-initialised per step.
        include_embed: end with the embeddings (then even input × gradient must change).
        include_bos: rank BOS too when correlating (off, as in the deletion metrics).
        seed: seeds the re-initialisation.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.eval.sanity import randomisation_check
        >>> model = js.load_default_model()
        >>> res = randomisation_check(model, ["The capital of France is"], ["semantic"],
        ...                           stride=30, include_embed=False, verbose=False)
        >>> res.table().round(1)
        method            semantic
        step randomised
        0    none              1.0
        1    unembed           0.9
        2    blocks.0-29       0.7
    """
    if methods is None:
        keep = {"semantic", "temperature", "fisher", "gradient_norm", "input_x_gradient"}
        keep |= {"attention_last", "attention_rollout"}
        methods = [m for m in default_methods(seed=seed) if m.name in keep]
    methods = resolve_methods(methods, seed=seed)
    passages = as_passages(prompts)
    work = copy_model(model)
    adapter = ModelAdapter(work)
    steps = cascade(work, stride, include_embed)
    inputs = []
    for p in passages:
        tokens = resolve_tokens(adapter, p.prompt)
        target = int(perturb.logits_at(adapter, tokens, -1)[0].argmax())
        keep_from = 0 if include_bos or not perturb.starts_with_bos(work, tokens) else 1
        inputs.append((str(p.key), tokens, target, keep_from))

    def scores_now() -> dict[tuple[str, str], Tensor]:
        out = {}
        for key, tokens, target, keep_from in inputs:
            for method in methods:
                for name, (scores, _) in method_scores(method, work, tokens, target).items():
                    out[(key, name)] = scores[keep_from:]
        return out

    generator = torch.Generator().manual_seed(seed)
    rows = []
    bar = progress(total=len(steps) + 1, desc="randomisation", verbose=verbose)
    original = scores_now()
    bar.update()
    for step, (label, modules) in enumerate([("none", []), *steps]):
        if step > 0:
            if reinitialise(modules, generator) == 0:
                raise ScopeInputError(f"step {label!r} found no parameters to re-initialise")
            now = scores_now()
            bar.update()
        else:
            now = original
        for (key, name), scores in now.items():
            rho = stats.spearman(original[(key, name)].numpy(), scores.numpy())
            rows.append(
                {"step": step, "randomised": label, "method": name, "passage": key, "spearman": rho}
            )
    bar.close()
    return RandomisationResult(pd.DataFrame(rows))

"""The attribution baselines the scopes are compared with, under the scopes' API.

Every function takes ``(model, prompt, target, ...)`` and returns a
:class:`~jacobian_scopes.results.ScopeResult` with one score per prompt token. What each
one explains by default (``target=None`` means the model's own top-1 next token at
``position``, the token whose log-probability the deletion AOPC measures):

=========================  ==============================  ===================================
function                   explains (default)              score of token t
=========================  ==============================  ===================================
:func:`attention`          nothing (no target)             last-layer attention of ``position``
                                                           to t, mean over heads; or rollout
:func:`gradient_norm`      log p(target)                   ``‖∂ log p/∂x_t‖`` (= Semantic scope,
                                                           ``mode="logprob"``)
:func:`input_x_gradient`   log p(target)                   ``Σ_i x_ti ∂f/∂x_ti`` (signed)
:func:`integrated_gradients`  log p(target)                ``Σ_i (x−x')_ti ∫ ∂f/∂x_ti dα``
                                                           (signed; zero baseline)
:func:`occlusion`          log p(target)                   ``f(x) − f(x without t)``
                                                           (embedding zeroed)
=========================  ==============================  ===================================

``mode="logit"`` explains the raw logit instead (what the paper's Semantic scope uses).
Signed scores (input × gradient, IG, occlusion) are positive where a token *supports* the
target; ``reduce="norm"`` gives the unsigned L2 norm over the embedding dimensions, as in
the authors' code. ``result.vectors`` holds the per-dimension attributions when asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any, Literal, get_args

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from jacobian_scopes.adapter import EMBED_HOOK, ModelAdapter
from jacobian_scopes.call import Call, build_result, prepare
from jacobian_scopes.engine import Trace
from jacobian_scopes.errors import ScopeInputError
from jacobian_scopes.eval import perturb
from jacobian_scopes.guard import frozen, temporary_hooks
from jacobian_scopes.inputs import single_token
from jacobian_scopes.interrupts import backstop
from jacobian_scopes.options import HookList, Prompt, TargetLike
from jacobian_scopes.results import ScopeResult, Target
from jacobian_scopes.scopes import semantic_scope
from jacobian_scopes.threads import ThreadGate

ExplainedMode = Literal["logprob", "logit"]
Reduce = Literal["sum", "norm"]
Quadrature = Literal["gausslegendre", "geometric", "trapezoid", "riemann_middle", "riemann_right"]
Measure = Literal["logprob", "logit", "prob", "kl"]
Replace = Literal["zero", "token"]
AttentionMethod = Literal["last", "rollout"]
IGBaseline = Literal["zero", "token"]

MODES: tuple[str, ...] = get_args(ExplainedMode)
REDUCTIONS = ("sum", "norm")
QUADRATURES: tuple[str, ...] = get_args(Quadrature)
GEOMETRIC_EDGES = (1e-3, 1e-2, 1e-1)
MEASURES: tuple[str, ...] = get_args(Measure)


# ---------------------------------------------------------------------------- helpers
def _check(name: str, value: object, allowed: Sequence[object]) -> None:
    if value not in allowed:
        raise ScopeInputError(f"{name} must be one of {tuple(allowed)}, got {value!r}")


def _call(model: Any, prompt: Prompt, position: int, prepend_bos: bool | None, hooks: Any) -> Call:
    options = {"position": position, "prepend_bos": prepend_bos, "fwd_hooks": hooks}
    return prepare(model, [prompt], options)[0]


def _target(adapter: ModelAdapter, target: TargetLike | None, logits_row: Tensor) -> int:
    """The explained token: the given one, or the model's top-1 prediction."""
    if target is None:
        return int(logits_row.argmax())
    return single_token(adapter, target)


def _target_info(adapter: ModelAdapter, target_id: int, mode: str) -> Target:
    return Target(
        ids=[target_id], tokens=adapter.to_str_tokens(torch.tensor([target_id])), mode=mode
    )


def _explained(logits_row: Tensor, target_id: int, mode: str) -> Tensor:
    """f per row: log p(target) or the raw logit."""
    if mode == "logit":
        return logits_row[..., target_id].float()
    return torch.log_softmax(logits_row.float(), dim=-1)[..., target_id]


def _finish(
    call: Call,
    scope: str,
    scores: Tensor,
    logits_row: Tensor,
    params: dict[str, Any],
    target: Target | None = None,
    vectors: Tensor | None = None,
) -> ScopeResult:
    label = call.spec.labels[0]
    return build_result(
        call,
        scope,
        {label: scores.float()},
        logits_row,
        [call.position],
        params,
        target=target,
        vectors=None if vectors is None else vectors.detach().float().cpu(),
    )


def replacement_token(adapter: ModelAdapter, replacement: TargetLike | None) -> int:
    """The token used for "token replaced": the given one, else pad, unk or eos.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.adapter import ModelAdapter
        >>> from jacobian_scopes.eval.baselines import replacement_token
        >>> replacement_token(ModelAdapter(js.load_default_model()), None)
        2
    """
    if replacement is not None:
        return single_token(adapter, replacement, what="replacement")
    tok = getattr(adapter.model, "tokenizer", None)
    for attr in ("pad_token_id", "unk_token_id", "eos_token_id"):
        value = getattr(tok, attr, None)
        if value is not None:
            return int(value)
    raise ScopeInputError(
        "this model's tokenizer has no pad, unk or eos token to replace tokens with; "
        "pass replacement= (a token string or id)"
    )


def _gradients(
    call: Call,
    rows: Tensor,
    target: TargetLike | None,
    mode: str,
    hooks: HookList = (),
) -> tuple[Float[Tensor, "batch pos d"], Float[Tensor, "batch pos d"], Tensor, int]:
    """∂f/∂x_t at every row's input embeddings, the embeddings themselves, the logits at the
    explained position and the target id, from one forward and one backward pass."""
    adapter, pos = call.adapter, call.position
    trace = Trace(adapter, rows, [EMBED_HOOK], fwd_hooks=[*call.fwd_hooks, *hooks])
    with backstop() as net, net(trace) as tr:
        logits = tr.logits_at(slice(None), [pos])[:, 0].float()
        target_id = _target(adapter, target, logits[-1])
        W_U = adapter.W_U.float()
        v = W_U[:, target_id].expand(rows.shape[0], -1)  # ∂ logit/∂y
        if mode == "logprob":  # ∂ log p/∂y = w_target − Σ_j p_j w_j, per row
            v = v - torch.softmax(logits, dim=-1) @ W_U.T
        pb = tr.pullback([pos], v[None, :, None, :], keep_vectors=True)
        x = tr.taps[EMBED_HOOK].value
    assert x is not None
    return pb.vectors[EMBED_HOOK][0].float(), x.float(), logits, target_id


def _reduce(attr: Float[Tensor, "pos d"], reduce: str) -> Float[Tensor, " pos"]:
    return attr.sum(-1) if reduce == "sum" else attr.norm(dim=-1)


# -------------------------------------------------------------------------- attention
def attention(
    model: Any,
    prompt: Prompt,
    target: TargetLike | None = None,
    *,
    method: AttentionMethod = "last",
    position: int = -1,
    prepend_bos: bool | None = None,
    fwd_hooks: HookList = (),
) -> ScopeResult:
    """Attention weights of ``position`` to every token, averaged over heads.

    * ``method="last"``: the last layer's attention pattern.
    * ``method="rollout"`` (Abnar & Zuidema, 2020): per layer ``Â = ½(A + I)`` (A averaged over
      heads, the identity standing for the residual stream), rows renormalised, multiplied
      from the first layer up; the score is the row of ``position``.

    Attention does not depend on a target; ``target`` is accepted for a uniform API and
    ignored. Scores sum to 1 over the tokens.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.eval.baselines import attention
        >>> model = js.load_default_model()
        >>> attention(model, "The capital of France is", method="rollout").top(2)
        [(1, 'The', ...), (3, ' of', ...)]
    """
    _check("method", method, ("last", "rollout"))
    call = _call(model, prompt, position, prepend_bos, fwd_hooks)
    adapter = call.adapter
    layers = range(adapter.n_layers) if method == "rollout" else [adapter.n_layers - 1]
    patterns: dict[int, Tensor] = {}

    def grab(layer: int) -> Any:
        def hook(pattern: Tensor, hook: Any) -> None:
            patterns[layer] = pattern.detach()[0].float().mean(0)  # (query, key)

        return hook

    hooks = [*call.fwd_hooks, *((f"blocks.{i}.attn.hook_pattern", grab(i)) for i in layers)]
    hooks = ThreadGate().hooks(hooks)  # another thread's forward meanwhile passes through
    model = adapter.model
    with backstop() as net, torch.no_grad(), net(frozen(model)), net(temporary_hooks(model, hooks)):
        logits = model(call.tokens)
    missing = [i for i in layers if i not in patterns]
    if missing:
        raise ScopeInputError(f"no attention pattern was recorded for layers {missing}")
    if method == "last":
        scores = patterns[layers[-1]][call.position]
    else:
        n = call.tokens.shape[1]
        eye = torch.eye(n)
        rollout = eye
        for i in layers:
            a = 0.5 * patterns[i].cpu() + 0.5 * eye
            rollout = (a / a.sum(-1, keepdim=True)) @ rollout
        scores = rollout[call.position]
    params = {"baseline": "attention", "method": method, "heads": "mean"}
    return _finish(call, f"attention_{method}", scores.cpu(), logits[0, call.position], params)


# ------------------------------------------------------------------- gradient norm
def gradient_norm(
    model: Any,
    prompt: Prompt,
    target: TargetLike | None = None,
    *,
    mode: ExplainedMode = "logprob",
    position: int = -1,
    prepend_bos: bool | None = None,
    fwd_hooks: HookList = (),
    return_vectors: bool = False,
) -> ScopeResult:
    """Saliency: ``‖∂f/∂x_t‖`` with f = log p(target) (``mode="logit"``: the raw logit).

    The log-prob gradient norm *is* the Semantic scope with ``mode="logprob"`` (its
    direction ``w_target − w̄`` is ∂ log p/∂y), so this calls it rather than repeating it.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.eval.baselines import gradient_norm
        >>> model = js.load_default_model()
        >>> gradient_norm(model, "The capital of France is").target.tokens
        [' Paris']
    """
    _check("mode", mode, MODES)
    if target is None:
        call = _call(model, prompt, position, prepend_bos, fwd_hooks)
        row = perturb.logits_at(call.adapter, call.tokens, call.position, fwd_hooks=fwd_hooks)
        target = int(row[0].argmax())
    result = semantic_scope(
        model,
        prompt,
        target,
        mode=mode,
        position=position,
        prepend_bos=prepend_bos,
        fwd_hooks=fwd_hooks,
        return_vectors=return_vectors,
    )
    assert isinstance(result, ScopeResult)  # one prompt (baselines take one at a time)
    result.scope = "gradient_norm"
    result.params["baseline"] = "gradient_norm"
    return result


# ---------------------------------------------------------------- input × gradient
def input_x_gradient(
    model: Any,
    prompt: Prompt,
    target: TargetLike | None = None,
    *,
    mode: ExplainedMode = "logprob",
    reduce: Reduce = "sum",
    position: int = -1,
    prepend_bos: bool | None = None,
    fwd_hooks: HookList = (),
    return_vectors: bool = False,
) -> ScopeResult:
    """Input × gradient: ``Σ_i x_ti ∂f/∂x_ti`` (``reduce="norm"``: ``‖x_t ⊙ ∂f/∂x_t‖``).

    The signed sum is the first-order estimate of how much f would *drop* if token t's
    embedding were zeroed (Taylor at x: ``f(x) − f(x with x_t = 0) ≈ x_t · ∇_t f``), which
    is what the deletion metrics probe. ``vectors`` holds ``x_t ⊙ ∂f/∂x_t`` (pos, d).

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.eval.baselines import input_x_gradient
        >>> model = js.load_default_model()
        >>> input_x_gradient(model, "The capital of France is", " Paris").top(1)
        [(4, ' France', ...)]
    """
    _check("mode", mode, MODES)
    _check("reduce", reduce, REDUCTIONS)
    call = _call(model, prompt, position, prepend_bos, fwd_hooks)
    grads, x, logits, target_id = _gradients(call, call.tokens, target, mode)
    attr = (x * grads)[0]
    params = {"baseline": "input_x_gradient", "mode": mode, "reduce": reduce}
    result = _finish(
        call,
        "input_x_gradient",
        _reduce(attr, reduce),
        logits[0],
        params,
        _target_info(call.adapter, target_id, mode),
        attr if return_vectors else None,
    )
    result.first_order = attr.sum(-1).cpu()  # as the scopes report it
    return result


# ------------------------------------------------------------- integrated gradients
def quadrature(n_steps: int, rule: Quadrature = "gausslegendre") -> tuple[np.ndarray, np.ndarray]:
    """Nodes α ∈ [0, 1] and weights for ``∫₀¹ g(α) dα ≈ Σ w_k g(α_k)``.

    * ``gausslegendre``: exact for polynomials of degree ``2n − 1`` (Captum's default).
    * ``geometric``: Gauss–Legendre on panels ``[0, 10⁻³], [10⁻³, 10⁻²], [10⁻², 10⁻¹],
      [10⁻¹, 1]`` (``n_steps`` split between them). Pre-norm transformers need it with a zero
      baseline: the first LayerNorm/RMSNorm is scale-invariant, so along ``α·x`` its output
      is constant except for α below about ``10·√ε / rms(x)``, where the integrand lives.
    * ``trapezoid`` (both endpoints), ``riemann_middle``, ``riemann_right`` (the authors'
      IG is a right Riemann sum with 5 steps).

    Example:
        >>> from jacobian_scopes.eval.baselines import quadrature
        >>> nodes, weights = quadrature(4)
        >>> round(float((weights * nodes**7).sum()), 12) == 1 / 8
        True
    """
    _check("quadrature", rule, QUADRATURES)
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ScopeInputError(f"n_steps must be a positive int, got {n_steps!r}")
    if rule == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(n_steps)
        return (x + 1) / 2, w / 2
    if rule == "geometric":
        edges = [0.0, *GEOMETRIC_EDGES, 1.0]
        panels = len(edges) - 1
        if n_steps < panels:
            raise ScopeInputError(f"the geometric rule needs n_steps >= {panels}")
        counts = [n_steps // panels + (i < n_steps % panels) for i in range(panels)][::-1]
        pts, wts = [], []
        for (lo, hi), m in zip(pairwise(edges), counts, strict=True):
            x, w = np.polynomial.legendre.leggauss(m)
            pts.append(lo + (x + 1) / 2 * (hi - lo))
            wts.append(w / 2 * (hi - lo))
        return np.concatenate(pts), np.concatenate(wts)
    if rule == "trapezoid":
        if n_steps < 2:
            raise ScopeInputError("the trapezoid rule needs n_steps >= 2")
        w = np.full(n_steps, 1.0 / (n_steps - 1))
        w[[0, -1]] /= 2
        return np.linspace(0.0, 1.0, n_steps), w
    k = np.arange(1, n_steps + 1, dtype=float)
    nodes = (k - 0.5) / n_steps if rule == "riemann_middle" else k / n_steps
    return nodes, np.full(n_steps, 1.0 / n_steps)


def integrated_gradients(
    model: Any,
    prompt: Prompt,
    target: TargetLike | None = None,
    *,
    baseline: IGBaseline = "zero",
    replacement: TargetLike | None = None,
    n_steps: int = 16,
    quadrature_rule: Quadrature = "gausslegendre",
    mode: ExplainedMode = "logprob",
    reduce: Reduce = "sum",
    include_bos: bool = False,
    position: int = -1,
    prepend_bos: bool | None = None,
    fwd_hooks: HookList = (),
    internal_batch_size: int = 8,
    return_vectors: bool = False,
) -> ScopeResult:
    """Integrated gradients (Sundararajan et al., 2017) at the input embeddings.

    ``IG_t = Σ_i (x − x')_ti ∫₀¹ ∂f/∂x_ti(x' + α(x − x')) dα``, the integral taken with
    ``n_steps`` nodes of ``quadrature_rule`` (see :func:`quadrature`), batched
    ``internal_batch_size`` nodes per forward/backward pass (Captum's name). The baseline
    ``x'`` is the zero embedding (``baseline="zero"``) or the embedding of a pad token at
    every position (``baseline="token"``; ``replacement`` picks the token, default pad,
    else unk, else eos). The BOS embedding is kept in the baseline unless ``include_bos=True``: the
    attention sink is not "information" to remove, and the deletion metrics keep it too.

    Completeness, ``Σ_t IG_t = f(x) − f(x')``, holds up to the quadrature error; the gap
    is reported in ``result.params["completeness"]`` (``f_input``, ``f_baseline``, ``sum``,
    ``gap``, ``relative_gap``). ``reduce="norm"`` scores ``‖IG_t‖`` over the embedding
    dimensions (the authors' variant); ``vectors`` holds the per-dimension IG (pos, d).

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.eval.baselines import integrated_gradients
        >>> model = js.load_default_model()
        >>> r = integrated_gradients(model, "The capital of France is")
        >>> round(r.params["completeness"]["gap"], 2)
        -0.16
    """
    _check("mode", mode, MODES)
    _check("reduce", reduce, REDUCTIONS)
    _check("baseline", baseline, ("zero", "token"))
    nodes, weights = quadrature(n_steps, quadrature_rule)
    if internal_batch_size < 1:
        raise ScopeInputError(f"internal_batch_size must be at least 1, got {internal_batch_size}")
    call = _call(model, prompt, position, prepend_bos, fwd_hooks)
    adapter, tokens = call.adapter, call.tokens
    x = perturb.embeddings(adapter, tokens, call.fwd_hooks)
    replacement_id = None
    if baseline == "zero":
        x_base = torch.zeros_like(x)
    else:
        replacement_id = replacement_token(adapter, replacement)
        x_base = perturb.embeddings(
            adapter, torch.full_like(tokens, replacement_id), call.fwd_hooks
        )
    if not include_bos and perturb.starts_with_bos(adapter.model, tokens):
        x_base[:, 0] = x[:, 0]

    def path(alphas: Tensor) -> Any:
        def hook(emb: Tensor, hook: Any) -> Tensor:
            a = alphas.to(device=emb.device, dtype=emb.dtype)[:, None, None]
            base = x_base.to(emb.dtype)
            return base + a * (emb - base)

        return hook

    # The two ends of the path: f(x), f(x') for completeness, and the top-1 token.
    ends = perturb.logits_at(
        adapter,
        tokens.expand(2, -1),
        call.position,
        fwd_hooks=[*call.fwd_hooks, (EMBED_HOOK, path(torch.tensor([1.0, 0.0])))],
    )
    target_id = _target(adapter, target, ends[0])
    f_input, f_base = (float(v) for v in _explained(ends, target_id, mode))

    alphas = torch.as_tensor(nodes, dtype=torch.float32)
    w = torch.as_tensor(weights, dtype=torch.float64)
    integral = torch.zeros(x.shape[1:], dtype=torch.float64, device=x.device)
    for start in range(0, len(alphas), internal_batch_size):
        a = alphas[start : start + internal_batch_size]
        rows = tokens.expand(len(a), -1)
        grads, _, _, _ = _gradients(call, rows, target_id, mode, [(EMBED_HOOK, path(a))])
        chunk_w = w[start : start + internal_batch_size].to(grads.device)
        integral += torch.einsum("b,bpd->pd", chunk_w, grads.double())
    attr = ((x - x_base)[0].double() * integral).float()
    total = float(attr.double().sum())
    delta = f_input - f_base
    completeness = {
        "f_input": f_input,
        "f_baseline": f_base,
        "delta": delta,
        "sum": total,
        "gap": delta - total,
        "relative_gap": (delta - total) / abs(delta) if delta != 0 else 0.0,
    }
    params = {
        "baseline": "integrated_gradients",
        "reference": baseline,
        "replacement": replacement_id,
        "n_steps": n_steps,
        "quadrature": quadrature_rule,
        "mode": mode,
        "reduce": reduce,
        "include_bos": include_bos,
        "completeness": completeness,
    }
    return _finish(
        call,
        "integrated_gradients",
        _reduce(attr, reduce),
        ends[0],
        params,
        _target_info(adapter, target_id, mode),
        attr if return_vectors else None,
    )


# -------------------------------------------------------------------------- occlusion
def occlusion_logits(
    adapter: ModelAdapter,
    tokens: Tensor,
    position: int,
    *,
    replace: Replace = "zero",
    replacement_id: int | None = None,
    fwd_hooks: HookList = (),
    internal_batch_size: int = perturb.DEFAULT_BATCH_SIZE,
) -> Float[Tensor, "rows vocab"]:
    """Logits at ``position``: row 0 the intact input, row ``t + 1`` token t occluded.

    Only tokens up to ``position`` are occluded (later ones cannot matter in a causal
    model); the result has ``position + 2`` rows.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.adapter import ModelAdapter
        >>> from jacobian_scopes.eval.baselines import occlusion_effects, occlusion_logits
        >>> model = js.load_default_model()
        >>> tokens = model.to_tokens("The capital of France is")
        >>> logits = occlusion_logits(ModelAdapter(model), tokens, tokens.shape[1] - 1)
        >>> logits.shape
        torch.Size([7, 49152])
        >>> occlusion_effects(logits, None, "kl").shape  # KL per left-out token
        torch.Size([6])
    """
    n = position + 1
    rows = tokens.expand(n + 1, -1).clone()
    zero = None
    if replace == "zero":
        zero = torch.zeros(rows.shape, dtype=torch.bool, device=rows.device)
        zero[torch.arange(1, n + 1), torch.arange(n)] = True
    else:
        assert replacement_id is not None
        rows[torch.arange(1, n + 1), torch.arange(n)] = replacement_id
    return perturb.logits_at(
        adapter,
        rows,
        position,
        zero=zero,
        fwd_hooks=fwd_hooks,
        internal_batch_size=internal_batch_size,
    )


def occlusion_effects(
    logits: Float[Tensor, "rows vocab"], target_id: int | None, measure: str
) -> Float[Tensor, " n"]:
    """Per occluded token (rows 1…), the drop of the measure against row 0 (or KL(p₀‖p_t)).

    Example:
        >>> import torch
        >>> from jacobian_scopes.eval.baselines import occlusion_effects
        >>> logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
        >>> round(float(occlusion_effects(logits, 0, "logprob")[0]), 4)
        0.5662
    """
    logp = torch.log_softmax(logits.double(), dim=-1)
    if measure == "kl":
        p0 = logp[0].exp()
        return (p0 * (logp[0] - logp[1:])).sum(-1).clamp_min(0).float()
    assert target_id is not None
    if measure == "logit":
        values = logits[:, target_id].double()
    elif measure == "prob":
        values = logp[:, target_id].exp()
    else:
        values = logp[:, target_id]
    return (values[0] - values[1:]).float()


def occlusion(
    model: Any,
    prompt: Prompt,
    target: TargetLike | None = None,
    *,
    replace: Replace = "zero",
    replacement: TargetLike | None = None,
    measure: Measure = "logprob",
    position: int = -1,
    prepend_bos: bool | None = None,
    fwd_hooks: HookList = (),
    internal_batch_size: int = perturb.DEFAULT_BATCH_SIZE,
) -> ScopeResult:
    """Leave-one-out occlusion: how much the explained quantity drops without token t.

    ``replace="zero"`` zeroes the token's input embedding (kept attended, as the deletion
    AOPC does); ``replace="token"`` substitutes ``replacement`` (default pad, else unk,
    else eos). ``measure`` is the drop of ``"logprob"`` (default), ``"logit"`` or ``"prob"``
    of the target, or ``"kl"``: ``KL(p(x) ‖ p(x without t))`` of the whole next-token
    distribution, which needs no target (the leave-one-out reference of the paper).
    One forward row per token up to ``position``, ``internal_batch_size`` rows per pass, no
    gradients; tokens after ``position`` score 0.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.eval.baselines import occlusion
        >>> model = js.load_default_model()
        >>> occlusion(model, "The capital of France is", measure="kl").top(1)
        [(4, ' France', ...)]
    """
    _check("replace", replace, ("zero", "token"))
    _check("measure", measure, MEASURES)
    call = _call(model, prompt, position, prepend_bos, fwd_hooks)
    adapter = call.adapter
    replacement_id = replacement_token(adapter, replacement) if replace == "token" else None
    logits = occlusion_logits(
        adapter,
        call.tokens,
        call.position,
        replace=replace,
        replacement_id=replacement_id,
        fwd_hooks=call.fwd_hooks,
        internal_batch_size=internal_batch_size,
    )
    target_id = None if measure == "kl" else _target(adapter, target, logits[0])
    scores = torch.zeros(call.tokens.shape[1])
    scores[: call.position + 1] = occlusion_effects(logits, target_id, measure).cpu()
    params = {
        "baseline": "occlusion",
        "replace": replace,
        "replacement": replacement_id,
        "measure": measure,
    }
    info = None if target_id is None else _target_info(adapter, target_id, measure)
    return _finish(call, "occlusion", scores, logits[0], params, info)

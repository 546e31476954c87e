"""Attribution across generation: which earlier tokens drove each generated token.

The model continues a prompt for N tokens (greedy, or sampled with a seeded generator).
Then one forward pass over the prompt and the generated tokens, and one batched backward
pass, give the whole generated × context matrix: the i-th generated token is predicted at
position ``p_i = n_prompt − 1 + i``, and its direction is nonzero only there (``w_{token_i}``
for the Semantic scope, ``ŷ_{p_i}`` for Temperature, the rows of ``p_i``'s Fisher plan), so
the N directions (Fisher: all plans' rows) are pulled back together, each to its own
position. Row ``i`` equals the single-prompt scope at ``position=p_i`` (tested).
"""

from __future__ import annotations

from typing import Any, get_args

import torch
from jaxtyping import Int
from torch import Tensor

from jacobian_scopes.adapter import EMBED_HOOK, ModelAdapter
from jacobian_scopes.directions import (
    FisherOptions,
    SemanticTarget,
    check_mode,
    check_temperature,
    fisher_combine,
    fisher_details,
    semantic_directions,
    temperature_direction,
)
from jacobian_scopes.engine import Trace
from jacobian_scopes.errors import ScopeInputError
from jacobian_scopes.guard import frozen
from jacobian_scopes.inputs import resolve_tokens
from jacobian_scopes.interrupts import backstop
from jacobian_scopes.options import FisherMethodName, Prompt, ScopeName, SemanticMode
from jacobian_scopes.progress import progress
from jacobian_scopes.results import GenerationResult
from jacobian_scopes.sources import resolve_sources

SCOPES: tuple[str, ...] = get_args(ScopeName)


def generate(
    model: Any,
    tokens: Int[Tensor, "1 pos"],
    max_new_tokens: int,
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    stop_at_eos: bool = True,
    verbose: bool = False,
) -> Int[Tensor, "1 total"]:
    """Continue ``tokens`` by up to ``max_new_tokens`` tokens; returns prompt + continuation.

    A plain loop of full forward passes without a KV cache (slower than the model's own
    ``generate`` on long continuations, but the same on HookedTransformer and the Bridge of
    every TransformerLens release, and reproducible): greedy by default; with
    ``do_sample`` it samples from ``softmax(logits / temperature)`` (restricted to the
    ``top_k`` most probable tokens if given) with a ``torch.Generator`` seeded by ``seed``.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.generation import generate
        >>> model = js.load_default_model()
        >>> out = generate(model, model.to_tokens("1, 2, 3,"), 4)
        >>> model.to_string(out[0, 1:])
        '1, 2, 3, 4, '
    """
    adapter = ModelAdapter(model)
    generator = torch.Generator().manual_seed(seed)
    eos = getattr(getattr(model, "tokenizer", None), "eos_token_id", None)
    out = tokens
    with backstop() as net, net(frozen(model)), torch.no_grad():
        for _ in progress(range(max_new_tokens), desc="generating", unit="token", verbose=verbose):
            logits = model(out)[0, -1].float()
            if do_sample:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = torch.softmax(logits, dim=-1).cpu()
                nxt = int(torch.multinomial(probs, 1, generator=generator))
            else:
                nxt = int(logits.argmax())
            step = torch.tensor([[nxt]], dtype=out.dtype, device=adapter.device)
            out = torch.cat([out, step], dim=1)
            if stop_at_eos and eos is not None and nxt == int(eos):
                break
    return out


def generate_scope(
    model: Any,
    prompt: Prompt,
    max_new_tokens: int = 16,
    scope: ScopeName = "semantic",
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    stop_at_eos: bool = True,
    mode: SemanticMode | None = None,
    method: FisherMethodName = "sketch",
    eps: float = 1e-3,
    rank: int | None = None,
    n_probes: int = 1,
    prepend_bos: bool | None = None,
    checkpoint: bool | None = None,
    verbose: bool = False,
) -> GenerationResult:
    """Generate up to ``max_new_tokens`` tokens and attribute each to the prompt and the
    earlier generated tokens with the chosen scope (``"semantic"``, ``"temperature"``,
    ``"fisher"``).

    Sampling options as in TransformerLens's ``generate`` (greedy unless ``do_sample``;
    ``temperature``, ``top_k``, ``stop_at_eos``); ``seed`` seeds both the sampling and the
    Fisher sketch's probes, so a call is reproducible. ``mode`` is the Semantic scope's
    (``"logit"`` or ``"logprob"``; the target of each row is the generated token);
    ``method``, ``eps``, ``rank`` and ``n_probes`` are the Fisher scope's, as in
    :func:`jacobian_scopes.fisher_scope`. The cost after generation is one forward and one
    batched backward pass over the whole sequence.

    Example:
        >>> from jacobian_scopes import generate_scope, load_default_model
        >>> model = load_default_model()
        >>> g = generate_scope(model, "The capital of France is", 4)
        >>> g.generated_tokens[0], [token for _, token, _ in g.top(0)]
        (' Paris', ['The', ' capital', ' France'])
    """
    if scope not in SCOPES:
        raise ScopeInputError(f"unknown scope {scope!r}; choose one of {list(SCOPES)}")
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, int)
        or max_new_tokens < 1
    ):
        raise ScopeInputError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if do_sample and not temperature > 0:
        raise ScopeInputError(f"temperature must be positive, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ScopeInputError(f"top_k must be a positive int, got {top_k!r}")
    check_mode(mode)
    adapter = ModelAdapter(model)
    prompt_tokens = resolve_tokens(adapter, prompt, prepend_bos)
    n_prompt = int(prompt_tokens.shape[1])
    if adapter.n_ctx is not None and n_prompt + max_new_tokens - 1 > adapter.n_ctx:
        raise ScopeInputError(
            f"the prompt ({n_prompt} tokens) and {max_new_tokens} generated tokens do not fit "
            f"the model's context of {adapter.n_ctx}"
        )
    if scope == "temperature":
        check_temperature(adapter)
    options = FisherOptions(method, eps, rank, n_probes, False, seed)
    if scope == "fisher":
        options.check()  # before generating, not after

    full = generate(
        model,
        prompt_tokens,
        max_new_tokens,
        do_sample=do_sample,
        temperature=temperature,
        top_k=top_k,
        seed=seed,
        stop_at_eos=stop_at_eos,
        verbose=verbose,
    )
    generated = [int(t) for t in full[0, n_prompt:]]
    n_gen = len(generated)
    context = full[:, :-1]  # the last generated token is never an input
    positions = list(range(n_prompt - 1, n_prompt - 1 + n_gen))
    spec = resolve_sources(adapter, None)

    trace = Trace(adapter, context, sources=spec.taps, checkpoint=checkpoint)
    with backstop() as net, net(trace) as tr:
        logits = tr.logits_at(0, positions)  # (N, d_vocab)
        plans = None
        probs = None
        if scope == "semantic":
            target = SemanticTarget(generated, mode or "logit")
            rows = semantic_directions(adapter, target, logits)  # (N, d)
            sizes = [1] * n_gen
        elif scope == "temperature":
            y = tr.explanandum[0]
            rows = torch.stack([temperature_direction(y, p) for p in positions])
            sizes = [1] * n_gen
        else:
            probs = torch.softmax(logits.float(), dim=-1)
            plans = [options.plan(adapter, probs[i]) for i in range(n_gen)]
            rows = torch.cat([plan.rows for plan in plans])
            sizes = [int(plan.rows.shape[0]) for plan in plans]
        # Block structure: the rows of generated token i are nonzero only at slot i.
        dirs = rows.new_zeros((rows.shape[0], n_gen, rows.shape[-1]))
        owner = torch.repeat_interleave(torch.arange(n_gen), torch.tensor(sizes))
        dirs[torch.arange(rows.shape[0]), owner] = rows
        pb = tr.pullback(positions, dirs, keep_dots=scope != "fisher")

    squared = pb.squared[EMBED_HOOK][:, 0].cpu()  # (K, context)
    n_context = context.shape[1]
    scores = torch.full((n_gen, n_context), float("nan"))
    first_order = None
    details = None
    if plans is None:
        scores[:] = squared.sqrt()
        first_order = pb.dots[EMBED_HOOK][:, 0].cpu().float()
    else:
        assert probs is not None
        details = []
        starts = [0, *torch.tensor(sizes).cumsum(0).tolist()]
        for i, plan in enumerate(plans):
            block = {EMBED_HOOK: squared[starts[i] : starts[i + 1]]}
            s, stderr, _ = fisher_combine(spec, plan, block)
            scores[i] = s[EMBED_HOOK]
            if stderr is not None:
                stderr[positions[i] + 1 :] = float("nan")
            details.append(fisher_details(adapter, options, plan, probs[i].cpu(), stderr, None))
    for i, p in enumerate(positions):
        scores[i, p + 1 :] = float("nan")
        if first_order is not None:
            first_order[i, p + 1 :] = float("nan")

    probs_all = torch.softmax(logits.float(), dim=-1)
    token_probs = [float(probs_all[i, g]) for i, g in enumerate(generated)]
    bos_id = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
    params: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "temperature": temperature,
        "top_k": top_k,
        "seed": seed,
        "stop_at_eos": stop_at_eos,
        "generation": "own loop (full forward per token, no KV cache)",
    }
    if scope == "semantic":
        params["mode"] = mode or "logit"
    if scope == "fisher":
        fisher_params = options.params()
        for key in ("method", "eps", "rank", "n_probes"):
            params[key] = fisher_params[key]
    return GenerationResult(
        scope=scope,
        tokens=full[0].detach().cpu(),
        str_tokens=adapter.to_str_tokens(full[0].cpu()),
        n_prompt=n_prompt,
        positions=positions,
        scores=scores,
        token_probs=token_probs,
        params=params,
        processing=adapter.processing_state(),
        model_name=adapter.name,
        bos=bool(bos_id is not None and int(full[0, 0]) == int(bos_id)),
        first_order=first_order,
        fisher=details,
    )

"""What the explorer computes, without any user interface (the Gradio app in
:mod:`jacobian_scopes.app` calls it; tests call it directly).

* Every library call holds the library's per-model lock
  (:func:`jacobian_scopes.threads.model_lock`): two requests (two browser tabs) never run
  on one model at the same time.
* :class:`Explorer`: a prompt's tokens and top predictions, and the library call for a
  :class:`Request` (the scope, position, target), the prompt capped at the model's context.
* :func:`compute`: one run step by step (scope, layer × token map, attention, pages), so
  that the app can show progress and cancel between steps.
* :func:`pages`: the library's offline HTML documents for a run.
* :func:`scores_payload`: what the app's ``attribute`` API endpoint returns.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast, get_args

import torch

from jacobian_scopes.adapter import ModelAdapter
from jacobian_scopes.errors import ScopeInputError
from jacobian_scopes.guard import frozen
from jacobian_scopes.interrupts import backstop
from jacobian_scopes.options import FisherMethodName, ScopeName, SemanticMode
from jacobian_scopes.results import Prediction, ScopeResult
from jacobian_scopes.threads import model_lock

SCOPES: tuple[str, ...] = get_args(ScopeName)
MODES: tuple[str, ...] = get_args(SemanticMode)
METHODS: tuple[str, ...] = get_args(FisherMethodName)
N_PREDICTIONS = 10
# Characters per token far above any real tokenizer's: a cheap bound checked before a huge
# paste is tokenised at all; the token count is then checked against the context.
CHARS_PER_TOKEN = 64


# ---------------------------------------------------------------------------- requests
@dataclass
class Request:
    """One attribution the app runs: exactly the arguments of the library call.

    ``target`` is a token string or id; ``None`` (Semantic) means the model's top
    prediction at ``position``. ``foil`` turns Semantic into a logit difference.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.explorer import Explorer, Request
        >>> ex = Explorer(js.load_default_model())
        >>> request = Request("The capital of France is", scope="fisher", method="principal")
        >>> r = ex.attribute(request)
        >>> r.scope, r.fisher.method
        ('fisher', 'principal')
        >>> Request("The capital of France is", scope="temperature", target=" Paris").check()
        Traceback (most recent call last):
        ...
        jacobian_scopes.errors.ScopeInputError: a target and a foil apply to the semantic scope only
    """

    prompt: str
    scope: str = "semantic"  # from the page's text: checked by :meth:`check`
    position: int = -1
    target: str | int | None = None
    foil: str | None = None
    mode: str = "logit"
    method: str = "sketch"

    def check(self) -> None:
        if self.scope not in SCOPES:
            raise ScopeInputError(f"scope must be one of {', '.join(SCOPES)}, got {self.scope!r}")
        if self.mode not in MODES:
            raise ScopeInputError(f"mode must be 'logit' or 'logprob', got {self.mode!r}")
        if self.method not in METHODS:
            raise ScopeInputError(f"method must be one of {', '.join(METHODS)}")
        if self.scope != "semantic" and (self.target is not None or self.foil is not None):
            raise ScopeInputError("a target and a foil apply to the semantic scope only")


def parse_token_text(text: str | None) -> str | None:
    """A typed target: empty means none; quotes around it (as the app shows tokens, e.g.
    ``' Paris'``) are taken off so that a leading space can be typed visibly.

    Example:
        >>> from jacobian_scopes.explorer import parse_token_text
        >>> parse_token_text("' Paris'"), parse_token_text(" "), parse_token_text("x")
        (' Paris', None, 'x')
    """
    if text is None or text.strip() == "":
        return None
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1] or None
    return text


@dataclass
class Views:
    """Everything one run shows: the result, its drill-down, and the HTML pages."""

    result: ScopeResult
    layered: ScopeResult | None = None
    attention: Any = None
    pages: dict[str, str] = field(default_factory=dict)


class Explorer:
    """The app's computations, without any user interface (the Gradio app calls these).

    Every call on the model holds :func:`model_lock`. ``max_tokens`` caps prompts (default
    and upper bound: the model's context).

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.explorer import Explorer, Request
        >>> ex = Explorer(js.load_default_model())
        >>> ex.tokens("The capital of France is")
        ['<|im_start|>', 'The', ' capital', ' of', ' France', ' is']
        >>> r = ex.attribute(Request("The capital of France is", target=" Paris"))
        >>> r.target.tokens
        [' Paris']
    """

    def __init__(self, model: Any, *, max_tokens: int | None = None):
        self.model = model
        self.adapter = ModelAdapter(model)
        if not self.adapter.has_tokenizer:
            raise ScopeInputError("the explorer needs a model with a tokenizer (prompts are text)")
        n_ctx = self.adapter.n_ctx
        if max_tokens is not None and max_tokens < 1:
            raise ScopeInputError(f"max_tokens must be at least 1, got {max_tokens}")
        caps = [c for c in (n_ctx, max_tokens) if c is not None]
        self.max_tokens: int | None = min(caps) if caps else None
        self.lock = model_lock(model)

    @property
    def name(self) -> str:
        return self.adapter.name

    # ------------------------------------------------------------------ prompts
    def token_ids(self, prompt: str) -> torch.Tensor:
        """The prompt's token ids (BOS prepended as the scopes do), or a clear error."""
        if not isinstance(prompt, str) or prompt == "":
            raise ScopeInputError("the prompt is empty; type some text")
        cap = self.max_tokens
        if cap is not None and len(prompt) > cap * CHARS_PER_TOKEN:
            raise ScopeInputError(
                f"the prompt has {len(prompt)} characters, far more than the "
                f"{cap} tokens this app accepts"
            )
        with self.lock:
            ids = self.adapter.to_tokens(prompt)[0].cpu()
        if cap is not None and ids.numel() > cap:
            what = "the model's context" if cap == self.adapter.n_ctx else "this app's limit"
            raise ScopeInputError(
                f"the prompt has {ids.numel()} tokens, more than {what} of {cap} tokens; shorten it"
            )
        return ids

    def tokens(self, prompt: str) -> list[str]:
        """The prompt's tokens as text, as the views show them."""
        ids = self.token_ids(prompt)
        with self.lock:
            return self.adapter.to_str_tokens(ids)

    def predictions(
        self, prompt: str, position: int = -1, k: int = N_PREDICTIONS
    ) -> list[Prediction]:
        """The model's ``k`` most probable next tokens after ``position`` (one forward pass)."""
        ids = self.token_ids(prompt)
        n = ids.numel()
        if not -n <= position < n:
            raise ScopeInputError(f"position {position} is outside the prompt's {n} tokens")
        with self.lock, backstop() as net, net(frozen(self.model)), torch.no_grad():
            logits = self.model(ids[None].to(self.adapter.device))
            probs = torch.softmax(logits[0, position].float(), dim=-1)
            top = torch.topk(probs, min(k, probs.numel()))
            strs = self.adapter.to_str_tokens(top.indices.cpu())
        return [
            Prediction(int(i), s, float(p))
            for i, s, p in zip(top.indices.tolist(), strs, top.values.tolist(), strict=True)
        ]

    # ------------------------------------------------------------------ scopes
    def attribute(self, request: Request, *, sources: str | None = None) -> ScopeResult:
        """The library call for ``request`` (with ``sources``, its drill-down)."""
        from jacobian_scopes.scopes import fisher_scope, semantic_scope, temperature_scope

        request.check()
        self.token_ids(request.prompt)  # the length cap, before anything runs
        with self.lock:
            if request.scope == "semantic":
                target = request.target
                if target is None:
                    target = self.predictions(request.prompt, request.position, k=1)[0].token_id
                return semantic_scope(
                    self.model,
                    request.prompt,
                    target,
                    mode=cast(SemanticMode, request.mode),
                    foil=request.foil,
                    position=request.position,
                    sources=sources,
                )
            if request.scope == "temperature":
                return temperature_scope(
                    self.model, request.prompt, position=request.position, sources=sources
                )
            return fisher_scope(
                self.model,
                request.prompt,
                method=cast(FisherMethodName, request.method),
                position=request.position,
                sources=sources,
            )

    def beside_attention(self, result: ScopeResult, k: int = 4) -> Any:
        from jacobian_scopes.viz.attention import beside_attention

        with self.lock:
            return beside_attention(self.model, result, k=k)


def pages(views: Views, title: str) -> dict[str, str]:
    """The HTML documents of a run: one per tab, and the whole page for download."""
    from jacobian_scopes.viz.maps import layer_token_map
    from jacobian_scopes.viz.report import render_document

    out = {"tokens": render_document(views.result)}
    parts: list[Any] = [views.result]
    if views.layered is not None:
        layer_map = layer_token_map(views.layered)
        out["layers"] = render_document(layer_map)
        parts.append(("Layer × token", layer_map))
    if views.attention is not None:
        out["attention"] = render_document(views.attention)
        parts.append(("Beside attention", views.attention))
    out["page"] = render_document(*parts, title=title)
    return out


def compute(
    explorer: Explorer,
    request: Request,
    *,
    layers: bool = True,
    attention: bool = True,
    progress: Any = None,
) -> Iterator[tuple[str, Views | None]]:
    """The steps of one run: yields ``(status, None)`` before each step and
    ``("done", views)`` at the end. Used by the app (which can cancel between steps) and
    by tests."""
    steps = 1 + int(layers) + int(attention) + 1
    done = 0

    def step(text: str) -> tuple[str, None]:
        if progress is not None:
            progress((done, steps), desc=text)
        return text, None

    yield step(f"{request.scope} scope")
    views = Views(explorer.attribute(request))
    done += 1
    if layers:
        yield step("layer × token map (one more backward pass)")
        views.layered = explorer.attribute(request, sources="resid_pre")
        done += 1
    if attention:
        yield step("attention beside the scope")
        views.attention = explorer.beside_attention(views.result)
        done += 1
    yield step("drawing the views")
    from jacobian_scopes.viz.tokens import describe

    views.pages = pages(views, title=f"{describe(views.result)} · {explorer.name}")
    yield "done", views


def scores_payload(result: ScopeResult) -> dict[str, Any]:
    """What the ``attribute`` endpoint returns: the scores and what they explain.

    Example:
        >>> import json, jacobian_scopes as js
        >>> from jacobian_scopes.explorer import Explorer, Request, scores_payload
        >>> ex = Explorer(js.load_default_model())
        >>> r = ex.attribute(Request("The capital of France is", target=" Paris"))
        >>> payload = scores_payload(r)
        >>> payload["target"]["tokens"], [round(s, 1) for s in payload["scores"]]
        ([' Paris'], [13.8, 25.1, 24.0, 8.6, 14.1, 6.3])
        >>> json.loads(json.dumps(payload)) == payload
        True
    """
    payload: dict[str, Any] = {
        "scope": result.scope,
        "tokens": list(result.str_tokens),
        "token_ids": [int(t) for t in result.tokens.tolist()],
        "scores": [float(s) for s in result.token_scores().float().tolist()],
        "position": int(result.position),
        "bos": bool(result.bos),
        "target": None,
        "top_predictions": [
            {"token": p.token, "token_id": p.token_id, "prob": p.prob}
            for p in result.top_predictions
        ],
        "model": result.model_name,
    }
    if result.target is not None:
        t = result.target
        payload["target"] = {
            "tokens": list(t.tokens),
            "ids": list(t.ids),
            "mode": t.mode,
            "foil": t.foil,
            "foil_id": t.foil_id,
        }
    if result.fisher is not None:
        payload["fisher"] = {"method": result.fisher.method, "n_vjps": result.fisher.n_vjps}
    return payload


# What the app and a user call; Views, compute and pages are the app's plumbing.
__all__ = ["Explorer", "Request", "parse_token_text", "scores_payload"]

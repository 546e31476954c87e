"""The names and types every scope call shares, defined once.

The options that every scope accepts (where the scores are taken, which position is
explained, the user's hooks, batching) are the keys of :class:`CallOptions`; the public
functions take them as flat keyword arguments (``**options: Unpack[CallOptions]``), so a
call reads ``semantic_scope(model, prompt, " Paris", sources="resid_pre")``.

Example:
    >>> from jacobian_scopes.options import CallOptions, check_options
    >>> sorted(CallOptions.__annotations__)[:3]
    ['attention', 'batch_size', 'checkpoint']
    >>> check_options("semantic_scope", {"position": -2})
    {'position': -2}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from torch import Tensor
from typing_extensions import TypedDict

#: The scopes by name, as the command line, ``generate_scope`` and the evaluation take them.
ScopeName = Literal["semantic", "temperature", "fisher"]
#: What a Semantic scope explains: the raw logit (the paper's default) or the log-prob.
SemanticMode = Literal["logit", "logprob"]
#: How the Fisher scope factors ``F`` (see :mod:`jacobian_scopes.fisher`).
FisherMethodName = Literal["sketch", "exact", "principal"]
#: The linearised variants: which nonlinearities are detached.
FreezeKind = Literal["norm_scale", "attn_pattern"]
#: Per-layer source shortcuts (see :mod:`jacobian_scopes.sources`).
SourceShortcut = Literal["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "z"]

#: One prompt: text, or token ids (1-D, or (1, pos) as ``model.to_tokens`` returns).
Prompt = str | Tensor | Sequence[int]
#: A target token: text (``" Paris"``), an id, or ids (a multi-token continuation).
TargetLike = str | int | Tensor | Sequence[int]
#: TransformerLens forward hooks: ``[(name or names filter, fn(tensor, hook))]``.
HookList = Sequence[tuple[Any, Callable[..., Any]]]
#: Where scores are taken: None (input embeddings), a hook name or shortcut, hook names,
#: or a names filter ``fn(name) -> bool`` as TransformerLens accepts.
SourcesLike = str | Sequence[str] | Callable[[str], bool] | None


class CallOptions(TypedDict, total=False):
    """Options every scope takes, as keyword arguments.

    * ``position`` (int, or one per prompt): the position whose next-token prediction is
      explained; default ``-1``, the last prompt token.
    * ``prepend_bos`` (bool | None): passed to ``model.to_tokens`` for text prompts.
    * ``sources``: where the scores are taken (default: the input embeddings). Hook names,
      a names filter, or a shortcut (``"resid_pre"``, ``"resid_mid"``, ``"resid_post"``,
      ``"attn_out"``, ``"mlp_out"``, ``"z"``); all sources come from one backward pass.
    * ``freeze``: linearised variants, ``["norm_scale"]`` and/or ``["attn_pattern"]``.
    * ``fwd_hooks``: the caller's TransformerLens forward hooks ``[(name, fn)]`` (an
      ablation, a patch): the scope is computed on the intervened run. Under activation
      checkpointing (see ``checkpoint``) a hook inside a block can fire twice: once in the
      forward pass and once more while the backward pass recomputes the block (up to the
      last activation the backward pass needs), so hooks should not count their calls.
    * ``checkpoint`` (bool | None): ``True`` recomputes every block in the backward pass
      to save memory on long prompts, ``False`` none. ``None`` (default) recomputes the
      fewest of the first blocks that keep the rest within about 1 GiB of attention
      patterns (eager attention) and 3 GiB of other activations (either path; SmolLM2 on
      SDPA: none up to about 2.5k tokens, 12 of its 30 blocks at 4k); on a CUDA device,
      within half of its free memory. It warns if ``fwd_hooks`` are given and a block is
      recomputed (pass ``False`` to keep each hook to one call per forward pass).
    * ``attention`` (``"auto"`` | ``"eager"`` | ``"sdpa"``): how the Bridge runs attention.
      ``"auto"`` (default) uses PyTorch's SDPA when no hook sits inside attention (no
      attention-pattern source, no ``freeze=["attn_pattern"]``, no hook of yours or on the
      model at ``hook_pattern``, ``hook_attn_scores``, ...): the same scores, with memory
      linear in the prompt length. ``"sdpa"`` raises where that is not possible;
      HookedTransformer always runs eager (see :mod:`jacobian_scopes.attention`).
    * ``batch_size`` (int): prompts per forward pass when several are given (default 8).
    * ``verbose`` (bool): a progress bar over the prompts, as in TransformerLens.

    Example:
        A wrapper that passes the shared options on, type-checked:

        >>> from typing_extensions import Unpack
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.options import CallOptions
        >>> def paris(model, prompt, **options: Unpack[CallOptions]):
        ...     return js.semantic_scope(model, prompt, " Paris", **options)
        >>> model = js.load_default_model()
        >>> r = paris(model, "The capital of France is", sources="resid_pre", position=-1)
        >>> r.scores.shape, r.source_labels[:2]
        (torch.Size([30, 6]), ['blocks.0.hook_resid_pre', 'blocks.1.hook_resid_pre'])
    """

    position: int | Sequence[int]
    prepend_bos: bool | None
    sources: SourcesLike
    freeze: Sequence[FreezeKind]
    fwd_hooks: HookList
    checkpoint: bool | None
    attention: Literal["auto", "eager", "sdpa"]
    batch_size: int
    verbose: bool


DEFAULTS: CallOptions = {
    "position": -1,
    "prepend_bos": None,
    "sources": None,
    "freeze": (),
    "fwd_hooks": (),
    "checkpoint": None,
    "attention": "auto",
    "batch_size": 8,
    "verbose": False,
}


def check_options(function: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options as a dict, after refusing unknown names the way Python does.

    ``**options: Unpack[CallOptions]`` is checked by type checkers only; at run time a
    misspelt option would otherwise vanish silently.

    Example:
        >>> from jacobian_scopes.options import check_options
        >>> check_options("my_scope", {"position": -2, "sources": "resid_pre"})
        {'position': -2, 'sources': 'resid_pre'}
        >>> check_options("my_scope", {"postion": -2})
        Traceback (most recent call last):
        ...
        TypeError: my_scope() got an unexpected keyword argument 'postion' (options shared ...)
    """
    unknown = sorted(set(options) - set(CallOptions.__annotations__))
    if unknown:
        known = ", ".join(sorted(CallOptions.__annotations__))
        raise TypeError(
            f"{function}() got an unexpected keyword argument {unknown[0]!r} "
            f"(options shared by every scope: {known})"
        )
    return dict(options)

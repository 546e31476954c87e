"""The one mechanism behind every scope: pull directions back through one forward pass.

A forward pass runs with two kinds of TransformerLens hook functions:

* :class:`GradientTap` at each *source* hook adds a zero tensor that requires grad. The
  activation's value is unchanged, and the gradient with respect to that zero tensor
  is the gradient with respect to the activation. This works for the input embeddings
  (whose value does not require grad once the parameters are frozen) and for any
  intermediate activation alike, including the Bridge's reshaped per-head tensors.
* :class:`Capture` at the *explanandum* hook keeps the live activation.

Then the scalar ``L = Σ_p vₚ · a[p]`` is differentiated for a batch of directions ``v``
at once (``torch.autograd.grad(..., is_grads_batched=True)``) and every vector-Jacobian
product is reduced on the spot to squared norms per token. The T × d × d Jacobian is
never formed, and parameters never receive gradients.

This module is the documented entry for advanced users who build their own scopes:
:class:`Trace` (a forward pass prepared for pullbacks), :class:`GradientTap`,
:class:`Capture`, :class:`Pullback`, and
:class:`~jacobian_scopes.adapter.ModelAdapter` (re-exported here), the one place that
knows the two TransformerLens model classes apart. For hooks in your own forward pass,
:class:`jacobian_scopes.GradientProbe` is simpler. How many blocks a long prompt's trace
recomputes is :mod:`jacobian_scopes.checkpointing`'s to decide.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from jacobian_scopes import direct
from jacobian_scopes.adapter import ModelAdapter
from jacobian_scopes.attention import AttentionMode, attention_path, sdpa_attention
from jacobian_scopes.checkpointing import blocks_to_checkpoint, checkpointed_blocks
from jacobian_scopes.errors import NonFiniteError, ScopeInputError
from jacobian_scopes.guard import forward_pre_hook, frozen, temporary_hooks
from jacobian_scopes.interrupts import Contexts, Undoable, UndoFn, finish
from jacobian_scopes.options import HookList
from jacobian_scopes.threads import ThreadGate, model_lock


class GradientTap:
    """TransformerLens hook ``fn(tensor, hook)`` that makes an activation differentiable.

    It returns ``tensor + zero`` where ``zero`` requires grad; after a backward pass,
    the gradient of ``zero`` is the gradient of the activation. Keyed by the name the
    caller asked for, not ``hook.name`` (the Bridge fires aliases under other names).

    Example:
        >>> import torch, jacobian_scopes as js
        >>> from jacobian_scopes.engine import GradientTap
        >>> model = js.load_default_model()
        >>> tokens = model.to_tokens("The capital of France is")
        >>> tap = GradientTap("blocks.3.hook_resid_pre")
        >>> with js.frozen(model), model.hooks(fwd_hooks=[(tap.name, tap)]):
        ...     logits = model(tokens)
        ...     (grad,) = torch.autograd.grad(logits[0, -1, 42], tap.leaf)
        >>> grad.shape
        torch.Size([1, 6, 576])
    """

    def __init__(self, name: str):
        self.name = name
        self.leaf: Tensor | None = None
        self.value: Tensor | None = None  # the activation itself (detached), e.g. for x ⊙ ∇
        # Under activation checkpointing a block's forward runs again during the backward
        # pass; the tap must then reuse its leaf, or the leaf handed to autograd.grad would
        # no longer be the one of the graph (see Trace's ``checkpoint``).
        self.reuse = False

    def __call__(self, tensor: Tensor, hook: Any) -> Tensor:
        if self.reuse and self.leaf is not None and self.leaf.shape == tensor.shape:
            return tensor + self.leaf
        leaf = torch.zeros_like(tensor, requires_grad=True)
        self.leaf = leaf
        self.value = tensor.detach()
        return tensor + leaf


class Capture:
    """TransformerLens hook that keeps the live activation (with its graph).

    It also serves as a torch forward pre-hook (:meth:`pre_hook`), which is how ``y`` is
    read on HookedTransformer (see :class:`jacobian_scopes.adapter.FinalState`).

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.engine import Capture
        >>> model = js.load_default_model()
        >>> tokens = model.to_tokens("The capital of France is")
        >>> capture = Capture("blocks.5.hook_resid_post")
        >>> with model.hooks(fwd_hooks=[(capture.name, capture)]):
        ...     logits = model(tokens)
        >>> capture.value.shape, capture.value.grad_fn is not None
        (torch.Size([1, 6, 576]), True)
    """

    def __init__(self, name: str):
        self.name = name
        self.value: Tensor | None = None

    def __call__(self, tensor: Tensor, hook: Any) -> None:
        self.value = tensor

    def pre_hook(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        self.value = args[0]


def detach_hook(tensor: Tensor, hook: Any) -> Tensor:
    """TransformerLens hook that cuts the gradient through an activation (linearisation).

    Example:
        Detaching every attention pattern is the ``freeze=["attn_pattern"]`` variant:
        the scope then explains the prediction with the attention weights held fixed.

        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.engine import detach_hook
        >>> model = js.load_default_model()
        >>> prompt = "The capital of France is"
        >>> patterns = [(f"blocks.{i}.attn.hook_pattern", detach_hook)
        ...             for i in range(model.cfg.n_layers)]
        >>> r = js.semantic_scope(model, prompt, " Paris", fwd_hooks=patterns)
        >>> frozen = js.semantic_scope(model, prompt, " Paris", freeze=["attn_pattern"])
        >>> r.top(2) == frozen.top(2)
        True
        >>> [token for _, token, _ in r.top(2)]
        [' capital', 'The']
    """
    return tensor.detach()


@dataclass
class Pullback:
    """Per-source squared norms of the vector-Jacobian products of a batch of directions.

    ``squared[source]`` has shape (K, batch, pos, *rest) where ``rest`` is what remains of
    the activation after its last (feature) axis is reduced: () for the residual stream,
    (head,) for ``attn.hook_z``; K is 1 when the directions were summed (``keep_each=False``).
    ``vectors[source]`` holds the raw products (K, batch, pos, ...) when asked for, and
    ``dots[source]`` the first-order terms ⟨activation, J_tᵀv⟩ (K, batch, pos, *rest).

    Example:
        The square root of the squared norms at the embeddings is the Semantic scope:

        >>> import torch, jacobian_scopes as js
        >>> from jacobian_scopes.engine import ModelAdapter, Trace
        >>> model = js.load_default_model()
        >>> tokens = model.to_tokens("The capital of France is")
        >>> adapter = ModelAdapter(model)
        >>> with Trace(adapter, tokens, sources=["hook_embed", "blocks.10.hook_resid_pre"]) as tr:
        ...     v = adapter.W_U[:, model.to_single_token(" Paris")][None, None]
        ...     pb = tr.pullback([tokens.shape[1] - 1], v, keep_dots=True)
        >>> {name: tuple(sq.shape) for name, sq in pb.squared.items()}
        {'hook_embed': (1, 1, 6), 'blocks.10.hook_resid_pre': (1, 1, 6)}
        >>> r = js.semantic_scope(model, "The capital of France is", " Paris")
        >>> torch.allclose(pb.squared["hook_embed"][0, 0].sqrt(), r.scores)
        True
    """

    squared: dict[str, Tensor]
    vectors: dict[str, Tensor] = field(default_factory=dict)
    dots: dict[str, Tensor] = field(default_factory=dict)
    unused: list[str] = field(default_factory=list)


class Trace:
    """A forward pass prepared for pulling directions back to its sources.

    Use it as a context manager: the model is frozen (parameters, eval mode) from entry
    to exit, hooks are attached only for the forward pass, and everything is restored on
    exit, including after an exception raised inside a user hook.

    ``checkpoint=True`` recomputes every transformer block during the backward pass instead
    of keeping its activations (``torch.utils.checkpoint``, non-reentrant): the eager
    attention of both model classes keeps ``heads × pos²`` values per layer, which for
    SmolLM2 at 8k tokens would be ~140 GB, against one layer's worth with checkpointing.
    Scores are the same (the recomputation is deterministic in eval mode); the cost is one
    extra forward pass of each checkpointed block, and hooks inside those blocks (the
    caller's too) fire twice, so the hooks stay attached until the trace closes. ``None``
    (default) checkpoints the fewest of the first blocks that keep memory within budget
    (:func:`jacobian_scopes.checkpointing.blocks_to_checkpoint`), often none;
    :attr:`checkpoint_blocks` says how many it did, :attr:`checkpoint` whether any.

    ``attention`` chooses the attention implementation (see
    :mod:`jacobian_scopes.attention`): ``"auto"`` (default) runs the Bridge's attention with
    PyTorch's SDPA when no hook of the trace, the caller's or the model's, sits inside
    attention (no pattern is then kept: memory linear in the prompt length), and eager
    attention otherwise; ``"eager"`` always keeps eager attention; ``"sdpa"`` raises
    :class:`~jacobian_scopes.errors.ScopeInputError` where it cannot be used. The path
    taken is :attr:`attention`. A trace from ``hook_embed`` to the final state with no other
    hook runs the Hugging Face model under a Bridge without the Bridge's wrappers
    (:mod:`jacobian_scopes.direct`); :attr:`direct` says whether it did, and
    :meth:`direct_blocker` why not.

    A Ctrl-C that lands as the ``with`` block's exit begins leaves the trace open (the
    model's lock held, its parameters frozen); the library's own calls list a
    :class:`~jacobian_scopes.interrupts.backstop` first, which closes it then:
    ``with backstop() as net, net(Trace(...)) as tr:``.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.adapter import ModelAdapter
        >>> from jacobian_scopes.engine import Trace
        >>> model = js.load_default_model()
        >>> tokens = model.to_tokens("The capital of France is")
        >>> target = model.to_single_token(" Paris")
        >>> adapter = ModelAdapter(model)
        >>> with Trace(adapter, tokens, sources=["hook_embed"]) as tr:
        ...     v = adapter.W_U[:, target][None, None]          # (K=1, P=1, d)
        ...     sq = tr.pullback([tokens.shape[1] - 1], v).squared["hook_embed"]
        >>> sq.shape
        torch.Size([...])
    """

    def __init__(
        self,
        adapter: ModelAdapter,
        tokens: Int[Tensor, "batch pos"],
        sources: Sequence[str],
        at: str | None = None,
        fwd_hooks: HookList = (),
        freeze: Sequence[str] = (),
        checkpoint: bool | None = None,
        attention: AttentionMode = "auto",
    ):
        self.adapter = adapter
        self.tokens = tokens
        self.taps = {name: GradientTap(name) for name in dict.fromkeys(sources)}
        self._capture_hook: str | None
        self._capture_module: torch.nn.Module | None
        if at is None:
            final = adapter.final_state
            self.capture = Capture(final.label)
            self._capture_hook, self._capture_module = final.hook, final.module
        else:
            self.capture = Capture(at)
            self._capture_hook, self._capture_module = at, None
        self._at = at
        self.user_hooks = list(fwd_hooks)
        self.freeze = list(freeze)
        self._stack: Contexts | None = None
        self.gate = ThreadGate()
        self._logits: Tensor | None = None
        self._twin: Any = None  # the Hugging Face twin (jacobian_scopes.direct), or None
        self._route: str | None = None  # why not the twin, once entered ("" : the twin)
        self._logits_at: dict[tuple[Any, tuple[int, ...]], Tensor] = {}
        self.direct = False
        self.attention = attention_path(adapter, self._hook_list(), attention)
        if checkpoint is None:
            self.checkpoint_blocks = blocks_to_checkpoint(adapter, tokens.shape, self.attention)
        else:
            self.checkpoint_blocks = adapter.n_layers if checkpoint else 0
        for tap in self.taps.values():
            tap.reuse = self.checkpoint

    @property
    def checkpoint(self) -> bool:
        """Whether any block is recomputed in the backward pass (:attr:`checkpoint_blocks`)."""
        return self.checkpoint_blocks > 0

    # The hooks of a scope, in the order they must fire at a shared hook point: the
    # user's interventions first (the scope explains the intervened run), then the
    # linearisation, then the taps, and the capture last so it sees the final value.
    # Each is gated to this trace's thread (see jacobian_scopes.threads): the hook points
    # are shared, and another thread's forward pass meanwhile must neither fire the taps
    # nor be changed by them.
    def hooks(self) -> list[tuple[Any, Callable[..., Any]]]:
        return self.gate.hooks(self._hook_list())

    def _hook_list(self) -> list[tuple[Any, Callable[..., Any]]]:
        linear = [(name, detach_hook) for name in self.freeze]
        taps = [(tap.name, tap) for tap in self.taps.values()]
        capture = [] if self._capture_hook is None else [(self._capture_hook, self.capture)]
        return [*self.user_hooks, *linear, *taps, *capture]

    def __enter__(self) -> Trace:
        if torch.is_inference_mode_enabled():
            raise ScopeInputError(
                "a scope needs gradients, but it was called inside torch.inference_mode(); "
                "call it outside that block (torch.no_grad() is fine: it is lifted here)."
            )
        # Contexts, not ExitStack: a Ctrl-C between entering a context and registering its
        # exit would leave it entered (the lock held: every other thread's call hangs).
        stack = Contexts()
        self._stack = stack
        try:
            # The model's lock for the whole trace (frozen takes it too; it is re-entrant):
            # another thread's call must not attach hooks or restore flags until the
            # backward passes of this one are done.
            stack.hold(model_lock(self.adapter.model))
            self.gate = ThreadGate()
            stack.callback(self.gate.close)
            stack.enter(frozen(self.adapter.model))
            stack.callback(torch.set_grad_enabled, torch.is_grad_enabled())
            torch.set_grad_enabled(True)
            # Decided under the lock: another thread's trace attaches hooks for its forward.
            self._twin, why_not = direct.route(self.adapter, **self._direct_facts())
            self._route = why_not or ""
            self.direct = self._twin is not None
            if self._twin is not None:
                if self.checkpoint:
                    # The twin is this trace's alone while it holds the model's lock: no gate.
                    twin_blocks = direct.layers(self._twin)[: self.checkpoint_blocks]
                    stack.enter(checkpointed_blocks(twin_blocks))
                (tap,) = self.taps.values()
                self.capture.value = direct.forward(self._twin, self.tokens, tap)
                self._check_forward()
                return self
            if self.attention == "sdpa":
                # For the whole trace: checkpointing runs the blocks again in the backward.
                stack.enter(sdpa_attention(self.adapter.model, self.gate))
            kwargs: dict[str, Any] = {}
            if self.checkpoint:
                # The recomputation runs the blocks again during the backward pass, so they
                # must see the same hooks then: keep them until the trace closes.
                blocks = list(self.adapter.model.blocks)[: self.checkpoint_blocks]
                stack.enter(checkpointed_blocks(blocks, self.gate))
                if self.adapter.kind == "bridge":
                    # A Hugging Face KV cache would grow on the recomputation.
                    kwargs["use_cache"] = False
            forward = Contexts()
            # Also on the trace's stack: a Ctrl-C as the finally's close begins would skip it.
            stack.callback(forward.close)
            try:
                hooks_scope = stack if self.checkpoint else forward
                pre_hook = self.gate.hook(self.capture.pre_hook)
                forward.enter(forward_pre_hook(self._capture_module, pre_hook))
                if self.freeze:
                    hooks_scope.enter(_scale_edits_allowed())
                hooks_scope.enter(temporary_hooks(self.adapter.model, self.hooks()))
                logits = self.adapter.model(self.tokens, **kwargs)
            finally:
                forward.close()
            self._logits = logits
            self._check_forward()
        except BaseException:
            finish(stack.close)
            raise
        return self

    def direct_blocker(self) -> str | None:
        """Why this trace runs through the TransformerLens model rather than the Hugging
        Face model it wraps (see :mod:`jacobian_scopes.direct`), or None: as decided when
        the trace was entered (before that, as it would be decided now)."""
        if self._route is None:
            return direct.route(self.adapter, **self._direct_facts())[1]
        return self._route or None

    def _direct_facts(self) -> dict[str, Any]:
        return {
            "sources": list(self.taps),
            "at": self._at,
            "caller_hooks": bool(self.user_hooks or self.freeze),
            "attention": self.attention,
        }

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(exc_type, exc, tb)

    def close(self, *exc: Any) -> None:
        """Leave the trace: what the end of its ``with`` block does (``exc``: the exception
        that ended it, if any). Idempotent, so that :class:`jacobian_scopes.interrupts.backstop`
        can call it again."""
        if self._stack is not None:
            # finish: a Ctrl-C as close starts (before its own try) must not skip it.
            finish(self._stack.close, *exc)
            self._stack = None

    def _check_forward(self) -> None:
        for name, tap in self.taps.items():
            if tap.leaf is None:
                raise ScopeInputError(
                    f"source hook {name!r} never fired during the forward pass; "
                    "is it a hook of this model that runs on every forward?"
                )
        if self.capture.value is None:
            raise ScopeInputError(f"explanandum hook {self.capture.name!r} never fired")
        # The direct path computes logits only where they are read (logits_at checks those).
        _check_finite(self.capture.value, self._logits)

    @property
    def logits(self) -> Tensor | None:
        """The logits of the forward pass, (batch, pos, d_vocab). The direct path computes
        them on first use; the scopes read only :meth:`logits_at`."""
        if self._logits is None and self._twin is not None and self.capture.value is not None:
            self._logits = self._twin.get_output_embeddings()(self.capture.value)
        return self._logits

    def logits_at(self, b: int | slice, positions: Sequence[int]) -> Tensor:
        """The detached logits of batch row ``b`` at ``positions``, (len(positions), d_vocab),
        or of the rows ``b`` selects (a slice), (rows, len(positions), d_vocab): on the
        direct path, the unembedding of just those positions, in one product.

        Example:
            >>> import jacobian_scopes as js
            >>> from jacobian_scopes.adapter import ModelAdapter
            >>> from jacobian_scopes.engine import Trace
            >>> model = js.load_default_model()
            >>> tokens = model.to_tokens(["The capital of France is", "Paris is in"])
            >>> with Trace(ModelAdapter(model), tokens, sources=["hook_embed"]) as tr:
            ...     one, every = tr.logits_at(0, [3, 4]), tr.logits_at(slice(None), [4])
            >>> one.shape, every.shape
            (torch.Size([2, 49152]), torch.Size([2, 1, 49152]))
        """
        rows = b if isinstance(b, int) else (b.start, b.stop, b.step)
        key = (rows, tuple(positions))
        if key not in self._logits_at:
            if self._logits is not None or self._twin is None:
                assert self.logits is not None
                logits = self.logits[b][..., list(positions), :].detach()
            else:
                # One read of the unembedding (113 MB on SmolLM2) for all the rows asked for,
                # once: the scopes ask twice for the explained position.
                assert self.capture.value is not None
                y = self.capture.value[b][..., list(positions), :].detach()
                with torch.no_grad():
                    logits = self._twin.get_output_embeddings()(y)
                _check_finite(logits)
            self._logits_at[key] = logits
        return self._logits_at[key]

    @property
    def explanandum(self) -> Tensor:
        """The live activation at the explanandum hook, shape (batch, pos, *feature)."""
        assert self.capture.value is not None
        return self.capture.value

    def pullback(
        self,
        positions: Sequence[int] | Int[Tensor, "batch n_pos"],
        directions: Float[Tensor, "K *batch n_pos *feature"],
        *,
        batch_size: int | None = None,
        keep_each: bool = True,
        keep_vectors: bool = False,
        keep_dots: bool = False,
        retain_graph: bool = False,
    ) -> Pullback:
        """Squared norms per token of ``J_tᵀ v`` for every direction and every source.

        ``positions`` are the explained positions, the same for every batch row (a list) or
        per row (a (batch, n_pos) tensor). ``directions[k, b, i]`` is the part of direction
        ``k`` at row ``b``, position ``positions[b, i]``; the batch axis may be left out to
        use the same direction in every row. Batch rows are independent sequences, so one
        backward pass serves them all. With ``keep_each=False`` the squared norms are
        summed over ``k`` as they come. ``keep_dots`` also returns the signed first-order
        terms ⟨a_t, J_tᵀv⟩ (the linearised effect of zeroing each activation).
        """
        act = self.explanandum
        if not act.requires_grad:
            raise ScopeInputError(
                f"sources {list(self.taps)} do not influence the explained activation "
                f"{self.capture.name!r} (they come after it in the network); choose sources "
                "before it"
            )
        n_batch = act.shape[0]
        pos = torch.as_tensor(positions, dtype=torch.long, device=act.device)
        if pos.dim() == 1:
            pos = pos.expand(n_batch, -1)
        out = act[torch.arange(n_batch, device=act.device)[:, None], pos]  # (B, P, *feature)
        if directions.dim() == out.dim() and directions.shape[1:] == out.shape[1:]:
            directions = directions[:, None].expand(-1, *out.shape)  # the same in every row
        if directions.shape[1:] != out.shape:
            raise ScopeInputError(
                f"direction has shape {tuple(directions.shape[1:])}, but the activation at "
                f"{self.capture.name!r} for these positions has shape {tuple(out.shape)}"
            )
        names = list(self.taps)
        leaves = [self.taps[n].leaf for n in names]
        K = directions.shape[0]
        if batch_size is None:
            # Every direction's gradients span the whole batch of sequences.
            n_tokens = self.tokens.shape[0] * self.tokens.shape[1]
            batch_size = default_batch_size(n_tokens, out.shape[-1], len(names))
        squared: dict[str, list[Tensor]] = {n: [] for n in names}
        vectors: dict[str, list[Tensor]] = {n: [] for n in names}
        dots: dict[str, list[Tensor]] = {n: [] for n in names}
        unused: set[str] = set()
        for start in range(0, K, batch_size):
            chunk = directions[start : start + batch_size].to(out.dtype)
            last = start + batch_size >= K
            grads = _vjp(out, leaves, chunk, retain_graph=retain_graph or not last)
            for name, leaf, g in zip(names, leaves, grads, strict=True):
                assert leaf is not None
                if g is None:
                    unused.add(name)
                    g = torch.zeros((chunk.shape[0], *leaf.shape), device=leaf.device)
                g = g.float()
                if leaf.dim() < 3:
                    raise ScopeInputError(
                        f"source {name!r} has shape {tuple(leaf.shape)}; a source needs "
                        "(batch, pos, ..., feature)"
                    )
                sq = g.pow(2).sum(-1)
                squared[name].append(sq if keep_each else sq.sum(0, keepdim=True))
                if keep_vectors:
                    vectors[name].append(g)
                if keep_dots:
                    value = self.taps[name].value
                    assert value is not None
                    dots[name].append((g * value.float()).sum(-1))
        if K == 0:  # no direction (Fisher, a model certain of its next token): all zero
            for name, leaf in zip(names, leaves, strict=True):
                assert leaf is not None
                squared[name].append(leaf.new_zeros((0, *leaf.shape[:-1]), dtype=torch.float32))
        result = Pullback(
            squared={n: _combine(v, keep_each) for n, v in squared.items()},
            vectors={n: torch.cat(v) for n, v in vectors.items() if v},
            dots={n: torch.cat(v) for n, v in dots.items() if v},
            unused=sorted(unused),
        )
        for name, sq in result.squared.items():
            if not torch.isfinite(sq).all():
                raise NonFiniteError(
                    f"the gradients at {name!r} contain NaN or inf; in half precision this is "
                    "usually overflow in the backward pass: run the model in float32."
                )
        return result


def _scale_edits_allowed() -> Undoable[None]:
    return Undoable(_allow_scale_edits)


def _allow_scale_edits(undo: UndoFn) -> None:
    # The Bridge warns that an edited hook_scale changes the norm's numerics; that edit is
    # the linearisation the caller asked for.
    catcher = warnings.catch_warnings()
    undo(_leave, catcher)
    catcher.__enter__()
    warnings.filterwarnings("ignore", message=".*edited hook_scale.*")


def _leave(catcher: warnings.catch_warnings) -> None:
    # Idempotent, and nothing to do before it was entered.
    if getattr(catcher, "_entered", False):
        catcher.__exit__(None, None, None)


def _check_finite(*tensors: Tensor | None) -> None:
    if not all(_all_finite(t) for t in tensors if t is not None):
        raise NonFiniteError(
            "the forward pass produced NaN or inf (in the explained activation or the "
            "logits); in half precision this is usually overflow: run the model in "
            "float32 or bfloat16."
        )


def _all_finite(t: Tensor) -> bool:
    # By slices of positions: torch.isfinite allocates temporaries the size of its input
    # (twice the logits' size, 3 GB for SmolLM2 at 8k tokens).
    chunks = t.split(512, dim=1) if t.dim() > 1 else (t,)
    return all(bool(torch.isfinite(c).all()) for c in chunks)


def _combine(parts: list[Tensor], keep_each: bool) -> Tensor:
    stacked = torch.cat(parts)
    return stacked if keep_each else stacked.sum(0, keepdim=True)


def default_batch_size(n_pos: int, d: int, n_sources: int) -> int:
    """How many directions to pull back at once: about 2²⁸ bytes of gradients per batch.

    Example:
        A short prompt takes the cap of 64 directions per backward pass; 8k tokens at
        every layer of SmolLM2 (d = 576, 30 sources) take one at a time:

        >>> from jacobian_scopes.engine import default_batch_size
        >>> default_batch_size(6, 576, 1), default_batch_size(8192, 576, 30)
        (64, 1)
    """
    per_direction = max(1, n_pos * d * max(1, n_sources) * 4)
    return int(max(1, min(64, (1 << 28) // per_direction)))


def _vjp(
    out: Tensor, leaves: list[Tensor | None], chunk: Tensor, retain_graph: bool
) -> list[Tensor | None]:
    """Vector-Jacobian products of ``out`` for a batch of directions, batch axis first."""
    inputs = [leaf for leaf in leaves if leaf is not None]
    if chunk.shape[0] == 1:
        grads = torch.autograd.grad(
            out, inputs, grad_outputs=chunk[0], retain_graph=retain_graph, allow_unused=True
        )
        return [None if g is None else g[None] for g in grads]
    try:
        return list(
            torch.autograd.grad(
                out,
                inputs,
                grad_outputs=chunk,
                is_grads_batched=True,
                retain_graph=True,
                allow_unused=True,
            )
        )
    except RuntimeError:
        # Some ops have no batching rule under vmap; one backward per direction is slower
        # but always works.
        per = [
            torch.autograd.grad(out, inputs, grad_outputs=v, retain_graph=True, allow_unused=True)
            for v in chunk
        ]
        return [
            None if per[0][i] is None else torch.stack([p[i] for p in per])
            for i in range(len(inputs))
        ]


__all__ = [
    "Capture",
    "GradientTap",
    "ModelAdapter",
    "Pullback",
    "Trace",
    "default_batch_size",
    "detach_hook",
]

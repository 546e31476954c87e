"""The command line end to end: attribute and generate on tiny models (loaded from a local
Hugging Face directory, or handed in directly), the demo's report, and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch

import helpers
import jacobian_scopes as js
from jacobian_scopes import cli, demo, models


@pytest.fixture
def tiny_loaded(kind, monkeypatch):
    """The CLI's model loader returns a tiny model of this class (what --model gives)."""
    model = helpers.make_model(kind, "llama")
    monkeypatch.setattr(models, "load_model", lambda spec, device=None: model)
    return model


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny Llama saved as an ordinary Hugging Face checkpoint with its tokenizer."""
    path = tmp_path_factory.mktemp("tiny-llama")
    helpers.make_hf("llama").save_pretrained(path)
    helpers.make_tokenizer().save_pretrained(path)
    return path


needs_bridge = pytest.mark.skipif(not helpers.has_bridge(), reason="needs TransformerBridge")


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@needs_bridge
def test_attribute_from_a_local_directory_writes_json_and_csv(hf_dir, tmp_path, capsys):
    argv = ["attribute", "--model", hf_dir, "--prompt", "w1 w2 w3", "--prompt", "w4 w5"]
    argv += ["--target", "w9", "--out", tmp_path / "r.json", "--out", tmp_path / "r.csv"]
    code, out, err = run([*argv, "--quiet"], capsys)
    assert code == 0, err
    assert "semantic scope" in out and "logit of 'w9'" in out
    results = js.load(tmp_path / "r.json")
    model = models.load_model(str(hf_dir))
    for prompt, r in zip(["w1 w2 w3", "w4 w5"], results, strict=True):
        want = js.semantic_scope(model, prompt, "w9")
        torch.testing.assert_close(r.scores, want.scores, rtol=1e-5, atol=1e-6)
    table = pd.read_csv(tmp_path / "r.csv")
    assert table.result.tolist() == [0] * 4 + [1] * 3
    assert table.token.tolist()[:4] == ["<bos>", "w1", "w2", "w3"]


@needs_bridge
def test_generate_from_a_local_directory(hf_dir, tmp_path, capsys):
    argv = ["generate", "--model", hf_dir, "--prompt", "w1 w2 w3", "--max-new-tokens", "4"]
    argv += ["--scope", "fisher", "--sample", "--seed", "3", "--out", tmp_path / "g.json"]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    g = js.load(tmp_path / "g.json")
    assert isinstance(g, js.GenerationResult) and g.scope == "fisher"
    assert g.params["do_sample"] and g.params["seed"] == 3
    assert "across generation" in out


def test_attribute_prompts_from_jsonl_with_targets_per_prompt(tiny_loaded, tmp_path, capsys):
    path = tmp_path / "p.jsonl"
    lines = [
        {"prompt": "w1 w2", "target": "w7"},
        {"prompt": "w3 w4 w5"},
        {"prompt": "w6", "target": 9},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    code, _, err = run(["attribute", "--prompts", path, "--out", tmp_path / "r.json"], capsys)
    assert code == 0, err
    rs = js.load(tmp_path / "r.json")
    assert rs[0].target.tokens == ["w7"] and rs[2].target.ids == [9]
    assert rs[1].target.ids == [rs[1].top_predictions[0].token_id]  # no target: prediction
    want = js.semantic_scope(tiny_loaded, "w3 w4 w5", rs[1].target.ids[0])
    torch.testing.assert_close(rs[1].scores, want.scores, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scope", ["temperature", "fisher"])
def test_attribute_text_file_with_other_scopes_and_options(tiny_loaded, tmp_path, capsys, scope):
    path = tmp_path / "p.txt"
    path.write_text("w1 w2 w3\n\nw4 w5 w6 w7\n")
    argv = ["attribute", "--prompts", path, "--scope", scope, "--position", "-2"]
    argv += ["--sources", "resid_pre", "--batch-size", "1", "--out", tmp_path / "r.json"]
    code, _out, err = run(argv, capsys)
    assert code == 0, err
    rs = js.load(tmp_path / "r.json")
    assert [r.position for r in rs] == [2, 3]
    assert rs[0].scores.shape == (helpers.N_LAYERS, 4) and rs[0].scope == scope


def test_demo_writes_a_report_that_loads_back(kind, tmp_path, capsys, monkeypatch):
    """The whole demo on a tiny model (its word-level tokenizer reads the case studies'
    words as <unk>, which is enough to exercise every step)."""
    from jacobian_scopes import default_model

    model = helpers.make_model(kind, "llama")
    monkeypatch.setattr(default_model, "load_default_model", lambda *a, **k: model)
    code, out, err = run(["demo", "--out", tmp_path / "demo.html", "--n-generate", "3"], capsys)
    assert code == 0, err
    report = js.load(tmp_path / "demo.json")
    assert [c["name"] for c in report["cases"]] == [c.name for c in demo.CASES]
    for case in report["cases"]:
        assert set(case["results"]) == {"semantic", "temperature", "fisher"}
        assert all(isinstance(r, js.ScopeResult) for r in case["results"].values())
    assert report["generation"]["result"].n_generated == 3
    assert "instruction (truthful)" in out and "across generation" in out
    page = (tmp_path / "demo.html").read_text()
    assert page.count("<section") >= len(demo.CASES) + 1
    assert "attribution across generation" in page and "instruction (truthful)" in page


def test_python_dash_m_runs_the_cli():
    out = subprocess.run(
        [sys.executable, "-m", "jacobian_scopes", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "attribute" in out.stdout and "generate" in out.stdout


BAD = {
    "missing prompts file": (["attribute", "--prompts", "nope.txt"], "cannot read prompts"),
    "unknown format": (["attribute", "--prompt", "w1", "--out", "r.xlsx"], "unknown format"),
    "target with temperature": (
        ["attribute", "--prompt", "w1", "--scope", "temperature", "--target", "w2"],
        "apply to the semantic scope",
    ),
    "empty prompt": (["attribute", "--prompt", ""], "empty"),
    "bad position": (["attribute", "--prompt", "w1 w2", "--position", "7"], "out of range"),
    "bad source": (["attribute", "--prompt", "w1", "--sources", "nowhere"], "not a hook"),
    "multi-token target": (["attribute", "--prompt", "w1", "--target", "w2 w3"], "not one"),
    "bad max-new-tokens": (
        ["generate", "--prompt", "w1", "--max-new-tokens", "0"],
        "max-new-tokens",
    ),
}


# Checked before any model is loaded: the loader below would fail first otherwise.
BEFORE_LOAD = {
    "bad eps": (["attribute", "--prompt", "w1", "--eps", "2"], "--eps must be in [0, 1)"),
    "bad batch size": (["attribute", "--prompt", "w1", "--batch-size", "0"], "--batch-size"),
    "unwritable out": (["attribute", "--prompt", "w1", "--out", "/proc/r.json"], "cannot write"),
    "out is a directory": (["generate", "--prompt", "w1", "--out", "DIR.json"], "is a directory"),
    "bad position": (["attribute", "--prompt", "w1", "--position", "x"], "invalid int value"),
    "bad scope": (["attribute", "--prompt", "w1", "--scope", "bogus"], "invalid choice"),
    "no passages": (["evaluate", "--passages", "0"], "--passages must be at least 1"),
    "bad protocol": (["evaluate", "--protocol", "bogus"], "invalid choice"),
    "missing passages": (["evaluate", "--data", "nope.json"], "cannot read passages"),
}


@pytest.mark.parametrize("case", list(BEFORE_LOAD))
def test_bad_arguments_are_refused_in_one_line_before_the_model_loads(
    tmp_path, monkeypatch, capsys, case
):
    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(models, "load_model", never)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "DIR.json").mkdir()
    argv, match = BEFORE_LOAD[case]
    with pytest.raises(SystemExit) as exit_:
        sys.exit(cli.main(argv))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and match in err
    assert len(err.strip().splitlines()) == 1, err  # one line, not the whole usage
    assert not list(tmp_path.glob("*.tmp"))


def test_any_library_error_is_one_line_with_status_2(tiny_loaded, monkeypatch, capsys):
    def undefined(*args, **kwargs):
        raise js.errors.TemperatureUndefinedError("the Temperature scope is identically zero")

    monkeypatch.setattr(js.scopes, "temperature_scope", undefined)
    code, _, err = run(["attribute", "--prompt", "w1 w2", "--scope", "temperature"], capsys)
    assert code == 2 and err.strip() == "error: the Temperature scope is identically zero"


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exits_with_status_2_and_one_clear_line(tiny_loaded, tmp_path, capsys, case):
    argv, match = BAD[case]
    argv = [str(tmp_path / a) if a in ("nope.txt",) else a for a in argv]
    code, _, err = run(argv, capsys)
    assert code == 2 and "error:" in err and match in err


@pytest.mark.parametrize(
    "lines, match",
    [
        (["{not json"], "p.jsonl:1: not valid JSON"),
        (['{"text": "w1"}'], 'a "prompt" string'),
        (['{"prompt": "w1", "label": 1}'], "unknown key"),
        (['{"prompt": "w1", "target": [1, 2]}'], "string or a token id"),
        ([""], "no prompts"),
    ],
)
def test_bad_jsonl_names_the_line(tmp_path, lines, match):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(lines))
    with pytest.raises(js.errors.ScopeInputError, match=match):
        cli.read_prompts(path)


def test_html_output_of_attribute_and_generate(tiny_loaded, tmp_path, capsys):
    code, _, err = run(
        ["attribute", "--prompt", "w1 w2", "--prompt", "w3", "--out", tmp_path / "a.html"], capsys
    )
    assert code == 0, err
    page = (tmp_path / "a.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("ColoredTokens") >= 2
    code, _, err = run(
        ["generate", "--prompt", "w1 w2", "--max-new-tokens", "3", "--out", tmp_path / "g.html"],
        capsys,
    )
    assert code == 0, err
    page = (tmp_path / "g.html").read_text()
    assert "across generation" in page and "<table" in page


def test_a_model_directory_without_config_and_a_missing_path(tmp_path, capsys):
    code, _, err = run(["attribute", "--model", tmp_path, "--prompt", "w1"], capsys)
    assert code == 2 and "no config.json" in err
    code, _, err = run(["attribute", "--model", "./no/such/dir", "--prompt", "w1"], capsys)
    assert code == 2 and "not a directory" in err


def test_a_model_name_offline_says_what_to_do(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run(
        ["attribute", "--model", "no-such-org/no-such-model", "--prompt", "w1"], capsys
    )
    assert code == 2 and "internet" in err and "--model default" in err


@pytest.mark.skipif(helpers.has_bridge(), reason="TransformerLens 2.x only")
def test_local_directories_on_transformer_lens_2(hf_dir, tmp_path, capsys):
    """A Llama directory becomes a HookedTransformer; other architectures are refused."""
    code, _, err = run(
        [
            "attribute",
            "--model",
            hf_dir,
            "--prompt",
            "w1 w2",
            "--target",
            "w3",
            "--out",
            tmp_path / "r.json",
        ],
        capsys,
    )
    assert code == 0, err
    assert js.load(tmp_path / "r.json")[0].processing["model_class"] == "HookedTransformer"
    gpt2 = tmp_path / "gpt2"
    helpers.make_hf("gpt2").save_pretrained(gpt2)
    helpers.make_tokenizer().save_pretrained(gpt2)
    code, _, err = run(["attribute", "--model", gpt2, "--prompt", "w1"], capsys)
    assert code == 2 and "TransformerLens >= 3.0" in err


@pytest.mark.real
@pytest.mark.slow
def test_demo_on_the_default_model(smollm, tmp_path, capsys, monkeypatch):
    from jacobian_scopes import default_model

    monkeypatch.setattr(default_model, "load_default_model", lambda *a, **k: smollm)
    code, _out, err = run(["demo", "--out", tmp_path / "demo.html", "--quiet"], capsys)
    assert code == 0, err
    report = js.load(tmp_path / "demo.json")
    bias = next(c for c in report["cases"] if c["name"] == "implicit bias (liberal)")
    assert bias["results"]["semantic"].top(1)[0][1] == " Columbia"
    assert report["generation"]["result"].n_generated == demo.LORENZ_GENERATED


@pytest.mark.real
def test_attribute_on_the_default_model(smollm, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(models, "load_model", lambda spec, device=None: smollm)
    argv = ["attribute", "--prompt", "The capital of France is", "--target", " Paris"]
    code, out, err = run([*argv, "--out", tmp_path / "r.csv", "--quiet"], capsys)
    assert code == 0, err
    table = pd.read_csv(tmp_path / "r.csv")
    assert table.token.tolist()[-1] == " is" and "' France'" in out


def test_word_rank_finds_a_word_split_into_tokens():
    r = js.ScopeResult(
        scope="fisher",
        scores=torch.tensor([9.0, 1.0, 3.0, 2.0, 5.0]),
        tokens=torch.arange(5),
        str_tokens=["<bos>", "French:", " lent", "ille", " English"],
        position=4,
        positions=[4],
        top_predictions=[],
        params={},
        processing={},
        model_name="m",
        bos=True,
    )
    assert demo.word_rank(r, "lentille") == (2, " lent")  # ' English' 5 > ' lent' 3
    assert demo.word_rank(r, "English") == (1, " English")
    assert demo.word_rank(r, "Zuschreibung") is None


def test_evaluate_prints_and_writes_the_library_s_summary(tiny_loaded, tmp_path, capsys):
    import json

    import pandas as pd

    from jacobian_scopes.eval.evaluate import evaluate
    from jacobian_scopes.eval.passages import load_lambada

    data = tmp_path / "passages.json"
    data.write_text(json.dumps([{"text": "w1 w5 w9 w2 w7 w3"}, {"text": "w8 w4 w6 w2 w11"}]))
    csv = tmp_path / "summary.csv"
    code, out, err = run(
        ["evaluate", "--data", data, "--methods", "semantic", "--csv", csv, "--quiet"], capsys
    )
    assert code == 0, err
    assert "faithfulness · 2 passages" in out and "semantic" in out
    expected = evaluate(tiny_loaded, load_lambada(data), ["semantic"], verbose=False).summary()
    written = pd.read_csv(csv, index_col=0)
    assert sorted(written.index) == sorted(expected.index) == ["random", "semantic"]
    written = written.loc[list(expected.index)]
    assert written["aopc"].tolist() == pytest.approx(expected["aopc"].tolist(), rel=1e-6)


def test_evaluate_under_torchrun_puts_each_rank_s_model_on_its_local_device(
    monkeypatch, tmp_path, capsys
):
    from jacobian_scopes.eval import distributed
    from jacobian_scopes.eval import evaluate as evaluation

    devices = []
    monkeypatch.setattr(models, "load_model", lambda spec, device=None: devices.append(device))
    monkeypatch.setattr(evaluation, "evaluate", lambda *a, **k: None)  # rank 1 reports nothing
    monkeypatch.setattr(distributed, "torchrun_ranks", lambda: distributed.Ranks(1, 2))
    monkeypatch.setattr(distributed, "local_device", lambda: torch.device("cuda", 1))
    data = tmp_path / "passages.json"
    data.write_text(json.dumps([{"text": "w1 w5 w9"}]))
    assert run(["evaluate", "--data", data, "--quiet"], capsys)[0] == 0
    assert run(["evaluate", "--data", data, "--device", "cpu", "--quiet"], capsys)[0] == 0
    assert devices == ["cuda:1", "cpu"]  # --device, when given, wins

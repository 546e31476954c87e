"""Save and load: JSON, an exact round trip of every field of every result type, no model
needed, and a clear error for malformed, hostile or oversized files."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import pandas as pd
import pytest
import torch

import helpers
import jacobian_scopes as js
from jacobian_scopes import io


def assert_identical(a, b, where="result"):
    """Equal to the bit: tensors in dtype, shape and every value (NaN where NaN)."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        if a.dtype.is_floating_point:
            assert torch.equal(torch.isnan(a), torch.isnan(b)), where
            x, y = a[~torch.isnan(a)], b[~torch.isnan(b)]
            assert torch.equal(x, y), where
            assert torch.equal(torch.signbit(x), torch.signbit(y)), where  # -0.0 stays -0.0
        else:
            assert torch.equal(a, b), where
    elif dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            assert_identical(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            assert_identical(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, where


def roundtrip(obj, tmp_path):
    path = js.save(obj, tmp_path / "r.json")
    back = js.load(path)
    assert_identical(back, obj)
    return back


CALLS = {
    "semantic_vectors": lambda m, t: js.semantic_scope(m, t, 11, return_vectors=True),
    "semantic_contrast": lambda m, t: js.semantic_scope(m, t, 11, foil=12),
    "semantic_multi": lambda m, t: js.semantic_scope(m, t, [11, 12], multi_token=True),
    "semantic_heads_vectors": lambda m, t: js.semantic_scope(
        m, t, 11, sources="z", return_vectors=True
    ),
    "temperature_layers": lambda m, t: js.temperature_scope(m, t, sources="resid_pre"),
    "fisher_sketch": lambda m, t: js.fisher_scope(m, t),
    "fisher_decompose": lambda m, t: js.fisher_scope(m, t, method="exact", decompose=True),
    "fisher_principal": lambda m, t: js.fisher_scope(m, t, method="principal"),
    "direction": lambda m, t: js.scope(
        m, t, torch.ones(helpers.D_MODEL), at="blocks.0.hook_resid_post"
    ),
    "generation_semantic": lambda m, t: js.generate_scope(m, t, 3, stop_at_eos=False),
    "generation_fisher": lambda m, t: js.generate_scope(m, t, 3, "fisher", stop_at_eos=False),
}


@pytest.mark.parametrize("call", list(CALLS))
def test_every_result_type_round_trips_exactly(kind, call, tmp_path):
    model = helpers.make_model(kind, "llama")
    result = CALLS[call](model, helpers.tokens(6))
    back = roundtrip(result, tmp_path)
    assert repr(back) == repr(result)


def test_special_values_dtypes_and_containers_round_trip(tmp_path):
    tiny = torch.finfo(torch.float32).tiny
    special = torch.tensor(
        [math.nan, math.inf, -math.inf, -0.0, 0.1, tiny / 8, 3.4028234e38, 1 / 3],
        dtype=torch.float32,
    )
    scores = special.nan_to_num(0.0, 1.0, -1.0)  # scores are finite (load checks it)
    r = js.ScopeResult(
        scope="semantic",
        scores=scores,
        tokens=torch.arange(8),
        str_tokens=["<bos>", ' "quoted"', "\n", "é", "<img/src=x>", "$tensor", "\\", "\x00"],
        position=7,
        positions=[7],
        top_predictions=[js.results.Prediction(3, " x", 0.25)],
        params={
            "nan": math.nan,
            "inf": -math.inf,
            "tuple": (1, "a", None),
            "$dollar": {1: "int key", "nested": [1.5, True]},
        },
        processing={"fold_ln": False},
        model_name="m",
        target=js.results.Target([3], [" x"], "contrast", 4, " y"),
        first_order=torch.tensor([1.0, -2.5], dtype=torch.bfloat16).repeat(4),
        vectors={
            "a": torch.randn(8, 2, dtype=torch.float64),
            "b": torch.randn(8, 3).half(),
            "special": special,
        },
    )
    roundtrip(r, tmp_path)
    bundle = {
        "results": [r, r],
        "note": "demo",
        "count": 2,
        "empty": [],
        "flags": torch.ones(2) > 0,
    }
    roundtrip(bundle, tmp_path)


def test_loading_needs_no_model_and_imports_no_transformer_lens(tmp_path):
    model = helpers.make_model(helpers.model_kinds()[0], "gpt2")
    path = js.semantic_scope(model, helpers.tokens(5), 11).save(tmp_path / "r.json")
    code = (
        "import sys, jacobian_scopes as js; r = js.load(sys.argv[1]); "
        "assert 'transformer_lens' not in sys.modules, 'transformer_lens was imported'; "
        "print(r.scores.shape)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert "torch.Size([5])" in out.stdout


def test_dataframe_and_csv_export(kind, tmp_path):
    model = helpers.make_model(kind, "gpt2")
    rs = js.semantic_scope(model, [helpers.tokens(4), helpers.tokens(6, seed=3)], 11)
    path = rs[0].to_csv(tmp_path / "one.csv")
    one = pd.read_csv(path)
    assert list(one.columns) == [
        "prompt",
        "scope",
        "target",
        "foil",
        "position",
        "index",
        "token",
        "token_id",
        "score",
    ]
    assert set(one.scope) == {"semantic"} and set(one.position) == {rs[0].position}
    assert one.score.tolist() == pytest.approx(rs[0].scores.tolist())
    table = io.to_dataframe(rs)
    assert len(table) == 10 and table.result.tolist() == [0] * 4 + [1] * 6
    io.to_csv(rs, tmp_path / "all.csv")
    assert pd.read_csv(tmp_path / "all.csv").shape == table.shape
    layers = js.semantic_scope(model, helpers.tokens(4), 11, sources="resid_pre").to_dataframe()
    assert len(layers) == 4 * helpers.N_LAYERS and set(layers.columns) >= {"source", "score"}


# ---------------------------------------------------------------- hostile and broken files
def valid_document(tmp_path):
    model = helpers.make_model(helpers.model_kinds()[0], "gpt2")
    r = js.semantic_scope(model, helpers.tokens(4), 11)
    return json.loads(io.dumps(r))


def write(tmp_path, doc):
    path = tmp_path / "bad.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def edit(doc, fn):
    doc = json.loads(json.dumps(doc))
    fn(doc)
    return doc


def set_field(name, value):
    def fn(doc):
        doc["content"]["fields"][name] = value

    return fn


BROKEN = {
    "not json": ("{'a': 1", "not valid JSON"),
    "pickle": ("\x80\x04\x95", "not valid JSON"),
    "nan literal": ('{"format": "jacobian-scopes", "version": 1, "content": NaN}', "NaN"),
    "no header": ({"content": 1}, "format header"),
    "newer version": (
        {"format": "jacobian-scopes", "version": 99, "content": 1},
        "upgrade jacobian-scopes",
    ),
    "extra top-level key": (
        {"format": "jacobian-scopes", "version": 1, "content": 1, "code": "x"},
        "top-level keys",
    ),
    "unknown class": (lambda d: d["content"].update({"$obj": "subprocess.Popen"}), "unknown class"),
    "unknown field": (set_field("__class__", 1), "no field"),
    "missing field": (lambda d: d["content"]["fields"].pop("scores"), "missing field"),
    "wrong type": (set_field("scores", [1.0, 2.0, 3.0, 4.0]), "scores must be"),
    "float tokens": (
        set_field("tokens", {"$tensor": {"dtype": "float32", "shape": [4], "data": [0.0] * 4}}),
        "tokens must be",
    ),
    "wrong length": (
        set_field("str_tokens", ["a"]),
        "1 str_tokens for 4 tokens",
    ),
    "data vs shape": (
        set_field("scores", {"$tensor": {"dtype": "float32", "shape": [4], "data": [1.0]}}),
        "needs 4 values",
    ),
    "bad dtype": (
        set_field("scores", {"$tensor": {"dtype": "object", "shape": [1], "data": [1]}}),
        "unsupported tensor dtype",
    ),
    "string in data": (
        set_field("scores", {"$tensor": {"dtype": "float32", "shape": [1], "data": ["1e3"]}}),
        "not a number",
    ),
    "int out of range": (
        set_field("tokens", {"$tensor": {"dtype": "int8", "shape": [1], "data": [300]}}),
        "out of range",
    ),
    "huge shape": (
        set_field("scores", {"$tensor": {"dtype": "float32", "shape": [2**20, 2**20], "data": []}}),
        "over the limit",
    ),
    "unknown tag": (set_field("params", {"$eval": "1+1"}), "unknown tag"),
    "tag with extra keys": (set_field("params", {"$float": "nan", "x": 1}), "exactly one key"),
    "bad float tag": (set_field("params", {"$float": "1e999"}), "nan"),
    "position outside": (set_field("position", 9), "position outside"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_or_hostile_files_get_a_clear_error(tmp_path, case):
    doc, match = BROKEN[case]
    if callable(doc):
        doc = edit(valid_document(tmp_path), doc)
    with pytest.raises(js.errors.ResultFileError, match=match):
        js.load(write(tmp_path, doc))


def test_deep_nesting_and_oversized_files_are_refused(tmp_path):
    deep = (
        '{"format": "jacobian-scopes", "version": 1, "content": '
        + "[" * 100_000
        + "]" * 100_000
        + "}"
    )
    with pytest.raises(js.errors.ResultFileError, match=r"nested too deeply|not valid"):
        js.load(write(tmp_path, deep))
    nested = {"format": "jacobian-scopes", "version": 1, "content": [[[[[[[[1]]]]]]]]}
    for _ in range(70):
        nested["content"] = [nested["content"]]
    with pytest.raises(js.errors.ResultFileError, match="nested too deeply"):
        js.load(write(tmp_path, nested))
    path = write(tmp_path, {"format": "jacobian-scopes", "version": 1, "content": "x" * 1000})
    with pytest.raises(js.errors.ResultFileError, match="over the limit"):
        js.load(path, max_bytes=100)
    with pytest.raises(js.errors.ResultFileError, match="cannot read"):
        js.load(tmp_path / "missing.json")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(js.errors.ResultFileError, match="UTF-8"):
        js.load(tmp_path / "bin.json")


def test_saving_an_unsupported_value_fails_before_writing(tmp_path):
    with pytest.raises(TypeError, match="cannot save"):
        js.save({"fn": print}, tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()

"""Hostile result files: ``load`` reads regular files only and never more than the limit,
bounds what a file can make it build, and turns every malformation into a ResultFileError,
including the values that would only break later (tables, pages, a second save)."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
import torch

import helpers
import jacobian_scopes as js
from jacobian_scopes import io

HEADER = '{"format": "jacobian-scopes", "version": 1, "content": '


def _load_within(path, seconds: float = 20.0, **kwargs):
    """``load(path)``, failing the test (instead of hanging it) if it takes too long."""
    out: dict = {}

    def run():
        try:
            out["value"] = js.load(path, **kwargs)
        except BaseException as exc:  # handed to the test
            out["error"] = exc

    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(seconds)
    assert not th.is_alive(), f"load({path}) still running after {seconds} s"
    if "error" in out:
        raise out["error"]
    return out["value"]


# ------------------------------------------------------------------ what gets read
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_without_writer_is_refused_at_once(tmp_path):
    fifo = tmp_path / "r.json"
    os.mkfifo(fifo)
    with pytest.raises(js.errors.ResultFileError, match=r"not a regular file.*FIFO"):
        _load_within(fifo)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_a_device_behind_a_symlink_is_refused_without_reading_it(tmp_path):
    link = tmp_path / "r.json"
    link.symlink_to("/dev/zero")
    with pytest.raises(js.errors.ResultFileError, match=r"not a regular file.*character device"):
        _load_within(link, seconds=5)


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(js.errors.ResultFileError, match=r"directory|cannot read"):
        _load_within(tmp_path)


def test_a_symlink_to_a_result_file_loads(tmp_path):
    path = tmp_path / "real.json"
    js.save({"a": 1}, path)
    link = tmp_path / "link.json"
    link.symlink_to(path)
    assert _load_within(link) == {"a": 1}


def test_never_more_than_the_limit_is_read(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    path.write_text(HEADER + '"' + "x" * 5000 + '"}')
    asked: list[int] = []
    real_fdopen, real_fstat = os.fdopen, os.fstat

    class Spy:
        def __init__(self, file):
            self.file = file

        def read(self, n):
            asked.append(n)
            return self.file.read(n)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    def growing(fd):
        # A file that grows after its size was taken (or reports a wrong size).
        info = list(real_fstat(fd))
        info[6] = 10  # st_size
        return os.stat_result(info)

    monkeypatch.setattr(io.os, "fdopen", lambda *a, **k: Spy(real_fdopen(*a, **k)))
    monkeypatch.setattr(io.os, "fstat", growing)
    with pytest.raises(js.errors.ResultFileError, match="over the limit"):
        js.load(path, max_bytes=100)
    assert sum(asked) == 101


# ------------------------------------------------------------------ what gets built
def _write(tmp_path, text: str):
    path = tmp_path / "bad.json"
    path.write_text(text)
    return path


@pytest.mark.parametrize("unit", ["[],", "{},", "[[],[]],"])
def test_a_flood_of_empty_containers_is_refused_before_parsing(tmp_path, unit):
    body = unit * (300_000 // len(unit) * 3)
    path = _write(tmp_path, HEADER + "[" + body + "[]]}")
    start = time.perf_counter()
    with pytest.raises(js.errors.ResultFileError, match="lists and objects"):
        _load_within(path)
    assert time.perf_counter() - start < 20  # refused, not built (measured: bench_load.py)


def test_a_flood_of_small_result_objects_is_refused_before_parsing(tmp_path):
    one = '{"$obj":"Prediction","fields":{"token_id":7,"token":" the","prob":0.25}},'
    path = _write(tmp_path, HEADER + "[" + one * 60_000 + one[:-1] + "]}")
    with pytest.raises(js.errors.ResultFileError, match="result objects"):
        _load_within(path)
    # A few are fine, and so is the text "$obj" as a token.
    path = _write(tmp_path, HEADER + "[" + one * 100 + '"$obj"]}')
    got = _load_within(path)
    assert (
        len(got) == 101 and got[0] == js.results.Prediction(7, " the", 0.25) and got[-1] == "$obj"
    )


def test_brackets_inside_strings_do_not_count(tmp_path):
    tokens = ["[{" * 20] * 20_000  # 800k brackets, all inside strings
    path = tmp_path / "ok.json"
    js.save({"tokens": tokens}, path)
    assert _load_within(path) == {"tokens": tokens}


def test_a_long_list_of_numbers_loads_as_it_was_saved(tmp_path):
    values = torch.arange(300_000, dtype=torch.float32) / 7
    path = tmp_path / "ok.json"
    js.save({"v": values, "ints": list(range(1000))}, path)
    got = _load_within(path)
    assert torch.equal(got["v"], values) and got["ints"] == list(range(1000))


# ------------------------------------------------------------ raw errors made clear
def _doc(content) -> str:
    return HEADER + json.dumps(content) + "}"


def _tensor(dtype, shape, data):
    return {"$tensor": {"dtype": dtype, "shape": shape, "data": data}}


RAW = {
    "dimension 2**64": (_doc(_tensor("float32", [0, 2**64], [])), "bad tensor shape"),
    "10**400 in a float tensor": (
        HEADER + '{"$tensor": {"dtype": "float32", "shape": [1], "data": [1' + "0" * 400 + "]}}}",
        "out of the range",
    ),
    "1e400 in a float tensor": (
        HEADER + '{"$tensor": {"dtype": "float32", "shape": [1], "data": [1e400]}}}',
        "out of the range",
    ),
    "1e300 in a float16 tensor": (_doc(_tensor("float16", [1], [1e300])), "out of the range"),
    "unhashable key": (_doc({"$dict": [[{"$tuple": [[1]]}, 1]]}), "unhashable"),
    "lone surrogate": (HEADER + '{"a": "x\\ud800y"}}', "lone surrogate"),
    "lone surrogate key": (HEADER + '{"\\udfff": 1}}', "lone surrogate"),
}


@pytest.mark.parametrize("case", list(RAW))
def test_raw_errors_become_result_file_errors(tmp_path, case):
    text, match = RAW[case]
    with pytest.raises(js.errors.ResultFileError, match=match):
        _load_within(_write(tmp_path, text))


# ------------------------------------------------- values that would break later
@pytest.fixture(scope="module")
def documents():
    model = helpers.make_model(helpers.model_kinds()[0], "gpt2")
    toks = helpers.tokens(5)
    return {
        "scope": json.loads(io.dumps(js.semantic_scope(model, toks, 11))),
        "layers": json.loads(io.dumps(js.semantic_scope(model, toks, 11, sources="resid_pre"))),
        "generation": json.loads(io.dumps(js.generate_scope(model, toks, 3, stop_at_eos=False))),
    }


def _fields(doc):
    return doc["content"]["fields"]


def _set_tensor_value(field, index, value):
    def fn(doc):
        _fields(doc)[field]["$tensor"]["data"][index] = value

    return fn


def _set(field, value):
    def fn(doc):
        _fields(doc)[field] = value

    return fn


def _edit_first_prediction(key, value):
    def fn(doc):
        _fields(doc)["top_predictions"][0]["fields"][key] = value

    return fn


LATER = {
    "nan score": ("scope", _set_tensor_value("scores", 1, "nan"), "scores are NaN"),
    "inf score": ("scope", _set_tensor_value("scores", 0, "inf"), "scores are NaN"),
    "inf first_order": ("scope", _set_tensor_value("first_order", 0, "-inf"), "first_order"),
    "negative token id": ("scope", _set_tensor_value("tokens", 2, -3), "negative token id"),
    "negative prediction id": ("scope", _edit_first_prediction("token_id", -1), "negative"),
    "probability 2": ("scope", _edit_first_prediction("prob", 2.0), "not a probability"),
    "short first_order": (
        "scope",
        _set("first_order", _tensor("float32", [2], [1.0, 2.0])),
        "first_order needs the shape",
    ),
    "source_labels on a 1-D result": ("scope", _set("source_labels", ["a"]), "source_labels"),
    "wrong number of source_labels": ("layers", _set("source_labels", ["a"]), "source_labels"),
    "score_axes": ("layers", _set("score_axes", {"$tuple": ["token"]}), "score_axes"),
    "generation position outside": (
        "generation",
        lambda d: _fields(d)["positions"].__setitem__(2, 40),
        "position outside",
    ),
    "generation negative position": (
        "generation",
        lambda d: _fields(d)["positions"].__setitem__(0, -1),
        "position outside",
    ),
    "generation inf where seen": (
        "generation",
        _set_tensor_value("scores", 0, "inf"),
        "scores are NaN or infinite",
    ),
    "generation probability": (
        "generation",
        lambda d: _fields(d)["token_probs"].__setitem__(0, {"$float": "nan"}),
        "probability",
    ),
    "surrogate token": (
        "scope",
        lambda d: _fields(d)["str_tokens"].__setitem__(1, "\ud83d"),
        "lone surrogate",
    ),
}


@pytest.mark.parametrize("case", list(LATER))
def test_values_that_break_tables_and_pages_are_refused(tmp_path, documents, case):
    which, fn, match = LATER[case]
    doc = json.loads(json.dumps(documents[which]))
    path = tmp_path / "ok.json"
    path.write_text(json.dumps(doc))
    js.load(path)  # the unedited file loads
    fn(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(js.errors.ResultFileError, match=match):
        js.load(path)

"""Save and load results as JSON: no pickle, safe on untrusted files, an exact round trip.

A file is ``{"format": "jacobian-scopes", "version": 1, "content": ...}``. The content is
plain JSON plus a few tagged objects, each a JSON object with exactly one key:

* ``{"$tensor": {"dtype": "float32", "shape": [2, 3], "data": [...]}}``: a tensor, its
  values flattened in row-major order. Float32 (and bfloat16, float16) values survive a
  JSON round trip exactly through Python floats; NaN and ±inf, which JSON does not allow,
  are written as the strings ``"nan"``, ``"inf"``, ``"-inf"``.
* ``{"$float": "nan"}``: a non-finite Python float.
* ``{"$tuple": [...]}``, and ``{"$dict": [[key, value], ...]}`` for a dict whose keys are
  not all plain strings.
* ``{"$obj": "ScopeResult", "fields": {...}}``: one of a *closed* list of result classes
  (``CLASSES``). Loading checks every field against the class's type annotations (tensor
  dtypes and ranks included) and a few invariants between fields
  (:mod:`jacobian_scopes.decoding`).

Loading never imports, evaluates or calls anything named in the file, reads only regular
files and never more than ``max_bytes + 1`` bytes of them, bounds what the file can make it
build (lists and objects, result objects, per character of the file, counted before
parsing; tensor values against their declared shape), and turns every malformation into a
:class:`ResultFileError` that says where it is, including values that would only break
later (non-finite scores, negative token ids, lengths that disagree, lone surrogates).
Tensors load on the CPU; no model is needed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from jacobian_scopes.decoding import CLASSES, DTYPES, Decoder
from jacobian_scopes.errors import ResultFileError
from jacobian_scopes.results import (
    GenerationResult,
    ScopeResult,
    ScopeResults,
)

FORMAT = "jacobian-scopes"
VERSION = 1
MAX_BYTES = 512 * 2**20


# ------------------------------------------------------------------------------ save
def save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Write a result (or a list or dict of results and plain values) as JSON.

    Example:
        >>> import jacobian_scopes as js
        >>> model = js.load_default_model()
        >>> r = js.semantic_scope(model, "The capital of France is", " Paris")
        >>> js.save(r, "paris.json")
        PosixPath('paris.json')
        >>> js.load("paris.json").scores.equal(r.scores)
        True
    """
    path = Path(path)
    text = dumps(obj)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)  # never leave a half-written file under the real name
    return path


def dumps(obj: Any) -> str:
    """The JSON text :func:`save` writes.

    Example:
        Results travel with plain values, e.g. as one record of a run's log:

        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.io import dumps
        >>> model = js.load_default_model()
        >>> rs = js.semantic_scope(model, ["The capital of France is", "The capital of Italy is"],
        ...                        [" Paris", " Rome"])
        >>> text = dumps({"run": "capitals", "results": list(rs)})
        >>> text[:42]
        '{"format":"jacobian-scopes","version":1,"c'
    """
    document = {"format": FORMAT, "version": VERSION, "content": _encode(obj)}
    return json.dumps(document, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _encode(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": _nonfinite_name(value)}
    if isinstance(value, Tensor):
        return {"$tensor": _encode_tensor(value)}
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: _encode(v) for k, v in value.items()}
        return {"$dict": [[_encode(k), _encode(v)] for k, v in value.items()]}
    name = type(value).__name__
    if dataclasses.is_dataclass(value) and CLASSES.get(name) is type(value):
        fields = {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"$obj": name, "fields": fields}
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _encode(value.item())
    raise TypeError(f"cannot save a value of type {type(value).__name__} as JSON")


def _nonfinite_name(x: float) -> str:
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def _encode_tensor(t: Tensor) -> dict[str, Any]:
    name = str(t.dtype).replace("torch.", "")
    if name not in DTYPES:
        raise TypeError(f"cannot save a tensor of dtype {t.dtype}")
    flat = t.detach().cpu().reshape(-1)
    if t.dtype in (torch.bfloat16, torch.float16):
        flat = flat.float()  # exactly representable; tolist() has no half floats
    data = flat.tolist()
    if t.dtype.is_floating_point and not bool(torch.isfinite(flat).all()):
        data = [x if math.isfinite(x) else _nonfinite_name(x) for x in data]
    return {"dtype": name, "shape": list(t.shape), "data": data}


# ------------------------------------------------------------------------------ load
def load(path: str | os.PathLike[str], *, max_bytes: int = MAX_BYTES) -> Any:
    """Read what :func:`save` wrote. Safe on untrusted files (see the module's notes).

    Only a regular file is read (a FIFO, a device or a directory is refused at once), and
    never more than ``max_bytes + 1`` bytes of it.

    Example:
        >>> import jacobian_scopes as js
        >>> model = js.load_default_model()
        >>> js.save(js.temperature_scope(model, "1, 2, 3,"), "ones.json")
        PosixPath('ones.json')
        >>> js.load("ones.json").scope
        'temperature'
    """
    path = Path(path)
    data = _read_regular_file(path, max_bytes)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ResultFileError(f"{path} is not UTF-8 text (not a result file?)") from exc
    del data
    return loads(text, max_bytes=max_bytes, source=str(path))


def _read_regular_file(path: Path, max_bytes: int) -> bytes:
    # O_NONBLOCK: opening a FIFO with no writer would otherwise wait forever. The checks
    # are made on the opened descriptor, so a symlink swapped meanwhile cannot slip past.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ResultFileError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ResultFileError(
                f"{path} is not a regular file ({_file_kind(info.st_mode)}); "
                "a result file is a regular file"
            )
        if info.st_size > max_bytes:
            raise ResultFileError(
                f"{path} is {info.st_size} bytes, over the limit of {max_bytes}; pass "
                "max_bytes= to load larger files you trust"
            )
    except OSError as exc:
        os.close(fd)
        raise ResultFileError(f"cannot read {path}: {exc.strerror}") from exc
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb", buffering=0) as file:
        try:
            data = _read_at_most(file, info.st_size + 1)
            if len(data) > info.st_size:  # it grew since: read on, up to the limit
                data += _read_at_most(file, max_bytes + 1 - len(data))
        except OSError as exc:
            raise ResultFileError(f"cannot read {path}: {exc.strerror}") from exc
    if len(data) > max_bytes:
        raise ResultFileError(f"{path} is over the limit of {max_bytes} bytes")
    return data


def _read_at_most(file: Any, n: int) -> bytes:
    chunks = []
    while n > 0:
        chunk = file.read(min(n, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _file_kind(mode: int) -> str:
    kinds = [
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ]
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def loads(text: str, *, max_bytes: int = MAX_BYTES, source: str = "<string>") -> Any:
    """Parse the JSON text of a result file (see :func:`load`).

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.io import dumps, loads
        >>> model = js.load_default_model()
        >>> rs = js.semantic_scope(model, ["The capital of France is", "The capital of Italy is"],
        ...                        [" Paris", " Rome"])
        >>> back = loads(dumps({"run": "capitals", "results": list(rs)}))
        >>> back["run"], [r.target.tokens for r in back["results"]]
        ('capitals', [[' Paris'], [' Rome']])
        >>> back["results"][1].scores.equal(rs[1].scores)
        True
    """
    if len(text) > max_bytes:
        raise ResultFileError(f"{source}: {len(text)} characters, over the limit of {max_bytes}")
    _check_containers(text, source)
    try:
        document = json.loads(text, parse_constant=_reject_constant)
    except RecursionError as exc:
        raise ResultFileError(f"{source}: nested too deeply") from exc
    except (json.JSONDecodeError, ValueError) as exc:
        raise ResultFileError(f"{source}: not valid JSON ({exc})") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ResultFileError(f"{source}: not a jacobian-scopes result file (no format header)")
    version = document.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ResultFileError(f"{source}: bad version {version!r}")
    if version > VERSION:
        raise ResultFileError(
            f"{source}: written by a newer jacobian-scopes (format version {version}; this "
            f"one reads up to {VERSION}); upgrade jacobian-scopes to read it"
        )
    if set(document) != {"format", "version", "content"}:
        extra = sorted(set(document) - {"format", "version", "content"})
        raise ResultFileError(f"{source}: unexpected or missing top-level keys {extra}")
    content = Decoder(source).decode(document["content"], "content", 0)
    # Several prompts' results were saved as a list; they come back as the same type.
    if isinstance(content, list) and content and all(isinstance(r, ScopeResult) for r in content):
        return ScopeResults(content)
    return content


#: A result file is mostly numbers: it never holds more than one list or object per this
#: many characters (a small result: one per ~25; a 3-token one-line tensor: one per ~15).
#: An empty list costs Python 56 bytes and its 3 characters ("[],"), so without this bound
#: a file of them would take ~20 times its size in memory.
CHARS_PER_CONTAINER = 12
MIN_CONTAINERS = 1 << 17
#: Result objects ($obj) are checked one by one in Python (~10 µs each): a file holds at
#: most one per this many characters (the smallest result, 2 tokens: one per ~200).
CHARS_PER_OBJECT = 128
MIN_OBJECTS = 4096
_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+"')


def _check_containers(text: str, source: str) -> None:
    # A quote can appear inside a JSON string only escaped, so '"$obj"' is a tag (or a
    # string that is exactly "$obj"; counting it too only errs on the safe side).
    n_objects = text.count('"$obj"')
    if n_objects > max(MIN_OBJECTS, len(text) // CHARS_PER_OBJECT):
        raise ResultFileError(
            f"{source}: {n_objects} result objects in {len(text)} characters; a result file "
            f"holds at most one per {CHARS_PER_OBJECT} characters (or {MIN_OBJECTS} in all)"
        )
    limit = max(MIN_CONTAINERS, len(text) // CHARS_PER_CONTAINER)
    if text.count("[") + text.count("{") <= limit:  # brackets inside strings counted too
        return
    bare = _STRING.sub("", text)
    n = bare.count("[") + bare.count("{")
    del bare
    if n > limit:
        raise ResultFileError(
            f"{source}: {n} lists and objects in {len(text)} characters; a result file holds "
            f"at most one per {CHARS_PER_CONTAINER} characters (or {MIN_CONTAINERS} in all)"
        )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed (non-finite numbers are written as tagged strings)")


# --------------------------------------------------------------------------- tables
def to_dataframe(results: Any) -> Any:
    """One table for a result or a list of results, with a ``result`` column (the index in
    the list) in front; each result's own columns as its ``to_dataframe()`` gives them.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.io import to_dataframe
        >>> model = js.load_default_model()
        >>> rs = js.semantic_scope(model, ["The capital of France is", "1, 2, 3,"])
        >>> to_dataframe(rs).to_csv("scores.csv")
        >>> list(to_dataframe(rs).columns)  # doctest: +NORMALIZE_WHITESPACE
        ['result', 'prompt', 'scope', 'target', 'foil', 'position',
         'index', 'token', 'token_id', 'score']
    """
    import pandas as pd

    if isinstance(results, (ScopeResult, GenerationResult)):
        results = [results]
    frames = []
    for i, r in enumerate(results):
        if not isinstance(r, (ScopeResult, GenerationResult)):
            raise TypeError(f"expected results, got {type(r).__name__} at index {i}")
        df = r.to_dataframe()
        if "scope" not in df.columns:
            df.insert(0, "scope", r.scope)
        df.insert(0, "result", i)
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def to_csv(results: Any, path: str | os.PathLike[str]) -> Path:
    """Write :func:`to_dataframe` as CSV; returns the path.

    Example:
        >>> import pandas as pd, jacobian_scopes as js
        >>> from jacobian_scopes.io import to_csv
        >>> model = js.load_default_model()
        >>> rs = js.semantic_scope(model, ["The capital of France is", "The capital of Italy is"],
        ...                        [" Paris", " Rome"])
        >>> to_csv(rs, "capitals.csv")
        PosixPath('capitals.csv')
        >>> table = pd.read_csv("capitals.csv")
        >>> len(table), table.loc[table.score.idxmax(), ["prompt", "token"]].tolist()
        (12, ['The capital of Italy is', ' capital'])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_dataframe(results).to_csv(path, index=False)
    return path

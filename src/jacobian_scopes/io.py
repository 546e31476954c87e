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
  (:data:`CLASSES`). Loading checks every field against the class's type annotations
  (tensor dtypes and ranks included) and a few invariants between fields.

Loading never imports, evaluates or calls anything named in the file, rejects files over
``max_bytes`` before reading them, and turns every malformation into a
:class:`ResultFileError` that says where it is. Tensors load on the CPU; no model is needed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from jacobian_scopes.errors import ScopeInputError
from jacobian_scopes.generation import GenerationResult
from jacobian_scopes.results import FisherDetails, Prediction, ScopeResult, Target

FORMAT = "jacobian-scopes"
VERSION = 1
MAX_BYTES = 512 * 2**20
MAX_DEPTH = 64
MAX_ELEMENTS = 2**27  # per tensor: 128M values, far beyond any result of a 8k-token prompt

CLASSES: dict[str, type] = {
    cls.__name__: cls for cls in (Prediction, Target, FisherDetails, ScopeResult, GenerationResult)
}

_DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class ResultFileError(ScopeInputError):
    """A result file that is not a valid jacobian-scopes JSON file (or too large)."""


# ------------------------------------------------------------------------------ save
def save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Write a result (or a list or dict of results and plain values) as JSON.

    Example:
        >>> r = semantic_scope(model, "The capital of France is", " Paris")  # doctest: +SKIP
        >>> save(r, "paris.json")                                              # doctest: +SKIP
        >>> load("paris.json").scores.equal(r.scores)                          # doctest: +SKIP
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
    """The JSON text :func:`save` writes."""
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
    if name not in _DTYPES:
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

    Example:
        >>> result = load("reports/demo.json")   # doctest: +SKIP
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ResultFileError(f"cannot read {path}: {exc.strerror}") from exc
    if size > max_bytes:
        raise ResultFileError(
            f"{path} is {size} bytes, over the limit of {max_bytes}; pass max_bytes= to "
            "load larger files you trust"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ResultFileError(f"{path} is not UTF-8 text (not a result file?)") from exc
    return loads(text, max_bytes=max_bytes, source=str(path))


def loads(text: str, *, max_bytes: int = MAX_BYTES, source: str = "<string>") -> Any:
    """Parse the JSON text of a result file (see :func:`load`)."""
    if len(text) > max_bytes:
        raise ResultFileError(f"{source}: {len(text)} characters, over the limit of {max_bytes}")
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
    return _Decoder(source).decode(document["content"], "content", 0)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed (non-finite numbers are written as tagged strings)")


class _Decoder:
    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, message: str) -> ResultFileError:
        return ResultFileError(f"{self.source}: {where}: {message}")

    def decode(self, value: Any, where: str, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise self.fail(where, "nested too deeply")
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, list):
            return [self.decode(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
        assert isinstance(value, dict)
        tags = [k for k in value if k.startswith("$")]
        if not tags:
            return {k: self.decode(v, f"{where}.{k}", depth + 1) for k, v in value.items()}
        tag = tags[0]
        if tag == "$obj":
            return self.decode_obj(value, where, depth)
        if len(value) != 1:
            raise self.fail(where, f"a {tag} object must have exactly one key")
        body = value[tag]
        if tag == "$tensor":
            return self.decode_tensor(body, where)
        if tag == "$float":
            if body not in _NONFINITE:
                raise self.fail(where, f"$float must be 'nan', 'inf' or '-inf', got {body!r}")
            return _NONFINITE[body]
        if tag == "$tuple":
            if not isinstance(body, list):
                raise self.fail(where, "$tuple must hold a list")
            return tuple(self.decode(body, where, depth + 1))
        if tag == "$dict":
            if not isinstance(body, list) or not all(
                isinstance(p, list) and len(p) == 2 for p in body
            ):
                raise self.fail(where, "$dict must hold a list of [key, value] pairs")
            out = {}
            for i, (k, v) in enumerate(body):
                key = self.decode(k, f"{where}<key {i}>", depth + 1)
                if not isinstance(key, (str, int, float, bool, tuple)) and key is not None:
                    raise self.fail(where, f"unusable dict key {key!r}")
                out[key] = self.decode(v, f"{where}[{key!r}]", depth + 1)
            return out
        raise self.fail(where, f"unknown tag {tag!r}")

    def decode_tensor(self, body: Any, where: str) -> Tensor:
        if not isinstance(body, dict) or set(body) != {"dtype", "shape", "data"}:
            raise self.fail(where, "$tensor needs exactly dtype, shape and data")
        dtype = _DTYPES.get(body["dtype"]) if isinstance(body["dtype"], str) else None
        if dtype is None:
            raise self.fail(where, f"unsupported tensor dtype {body['dtype']!r}")
        shape = body["shape"]
        if not isinstance(shape, list) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
        ):
            raise self.fail(where, f"bad tensor shape {shape!r}")
        numel = math.prod(shape)
        if numel > MAX_ELEMENTS:
            raise self.fail(where, f"tensor of {numel} values is over the limit {MAX_ELEMENTS}")
        data = body["data"]
        if not isinstance(data, list) or len(data) != numel:
            got = len(data) if isinstance(data, list) else type(data).__name__
            raise self.fail(where, f"shape {shape} needs {numel} values, got {got}")
        if dtype.is_floating_point:
            values = []
            for x in data:
                if isinstance(x, str) and x in _NONFINITE:
                    values.append(_NONFINITE[x])
                elif isinstance(x, (int, float)) and not isinstance(x, bool):
                    values.append(float(x))
                else:
                    raise self.fail(where, f"{x!r} is not a number")
            # float64 first: the values are exact doubles, and the cast to a narrower
            # dtype is exact too, because they were written from that dtype.
            flat = torch.tensor(values, dtype=torch.float64).to(dtype)
        elif dtype == torch.bool:
            if not all(isinstance(x, bool) for x in data):
                raise self.fail(where, "a bool tensor holds true/false only")
            flat = torch.tensor(data, dtype=torch.bool)
        else:
            if not all(isinstance(x, int) and not isinstance(x, bool) for x in data):
                raise self.fail(where, "an integer tensor holds integers only")
            info = torch.iinfo(dtype)
            if data and not (info.min <= min(data) and max(data) <= info.max):
                raise self.fail(where, f"values out of range for {body['dtype']}")
            flat = torch.tensor(data, dtype=dtype)
        return flat.reshape(shape)

    def decode_obj(self, value: dict[str, Any], where: str, depth: int) -> Any:
        if set(value) != {"$obj", "fields"}:
            raise self.fail(where, "$obj needs exactly $obj and fields")
        name = value["$obj"]
        cls = CLASSES.get(name) if isinstance(name, str) else None
        if cls is None:
            raise self.fail(where, f"unknown class {name!r} (known: {sorted(CLASSES)})")
        raw = value["fields"]
        if not isinstance(raw, dict):
            raise self.fail(where, "fields must be an object")
        spec = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - set(spec))
        if unknown:
            raise self.fail(where, f"{name} has no field(s) {unknown}")
        required = [
            n
            for n, f in spec.items()
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        missing = [n for n in required if n not in raw]
        if missing:
            raise self.fail(where, f"{name} is missing field(s) {missing}")
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, item in raw.items():
            decoded = self.decode(item, f"{where}.{key}", depth + 1)
            if not _matches(decoded, hints[key]):
                raise self.fail(
                    f"{where}.{key}",
                    f"{name}.{key} must be {_describe(hints[key])}, got {_describe_value(decoded)}",
                )
            kwargs[key] = decoded
        obj = cls(**kwargs)
        problem = _invariants(obj)
        if problem:
            raise self.fail(where, f"inconsistent {name}: {problem}")
        return obj


# ------------------------------------------------------------------------ schema check
def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits the type annotation ``hint`` (the subset results use)."""
    if hint is Any:
        return True
    if hint is None or hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(
            _matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items()
        )
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        if len(args) != len(value):
            return False
        return all(_matches(v, a) for v, a in zip(value, args, strict=True))
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        # jaxtyping annotations are classes whose isinstance checks dtype kind and rank.
        return isinstance(value, hint)
    return False


def _describe(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("torch.", "")


def _describe_value(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a {str(value.dtype).replace('torch.', '')} tensor of shape {list(value.shape)}"
    return type(value).__name__


def _invariants(obj: Any) -> str | None:
    """Consistency between fields that the annotations cannot express."""
    if isinstance(obj, ScopeResult):
        n = obj.n_tokens
        if len(obj.str_tokens) != n:
            return f"{len(obj.str_tokens)} str_tokens for {n} tokens"
        if obj.scores.dim() == 0 or obj.scores.shape[-1] != n:
            return f"scores of shape {list(obj.scores.shape)} for {n} tokens"
        if not all(0 <= p < n for p in [obj.position, *obj.positions]):
            return "a position outside the tokens"
    if isinstance(obj, GenerationResult):
        n = obj.tokens.shape[0]
        if len(obj.str_tokens) != n or not 0 < obj.n_prompt <= n:
            return "tokens, str_tokens and n_prompt disagree"
        if obj.scores.shape != (len(obj.positions), max(0, n - 1)):
            return f"scores of shape {list(obj.scores.shape)} for this sequence"
        if len(obj.token_probs) != len(obj.positions):
            return "one token probability per generated token is needed"
    return None


# --------------------------------------------------------------------------- tables
def to_dataframe(results: Any) -> Any:
    """One table for a result or a list of results, with a ``result`` column (the index in
    the list) in front; each result's own columns as its ``to_dataframe()`` gives them.

    Example:
        >>> rs = semantic_scope_batch(model, prompts)                # doctest: +SKIP
        >>> to_dataframe(rs).to_csv("scores.csv")                    # doctest: +SKIP
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
    """Write :func:`to_dataframe` as CSV; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_dataframe(results).to_csv(path, index=False)
    return path

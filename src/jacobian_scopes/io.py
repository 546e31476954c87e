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

Loading never imports, evaluates or calls anything named in the file, reads only regular
files and never more than ``max_bytes + 1`` bytes of them, bounds what the file can make it
build (lists and objects, result objects, per character of the file, counted before
parsing; tensor values against their declared shape), and turns every malformation into a
:class:`ResultFileError` that says where it is, including values that would only break
later (non-finite scores, negative token ids, lengths that disagree, lone surrogates).
Tensors load on the CPU; no model is needed.
"""

from __future__ import annotations

import array
import dataclasses
import functools
import json
import math
import os
import re
import stat
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from jacobian_scopes.errors import ResultFileError
from jacobian_scopes.results import (
    FisherDetails,
    GenerationResult,
    Prediction,
    ScopeResult,
    ScopeResults,
    Target,
)

FORMAT = "jacobian-scopes"
VERSION = 1
MAX_BYTES = 512 * 2**20
MAX_DEPTH = 64
MAX_ELEMENTS = 2**27  # per tensor: 128M values, far beyond any result of a 8k-token prompt
MAX_RANK = 16

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
    """Parse the JSON text of a result file (see :func:`load`)."""
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
    content = _Decoder(source).decode(document["content"], "content", 0)
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


_SURROGATE = re.compile("[\ud800-\udfff]")
_NUMBER_TYPES = frozenset({int, float})
_SCALAR_TYPES = frozenset({int, float, bool, type(None)})
_TEXT_TYPES = _SCALAR_TYPES | {str}

# A location in the file: a string, or (parent, key) built up as the decoder descends, made
# into text only for an error message (formatting one per list element would cost seconds).
Where = str | tuple[Any, Any]


def _where_text(where: Where) -> str:
    parts = []
    while isinstance(where, tuple):
        where, key = where
        parts.append(f"[{key}]" if isinstance(key, int) else f".{key}")
    return where + "".join(reversed(parts))


class _Decoder:
    def __init__(self, source: str):
        self.source = source

    def fail(self, where: Where, message: str) -> ResultFileError:
        return ResultFileError(f"{self.source}: {_where_text(where)}: {message}")

    def text(self, value: str, where: Where) -> str:
        if not value.isascii() and _SURROGATE.search(value):
            raise self.fail(where, "a string holds a lone surrogate (not valid Unicode text)")
        return value

    def decode(self, value: Any, where: Where, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise self.fail(where, "nested too deeply")
        if value is None or isinstance(value, (bool, int, float)):
            return value
        if isinstance(value, str):
            return self.text(value, where)
        if isinstance(value, list):
            kinds = set(map(type, value))
            if kinds <= _SCALAR_TYPES:  # numbers: nothing to decode, keep the list
                return value
            if kinds <= _TEXT_TYPES:  # e.g. str_tokens: check the text, keep the list
                strings = value if len(kinds) == 1 else [v for v in value if type(v) is str]
                if not all(map(str.isascii, strings)):
                    for i, v in enumerate(value):
                        if type(v) is str:
                            self.text(v, (where, i))
                return value
            return [self.decode(v, (where, i), depth + 1) for i, v in enumerate(value)]
        assert isinstance(value, dict)
        tags = [k for k in value if k.startswith("$")]
        if not tags:
            return {
                self.text(k, where): self.decode(v, (where, k), depth + 1) for k, v in value.items()
            }
        tag = tags[0]
        if tag == "$obj":
            return self.decode_obj(value, where, depth)
        if len(value) != 1:
            raise self.fail(where, f"a {tag} object must have exactly one key")
        body = value[tag]
        if tag == "$tensor":
            return self.decode_tensor(body, where)
        if tag == "$float":
            if not isinstance(body, str) or body not in _NONFINITE:
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
                key = self.decode(k, (where, f"<key {i}>"), depth + 1)
                if not isinstance(key, (str, int, float, bool, tuple)) and key is not None:
                    raise self.fail(where, f"unusable dict key {key!r}")
                try:
                    hash(key)
                except TypeError:
                    raise self.fail(where, f"unusable dict key {key!r} (unhashable)") from None
                out[key] = self.decode(v, (where, repr(key)), depth + 1)
            return out
        raise self.fail(where, f"unknown tag {tag!r}")

    def decode_tensor(self, body: Any, where: Where) -> Tensor:
        if not isinstance(body, dict) or set(body) != {"dtype", "shape", "data"}:
            raise self.fail(where, "$tensor needs exactly dtype, shape and data")
        dtype = _DTYPES.get(body["dtype"]) if isinstance(body["dtype"], str) else None
        if dtype is None:
            raise self.fail(where, f"unsupported tensor dtype {body['dtype']!r}")
        shape = body["shape"]
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_RANK
            or not all(
                isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= MAX_ELEMENTS
                for n in shape
            )
        ):
            raise self.fail(where, f"bad tensor shape {shape!r}")
        numel = math.prod(shape)
        if numel > MAX_ELEMENTS:
            raise self.fail(where, f"tensor of {numel} values is over the limit {MAX_ELEMENTS}")
        data = body["data"]
        if not isinstance(data, list) or len(data) != numel:
            got = len(data) if isinstance(data, list) else type(data).__name__
            raise self.fail(where, f"shape {shape} needs {numel} values, got {got}")
        # From here on this function holds the only reference to the list of values, so
        # that it is freed as soon as the tensor is built (the peak memory of a file that
        # is one big tensor: the list and a float64 copy, never more).
        body["data"] = None
        kinds = set(map(type, data))
        if dtype.is_floating_point:
            tagged: list[int] = []
            if not kinds <= _NUMBER_TYPES:
                data, tagged = self.untag(data, where)
            try:
                wide = _from_numbers(data, "d", torch.float64)
            except OverflowError:
                raise self.fail(where, "a number out of the range of float64") from None
            del data
            flat = self.narrow(wide, tagged, dtype, where)
        elif dtype == torch.bool:
            if not kinds <= {bool}:
                raise self.fail(where, "a bool tensor holds true/false only")
            flat = torch.tensor(data, dtype=torch.bool)
        else:
            if not kinds <= {int}:
                raise self.fail(where, "an integer tensor holds integers only")
            info = torch.iinfo(dtype)
            try:
                wide = _from_numbers(data, "q", torch.int64)
            except OverflowError:
                wide = None
            if wide is None or (
                numel and not (info.min <= int(wide.min()) and int(wide.max()) <= info.max)
            ):
                raise self.fail(where, f"values out of range for {body['dtype']}")
            flat = wide.to(dtype)
        return flat.reshape(shape)

    def untag(self, data: list[Any], where: Where) -> tuple[list[Any], list[int]]:
        """The values with the tags "nan", "inf", "-inf" made floats, and where they were."""
        values: list[Any] = []
        tagged = []
        for x in data:
            if type(x) is str and x in _NONFINITE:
                tagged.append(len(values))
                values.append(_NONFINITE[x])
            elif type(x) is float or type(x) is int:
                values.append(x)
            else:
                raise self.fail(where, f"{x!r} is not a number")
        return values, tagged

    def narrow(self, wide: Tensor, tagged: list[int], dtype: torch.dtype, where: Where) -> Tensor:
        # float64 first: the values are exact doubles, and the cast to a narrower dtype is
        # exact too, because they were written from that dtype. Only the tags may be
        # non-finite (1e400 parses as inf), and every value must fit the dtype.
        finite = wide
        if tagged:
            finite = wide.clone()
            finite[tagged] = 0.0
        if finite.numel():
            lo, hi = torch.aminmax(finite)  # NaN and ±inf show in these (no per-value mask)
            top = torch.finfo(dtype).max
            if not (-top <= float(lo) and float(hi) <= top):
                name = str(dtype).replace("torch.", "")
                raise self.fail(where, f"a number out of the range of {name}")
        del finite
        return wide.to(dtype)

    def decode_obj(self, value: dict[str, Any], where: Where, depth: int) -> Any:
        if len(value) != 2 or "fields" not in value:
            raise self.fail(where, "$obj needs exactly $obj and fields")
        name = value["$obj"]
        cls = CLASSES.get(name) if isinstance(name, str) else None
        if cls is None:
            raise self.fail(where, f"unknown class {name!r} (known: {sorted(CLASSES)})")
        raw = value["fields"]
        if not isinstance(raw, dict):
            raise self.fail(where, "fields must be an object")
        spec, required, checks = _schema(cls)
        if not raw.keys() <= spec:
            raise self.fail(where, f"{name} has no field(s) {sorted(raw.keys() - spec)}")
        if not raw.keys() >= required:
            missing = sorted(required - raw.keys())
            raise self.fail(where, f"{name} is missing field(s) {missing}")
        kwargs = {}
        for key, item in raw.items():
            # Numbers and ASCII text need no decoding (most fields of most objects).
            kind = type(item)
            if kind in _SCALAR_TYPES or (kind is str and item.isascii()):
                decoded = item
            else:
                decoded = self.decode(item, (where, key), depth + 1)
            if not checks[key](decoded):
                hint = typing.get_type_hints(cls)[key]
                raise self.fail(
                    (where, key),
                    f"{name}.{key} must be {_describe(hint)}, got {_describe_value(decoded)}",
                )
            kwargs[key] = decoded
        obj = cls(**kwargs)
        problem = _invariants(obj)
        if problem:
            raise self.fail(where, f"inconsistent {name}: {problem}")
        return obj


def _from_numbers(data: list[Any], code: str, dtype: torch.dtype) -> Tensor:
    """A 1-D tensor of Python numbers, through an ``array`` (C doubles or int64: about a
    third of torch.tensor's time and no per-value objects); OverflowError if one does not
    fit."""
    if not data:
        return torch.zeros(0, dtype=dtype)
    return torch.frombuffer(array.array(code, data), dtype=dtype)


_SCHEMAS: dict[type, tuple[frozenset[str], frozenset[str], dict[str, Callable[[Any], bool]]]] = {}


def _schema(cls: type) -> tuple[frozenset[str], frozenset[str], dict[str, Callable[[Any], bool]]]:
    """(field names, required field names, a type check per field) of a result class,
    worked out once: a file may hold a million small objects."""
    if cls not in _SCHEMAS:
        fields = dataclasses.fields(cls)
        required = frozenset(
            f.name
            for f in fields
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        )
        hints = typing.get_type_hints(cls)
        checks = {f.name: _checker(hints[f.name]) for f in fields}
        _SCHEMAS[cls] = (frozenset(f.name for f in fields), required, checks)
    return _SCHEMAS[cls]


# ------------------------------------------------------------------------ schema check
def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits the type annotation ``hint`` (the subset results use)."""
    return _checker(hint)(value)


@functools.cache
def _checker(hint: Any) -> Callable[[Any], bool]:
    # Worked out once per annotation: a file may hold a million small objects.
    if hint is Any:
        return lambda value: True
    if hint is None or hint is type(None):
        return lambda value: value is None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        options = [_checker(a) for a in args]
        return lambda value: any(check(value) for check in options)
    if origin is list:
        item = _checker(args[0])
        return lambda value: isinstance(value, list) and all(map(item, value))
    if origin is dict:
        key, val = _checker(args[0]), _checker(args[1])
        return lambda value: (
            isinstance(value, dict) and all(key(k) and val(v) for k, v in value.items())
        )
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            item = _checker(args[0])
            return lambda value: isinstance(value, tuple) and all(map(item, value))
        items = [_checker(a) for a in args]
        return lambda value: (
            isinstance(value, tuple)
            and len(value) == len(items)
            and all(check(v) for check, v in zip(items, value, strict=True))
        )
    if hint is float:
        return lambda value: type(value) is float or type(value) is int
    if hint is int:
        return lambda value: type(value) is int
    if hint is str:
        return lambda value: type(value) is str
    if isinstance(hint, type):
        # jaxtyping annotations are classes whose isinstance checks dtype kind and rank.
        return lambda value: isinstance(value, hint)
    return lambda value: False


def _describe(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("torch.", "")


def _describe_value(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a {str(value.dtype).replace('torch.', '')} tensor of shape {list(value.shape)}"
    return type(value).__name__


def _invariants(obj: Any) -> str | None:
    """Consistency between fields that the annotations cannot express, and the value ranges
    that tables, pages and a second save rely on."""
    if isinstance(obj, Prediction):
        if obj.token_id < 0:
            return f"negative token id {obj.token_id}"
        if not _is_probability(obj.prob):
            return f"prob {obj.prob!r} is not a probability"
    if isinstance(obj, Target):
        ids = [*obj.ids, *([] if obj.foil_id is None else [obj.foil_id])]
        if any(i < 0 for i in ids):
            return "a negative token id"
    if isinstance(obj, FisherDetails):
        if any(i < 0 for i in obj.candidate_ids):
            return "a negative candidate token id"
        if not all(_is_probability(p) for p in obj.candidate_probs):
            return "a candidate probability outside [0, 1]"
    if isinstance(obj, ScopeResult):
        n = obj.n_tokens
        if len(obj.str_tokens) != n:
            return f"{len(obj.str_tokens)} str_tokens for {n} tokens"
        if obj.byte_pieces is not None and len(obj.byte_pieces) != n:
            return f"{len(obj.byte_pieces)} byte_pieces for {n} tokens"
        if obj.scores.dim() == 0 or obj.scores.shape[-1] != n:
            return f"scores of shape {list(obj.scores.shape)} for {n} tokens"
        if len(obj.score_axes) != obj.scores.dim():
            return f"{len(obj.score_axes)} score_axes for scores of shape {list(obj.scores.shape)}"
        if not all(0 <= p < n for p in [obj.position, *obj.positions]):
            return "a position outside the tokens"
        if n and int(obj.tokens.min()) < 0:
            return "a negative token id"
        if not bool(torch.isfinite(obj.scores).all()):
            return "scores are NaN or infinite"
        if obj.first_order is not None and (
            obj.first_order.shape != obj.scores.shape
            or not bool(torch.isfinite(obj.first_order).all())
        ):
            return "first_order needs the shape of scores and finite values"
        if obj.source_labels is not None and (
            obj.scores.dim() < 2 or len(obj.source_labels) != obj.scores.shape[0]
        ):
            return f"{len(obj.source_labels)} source_labels for scores {list(obj.scores.shape)}"
    if isinstance(obj, GenerationResult):
        n = obj.tokens.shape[0]
        if len(obj.str_tokens) != n or not 0 < obj.n_prompt <= n:
            return "tokens, str_tokens and n_prompt disagree"
        if n and int(obj.tokens.min()) < 0:
            return "a negative token id"
        context = max(0, n - 1)
        if obj.scores.shape != (len(obj.positions), context):
            return f"scores of shape {list(obj.scores.shape)} for this sequence"
        if not all(0 <= p < context for p in obj.positions):
            return "a generation position outside the sequence"
        if len(obj.token_probs) != len(obj.positions):
            return "one token probability per generated token is needed"
        if not all(_is_probability(p) for p in obj.token_probs):
            return "a token probability outside [0, 1]"
        # Each row is scored up to its position; what comes after is NaN by design.
        seen = torch.arange(context)[None] <= torch.tensor(obj.positions, dtype=torch.long)[:, None]
        if not bool(torch.isfinite(obj.scores[seen]).all()):
            return "scores are NaN or infinite where a generated token could see"
        if obj.first_order is not None and (
            obj.first_order.shape != obj.scores.shape
            or not bool(torch.isfinite(obj.first_order[seen]).all())
        ):
            return "first_order needs the shape of scores and finite values"
    return None


def _is_probability(p: Any) -> bool:
    return bool(0 <= p <= 1)  # False for NaN


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
    """Write :func:`to_dataframe` as CSV; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_dataframe(results).to_csv(path, index=False)
    return path

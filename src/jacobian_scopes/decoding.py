"""Turn a parsed result file into result objects, checking everything on the way.

The decoder walks the JSON content of a file (see :mod:`jacobian_scopes.io` for the
format), rebuilds the tagged objects, and checks each result object's fields against the
class's type annotations (tensor dtypes and ranks included) and a few invariants between
fields; every malformation becomes a :class:`ResultFileError` that says where it is.
"""

from __future__ import annotations

import array
import dataclasses
import functools
import math
import re
import types
import typing
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from jacobian_scopes.errors import ResultFileError
from jacobian_scopes.results import (
    FisherDetails,
    GenerationResult,
    Prediction,
    ScopeResult,
    Target,
)

MAX_DEPTH = 64
MAX_ELEMENTS = 2**27  # per tensor: 128M values, far beyond any result of a 8k-token prompt
MAX_RANK = 16

CLASSES: dict[str, type] = {
    cls.__name__: cls for cls in (Prediction, Target, FisherDetails, ScopeResult, GenerationResult)
}

DTYPES: dict[str, torch.dtype] = {
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
NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


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


class Decoder:
    """Decodes the ``content`` of one file; ``source`` names the file in error messages.

    Example:
        >>> from jacobian_scopes.decoding import Decoder
        >>> Decoder("r.json").decode({"$tensor": {"dtype": "int64", "shape": [2], "data": [3, 4]}},
        ...                          "content", 0)
        tensor([3, 4])
        >>> Decoder("r.json").decode({"$obj": "Target", "fields": {}}, "content", 0)
        Traceback (most recent call last):
        ...
        jacobian_scopes.errors.ResultFileError: r.json: content: ...
    """

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
            if not isinstance(body, str) or body not in NONFINITE:
                raise self.fail(where, f"$float must be 'nan', 'inf' or '-inf', got {body!r}")
            return NONFINITE[body]
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
        dtype = DTYPES.get(body["dtype"]) if isinstance(body["dtype"], str) else None
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
            if type(x) is str and x in NONFINITE:
                tagged.append(len(values))
                values.append(NONFINITE[x])
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

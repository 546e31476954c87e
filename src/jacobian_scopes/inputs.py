"""Turn what a user passes (prompts, targets, positions) into checked token ids.

Every check that can fail on user input lives here, so that each failure has one clear
message and one test.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from jacobian_scopes.adapter import ModelAdapter
from jacobian_scopes.errors import ScopeInputError
from jacobian_scopes.options import Prompt, TargetLike


def resolve_tokens(
    adapter: ModelAdapter, prompt: Prompt, prepend_bos: bool | None = None
) -> Int[Tensor, "1 pos"]:
    """Token ids of shape (1, pos) on the model's device, checked against vocab and context."""
    if isinstance(prompt, str):
        if prompt.strip() == "":
            what = "empty" if prompt == "" else "only white space"
            raise ScopeInputError(f"the prompt is {what}; give at least one token of text")
        check_text(prompt, "prompt")
        tokens = adapter.to_tokens(prompt, prepend_bos=prepend_bos)
    else:
        if prepend_bos:
            raise ScopeInputError(
                "prepend_bos applies to string prompts; token ids are used as given"
            )
        tokens = _as_token_tensor(prompt, what="prompt")
        if tokens.dim() == 2:
            if tokens.shape[0] != 1:
                raise ScopeInputError(
                    f"one prompt at a time: got a batch of {tokens.shape[0]} token rows"
                )
            tokens = tokens[0]
        if tokens.dim() != 1:
            raise ScopeInputError(
                f"token ids must be 1-D (pos,) or (1, pos), got {tuple(tokens.shape)}"
            )
        tokens = tokens[None]
    n = tokens.shape[1]
    if n == 0:
        raise ScopeInputError("the prompt is empty (no tokens)")
    check_ids(adapter, tokens[0].tolist(), what="prompt")
    if adapter.n_ctx is not None and n > adapter.n_ctx:
        raise ScopeInputError(
            f"the prompt has {n} tokens, more than the model's context of {adapter.n_ctx}"
        )
    return tokens.to(adapter.device)


def _as_token_tensor(value: object, what: str) -> Tensor:
    if isinstance(value, Tensor):
        t = value
    else:
        try:
            t = torch.as_tensor(list(value))  # type: ignore[call-overload]
        except (TypeError, ValueError) as exc:
            raise ScopeInputError(f"{what} must be a string or token ids, got {value!r}") from exc
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ScopeInputError(f"{what} token ids must be integers, got dtype {t.dtype}")
    return t.long()


def check_ids(adapter: ModelAdapter, ids: Sequence[int], what: str) -> None:
    bad = [i for i in ids if not 0 <= int(i) < adapter.d_vocab]
    if bad:
        raise ScopeInputError(
            f"{what} has token id(s) {bad[:5]} outside the vocabulary [0, {adapter.d_vocab})"
        )


def check_text(text: str, what: str) -> None:
    """Refuse text that is not valid Unicode (a lone surrogate cannot be tokenised)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ScopeInputError(
            f"the {what} is not valid Unicode text (it holds {text[exc.start : exc.end]!r} at "
            f"character {exc.start}, a lone surrogate); decode it with errors='replace' first"
        ) from exc


def resolve_position(n_pos: int, position: int) -> int:
    """A Python-style index into the prompt (negative counts from the end); any integer
    type (``numpy.int64``, a 0-d integer tensor) is accepted."""
    try:
        if isinstance(position, bool):
            raise TypeError
        position = operator.index(position)
    except TypeError:
        raise ScopeInputError(f"position must be an int, got {position!r}") from None
    if not -n_pos <= position < n_pos:
        raise ScopeInputError(
            f"position {position} is out of range for a prompt of {n_pos} tokens "
            f"(valid: {-n_pos} … {n_pos - 1})"
        )
    return position % n_pos


def resolve_target(adapter: ModelAdapter, target: TargetLike, what: str = "target") -> list[int]:
    """Token ids of a target given as text (a continuation, no BOS), an id, or ids."""
    if isinstance(target, str):
        if target == "":
            raise ScopeInputError(f"the {what} is an empty string")
        check_text(target, what)
        ids = adapter.to_token_ids(target)
    elif isinstance(target, bool):
        raise ScopeInputError(f"{what} must be a token string or id, got {target!r}")
    elif isinstance(target, int):
        ids = [target]
    else:
        t = _as_token_tensor(target, what=what)
        ids = [int(i) for i in t.reshape(-1)]
    if not ids:
        raise ScopeInputError(f"the {what} has no tokens")
    check_ids(adapter, ids, what=what)
    return ids


def single_token(adapter: ModelAdapter, target: TargetLike, what: str = "target") -> int:
    """The id of a target that must be exactly one token."""
    ids = resolve_target(adapter, target, what)
    if len(ids) != 1:
        pieces = adapter.to_str_tokens(torch.tensor(ids))
        raise ScopeInputError(
            f"the {what} {target!r} is {len(ids)} tokens {pieces}, not one. Pass a single "
            "token (a leading space often matters), or multi_token=True to explain the "
            "teacher-forced sum of log-probs of the whole continuation."
        )
    return ids[0]


def split_prompts(prompt: Prompt | Sequence[Prompt]) -> tuple[list[Prompt], bool]:
    """The prompts of a call, and whether several were given.

    One prompt: a string, 1-D token ids, a (1, pos) tensor (as ``model.to_tokens`` returns
    for one prompt), or a list of ints. Several: a list of strings, tensors or id lists, or
    a (batch, pos) tensor with more than one row (its rows are used as given, padding
    included: pass a list of strings to let each prompt keep its own length).

    Example:
        >>> from jacobian_scopes.inputs import split_prompts
        >>> split_prompts("Hello")
        (['Hello'], False)
        >>> split_prompts(["Hello", "Hi there"])
        (['Hello', 'Hi there'], True)
        >>> split_prompts([1, 2, 3])
        ([[1, 2, 3]], False)
    """
    if isinstance(prompt, str):
        return [prompt], False
    if isinstance(prompt, Tensor):
        if prompt.dim() == 2 and prompt.shape[0] > 1:
            return list(prompt), True
        return [prompt], False
    if isinstance(prompt, (list, tuple)):
        items = list(prompt)
        if not items:
            raise ScopeInputError("the list of prompts is empty")
        if all(isinstance(p, int) or _is_int_scalar(p) for p in items):
            return [items], False
        return items, True
    raise ScopeInputError(
        f"a prompt must be text, token ids or a list of prompts, got {type(prompt).__name__}"
    )


def _is_int_scalar(value: object) -> bool:
    try:
        operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return False
    return not isinstance(value, (bool, Tensor)) or (isinstance(value, Tensor) and value.dim() == 0)

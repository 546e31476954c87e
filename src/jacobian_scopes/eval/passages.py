"""Prompts for the faithfulness evaluation, and the LAMBADA passages of the paper.

A :class:`Passage` is a prompt plus, optionally, the token a reference answer starts with
(LAMBADA's final word). Its ``key`` identifies it in a resumable results file: the index
and a hash of the prompt, so a results file cannot be silently reused for other data.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from jacobian_scopes.errors import ScopeInputError
from jacobian_scopes.options import Prompt, TargetLike

_LAST_WORD = re.compile(r"^(?P<prompt>.*\S)\s+(?P<word>\S+)\s*$", re.DOTALL)


@dataclass(frozen=True)
class Passage:
    """One prompt to evaluate on. ``target`` is a reference next token (optional).

    ``key`` names the passage in a results file (so that a resumed run skips it); plain
    prompts get ``"<index>:<hash of the prompt>"``.

    Example:
        >>> from jacobian_scopes.eval.passages import Passage, as_passages
        >>> passages = as_passages([Passage("The capital of France is", " Paris", key="france"),
        ...                         "1, 2, 3,"])
        >>> [(p.key, p.target) for p in passages]
        [('france', ' Paris'), ('1:0bad35c41f55', None)]
    """

    prompt: Prompt
    target: TargetLike | None = None
    key: str | None = None

    def keyed(self, index: int) -> Passage:
        """A copy whose key is ``"<index>:<hash of the prompt>"`` unless one was given."""
        if self.key is not None:
            return self
        return Passage(self.prompt, self.target, f"{index}:{_digest(self.prompt)}")


def _digest(prompt: Prompt) -> str:
    if isinstance(prompt, str):
        data = prompt.encode("utf-8")
    else:
        ids = prompt.reshape(-1).tolist() if isinstance(prompt, Tensor) else list(prompt)
        data = ",".join(str(int(i)) for i in ids).encode()
    return hashlib.sha1(data).hexdigest()[:12]


def as_passages(prompts: Iterable[Prompt | Passage]) -> list[Passage]:
    """Wrap plain prompts (text or token ids) as passages with keys.

    Example:
        >>> from jacobian_scopes.eval.passages import as_passages
        >>> [p.key for p in as_passages(["a b", "c d"])]
        ['0:7dbde9350412', '1:3526a043590f']
    """
    if isinstance(prompts, (str, Tensor)):
        raise ScopeInputError("prompts must be a list of prompts (text, token ids or Passage)")
    out = []
    for i, p in enumerate(prompts):
        passage = p if isinstance(p, Passage) else Passage(p)
        out.append(passage.keyed(i))
    keys = [p.key for p in out]
    if len(set(keys)) != len(keys):
        raise ScopeInputError("two passages share a key; give each a distinct key")
    if not out:
        raise ScopeInputError("no prompts to evaluate")
    return out


def split_last_word(text: str) -> tuple[str, str]:
    """(prompt, " word"): the text before its last whitespace-separated word, and that word
    with one leading space (how it continues the prompt for the tokenizer).

    Example:
        >>> from jacobian_scopes.eval.passages import split_last_word
        >>> split_last_word("He looked at her and said hello")
        ('He looked at her and said', ' hello')
    """
    m = _LAST_WORD.match(text)
    if m is None:
        raise ScopeInputError(f"cannot split a last word off {text[:40]!r}")
    return m.group("prompt"), " " + m.group("word")


#: The 200 LAMBADA passages shipped with the package (CC BY 4.0; see data/README.md).
LAMBADA_200 = Path(__file__).with_name("data") / "lambada_200.json"


def load_lambada(
    path: str | Path = LAMBADA_200, limit: int | None = None, *, whole: bool = False
) -> list[Passage]:
    """LAMBADA passages from a JSON list of ``{"text": ...}``: the prompt is the passage
    without its last word; the reference target is that word (its first token is used).
    ``whole=True``: the prompt is the whole passage and there is no target, as
    ``protocol="paper"`` of :func:`~jacobian_scopes.eval.evaluate.evaluate` takes them.
    By default the 200 passages shipped with the package (:data:`LAMBADA_200`).

    Example:
        >>> import json
        >>> from jacobian_scopes.eval.passages import load_lambada
        >>> with open("lambada.json", "w") as f:
        ...     json.dump([{"text": "He looked at her and said hello"}], f)
        >>> passages = load_lambada("lambada.json", limit=5)
        >>> passages[0].prompt, passages[0].target
        ('He looked at her and said', ' hello')
        >>> load_lambada("lambada.json", whole=True)[0].prompt
        'He looked at her and said hello'
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (pass the path of lambada_200.json)")
    entries = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get("text"), str) for e in entries
    ):
        raise ScopeInputError(f"{path} must hold a JSON list of {{'text': ...}} objects")
    if limit is not None:
        entries = entries[:limit]
    out = []
    for i, e in enumerate(entries):
        if whole:
            out.append(Passage(e["text"], None, f"{i}:{_digest(e['text'])}"))
            continue
        prompt, word = split_last_word(e["text"])
        out.append(Passage(prompt, word, f"{i}:{_digest(prompt)}"))
    return out

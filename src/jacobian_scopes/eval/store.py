"""A resumable results file: JSON Lines, appended to as work completes.

Each line is one record with a ``type``: ``config`` (first line: the settings the numbers
depend on), ``passage`` (per-passage facts and timing), ``method`` (one attribution method
on one passage: its scores and metrics) or ``reference`` (the leave-one-out reference). A
record is keyed by its type, passage key and name; a later record with the same key
replaces an earlier one, so updating means appending. A run killed mid-write leaves at most
a torn last line, which is skipped on reading.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jacobian_scopes.errors import ScopeInputError

Key = tuple[str, str, str]


def record_key(record: dict[str, Any]) -> Key:
    """The key a record is stored under: (type, passage, name).

    Example:
        >>> from jacobian_scopes.eval.store import record_key
        >>> record_key({"type": "method", "passage": "0:ab", "name": "random", "aopc": -0.1})
        ('method', '0:ab', 'random')
    """
    return (str(record["type"]), str(record.get("passage", "")), str(record.get("name", "")))


def _broken(line: str) -> bool:
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return True
    return False


def _read(path: Path) -> tuple[dict[Key, dict[str, Any]], bool]:
    """The records of a results file, and whether its last line is torn (a stopped run)."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    torn = not text.endswith("\n")
    records: dict[Key, dict[str, Any]] = {}
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                torn = True
                continue
            raise ScopeInputError(f"{path}:{i + 1} is not valid JSON") from None
        records[record_key(record)] = record
    return records, torn


class ResultsStore:
    """In memory, and mirrored to ``path`` (JSONL) when one is given.

    Example:
        >>> from jacobian_scopes.eval.store import ResultsStore
        >>> store = ResultsStore(None, {"fractions": [0.05, 0.1, 0.2]})
        >>> store.put({"type": "method", "passage": "0:ab", "name": "random", "aopc": -0.1})
        >>> store.get("method", "0:ab", "random")["aopc"]
        -0.1
    """

    def __init__(
        self,
        path: str | Path | None,
        config: dict[str, Any],
        assumed: dict[str, Any] | None = None,
    ):
        # ``assumed``: values of settings that an older file's config does not record.
        self.assumed = dict(assumed or {})
        self.path = None if path is None else Path(path)
        self.records: dict[Key, dict[str, Any]] = {}
        # Through JSON and back, so that what is compared on resume is what was written.
        config = json.loads(json.dumps({"type": "config", **config}))
        if self.path is not None and self.path.exists() and self.path.stat().st_size > 0:
            self._load(config)
        else:
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self.put(config)

    def _load(self, config: dict[str, Any]) -> None:
        assert self.path is not None
        self.records, torn = _read(self.path)
        old = self.records.get(("config", "", ""))
        if old is None:
            raise ScopeInputError(f"{self.path} has no config record; is it a results file?")
        old = {**self.assumed, **old}
        differ = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
        if differ:
            details = "; ".join(f"{k}: file {old.get(k)!r}, now {config.get(k)!r}" for k in differ)
            raise ScopeInputError(
                f"{self.path} was written with other settings ({details}). Use a new results "
                "file, or the settings it was written with."
            )
        if torn:
            # Rewrite without the torn line, so that appends start on a fresh line.
            lines = self.path.read_text(encoding="utf-8").splitlines()
            keep = lines[:-1] if lines and _broken(lines[-1]) else lines
            with self.path.open("w", encoding="utf-8") as f:
                f.writelines(line + "\n" for line in keep)

    def get(self, kind: str, passage: str, name: str = "") -> dict[str, Any] | None:
        return self.records.get((kind, passage, name))

    def put(self, record: dict[str, Any]) -> None:
        """Add or replace a record, appending it to the file at once (flushed and synced)."""
        self.records[record_key(record)] = record
        if self.path is None:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False, allow_nan=True) + "\n")
            f.flush()
            os.fsync(f.fileno())


def read_records(
    paths: Sequence[str | Path], assumed: dict[str, Any] | None = None
) -> dict[Key, dict[str, Any]]:
    """Every record of one or more results files, later files and lines replacing earlier
    ones (so the rank files of a stopped ``torchrun`` read as their merge), after checking
    that all were written with the same settings. ``assumed``, as in
    :class:`ResultsStore`, completes the config of files older than some setting.

    Example:
        >>> import json, tempfile
        >>> from pathlib import Path
        >>> from jacobian_scopes.eval.store import read_records
        >>> path = Path(tempfile.mkdtemp()) / "r.jsonl"
        >>> lines = [{"type": "config", "seed": 0}, {"type": "passage", "passage": "0:ab"}]
        >>> _ = path.write_text("".join(json.dumps(r) + "\\n" for r in lines))
        >>> sorted(read_records([path]))
        [('config', '', ''), ('passage', '0:ab', '')]
    """
    merged: dict[Key, dict[str, Any]] = {}
    config: dict[str, Any] | None = None
    for path in paths:
        records, _ = _read(Path(path))
        own = records.get(("config", "", ""))
        if own is None:
            raise ScopeInputError(f"{path} has no config record; is it a results file?")
        own = records[("config", "", "")] = {**(assumed or {}), **own}
        if config is not None and own != config:
            raise ScopeInputError(f"{path} was written with other settings than {paths[0]}")
        config = own
        merged.update(records)
    if config is None:
        raise ScopeInputError("no results file given")
    return merged

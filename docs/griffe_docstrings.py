"""Read the package's docstrings as the API reference shows them (used by mkdocs.yml only).

The docstrings follow Google style with a few reST habits that plain doctest and
``help()`` read well: an ``Example:`` section (Google style's ``Examples:``) and roles such
as ``:class:`~jacobian_scopes.ScopeResult```. This turns the first into an examples
section (so doctest blocks show as code, not as Markdown) and the roles into code spans,
and gives an ``Args:`` entry shared by several parameters (``clean, corrupt: ...``) to
each of them, as numpydoc allows and Google style does not.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):`~?([^`]+)`")
_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
_SHARED_ARG = re.compile(r"^(\s+)(\w+(?:, \w+)+): (.*)$")


def _short(match: re.Match[str]) -> str:
    name = match.group(1)
    return f"`{name.rsplit('.', 1)[-1] if match.group(0).count('~') else name}`"


def _split_shared_args(text: str) -> str:
    lines, in_args = [], False
    for line in text.splitlines():
        header = line.strip()
        if header.endswith(":") and not line.startswith((" ", "\t")):
            in_args = header in ("Args:", "Arguments:", "Parameters:")
        match = _SHARED_ARG.match(line) if in_args else None
        if match is None:
            lines.append(line)
            continue
        indent, names, description = match.groups()
        lines.extend(f"{indent}{name}: {description}" for name in names.split(", "))
    return "\n".join(lines)


def _read(obj: griffe.Object) -> None:
    if obj.docstring is not None:
        text = _split_shared_args(_EXAMPLE.sub(r"\1Examples:", obj.docstring.value))
        obj.docstring.value = _ROLE.sub(_short, text)


class ReadDocstrings(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        _read(obj)

    # Modules and packages (their own docstrings) come through these hooks.
    def on_module(self, *, mod: griffe.Module, **kwargs: Any) -> None:
        _read(mod)

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        _read(pkg)

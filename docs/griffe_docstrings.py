"""Read the package's docstrings as the API reference shows them (used by mkdocs.yml only).

The docstrings follow Google style with a few reST habits that plain doctest and
``help()`` read well: an ``Example:`` section (Google style's ``Examples:``) and roles such
as ``:class:`~jacobian_scopes.ScopeResult```. This turns the first into an examples
section (so doctest blocks show as code, not as Markdown) and the roles into code spans.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):`~?([^`]+)`")
_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)


def _short(match: re.Match[str]) -> str:
    name = match.group(1)
    return f"`{name.rsplit('.', 1)[-1] if match.group(0).count('~') else name}`"


class ReadDocstrings(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is None:
            return
        text = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
        obj.docstring.value = _ROLE.sub(_short, text)

"""The result of a patching call: :class:`PatchingResult`, and :func:`make_result`, which
builds one from a :class:`~jacobian_scopes.patching.prepare.Setup` and its per-source values.

Example:
    >>> import jacobian_scopes as js
    >>> from jacobian_scopes.patching import attribution_patching
    >>> model = js.load_default_model()
    >>> at = attribution_patching(model, "Alice met Bob. Bob thanked",
    ...                           "Bob met Alice. Alice thanked", target=" Alice", foil=" Bob")
    >>> at
    PatchingResult(attribution patching, denoising, logit difference ' Alice' − ' Bob',
    normalised (corrupt 0, clean 1); shape (30, 7); clean 1, corrupt 0)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from jacobian_scopes.patching.prepare import Setup
from jacobian_scopes.sources import arrange


@dataclass
class PatchingResult:
    """A patching map: one value of the metric (activation patching) or of its first-order
    estimate (attribution patching) per source cell.

    ``values`` has shape (source, pos) or, for ``sources="z"``, (layer, head, pos), with
    rows named by ``source_labels`` as in a scope result. ``clean_value`` and
    ``corrupt_value`` are the metric on the two unpatched runs (0 and 1 for the default,
    normalised metric); ``raw_clean`` and ``raw_corrupt`` the logit differences behind it.
    ``byte_pieces`` are the clean tokens' raw pieces where characters were merged, as in
    :class:`~jacobian_scopes.results.ScopeResult`.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.patching import attribution_patching
        >>> model = js.load_default_model()
        >>> at = attribution_patching(model, "Alice met Bob. Bob thanked",
        ...                           "Bob met Alice. Alice thanked", target=" Alice", foil=" Bob")
        >>> at.kind, at.score_axes, at.source_labels[0], at.corrupt_str_tokens[1]
        ('attribution', ('source', 'token'), 'blocks.0.hook_resid_pre', 'Bob')
    """

    kind: str
    values: Tensor
    score_axes: tuple[str, ...]
    source_labels: list[str]
    tokens: Tensor
    corrupt_tokens: Tensor
    str_tokens: list[str]
    corrupt_str_tokens: list[str]
    position: int
    direction: str
    method: str
    metric: str
    clean_value: float
    corrupt_value: float
    bos: bool
    model_name: str
    target: str | None = None
    foil: str | None = None
    raw_clean: float | None = None
    raw_corrupt: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    byte_pieces: list[str] | None = None

    @property
    def positions(self) -> list[int]:
        """The explained positions (one), as in a scope result.

        Example:
            >>> import jacobian_scopes as js
            >>> from jacobian_scopes.patching import attribution_patching
            >>> model = js.load_default_model()
            >>> attribution_patching(model, "Alice met Bob. Bob thanked",
            ...                      "Bob met Alice. Alice thanked").positions
            [6]
        """
        return [self.position]

    def to_dataframe(self) -> Any:
        """One row per cell: source (and head), position, clean and corrupt token, value.

        Example:
            >>> import jacobian_scopes as js
            >>> from jacobian_scopes.patching import attribution_patching
            >>> model = js.load_default_model()
            >>> at = attribution_patching(model, "Alice met Bob. Bob thanked",
            ...                           "Bob met Alice. Alice thanked", sources="z")
            >>> df = at.to_dataframe()
            >>> len(df), list(df.columns)
            (1890, ['kind', 'source', 'head', 'index', 'clean_token', 'corrupt_token', 'value'])
        """
        import pandas as pd

        v = self.values.detach().float().cpu()
        rows = []
        if self.score_axes == ("layer", "head", "token"):
            for layer in range(v.shape[0]):
                for h in range(v.shape[1]):
                    for t in range(v.shape[2]):
                        rows.append(
                            self._row(self.source_labels[layer], t, float(v[layer, h, t]), h)
                        )
        else:
            for i, label in enumerate(self.source_labels):
                for t in range(v.shape[-1]):
                    rows.append(self._row(label, t, float(v[i, t])))
        return pd.DataFrame(rows)

    def _row(self, source: str, t: int, value: float, head: int | None = None) -> dict[str, Any]:
        row: dict[str, Any] = {"kind": self.kind, "source": source}
        if head is not None:
            row["head"] = head
        row.update(
            index=t,
            clean_token=self.str_tokens[t],
            corrupt_token=self.corrupt_str_tokens[t],
            value=value,
        )
        return row

    def map(self, **kwargs: Any) -> Any:
        """The layer × token map of these values (signed, zero-centred colours); the
        keyword arguments are those of :func:`jacobian_scopes.viz.maps.patching_map`.

        Example:
            >>> import jacobian_scopes as js
            >>> from jacobian_scopes.patching import attribution_patching
            >>> model = js.load_default_model()
            >>> at = attribution_patching(model, "Alice met Bob. Bob thanked",
            ...                           "Bob met Alice. Alice thanked")
            >>> at.map(normalize="row").save_html("attribution.html")
            PosixPath('attribution.html')
        """
        from jacobian_scopes.viz.maps import patching_map

        return patching_map(self, **kwargs)

    def _repr_html_(self) -> str:
        from jacobian_scopes.viz.report import notebook_html

        return notebook_html(self.map())

    def show(self) -> None:
        """Display the map: HTML in a notebook, a colour grid in a terminal.

        Example:
            >>> import jacobian_scopes as js
            >>> from jacobian_scopes.patching import attribution_patching
            >>> model = js.load_default_model()
            >>> attribution_patching(model, "Alice met Bob. Bob thanked",
            ...                      "Bob met Alice. Alice thanked", target=" Alice",
            ...                      foil=" Bob").show()
            Attribution patching (denoising) · logit difference ' Alice' − ' Bob', ...
        """
        from jacobian_scopes.viz.report import show

        show(self.map())

    def __repr__(self) -> str:
        return (
            f"PatchingResult({self.kind} patching, {self.direction}, {self.metric}; "
            f"shape {tuple(self.values.shape)}; clean {self.clean_value:.4g}, "
            f"corrupt {self.corrupt_value:.4g})"
        )


def make_result(
    s: Setup, kind: str, per_label: dict[str, Tensor], method: str, **params: Any
) -> PatchingResult:
    """The :class:`PatchingResult` of a call prepared as ``s``: ``per_label`` holds each
    source's values, (pos) or (pos, head), as :func:`jacobian_scopes.sources.arrange` takes
    them; ``params`` are recorded beside the call's direction and sources.

    Example:
        >>> import torch
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.patching.prepare import prepare
        >>> from jacobian_scopes.patching.result import make_result
        >>> model = js.load_default_model()
        >>> s = prepare(model, "Alice met Bob. Bob thanked", "Bob met Alice. Alice thanked")
        >>> zeros = {label: torch.zeros(7) for label in s.spec.labels}
        >>> make_result(s, "activation", zeros, "none", note="all zero").params
        {'direction': 'denoising', 'sources': 'resid_pre', 'note': 'all zero'}
    """
    values, axes, labels = arrange(s.spec, per_label)
    tokens = s.clean[0].detach().cpu()
    corrupt = s.corrupt[0].detach().cpu()
    bos_id = getattr(getattr(s.adapter.model, "tokenizer", None), "bos_token_id", None)
    return PatchingResult(
        kind=kind,
        values=values.detach().float().cpu(),
        score_axes=axes,
        source_labels=list(labels or s.spec.labels),
        tokens=tokens,
        corrupt_tokens=corrupt,
        str_tokens=s.adapter.to_str_tokens(tokens),
        corrupt_str_tokens=s.adapter.to_str_tokens(corrupt),
        position=s.position,
        direction=s.params["direction"],
        method=method,
        metric=s.metric_name,
        clean_value=s.clean_value,
        corrupt_value=s.corrupt_value,
        bos=bos_id is not None and int(tokens[0]) == int(bos_id),
        model_name=s.adapter.name,
        target=s.target,
        foil=s.foil,
        raw_clean=s.raw_clean,
        raw_corrupt=s.raw_corrupt,
        params={**s.params, **params},
        byte_pieces=s.adapter.byte_pieces(tokens),
    )

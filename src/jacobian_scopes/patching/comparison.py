"""The scope next to both patchings: :func:`compare` puts the Semantic scope's maps,
attribution patching and activation patching on the same cells and measures how well each
map's ranking agrees with activation patching (:func:`agreement`).

Example:
    >>> import torch
    >>> from jacobian_scopes.patching.comparison import agreement
    >>> agreement(torch.tensor([1.0, -5.0, 2.0]), torch.tensor([0.1, 0.3, 0.2]), signed=False)
    {'spearman': 1.0, 'top_k': 1.0}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from jacobian_scopes.errors import ScopeInputError
from jacobian_scopes.eval.stats import spearman
from jacobian_scopes.options import Prompt, SourcesLike, TargetLike
from jacobian_scopes.patching.activation import activation_patching
from jacobian_scopes.patching.attribution import attribution_patching
from jacobian_scopes.patching.result import PatchingResult
from jacobian_scopes.results import ScopeResult


def agreement(
    values: Tensor | np.ndarray, reference: Tensor | np.ndarray, *, k: int = 10, signed: bool = True
) -> dict[str, float]:
    """Rank agreement of a map with a reference map over the same cells.

    ``spearman``: Spearman's ρ of the values (of their magnitudes against the reference's
    magnitudes when ``signed`` is False: a norm has no sign); ``top_k``: the share of the
    reference's ``k`` largest-magnitude cells that are also among the map's ``k`` largest.

    Example:
        >>> import torch
        >>> from jacobian_scopes.patching import agreement
        >>> agreement(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([0.9, 0.5, 0.1]), k=1)
        {'spearman': 1.0, 'top_k': 1.0}
    """
    a = np.asarray(torch.as_tensor(values).detach().float().cpu()).reshape(-1)
    b = np.asarray(torch.as_tensor(reference).detach().float().cpu()).reshape(-1)
    if a.shape != b.shape:
        raise ScopeInputError(f"maps of different sizes: {a.size} and {b.size} cells")
    rho = spearman(a, b) if signed else spearman(np.abs(a), np.abs(b))
    k = max(1, min(k, a.size))
    top_a = set(np.argsort(-np.abs(a), kind="stable")[:k].tolist())
    top_b = set(np.argsort(-np.abs(b), kind="stable")[:k].tolist())
    return {"spearman": float(rho), "top_k": len(top_a & top_b) / k}


@dataclass
class PatchingComparison:
    """The maps of :func:`compare` on the same cells, and their agreement table.

    ``maps`` maps a name to a tensor laid out like the activation-patching values:
    ``"scope norm"`` (the Semantic scope of the logit difference, ``‖J_tᵀv‖``),
    ``"scope first_order"`` (its signed ``⟨a, J_tᵀv⟩``), ``"attribution patching"`` and
    ``"activation patching"``. ``table`` (pandas) gives each map's Spearman ρ and top-k
    overlap with activation patching, over the cells that can differ (the BOS column and
    positions after the explained one are left out); the norm rows are also given with
    each map normalisation (``row``, ``global``, ``log``), since a display scale decides
    what the eye compares.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.patching import compare
        >>> model = js.load_default_model()
        >>> c = compare(model, "Alice met Bob. Bob thanked", "Bob met Alice. Alice thanked",
        ...             " Alice", " Bob", sources=["blocks.4.hook_resid_pre"])
        >>> list(c.table.columns), c.signed["scope norm"], c.activation.kind
        (['map', 'normalize', 'spearman', 'top_10'], False, 'activation')
    """

    maps: dict[str, Tensor]
    signed: dict[str, bool]
    table: Any
    activation: PatchingResult
    attribution: PatchingResult
    scope: Any
    k: int

    def view(self, **kwargs: Any) -> Any:
        """All maps side by side with the agreement table; the keyword arguments are those
        of :func:`jacobian_scopes.viz.patching.comparison_view`.

        Example:
            >>> import jacobian_scopes as js
            >>> from jacobian_scopes.patching import compare
            >>> model = js.load_default_model()
            >>> c = compare(model, "Alice met Bob. Bob thanked", "Bob met Alice. Alice thanked",
            ...             sources=["blocks.4.hook_resid_pre", "blocks.8.hook_resid_pre"])
            >>> [v.title for v in c.view(normalize="log").views]
            ['scope norm', 'scope first_order', 'attribution patching', 'activation patching']
        """
        from jacobian_scopes.viz.patching import comparison_view

        return comparison_view(self, **kwargs)

    def _repr_html_(self) -> str:
        from jacobian_scopes.viz.report import notebook_html

        return notebook_html(self.view())

    def show(self) -> None:
        """Display the view: HTML in a notebook, the table and colour grids in a terminal.

        Example:
            >>> import jacobian_scopes as js
            >>> from jacobian_scopes.patching import compare
            >>> model = js.load_default_model()
            >>> c = compare(model, "Alice met Bob. Bob thanked", "Bob met Alice. Alice thanked",
            ...             sources=["blocks.4.hook_resid_pre", "blocks.8.hook_resid_pre"])
            >>> c.show()
            Scope and patching, side by side
            ...
        """
        from jacobian_scopes.viz.report import show

        show(self.view())

    def save_html(self, path: Any, *, title: str | None = None) -> Any:
        """Write the view to one offline HTML page; returns its path.

        Example:
            >>> import jacobian_scopes as js
            >>> from jacobian_scopes.patching import compare
            >>> model = js.load_default_model()
            >>> c = compare(model, "Alice met Bob. Bob thanked", "Bob met Alice. Alice thanked",
            ...             sources=["blocks.4.hook_resid_pre", "blocks.8.hook_resid_pre"])
            >>> c.save_html("patching.html", title="Who thanked whom")
            PosixPath('patching.html')
        """
        from jacobian_scopes.viz.report import save_html

        return save_html(path, self.view(), title=title)


def compare(
    model: Any,
    clean: Prompt,
    corrupt: Prompt,
    target: TargetLike | None = None,
    foil: TargetLike | None = None,
    *,
    sources: SourcesLike = "resid_pre",
    position: int = -1,
    prepend_bos: bool | None = None,
    batch_size: int = 32,
    k: int = 10,
) -> PatchingComparison:
    """The scope's drill-down maps next to attribution and activation patching.

    The scope is the Semantic scope of the logit difference ``target − foil`` on the clean
    prompt (``semantic_scope(model, clean, target, foil=foil, sources=sources)``); both
    patchings denoise with the normalised logit difference.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.patching import compare
        >>> model = js.load_default_model()
        >>> c = compare(model, "Alice met Bob. Bob thanked", "Bob met Alice. Alice thanked",
        ...             " Alice", " Bob")
        >>> list(c.maps)[:2]
        ['scope norm', 'scope first_order']
        >>> c.save_html("patching.html")
        PosixPath('patching.html')
    """
    from jacobian_scopes.scopes import semantic_scope
    from jacobian_scopes.viz.maps import normalized

    ap = activation_patching(
        model,
        clean,
        corrupt,
        target=target,
        foil=foil,
        sources=sources,
        position=position,
        prepend_bos=prepend_bos,
        batch_size=batch_size,
    )
    at = attribution_patching(
        model,
        clean,
        corrupt,
        target=ap.target,
        foil=ap.foil,
        sources=sources,
        position=position,
        prepend_bos=prepend_bos,
    )
    r = semantic_scope(
        model, ap.tokens, ap.target or "", foil=ap.foil, position=ap.position, sources=sources
    )
    assert isinstance(r, ScopeResult)  # one prompt's ids: one result
    if r.first_order is None:  # pragma: no cover - single-direction scopes always have it
        raise RuntimeError("the scope returned no first_order terms")
    maps = {
        "scope norm": r.scores.detach().float().cpu(),
        "scope first_order": r.first_order.detach().float().cpu(),
        "attribution patching": at.values,
        "activation patching": ap.values,
    }
    signed = {
        "scope norm": False,
        "scope first_order": True,
        "attribution patching": True,
        "activation patching": True,
    }
    keep = _comparable(ap)
    ref = ap.values[..., keep]
    rows = []
    for name, m in maps.items():
        if name == "activation patching":
            continue
        rows.append(
            {
                "map": name,
                "normalize": "none",
                **agreement(m[..., keep], ref, k=k, signed=signed[name]),
            }
        )
    for name in ("scope norm", "scope first_order"):
        for how in ("row", "global", "log"):
            m = maps[name]
            # The map as displayed: each cell's colour intensity (BOS left out of the scale).
            shown = normalized(_rows2d(m), how, signed=signed[name], left_out=0 if ap.bos else None)
            shown = shown.reshape(m.shape)[..., keep]
            rows.append(
                {"map": name, "normalize": how, **agreement(shown, ref, k=k, signed=signed[name])}
            )
    import pandas as pd

    table = pd.DataFrame(rows).rename(columns={"top_k": f"top_{k}"})
    return PatchingComparison(maps, signed, table, ap, at, r, k)


def _comparable(ap: PatchingResult) -> Tensor:
    """Columns where patching can have an effect: not BOS, not after the explained position."""
    n = ap.values.shape[-1]
    keep = torch.zeros(n, dtype=torch.bool)
    keep[: ap.position + 1] = True
    if ap.bos:
        keep[0] = False
    return keep


def _rows2d(x: Tensor) -> Tensor:
    return x.reshape(-1, x.shape[-1])

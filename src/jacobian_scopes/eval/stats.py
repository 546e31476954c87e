"""The small amount of statistics the faithfulness evaluation needs, in NumPy only.

* :func:`spearman`: rank correlation with average ranks for ties (as SciPy's ``spearmanr``).
* :func:`bootstrap_ci`: percentile bootstrap interval of a mean over passages.
* :func:`paired_comparison`: the mean per-passage difference of two methods, its bootstrap
  interval and a two-sided sign-flip permutation p-value (exact under the null hypothesis
  that the two methods are exchangeable on every passage).
* :func:`holm`: Holm–Bonferroni adjustment when many pairs are compared at once.

Every random draw takes an explicit seed, so tables are reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from jacobian_scopes.errors import ScopeInputError


def rankdata(x: Sequence[float] | np.ndarray) -> np.ndarray:
    """Ranks 1…n, ties sharing the mean of the ranks they span.

    Example:
        >>> from jacobian_scopes.eval.stats import rankdata
        >>> rankdata([10, 20, 20, 5]).tolist()
        [2.0, 3.5, 3.5, 1.0]
    """
    a = np.asarray(x, dtype=float)
    order = np.argsort(a, kind="stable")
    sorted_a = a[order]
    ranks = np.empty(len(a))
    # Boundaries of runs of equal values in the sorted array; each run gets its mean rank.
    starts = np.flatnonzero(np.r_[True, sorted_a[1:] != sorted_a[:-1]])
    ends = np.r_[starts[1:], len(a)]
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    return ranks


def spearman(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Spearman's ρ: the Pearson correlation of the ranks. NaN if either side is constant.

    Example:
        >>> from jacobian_scopes.eval.stats import spearman
        >>> spearman([1, 2, 3, 4], [10, 20, 30, 25])
        0.8
    """
    ra, rb = rankdata(a), rankdata(b)
    if len(ra) != len(rb):
        raise ScopeInputError(f"spearman needs equal lengths, got {len(ra)} and {len(rb)}")
    if len(ra) < 2:
        return float("nan")
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra**2).sum() * (rb**2).sum())
    if denom == 0:
        return float("nan")
    return float((ra * rb).sum() / denom)


def _finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    return v[np.isfinite(v)]


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(mean, low, high): the mean of the finite values and its percentile bootstrap interval.

    Example:
        >>> from jacobian_scopes.eval.stats import bootstrap_ci
        >>> mean, low, high = bootstrap_ci([1.0, 2.0, 3.0, 4.0], seed=0)
        >>> low <= mean <= high
        True
    """
    v = _finite(values)
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    if len(v) == 1:
        return float(v[0]), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1)
    alpha = (1.0 - level) / 2
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(v.mean()), float(low), float(high)


@dataclass(frozen=True)
class Paired:
    """The paired comparison of method A with method B over the same passages.

    Example:
        AOPC (lower is better) of two methods on the same six passages:

        >>> from jacobian_scopes.eval.stats import paired_comparison
        >>> a = [0.31, 0.28, 0.35, 0.30, 0.33, 0.29]
        >>> b = [0.40, 0.37, 0.41, 0.36, 0.42, 0.30]
        >>> paired_comparison(a, b)  # doctest: +ELLIPSIS
        Paired(n=6, mean_difference=-0.0666..., ci_low=-0.085, ci_high=-0.04..., p_value=0.03125)
    """

    n: int
    mean_difference: float  # mean of A − B
    ci_low: float
    ci_high: float
    p_value: float


def paired_comparison(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    n_boot: int = 2000,
    n_perm: int = 10000,
    level: float = 0.95,
    seed: int = 0,
) -> Paired:
    """Compare two methods passage by passage (pairs with a non-finite side are dropped).

    The p-value flips the sign of each per-passage difference (every pattern when there are
    at most ``n_perm`` of them, else ``n_perm`` random draws plus the observed one, so it is
    never 0) and counts how often the mean difference is at least as far from 0 as observed.

    Example:
        >>> from jacobian_scopes.eval.stats import paired_comparison
        >>> paired_comparison([1.0, 2.0, 3.0], [0.0, 1.0, 2.5], seed=0).mean_difference
        0.8333333333333334
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ScopeInputError(f"paired values need equal lengths, got {x.shape} and {y.shape}")
    d = (x - y)[np.isfinite(x) & np.isfinite(y)]
    if len(d) == 0:
        return Paired(0, float("nan"), float("nan"), float("nan"), float("nan"))
    mean, low, high = bootstrap_ci(d, n_boot=n_boot, level=level, seed=seed)
    observed = abs(d.mean())
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))
    if 2 ** len(d) <= n_perm:
        # Few passages: enumerate every sign pattern, an exact test.
        bits = (np.arange(2 ** len(d))[:, None] >> np.arange(len(d))) & 1
        null = np.abs(((2.0 * bits - 1.0) * d).mean(axis=1))
        p = float((null >= observed - tol).mean())
    else:
        rng = np.random.default_rng(seed + 1)
        signs = rng.choice([-1.0, 1.0], size=(n_perm, len(d)))
        null = np.abs((signs * d).mean(axis=1))
        p = (1 + int((null >= observed - tol).sum())) / (n_perm + 1)
    return Paired(len(d), mean, low, high, float(p))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (same order as given; NaN stays NaN).

    Example:
        >>> from jacobian_scopes.eval.stats import holm
        >>> holm([0.01, 0.04, 0.03])
        [0.03, 0.06, 0.06]
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full(len(p), np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    running = 0.0
    for rank, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return [float(round(v, 12)) if np.isfinite(v) else float("nan") for v in out]

"""Directions that turn the Fisher scope into a handful of vector-Jacobian products.

The Fisher information of the next-token softmax with respect to ``y`` is

    F = Σ_j p_j (w_j − w̄)(w_j − w̄)ᵀ = AᵀA,   A = diag(√p)(W − w̄)   (V × d)

and the score of token t is ``tr(J_tᵀ F J_t) = Σ_k ‖J_tᵀ r_k‖²`` for any rows ``r_k``
with ``Σ_k r_k r_kᵀ = F``. Every method below only chooses those rows:

* ``exact``: the support ``S`` (most probable tokens holding ≥ 1 − ε of the mass) and
  ``F_S = A_SᵀA_S``; rows are the candidates themselves (|S| ≤ d, or when a per-candidate
  decomposition is asked for) or the eigen-factor ``√λ_k u_k`` of ``F_S`` (at most d rows).
  Leaving the tail out can only lower the score:
  ``0 ≤ exact − score ≤ tail_mass · max_{j∉S} ‖J_tᵀ(w_j − w̄)‖²``.
* ``principal``: the top ``rank`` eigen-directions only (the authors' default, rank 1):
  a lower bound that keeps ``captured`` of ``tr F_S``.
* ``sketch``: the top ``rank`` eigen-directions exactly plus ``n_probes`` Gaussian probes
  ``r = Σ_{k>rank} √λ_k g_k u_k`` of the remainder: unbiased for ``tr(J_tᵀ F_S J_t)``,
  with a per-token standard error from the spread of the probes.

Nothing here builds a d × d matrix over the whole vocabulary unless ε = 0 asks for it: the
Gram matrix is formed over the support only, on whichever side of A is smaller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from jacobian_scopes.errors import ScopeInputError

FisherMethod = Literal["exact", "principal", "sketch"]
METHODS: tuple[str, ...] = ("exact", "principal", "sketch")

_GRAM_CHUNK = 8192


@dataclass
class FisherPlan:
    """The rows to pull back and how their squared norms combine into the score."""

    method: str
    rows: Float[Tensor, "K d"]
    n_exact: int  # the first n_exact rows are deterministic; the rest are probes
    per_candidate: bool  # row k belongs to candidate support_ids[k]
    support_ids: Int[Tensor, " S"]
    support_probs: Float[Tensor, " S"]
    eigenvalues: Float[Tensor, " r"] | None
    trace_full: float  # tr F over the whole vocabulary
    trace_support: float  # tr F_S
    tail_mass: float  # 1 − Σ_{j∈S} p_j

    @property
    def n_probes(self) -> int:
        return int(self.rows.shape[0]) - self.n_exact

    @property
    def captured(self) -> float:
        """Share of tr F_S carried by the deterministic rows."""
        if self.trace_support <= 0:
            return 1.0
        exact = self.rows[: self.n_exact].double().pow(2).sum().item()
        return float(min(1.0, exact / self.trace_support))


def support(p: Float[Tensor, " V"], eps: float) -> Int[Tensor, " S"]:
    """Ids of the most probable tokens whose mass first reaches 1 − eps (all of p > 0 at 0).

    Example:
        >>> import torch
        >>> from jacobian_scopes.fisher import support
        >>> support(torch.tensor([0.05, 0.6, 0.3, 0.05]), eps=0.1)
        tensor([1, 2])
    """
    if not 0.0 <= eps < 1.0:
        raise ScopeInputError(f"eps must be in [0, 1), got {eps}")
    probs, ids = torch.sort(p, descending=True)
    if eps == 0.0:
        n = int((probs > 0).sum())
    else:
        # Accumulate in float64: in float32 the running sum can stall short of 1 − eps.
        mass = torch.cumsum(probs.double(), 0)
        n = int((mass < 1.0 - eps).sum()) + 1
    return ids[: max(1, min(n, p.numel()))]


def candidate_rows(
    W_U: Float[Tensor, "d V"], p: Float[Tensor, " V"], wbar: Float[Tensor, " d"], ids: Tensor
) -> Float[Tensor, "S d"]:
    """Rows √p_j (w_j − w̄) of A for the candidates ``ids``."""
    return p[ids].sqrt()[:, None] * (W_U[:, ids].T - wbar)


def _eigen(
    W_U: Tensor, p: Tensor, wbar: Tensor, ids: Tensor
) -> tuple[Float[Tensor, " r"], Float[Tensor, "d r"]]:
    """Eigenpairs of F_S with λ > 0, largest first, from the Gram of the smaller side of A_S."""
    d = W_U.shape[0]
    if ids.numel() <= d:
        A = candidate_rows(W_U, p, wbar, ids).double()
        lam, V = torch.linalg.eigh(A @ A.T)
        keep = lam > lam.max().clamp_min(0) * 1e-12
        lam, V = lam[keep], V[:, keep]
        U = (A.T @ V) / lam.sqrt()
    else:
        G = torch.zeros(d, d, dtype=torch.float64, device=W_U.device)
        for start in range(0, ids.numel(), _GRAM_CHUNK):
            A = candidate_rows(W_U, p, wbar, ids[start : start + _GRAM_CHUNK])
            G += (A.T @ A).double()
        lam, U = torch.linalg.eigh(G)
        keep = lam > lam.max().clamp_min(0) * 1e-12
        lam, U = lam[keep], U[:, keep]
    order = torch.argsort(lam, descending=True)
    return lam[order], U[:, order]


def plan(
    W_U: Float[Tensor, "d V"],
    p: Float[Tensor, " V"],
    *,
    method: FisherMethod = "sketch",
    eps: float = 1e-3,
    rank: int = 8,
    n_probes: int = 8,
    decompose: bool = False,
    generator: torch.Generator | None = None,
) -> FisherPlan:
    """Choose the rows for one explained position. ``p`` is the next-token distribution."""
    if method not in METHODS:
        raise ScopeInputError(f"unknown Fisher method {method!r}; choose one of {METHODS}")
    if decompose and method != "exact":
        raise ScopeInputError("decompose=True needs method='exact' (one VJP per candidate)")
    if rank < 0 or n_probes < 0:
        raise ScopeInputError("rank and n_probes must be non-negative")
    if method == "principal" and rank < 1:
        raise ScopeInputError("method='principal' needs rank >= 1")
    if method == "sketch" and n_probes < 1 and rank < 1:
        raise ScopeInputError("method='sketch' needs n_probes >= 1 (or rank >= 1)")

    W = W_U.float()
    p = p.float()
    wbar = W @ p
    col_sq = W.pow(2).sum(0)
    trace_full = float((p.double() * col_sq.double()).sum() - wbar.double().pow(2).sum())
    ids = support(p, eps)
    # Σ_{j∈S} p_j ‖w_j − w̄‖² without forming the |S| × d rows.
    dist_sq = col_sq[ids].double() - 2 * (wbar @ W[:, ids]).double() + wbar.double().pow(2).sum()
    trace_support = float((p[ids].double() * dist_sq).sum().clamp_min(0))
    tail_mass = float(max(0.0, 1.0 - p[ids].double().sum().item()))
    support_ids, support_probs = ids.cpu(), p[ids].cpu()

    def make(
        method: str, rows: Tensor, n_exact: int, per_candidate: bool, lam: Tensor | None
    ) -> FisherPlan:
        return FisherPlan(
            method,
            rows,
            n_exact,
            per_candidate,
            support_ids,
            support_probs,
            lam,
            max(trace_full, 0.0),
            trace_support,
            tail_mass,
        )

    d = W.shape[0]

    if method == "exact" and (decompose or ids.numel() <= d):
        cand = candidate_rows(W, p, wbar, ids)
        return make("exact", cand, cand.shape[0], True, None)

    lam, U = _eigen(W, p, wbar, ids)
    factor = (U * lam.sqrt()).T.float()  # rows √λ_k u_kᵀ
    if method == "exact":
        return make("exact", factor, factor.shape[0], False, lam)
    k = min(rank, factor.shape[0])
    if method == "principal":
        return make("principal", factor[:k], k, False, lam)
    rest = factor[k:]
    if rest.shape[0] == 0 or n_probes == 0:
        probes = rest.new_zeros((0, d))
    else:
        g = torch.randn(
            (n_probes, rest.shape[0]), generator=generator, dtype=rest.dtype, device="cpu"
        ).to(rest.device)
        probes = g @ rest  # E[rrᵀ] = Σ_{k>rank} λ_k u_k u_kᵀ
    rows = torch.cat([factor[:k], probes])
    return make("sketch", rows, k, False, lam)

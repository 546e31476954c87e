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
* ``sketch``: the top ``rank`` eigen-directions exactly plus ``n_probes`` random-sign
  (Rademacher) probes of the remainder: unbiased for ``tr(J_tᵀ F_S J_t)``, with a
  per-token standard error from the spread of the probes (with one probe, a bound from
  its own size). With ``rank = 0`` (the default: one VJP) no eigen-direction is needed:
  the probe is ``r = A_Sᵀ s`` with random signs ``s`` over the support, so
  ``‖J_tᵀ r‖² = Σ_j ‖J_tᵀ a_j‖² + Σ_{i≠j} s_i s_j ⟨J_tᵀ a_i, J_tᵀ a_j⟩``: every
  candidate's own term is exact and only the cross terms are noise. Signs never have
  more variance than Gaussian weights, which add noise to the own terms too.

``principal`` and ``sketch`` find their eigen-directions with one of two solvers:

* ``"gram"``: the full eigendecomposition of the Gram matrix of ``A_S``, formed on
  whichever side of A is smaller (``O(|S| d²)``, and a d × d matrix once ``|S| > d``);
  probes ``r = Σ_{k>rank} √λ_k s_k u_k``.
* ``"iterative"``: a restarted block Krylov iteration with Rayleigh–Ritz on
  ``F_S v = A_Sᵀ(A_S v)``, never a d × d matrix. It starts on the most probable rows (a
  few thousand) and finishes on the whole support, where the support's rows are formed
  only when ``|S| × d`` is small and otherwise every product streams ``W`` with the
  probabilities masked: a plan costs a few passes over ``W``. Probes
  ``r = (I − UUᵀ) A_Sᵀ s``, ``s`` random signs over the support.

:data:`DEFAULT_SOLVER` picks one when the caller names none. ``exact`` always uses the
Gram matrix (its ``min(|S|, d)`` VJPs cost far more than the plan).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from jacobian_scopes.errors import ScopeInputError

FisherMethod = Literal["exact", "principal", "sketch"]
METHODS: tuple[str, ...] = ("exact", "principal", "sketch")

Solver = Literal["gram", "iterative"]
SOLVERS: tuple[str, ...] = ("gram", "iterative")
#: The eigen-solver of ``principal`` and ``sketch`` when ``plan`` is given none. Both give
#: the same eigen-directions to ``tol``; the iterative one costs a quarter of the Gram's on
#: SmolLM2 (d = 576: 33 against 128 ms a rank-1 plan on one thread, bench_plans.py) and
#: needs no d × d matrix at d = 2048-4096 (bench_gpu.py ``--solver`` compares them there).
DEFAULT_SOLVER: Solver = "iterative"

#: The Fisher scope's default: one random-sign probe of ``F_S`` and no eigen-direction, a
#: single VJP. Chosen by measurement against ``exact`` (docs/speed.md, "Which Fisher method
#: is the default"): of the one-VJP methods it is unbiased and ranks tokens best in the
#: worst case, and each further VJP costs about 0.43× the floor at 256 tokens.
DEFAULT_N_PROBES = 1


def default_rank(method: str) -> int:
    """The rank a method uses when the caller gives none: 1 for ``principal`` (the authors'
    default), 0 for ``sketch`` (probes only), unused by ``exact``."""
    return 1 if method == "principal" else 0


def random_signs(shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    """Rademacher ±1 weights (float32, CPU), drawn from ``generator``."""
    return torch.randint(0, 2, shape, generator=generator).float().mul_(2).sub_(1)


def token_signs(
    n_probes: int, ids: Int[Tensor, " S"], vocab: int, generator: torch.Generator | None
) -> Tensor:
    """Random signs of the support's tokens, (n_probes, S): each token's sign is drawn by its
    id, not by its rank in the support. A probability that moves by a rounding error (the
    same logits computed by another kernel, on another device or thread count) can add a
    token at the support's edge or swap two neighbours in its order; drawn by rank, that
    reshuffled every sign after it and moved the estimate by up to its standard error, drawn
    by id it moves the estimate by that one token's tiny share."""
    return random_signs((n_probes, vocab), generator)[:, ids.cpu()]


_GRAM_CHUNK = 8192
_GRAM_BLOCK = 1024
_VOCAB_BLOCK = 1024
_ROWS_BUFFER: dict[str, Tensor] = {}
_ROWS_BUFFER_LOCK = threading.Lock()


@contextmanager
def _rows_buffer(n: int, W: Tensor) -> Iterator[Tensor | None]:
    """An ``n × d`` buffer for the support's rows, kept from one plan to the next on the
    CPU (one for the process, at most ``_ROWS_LIMIT`` floats: 64 MB). A fresh buffer above
    glibc's 32 MB mmap threshold costs more in page faults than the gather that fills it,
    because it goes back to the system after every plan (SmolLM2, 23.6k rows on one thread:
    37 ms fresh, 7 ms reused). None, so a fresh one, on other devices (their caching
    allocators reuse memory already) and while another thread's plan holds the buffer:
    never a wait, and an interrupt that leaves the lock taken costs only the reuse."""
    if W.device.type != "cpu" or not _ROWS_BUFFER_LOCK.acquire(blocking=False):
        yield None
        return
    try:
        size = n * W.shape[0]
        buf = _ROWS_BUFFER.get("rows")
        if buf is None or buf.dtype != W.dtype or buf.numel() < size:
            buf = _ROWS_BUFFER["rows"] = torch.empty(size, dtype=W.dtype)
        yield buf[:size].view(n, W.shape[0])
    finally:
        _ROWS_BUFFER_LOCK.release()


# Above this many entries the support's rows are not formed (see _Support).
_ROWS_LIMIT = 1 << 24
# Ritz vectors beyond the rank kept from the head's solve to start the whole support's
# iteration: the start is already close, so a small block converges in a step or two. A
# narrower block makes each product over the support a little cheaper (11 against 13 ms,
# docs/speed.md), and on bench_plans.py's distributions rank + 2 needed no more products
# than rank + 8; rank + 1 once needed 17 at rank 8 (close eigenvalues).
_WARM_EXTRA = 2


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
    residual: float = 0.0  # max ‖F_S u − θ u‖ / θ₁ of the eigen-directions found iteratively

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
    W_U: Float[Tensor, "d V"],
    p: Float[Tensor, " V"],
    wbar: Float[Tensor, " d"],
    ids: Tensor,
    out: Tensor | None = None,
) -> Float[Tensor, "S d"]:
    """Rows √p_j (w_j − w̄) of A for the candidates ``ids`` (written into ``out`` if given,
    an ``|ids| × d`` tensor of ``W_U``'s dtype)."""
    # A row gather of Wᵀ when it is contiguous (tied embeddings): a column gather of a
    # row-major d × V matrix reads the whole of it.
    if out is not None and W_U.T.is_contiguous() and not W_U.requires_grad:
        cols = torch.index_select(W_U.T, 0, ids, out=out)
    elif W_U.T.is_contiguous():
        cols = W_U.T.index_select(0, ids)
    else:
        cols = W_U[:, ids].T
    # In place on the fresh gather: two more |S| × d temporaries cost as much as the gather.
    if cols.requires_grad or cols.dtype != torch.promote_types(cols.dtype, wbar.dtype):
        return p[ids].sqrt()[:, None] * (cols - wbar)
    return cols.sub_(wbar).mul_(p[ids].sqrt()[:, None])


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


def _vocab_times(W: Float[Tensor, "d V"], x: Float[Tensor, "V n"]) -> Float[Tensor, "n d"]:
    """``(W x)ᵀ`` for a few vectors over the vocabulary, in one pass over ``W``. On the CPU
    one GEMM of d × V by V × n first copies the whole of ``W`` into its own layout (SmolLM2,
    n = 3, one thread: 25-100 ms, against 8.5 ms for one matrix-vector product); blocks of
    ``W``'s columns, each used for all n vectors while it is in cache, take 14 ms."""
    if W.device.type != "cpu":
        return (W @ x).T
    out = x.new_zeros((x.shape[1], W.shape[0]))
    for xb, wb in zip(x.T.split(_VOCAB_BLOCK, 1), W.split(_VOCAB_BLOCK, 1), strict=True):
        out.addmm_(xb, wb.T)
    return out


def _masked_times(
    W: Tensor, sqrt_p: Tensor, wbar: Tensor, ids: Tensor, g: Float[Tensor, "n S"]
) -> Float[Tensor, "n d"]:
    """``A_Sᵀ g_i = Σ_{j∈S} g_ij √p_j (w_j − w̄)`` as one product with the whole of ``W``,
    the weights placed at the support's ids (``sqrt_p`` = ``√p`` over the support)."""
    x = torch.zeros((W.shape[1], g.shape[0]), dtype=W.dtype, device=W.device)
    x[ids] = (sqrt_p[:, None] * g.T).to(W.dtype)
    return _vocab_times(W, x) - torch.outer(g @ sqrt_p, wbar)


class _Support:
    """The support's rows ``A_S = diag(√p_S)(W_S − w̄)`` as an operator, never as ``F_S``.

    ``F_S v = A_Sᵀ(A_S v)``. When ``|S| × d`` is small the rows are formed once (one
    gather); otherwise every product goes through the unembedding itself with the
    probabilities masked to the support, so a 262k vocabulary at d = 4096 needs no copy of
    ``W`` and no d × d matrix.
    """

    def __init__(
        self,
        W: Tensor,
        p: Tensor,
        wbar: Tensor,
        ids: Tensor,
        rows: Tensor | None = None,
        out: Tensor | None = None,
    ):
        self.W, self.p, self.wbar, self.ids = W, p, wbar, ids
        self.sqrt_p = p[ids].sqrt()
        self.rows = rows
        self.formed = ids.numel() if rows is not None else 0  # rows[:formed] are written
        self._trace = torch.zeros((), dtype=torch.float64, device=W.device)
        if rows is None and ids.numel() * W.shape[0] <= _ROWS_LIMIT:
            self.rows = out if out is not None else W.new_empty((ids.numel(), W.shape[0]))
        if self.rows is not None:
            return
        q = torch.zeros_like(p)
        q[ids] = p[ids]
        self.q = q
        self.m = W @ q  # Σ_S p_j w_j
        self.mass = q.sum()

    def form(self, n: int, Q: Tensor | None = None) -> Tensor:
        """Write the rows up to the ``n``-th, a block at a time, and return what those new
        rows add to ``F_S Q`` (d × 0 without ``Q``). Gathering a block, centring and
        scaling it, adding it to ``tr F_S`` and to the product all happen while the block
        is in cache: one pass over the support's rows, where separate steps made four."""
        assert self.rows is not None
        if Q is None:
            Q = self.rows.new_zeros((self.rows.shape[1], 0))
        QT = Q.T.contiguous()
        out = Q.new_zeros((Q.shape[1], self.rows.shape[1]))
        for start in range(self.formed, n, _GRAM_BLOCK):
            stop = min(start + _GRAM_BLOCK, n)
            block = self.rows[start:stop]
            got = candidate_rows(self.W, self.p, self.wbar, self.ids[start:stop], out=block)
            if got.data_ptr() != block.data_ptr():
                block.copy_(got)
            # Row by row: one float32 norm over the whole block was off by 4e-5 (23.6k rows),
            # a float64 copy of the block costs half the product.
            self._trace += torch.linalg.vector_norm(block, dim=1).double().square().sum()
            if QT.shape[0]:
                out.addmm_(QT @ block.T, block)
        self.formed = max(self.formed, n)
        return out.T

    @property
    def trace(self) -> float:
        """``tr F_S = ‖A_S‖²_F``, summed as the rows were formed (all of them by now)."""
        self.form(self.ids.numel())
        return float(self._trace)

    def head(self, n: int) -> _Support:
        """The operator of the ``n`` most probable candidates (its rows a view of these,
        formed now if they were not yet)."""
        if self.rows is None:
            return _Support(self.W, self.p, self.wbar, self.ids[:n])
        self.form(n)
        return _Support(self.W, self.p, self.wbar, self.ids[:n], self.rows[:n])

    def gram(self, Q: Float[Tensor, "d b"]) -> Float[Tensor, "d b"]:
        """F_S Q."""
        if self.rows is not None:
            self.form(self.ids.numel())
            # Σ over blocks of rows of A_bᵀ(A_b Q), each block read from memory once and
            # used twice while it is in cache, in the (QᵀA_bᵀ)A_b order that streams the
            # block in its own layout: half the memory traffic of two whole passes, and
            # 1.5-2x faster on one CPU thread (bench_plans.py).
            QT = Q.T.contiguous()
            out = Q.new_zeros((Q.shape[1], self.rows.shape[1]))
            for block in self.rows.split(_GRAM_BLOCK):
                out.addmm_(QT @ block.T, block)
            return out.T
        wq, mq = self.wbar @ Q, self.m @ Q
        out = (((Q.T @ self.W) * self.q) @ self.W.T).T
        return out - torch.outer(self.m, wq) - torch.outer(self.wbar, mq - self.mass * wq)

    def rows_times(self, g: Float[Tensor, "n S"]) -> Float[Tensor, "n d"]:
        """``A_Sᵀ g_i`` for vectors ``g_i`` over the support (most probable first)."""
        if self.rows is not None:
            self.form(self.ids.numel())
            return g @ self.rows
        return _masked_times(self.W, self.sqrt_p, self.wbar, self.ids, g)


def top_eigen(
    op: _Support,
    d: int,
    k: int,
    *,
    start: Tensor | None = None,
    product: Tensor | None = None,
    oversample: int = 16,
    tol: float = 1e-4,
    max_iter: int = 30,
) -> tuple[Float[Tensor, " k"], Float[Tensor, "d k"], float, Float[Tensor, "d b"]]:
    """The top ``k`` eigenpairs of F_S by a restarted block Krylov iteration.

    A block ``Q`` of d × (k + oversample) and ``F_S Q`` give Ritz pairs (Rayleigh–Ritz); each
    step adds the part of ``F_S Q`` that ``Q`` does not span, ``P``, costs one product
    ``F_S P`` (two passes over the support's rows), takes the Ritz pairs of the doubled
    block ``[Q, P]``, and keeps the best ``b`` of them as the next ``Q`` (what ``F_S`` makes
    of them is known without another product). Plain subspace iteration would keep only
    ``F_S Q``; the doubled block reached the tolerance in one product fewer on 4 of 9
    SmolLM2 distributions, and never needed more (benchmarks/bench_plans.py). It stops when
    every kept Ritz pair's residual ``‖F_S u − θ u‖`` is below ``tol · θ₁``. The start block
    is drawn from a fixed seed, so the same distribution always gives the same directions.
    ``product``, if given, is ``F_S start`` for an orthonormal ``start`` (computed as the
    rows were formed). Returns the Ritz values (largest first), the orthonormal vectors, the
    largest relative residual, and the leading ``b`` Ritz vectors (a warm ``start`` for a
    larger support).
    """
    if start is None:
        gen = torch.Generator().manual_seed(0)
        shape = (d, min(d, k + oversample))
        start = torch.randn(shape, generator=gen, dtype=torch.float32).to(op.wbar.device)
    if product is None:
        Q, _ = torch.linalg.qr(start)
        product = op.gram(Q)
    else:
        Q = start
    b = Q.shape[1]
    theta, U, FU, worst = _rayleigh_ritz(Q, product, k)
    for _ in range(max_iter):
        if worst <= tol or b >= d:
            break
        if 2 * b > d:  # a small d: the whole space at once, one product
            eye = torch.eye(d, dtype=Q.dtype, device=Q.device)
            theta, U, FU, worst = _rayleigh_ritz(eye, op.gram(eye), k)
            break
        Q, Z = U[:, :b], FU[:, :b]
        # Orthogonalised against Q twice: near convergence F_S Q is almost inside span Q,
        # and in float32 one pass leaves P far from orthogonal to Q after normalising; a
        # basis that is not orthonormal gives meaningless Ritz pairs.
        P = Z - Q @ (Q.T @ Z)
        for _ in range(2):
            P = P - Q @ (Q.T @ P)
            P, _ = torch.linalg.qr(P)
        basis = torch.cat([Q, P], 1)
        theta, U, FU, worst = _rayleigh_ritz(basis, torch.cat([Z, op.gram(P)], 1), k)
    return theta[:k].clamp_min(0), U[:, :k], worst, U[:, :b]


def _rayleigh_ritz(
    B: Float[Tensor, "d m"], FB: Float[Tensor, "d m"], k: int
) -> tuple[Tensor, Tensor, Tensor, float]:
    """Ritz values (largest first) and vectors of F_S on span B (orthonormal), what F_S
    makes of those vectors, and the largest relative residual of the first ``k``."""
    theta, S = torch.linalg.eigh((B.T @ FB).double())
    theta, S = theta.flip(0), S.flip(1).float()
    U, FU = B @ S, FB @ S
    residual = (FU[:, :k] - U[:, :k] * theta[:k].float()).pow(2).sum(0).sqrt()
    return theta, U, FU, float(residual.max()) / float(theta[0].clamp_min(1e-30))


def _head_size(p: Tensor, ids: Tensor, eps: float, d: int) -> int:
    """Rows for the first eigen-solve: those holding 1 − max(eps, 1e-2) of the mass, at
    most max(2048, 2d)."""
    mass = torch.cumsum(p[ids].double(), 0)
    n = int((mass < 1.0 - max(eps, 1e-2)).sum()) + 1
    return max(1, min(n, ids.numel(), max(2048, 2 * d)))


def _iterative_rows(
    W: Tensor,
    p: Tensor,
    wbar: Tensor,
    ids: Tensor,
    *,
    rank: int,
    n_probes: int,
    eps: float,
    col_sq: Tensor,
    generator: torch.Generator | None,
) -> tuple[Tensor, int, Tensor, float, float]:
    """(rows, n_exact, eigenvalues, residual, tr F_S) of principal (n_probes = 0) or sketch
    with the matrix-free solver."""
    with _rows_buffer(ids.numel(), W) as out:
        # Nothing returned may be a view of op.rows: they may live in the shared buffer.
        op = _Support(W, p, wbar, ids, out=out)
        d = W.shape[0]
        k = min(rank, d, ids.numel())
        lam, residual = torch.zeros(0, dtype=torch.float64, device=W.device), 0.0
        U = W.new_zeros((d, 0))
        if k > 0:
            # The eigen-directions are found first on the head of the support (the most
            # probable rows), which is cheap and close; that block then starts the iteration on
            # the whole support, which usually meets the tolerance at once.
            n_head = _head_size(p, ids, eps, d)
            start, product = None, None
            if n_head < ids.numel():
                head = op.head(n_head)
                start = top_eigen(head, d, k, tol=1e-2)[3][:, : k + _WARM_EXTRA]
                start, _ = torch.linalg.qr(start)
                if op.rows is not None:  # the remaining rows formed with their product
                    product = head.gram(start) + op.form(ids.numel(), start)
            lam, U, residual, _ = top_eigen(op, d, k, start=start, product=product)
        # The trace comes out of forming the rows, or, unformed, of the operator's own
        # Σ_S p_j w_j.
        trace_support = op.trace if op.rows is not None else _trace(p, ids, col_sq, wbar, op.m)
        if trace_support <= 0:  # no spread: no direction, no probe
            return W.new_zeros((0, d)), 0, lam[:0], 0.0, 0.0
        if k > 0:
            # Directions F_S does not have (its rank is below k) would be VJPs of nothing.
            keep = lam > lam[0] * 1e-12
            lam, U = lam[keep], U[:, keep]
            k = int(lam.numel())
        # u is defined up to sign; fixed (positive sum) so that nearly equal distributions give
        # nearly equal rows whatever sign the solver's last step happened to produce.
        U = U * torch.where(U.sum(0) < 0, -1.0, 1.0)
        rows = (U * lam.sqrt().float()).T  # rows √θ_k u_kᵀ
        if n_probes == 0:
            return rows, k, lam, residual, trace_support
        # r = (I − UUᵀ) A_Sᵀ s with random signs s: E[r rᵀ] = (I − UUᵀ) F_S (I − UUᵀ)
        # = Σ_{k>rank} λ_k u_k u_kᵀ (for exact u_k).
        g = token_signs(n_probes, ids, W.shape[1], generator)
        probes = op.rows_times(g.to(W.device))
        probes = probes - (probes @ U) @ U.T
        return torch.cat([rows, probes]), k, lam, residual, trace_support


def _trace(p: Tensor, ids: Tensor, col_sq: Tensor, wbar: Tensor, mean_s: Tensor) -> float:
    """``tr F_S = Σ_{j∈S} p_j ‖w_j − w̄‖²`` without forming the support's rows, from
    ``mean_s = Σ_S p_j w_j`` (one product with ``W`` over the whole vocabulary, which streams
    it in its own memory order, where gathering |S| of its columns costs 15× more):
    ``Σ_S p_j ‖w_j‖² − 2 w̄·Σ_S p_j w_j + (Σ_S p_j) ‖w̄‖²``."""
    wd, pd = wbar.double(), p[ids].double()
    trace = (pd * col_sq[ids].double()).sum() - 2 * (wd @ mean_s.double())
    return float((trace + pd.sum() * wd.pow(2).sum()).clamp_min(0))


def _support_mean(W: Tensor, p: Tensor, ids: Tensor) -> Float[Tensor, " d"]:
    """``Σ_{j∈S} p_j w_j``: one product with the whole of ``W``, ``p`` masked to the support."""
    q = torch.zeros_like(p)
    q[ids] = p[ids]
    return W @ q


def _probes_in_one_pass(
    W: Tensor,
    p: Tensor,
    ids: Tensor,
    col_sq: Tensor,
    n_probes: int,
    generator: torch.Generator | None,
) -> tuple[Float[Tensor, " d"], Float[Tensor, "n d"], float]:
    """(w̄, probes, tr F_S) of a sketch without eigen-directions, from one pass over ``W``.

    The probes of the whole of F_S need no solver: ``r = A_Sᵀ s = W x − (Σ_S s_j √p_j) w̄``
    with ``x = s √p`` on the support. ``w̄ = W p``, ``Σ_S p_j w_j`` (for ``tr F_S``) and
    ``W x`` come out of one blocked pass together, where each was a pass of its own."""
    signs = token_signs(n_probes, ids, W.shape[1], generator).to(W.device)
    sqrt_p = p[ids].sqrt()
    x = W.new_zeros((W.shape[1], 2 + n_probes))
    x[:, 0] = p
    x[ids, 1] = p[ids]
    x[ids, 2:] = sqrt_p[:, None] * signs.T
    wbar, mean_s, Wx = _vocab_times(W, x).split([1, 1, n_probes])
    wbar, mean_s = wbar[0], mean_s[0]
    probes = Wx - torch.outer(signs @ sqrt_p, wbar)
    return wbar, probes, _trace(p, ids, col_sq, wbar, mean_s)


_NORMS_CACHE: dict[tuple[Any, ...], Tensor] = {}


def _column_norms(W_U: Tensor, W: Float[Tensor, "d V"]) -> Float[Tensor, " V"]:
    """‖w_j‖² for every column of ``W`` (``W_U`` in float32), kept while the weights do not
    change: this pass over the whole vocabulary costs more than the rest of an iterative
    plan. The key holds a sample of the values too, in case another tensor reuses the same
    memory."""
    d, V = W_U.shape
    sample = float(W_U[:: max(1, d // 16), :: max(1, V // 256)].double().sum())
    key = (W_U.data_ptr(), W_U._version, tuple(W_U.shape), W_U.dtype, W_U.device, sample)
    hit = _NORMS_CACHE.pop(key, None)
    if hit is None:
        # No V × d temporary (W.pow(2) would copy the whole unembedding).
        hit = torch.linalg.vector_norm(W, dim=0).square()
        while len(_NORMS_CACHE) >= 4:  # a few unembeddings (V floats each), oldest out
            del _NORMS_CACHE[next(iter(_NORMS_CACHE))]
    _NORMS_CACHE[key] = hit  # most recent last
    return hit


def plan(
    W_U: Float[Tensor, "d V"],
    p: Float[Tensor, " V"],
    *,
    method: FisherMethod = "sketch",
    eps: float = 1e-3,
    rank: int | None = None,
    n_probes: int = DEFAULT_N_PROBES,
    decompose: bool = False,
    generator: torch.Generator | None = None,
    solver: Solver | None = None,
) -> FisherPlan:
    """Choose the rows for one explained position. ``p`` is the next-token distribution.

    ``rank`` defaults to :func:`default_rank`. ``solver`` finds the eigen-directions of
    ``principal`` and ``sketch`` (``"gram"`` or ``"iterative"``, see the module's
    docstring); ``None`` means :data:`DEFAULT_SOLVER`.

    Example:
        >>> import torch
        >>> from jacobian_scopes.fisher import plan
        >>> W = torch.eye(3)
        >>> p = torch.tensor([0.7, 0.2, 0.1])
        >>> a = plan(W, p, method="principal", rank=1, solver="gram")
        >>> b = plan(W, p, method="principal", rank=1, solver="iterative")
        >>> bool(torch.allclose(a.eigenvalues[:1], b.eigenvalues, rtol=1e-5))
        True
    """
    solver = DEFAULT_SOLVER if solver is None else solver
    rank = default_rank(method) if rank is None else rank
    if solver not in SOLVERS:
        raise ScopeInputError(f"unknown Fisher solver {solver!r}; choose one of {SOLVERS}")
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
    d, V = W.shape
    ids = support(p, eps)
    col_sq = _column_norms(W_U, W)
    tail_mass = float(max(0.0, 1.0 - p[ids].double().sum().item()))
    support_ids, support_probs = ids.cpu(), p[ids].cpu()
    probes = None
    if method == "sketch" and rank == 0 and n_probes * V <= ids.numel() * d:
        wbar, probes, trace_support = _probes_in_one_pass(W, p, ids, col_sq, n_probes, generator)
    else:
        wbar = W @ p
    trace_full = float((p.double() * col_sq.double()).sum() - wbar.double().pow(2).sum())

    iterative = method != "exact" and solver == "iterative" and rank > 0
    if iterative:
        rows, k, lam, residual, trace_support = _iterative_rows(
            W,
            p,
            wbar,
            ids,
            rank=rank,
            n_probes=n_probes if method == "sketch" else 0,
            eps=eps,
            col_sq=col_sq,
            generator=generator,
        )
    elif probes is None:
        trace_support = _trace(p, ids, col_sq, wbar, _support_mean(W, p, ids))

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

    if iterative:
        done = make(method, rows, k, False, lam)
        done.residual = residual
        return done

    if method == "sketch" and rank == 0:
        if trace_support <= 0:
            return make("sketch", W.new_zeros((0, d)), 0, False, None)
        if probes is None:  # many probes: the support's rows, formed once, are cheaper
            signs = token_signs(n_probes, ids, V, generator).to(W.device)
            probes = signs @ candidate_rows(W, p, wbar, ids)
        return make("sketch", probes, 0, False, None)

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
        g = random_signs((n_probes, rest.shape[0]), generator).to(rest.device, rest.dtype)
        probes = g @ rest  # E[rrᵀ] = Σ_{k>rank} λ_k u_k u_kᵀ
    rows = torch.cat([factor[:k], probes])
    return make("sketch", rows, k, False, lam)

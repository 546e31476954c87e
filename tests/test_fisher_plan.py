"""The Fisher plans' solvers: the matrix-free eigen-directions equal a dense
eigendecomposition (rows formed or streamed through W), their probes have the covariance
they promise, and one eigen-direction plus one probe is unbiased for the exact trace with
the standard error it reports."""

from __future__ import annotations

import pytest
import torch

import helpers
import jacobian_scopes as js
from jacobian_scopes import fisher
from jacobian_scopes.errors import ScopeInputError


def _unembedding(d: int = 48, V: int = 3000, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d, V, generator=g) * torch.linspace(0.3, 2.0, d)[:, None]
    p = torch.softmax(torch.randn(V, generator=g) * 2.5, 0)
    return W, p


@pytest.mark.parametrize("rows_limit", [1 << 24, 0])  # rows formed / streamed through W
@pytest.mark.parametrize("eps", [0.0, 1e-3])
def test_top_eigenpairs_match_a_dense_eigendecomposition(monkeypatch, rows_limit, eps):
    monkeypatch.setattr(fisher, "_ROWS_LIMIT", rows_limit)
    W, p = _unembedding()
    ids = fisher.support(p, eps)
    wbar = W.double() @ p.double()
    A = fisher.candidate_rows(W.double(), p.double(), wbar, ids)
    lam, U = torch.linalg.eigh(A.T @ A)
    lam, U = lam.flip(0), U.flip(1)
    plan = fisher.plan(W, p, method="principal", rank=3, eps=eps, solver="iterative")
    assert plan.eigenvalues is not None
    torch.testing.assert_close(plan.eigenvalues, lam[:3], rtol=1e-4, atol=0)
    # rows are √λ_k u_k, up to sign
    got = plan.rows.double() / plan.rows.double().norm(dim=1, keepdim=True)
    torch.testing.assert_close(
        (got @ U[:, :3]).abs().diagonal(), torch.ones(3, dtype=torch.float64), atol=1e-3, rtol=0
    )
    assert plan.trace_support == pytest.approx(float(lam.sum()), rel=1e-5)
    assert plan.captured == pytest.approx(float(lam[:3].sum() / lam.sum()), rel=1e-4)
    assert plan.residual <= 1e-4


def test_both_solvers_give_the_same_principal_rows():
    W, p = _unembedding(d=32, V=2000, seed=2)
    gram = fisher.plan(W, p, method="principal", rank=4, solver="gram")
    iterative = fisher.plan(W, p, method="principal", rank=4, solver="iterative")
    # √λ u is defined up to sign: compare the rank-4 matrices Σ r rᵀ
    outer = [(pl.rows.double().T @ pl.rows.double()) for pl in (gram, iterative)]
    # to the solver's tolerance (a residual of 1e-4 · θ₁, over the eigen-gap)
    assert float((outer[0] - outer[1]).norm() / outer[0].norm()) < 1e-3
    assert (gram.trace_support, gram.tail_mass) == (iterative.trace_support, iterative.tail_mass)


@pytest.mark.parametrize("rows_limit", [1 << 24, 0])
def test_probes_have_the_covariance_of_the_remainder(monkeypatch, rows_limit):
    monkeypatch.setattr(fisher, "_ROWS_LIMIT", rows_limit)
    W, p = _unembedding(d=16, V=400)
    n = 40000
    plan = fisher.plan(
        W,
        p,
        method="sketch",
        rank=2,
        n_probes=n,
        eps=0.0,
        generator=torch.Generator().manual_seed(1),
        solver="iterative",
    )
    F = helpers.dense_fisher(W, p)
    lam, U = torch.linalg.eigh(F)
    rest = F - (U[:, -2:] * lam[-2:]) @ U[:, -2:].T
    R = plan.rows[2:].double()
    cov = R.T @ R / n
    assert float((cov - rest).norm() / rest.norm()) < 0.05


def test_a_distribution_without_spread_gives_no_rows_and_no_nan():
    W, _ = _unembedding(d=8, V=50)
    p = torch.zeros(50)
    p[3] = 1.0  # F = 0: w_3 − w̄ = 0
    for method in ("principal", "sketch"):
        plan = fisher.plan(W, p, method=method, rank=2, n_probes=2, solver="iterative")
        assert plan.rows.shape[0] == 0 and plan.trace_support == 0.0


def test_an_unknown_solver_is_refused():
    W, p = _unembedding(d=8, V=50)
    with pytest.raises(ScopeInputError, match="solver"):
        fisher.plan(W, p, solver="lanczos")  # type: ignore[arg-type]


@pytest.mark.parametrize("solver", ["gram", "iterative"])
def test_one_direction_and_one_probe_is_unbiased_with_its_stderr(monkeypatch, tiny, solver):
    monkeypatch.setattr(fisher, "DEFAULT_SOLVER", solver)
    model, _, _ = tiny
    toks = helpers.tokens(7, seed=1)
    J, y = helpers.brute_jacobian(model, toks)
    W_U = model.W_U.detach().double()
    probs = torch.softmax(y[-1].double() @ W_U + model.b_U.detach().double(), dim=-1)
    exact = helpers.fisher_trace(J, helpers.dense_fisher(W_U, probs))
    runs = [js.fisher_scope(model, toks, eps=0.0, rank=1, n_probes=1, seed=s) for s in range(60)]
    assert runs[0].fisher.method == "sketch" and runs[0].fisher.n_vjps == 2
    scores = torch.stack([r.scores.double() for r in runs])
    mean, sem = scores.mean(0), scores.std(0) / len(runs) ** 0.5
    assert ((mean - exact).abs() <= 4 * sem + 1e-6).all()
    # the reported one-probe bound √2·(probe term) covers the actual spread on average
    stderr = torch.stack([r.fisher.stderr.double() for r in runs]).mean(0)
    assert (scores.std(0) <= stderr * 1.05 + 1e-9).all()
    principal = js.fisher_scope(model, toks, method="principal", eps=0.0).scores.double()
    # the deterministic part is the principal score; the probe only adds
    assert (scores.min(0).values >= principal - 1e-5).all()

"""The Fisher plans' solvers: the matrix-free eigen-directions equal a dense
eigendecomposition (rows formed or streamed through W), their probes have the covariance
they promise and random signs, one eigen-direction plus one probe is unbiased for the exact
trace with the standard error it reports, and so is the default (one probe, one VJP)."""

from __future__ import annotations

import re

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


def test_the_heads_rows_are_the_supports_own_not_a_second_gather():
    W, p = _unembedding()
    ids = fisher.support(p, 1e-3)
    op = fisher._Support(W, p, W @ p, ids)
    head = op.head(100)
    assert op.rows is not None and head.rows is not None
    assert head.rows.data_ptr() == op.rows.data_ptr()
    torch.testing.assert_close(head.rows, fisher.candidate_rows(W, p, W @ p, ids[:100]))


def test_rows_formed_with_a_product_give_the_whole_supports_product_and_trace():
    # The rows after the head are formed in the same pass as their share of F_S Q, and
    # tr F_S is summed as they are formed: both must equal the dense A_S's.
    W, p = _unembedding()
    ids = fisher.support(p, 1e-3)
    A = fisher.candidate_rows(W.double(), p.double(), W.double() @ p.double(), ids)
    Q, _ = torch.linalg.qr(torch.randn(W.shape[0], 3, generator=torch.Generator().manual_seed(1)))
    op = fisher._Support(W, p, W @ p, ids)
    head = op.head(500)
    product = head.gram(Q) + op.form(ids.numel(), Q)
    torch.testing.assert_close(product.double(), A.T @ (A @ Q.double()), rtol=1e-5, atol=1e-6)
    assert op.trace == pytest.approx(float(A.pow(2).sum()), rel=1e-6)
    torch.testing.assert_close(op.rows.double(), A, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method, n_probes", [("principal", 0), ("sketch", 2)])
def test_a_plan_keeps_its_rows_when_the_next_plan_reuses_the_row_buffer(method, n_probes):
    # The support's rows live in a buffer each thread reuses from plan to plan: nothing a
    # plan returns may be a view of it. (W laid out as a tied embedding's transpose, whose
    # rows are gathered into that buffer.)
    W, p = _unembedding()
    W = W.T.contiguous().T
    first = fisher.plan(W, p, method=method, rank=1, n_probes=n_probes)
    kept = first.rows.clone()
    fisher.plan(W, p.flip(0), method=method, rank=1, n_probes=n_probes)  # same size
    assert torch.equal(first.rows, kept)


def test_the_row_buffer_is_reused_grows_when_needed_and_is_never_shared():
    W, p = _unembedding()
    n = fisher.support(p, 1e-3).numel()
    with fisher._rows_buffer(n, W) as a:
        assert a is not None and a.shape == (n, W.shape[0])
        with fisher._rows_buffer(n, W) as nested:  # another plan meanwhile: a fresh one
            assert nested is None
    with fisher._rows_buffer(n // 2, W) as b:
        assert b is not None and b.data_ptr() == a.data_ptr()
    with fisher._rows_buffer(2 * n, W) as c:
        assert c is not None and c.shape == (2 * n, W.shape[0])


def test_the_warm_start_is_the_ritz_vectors_largest_first():
    # The whole support's iteration starts from the head's leading Ritz vectors: the first
    # columns of what top_eigen hands on must be its eigen-directions, in order.
    W, p = _unembedding(seed=3)
    ids = fisher.support(p, 1e-3)
    op = fisher._Support(W, p, W @ p, ids)
    _, U, _, start = fisher.top_eigen(op, W.shape[0], 3, tol=1e-2)
    torch.testing.assert_close(start[:, :3], U)
    assert start.shape[1] > 3


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
    # The iterative solver sums tr F_S over the rows it forms, the Gram one from W's norms.
    assert iterative.trace_support == pytest.approx(gram.trace_support, rel=1e-6)
    assert gram.tail_mass == iterative.tail_mass


def test_a_block_wider_than_half_the_space_still_meets_the_tolerance():
    # d = 24 and a block of 1 + 16: doubling it would not fit, so the whole space is taken.
    W, p = _unembedding(d=24, V=2000, seed=4)
    ids = fisher.support(p, 1e-3)
    lam, _, residual, _ = fisher.top_eigen(fisher._Support(W, p, W @ p, ids), 24, 1)
    dense = fisher.plan(W, p, method="principal", rank=1, solver="gram").eigenvalues[:1]
    assert residual <= 1e-4
    torch.testing.assert_close(lam, dense, rtol=1e-5, atol=0)


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


@pytest.mark.parametrize("method", ["sketch", "principal", "exact"])
def test_a_model_certain_of_its_next_token_gets_zero_fisher_scores(monkeypatch, method):
    # A passage of the faithfulness study (SmolLM2, p = 1 in float32) gave the plan no rows,
    # and the call failed in torch.cat; with F = 0 every token's score is 0.
    from jacobian_scopes import directions

    plan = directions.fisher_math.plan

    def certain(W_U, p, **kwargs):
        return plan(W_U, torch.nn.functional.one_hot(p.argmax(), p.numel()).float(), **kwargs)

    monkeypatch.setattr(directions.fisher_math, "plan", certain)
    model = helpers.make_model(helpers.model_kinds()[0], "llama")
    result = js.fisher_scope(model, helpers.tokens(6), method=method)
    assert torch.equal(result.scores, torch.zeros_like(result.scores))


def test_an_unknown_solver_is_refused():
    W, p = _unembedding(d=8, V=50)
    with pytest.raises(ScopeInputError, match="solver"):
        fisher.plan(W, p, solver="lanczos")  # type: ignore[arg-type]


def _exact_trace(model, toks) -> torch.Tensor:
    J, y = helpers.brute_jacobian(model, toks)
    W_U = model.W_U.detach().double()
    probs = torch.softmax(y[-1].double() @ W_U + model.b_U.detach().double(), dim=-1)
    return helpers.fisher_trace(J, helpers.dense_fisher(W_U, probs))


def _unbiased_with_its_stderr(runs, exact: torch.Tensor) -> torch.Tensor:
    """Assert that the mean over seeds meets the exact trace and that the reported one-probe
    bound √2·(probe term) covers the actual spread on average; return the scores."""
    scores = torch.stack([r.scores.double() for r in runs])
    mean, sem = scores.mean(0), scores.std(0) / len(runs) ** 0.5
    assert ((mean - exact).abs() <= 4 * sem + 1e-6).all()
    stderr = torch.stack([r.fisher.stderr.double() for r in runs]).mean(0)
    assert (scores.std(0) <= stderr * 1.05 + 1e-9).all()
    return scores


@pytest.mark.parametrize("solver", ["gram", "iterative"])
def test_one_direction_and_one_probe_is_unbiased_with_its_stderr(monkeypatch, tiny, solver):
    monkeypatch.setattr(fisher, "DEFAULT_SOLVER", solver)
    model, _, _ = tiny
    toks = helpers.tokens(7, seed=1)
    runs = [js.fisher_scope(model, toks, eps=0.0, rank=1, n_probes=1, seed=s) for s in range(60)]
    assert runs[0].fisher.method == "sketch" and runs[0].fisher.n_vjps == 2
    scores = _unbiased_with_its_stderr(runs, _exact_trace(model, toks))
    principal = js.fisher_scope(model, toks, method="principal", eps=0.0).scores.double()
    # the deterministic part is the principal score; the probe only adds
    assert (scores.min(0).values >= principal - 1e-5).all()


def _peaked(masses: list[float], d: int = 8, V: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """An unembedding and a distribution whose support at ε = 0.3 is its first tokens (the
    rest keeps enough mass that w̄ is not a mix of the support's columns alone)."""
    W, _ = _unembedding(d=d, V=V, seed=4)
    p = torch.full((V,), (1.0 - sum(masses)) / (V - len(masses)))
    p[: len(masses)] = torch.tensor(masses)
    return W, p


@pytest.mark.parametrize("seed", range(4))
def test_one_probe_of_a_one_candidate_support_is_exact(seed):
    # Random signs: the probe is ±a_0, so r rᵀ = F_S exactly (a Gaussian weight g would
    # give g² F_S).
    W, p = _peaked([0.75])
    plan = fisher.plan(W, p, eps=0.3, generator=torch.Generator().manual_seed(seed))
    assert plan.support_ids.tolist() == [0] and plan.rows.shape[0] == 1
    F_S = fisher.candidate_rows(W, p, W @ p, plan.support_ids).T
    F_S = F_S @ F_S.T
    scale = F_S.norm()
    torch.testing.assert_close(
        torch.outer(plan.rows[0], plan.rows[0]) / scale, F_S / scale, atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("seed", range(4))
def test_one_probe_of_a_rank_one_remainder_is_exact_with_the_gram_solver(seed):
    W, p = _peaked([0.5, 0.3])
    plan = fisher.plan(
        W,
        p,
        eps=0.3,
        rank=1,
        n_probes=1,
        solver="gram",
        generator=torch.Generator().manual_seed(seed),
    )
    A = fisher.candidate_rows(W.double(), p.double(), W.double() @ p.double(), plan.support_ids)
    lam, U = torch.linalg.eigh(A.T @ A)
    remainder = lam[-2] * torch.outer(U[:, -2], U[:, -2])
    probe = plan.rows[1].double()
    scale = remainder.norm()
    torch.testing.assert_close(
        torch.outer(probe, probe) / scale, remainder / scale, atol=1e-4, rtol=0
    )


@pytest.mark.parametrize("n_probes", [1, 3, 5000])  # streamed through W / rows formed
def test_probes_without_eigen_directions_are_the_support_rows_under_random_signs(n_probes):
    W, p = _unembedding(d=16, V=400)
    plan = fisher.plan(W, p, n_probes=n_probes, generator=torch.Generator().manual_seed(5))
    # One sign per vocabulary entry, drawn in id order; a support token takes its id's.
    signs = fisher.random_signs((n_probes, 400), torch.Generator().manual_seed(5))
    signs = signs[:, plan.support_ids]
    assert set(signs.unique().tolist()) == {-1.0, 1.0}
    want = signs @ fisher.candidate_rows(W, p, W @ p, plan.support_ids)
    torch.testing.assert_close(plan.rows, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n_probes", [1, 4])
def test_a_probe_only_plan_reports_the_supports_trace_and_the_whole_one(n_probes):
    # Without eigen-directions tr F_S comes out of the pass over W that makes the probes
    # (from Σ_S p_j w_j), not from the support's rows: both traces against float64.
    W, p = _unembedding(V=5000)
    ids = fisher.support(p, 1e-3)
    Wd, pd_ = W.double(), p.double()
    A = fisher.candidate_rows(Wd, pd_, Wd @ pd_, ids)
    plan = fisher.plan(W, p, n_probes=n_probes, generator=torch.Generator().manual_seed(0))
    assert plan.trace_support == pytest.approx(float(A.pow(2).sum()), rel=1e-6)
    whole = float((pd_ * Wd.pow(2).sum(0)).sum() - (Wd @ pd_).pow(2).sum())
    assert plan.trace_full == pytest.approx(whole, rel=1e-5)


def test_the_default_is_one_probe_and_no_eigen_direction(tiny):
    W, p = _unembedding(d=16, V=400)
    plan = fisher.plan(W, p)
    assert (plan.method, plan.n_exact, plan.n_probes) == ("sketch", 0, fisher.DEFAULT_N_PROBES)
    assert fisher.DEFAULT_N_PROBES == 1 and plan.eigenvalues is None
    model, _, _ = tiny
    r = js.fisher_scope(model, helpers.tokens(7, seed=1))
    assert (r.fisher.method, r.fisher.n_vjps, r.fisher.rank, r.fisher.captured) == (
        "sketch",
        1,
        0,
        0.0,
    )
    assert r.fisher.is_unbiased and r.fisher.stderr is not None
    from jacobian_scopes.viz.tokens import describe

    assert "[sketch, 1 VJP]" in repr(r) and describe(r).endswith("sketch, 1 VJP")
    many = js.fisher_scope(model, helpers.tokens(7, seed=1), rank=2, n_probes=2)
    assert "[sketch, 4 VJPs]" in repr(many)


def test_views_say_how_noisy_a_sketched_fisher_result_is(tiny):
    # One probe's scores are off by about half: a view must not read as exact.
    from jacobian_scopes.viz.tokens import context

    model, _, _ = tiny
    toks = helpers.tokens(7, seed=1)
    one = js.fisher_scope(model, toks)
    assert "one random probe: unbiased, s.e. up to √2 × each score" in context(one)
    many = context(js.fisher_scope(model, toks, n_probes=4))
    assert re.search(r"· 4 random probes: s\.e\. \d+% of a score \(median\) ·", many)
    assert "probe" not in context(js.fisher_scope(model, toks, method="exact"))
    assert "probe" not in context(js.semantic_scope(model, toks, 3))


def test_every_public_fisher_entry_point_has_the_same_default():
    import inspect

    from jacobian_scopes import call

    for fn in (js.fisher_scope, js.generate_scope, call.fisher):
        params = inspect.signature(fn).parameters
        assert params["n_probes"].default == fisher.DEFAULT_N_PROBES, fn
        assert params["rank"].default is None and params["method"].default == "sketch", fn


def test_the_one_probe_default_is_unbiased_with_its_stderr(tiny):
    model, _, _ = tiny
    toks = helpers.tokens(7, seed=2)
    runs = [js.fisher_scope(model, toks, eps=0.0, seed=s) for s in range(80)]
    assert {r.fisher.n_vjps for r in runs} == {1}
    _unbiased_with_its_stderr(runs, _exact_trace(model, toks))
    # one seed, one answer: the probe is drawn from the call's seed
    again = js.fisher_scope(model, toks, eps=0.0, seed=3).scores
    torch.testing.assert_close(again, runs[3].scores, rtol=0, atol=0)


def test_column_norms_are_computed_once_per_unembedding(monkeypatch, tiny):
    # The option check plans on a toy 2 × 2 unembedding each call; it must not evict the
    # model's norms (a pass over the whole vocabulary, the plan's biggest cost).
    model, _, _ = tiny
    monkeypatch.setattr(fisher, "_NORMS_CACHE", {})
    computed = []
    norm = torch.linalg.vector_norm

    def counting(x, *args, **kwargs):
        if kwargs.get("dim") == 0:  # column norms (others are taken elsewhere in a call)
            computed.append(tuple(x.shape))
        return norm(x, *args, **kwargs)

    monkeypatch.setattr(fisher.torch.linalg, "vector_norm", counting)
    toks = helpers.tokens(7, seed=1)
    for _ in range(3):
        js.fisher_scope(model, toks)
    assert computed.count(tuple(model.W_U.shape)) == 1


@pytest.mark.parametrize(("rank", "solver"), [(0, None), (1, "iterative")])
def test_the_sketch_barely_moves_when_two_neighbours_in_the_support_swap(rank, solver):
    # Logits computed by another kernel differ by rounding errors; where two tokens are
    # almost equally probable that swaps their order in the support. Each token keeps its
    # sign, so the probe moves by rounding only (drawn by rank, it moved by their difference).
    W, p = _unembedding(seed=5)
    order = p.argsort(descending=True)
    a, b = int(order[3]), int(order[4])
    p = p.clone()
    p[a] = p[b] = (p[a] + p[b]) / 2
    p[a] += 1e-7
    swapped = p.clone()
    swapped[a], swapped[b] = p[b], p[a]
    plans = [
        fisher.plan(W, q, rank=rank, solver=solver, generator=torch.Generator().manual_seed(0))
        for q in (p, swapped)
    ]
    first, second = (pl.support_ids.tolist() for pl in plans)
    assert first.index(a) < first.index(b) and second.index(b) < second.index(a)
    # Up to the solver's tolerance: the iterative eigen-direction is found to a residual of
    # 1e-4 · θ₁, so two solves may differ by a few 1e-4 (rows here are about 0.4 each).
    torch.testing.assert_close(plans[0].rows, plans[1].rows, rtol=1e-3, atol=1e-3)

"""The Fisher eigen-solvers against a dense float64 reference: truncation error stays within the
reported bound, and the matrix-free Krylov solver finds the same top eigenpairs as eigh."""

from __future__ import annotations

import pytest
import torch

from jscopes_tl import fisher_scope
from jscopes_tl.fisher import fisher_eigenpairs

from conftest import PROMPT


def reference_fisher(W_U, p, slope=None):
    W, p = W_U.double(), p.double()
    G = W if slope is None else W * slope.double()[None, :]
    return G @ (torch.diag(p) - torch.outer(p, p)) @ G.T


def problem(d=48, vocab=600, sharpness=4.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    W_U = torch.randn(d, vocab, generator=generator)
    y = torch.randn(d, generator=generator)
    p = torch.softmax(sharpness * (y @ W_U) / d**0.5, -1)
    return W_U, p


def subspace_matches(vectors, reference_vectors):
    """The same subspace (eigenvector signs are arbitrary): projector difference is small."""
    P = vectors.double() @ vectors.double().T
    Q = reference_vectors @ reference_vectors.T
    return float((P - Q).norm()) < 1e-3


@pytest.mark.parametrize("rank", [1, 4])
def test_dense_solver_matches_float64_eigh(rank):
    W_U, p = problem()
    values, vectors = torch.linalg.eigh(reference_fisher(W_U, p))
    result = fisher_eigenpairs(W_U, p, rank, solver="dense")
    torch.testing.assert_close(result.eigenvalues, values.flip(0)[:rank], rtol=1e-5, atol=0)
    assert subspace_matches(result.eigenvectors, vectors.flip(1)[:, :rank])
    assert abs(result.trace - float(values.sum())) <= 1e-5 * float(values.sum())
    assert result.solver == "dense" and result.kept_rows == W_U.shape[1] and result.dropped_mass == 0


@pytest.mark.parametrize("rank", [1, 3])
def test_krylov_solver_matches_dense_eigh(rank):
    W_U, p = problem()
    values, vectors = torch.linalg.eigh(reference_fisher(W_U, p))
    result = fisher_eigenpairs(W_U, p, rank, solver="krylov", tolerance=1e-6)
    assert result.solver == "krylov"
    torch.testing.assert_close(result.eigenvalues, values.flip(0)[:rank], rtol=1e-5, atol=0)
    assert subspace_matches(result.eigenvectors, vectors.flip(1)[:, :rank])
    assert result.residual <= 1e-6


def test_krylov_residual_bounds_the_eigenvalue_error_when_stopped_early():
    W_U, p = problem(sharpness=1.0)
    values = torch.linalg.eigvalsh(reference_fisher(W_U, p)).flip(0)
    result = fisher_eigenpairs(W_U, p, 1, solver="krylov", tolerance=1e-2)
    assert result.residual <= 1e-2
    # A Ritz value is within its residual of a true eigenvalue, and never above λ_1.
    assert float(values[0]) * (1 - 1e-2) - 1e-12 <= float(result.eigenvalues[0]) <= float(values[0]) * (1 + 1e-6)


def test_truncated_fisher_error_is_within_the_reported_relative_bound():
    W_U, p = problem(sharpness=6.0)
    F = reference_fisher(W_U, p)
    trace = float(torch.trace(F))
    result = fisher_eigenpairs(W_U, p, 2, tail_tolerance=1e-2, solver="dense")
    assert 0 < result.dropped_trace <= 1e-2 * trace * (1 + 1e-6) and result.kept_rows < W_U.shape[1]
    assert result.dropped_trace_fraction == pytest.approx(result.dropped_trace / result.trace)
    top = torch.linalg.eigvalsh(F).flip(0)[:2]
    # Weyl: dropping a PSD part moves each eigenvalue by at most its spectral norm <= its trace.
    assert torch.all((top - result.eigenvalues).abs() <= result.dropped_trace * (1 + 1e-5) + 1e-9)
    assert torch.all(result.eigenvalues <= top * (1 + 1e-5))


def test_softcap_slope_scales_each_unembedding_column():
    W_U, p = problem()
    slope = torch.rand(W_U.shape[1], generator=torch.Generator().manual_seed(3))
    values = torch.linalg.eigvalsh(reference_fisher(W_U, p, slope)).flip(0)
    result = fisher_eigenpairs(W_U, p, 2, slope=slope, solver="dense")
    torch.testing.assert_close(result.eigenvalues, values[:2], rtol=1e-5, atol=0)


@pytest.mark.parametrize("sharpness, expected_solver", [(0.5, "dense"), (5.0, "krylov")])
def test_auto_solver_picks_by_spectrum_and_cost_and_matches_dense(sharpness, expected_solver):
    """Fisher mass spread over more rows than d_model (as from random weights) goes straight to
    the dense route; concentrated (trained-model-like) converges matrix-free without forming F."""
    W_U, p = problem(d=128, vocab=50_000, sharpness=sharpness)
    W, p64 = W_U.double(), p.double()
    mass = p64 * (W - (W @ p64)[:, None]).pow(2).sum(0)  # p_v ‖g_v - μ‖²
    q = mass / mass.sum()
    perplexity = float(torch.exp(-torch.special.xlogy(q, q).sum()))
    assert (perplexity > 128) == (expected_solver == "dense")
    dense = fisher_eigenpairs(W_U, p, 2, solver="dense")
    auto = fisher_eigenpairs(W_U, p, 2, solver="auto")
    assert auto.solver == expected_solver
    torch.testing.assert_close(auto.eigenvalues, dense.eigenvalues, rtol=1e-4, atol=0)
    assert subspace_matches(auto.eigenvectors, dense.eigenvectors)


def test_fisher_scope_krylov_equals_dense_on_a_model(any_model):
    dense = fisher_scope(any_model, PROMPT, rank=2, tail_tolerance=0.0, eigen_solver="dense")
    krylov = fisher_scope(any_model, PROMPT, rank=2, tail_tolerance=0.0, eigen_solver="krylov")
    torch.testing.assert_close(krylov.scores, dense.scores, rtol=1e-3, atol=1e-6 * float(dense.scores.max()))
    assert krylov.metadata["eigen_solver"] == ["krylov"]


def kept_rows_by_fisher_mass(G, p, tail_tolerance):
    """The rule, from its definition: rows by decreasing p_v ‖g_v - μ‖² until the rest holds at
    most tail_tolerance of tr F; the top token's row (h_r = 0) is always kept."""
    mean = G @ p
    mass = p * (G - mean[:, None]).pow(2).sum(0)
    order = torch.argsort(mass, descending=True)
    rest = mass.sum() - torch.cumsum(mass[order], 0)  # mass left after keeping order[: i + 1]
    count = int((rest > tail_tolerance * mass.sum()).sum()) + 1
    kept = set(order[:count].tolist()) | {int(p.argmax())}
    return torch.tensor(sorted(kept))


@pytest.mark.parametrize("layout", ["d_model x d_vocab", "view of d_vocab x d_model"])
@pytest.mark.parametrize("tail_tolerance, gathered", [(0.2, True), (1e-6, False)])
def test_truncated_fisher_with_slope_matches_the_kept_sum(tail_tolerance, gathered, layout):
    """Both ways of leaving rows out (gathering few kept rows; zeroing many dropped ones), for
    W_U stored either way round (HookedTransformer; a bridge's lm_head), give
    F_kept = Σ_kept p_v (g_v - μ)(g_v - μ)^T with μ over the whole vocabulary, slopes included,
    and the rows kept are those with the most Fisher mass."""
    W_U, p = problem(d=32, vocab=4000, sharpness=3.0)
    if layout.startswith("view"):
        W_U = W_U.T.contiguous().T
    slope = 0.5 + torch.rand(W_U.shape[1], generator=torch.Generator().manual_seed(5))
    result = fisher_eigenpairs(W_U, p, 3, tail_tolerance=tail_tolerance, slope=slope, solver="dense")
    assert (4 * result.kept_rows < W_U.shape[1]) == gathered and (2 * result.kept_rows > W_U.shape[1]) != gathered
    G, p64 = W_U.double() * slope.double()[None, :], p.double() / p.double().sum()
    kept = kept_rows_by_fisher_mass(G, p64, tail_tolerance)
    assert result.kept_rows == len(kept)
    centred = G - (G @ p64)[:, None]
    F_kept = (centred[:, kept] * p64[kept][None, :]) @ centred[:, kept].T
    expected = torch.linalg.eigvalsh(F_kept).flip(0)[:3]
    torch.testing.assert_close(result.eigenvalues, expected, rtol=1e-4, atol=0)
    dropped = torch.ones(W_U.shape[1], dtype=torch.bool)
    dropped[kept] = False
    assert result.dropped_mass == pytest.approx(float(p64[dropped].sum()), rel=1e-5)
    dropped_trace = float((p64[dropped] * centred[:, dropped].pow(2).sum(0)).sum())
    assert result.dropped_trace == pytest.approx(dropped_trace, rel=1e-4)
    assert 0 < result.dropped_trace_fraction <= tail_tolerance

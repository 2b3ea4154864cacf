"""The Fisher information of the next-token softmax in hidden-state space, and its top eigenpairs.

With logits ``z = s ⊙ (W_U^T y) + b`` (``s`` the slope of any elementwise logit transform, 1
without one) and ``p = softmax(z)``, the Fisher information of the predictive distribution with
respect to the final hidden state ``y`` is

    F = Σ_v p_v (g_v - μ)(g_v - μ)^T,   g_v = s_v W_U[:, v],   μ = Σ_v p_v g_v,

i.e. ``W_U (diag(p) - p p^T) W_U^T`` without a transform. A Fisher Scope reads its top eigenpairs.

Forming ``F`` costs ``d_vocab · d_model²`` FLOPs (≈30 GFLOP for GPT-2), more than the model's
forward pass, so we avoid doing that in full:

* **Truncation.** The least likely tokens, together holding at most ``tail_mass`` of the
  probability, are left out of the sum (``μ`` stays exact). The dropped part is positive
  semi-definite with trace ``Σ_dropped p_v ‖g_v - μ‖²``, computed exactly in
  ``d_vocab · d_model``, which bounds the spectral-norm error of the kept matrix. For the peaked
  distributions of trained models this keeps a few hundred rows.
* **Matrix-free eigen-solve.** ``F X = G (p ⊙ G^T X) - ...`` costs ``2 · m · d_model`` per column,
  so a block Krylov method (Rayleigh–Ritz on an orthonormal Krylov basis) finds the top ``k``
  eigenpairs in a few products when the spectrum has a gap. It stops when every Ritz pair's
  residual ``‖F x - θ x‖ ≤ tolerance · θ_1``; where the spectrum is too flat for that to happen
  within half the cost of the dense route, it falls back to forming ``F`` and ``eigh``.
* **Choosing.** The dense route costs ``m · d_model²`` to form ``F`` plus a ``d_model³`` ``eigh``.
  When the probability is spread over more tokens than ``d_model`` (perplexity ``> d_model``, as
  for a randomly initialised model), ``F`` behaves like a sample covariance of many columns: the
  top of its spectrum is flat, Krylov cannot converge cheaply, and ``"auto"`` goes dense at
  once. Otherwise (peaked distributions) the top eigenpairs stand out and Krylov needs a few
  products, with no ``d_model × d_model`` matrix at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float

Solver = Literal["auto", "dense", "krylov"]

# Below this many multiply-adds, forming F densely is cheaper than any iteration bookkeeping.
DENSE_WORK_THRESHOLD = 5e8
# Vocabulary rows per block when forming F densely.
DENSE_BLOCK_ROWS = 4096
# A symmetric eigen-decomposition of an n × n matrix costs about this many times n³ multiply-adds
# of a matrix product (measured on CPU; it is less parallel than a matrix product).
EIGH_WORK_FACTOR = 9.0


@dataclass(frozen=True)
class FisherEigenpairs:
    eigenvalues: Float[torch.Tensor, " r"]  # descending
    eigenvectors: Float[torch.Tensor, "d_model r"]
    trace: float  # tr(F), exact
    dropped_mass: float  # probability mass of the vocabulary rows left out of F
    dropped_trace: float  # tr(F - F_kept) >= ‖F - F_kept‖₂: bounds the error of the kept matrix
    kept_rows: int
    solver: str  # "dense" or "krylov"
    residual: float  # max_i ‖F x_i - θ_i x_i‖ / θ_1 of the returned pairs (0 for dense)


@dataclass(frozen=True)
class _KeptFisher:
    """``F_kept = G diag(p) G^T - a μ^T - μ a^T + P μ μ^T`` over the kept rows (``a = G p``)."""

    G: Float[torch.Tensor, "d_model m"]
    p: Float[torch.Tensor, " m"]
    mean: Float[torch.Tensor, " d_model"]
    kept_mean: Float[torch.Tensor, " d_model"]  # a = Σ_kept p_v g_v
    kept_mass: float  # P = Σ_kept p_v

    def matmul(self, X: Float[torch.Tensor, "d_model b"]) -> Float[torch.Tensor, "d_model b"]:
        mean_dot = self.mean @ X
        # Row-vector order ((Xᵀ G) p) Gᵀ: both products stream G with the block as the small
        # operand; for narrow blocks up to 2× faster than G (p ⊙ Gᵀ X), in either layout of G.
        return (
            (((X.T @ self.G) * self.p) @ self.G.T).T
            - torch.outer(self.kept_mean, mean_dot)
            - torch.outer(self.mean, self.kept_mean @ X)
            + self.kept_mass * torch.outer(self.mean, mean_dot)
        )

    def dense(self) -> Float[torch.Tensor, "d_model d_model"]:
        # Σ_v p_v g_v g_vᵀ accumulated over blocks of the vocabulary: a scaled copy of all of G
        # would cost d_vocab · d_model floats (2 GB for a 128k × 4096 unembedding), and the
        # blocks, reused from cache, are also 10–15 % faster.
        rows, root_p = self.G.T, self.p.sqrt()
        fisher = torch.zeros(rows.shape[1], rows.shape[1], dtype=rows.dtype, device=rows.device)
        for start in range(0, rows.shape[0], DENSE_BLOCK_ROWS):
            block = rows[start : start + DENSE_BLOCK_ROWS] * root_p[start : start + DENSE_BLOCK_ROWS, None]
            fisher.addmm_(block.T, block)
        a, mean = self.kept_mean, self.mean
        fisher -= torch.outer(a, mean) + torch.outer(mean, a) - self.kept_mass * torch.outer(mean, mean)
        return fisher


def _perplexity(weights: Float[torch.Tensor, " m"]) -> float:
    """``exp(entropy)`` of the weights renormalised to sum 1: how many tokens share the mass."""
    q = weights / weights.sum().clamp_min(1e-30)
    return math.exp(float(-(q * torch.log(q.clamp_min(1e-30))).sum()))


def _dense_top(kept: _KeptFisher, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    # F is formed in float32, so a float32 eigh loses nothing (its backward error is eps·‖F‖,
    # the size of F's own rounding) and is ~1.7× faster than float64 at d_model = 768.
    fisher = kept.dense()
    eigenvalues, eigenvectors = torch.linalg.eigh((fisher + fisher.T) / 2)
    return eigenvalues.flip(0)[:rank].double(), eigenvectors.flip(1)[:, :rank].double()


def _orthonormal_complement(block: torch.Tensor, basis: torch.Tensor | None) -> torch.Tensor:
    """Columns of ``block`` made orthonormal and orthogonal to ``basis`` (dependent ones dropped)."""
    for _ in range(2):  # twice is enough (Kahan–Parlett) for full reorthogonalisation
        if basis is not None:
            block = block - basis @ (basis.T @ block)
    q, r = torch.linalg.qr(block)
    keep = r.diagonal().abs() > 1e-6 * max(float(r.diagonal().abs().max()), 1e-30)
    return q[:, keep]


def _krylov_top(
    kept: _KeptFisher, rank: int, start: torch.Tensor, tolerance: float, max_products: float
) -> tuple[torch.Tensor, torch.Tensor, float, bool]:
    """Block Krylov with Rayleigh–Ritz. Returns (values, vectors, relative residual, converged).

    Stops unconverged once ``max_products`` columns have been multiplied, or earlier when the
    observed rate of convergence cannot reach the tolerance within that budget.
    """
    d = kept.G.shape[0]
    basis = _orthonormal_complement(start, None)
    images = kept.matmul(basis)
    products = last_block = basis.shape[1]
    previous = float("inf")
    while True:
        projected = (basis.T @ images).double()
        values, vectors = torch.linalg.eigh((projected + projected.T) / 2)
        values, vectors = values.flip(0)[:rank], vectors.flip(1)[:, :rank].to(basis.dtype)
        ritz, ritz_images = basis @ vectors, images @ vectors
        residual = (ritz_images - ritz * values.to(basis.dtype)[None, :]).norm(dim=0)
        relative = float(residual.max()) / max(float(values[0]), 1e-30)
        if relative <= tolerance or basis.shape[1] >= d:
            return values, ritz.double(), relative, True
        steps_needed = 0.0
        if math.isfinite(previous):
            rate = relative / previous
            steps_needed = math.log(tolerance / relative) / math.log(rate) if 0 < rate < 1 else math.inf
        if products >= max_products or products + last_block * steps_needed > max_products:
            return values, ritz.double(), relative, False
        previous = relative
        # The next block of the Krylov space span{S, FS, F²S, ...}: F times the newest block.
        block = _orthonormal_complement(images[:, -last_block:], basis)
        if block.shape[1] == 0:
            return values, ritz.double(), relative, True
        basis = torch.cat([basis, block], dim=1)
        images = torch.cat([images, kept.matmul(block)], dim=1)
        products += block.shape[1]
        last_block = block.shape[1]


def fisher_eigenpairs(
    W_U: Float[torch.Tensor, "d_model d_vocab"],
    probabilities: Float[torch.Tensor, " d_vocab"],
    rank: int,
    *,
    tail_mass: float = 0.0,
    slope: Float[torch.Tensor, " d_vocab"] | None = None,
    column_sq_norms: Float[torch.Tensor, " d_vocab"] | None = None,
    solver: Solver = "auto",
    tolerance: float = 1e-5,
) -> FisherEigenpairs:
    """Top ``rank`` eigenpairs of the softmax Fisher ``F`` (module docstring) at one prediction.

    ``column_sq_norms`` (``‖W_U[:, v]‖²``) can be passed in when many predictions share ``W_U``.
    The ``d_vocab``-sized products run in float32; small eigen-solves in float64.
    """
    d = W_U.shape[0]
    p = probabilities.float()
    W = W_U.float()
    if column_sq_norms is None:
        column_sq_norms = W.pow(2).sum(0)
    s = torch.ones_like(p) if slope is None else slope.float()
    mean = W @ (s * p)
    # ‖g_v - μ‖² for every v in d_vocab · d_model: tr(F) and the dropped part, exactly.
    centred_sq_norm = s.pow(2) * column_sq_norms - 2.0 * s * (mean @ W) + mean @ mean
    trace = float((p * centred_sq_norm).sum())
    keep = torch.ones_like(p, dtype=torch.bool)
    if tail_mass > 0:
        order = torch.argsort(p, descending=True)
        mass_from_here = torch.flip(torch.cumsum(torch.flip(p[order], [0]), 0), [0])
        keep[order[max(int((mass_from_here > tail_mass).sum()), 1):]] = False
    m = int(keep.sum())
    dropped_mass = float(p[~keep].sum())
    # Copying the kept columns pays off once products over them save more than the copy costs:
    # below half the vocabulary when they are contiguous rows of W_Uᵀ (W_U a view of a
    # [d_vocab, d_model] lm_head weight), below a quarter when they are strided (about 2× dearer).
    if (2 if W.stride(0) == 1 else 4) * m < p.shape[0]:
        index = keep.nonzero(as_tuple=True)[0]
        G, kept_p = W.T[index].T, p[index]
        if slope is not None:
            G = G * s[index][None, :]
    else:
        # Many rows kept: the dropped probabilities are zeroed instead of copying W_U.
        G = W if slope is None else W * s[None, :]
        kept_p = torch.where(keep, p, 0.0)
    kept = _KeptFisher(G=G, p=kept_p, mean=mean, kept_mean=G @ kept_p, kept_mass=float(kept_p.sum()))
    kept_trace = float((torch.where(keep, p, 0.0) * centred_sq_norm).sum())

    dense_work = m * d * d + EIGH_WORK_FACTOR * d**3
    product_work = 2 * m * d  # one column of the matrix-free product
    perplexity = _perplexity(kept_p)
    use_dense = solver == "dense" or (
        solver == "auto" and (dense_work <= DENSE_WORK_THRESHOLD or 2 * rank >= d or perplexity > d)
    )
    residual = 0.0
    if not use_dense:
        block = min(d, rank + 4)
        top_tokens = torch.topk(kept_p, min(block, m)).indices
        start = G[:, top_tokens] - mean[:, None]
        if start.shape[1] < block:
            generator = torch.Generator().manual_seed(0)
            start = torch.cat([start, torch.randn(d, block - start.shape[1], generator=generator).to(start)], dim=1)
        # "auto" stops iterating once the products would cost half the dense route (a flat top
        # of the spectrum converges slowly; dense is then the cheaper route).
        max_products = math.inf if solver == "krylov" else max(block, 0.5 * dense_work / product_work)
        values, vectors, residual, converged = _krylov_top(kept, rank, start, tolerance, max_products)
        if not converged and solver == "auto":
            use_dense = True
    if use_dense:
        values, vectors = _dense_top(kept, rank)
        residual = 0.0
    return FisherEigenpairs(
        eigenvalues=values.clamp_min(0.0).float(),
        eigenvectors=vectors.float(),
        trace=trace,
        dropped_mass=dropped_mass,
        dropped_trace=max(trace - kept_trace, 0.0),
        kept_rows=m,
        solver="dense" if use_dense else "krylov",
        residual=residual,
    )

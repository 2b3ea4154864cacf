"""The Fisher information of the next-token softmax in hidden-state space, and its top eigenpairs.

With logits ``z = s ⊙ (W_U^T y) + b`` (``s`` the slope of any elementwise logit transform, 1
without one) and ``p = softmax(z)``, the Fisher information of the predictive distribution with
respect to the final hidden state ``y`` is

    F = Σ_v p_v (g_v - μ)(g_v - μ)^T,   g_v = s_v W_U[:, v],   μ = Σ_v p_v g_v,

i.e. ``W_U (diag(p) - p p^T) W_U^T`` without a transform. A Fisher Scope reads its top eigenpairs.

**Exact at every confidence.** Trained models are often confident: ``ε = 1 - p_max`` of 1e-6 or
less. Then ``μ ≈ g_r`` (``r`` the top token), ``F`` is of size ``ε``, and the textbook form
``Σ p g gᵀ - μ μᵀ`` subtracts two matrices of size 1 that agree to within ``ε``: in float32 its
relative error is about 1e-7 / ``ε`` (10 % at ``ε = 1e-6``). Everything here is instead written relative to the
top token's column, ``h_v = g_v - g_r`` (so ``h_r = 0`` exactly), and scaled by ``ε``:

    F / ε = Σ_{v≠r} w_v h_v h_vᵀ - ε d dᵀ,   w_v = p_v / ε (Σ_{v≠r} w_v = 1),   d = Σ_{v≠r} w_v h_v,

where ``μ - g_r = ε d``. Every term is of size 1 and nothing cancels, so the ``d_vocab``-sized
products can run in float32 whatever ``ε`` is; only ``p`` and ``ε = Σ_{v≠r} p_v`` need float64
(computed from float64 softmax of the logits, so ``ε`` is resolved down to 1e-300, not to the
float32 ``1 - p_max ≈ 6e-8``). A float64 ``W_U`` keeps every product in float64.

**Truncation relative to tr F.** Row ``v`` carries the Fisher mass
``c_v = p_v ‖g_v - μ‖²`` (``tr F = Σ_v c_v``); rows are kept in decreasing order of ``c_v`` until
the rest, ``tr(F - F_kept) = Σ_dropped c_v``, is at most ``tail_tolerance · tr F``. That sum is
exact (``μ`` stays the full mean) and bounds the spectral-norm error of ``F_kept``, so each kept
eigenvalue is within it (Weyl). Ranking by Fisher mass, not by probability, matters for
confident predictions: there the top token carries almost all the probability and almost none of
the Fisher mass (``g_r - μ = -ε d``, so ``c_r = p_r ε² ‖d‖²``), which lives in the other tokens.

* **Matrix-free eigen-solve.** ``F X`` over the ``m`` kept rows costs ``2 · m · d_model`` per
  column, so a block Krylov method (Rayleigh–Ritz on an orthonormal Krylov basis, started from
  the ``g_v - μ`` of the rows with the most Fisher mass) finds the top ``k`` eigenpairs in a few
  products when the spectrum has a gap. It stops when every Ritz pair's residual
  ``‖F x - θ x‖ ≤ tolerance · θ_1``; where the spectrum is too flat for that to happen within half
  the cost of the dense route, it falls back to forming ``F`` and ``eigh``.
* **Choosing.** The dense route costs ``m · d_model²`` to form ``F`` plus a ``d_model³`` ``eigh``.
  When the Fisher mass is spread over more rows than ``d_model`` (its perplexity ``exp H(c/Σc) >
  d_model``, as for a randomly initialised model, or a confident prediction with a flat tail),
  ``F`` behaves like a sample covariance of many columns: the top of its spectrum is flat,
  Krylov cannot converge cheaply, and ``"auto"`` goes dense at once. Otherwise the top
  eigenpairs stand out and Krylov needs a few products, with no ``d_model × d_model`` matrix.
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
# Up to this many columns, a block product over contiguous rows of W_Uᵀ takes the column-major route.
NARROW_BLOCK = 5
# A symmetric eigen-decomposition of an n × n matrix costs about this many times n³ multiply-adds
# of a matrix product (measured on CPU; it is less parallel than a matrix product).
EIGH_WORK_FACTOR = 9.0


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a readout and the engine's reductions work in for tensors of ``dtype``: float64
    for float64 (a float64 model's scores stay float64-accurate), float32 otherwise (half-precision
    values are summed in float32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass(frozen=True)
class FisherEigenpairs:
    eigenvalues: Float[torch.Tensor, " r"]  # descending, float64
    eigenvectors: Float[torch.Tensor, "d_model r"]  # float64
    trace: float  # tr(F)
    dropped_mass: float  # probability mass of the vocabulary rows left out of F
    dropped_trace: float  # tr(F - F_kept) >= ‖F - F_kept‖₂: bounds the error of the kept matrix
    kept_rows: int
    solver: str  # "dense", "krylov" or "zero" (F = 0: the prediction is certain)
    residual: float  # max_i ‖F x_i - θ_i x_i‖ / θ_1 of the returned pairs (0 for dense)

    @property
    def dropped_trace_fraction(self) -> float:
        """``tr(F - F_kept) / tr(F)``: the truncation's error bound relative to ``F``."""
        return self.dropped_trace / self.trace if self.trace > 0 else 0.0


@dataclass(frozen=True)
class _ScaledKeptFisher:
    """``F_kept / ε = Σ_kept w_v h_v h_vᵀ - ε (a dᵀ + d aᵀ) + ε P d dᵀ`` (module docstring), with
    ``a = Σ_kept w_v h_v`` and ``P = Σ_kept p_v`` (``P = 1``, ``a = d`` when nothing is dropped).

    ``columns`` holds ``g_v`` (all of them, or a gathered copy of the kept ones), and
    ``h_v = g_v - g_r`` is formed on the fly against ``reference = g_r``: the products subtract
    ``g_rᵀ X`` from ``g_vᵀ X`` (as accurate as subtracting the columns first, and no extra pass
    over them). ``weights`` is 0 for dropped rows and for ``r``.
    """

    columns: Float[torch.Tensor, "d_model m"]
    reference: Float[torch.Tensor, " d_model"]
    weights: Float[torch.Tensor, " m"]
    shift: Float[torch.Tensor, " d_model"]  # d
    kept_shift: Float[torch.Tensor, " d_model"]  # a
    epsilon: float
    kept_mass: float  # P

    def _rank_two_terms(self, X: torch.Tensor) -> torch.Tensor:
        shift_dot, kept_dot = self.shift @ X, self.kept_shift @ X
        return self.epsilon * (
            self.kept_mass * torch.outer(self.shift, shift_dot)
            - torch.outer(self.kept_shift, shift_dot)
            - torch.outer(self.shift, kept_dot)
        )

    def matmul(self, X: Float[torch.Tensor, "d_model b"]) -> Float[torch.Tensor, "d_model b"]:
        if self.columns.stride(0) == 1 and X.shape[1] <= NARROW_BLOCK:
            # Columns stored as contiguous rows (a bridge's lm_head, or a gathered copy): the
            # products (Hᵀ X_colmajor) and then its transpose times Hᵀ run 1.3-2.5× faster than
            # the row-vector order for blocks of 2-5 columns (GPT-2 size, one thread).
            projections = (self.columns.T @ X.T.contiguous().T - self.reference @ X) * self.weights[:, None]
            product = projections.T @ self.columns.T - projections.sum(0)[:, None] * self.reference[None, :]
        else:
            # Row-vector order ((Xᵀ H) w) Hᵀ: both products stream the columns with the block as
            # the small operand; for narrow blocks up to 2× faster than H (w ⊙ Hᵀ X).
            projections = (X.T @ self.columns - (X.T @ self.reference)[:, None]) * self.weights
            product = projections @ self.columns.T - projections.sum(1)[:, None] * self.reference[None, :]
        return product.T + self._rank_two_terms(X)

    def dense(self) -> Float[torch.Tensor, "d_model d_model"]:
        # Σ_v w_v h_v h_vᵀ accumulated over blocks of the vocabulary: a scaled copy of all the
        # columns would cost d_vocab · d_model floats (2 GB for a 128k × 4096 unembedding), and
        # the blocks, reused from cache, are also 10–15 % faster.
        rows, root_weights = self.columns.T, self.weights.sqrt()
        d = rows.shape[1]
        fisher = torch.zeros(d, d, dtype=rows.dtype, device=rows.device)
        for start in range(0, rows.shape[0], DENSE_BLOCK_ROWS):
            end = start + DENSE_BLOCK_ROWS
            block = (rows[start:end] - self.reference) * root_weights[start:end, None]
            fisher.addmm_(block.T, block)
        return fisher + self._rank_two_terms(torch.eye(d, dtype=rows.dtype, device=rows.device))


def _dots_with_columns(
    W: Float[torch.Tensor, "d_model d_vocab"], vectors: Float[torch.Tensor, "k d_model"]
) -> Float[torch.Tensor, "k d_vocab"]:
    """``vectors @ W`` in the order that streams ``W`` fastest for its layout: with ``W`` a view
    of a ``[d_vocab, d_model]`` weight, ``Wᵀ`` times the column-major ``vectorsᵀ`` is 5× faster
    for two vectors than either row-major form (GPT-2 size, one thread)."""
    if W.stride(0) == 1:
        return (W.T @ vectors.T).T
    return vectors @ W


def _perplexity(weights: Float[torch.Tensor, " m"]) -> float:
    """``exp(entropy)`` of the weights renormalised to sum 1: how many rows share the mass."""
    q = weights / weights.sum().clamp_min(1e-300)
    return math.exp(float(-torch.special.xlogy(q, q).sum()))


def _dense_top(kept: _ScaledKeptFisher, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    # F is formed in the working dtype, so an eigh in that dtype loses nothing (its backward
    # error is eps·‖F‖, the size of F's own rounding); in float32 it is ~1.7× faster than float64.
    fisher = kept.dense()
    eigenvalues, eigenvectors = torch.linalg.eigh((fisher + fisher.T) / 2)
    return eigenvalues.flip(0)[:rank].double(), eigenvectors.flip(1)[:, :rank].double()


def _orthonormal_complement(block: torch.Tensor, basis: torch.Tensor | None) -> torch.Tensor:
    """Columns of ``block`` made orthonormal and orthogonal to ``basis`` (dependent ones dropped).

    A column is dependent when less than 1e-6 (float32; 1e-12 in float64) of its norm is new,
    measured against the block *before* projection, so that an exhausted Krylov space (a low-rank
    ``F``, e.g. a confident prediction with a handful of likely alternatives) ends the iteration
    instead of adding rounding noise as new directions."""
    scale = float(block.norm(dim=0).max())
    for _ in range(2):  # twice is enough (Kahan–Parlett) for full reorthogonalisation
        if basis is not None:
            block = block - basis @ (basis.T @ block)
    q, r = torch.linalg.qr(block)
    keep = r.diagonal().abs() > (1e-12 if block.dtype == torch.float64 else 1e-6) * max(scale, 1e-300)
    return q[:, keep]


def _krylov_top(
    kept: _ScaledKeptFisher, rank: int, start: torch.Tensor, tolerance: float, max_products: float
) -> tuple[torch.Tensor, torch.Tensor, float, bool]:
    """Block Krylov with Rayleigh–Ritz. Returns (values, vectors, relative residual, converged).

    Stops unconverged once ``max_products`` columns have been multiplied, or earlier when the
    observed rate of convergence cannot reach the tolerance within that budget.
    """
    d = kept.columns.shape[0]
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
        relative = float(residual.max()) / max(float(values[0]), 1e-300)
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


def _rows_to_keep(contributions: Float[torch.Tensor, " d_vocab"], tail_tolerance: float) -> torch.Tensor:
    """Boolean mask of the fewest rows, by decreasing Fisher mass, whose complement holds at most
    ``tail_tolerance`` of the total (every row with mass when the tolerance is 0)."""
    keep = torch.ones_like(contributions, dtype=torch.bool)
    order = torch.argsort(contributions, descending=True)
    mass_from_here = torch.flip(torch.cumsum(torch.flip(contributions[order], [0]), 0), [0])
    allowed = tail_tolerance * float(contributions.sum())
    keep[order[max(int((mass_from_here > allowed).sum()), 1) :]] = False
    return keep


def fisher_eigenpairs(
    W_U: Float[torch.Tensor, "d_model d_vocab"],
    probabilities: Float[torch.Tensor, " d_vocab"],
    rank: int,
    *,
    tail_tolerance: float = 0.0,
    slope: Float[torch.Tensor, " d_vocab"] | None = None,
    column_sq_norms: Float[torch.Tensor, " d_vocab"] | None = None,
    solver: Solver = "auto",
    tolerance: float = 1e-5,
) -> FisherEigenpairs:
    """Top ``rank`` eigenpairs of the softmax Fisher ``F`` (module docstring) at one prediction.

    ``probabilities`` should be float64 (e.g. ``torch.softmax(logits.double(), -1)``): the small
    ones set ``ε = 1 - p_max`` and so the size of ``F``. ``tail_tolerance`` bounds
    ``tr(F - F_kept) / tr(F)``. ``column_sq_norms`` (``‖W_U[:, v]‖²``) can be passed in when many
    predictions share ``W_U``. The ``d_vocab``-sized products run in float32 (float64 for a
    float64 ``W_U``); vectors over the vocabulary and small eigen-solves in float64.
    """
    d = W_U.shape[0]
    dtype = working_dtype(W_U.dtype)
    W = W_U.to(dtype)
    p = probabilities.double()
    p = p / p.sum()
    top = int(p.argmax())
    others = p.clone()
    others[top] = 0.0
    epsilon = float(others.sum())
    if epsilon == 0.0:  # a certain prediction: F = 0
        zero = torch.zeros(rank, dtype=torch.float64)
        return FisherEigenpairs(zero, torch.eye(d, rank, dtype=torch.float64), 0.0, 0.0, 0.0, 0, "zero", 0.0)
    s = torch.ones_like(p) if slope is None else slope.double()
    if column_sq_norms is None or (dtype == torch.float64 and column_sq_norms.dtype != torch.float64):
        column_sq_norms = W.pow(2).sum(0)
    weights = others / epsilon  # w_v, summing to 1 over v != r

    # d = Σ w_v g_v - g_r, then g_v·g_r and g_v·d for every v in one pass over W_U.
    g_top = W[:, top] * float(s[top])
    shift = W @ (s * weights).to(dtype) - g_top
    dots = _dots_with_columns(W, torch.stack([g_top, shift])).T.double() * s[:, None]
    # ‖h_v‖² and h_v·d (h_r = 0 exactly), then ‖g_v - μ‖² = ‖h_v - ε d‖².
    top_sq = float(g_top.double() @ g_top.double())
    h_sq = (s.pow(2) * column_sq_norms.double() - 2 * dots[:, 0] + top_sq).clamp_min(0)
    h_dot_shift = dots[:, 1] - float(g_top.double() @ shift.double())
    h_sq[top], h_dot_shift[top] = 0.0, 0.0
    shift_sq = float(shift.double() @ shift.double())
    centred_sq = (h_sq - 2 * epsilon * h_dot_shift + epsilon**2 * shift_sq).clamp_min(0)
    contributions = weights * centred_sq  # c_v / ε for v != r
    contributions[top] = float(p[top]) * epsilon * shift_sq  # c_r / ε = p_r ‖ε d‖² / ε
    scaled_trace = float(contributions.sum())

    keep = _rows_to_keep(contributions, tail_tolerance) if tail_tolerance > 0 else contributions > 0
    keep[top] = True  # the reference row: h_r = 0, so it costs nothing and keeps its p_r in P
    m = int(keep.sum())
    kept_weights = torch.where(keep, weights, 0.0)
    # Copying the kept columns pays off once products over them save more than the copy costs:
    # below half the vocabulary when they are contiguous rows of W_Uᵀ (W_U a view of a
    # [d_vocab, d_model] lm_head weight), below a quarter when they are strided (about 2× dearer).
    if (2 if W.stride(0) == 1 else 4) * m < p.shape[0]:
        gathered = keep.clone()
        gathered[top] = False
        index = gathered.nonzero(as_tuple=True)[0]
        columns, row_weights = W.T[index].T, kept_weights[index]
        if slope is not None:
            columns = columns * s[index].to(dtype)[None, :]
    else:
        # Many rows kept: the dropped weights are zeroed instead of copying W_U.
        columns = W if slope is None else W * s.to(dtype)[None, :]
        row_weights = kept_weights
    kept = _ScaledKeptFisher(
        columns=columns,
        reference=g_top,
        weights=row_weights.to(dtype),
        shift=shift,
        kept_shift=columns @ row_weights.to(dtype) - g_top * float(row_weights.sum()),
        epsilon=epsilon,
        kept_mass=float(p[keep].sum()),
    )

    dense_work = m * d * d + EIGH_WORK_FACTOR * d**3
    product_work = 2 * m * d  # one column of the matrix-free product
    use_dense = solver == "dense" or (
        solver == "auto"
        and (dense_work <= DENSE_WORK_THRESHOLD or 2 * rank >= d or _perplexity(contributions[keep]) > d)
    )
    residual = 0.0
    if not use_dense:
        block = min(d, rank + 4)
        # Start from g_v - μ = h_v - ε d of the rows with the most Fisher mass.
        heavy = torch.topk(torch.where(keep, contributions, -1.0), min(block, m)).indices
        start = W[:, heavy] * s[heavy].to(dtype)[None, :] - g_top[:, None] - epsilon * shift[:, None]
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
        eigenvalues=values.clamp_min(0.0) * epsilon,
        eigenvectors=vectors,
        trace=scaled_trace * epsilon,
        dropped_mass=float(p[~keep].sum()),
        dropped_trace=float(contributions[~keep].sum()) * epsilon,
        kept_rows=m,
        solver="dense" if use_dense else "krylov",
        residual=residual,
    )

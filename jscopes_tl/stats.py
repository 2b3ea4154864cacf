"""Rank statistics in torch, for comparing attribution maps (no scipy needed).

Two attribution methods agree in the sense that matters for interpretability when they *order*
tokens (or layer × position cells) the same way, whatever their units: a Jacobian norm, a patched
logit difference and a KL divergence are not on one scale. Spearman's ρ is the Pearson correlation
of the ranks, with tied values given the average of the ranks they span (the standard definition,
as in ``scipy.stats.spearmanr``).
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float


def average_ranks(values: Float[torch.Tensor, " n"]) -> Float[torch.Tensor, " n"]:
    """1-based ranks of ``values`` (smallest gets 1); tied values share the mean of their ranks."""
    if values.ndim != 1:
        raise ValueError(f"values must be a 1-D tensor; got shape {tuple(values.shape)}.")
    _, group, group_size = torch.unique(values, return_inverse=True, return_counts=True)
    last_rank = group_size.cumsum(0).double()
    first_rank = last_rank - group_size + 1
    return ((first_rank + last_rank) / 2)[group]


def spearman(a: Float[torch.Tensor, "..."], b: Float[torch.Tensor, "..."]) -> float:
    """Spearman rank correlation of two equally shaped tensors (flattened).

    NaN when either input is constant: a ranking with no order agrees with nothing.
    """
    if a.shape != b.shape:
        raise ValueError(f"spearman needs tensors of one shape; got {tuple(a.shape)} and {tuple(b.shape)}.")
    if a.numel() < 2:
        raise ValueError(f"spearman needs at least 2 values; got {a.numel()}.")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("spearman needs finite values; got NaN or infinity.")
    rank_a = average_ranks(a.detach().flatten().double().cpu())
    rank_b = average_ranks(b.detach().flatten().double().cpu())
    centred_a = rank_a - rank_a.mean()
    centred_b = rank_b - rank_b.mean()
    denominator = float(centred_a.norm() * centred_b.norm())
    if denominator == 0.0:
        return math.nan
    return float((centred_a * centred_b).sum()) / denominator

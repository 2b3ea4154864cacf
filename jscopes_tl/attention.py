"""Which attention heads look like the causal attribution? Scope matrix vs attention patterns.

A scope with ``position="all"`` scores every source token ``t`` for every prediction position
``p``: a causal ``[n_pos, n_pos]`` matrix laid out like an attention pattern (row = the position
predicting, column = the token attended to / attributed). Attention says where a head *reads*;
the scope says which inputs the prediction *depends on* through the whole network. Heads whose
pattern correlates with the scope matrix are candidates for carrying that dependence.

The comparison is over the causal lower triangle (diagonal included), the only entries either
can be non-zero on. By default each scope row is first divided by its sum, so that every
prediction position weighs in like an attention row (which sums to 1) rather than by its scale.
Pearson compares values; Spearman compares rankings and ignores monotone rescaling (e.g. Fisher's
squared units).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float

from jscopes_tl.adapter import ModelAdapter
from jscopes_tl.result import ScopeResult


@dataclass(frozen=True)
class HeadCorrelation:
    """Correlation of a scope matrix with each head's attention pattern, ``[n_layers, n_heads]``.

    Example:
        >>> from jscopes_tl.attention import attention_correlation
        >>> correlation = attention_correlation(model, fisher_scope(model, prompt, position="all"), layers=1)
        >>> correlation.pearson.shape, correlation.layers
        (torch.Size([1, 4]), [1])
    """

    pearson: Float[torch.Tensor, "n_layers n_heads"]
    spearman: Float[torch.Tensor, "n_layers n_heads"]
    layers: list[int]

    def most_similar(self, k: int = 5, method: str = "spearman") -> list[tuple[int, int, float]]:
        """The ``k`` heads most correlated with the scope, as (layer, head, correlation).

        Example:
            >>> from jscopes_tl.attention import attention_correlation
            >>> correlation = attention_correlation(model, fisher_scope(model, prompt, position="all"))
            >>> [(layer, head) for layer, head, _ in correlation.most_similar(2)]
            [(0, 2), (0, 3)]
        """
        if method not in ("pearson", "spearman"):
            raise ValueError(f"method must be 'pearson' or 'spearman'; got {method!r}.")
        table: torch.Tensor = getattr(self, method)
        flat = table.nan_to_num(nan=-2.0).flatten()
        order = flat.argsort(descending=True)[:k]
        n_heads = table.shape[1]
        return [(self.layers[int(i) // n_heads], int(i) % n_heads, float(table.flatten()[i])) for i in order]


def scope_matrix(
    result: ScopeResult, *, prompt: int | None = None, layer: int | None = None
) -> Float[torch.Tensor, "n_pos n_pos"]:
    """The ``[n_pos, n_pos]`` all-position scope matrix of one prompt of a ``position="all"`` result."""
    axes = result.axes
    positions = axes.expand_prediction(result.position)
    n_prompts = positions.shape[0]
    if prompt is None:
        if n_prompts > 1:
            raise ValueError(f"result holds {n_prompts} prompts; choose one with prompt=i.")
        prompt = 0
    length = int(result.lengths[prompt])
    if positions.shape[1] < length or positions[prompt, :length].tolist() != list(range(length)):
        raise ValueError(
            "a scope matrix needs a result computed with position='all' (every prediction position); "
            f"this result scored positions {positions[prompt].tolist()}."
        )
    layers = result.layers
    if layer is None:
        if len(layers) > 1:
            raise ValueError(f"result has layers {layers}; choose one with layer=...")
        layer = layers[0]
    if layer not in layers:
        raise ValueError(f"layer={layer!r} is not one of the result's layers {layers}.")
    scores = axes.expand_score(result.scores)[prompt, :length, layers.index(layer), :length]
    return scores.float()


def _causal_entries(matrix: Float[torch.Tensor, "... pos pos"]) -> Float[torch.Tensor, "... n_entries"]:
    n = matrix.shape[-1]
    rows, columns = torch.tril_indices(n, n)
    return matrix[..., rows, columns]


def _average_ranks(values: Float[torch.Tensor, "n_series n"]) -> Float[torch.Tensor, "n_series n"]:
    """Ranks 0..n-1 along the last axis, ties sharing their mean rank (as Spearman's ρ needs)."""
    ranks = torch.empty_like(values, dtype=torch.float64)
    for row in range(values.shape[0]):
        unique, inverse, counts = torch.unique(values[row], sorted=True, return_inverse=True, return_counts=True)
        last = counts.cumsum(0).double() - 1
        ranks[row] = (last - (counts.double() - 1) / 2)[inverse]
    return ranks


def _pearson(reference: Float[torch.Tensor, " n"], series: Float[torch.Tensor, "n_series n"]) -> Float[torch.Tensor, " n_series"]:
    reference = reference.double() - reference.double().mean()
    series = series.double() - series.double().mean(-1, keepdim=True)
    return (series @ reference) / (series.norm(dim=-1) * reference.norm())


def correlate_with_heads(
    matrix: Float[torch.Tensor, "pos pos"],
    patterns: Float[torch.Tensor, "n_layers n_heads pos pos"],
    *,
    layers: Sequence[int] | None = None,
    normalize_rows: bool = True,
) -> HeadCorrelation:
    """Pearson and Spearman correlation of ``matrix`` with every head over the causal triangle.

    ``normalize_rows`` divides each row of ``matrix`` by its causal sum first (see module docs).
    A head with a constant pattern on the triangle has an undefined (NaN) correlation.

    Example:
        >>> correlate_with_heads(scope_matrix(result), ModelAdapter(model).attention_patterns(result.tokens))
    """
    n = matrix.shape[-1]
    if matrix.shape != (n, n) or patterns.ndim != 4 or patterns.shape[-2:] != (n, n):
        raise ValueError(
            f"matrix must be [pos, pos] and patterns [n_layers, n_heads, pos, pos] with the same pos; "
            f"got matrix {tuple(matrix.shape)} and patterns {tuple(patterns.shape)}."
        )
    matrix = matrix.double().tril()
    if normalize_rows:
        sums = matrix.sum(-1, keepdim=True)
        matrix = torch.where(sums > 0, matrix / sums, matrix)
    n_layers, n_heads = patterns.shape[:2]
    reference = _causal_entries(matrix)
    heads = _causal_entries(patterns.double()).reshape(n_layers * n_heads, -1)
    pearson = _pearson(reference, heads)
    ranked = _average_ranks(torch.cat([reference[None], heads]))
    spearman = _pearson(ranked[0], ranked[1:])
    return HeadCorrelation(
        pearson=pearson.reshape(n_layers, n_heads).float(),
        spearman=spearman.reshape(n_layers, n_heads).float(),
        layers=list(range(n_layers)) if layers is None else list(layers),
    )


def attention_correlation(
    model: Any,
    result: ScopeResult,
    *,
    layers: int | Sequence[int] | None = None,
    prompt: int | None = None,
    normalize_rows: bool = True,
) -> HeadCorrelation:
    """Correlate a ``position="all"`` scope of ``model`` with its heads' attention patterns.

    ``layers``: one layer (→ ``[1, n_heads]``), a list, or None for every layer.

    Example:
        >>> from jscopes_tl.attention import attention_correlation
        >>> correlation = attention_correlation(model, fisher_scope(model, prompt, position="all"))
        >>> correlation.spearman.shape, correlation.layers                # [n_layers, n_heads]
        (torch.Size([2, 4]), [0, 1])
    """
    matrix = scope_matrix(result, prompt=prompt)
    adapter = ModelAdapter(model)
    chosen = list(range(adapter.n_layers)) if layers is None else ([layers] if isinstance(layers, int) else list(layers))
    bad = [layer for layer in chosen if not 0 <= layer < adapter.n_layers]
    if bad or not chosen:
        raise ValueError(f"layers must be attention layers in [0, {adapter.n_layers}); got {layers!r}.")
    tokens = result.tokens if result.tokens.ndim == 1 else result.tokens[prompt or 0]
    patterns = adapter.attention_patterns(tokens[: matrix.shape[0]])[chosen]
    return correlate_with_heads(matrix, patterns, layers=chosen, normalize_rows=normalize_rows)

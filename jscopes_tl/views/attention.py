"""The all-position scope matrix next to a layer's attention patterns (circuitsvis).

Left: the ``position="all"`` scope matrix as a causal heatmap (``AttentionPattern``), each row
divided by its sum so that it reads like an attention row. Right: the chosen layer's heads
(``AttentionHeads``), each named with its Spearman correlation to the scope matrix, and a table of
Pearson and Spearman correlations (:mod:`jscopes_tl.attention`).
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float

from jscopes_tl.adapter import ModelAdapter
from jscopes_tl.attention import HeadCorrelation, correlate_with_heads, scope_matrix
from jscopes_tl.result import ScopeResult
from jscopes_tl.views.html import Component, Page, check_type, text


def row_normalized(matrix: Float[torch.Tensor, "pos pos"]) -> Float[torch.Tensor, "pos pos"]:
    matrix = matrix.tril()
    sums = matrix.sum(-1, keepdim=True)
    return torch.where(sums > 0, matrix / sums, matrix)


def scope_matrix_component(matrix: Float[torch.Tensor, "pos pos"], str_tokens: list[str]) -> Component:
    """The (row-normalised) scope matrix as a causal heatmap."""
    normalized = row_normalized(matrix)
    peak = float(normalized.max()) or 1.0
    return Component(
        "AttentionPattern",
        {"tokens": str_tokens, "attention": normalized.tolist(), "minValue": 0.0, "maxValue": peak, "maskUpperTri": True},
    )


def correlation_table(correlation: HeadCorrelation) -> str:
    rows = []
    for layer_index, layer in enumerate(correlation.layers):
        for head in range(correlation.pearson.shape[1]):
            pearson = float(correlation.pearson[layer_index, head])
            spearman = float(correlation.spearman[layer_index, head])
            rows.append(f"<tr><td>L{layer}H{head}</td><td>{pearson:.3f}</td><td>{spearman:.3f}</td></tr>")
    return (
        "<table class='jscopes-table jscopes-correlation'><tr><th>head</th><th>Pearson</th><th>Spearman</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def attention_comparison_view(
    model: Any, result: ScopeResult, *, layer: int = 0, prompt: int | None = None, title: str | None = None
) -> Page:
    """A ``position="all"`` scope matrix beside the attention patterns of ``layer``.

    Example:
        >>> from jscopes_tl.views import attention_comparison_view
        >>> page = attention_comparison_view(model, fisher_scope(model, prompt, position="all"), layer=1)
        >>> page.title
        'Fisher Scope matrix vs attention, layer 1'
    """
    adapter = ModelAdapter(model)
    check_type(result, ScopeResult, "result", "a ScopeResult of position='all' (e.g. fisher_scope(model, text, position='all'))")
    if not isinstance(layer, int) or not 0 <= layer < adapter.n_layers:
        raise ValueError(f"layer must be an attention layer in [0, {adapter.n_layers}); got {layer!r}.")
    matrix = scope_matrix(result, prompt=prompt)
    length = matrix.shape[0]
    str_tokens = result.str_tokens_per_prompt[prompt or 0][:length]
    tokens = result.tokens if result.tokens.ndim == 1 else result.tokens[prompt or 0]
    patterns = adapter.attention_patterns(tokens[:length])[layer]
    correlation = correlate_with_heads(matrix, patterns[None], layers=[layer])
    # Short names: circuitsvis pins each name over its thumbnail's corner, and the thumbnails are
    # narrow; the correlations are in the table beside the matrix.
    head_names = [f"L{layer}H{head}" for head in range(patterns.shape[0])]
    scope_name = f"{result.kind.capitalize()} Scope"
    title = title or f"{scope_name} matrix vs attention, layer {layer}"
    return Page(
        title,
        [
            f"<h2>{text(title)}</h2><p class='jscopes-note'>Rows: prediction position; columns: source token. "
            f"The scope matrix is row-normalised; correlations are over the causal triangle.</p>"
            "<div class='jscopes-row'><div class='jscopes-matrix'>"
            f"<h3>{text(scope_name)} (row-normalised)</h3>",
            scope_matrix_component(matrix, str_tokens),
            "</div><div><h3>Correlation with each head</h3>" + correlation_table(correlation) + "</div></div>"
            f"<h3>Attention, layer {layer}</h3>",
            Component(
                "AttentionHeads",
                {"tokens": str_tokens, "attention": patterns.tolist(), "attentionHeadNames": head_names, "maskUpperTri": True},
            ),
        ],
    )

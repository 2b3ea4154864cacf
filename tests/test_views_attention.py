"""Attention patterns from the adapter, scope-matrix correlations and the comparison view."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from rendered import rendered_components

from jscopes_tl import fisher_scope, semantic_scope
from jscopes_tl.adapter import ModelAdapter
from jscopes_tl.attention import attention_correlation, correlate_with_heads, scope_matrix
from jscopes_tl.views import attention_comparison_view

PROMPT = "Tom loves Korean food."


def test_attention_patterns_are_causal_probability_rows_for_every_layer(model: Any) -> None:
    adapter = ModelAdapter(model)
    tokens = adapter.tokenize(PROMPT)
    patterns = adapter.attention_patterns(tokens)
    assert patterns.shape == (adapter.n_layers, model.cfg.n_heads, len(tokens), len(tokens))
    torch.testing.assert_close(patterns.sum(-1), torch.ones(patterns.shape[:-1]))
    assert torch.all(patterns.triu(1) == 0)


def test_attention_patterns_leave_no_hooks_and_keep_training_mode(any_model: Any) -> None:
    any_model.train()
    try:
        ModelAdapter(any_model).attention_patterns(torch.tensor([0, 5, 6]))
        assert any_model.training
    finally:
        any_model.eval()
    assert all(not getattr(hook_point, "fwd_hooks", []) for hook_point in any_model.hook_dict.values())


def _random_causal(n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, n, generator=generator).tril()


def test_a_head_equal_to_the_row_normalised_scope_correlates_perfectly() -> None:
    matrix = _random_causal(6, 0)
    rows = matrix / matrix.sum(-1, keepdim=True)
    patterns = torch.stack([rows, _random_causal(6, 1)])[None]
    correlation = correlate_with_heads(matrix * 3.0, patterns)
    assert correlation.pearson.shape == (1, 2)
    assert correlation.pearson[0, 0] == pytest.approx(1.0) and correlation.spearman[0, 0] == pytest.approx(1.0)
    assert correlation.pearson[0, 1] < 0.99


def test_spearman_ignores_a_monotone_transform_that_pearson_sees() -> None:
    matrix = _random_causal(7, 2) + torch.eye(7)
    patterns = matrix.pow(4)[None, None]
    correlation = correlate_with_heads(matrix, patterns, normalize_rows=False)
    assert correlation.spearman[0, 0] == pytest.approx(1.0)
    assert correlation.pearson[0, 0] < 0.99


def test_spearman_gives_tied_values_their_average_rank() -> None:
    matrix = torch.tensor([[1.0, 0.0], [2.0, 2.0]])
    patterns = torch.tensor([[1.0, 0.0], [3.0, 3.0]])[None, None]
    assert correlate_with_heads(matrix, patterns, normalize_rows=False).spearman[0, 0] == pytest.approx(1.0)


def test_mismatched_shapes_raise() -> None:
    with pytest.raises(ValueError, match="same pos"):
        correlate_with_heads(torch.ones(3, 3), torch.ones(1, 2, 4, 4))


def test_scope_matrix_needs_a_position_all_result(any_model: Any) -> None:
    with pytest.raises(ValueError, match="position='all'"):
        scope_matrix(semantic_scope(any_model, PROMPT, position=[0, 1]))


def test_attention_correlation_of_one_layer_has_shape_one_by_heads(any_model: Any) -> None:
    result = fisher_scope(any_model, PROMPT, position="all")
    correlation = attention_correlation(any_model, result, layers=1)
    assert correlation.pearson.shape == (1, any_model.cfg.n_heads) and correlation.layers == [1]
    assert torch.isfinite(correlation.spearman).all()


def test_most_similar_lists_heads_by_decreasing_correlation(any_model: Any) -> None:
    correlation = attention_correlation(any_model, fisher_scope(any_model, PROMPT, position="all"))
    ranked = correlation.most_similar(3)
    assert [value for *_, value in ranked] == sorted((value for *_, value in ranked), reverse=True)
    layer, head, value = ranked[0]
    assert value == pytest.approx(float(correlation.spearman[layer, head]))


def test_comparison_view_shows_the_scope_matrix_beside_the_layers_heads(any_model: Any) -> None:
    result = fisher_scope(any_model, PROMPT, position="all")
    html = attention_comparison_view(any_model, result, layer=1).to_html()
    components = rendered_components(html)
    assert [c.name for c in components] == ["AttentionPattern", "AttentionHeads"]
    heads = components[1].props
    assert len(heads["attention"]) == any_model.cfg.n_heads
    # short names fit the thumbnails' corners; the correlations are in the table
    assert heads["attentionHeadNames"] == [f"L1H{head}" for head in range(any_model.cfg.n_heads)]
    assert "<td>L1H0</td>" in html and "Spearman" in html and html.count("var CircuitsVis=") == 1

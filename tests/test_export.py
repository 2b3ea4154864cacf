"""Export: dict/JSON round trips, numpy and the tidy pandas table."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch

from jscopes_tl import ScopeResult, fisher_scope, semantic_scope

PROMPT = "Tom loves Korean food. He is a"


def assert_results_equal(a: ScopeResult, b: ScopeResult) -> None:
    for name in ("scores", "tokens", "lengths", "position", "target", "gradient_x_input", "gradients"):
        left, right = getattr(a, name), getattr(b, name)
        assert (left is None) == (right is None), name
        if left is not None:
            assert left.dtype == right.dtype and torch.equal(left, right), name
    assert a.kind == b.kind and a.str_tokens == b.str_tokens
    assert torch.equal(a.prediction.token_ids, b.prediction.token_ids)
    assert torch.equal(a.prediction.probabilities, b.prediction.probabilities)
    assert a.prediction.str_tokens == b.prediction.str_tokens


def test_json_round_trip_is_exact_including_metadata_tensors(any_model: Any) -> None:
    result = fisher_scope(any_model, PROMPT, rank=2)
    restored = ScopeResult.from_json(result.to_json())
    assert_results_equal(result, restored)
    assert torch.equal(restored.metadata["eigenvalues"], result.metadata["eigenvalues"])
    assert restored.metadata["numerics"] == result.metadata["numerics"]


def test_dict_round_trip_of_a_batch_with_contrast_targets_and_gradients(any_model: Any) -> None:
    result = semantic_scope(any_model, [PROMPT, "The cat sat"], target=(0, 1), position=[0, -1], return_gradients=True)
    restored = ScopeResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert_results_equal(result, restored)


def test_dict_holds_scores_as_plain_lists(any_model: Any) -> None:
    result = semantic_scope(any_model, PROMPT)
    assert result.to_dict()["scores"]["data"] == result.scores.tolist()


def test_from_dict_rejects_data_that_is_not_an_exported_result() -> None:
    with pytest.raises(ValueError, match="not an exported ScopeResult"):
        ScopeResult.from_dict({"scores": [1.0]})


def test_metadata_that_cannot_be_serialised_raises_naming_the_key(any_model: Any) -> None:
    result = semantic_scope(any_model, PROMPT)
    result.metadata["callback"] = object()
    with pytest.raises(TypeError, match=r"metadata\['callback'\]"):
        result.to_dict()


def test_to_numpy_returns_the_scores(any_model: Any) -> None:
    result = semantic_scope(any_model, PROMPT, position=[1, -1])
    array = result.to_numpy()
    assert isinstance(array, np.ndarray) and array.dtype == np.float32
    np.testing.assert_array_equal(array, result.scores.numpy())


def test_to_pandas_has_one_row_per_real_token_and_position(any_model: Any) -> None:
    result = semantic_scope(any_model, [PROMPT, "The cat sat"], position=[0, -1])
    table = result.to_pandas()
    assert len(table) == 2 * int(result.lengths.sum())
    assert list(table.columns[:7]) == ["kind", "prompt", "position", "layer", "token_index", "token", "score"]
    row = table[(table.prompt == 1) & (table.token_index == 2) & (table.position == int(result.position[1, 1]))]
    assert float(row.score.iloc[0]) == pytest.approx(float(result.scores[1, 1, 2]))
    assert row.token.iloc[0] == result.str_tokens[1][2]


def test_to_pandas_includes_gradient_x_input_when_available(any_model: Any) -> None:
    result = semantic_scope(any_model, PROMPT)
    table = result.to_pandas()
    np.testing.assert_allclose(table.gradient_x_input.to_numpy(), result.gradient_x_input.numpy())


def test_to_pandas_with_words_merges_tokens(any_model: Any) -> None:
    result = semantic_scope(any_model, PROMPT)
    table = result.to_pandas(words="sum")
    assert "".join(table.word) == "".join(result.str_tokens)
    assert table.score.sum() == pytest.approx(float(result.scores.sum()), rel=1e-5)
    assert {"word_index", "word", "first_token", "last_token"} <= set(table.columns)


def test_to_pandas_has_a_layer_column_for_layer_resolved_results(any_model: Any) -> None:
    result = semantic_scope(any_model, PROMPT, layer="all")
    table = result.to_pandas()
    assert sorted(table.layer.unique().tolist()) == result.metadata["layer"]

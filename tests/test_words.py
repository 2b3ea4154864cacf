"""Word-level aggregation of sub-word token scores."""

from __future__ import annotations

import pytest
import torch

from jscopes_tl.words import aggregate_words, word_spans

TOKENS = ["<|endoftext|>", "Tom", " lo", "ves", " Kor", "ean", " food", ".", " He"]


def test_a_token_starting_with_a_space_starts_a_new_word() -> None:
    assert word_spans(["The", " cat", "s", " sat"]) == [(0, 1), (1, 3), (3, 4)]


def test_a_token_after_punctuation_starts_a_new_word() -> None:
    assert word_spans(["51", ",", "53", ",", "55"]) == [(0, 2), (2, 4), (4, 5)]


def test_the_bos_token_stays_its_own_unit() -> None:
    assert word_spans(["<|endoftext|>", "Tom", "my"]) == [(0, 1), (1, 3)]


def test_explicit_special_tokens_override_the_default_pattern() -> None:
    assert word_spans(["[X]", "ab", "cd"], special_tokens={"[X]"}) == [(0, 1), (1, 3)]


def test_sentencepiece_space_marker_starts_a_new_word() -> None:
    assert word_spans(["▁Tom", "my", "▁sat"]) == [(0, 2), (2, 3)]


def test_sum_adds_the_scores_of_a_words_tokens() -> None:
    merged = aggregate_words(TOKENS, torch.arange(1.0, 10.0), "sum")
    assert merged.words == ["<|endoftext|>", "Tom", " loves", " Korean", " food.", " He"]
    assert merged.values.tolist() == [1.0, 2.0, 7.0, 11.0, 15.0, 9.0]


def test_max_keeps_the_strongest_token_with_its_sign() -> None:
    merged = aggregate_words(["a", "b", " c", "d"], torch.tensor([1.0, -3.0, 2.0, 0.5]), "max")
    assert merged.values.tolist() == [-3.0, 2.0]


def test_aggregation_applies_to_the_last_axis_of_a_batch_of_columns() -> None:
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert aggregate_words(["a", "b", " c"], values).values.tolist() == [[3.0, 3.0], [9.0, 6.0]]


def test_str_tokens_length_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="str_tokens has 2 tokens but values has 3"):
        aggregate_words(["a", "b"], torch.ones(3))


def test_unknown_reduction_raises() -> None:
    with pytest.raises(ValueError, match="reduction must be one of"):
        aggregate_words(["a"], torch.ones(1), "mean")  # type: ignore[arg-type]

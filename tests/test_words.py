"""Word-level aggregation of sub-word token scores, at the tokenizer's own word boundaries."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from jscopes_tl import models, semantic_scope
from jscopes_tl.toy import toy_tokenizer
from jscopes_tl.words import aggregate_words, tokenizer_word_starts, word_spans

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


# ------------------------------------------------------------------------------------ tokenizer boundaries
def _word_id_starts(word_ids: list[int | None]) -> list[bool]:
    """Word starts from a fast tokenizer's own pre-tokenizer words (the independent reference)."""
    return [index == 0 or word_ids[index] != word_ids[index - 1] for index in range(len(word_ids))]


def _sentencepiece_tokenizer() -> Any:
    """A SentencePiece-style BPE (``▁`` marks a word start; decoding one token drops it), offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["<s>", "<unk>"], show_progress=False)
    tokenizer.train_from_iterator(["the cat sat on the mat and the dog sat on the log"] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", unk_token="<unk>")


def test_word_level_tokenizer_marks_every_token_as_a_word() -> None:
    tokenizer = models.load("recall").tokenizer
    encoding = tokenizer("a=3 b=7 c=1 b=")
    ids = encoding["input_ids"]
    starts = tokenizer_word_starts(tokenizer, ids, [tokenizer.decode([token_id]) for token_id in ids])
    assert starts == _word_id_starts(encoding.word_ids())
    assert starts == [True] * len(ids)


def test_words_sum_keeps_a_word_level_prompt_in_words() -> None:
    model = models.load("recall")
    result = semantic_scope(model, "a=3 b=7 c=1 b=")
    merged = aggregate_words(result.str_tokens, result.scores, "sum", word_starts=result.metadata["word_starts"])
    assert merged.words == ["<bos>", "a=3", "b=7", "c=1", "b="]
    assert merged.values.tolist() == result.scores.tolist()
    assert word_spans(result.str_tokens) == [(0, 1), (1, 5)]  # what the token strings alone would give


def test_sentencepiece_word_starts_match_the_tokenizers_own_words() -> None:
    tokenizer = _sentencepiece_tokenizer()
    encoding = tokenizer("the cattle sat on a dogmat")
    ids = encoding["input_ids"]
    str_tokens = [tokenizer.decode([token_id]) for token_id in ids]  # what to_str_tokens gives: no "▁"
    assert "".join(str_tokens) != tokenizer.decode(ids)
    starts = tokenizer_word_starts(tokenizer, ids, str_tokens)
    assert starts == _word_id_starts(encoding.word_ids())
    merged = aggregate_words(str_tokens, torch.ones(len(ids)), "sum", word_starts=starts)
    assert merged.words == ["the", "cattle", "sat", "on", "a", "dogmat"]


def test_byte_level_bpe_tokens_carry_their_own_spaces() -> None:
    tokenizer = toy_tokenizer()
    ids = tokenizer("Tom loves Korean food.")["input_ids"]
    str_tokens = [tokenizer.decode([token_id]) for token_id in ids]
    assert tokenizer_word_starts(tokenizer, ids, str_tokens) == [True] + [False] * (len(ids) - 1)
    words = [str_tokens[start] if stop - start == 1 else "".join(str_tokens[start:stop]) for start, stop in word_spans(str_tokens)]
    assert words == ["Tom", " loves", " Korean", " food."]


def test_a_token_that_is_only_a_space_joins_the_next_word() -> None:
    assert word_spans(["He", " ", "K", "ore", "an", "."]) == [(0, 1), (1, 6)]


def test_word_starts_of_the_wrong_length_raise() -> None:
    with pytest.raises(ValueError, match="word_starts has 2 entries"):
        word_spans(["a", "b", "c"], word_starts=[True, False])

"""Component-level ground truth on the bundled induction model: heads identified by
TransformerLens's attention-pattern detectors, and where the component scope and head-level
activation patching put log p(answer)'s sensitivity — the figures docs/guide/components.md reports."""

from __future__ import annotations

import pytest
import torch

from jscopes_tl import models
from jscopes_tl.adapter import ModelAdapter
from jscopes_tl.components import head_pattern_scores, repeated_random_tokens
from jscopes_tl.models.circuits import corrupt, induction_circuit_check, induction_prompts


@pytest.fixture(scope="module")
def induction_model():
    return models.load("induction")


@pytest.fixture(scope="module")
def check(induction_model):
    return induction_circuit_check(induction_model, n_prompts=4, max_tokens=12, backend="hooks")


def test_pattern_scores_equal_transformer_lens_head_detector(induction_model):
    from transformer_lens.head_detector import detect_head

    adapter = ModelAdapter(induction_model)
    seq_len = 6
    tokens = repeated_random_tokens(adapter, seq_len, 1, seed=5)[0]  # [BOS] r r
    text = " ".join(adapter.str_tokens(tokens)[1:])  # the word-level tokenizer adds BOS back
    assert torch.equal(adapter.tokenize(text), tokens)
    ours = head_pattern_scores(induction_model, seq_len=seq_len, n_sequences=1, seed=5)
    # detect_head divides the attention on the pattern by every query row; ours by the rows that have one.
    rows = len(tokens)
    previous = detect_head(induction_model, text, "previous_token_head")
    induction = detect_head(induction_model, text, "induction_head")
    torch.testing.assert_close(ours.previous_token * (rows - 1) / rows, previous.float(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.induction * seq_len / rows, induction.float(), rtol=1e-4, atol=1e-5)


def test_no_head_passes_the_usual_previous_token_or_induction_threshold(check):
    scores = check.pattern_scores
    assert float(scores.previous_token.max()) < 0.4 and float(scores.induction.max()) < 0.4
    assert scores.previous_token_head[0] == 1  # the best previous-token score is a layer-1 head
    assert scores.induction_head[0] == 0  # the best induction score is a layer-0 head: by position, not by content
    assert float(scores.induction[1].max()) < 0.05


def test_corruptions_replace_the_answer_or_the_current_tokens_earlier_occurrence(induction_model):
    adapter = ModelAdapter(induction_model)
    prompt = induction_prompts(1, max_tokens=12)[0]
    tokens = adapter.tokenize(prompt.text)
    source = prompt.source_indices[0]
    for corruption, index in (("answer", source), ("previous_occurrence", source - 1)):
        corrupted = corrupt(adapter, tokens, prompt, corruption)
        assert (corrupted != tokens).nonzero().flatten().tolist() == [index]
        assert int(corrupted[index]) not in tokens.tolist()
    assert int(tokens[source - 1]) == int(tokens[-1])  # the earlier occurrence of the current token


def test_scope_and_patching_agree_on_the_head_when_the_answer_is_corrupted(check):
    rows = [row for row in check.checks if row.corruption == "answer"]
    assert len(rows) == 4
    assert all(row.heads_agree for row in rows)
    assert {row.scope_top_cell[:2] for row in rows} == {row.patching_top_cell[:2] for row in rows} == {(0, 3)}
    assert sum(row.cells_agree for row in rows) >= 3  # the same token too, on all but one prompt
    assert check.summary()["answer"]["top_cell_agreement"] == sum(row.cells_agree for row in rows) / 4
    # That head, at that token, reads the answer; the next layer reads that token from the prediction position.
    assert all(row.scope_cell_attention_to_source > 0.9 for row in rows)
    assert all(row.prediction_attention_to_scope_cell > 0.4 for row in rows)


def test_scope_and_patching_name_different_heads_when_the_earlier_occurrence_is_corrupted(check):
    rows = [row for row in check.checks if row.corruption == "previous_occurrence"]
    assert {row.scope_top_cell[:2] for row in rows} == {(0, 3)}  # the scope does not depend on the corruption
    assert all(row.patching_top_cell[:2] != (0, 3) for row in rows)
    match_key = [row for row in rows if row.patching_top_cell[:2] == (0, 2)]
    assert len(match_key) >= 3
    # L0H2 at that token reads the current token's earlier occurrence (what an induction match needs),
    # and the scope ranks that cell below its top few.
    assert all(row.patching_cell_attention_to_previous_occurrence > 0.9 for row in match_key)
    assert all(row.scope_rank_of_patching_cell > 3 for row in match_key)
    assert check.summary()["previous_occurrence"]["top_cell_head_agreement"] == 0.0

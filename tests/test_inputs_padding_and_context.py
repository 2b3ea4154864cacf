"""What a scope is given is what it explains: padding masks honoured, nothing cut at n_ctx,
unknown-token targets refused, empty-looking prompts flagged, repeated positions computed once."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from jscopes_tl import (
    ScopeInputError,
    evaluate_faithfulness,
    fisher_scope,
    layer_resolved_scope,
    models,
    semantic_scope,
    temperature_scope,
)
from jscopes_tl.adapter import ModelAdapter

PROMPTS = ["Tom loves Korean food. He is a", "The cat sat", "German: Dies ist"]


def left_padded(model, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """TransformerLens's own left padding, and the mask that marks each prompt's real tokens."""
    tokens = model.to_tokens(prompts, padding_side="left")
    lengths = [len(model.to_tokens(prompt)[0]) for prompt in prompts]
    mask = torch.zeros_like(tokens)
    for row, length in enumerate(lengths):
        mask[row, tokens.shape[1] - length :] = 1
    return tokens, mask, lengths


def assert_each_prompt_scored_alone(model, scope):
    tokens, mask, lengths = left_padded(model, PROMPTS)
    batched = scope(model, tokens, attention_mask=mask)
    width = tokens.shape[1]
    for row, (prompt, length) in enumerate(zip(PROMPTS, lengths)):
        alone = scope(model, prompt)
        torch.testing.assert_close(batched.scores[row, :length], alone.scores, rtol=1e-4, atol=1e-6 * float(alone.scores.max()))
        assert torch.all(batched.scores[row, length:] == 0)
        assert int(batched.position[row]) == length - 1
        assert batched.str_tokens[row] == alone.str_tokens
        assert batched.metadata["input_columns"][row] == list(range(width - length, width))
        assert batched.prediction.token_ids[row].tolist() == alone.prediction.token_ids.tolist()


def _fisher(*args, **options):
    return fisher_scope(*args, rank=2, **options)


def test_left_padded_tensor_with_attention_mask_gives_each_prompt_its_own_scores(model):
    assert_each_prompt_scored_alone(model, semantic_scope)


def test_left_padded_fisher_scope_too(any_model):
    assert_each_prompt_scored_alone(any_model, _fisher)


def test_masked_scores_match_the_models_own_masked_forward_pass(model):
    """An independent path: TransformerLens's own attention masking and position ids on the
    left-padded tensor, differentiated by brute force with respect to the residual stream it
    builds: ‖∂logit_target/∂x_t‖ at every column, which the packed scores must equal once put back
    in the user's columns; and the prediction is the masked forward pass's."""
    tokens, mask, _ = left_padded(model, PROMPTS)
    target = 5
    result = semantic_scope(model, tokens, attention_mask=mask, target=target, top_k=3)
    stream: dict[str, torch.Tensor] = {}

    def make_the_stream_a_leaf(activation: torch.Tensor, hook) -> torch.Tensor:
        stream["x"] = activation.detach().requires_grad_(True)
        return stream["x"]

    with torch.enable_grad(), model.hooks(fwd_hooks=[(ModelAdapter(model).resid_pre_hook(0), make_the_stream_a_leaf)]):
        logits = model(tokens, attention_mask=mask)[:, -1].float()
        (gradient,) = torch.autograd.grad(logits[:, target].sum(), stream["x"])
    expected = gradient.float().norm(dim=-1) * mask  # [batch, pos] in the user's columns
    for row, columns in enumerate(result.metadata["input_columns"]):
        scores = torch.zeros(tokens.shape[1])
        scores[columns] = result.scores[row, : len(columns)]
        torch.testing.assert_close(scores, expected[row], rtol=1e-4, atol=1e-6 * float(expected.max()))
    top = torch.softmax(logits.detach(), dim=-1).topk(3, dim=-1)
    assert result.prediction.token_ids.tolist() == top.indices.tolist()
    torch.testing.assert_close(result.prediction.probabilities, top.values, rtol=1e-4, atol=1e-6)


def test_attention_mask_drops_masked_tokens_anywhere_in_a_row(any_model):
    tokens = any_model.to_tokens(PROMPTS[0])[0]
    keep = torch.ones_like(tokens)
    keep[[3, 4]] = 0
    masked = semantic_scope(any_model, tokens, attention_mask=keep)
    alone = semantic_scope(any_model, tokens[keep.bool()])
    torch.testing.assert_close(masked.scores, alone.scores, rtol=1e-5, atol=1e-7)
    assert masked.metadata["input_columns"] == [i for i in range(len(tokens)) if i not in (3, 4)]


def test_a_tokenizer_that_pads_on_the_left_does_not_mask_real_tokens(model):
    """HookedTransformer masks leading pad-id tokens itself when its tokenizer pads on the left;
    every token a scope is given is real, BOS-as-pad ones included."""
    tokens = torch.tensor([0, 0, 52, 258, 275])  # two BOS tokens, as the paper's reference code uses
    expected = semantic_scope(model, tokens).scores
    side = model.tokenizer.padding_side
    try:
        model.tokenizer.padding_side = "left"
        torch.testing.assert_close(semantic_scope(model, tokens).scores, expected, rtol=1e-5, atol=1e-7)
    finally:
        model.tokenizer.padding_side = side


def test_left_padded_tensor_without_mask_warns_that_padding_is_scored(any_model):
    tokens, _, _ = left_padded(any_model, PROMPTS)
    with pytest.warns(UserWarning, match="left-padded.*attention_mask") as record:
        semantic_scope(any_model, tokens)
    assert record[0].filename == __file__  # attributed to the user's line, not to jscopes_tl


def test_right_padded_tensor_without_mask_warns(any_model):
    tokens = any_model.to_tokens(PROMPTS)  # TransformerLens pads on the right by default
    with pytest.warns(UserWarning, match="right-padded"):
        semantic_scope(any_model, tokens)


def test_mask_of_ones_says_no_padding_and_changes_nothing(any_model):
    tokens = any_model.to_tokens(PROMPTS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        masked = semantic_scope(any_model, tokens, attention_mask=torch.ones_like(tokens))
    with pytest.warns(UserWarning):
        unmasked = semantic_scope(any_model, tokens)
    assert torch.equal(masked.scores, unmasked.scores)


def test_prompt_longer_than_the_context_is_an_error_not_a_cut():
    model = models.load("recall")  # n_ctx = 128
    long_prompt = "a=3 " * 200
    with pytest.raises(ScopeInputError, match=r"inputs has 201 tokens.*n_ctx=128"):
        semantic_scope(model, long_prompt)
    with pytest.raises(ScopeInputError, match=r"inputs\[1\] has 201 tokens"):
        temperature_scope(model, ["a=3 b=", long_prompt])
    with pytest.raises(ScopeInputError, match="n_ctx=128"):
        semantic_scope(model, torch.ones(129, dtype=torch.long))


def test_padded_tensor_wider_than_the_context_is_fine_when_its_real_tokens_fit():
    model = models.load("recall")
    real = model.to_tokens("a=3 b=7 c=1 b=")[0]
    tokens = torch.cat([torch.zeros(130, dtype=torch.long), real])[None]
    mask = torch.cat([torch.zeros(130, dtype=torch.long), torch.ones_like(real)])[None]
    result = semantic_scope(model, tokens, attention_mask=mask)
    torch.testing.assert_close(result.scores[0], semantic_scope(model, real).scores, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("target", ["zzz", " liberal", ("7", "zzz")])
def test_target_the_tokenizer_maps_to_the_unknown_token_is_refused(target):
    model = models.load("recall")
    with pytest.raises(ScopeInputError, match="not in the tokenizer's vocabulary.*<unk>"):
        semantic_scope(model, "a=3 b=7 c=1 b=", target=target)


@pytest.mark.parametrize("prompt, message", [("   ", "whitespace only"), ("zzz qqq", "knows none of its words")])
def test_prompt_with_no_content_warns(prompt, message):
    model = models.load("recall")
    with pytest.warns(UserWarning, match=message):
        semantic_scope(model, prompt)
    with pytest.warns(UserWarning, match=rf"inputs\[1\].*{message}"):
        semantic_scope(model, ["a=3 b=", prompt])


def test_ordinary_prompt_gives_no_warning():
    model = models.load("recall")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        semantic_scope(model, "a=3 b=7 c=1 b=")


def test_repeated_positions_are_computed_once(any_model):
    forward_passes = []
    handle = any_model.register_forward_pre_hook(lambda module, args: forward_passes.append(1))
    try:
        result = semantic_scope(any_model, PROMPTS[0], position=[0] * 200_000)
        repeated = len(forward_passes)
        forward_passes.clear()
        once = semantic_scope(any_model, PROMPTS[0], position=0)
    finally:
        handle.remove()
    assert repeated == len(forward_passes) == 1
    assert result.scores.shape == (200_000, len(once.scores))
    assert torch.equal(result.scores[-1], once.scores) and torch.equal(result.scores[0], once.scores)
    assert result.prediction.str_tokens[-1] == once.prediction.str_tokens


def test_repeats_among_other_positions_keep_the_requested_order(any_model):
    result = fisher_scope(any_model, PROMPTS[:2], position=[-1, 1, -1, 2], rank=2)
    distinct = fisher_scope(any_model, PROMPTS[:2], position=[-1, 1, 2], rank=2)
    assert torch.equal(result.scores[:, [0, 1, 3]], distinct.scores)
    assert torch.equal(result.scores[:, 2], distinct.scores[:, 0])
    assert torch.equal(result.position[:, [0, 1, 3]], distinct.position)
    assert torch.equal(result.metadata["eigenvalues"][:, 2], distinct.metadata["eigenvalues"][:, 0])
    assert result.prediction.str_tokens[1][2] == distinct.prediction.str_tokens[1][0]


@pytest.mark.parametrize(
    "position, expected",
    [(np.int64(2), 2), (torch.tensor(2), 2), ([np.int64(-1), np.int32(1)], [-1, 1]), (np.array([0, 2]), [0, 2])],
    ids=["numpy int", "0-d tensor", "list of numpy ints", "numpy array"],
)
def test_numpy_and_tensor_integer_positions_are_accepted(any_model, position, expected):
    result = semantic_scope(any_model, PROMPTS[0], position=position)
    assert torch.equal(result.scores, semantic_scope(any_model, PROMPTS[0], position=expected).scores)


def test_faithfulness_and_layer_resolved_scopes_honour_the_mask_too(any_model):
    tokens, mask, lengths = left_padded(any_model, PROMPTS[:2])
    scorers = {"first": lambda model, context, gold: torch.arange(len(context), 0, -1).float()}
    masked = evaluate_faithfulness(any_model, tokens, scorers, attention_mask=mask, progress=False)
    alone = evaluate_faithfulness(any_model, [any_model.to_tokens(p)[0] for p in PROMPTS[:2]], scorers, progress=False)
    assert masked.rows == alone.rows
    with pytest.warns(UserWarning, match="left-padded"):
        evaluate_faithfulness(any_model, tokens, scorers, progress=False)
    resolved = layer_resolved_scope(any_model, tokens[1], attention_mask=mask[1])
    expected = layer_resolved_scope(any_model, PROMPTS[1])
    torch.testing.assert_close(resolved.scores, expected.scores, rtol=1e-5, atol=1e-7)

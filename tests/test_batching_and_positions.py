"""Batches, positions and shapes: a batch is the same as its prompts alone, "all" is the same as
a loop over positions, and causality makes every score after the prediction position zero."""

from __future__ import annotations

import pytest
import torch

from jscopes_tl import fisher_scope, jacobian_scope, semantic_scope, temperature_scope
from jscopes_tl.adapter import ModelAdapter
from jscopes_tl.readouts import Readout

PROMPTS = ["Tom loves Korean food. He is a", "The cat sat", "German: Dies ist ein Aufsatz."]
SCOPES = {
    "semantic": lambda model, inputs, **kw: semantic_scope(model, inputs, **kw),
    "contrast": lambda model, inputs, **kw: semantic_scope(model, inputs, target=(3, 9), **kw),
    "temperature": lambda model, inputs, **kw: temperature_scope(model, inputs, **kw),
    "fisher": lambda model, inputs, **kw: fisher_scope(model, inputs, rank=2, tail_tolerance=0.0, **kw),
}


@pytest.fixture(params=list(SCOPES))
def scope(request):
    return SCOPES[request.param]


def test_padded_batch_equals_each_prompt_alone(model_with_final_norm_gain, scope):
    model = model_with_final_norm_gain
    batched = scope(model, PROMPTS)
    assert batched.scores.shape == (len(PROMPTS), int(batched.lengths.max()))
    for row, prompt in enumerate(PROMPTS):
        alone = scope(model, prompt)
        length = len(alone.scores)
        assert int(batched.lengths[row]) == length
        torch.testing.assert_close(batched.scores[row, :length], alone.scores, rtol=1e-4, atol=1e-6 * float(alone.scores.max()))
        assert torch.all(batched.scores[row, length:] == 0)
        assert int(batched.position[row]) == int(alone.position) == length - 1
        assert batched.prediction.token_ids[row].tolist() == alone.prediction.token_ids.tolist()


def test_position_all_equals_loop_over_positions(model_with_final_norm_gain, scope):
    model = model_with_final_norm_gain
    prompt = PROMPTS[0]
    matrix = scope(model, prompt, position="all")
    n = matrix.scores.shape[-1]
    assert matrix.scores.shape == (n, n)
    for position in range(n):
        row = scope(model, prompt, position=position).scores
        torch.testing.assert_close(matrix.scores[position], row, rtol=1e-4, atol=1e-6 * float(row.max()))


def test_scores_after_the_prediction_position_are_exactly_zero(model, scope):
    matrix = scope(model, PROMPTS[0], position="all").scores
    n = matrix.shape[-1]
    strictly_after = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    assert torch.all(matrix[strictly_after] == 0)
    assert torch.all(matrix.diagonal() > 0)


def test_batch_with_position_all_pads_rows_and_columns_with_zeros(model_with_final_norm_gain):
    result = semantic_scope(model_with_final_norm_gain, PROMPTS, position="all")
    width = int(result.lengths.max())
    assert result.scores.shape == (len(PROMPTS), width, width)
    short = int(result.lengths[1])
    assert torch.all(result.scores[1, short:] == 0)
    assert torch.all(result.scores[1, :, short:] == 0)
    alone = semantic_scope(model_with_final_norm_gain, PROMPTS[1], position="all").scores
    torch.testing.assert_close(result.scores[1, :short, :short], alone, rtol=1e-4, atol=1e-7)


def test_list_of_positions_counts_from_each_prompts_own_end(any_model):
    result = semantic_scope(any_model, PROMPTS, position=[-1, 1])
    lengths = result.lengths
    assert result.scores.shape == (len(PROMPTS), 2, int(lengths.max()))
    assert result.position[:, 0].tolist() == (lengths - 1).tolist()
    assert result.position[:, 1].tolist() == [1] * len(PROMPTS)
    single = semantic_scope(any_model, PROMPTS[0], position=[-1, 1])
    assert single.scores.shape == (2, int(lengths[0]))


def test_token_tensor_is_used_exactly_as_given(any_model):
    adapter = ModelAdapter(any_model)
    tokens = adapter.tokenize_fragment("The cat sat")  # no BOS
    result = semantic_scope(any_model, tokens)
    assert result.tokens.tolist() == tokens.tolist()
    assert result.scores.shape == tokens.shape
    batch = semantic_scope(any_model, torch.stack([tokens, tokens.flip(0)]))
    assert batch.scores.shape == (2, len(tokens))
    torch.testing.assert_close(batch.scores[0], result.scores, rtol=1e-4, atol=1e-7)


def test_string_prompt_gets_the_models_bos(any_model):
    result = semantic_scope(any_model, "The cat sat")
    assert result.tokens[0] == any_model.tokenizer.bos_token_id
    assert result.str_tokens[0] == any_model.tokenizer.bos_token
    assert len(result.str_tokens) == len(result.tokens)


def test_prediction_reports_top_k_probabilities(any_model):
    result = semantic_scope(any_model, PROMPTS[0], top_k=3)
    logits = any_model(result.tokens[None])[0, -1].detach()
    probabilities, ids = torch.softmax(logits, -1).topk(3)
    assert result.prediction.token_ids.tolist() == ids.tolist()
    torch.testing.assert_close(result.prediction.probabilities, probabilities, rtol=1e-4, atol=1e-6)
    assert len(result.prediction.str_tokens) == 3


def count_forward_passes(model):
    calls = []
    handle = model.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls, handle


def test_small_memory_budget_chunks_without_changing_scores(any_model):
    reference = fisher_scope(any_model, PROMPTS, rank=4, position="all", tail_tolerance=0.0)
    chunked = fisher_scope(any_model, PROMPTS, rank=4, position="all", tail_tolerance=0.0, memory_budget_mb=0.01)
    torch.testing.assert_close(chunked.scores, reference.scores, rtol=1e-4, atol=1e-7)
    for key in ("eigenvalues", "fisher_trace", "kept_vocabulary_rows"):
        torch.testing.assert_close(chunked.metadata[key], reference.metadata[key], rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("scope_name", ["semantic", "fisher"])
def test_prompts_are_chunked_by_the_memory_budget_with_identical_results(any_model, scope_name):
    """A batch bigger than the budget goes through in several forward passes, one prompt each
    at a tiny budget, and every output (scores, signed scores, gradients, predictions) is the
    same as from one pass."""
    scope = SCOPES[scope_name]
    options = dict(return_gradients=True) if scope_name == "semantic" else {}
    calls, handle = count_forward_passes(any_model)
    try:
        whole = scope(any_model, PROMPTS, memory_budget_mb=1e4, **options)
        passes_whole = len(calls)
        chunked = scope(any_model, PROMPTS, memory_budget_mb=1e-3, **options)
        passes_chunked = len(calls) - passes_whole
    finally:
        handle.remove()
    assert passes_whole == 1 and passes_chunked == len(PROMPTS)

    def close(actual, expected):  # batch size changes only the float32 rounding of the matmuls
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))

    close(chunked.scores, whole.scores)
    assert chunked.prediction.token_ids.tolist() == whole.prediction.token_ids.tolist()
    if scope_name == "semantic":
        close(chunked.gradient_x_input, whole.gradient_x_input)
        close(chunked.gradients, whole.gradients)
        assert chunked.target.tolist() == whole.target.tolist()
    else:
        torch.testing.assert_close(chunked.metadata["eigenvalues"], whole.metadata["eigenvalues"])


def test_fisher_reports_its_approximation(any_model):
    result = fisher_scope(any_model, PROMPTS[0], rank=2)
    metadata = result.metadata
    assert metadata["rank"] == 2 and metadata["exact"] is False
    assert metadata["eigenvalues"].shape == (2,)
    assert 0 < float(metadata["captured_trace_fraction"]) <= 1
    assert 0 <= float(metadata["dropped_trace_fraction"]) <= metadata["tail_tolerance"]
    assert float(metadata["dropped_trace_bound"]) >= 0


def test_layer_all_stacks_every_layer_and_equals_one_layer_at_a_time(model):
    n_layers = ModelAdapter(model).n_layers
    stacked = semantic_scope(model, PROMPTS[:2], target=5, position=[-1, -2], layer="all")
    width = int(stacked.lengths.max())
    assert stacked.scores.shape == (2, 2, n_layers + 1, width)
    assert stacked.metadata["layer"] == list(range(n_layers + 1))
    for layer in range(n_layers + 1):
        alone = semantic_scope(model, PROMPTS[:2], target=5, position=[-1, -2], layer=layer).scores
        torch.testing.assert_close(stacked.scores[:, :, layer], alone, rtol=1e-4, atol=1e-6 * float(alone.max()))


def test_layer_list_keeps_the_order_given(any_model):
    result = fisher_scope(any_model, PROMPTS[0], rank=2, layer=[1, 0])
    assert result.scores.shape[0] == 2
    torch.testing.assert_close(result.scores[1], fisher_scope(any_model, PROMPTS[0], rank=2, layer=0).scores)


@pytest.mark.parametrize("scope_name", ["semantic", "fisher"])
def test_batched_backward_passes_equal_one_vector_at_a_time(model, scope_name, monkeypatch):
    """backward_batch > 1 (the accelerator path, is_grads_batched) and the CPU default of one
    vector per backward pass give the same scores, signed scores and gradients."""
    scope = SCOPES[scope_name]
    options = dict(position="all", layer=[0, 1])
    if scope_name == "semantic":
        options["return_gradients"] = True
    batched_calls = []
    grad = torch.autograd.grad

    def counting_grad(*args, **kwargs):
        batched_calls.append(kwargs.get("is_grads_batched", False))
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    one = scope(model, PROMPTS[:2], **options)
    assert not any(batched_calls)  # CPU default: one vector per backward pass
    batched = scope(model, PROMPTS[:2], backward_batch=7, **options)
    assert any(batched_calls)

    def close(actual, expected):
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))

    close(batched.scores, one.scores)
    if scope_name == "semantic":
        close(batched.gradient_x_input, one.gradient_x_input)
        close(batched.gradients, one.gradients)


def test_position_groups_share_forward_passes(any_model):
    """position="all" on a long prompt runs a few forward passes (groups of positions on their
    prefixes), not one per position, and gives the loop's scores."""
    prompt = torch.arange(1, 41) % ModelAdapter(any_model).d_vocab
    calls, handle = count_forward_passes(any_model)
    try:
        result = semantic_scope(any_model, prompt, position="all")
    finally:
        handle.remove()
    assert 1 < len(calls) < 10
    for p in (0, 13, 39):
        alone = semantic_scope(any_model, prompt, position=p)
        torch.testing.assert_close(result.scores[p], alone.scores, rtol=1e-4, atol=1e-6 * float(alone.scores.max()))


def test_list_metadata_of_every_position_group_and_prompt_chunk_is_kept(any_model):
    """Readout metadata lists (e.g. which Fisher eigen-solvers ran) are the union over all
    position groups and prompt chunks, not the last group's."""
    calls = []

    def readout(y, logits):
        calls.append(len(calls))
        unit = y / y.norm(dim=-1, keepdim=True)
        return Readout(unit[:, None, :], torch.ones(y.shape[0], 1), squared=False, metadata={"call": [calls[-1]]})

    prompt = torch.arange(1, 41) % ModelAdapter(any_model).d_vocab
    result = jacobian_scope(
        any_model, torch.stack([prompt, prompt]), readout, kind="custom", position="all", memory_budget_mb=1e-3
    )
    assert len(calls) > 2  # several groups in each of two prompt chunks
    assert result.metadata["call"] == list(range(len(calls)))


@pytest.mark.parametrize("position", [-1, 0, [-1, 1], [2, -1, 2], "all"])
def test_positions_record_the_prefix_each_column_needs(any_model, position):
    """The prefix a column's forward pass runs on (Python ints, read without tensor operations) is
    1 + the largest valid position in it, 0 for a column no prompt has; also for a chunk of prompts."""
    from jscopes_tl.inputs import prepare_tokens, resolve_positions

    batch = prepare_tokens(ModelAdapter(any_model), PROMPTS, None)
    positions = resolve_positions(position, batch)

    def independent(index: torch.Tensor, valid: torch.Tensor) -> list[int]:
        return [max([int(i) + 1 for i, v in zip(column, ok) if v], default=0) for column, ok in zip(index.T, valid.T)]

    assert positions.prefix == independent(positions.index, positions.valid)
    for rows in (slice(0, 1), slice(1, 3)):
        chunk = positions.rows(rows)
        assert chunk.prefix == independent(positions.index[rows], positions.valid[rows])
    if position == "all":  # the longest prompt's width: every column is someone's
        assert positions.prefix == list(range(1, batch.tokens.shape[1] + 1))

"""Every scope equals the same quantity computed from the full Jacobian J_t = ∂y/∂x_t
(torch.autograd.functional.jacobian), the unembedding read off model.W_U and the probabilities
of a plain forward pass — on every model family the installed TransformerLens has."""

from __future__ import annotations

import pytest
import torch

from jscopes_tl import fisher_scope, semantic_scope, temperature_scope
from jscopes_tl.adapter import ModelAdapter

from conftest import PROMPT, brute_force_jacobians, final_hidden_of_input, residual_input

RTOL = 1e-4


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    expected = expected.float()
    scale = expected.abs().max()
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max() <= RTOL * scale, (actual, expected)


def effective_unembedding(model, y):
    """∂logits/∂y as a [d_model, d_vocab] matrix: W_U, with each column scaled by the slope of
    the logit soft-cap ``cap · tanh(z / cap)`` where the model has one."""
    W_U = model.W_U.detach().double()
    cap = getattr(model.cfg, "output_logits_soft_cap", None) or 0
    if cap <= 0:
        return W_U
    pre = y @ W_U + model.b_U.detach().double()
    return W_U * (1 - torch.tanh(pre / cap) ** 2)[None, :]


def setup(model, position=-1, layer=0):
    adapter = ModelAdapter(model)
    tokens = adapter.tokenize(PROMPT)
    absolute = position % len(tokens)
    jacobians, y = brute_force_jacobians(model, tokens, absolute, layer)
    logits = model(tokens[None])[0, absolute].detach().double()
    return tokens, absolute, jacobians, y, logits, effective_unembedding(model, y)


def brute_fisher(W_U, logits):
    p = torch.softmax(logits, -1)
    return W_U @ (torch.diag(p) - torch.outer(p, p)) @ W_U.T


def test_semantic_top1_equals_brute_force_norm(model):
    tokens, position, J, y, logits, W_U = setup(model)
    w = W_U[:, logits.argmax()]
    expected = torch.einsum("d,tde->te", w, J).norm(dim=-1)
    result = semantic_scope(model, PROMPT)
    assert int(result.target) == int(logits.argmax())
    assert_close(result.scores, expected)


def test_semantic_token_string_equals_brute_force_norm_of_its_unembedding_column(model):
    tokens, position, J, y, logits, W_U = setup(model, position=-2)
    target_id = model.tokenizer.convert_tokens_to_ids("Ġfo")  # the one token " fo"
    expected = torch.einsum("d,tde->te", W_U[:, target_id], J).norm(dim=-1)
    result = semantic_scope(model, PROMPT, target=" fo", position=-2)
    assert int(result.target) == target_id
    assert_close(result.scores, expected)


def test_semantic_token_id_equals_token_string(model):
    by_string = semantic_scope(model, PROMPT, target=" fo")
    by_id = semantic_scope(model, PROMPT, target=model.tokenizer.convert_tokens_to_ids("Ġfo"))
    assert torch.equal(by_string.scores, by_id.scores)


def test_semantic_contrast_equals_norm_of_logit_difference_direction(model):
    tokens, position, J, y, logits, W_U = setup(model)
    a, b = 11, 42
    expected = torch.einsum("d,tde->te", W_U[:, a] - W_U[:, b], J).norm(dim=-1)
    result = semantic_scope(model, PROMPT, target=(a, b))
    assert result.target.tolist() == [a, b]
    assert_close(result.scores, expected)


def test_semantic_gradient_x_input_is_signed_dot_with_residual_input(model):
    tokens, position, J, y, logits, W_U = setup(model)
    x = residual_input(model, tokens).double()
    gradient = torch.einsum("d,tde->te", W_U[:, logits.argmax()], J)
    result = semantic_scope(model, PROMPT, return_gradients=True)
    assert_close(result.gradients, gradient)
    assert_close(result.gradient_x_input, (gradient * x).sum(-1))


def test_temperature_equals_norm_of_unit_hidden_state_readout(model_with_final_norm_gain):
    model = model_with_final_norm_gain
    tokens, position, J, y, logits, W_U = setup(model)
    expected = torch.einsum("d,tde->te", y / y.norm(), J).norm(dim=-1)
    assert_close(temperature_scope(model, PROMPT).scores, expected)


def test_temperature_on_folded_final_norm_warns_and_vanishes(folded_model):
    with pytest.warns(UserWarning, match="final norm has no gain") as caught:
        temperature = temperature_scope(folded_model, PROMPT).scores
    assert [w.filename for w in caught if "final norm" in str(w.message)] == [__file__]  # the caller's line
    semantic = semantic_scope(folded_model, PROMPT).scores
    assert ModelAdapter(folded_model).numerics("").final_norm_folded_into_unembed
    assert temperature.max() <= 1e-4 * semantic.max()


def test_fisher_exact_equals_brute_force_trace(model):
    tokens, position, J, y, logits, W_U = setup(model)
    F = brute_fisher(W_U, logits)
    expected = torch.einsum("tdi,de,tei->t", J, F, J)
    result = fisher_scope(model, PROMPT, rank=None, tail_tolerance=0.0)
    assert result.metadata["exact"]
    assert_close(result.scores, expected)


def test_fisher_rank_d_model_equals_exact(model):
    d_model = ModelAdapter(model).d_model
    exact = fisher_scope(model, PROMPT, rank=None, tail_tolerance=0.0).scores
    assert torch.allclose(fisher_scope(model, PROMPT, rank=d_model, tail_tolerance=0.0).scores, exact)


@pytest.mark.parametrize("rank", [1, 3])
def test_fisher_rank_k_equals_brute_force_top_k_sum(model, rank):
    tokens, position, J, y, logits, W_U = setup(model)
    eigenvalues, eigenvectors = torch.linalg.eigh(brute_fisher(W_U, logits))
    top_values, top_vectors = eigenvalues[-rank:], eigenvectors[:, -rank:]
    projected = torch.einsum("dk,tde->tke", top_vectors, J)
    expected = (top_values[None, :] * projected.pow(2).sum(-1)).sum(-1)
    result = fisher_scope(model, PROMPT, rank=rank, tail_tolerance=0.0)
    assert_close(result.scores, expected)
    assert torch.allclose(result.metadata["eigenvalues"].double(), top_values.flip(0), rtol=1e-4)
    captured = top_values.sum() / eigenvalues.sum()
    assert abs(float(result.metadata["captured_trace_fraction"]) - float(captured)) < 1e-4


def test_scope_at_later_layer_equals_jacobian_of_that_layer_input(model):
    tokens, position, J, y, logits, W_U = setup(model, layer=1)
    expected = torch.einsum("d,tde->te", W_U[:, logits.argmax()], J).norm(dim=-1)
    result = semantic_scope(model, PROMPT, layer=1)
    assert result.metadata["numerics"]["perturbation_hook"] == ModelAdapter(model).resid_pre_hook(1)
    assert_close(result.scores, expected)


def test_scope_at_final_residual_stream_equals_brute_force_and_is_local(model):
    n_layers = ModelAdapter(model).n_layers
    tokens, position, J, y, logits, W_U = setup(model, layer=n_layers)
    expected = torch.einsum("d,tde->te", W_U[:, 3], J).norm(dim=-1)
    result = semantic_scope(model, PROMPT, target=3, layer=n_layers)
    assert_close(result.scores, expected)
    assert torch.all(result.scores[:-1] == 0)  # after the last block, only the token itself matters


def test_input_scale_takes_the_jacobian_at_the_scaled_input(model_with_final_norm_gain):
    model = model_with_final_norm_gain
    tokens = ModelAdapter(model).tokenize(PROMPT)
    x = residual_input(model, tokens)
    function = final_hidden_of_input(model, tokens)
    with torch.enable_grad():
        J = torch.autograd.functional.jacobian(lambda v: function(v)[-1], 0.4 * x).permute(1, 0, 2).double()
    W_U = effective_unembedding(model, function(0.4 * x)[-1].detach().double())
    gradient = torch.einsum("d,tde->te", W_U[:, 6], J)
    result = semantic_scope(model, PROMPT, target=6, input_scale=0.4)
    assert_close(result.scores, gradient.norm(dim=-1))
    assert_close(result.gradient_x_input, (gradient * x.double()).sum(-1))

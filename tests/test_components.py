"""Component scopes equal brute-force Jacobians of the unembedding input with respect to every
head's output (blocks.L.attn.hook_z) and every MLP's output (blocks.L.hook_mlp_out), read along
the Semantic, Fisher and Temperature directions — on every model family — and leave the model
as they found it."""

from __future__ import annotations

import pytest
import torch

from jscopes_tl import ScopeInputError
from jscopes_tl.adapter import ModelAdapter
from jscopes_tl.components import component_scope

from conftest import PROMPT, hook_fingerprint
from hook_oracle import effective_unembedding, jacobian
from test_errors_and_model_hygiene import unusual_user_state

CONTRAST = (11, 42)


_ORACLES: dict[int, tuple] = {}


def oracle(model):
    """Per layer: J_heads [d_model, pos, head, d_head], J_mlp [d_model, pos, d_model] at the last
    position; y; tokens; position (computed once per model)."""
    if id(model) not in _ORACLES:
        adapter = ModelAdapter(model)
        tokens = adapter.tokenize(PROMPT)
        position = len(tokens) - 1
        heads, mlps = [], []
        for layer in range(adapter.n_layers):
            J, y, _ = jacobian(model, tokens, f"blocks.{layer}.attn.hook_z", position)
            heads.append(J)
            mlps.append(jacobian(model, tokens, f"blocks.{layer}.hook_mlp_out", position)[0])
        _ORACLES[id(model)] = (heads, mlps, y, tokens, position)
    return _ORACLES[id(model)]


def read(heads, mlps, direction):
    """‖direction^T J‖ per head and token [L, H, pos] and per MLP and token [L, pos]."""
    head_scores = torch.stack([torch.einsum("d,dthe->hte", direction, J).norm(dim=-1) for J in heads])
    mlp_scores = torch.stack([torch.einsum("d,dte->te", direction, J).norm(dim=-1) for J in mlps])
    return head_scores, mlp_scores


def assert_close(actual, expected, rtol=1e-4):
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = float(expected.abs().max())
    assert float((actual.double() - expected).abs().max()) <= rtol * scale, (actual, expected)


def test_semantic_component_scope_equals_brute_force_per_head_and_mlp(model):
    heads, mlps, y, tokens, _ = oracle(model)
    W_U = effective_unembedding(model, y)
    expected_heads, expected_mlps = read(heads, mlps, W_U[:, CONTRAST[0]] - W_U[:, CONTRAST[1]])
    result = component_scope(model, PROMPT, target=CONTRAST)
    assert result.heads.shape == (2, 4, len(tokens)) and result.mlps.shape == (2, len(tokens))
    assert_close(result.heads, expected_heads)
    assert_close(result.mlps, expected_mlps)
    assert result.target.tolist() == list(CONTRAST)
    # Causality: the last layer's outputs reach the prediction only at its own position.
    assert torch.all(result.heads[-1, :, :-1] == 0) and torch.all(result.mlps[-1, :-1] == 0)


def test_fisher_component_scope_equals_brute_force_top_eigenpairs(model):
    heads, mlps, y, tokens, position = oracle(model)
    W_U = effective_unembedding(model, y)
    logits = model(tokens[None])[0, position].detach().double()
    p = torch.softmax(logits, -1)
    eigenvalues, eigenvectors = torch.linalg.eigh(W_U @ (torch.diag(p) - torch.outer(p, p)) @ W_U.T)
    values, vectors = eigenvalues[-2:], eigenvectors[:, -2:]  # rank 2: Σ_i λ_i ‖u_i^T J‖²
    expected_heads = torch.stack([torch.einsum("k,dk,dthe,ck,cthe->ht", values, vectors, J, vectors, J) for J in heads])
    expected_mlps = torch.stack([torch.einsum("k,dk,dte,ck,cte->t", values, vectors, J, vectors, J) for J in mlps])
    result = component_scope(model, PROMPT, kind="fisher", rank=2, tail_tolerance=0.0)
    assert_close(result.heads, expected_heads)
    assert_close(result.mlps, expected_mlps)
    torch.testing.assert_close(result.head_totals, result.heads.sum(-1))  # squared units add


def test_temperature_component_scope_equals_brute_force(model_with_final_norm_gain):
    heads, mlps, y, _, _ = oracle(model_with_final_norm_gain)
    expected_heads, expected_mlps = read(heads, mlps, y / y.norm())
    result = component_scope(model_with_final_norm_gain, PROMPT, kind="temperature")
    assert_close(result.heads, expected_heads)
    assert_close(result.mlps, expected_mlps)


def test_head_totals_and_signed_scores_of_one_head_equal_brute_force(any_model):
    adapter = ModelAdapter(any_model)
    tokens = adapter.tokenize(PROMPT)
    J, y, z = jacobian(any_model, tokens, "blocks.0.attn.hook_z", len(tokens) - 1)
    W_U = effective_unembedding(any_model, y)
    gradient = torch.einsum("d,dthe->hte", W_U[:, 7], J)  # [head, pos, d_head]
    result = component_scope(any_model, PROMPT, target=7)
    assert_close(result.head_totals[0], gradient.flatten(1).norm(dim=-1))
    assert_close(result.heads_gradient_x_input[0], (gradient * z.permute(1, 0, 2)).sum(-1))
    (layer, head, total), *_ = result.top_heads(1)
    assert total == pytest.approx(float(result.head_totals.max()))
    cell = result.top_cells(1)[0]
    assert cell[4] == pytest.approx(float(result.heads.max())) and cell[3] == result.str_tokens[cell[2]]


def test_batch_and_several_positions_keep_the_axes_and_values_of_single_calls(any_model):
    prompts = [PROMPT, "The cat sat on the mat"]
    result = component_scope(any_model, prompts, position=[-1, -2], target=CONTRAST)
    width = result.tokens.shape[1]
    assert result.heads.shape == (2, 2, 2, 4, width) and result.mlps.shape == (2, 2, 2, width)
    for prompt_index, prompt in enumerate(prompts):
        for column, position in enumerate([-1, -2]):
            single = component_scope(any_model, prompt, position=position, target=CONTRAST)
            length = single.heads.shape[-1]
            torch.testing.assert_close(result.heads[prompt_index, column, ..., :length], single.heads, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(result.mlps[prompt_index, column, :, :length], single.mlps, rtol=1e-5, atol=1e-6)


def test_component_scope_leaves_the_model_unchanged(model):
    with unusual_user_state(model):
        before = hook_fingerprint(model)
        component_scope(model, PROMPT, kind="fisher", rank=2)
        with pytest.raises(ScopeInputError):
            component_scope(model, PROMPT, kind="fisher", target=3)
        assert hook_fingerprint(model) == before
        assert all(parameter.grad is None for parameter in model.parameters())


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(kind="logit"), "kind must be"),
        (dict(kind="temperature", target=3), "target is the Semantic"),
        (dict(kind="fisher", rank=0), "rank must be"),
        (dict(top_k=0), "top_k"),
        (dict(readout_hook="blocks.0.attn.hook_pattern", target=lambda a: a.sum((1, 2, 3))), r"\[batch, head"),
    ],
)
def test_bad_component_scope_arguments_raise_naming_them(any_model, options, message):
    with pytest.raises(ScopeInputError, match=message):
        component_scope(any_model, PROMPT, **options)

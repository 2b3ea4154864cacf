"""Layer-resolved scopes: one call, every residual-stream layer, rows on the patching axes."""

from __future__ import annotations

import pytest
import torch

from jscopes_tl import fisher_scope, semantic_scope, temperature_scope
from jscopes_tl.adapter import ModelAdapter
from jscopes_tl.errors import ScopeInputError
from jscopes_tl.patching import activation_patching, layer_resolved_scope

from conftest import PROMPT

SCOPES = {"semantic": semantic_scope, "fisher": fisher_scope, "temperature": temperature_scope}


def test_layer_zero_row_equals_embedding_level_scope(model):
    resolved = layer_resolved_scope(model, PROMPT, "semantic", target=(5, 6))
    embedding_level = semantic_scope(model, PROMPT, target=(5, 6))
    torch.testing.assert_close(resolved.scores[0], embedding_level.scores, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["fisher", "temperature"])
def test_layer_zero_row_equals_embedding_level_scope_for_every_kind(any_model, kind):
    resolved = layer_resolved_scope(any_model, PROMPT, kind)
    torch.testing.assert_close(resolved.scores[0], SCOPES[kind](any_model, PROMPT).scores, rtol=1e-5, atol=1e-7)


def test_every_row_equals_the_scope_perturbed_at_that_layer_alone(any_model):
    resolved = layer_resolved_scope(any_model, PROMPT, position=-2)
    for layer in range(ModelAdapter(any_model).n_layers + 1):
        alone = semantic_scope(any_model, PROMPT, position=-2, layer=layer).scores
        torch.testing.assert_close(resolved.scores[layer], alone, rtol=1e-5, atol=1e-7)


def test_rows_are_labelled_with_their_hook_points(model):
    adapter = ModelAdapter(model)
    resolved = layer_resolved_scope(model, PROMPT)
    assert resolved.hook_names == [adapter.resid_pre_hook(layer) for layer in range(adapter.n_layers + 1)]
    assert resolved.layer_labels == [f"resid_pre {layer}" for layer in range(adapter.n_layers)] + ["resid_final"]
    assert resolved.str_tokens == adapter.str_tokens(adapter.tokenize(PROMPT))
    assert resolved.position == len(resolved.str_tokens) - 1


def test_resid_pre_rows_have_the_shape_of_transformer_lens_resid_pre_patching(any_model):
    adapter = ModelAdapter(any_model)
    clean = adapter.tokenize(PROMPT)
    corrupted = clean.clone()
    corrupted[2] = (corrupted[2] + 1) % adapter.d_vocab
    resolved = layer_resolved_scope(any_model, clean)
    patching = activation_patching(any_model, clean, corrupted, (5, 6))
    assert resolved.scores.shape == (adapter.n_layers + 1, len(clean))
    assert resolved.resid_pre_scores.shape == patching.patched_metric.shape == (adapter.n_layers, len(clean))
    transformer_lens_patch = adapter.transformer_lens_resid_pre_patching()
    if transformer_lens_patch is not None:
        reference = transformer_lens_patch(clean[None], corrupted[None], lambda logits: logits[0, -1, 5] - logits[0, -1, 6])
        assert reference.shape == resolved.resid_pre_scores.shape


def test_layer_resolved_scope_needs_one_prompt(any_model):
    with pytest.raises(ScopeInputError, match="prompt must be one prompt"):
        layer_resolved_scope(any_model, [PROMPT, PROMPT])
    with pytest.raises(ScopeInputError, match="prompt must be one prompt"):
        layer_resolved_scope(any_model, torch.zeros(2, 3, dtype=torch.long))


def test_layer_resolved_scope_rejects_unknown_kind_and_a_layer_argument(any_model):
    with pytest.raises(ScopeInputError, match="kind must be one of"):
        layer_resolved_scope(any_model, PROMPT, "entropy")
    with pytest.raises(ScopeInputError, match="do not pass layer"):
        layer_resolved_scope(any_model, PROMPT, layer=1)

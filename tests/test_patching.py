"""Activation patching, attribution patching and their comparison with layer-resolved scopes."""

from __future__ import annotations

import pytest
import torch

from jscopes_tl.adapter import ModelAdapter
from jscopes_tl.errors import ScopeInputError
from jscopes_tl.patching import (
    activation_patching,
    attribution_patching,
    compare_with_patching,
    layer_resolved_scope,
)
from jscopes_tl.stats import spearman
from jscopes_tl.toy import toy_model
from jscopes_tl.views.patching import patching_comparison_html, standalone_html

from conftest import MODEL_SPECS, build, hook_fingerprint
from planted_model import KEY_POSITION, planted_copy_model, planted_prompts

CLEAN = torch.tensor([0, 17, 33, 45, 8, 21])
CORRUPTED = torch.tensor([0, 17, 90, 45, 8, 21])  # differs at position 2 only
ANSWERS = (5, 6)


def logit_difference(logits: torch.Tensor) -> torch.Tensor:
    return logits[..., ANSWERS[0]] - logits[..., ANSWERS[1]]


def test_hook_patching_agrees_with_transformer_lens_patching(model):
    adapter = ModelAdapter(model)
    assert adapter.transformer_lens_resid_pre_patching() is not None, "transformer_lens.patching should apply here"
    through_transformer_lens = activation_patching(model, CLEAN, CORRUPTED, ANSWERS, backend="transformer_lens")
    through_hooks = activation_patching(model, CLEAN, CORRUPTED, ANSWERS, backend="hooks", batch_size=4)
    assert through_transformer_lens.backend == "transformer_lens" and through_hooks.backend == "hooks"
    torch.testing.assert_close(through_hooks.patched_metric, through_transformer_lens.patched_metric, rtol=1e-4, atol=1e-5)


def test_auto_backend_prefers_transformer_lens_patching(any_model):
    assert activation_patching(any_model, CLEAN, CORRUPTED, ANSWERS).backend == "transformer_lens"


def test_patching_baselines_are_the_metric_on_each_prompt(any_model):
    patching = activation_patching(any_model, CLEAN, CORRUPTED, ANSWERS, backend="hooks")
    with torch.no_grad():
        clean = float(logit_difference(any_model(CLEAN[None])[0, -1]))
        corrupted = float(logit_difference(any_model(CORRUPTED[None])[0, -1]))
    assert patching.clean_metric == pytest.approx(clean, rel=1e-4, abs=1e-5)
    assert patching.corrupted_metric == pytest.approx(corrupted, rel=1e-4, abs=1e-5)
    torch.testing.assert_close(patching.effect, patching.patched_metric - corrupted, rtol=1e-4, atol=1e-4)


def test_patching_every_position_of_layer_zero_where_the_prompts_agree_does_nothing(any_model):
    patching = activation_patching(any_model, CLEAN, CORRUPTED, ANSWERS, backend="hooks")
    estimate = attribution_patching(any_model, CLEAN, CORRUPTED, ANSWERS)
    same = CLEAN == CORRUPTED
    assert patching.effect[0, same].abs().max() < 1e-4
    assert estimate[0, same].abs().max() == 0
    # Restoring the one differing token at the embedding restores the clean run exactly.
    assert patching.patched_metric[0, 2] == pytest.approx(patching.clean_metric, rel=1e-4, abs=1e-4)


@pytest.fixture(scope="module")
def float64_model():
    family = "hooked" if any(name.startswith("hooked") for name, _ in MODEL_SPECS) else "bridge"
    return toy_model("gpt2", family=family, init_scale=0.3, seed=3).to(torch.float64)


def test_attribution_patching_equals_a_finite_difference_along_clean_minus_corrupted(float64_model):
    model, adapter = float64_model, ModelAdapter(float64_model)
    estimate = attribution_patching(model, CLEAN, CORRUPTED, ANSWERS)
    _, clean_cache = model.run_with_cache(CLEAN[None])
    _, corrupted_cache = model.run_with_cache(CORRUPTED[None])
    step = 1e-4
    for layer in range(adapter.n_layers):
        name = adapter.resid_pre_hook(layer)
        difference = clean_cache[name] - corrupted_cache[name]
        for position in range(len(CLEAN)):

            def metric_at(scale: float) -> float:
                def shift(activation, hook):
                    activation = activation.clone()
                    activation[:, position] += scale * difference[:, position]
                    return activation

                with torch.no_grad():
                    return float(logit_difference(model.run_with_hooks(CORRUPTED[None], fwd_hooks=[(name, shift)])[0, -1]))

            finite_difference = (metric_at(step) - metric_at(-step)) / (2 * step)
            assert estimate[layer, position] == pytest.approx(finite_difference, rel=1e-4, abs=1e-6)


def test_prompts_of_different_lengths_raise_naming_both_lengths(any_model):
    with pytest.raises(ScopeInputError, match="clean prompt has 6 tokens but the corrupted prompt has 5"):
        activation_patching(any_model, CLEAN, CORRUPTED[:5], ANSWERS)
    with pytest.raises(ScopeInputError, match="has 6 tokens but the corrupted prompt has 5"):
        compare_with_patching(any_model, CLEAN, CORRUPTED[:5], ANSWERS)


def test_default_metric_is_the_logit_difference_of_the_two_predictions(any_model):
    with torch.no_grad():
        clean_answer = int(any_model(CLEAN[None])[0, -1].argmax())
        for replacement in range(1, 100):  # a last token that changes the prediction
            corrupted = torch.cat([CLEAN[:-1], torch.tensor([replacement])])
            corrupted_answer = int(any_model(corrupted[None])[0, -1].argmax())
            if corrupted_answer != clean_answer:
                break
    default = activation_patching(any_model, CLEAN, corrupted, backend="hooks")
    explicit = activation_patching(any_model, CLEAN, corrupted, (clean_answer, corrupted_answer), backend="hooks")
    torch.testing.assert_close(default.patched_metric, explicit.patched_metric)


def test_default_metric_needs_two_different_predictions(any_model):
    with pytest.raises(ScopeInputError, match="both prompts predict"):
        activation_patching(any_model, CLEAN, CLEAN)


def test_callable_metric_reads_the_logits_at_the_requested_position(any_model):
    def log_probability_of_token_5(logits: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(logits, dim=-1)[:, 5]

    patching = activation_patching(any_model, CLEAN, CORRUPTED, log_probability_of_token_5, position=-2, backend="hooks")
    with torch.no_grad():
        expected = float(torch.log_softmax(any_model(CLEAN[None])[0, -2], dim=-1)[5])
    assert patching.clean_metric == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ScopeInputError, match="one value per row"):
        activation_patching(any_model, CLEAN, CORRUPTED, lambda logits: logits.sum(), backend="hooks")


def test_patching_leaves_the_model_as_it_was_even_when_the_metric_fails(any_model):
    before = hook_fingerprint(any_model)
    compare_with_patching(any_model, CLEAN, CORRUPTED, ANSWERS)
    assert hook_fingerprint(any_model) == before

    def failing_metric(logits: torch.Tensor) -> torch.Tensor:
        raise ArithmeticError("metric failed")

    for backend in ("hooks", "transformer_lens"):
        with pytest.raises(ArithmeticError, match="metric failed"):
            activation_patching(any_model, CLEAN, CORRUPTED, failing_metric, backend=backend)
        assert hook_fingerprint(any_model) == before


def test_comparison_correlations_are_spearman_of_the_maps(any_model):
    comparison = compare_with_patching(any_model, CLEAN, CORRUPTED, ANSWERS, kind="fisher", scope_prompt="corrupted")
    effect = comparison.activation_patching.effect
    # Before the changed token (position 2) both runs are identical; at layer 0 only position 2 differs.
    differing = torch.tensor([[False, False, True, False, False, False]] + [[False, False, True, True, True, True]] * (effect.shape[0] - 1))
    assert torch.equal(comparison.differing_cells, differing)
    assert comparison.rank_correlations == pytest.approx(
        {
            "activation_vs_attribution": spearman(effect.abs(), comparison.attribution_patching.abs()),
            "activation_vs_scope": spearman(effect.abs(), comparison.scope),
            "attribution_vs_scope": spearman(comparison.attribution_patching.abs(), comparison.scope),
            "activation_vs_attribution_signed": spearman(effect, comparison.attribution_patching),
            "activation_vs_attribution_on_differing_cells": spearman(
                effect.abs()[differing], comparison.attribution_patching.abs()[differing]
            ),
            "activation_vs_scope_on_differing_cells": spearman(effect.abs()[differing], comparison.scope[differing]),
            "attribution_vs_scope_on_differing_cells": spearman(
                comparison.attribution_patching.abs()[differing], comparison.scope[differing]
            ),
        },
        nan_ok=True,
    )
    expected_scope = layer_resolved_scope(any_model, CORRUPTED, "fisher").resid_pre_scores
    torch.testing.assert_close(comparison.scope, expected_scope)


def test_comparison_semantic_scope_reads_the_metric(any_model):
    comparison = compare_with_patching(any_model, CLEAN, CORRUPTED, ANSWERS)
    contrast = layer_resolved_scope(any_model, CLEAN, target=ANSWERS).resid_pre_scores
    torch.testing.assert_close(comparison.scope, contrast, rtol=1e-5, atol=1e-6)
    with pytest.raises(ScopeInputError, match="pass metric=, not target="):
        compare_with_patching(any_model, CLEAN, CORRUPTED, ANSWERS, target=5)


def test_planted_dependency_is_found_by_patching_attribution_and_scope():
    model = planted_copy_model()
    clean = planted_prompts(1)[0, :-1]
    corrupted = clean.clone()
    corrupted[KEY_POSITION] = 40 if clean[KEY_POSITION] != 40 else 41
    comparison = compare_with_patching(model, clean, corrupted)
    assert comparison.activation_patching.effect.abs()[0].argmax() == KEY_POSITION
    assert comparison.attribution_patching.abs()[0].argmax() == KEY_POSITION
    assert comparison.scope[0].argmax() == KEY_POSITION
    assert comparison.activation_patching.effect[0, KEY_POSITION] > 0.9 * (
        comparison.activation_patching.clean_metric - comparison.activation_patching.corrupted_metric
    )


def test_comparison_view_is_self_contained_html_with_three_maps(any_model):
    comparison = compare_with_patching(any_model, CLEAN, CORRUPTED, ANSWERS)
    fragment = patching_comparison_html(comparison)
    assert fragment.count("<table class='jscopes-heatmap'>") == 3
    assert "activation_vs_scope" in fragment and comparison.activation_patching.backend in fragment
    document = standalone_html("patching", fragment)
    assert document.startswith("<!DOCTYPE html>") and "http" not in document and "<script" not in document

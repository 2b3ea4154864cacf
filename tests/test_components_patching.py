"""Head- and MLP-level activation patching (TransformerLens's own functions and the same patches
through hooks), attribution patching of heads (a finite difference along clean − corrupted), and
their comparison with the component scope."""

from __future__ import annotations

import pytest
import torch

from jscopes_tl.components import component_scope
from jscopes_tl.patching import (
    compare_components_with_patching,
    component_activation_patching,
    component_attribution_patching,
)
from jscopes_tl.stats import spearman
from jscopes_tl.toy import toy_model
from jscopes_tl.views.components import component_comparison_view, component_view

from conftest import MODEL_SPECS, hook_fingerprint

CLEAN = torch.tensor([0, 17, 33, 45, 8, 21])
CORRUPTED = torch.tensor([0, 17, 90, 45, 8, 21])  # differs at position 2 only
ANSWERS = (5, 6)


def logit_difference(logits: torch.Tensor) -> torch.Tensor:
    return logits[..., ANSWERS[0]] - logits[..., ANSWERS[1]]


def test_hook_patching_agrees_with_transformer_lens_head_and_mlp_patching(any_model):
    clean, corrupted = CLEAN[:4], CORRUPTED[:4]  # TransformerLens runs one forward per cell
    ours = component_activation_patching(any_model, clean, corrupted, ANSWERS, backend="hooks", batch_size=3)
    theirs = component_activation_patching(any_model, clean, corrupted, ANSWERS, backend="transformer_lens")
    assert (ours.backend, theirs.backend) == ("hooks", "transformer_lens")
    for field in ("heads", "heads_all_pos", "mlps"):
        torch.testing.assert_close(getattr(ours, field), getattr(theirs, field), rtol=1e-4, atol=1e-5)
    assert ours.heads.shape == (2, 4, 4) and ours.heads_all_pos.shape == (2, 4)
    # Restoring a head's output where both runs agree (before the changed token) does nothing.
    assert ours.heads_effect[:, :, :2].abs().max() < 1e-4


def test_patching_one_head_by_hand_matches_the_heads_map(any_model):
    patching = component_activation_patching(any_model, CLEAN, CORRUPTED, ANSWERS, backend="hooks")
    _, clean_cache = any_model.run_with_cache(CLEAN[None])

    def restore(activation, hook):
        activation = activation.clone()
        activation[:, 3, 2] = clean_cache["blocks.0.attn.hook_z"][:, 3, 2]
        return activation

    with torch.no_grad():
        logits = any_model.run_with_hooks(CORRUPTED[None], fwd_hooks=[("blocks.0.attn.hook_z", restore)])
    assert float(patching.heads[0, 2, 3]) == pytest.approx(float(logit_difference(logits[0, -1])), rel=1e-4, abs=1e-5)


@pytest.fixture(scope="module")
def float64_model():
    family = "hooked" if any(name.startswith("hooked") for name, _ in MODEL_SPECS) else "bridge"
    return toy_model("gpt2", family=family, init_scale=0.3, seed=3).to(torch.float64)


def test_head_attribution_patching_equals_a_finite_difference(float64_model):
    model = float64_model
    estimate = component_attribution_patching(model, CLEAN, CORRUPTED, ANSWERS)
    _, clean_cache = model.run_with_cache(CLEAN[None])
    _, corrupted_cache = model.run_with_cache(CORRUPTED[None])
    step = 1e-4
    for layer, head, position in [(0, 1, 2), (0, 3, 4), (1, 2, 5)]:
        name = f"blocks.{layer}.attn.hook_z"
        difference = clean_cache[name][:, position, head] - corrupted_cache[name][:, position, head]

        def metric_at(scale: float) -> float:
            def shift(activation, hook):
                activation = activation.clone()
                activation[:, position, head] += scale * difference
                return activation

            with torch.no_grad():
                return float(logit_difference(model.run_with_hooks(CORRUPTED[None], fwd_hooks=[(name, shift)])[0, -1]))

        finite_difference = (metric_at(step) - metric_at(-step)) / (2 * step)
        assert float(estimate.heads[layer, head, position]) == pytest.approx(finite_difference, rel=1e-4, abs=1e-7)
    torch.testing.assert_close(estimate.heads_all_pos, estimate.heads.sum(-1))


def test_comparison_correlates_the_three_maps_and_reads_the_metric(any_model):
    before = hook_fingerprint(any_model)
    comparison = compare_components_with_patching(any_model, CLEAN, CORRUPTED, ANSWERS, backend="hooks")
    assert hook_fingerprint(any_model) == before
    patching, estimate, scope = comparison.activation_patching, comparison.attribution_patching, comparison.scope
    torch.testing.assert_close(scope.heads, component_scope(any_model, CLEAN, target=ANSWERS).heads, rtol=1e-5, atol=1e-6)
    assert comparison.rank_correlations["heads: activation_vs_scope"] == pytest.approx(
        spearman(patching.heads_effect.abs(), scope.heads), nan_ok=True
    )
    assert comparison.rank_correlations["heads_all_pos: attribution_vs_scope"] == pytest.approx(
        spearman(estimate.heads_all_pos.abs(), scope.head_totals), nan_ok=True
    )
    assert comparison.rank_correlations["mlps: activation_vs_attribution"] == pytest.approx(
        spearman(patching.mlps_effect.abs(), estimate.mlps.abs()), nan_ok=True
    )
    page = component_comparison_view(comparison).to_html()
    assert page.count("<table class='jscopes-heat'>") == 6 and "heads: activation_vs_scope" in page
    assert "http" not in page.split("</script>")[-1]  # nothing after the inlined bundle is fetched


def test_component_view_shows_layer_by_head_and_chosen_heads_over_tokens(any_model):
    result = component_scope(any_model, CLEAN, target=ANSWERS)
    page = component_view(result, heads=[(0, 1), (1, 3)]).to_html()
    assert page.count("<table class='jscopes-heat'>") == 2
    assert "L0H1" in page and "L1H3" in page and "MLP" in page
    with pytest.raises(ValueError, match="heads must be"):
        component_view(result, heads=[(5, 0)])
    batch = component_scope(any_model, torch.stack([CLEAN, CORRUPTED]), target=ANSWERS)
    with pytest.raises(ValueError, match="prompt=i"):
        component_view(batch)
    assert "L0H" in component_view(batch, prompt=1).to_html()

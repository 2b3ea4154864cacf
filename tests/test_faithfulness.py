"""Faithfulness evaluation: rank statistics, AOPC under ablation, leave-one-out agreement."""

from __future__ import annotations

import math

import pytest
import torch

from jscopes_tl.adapter import ModelAdapter
from jscopes_tl.errors import ScopeInputError
from jscopes_tl import integrated_gradients
from jscopes_tl.faithfulness import (
    ScorerOutput,
    aopc,
    evaluate_faithfulness,
    gradient_x_input_scorer,
    integrated_gradients_scorer,
    prompt_seed,
    random_scorer,
    top_k_counts,
)
from jscopes_tl.stats import average_ranks, spearman
from jscopes_tl.views.patching import faithfulness_table_html

from conftest import PROMPT, final_hidden_of_input, hook_fingerprint, residual_input
from planted_model import KEY_POSITION, planted_copy_model, planted_prompts

PROMPTS = [torch.tensor([0, 17, 33, 45, 8, 21, 60, 12, 9, 30, 11]), torch.tensor([0, 5, 80, 7, 44, 2])]


# --------------------------------------------------------------------------------- statistics
def test_average_ranks_share_ties():
    torch.testing.assert_close(average_ranks(torch.tensor([10.0, 30.0, 20.0, 30.0])), torch.tensor([1.0, 3.5, 2.0, 3.5], dtype=torch.float64))


def test_spearman_matches_brute_force_ranks_and_pearson():
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (40,), generator=generator).float()  # many ties
    b = a + torch.randn(40, generator=generator)
    brute_ranks = [torch.tensor([1 + (x < v).sum() + ((x == v).sum() - 1) / 2 for v in x], dtype=torch.float64) for x in (a, b)]
    expected = torch.corrcoef(torch.stack(brute_ranks))[0, 1]
    assert spearman(a, b) == pytest.approx(float(expected), rel=1e-12)


def test_spearman_reference_value_and_degenerate_inputs():
    assert spearman(torch.tensor([1.0, 2, 3, 4, 5]), torch.tensor([5.0, 6, 7, 8, 7])) == pytest.approx(0.8207826816681233)
    assert math.isnan(spearman(torch.ones(4), torch.arange(4.0)))
    with pytest.raises(ValueError, match="one shape"):
        spearman(torch.ones(3), torch.ones(4))


# --------------------------------------------------------------------------------- protocol arithmetic
def test_aopc_is_the_papers_trapezoid():
    assert aopc([-1.0, -2.0, -4.0]) == pytest.approx(0.025 * -1 + 0.075 * -2 + 0.05 * -4)


@pytest.mark.parametrize(("n_candidates", "expected"), [(7, [1, 1, 1]), (30, [1, 3, 6]), (29, [1, 2, 5]), (100, [5, 10, 20])])
def test_top_k_counts_are_at_least_one_and_floored(n_candidates, expected):
    assert top_k_counts(n_candidates, (0.05, 0.1, 0.2)) == expected


# --------------------------------------------------------------------------------- ablations
def fixed_scorer(scores_by_length):
    def scorer(model, context, gold):
        return scores_by_length[len(context)].clone()

    return scorer


def log_probabilities_with_ablated_tokens(model, context, positions, ablation):
    """Independent reference: zero ablation removes the token embedding from the residual stream
    entering block 0 (token + positional embedding); pad ablation substitutes the pad token."""
    adapter = ModelAdapter(model)
    with torch.no_grad():
        if ablation == "pad":
            tokens = context.clone()
            tokens[positions] = adapter.pad_token_id
            return torch.log_softmax(model(tokens[None])[0, -1].float(), -1)
        _, cache = model.run_with_cache(context[None])
        residual = cache[adapter.resid_pre_hook(0)].clone()
        residual[0, positions] -= cache[adapter.token_embedding_hook][0, positions]
        y = final_hidden_of_input(model, context)(residual[0])
        return torch.log_softmax(adapter.logits(y[-1]).float(), -1)


@pytest.mark.parametrize("ablation", ["zero", "pad"])
def test_deltas_and_leave_one_out_match_independent_ablations(any_model, ablation):
    context = PROMPTS[0][:-1]
    scores = torch.tensor([9.0, 1, 8, 2, 7, 3, 6, 4, 5, 0])  # BOS scored highest: must never be ablated
    report = evaluate_faithfulness(
        any_model, [PROMPTS[0]], {"fixed": fixed_scorer({10: scores})}, ablation=ablation, batch_size=3, progress=False
    )
    row, evaluation = report.rows[0], report.prompts[0]
    original = log_probabilities_with_ablated_tokens(any_model, context, [], ablation)
    predicted = int(original.argmax())
    # 9 candidates (BOS excluded): 5 % and 10 % ablate 1 token, 20 % ablates 1 as well; top-1 is position 2.
    assert torch.equal(evaluation.candidates, torch.arange(1, 10))
    assert row["n_candidates"] == 9 and row["top_token"] == ModelAdapter(any_model).str_tokens(context)[2]
    expected_delta = float(log_probabilities_with_ablated_tokens(any_model, context, [2], ablation)[predicted] - original[predicted])
    for column in ("delta_5", "delta_10", "delta_20"):
        assert row[column] == pytest.approx(expected_delta, rel=1e-4, abs=1e-5)
    expected_kl = torch.stack(
        [
            (original.exp() * (original - log_probabilities_with_ablated_tokens(any_model, context, [position], ablation))).sum()
            for position in range(1, 10)
        ]
    )
    torch.testing.assert_close(evaluation.leave_one_out_kl, expected_kl, rtol=1e-3, atol=1e-6)
    assert row["loo_spearman"] == pytest.approx(spearman(scores[1:], expected_kl), abs=1e-6)
    assert row["loo_percentile_of_top"] == pytest.approx(float((expected_kl <= expected_kl[1]).double().mean()))


def test_ablating_more_tokens_ablates_the_top_ranked_ones(any_model):
    prompt = torch.arange(40, 62)  # no BOS: all 21 context tokens are candidates
    scores = torch.arange(21.0).flip(0)  # earliest tokens first
    report = evaluate_faithfulness(any_model, [prompt], {"fixed": fixed_scorer({21: scores})}, progress=False)
    original = log_probabilities_with_ablated_tokens(any_model, prompt[:-1], [], "zero")
    predicted = int(original.argmax())
    for column, count in zip(("delta_5", "delta_10", "delta_20"), top_k_counts(21, (0.05, 0.1, 0.2))):
        ablated = log_probabilities_with_ablated_tokens(any_model, prompt[:-1], list(range(count)), "zero")
        assert report.rows[0][column] == pytest.approx(float(ablated[predicted] - original[predicted]), rel=1e-4, abs=1e-5)


def test_scorer_equal_to_leave_one_out_agrees_perfectly(any_model):
    first = evaluate_faithfulness(any_model, PROMPTS, ["random"], progress=False)
    loo_scores = {
        len(tokens) - 1: torch.cat([torch.zeros(1), evaluation.leave_one_out_kl])
        for tokens, evaluation in zip(PROMPTS, first.prompts)
    }
    report = evaluate_faithfulness(any_model, PROMPTS, {"loo": fixed_scorer(loo_scores)}, progress=False)
    assert [row["loo_spearman"] for row in report.rows] == pytest.approx([1.0, 1.0])
    assert [row["loo_percentile_of_top"] for row in report.rows] == [1.0, 1.0]


# --------------------------------------------------------------------------------- baselines
def integrated_gradients_by_trapezoid(model, context, gold, alphas):
    """Reference: the trapezoid over ``alphas`` of ∇log p(gold) at α·x, x the residual stream
    entering block 0, with the path's points put in place of it as one batch (plain autograd)."""
    adapter = ModelAdapter(model)
    x = residual_input(model, context).double()
    weights = torch.zeros_like(alphas)
    weights[:-1] += (alphas[1:] - alphas[:-1]) / 2
    weights[1:] += (alphas[1:] - alphas[:-1]) / 2
    points = (alphas[:, None, None] * x).float().requires_grad_(True)
    store = {}

    def replace(activation, hook):
        return points

    def capture(activation, hook):
        store["final"] = activation

    with torch.enable_grad(), model.hooks(fwd_hooks=[(adapter.resid_pre_hook(0), replace), (adapter.final_hidden_hook, capture)]):
        model(context.expand(len(alphas), -1))
        log_p = torch.log_softmax(adapter.logits(adapter.final_hidden(store["final"])[:, -1]).double(), -1)[:, gold]
        (gradients,) = torch.autograd.grad(log_p.sum(), points)
    return (weights[:, None, None] * gradients.double()).sum(0) * x


def test_gradient_x_input_and_integrated_gradients_match_autograd(any_model):
    adapter = ModelAdapter(any_model)
    context = PROMPTS[0][:-1]
    gold = int(PROMPTS[0][-1])
    x = residual_input(any_model, context).double()
    function = final_hidden_of_input(any_model, context)

    def gradient_at(scale: float) -> torch.Tensor:
        point = (scale * x).float().requires_grad_(True)
        with torch.enable_grad():
            log_probability = torch.log_softmax(adapter.logits(function(point)[-1]).float(), -1)[gold]
            (gradient,) = torch.autograd.grad(log_probability, point)
        return gradient.double()

    expected_gxi = (gradient_at(1.0) * x).norm(dim=-1)
    torch.testing.assert_close(gradient_x_input_scorer(any_model, context, gold).double(), expected_gxi, rtol=1e-4, atol=1e-6)
    # Integrated Gradients, converged: a trapezoid on 2,001 points graded towards α = 0, where a
    # LayerNorm model's log-probability changes fastest on the path from 0.
    expected_ig = integrated_gradients_by_trapezoid(any_model, context, gold, torch.linspace(0, 1, 2001, dtype=torch.float64) ** 3)
    scores = integrated_gradients_scorer(any_model, context, gold).double()
    assert float((scores - expected_ig.norm(dim=-1)).norm() / expected_ig.norm(dim=-1).norm()) < 2e-3
    # What the scorer was before issue 22: mean of ∇f(α·x) over α ∈ {0.2, …, 1.0}, times x, which is
    # captum's 5-step right Riemann sum.
    old = (torch.stack([gradient_at(a) for a in (0.2, 0.4, 0.6, 0.8, 1.0)]).mean(0) * x).norm(dim=-1)
    with pytest.warns(UserWarning, match="has not converged"):
        five_steps = integrated_gradients(any_model, context, target=gold, n_steps=5, method="riemann_right")
    torch.testing.assert_close(five_steps.scores.double(), old, rtol=1e-4, atol=1e-6)


def test_integrated_gradients_rows_report_the_completeness_gap_and_other_rows_none(any_model):
    report = evaluate_faithfulness(any_model, PROMPTS, ["semantic", "integrated_gradients"], progress=False)
    for tokens, (semantic, ig) in zip(PROMPTS, zip(report.rows[::2], report.rows[1::2])):
        expected = integrated_gradients(any_model, tokens[:-1], target=int(tokens[-1]))
        assert ig["completeness_gap"] == pytest.approx(expected.completeness_gap, rel=1e-6, abs=1e-9)
        assert ig["relative_completeness_gap"] == pytest.approx(expected.relative_completeness_gap, rel=1e-6, abs=1e-9)
        assert ig["ig_evaluations"] == expected.n_evaluations and ig["relative_completeness_gap"] <= 0.01
        assert [semantic[column] for column in ("completeness_gap", "relative_completeness_gap", "ig_evaluations")] == [None] * 3
    summary = {row["scorer"]: row for row in report.summary()}
    assert summary["semantic"]["relative_completeness_gap"] is None
    assert summary["integrated_gradients"]["ig_evaluations"] == pytest.approx(
        sum(row["ig_evaluations"] for row in report.rows[1::2]) / 2
    )
    assert "completeness_gap" not in evaluate_faithfulness(any_model, PROMPTS, ["semantic"], progress=False).summary()[0]


def test_a_scorer_may_return_scores_with_diagnostics(any_model):
    def with_diagnostics(model, context, gold):
        return ScorerOutput(torch.arange(len(context), dtype=torch.float32), {"n_tokens": len(context)})

    report = evaluate_faithfulness(any_model, PROMPTS, {"mine": with_diagnostics, "random": random_scorer()}, progress=False)
    assert [row["n_tokens"] for row in report.rows] == [10, None, 5, None]
    assert [row["n_tokens"] for row in report.summary()] == [7.5, None]
    torch.testing.assert_close(report.prompts[1].scores["mine"], torch.arange(5.0))
    with pytest.raises(ScopeInputError, match="scorer 'bad' returned diagnostics"):
        evaluate_faithfulness(
            any_model, PROMPTS, {"bad": lambda m, c, g: ScorerOutput(torch.ones(len(c)), {"note": "text"})}, progress=False
        )


def test_random_scorer_is_reproducible_from_its_seed(any_model):
    runs = [evaluate_faithfulness(any_model, PROMPTS, ["random"], progress=False, seed=seed) for seed in (1, 1, 2)]
    scores = [[evaluation.scores["random"] for evaluation in run.prompts] for run in runs]
    assert all(torch.equal(a, b) for a, b in zip(scores[0], scores[1]))
    assert not torch.equal(scores[0][0], scores[2][0])


def test_random_scores_of_a_prompt_depend_on_the_seed_and_its_index_not_on_earlier_prompts(any_model):
    report = evaluate_faithfulness(any_model, PROMPTS, ["random"], progress=False, seed=3)
    swapped = evaluate_faithfulness(any_model, [PROMPTS[1], PROMPTS[1]], ["random"], progress=False, seed=3)
    assert torch.equal(report.prompts[1].scores["random"], swapped.prompts[1].scores["random"])
    for index, tokens in enumerate(PROMPTS):
        generator = torch.Generator().manual_seed(prompt_seed(3, index))
        assert torch.equal(report.prompts[index].scores["random"], torch.rand(len(tokens) - 1, generator=generator))


# --------------------------------------------------------------------------------- the planted model
def test_planted_dependency_is_ranked_first_and_scopes_beat_random():
    model = planted_copy_model()
    report = evaluate_faithfulness(model, list(planted_prompts(12)), progress=False)
    for evaluation in report.prompts:
        assert int(evaluation.candidates[evaluation.leave_one_out_kl.argmax()]) == KEY_POSITION
        for scope in ("semantic", "fisher", "temperature"):
            assert int(evaluation.scores[scope].argmax()) == KEY_POSITION
    summary = {row["scorer"]: row for row in report.summary()}
    for scope in ("semantic", "fisher", "temperature", "gradient_x_input", "integrated_gradients"):
        assert summary[scope]["aopc"] < summary["random"]["aopc"] - 0.1
        assert summary[scope]["loo_percentile_of_top"] == 1.0


# --------------------------------------------------------------------------------- table, progress, errors, hygiene
def test_report_rows_summary_and_dataframe(any_model):
    report = evaluate_faithfulness(any_model, [PROMPT, PROMPTS[1]], ["semantic", "random"], progress=False)
    assert [(row["prompt"], row["scorer"]) for row in report.rows] == [(0, "semantic"), (0, "random"), (1, "semantic"), (1, "random")]
    summary = report.summary()
    assert [row["scorer"] for row in summary] == ["semantic", "random"]
    assert summary[0]["aopc"] == pytest.approx((report.rows[0]["aopc"] + report.rows[2]["aopc"]) / 2)
    frame = report.to_dataframe()
    assert list(frame["scorer"]) == ["semantic", "random", "semantic", "random"] and "loo_spearman" in frame.columns
    assert len(report.to_dataframe(summary=True)) == 2
    assert faithfulness_table_html(report).count("<tr>") == 3


def test_progress_bar_can_be_disabled(any_model, capsys):
    evaluate_faithfulness(any_model, PROMPTS, ["random"], progress=False)
    assert "faithfulness" not in capsys.readouterr().err
    evaluate_faithfulness(any_model, PROMPTS, ["random"], progress=True)
    assert "faithfulness" in capsys.readouterr().err


def test_evaluation_leaves_the_model_as_it_was(any_model):
    before = hook_fingerprint(any_model)
    evaluate_faithfulness(any_model, PROMPTS, ["semantic", "integrated_gradients"], progress=False)
    assert hook_fingerprint(any_model) == before


def test_clear_errors_for_bad_arguments(any_model):
    with pytest.raises(ScopeInputError, match=r"prompts\[1\] has 2 token"):
        evaluate_faithfulness(any_model, [PROMPTS[0], torch.tensor([0, 5])], progress=False)
    with pytest.raises(ScopeInputError, match="unknown scorer 'saliency'"):
        evaluate_faithfulness(any_model, PROMPTS, ["saliency"], progress=False)
    with pytest.raises(ScopeInputError, match="ablation must be 'zero' or 'pad'"):
        evaluate_faithfulness(any_model, PROMPTS, ablation="mean", progress=False)
    with pytest.raises(ScopeInputError, match="fractions must be"):
        evaluate_faithfulness(any_model, PROMPTS, fractions=(0.2, 0.1), progress=False)

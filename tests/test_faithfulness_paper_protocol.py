"""``evaluate_faithfulness(..., protocol="paper")``: each choice of the authors' benchmark scripts
(AOPC_multi_method_benchmarks.py, LAMBADA_LOO_benchmarks.py), checked on hand-made cases against
references written here from the scripts' definitions, with TransformerLens hooks only."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from jscopes_tl import fisher_scope
from jscopes_tl.errors import ScopeInputError
from jscopes_tl.faithfulness import (
    evaluate_faithfulness,
    gradient_x_input_scorer,
    integrated_gradients_scorer,
    paper_gradient_x_input_scorer,
    paper_integrated_gradients_scorer,
    paper_top_k_counts,
    prompt_seed,
    top_k_counts,
)
from jscopes_tl.stats import spearman

PASSAGE = torch.arange(40, 61)  # 21 token ids, no BOS: 20 context tokens and the gold token
SHORT_PASSAGE = torch.tensor([17, 33, 45, 8, 21, 60, 12, 9])


def token_embedding_hook(model) -> str:
    return "hook_embed" if "hook_embed" in model.hook_dict else "embed.hook_out"


def fixed_scorer(scores):
    def scorer(model, context, gold):
        assert len(context) == len(scores)
        return scores.clone()

    return scorer


def reference_log_probabilities(model, context, positions=()):
    """Log-probabilities at the context's last position with the *token* embeddings of
    ``positions`` zeroed (positional embeddings untouched)."""

    def zero(activation, hook):
        activation = activation.clone()
        activation[:, list(positions)] = 0
        return activation

    with torch.no_grad(), model.hooks(fwd_hooks=[(token_embedding_hook(model), zero)]):
        return torch.log_softmax(model(context[None])[0, -1].double(), -1)


def reference_gradient(model, context, readout, alpha):
    """The scripts' gradient: a perturbation added to the token embeddings *before* they are
    scaled by ``alpha`` (``inputs_embeds = α·(e + δ)``, positions added by the model)."""
    delta = torch.zeros(len(context), model.cfg.d_model, requires_grad=True)

    def perturb(activation, hook):
        return alpha * (activation + delta[None].to(activation.dtype))

    with torch.enable_grad(), model.hooks(fwd_hooks=[(token_embedding_hook(model), perturb)]):
        (gradient,) = torch.autograd.grad(readout(model(context[None])[0, -1].double()), delta)
    return gradient.double()


def token_embeddings(model, context):
    _, cache = model.run_with_cache(context[None])
    return cache[token_embedding_hook(model)][0].double()


def scripts_kl(log_p, log_q):
    p = log_p.exp().clamp(min=1e-10)
    return float((p * (log_p - log_q.exp().clamp(min=1e-10).log())).sum())


# --------------------------------------------------------------------------------- tokens and ranking
def test_paper_protocol_tokenises_without_bos_and_ranks_every_token(any_model):
    text = "The cat sat on the mat"
    default = evaluate_faithfulness(any_model, text, ["random"], progress=False).prompts[0]
    paper = evaluate_faithfulness(any_model, text, ["random"], protocol="paper", progress=False)
    without_bos = any_model.to_str_tokens(text, prepend_bos=False)
    assert default.str_tokens[0] == any_model.tokenizer.bos_token and default.str_tokens[1:] == without_bos[:-1]
    assert paper.prompts[0].str_tokens == without_bos  # every token, the gold one included
    assert torch.equal(paper.prompts[0].candidates, torch.arange(len(without_bos)))
    assert paper.rows[0]["n_candidates"] == len(without_bos) and paper.protocol == "paper"


def test_counts_are_the_scripts_int_of_the_float_product():
    assert paper_top_k_counts(21, (0.05, 0.1, 0.2)) == [1, 2, 4]
    assert paper_top_k_counts(7, (0.05, 0.1, 0.2)) == [1, 1, 1]
    assert paper_top_k_counts(100, (0.29,)) == [28] and top_k_counts(100, (0.29,)) == [29]  # 100 * 0.29 = 28.999…


def test_which_tokens_are_ablated_ties_go_to_the_later_token_and_the_final_token_counts(any_model):
    scores = torch.zeros(20)
    scores[[1, 3]] = 5.0  # a tie: the scripts' reversed argsort takes position 3 first
    scores[2] = 3.0  # then 2; then the zeros, latest first: the final (gold) token 20, then 19
    report = evaluate_faithfulness(any_model, PASSAGE, {"fixed": fixed_scorer(scores)}, protocol="paper", progress=False)
    ablated = [positions.tolist() for positions in report.prompts[0].ablated["fixed"]]
    assert ablated == [[3], [3, 1], [3, 1, 2, 20]]  # L = 21: max(1, int(21 k)) = 1, 2, 4
    # The default protocol on the same passage: 20 candidates, ties to the earlier token.
    default = evaluate_faithfulness(any_model, PASSAGE, {"fixed": fixed_scorer(scores)}, progress=False)
    assert [p.tolist() for p in default.prompts[0].ablated["fixed"]] == [[1], [1, 3], [1, 3, 2, 0]]

    # Δ_k: token embeddings zeroed, positions kept; ablating the gold token changes nothing.
    context, row = PASSAGE[:-1], report.rows[0]
    original = reference_log_probabilities(any_model, context)
    predicted = int(original.argmax())
    for column, positions in zip(("delta_5", "delta_10", "delta_20"), ([3], [3, 1], [3, 1, 2])):
        expected = float(reference_log_probabilities(any_model, context, positions)[predicted] - original[predicted])
        assert row[column] == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_random_baseline_is_a_fresh_set_per_fraction_from_each_prompts_seeded_generator(any_model):
    # The scripts draw every passage's sets from one np.random.seed(42) generator, so a passage's
    # sets depend on every earlier passage's length; here each passage has its own generator
    # (seeded from the seed and its index), so a resumed run draws what an uninterrupted one does.
    prompts = [PASSAGE, SHORT_PASSAGE, PASSAGE[5:]]

    def draws(seed, tokens_list):
        return [
            [
                generator.choice(len(tokens), size=count, replace=False).tolist()
                for count in paper_top_k_counts(len(tokens), (0.05, 0.1, 0.2))
            ]
            for index, tokens in enumerate(tokens_list)
            for generator in [np.random.RandomState(prompt_seed(seed, index))]
        ]

    for seed, expected in ((None, draws(42, prompts)), (7, draws(7, prompts))):
        report = evaluate_faithfulness(any_model, prompts, ["random"], protocol="paper", seed=seed, progress=False)
        assert [[p.tolist() for p in evaluation.ablated["random"]] for evaluation in report.prompts] == expected
    assert draws(42, prompts) != draws(7, prompts)
    # A different first passage (another length) leaves the later passages' draws unchanged.
    other = evaluate_faithfulness(any_model, [PASSAGE[3:], *prompts[1:]], ["random"], protocol="paper", progress=False)
    assert [[p.tolist() for p in evaluation.ablated["random"]] for evaluation in other.prompts][1:] == draws(42, prompts)[1:]


def test_prompt_seed_depends_on_the_seed_and_the_prompt_index_only():
    assert prompt_seed(42, 3) == prompt_seed(42, 3) == int(np.random.SeedSequence([42, 3]).generate_state(1)[0])
    assert len({prompt_seed(seed, index) for seed in (0, 42) for index in range(50)}) == 100


# --------------------------------------------------------------------------------- the scripts' baselines
def test_gradient_x_input_and_integrated_gradients_are_the_scripts(any_model):
    context, gold = PASSAGE[:-1], int(PASSAGE[-1])
    embeddings = token_embeddings(any_model, context)

    def log_p_gold(logits):
        return torch.log_softmax(logits, -1)[gold]

    gradients = {alpha: reference_gradient(any_model, context, log_p_gold, alpha) for alpha in (0.2, 0.4, 0.6, 0.8, 1.0)}
    expected_gxi = (gradients[1.0] * embeddings).norm(dim=-1)
    # The α each step's gradient picks up from the scaling is kept: mean of α·∇f(α e), times e.
    expected_ig = (torch.stack(list(gradients.values())).mean(0) * embeddings).norm(dim=-1)
    torch.testing.assert_close(paper_gradient_x_input_scorer(any_model, context, gold).double(), expected_gxi, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(paper_integrated_gradients_scorer(any_model, context, gold).double(), expected_ig, rtol=1e-4, atol=1e-7)
    # Not the default protocol's: with learned position embeddings the choices differ a lot.
    for default, paper in ((gradient_x_input_scorer, expected_gxi), (integrated_gradients_scorer, expected_ig)):
        assert float((default(any_model, context, gold).double() - paper).norm() / paper.norm()) > 0.1


def test_leave_one_out_rank_percentage_over_every_token(any_model):
    scores = torch.tensor([0.1, 0.2, 9.0, 0.3, 0.4, 0.5, 0.6])  # the scorer's top: position 2
    report = evaluate_faithfulness(any_model, SHORT_PASSAGE, {"fixed": fixed_scorer(scores)}, protocol="paper", progress=False)
    context, n = SHORT_PASSAGE[:-1], len(SHORT_PASSAGE)
    original = reference_log_probabilities(any_model, context)
    kl = [scripts_kl(original, reference_log_probabilities(any_model, context, [t])) for t in range(n - 1)]
    kl.append(scripts_kl(original, original))  # the gold token: its ablation is a no-op
    ranking = [int(i) for i in np.argsort(np.array(kl), kind="stable")[::-1]]
    evaluation, row = report.prompts[0], report.rows[0]
    torch.testing.assert_close(evaluation.leave_one_out_kl.double(), torch.tensor(kl, dtype=torch.float64), rtol=1e-3, atol=1e-7)
    assert row["loo_rank_percentage"] == pytest.approx(100 * ranking.index(2) / n)
    assert row["loo_spearman"] == pytest.approx(spearman(torch.cat([scores, torch.zeros(1)]), torch.tensor(kl)), abs=1e-6)
    assert row["top_token"] == any_model.to_str_tokens(SHORT_PASSAGE)[2]
    assert "loo_rank_percentage" in report.summary()[0]


def test_leave_one_out_summary_uses_fisher_rank_4_and_the_logit_path_integral(any_model):
    context, gold = SHORT_PASSAGE[:-1], int(SHORT_PASSAGE[-1])
    report = evaluate_faithfulness(any_model, SHORT_PASSAGE, ["fisher", "integrated_gradients"], protocol="paper", progress=False)
    evaluation = report.prompts[0]
    torch.testing.assert_close(evaluation.scores["fisher"][:-1], fisher_scope(any_model, context, rank=1).scores)
    torch.testing.assert_close(evaluation.loo_scores["fisher"][:-1], fisher_scope(any_model, context, rank=4).scores)
    assert float(evaluation.scores["fisher"][-1]) == 0.0 == float(evaluation.loo_scores["fisher"][-1])

    alphas = [round(0.1 * i, 1) for i in range(1, 11)]
    embeddings = token_embeddings(any_model, context)
    # ∇ of the gold logit w.r.t. δ at α(e + δ), divided by α as the script does, averaged over
    # α, times the path's span x(1.0) - x(0.1).
    gradients = [reference_gradient(any_model, context, lambda logits: logits[gold], alpha) / alpha for alpha in alphas]
    expected = (torch.stack(gradients).mean(0) * (0.9 * embeddings)).norm(dim=-1)
    torch.testing.assert_close(evaluation.loo_scores["integrated_gradients"][:-1].double(), expected, rtol=1e-4, atol=1e-7)


def test_the_scripts_integrated_gradients_report_the_completeness_gap_of_the_path_they_sample(any_model):
    """The AOPC variant samples x(α) = α e + pos from α = 0 (token embeddings zeroed, position
    embeddings kept) to 1; the leave-one-out variant's ten nodes, weights 0.09, span α = 0.1 to 1."""
    context, gold = SHORT_PASSAGE[:-1], int(SHORT_PASSAGE[-1])
    report = evaluate_faithfulness(any_model, SHORT_PASSAGE, ["integrated_gradients", "semantic"], protocol="paper", progress=False)
    row, other = report.rows
    embeddings = token_embeddings(any_model, context)

    def logits_at(alpha):
        def scale(activation, hook):
            return alpha * activation

        with torch.no_grad(), any_model.hooks(fwd_hooks=[(token_embedding_hook(any_model), scale)]):
            return any_model(context[None])[0, -1].double()

    def log_p_gold(logits):
        return torch.log_softmax(logits, -1)[gold]

    steps = [reference_gradient(any_model, context, log_p_gold, alpha) for alpha in (0.2, 0.4, 0.6, 0.8, 1.0)]  # α·∇f each
    total = float((torch.stack(steps).mean(0) * embeddings).sum())
    change = float(log_p_gold(logits_at(1.0)) - log_p_gold(logits_at(0.0)))
    assert row["completeness_gap"] == pytest.approx(total - change, rel=1e-4, abs=1e-6)
    assert row["relative_completeness_gap"] == pytest.approx(abs(total - change) / abs(change), rel=1e-4)
    assert row["ig_evaluations"] == 5 and row["loo_ig_evaluations"] == 10

    alphas = [round(0.1 * i, 1) for i in range(1, 11)]
    steps = [reference_gradient(any_model, context, lambda logits: logits[gold], alpha) / alpha for alpha in alphas]
    total = float((torch.stack(steps).mean(0) * (0.9 * embeddings)).sum())
    change = float(logits_at(1.0)[gold] - logits_at(0.1)[gold])
    assert row["loo_completeness_gap"] == pytest.approx(total - change, rel=1e-4, abs=1e-6)
    assert other["completeness_gap"] is None and other["loo_completeness_gap"] is None


def test_paper_protocol_errors(any_model):
    with pytest.raises(ScopeInputError, match="protocol must be 'default' or 'paper'"):
        evaluate_faithfulness(any_model, SHORT_PASSAGE, ["random"], protocol="authors", progress=False)
    with pytest.raises(ScopeInputError, match=r"prompts\[0\] has 1 token"):
        evaluate_faithfulness(any_model, SHORT_PASSAGE[:1], ["random"], protocol="paper", progress=False)


def test_eval_command_takes_the_protocol(capsys, tmp_path):
    from jscopes_tl.cli import main

    prompts, path = tmp_path / "prompts.txt", tmp_path / "faithfulness.json"
    prompts.write_text("a=3 b=7 c=1 b=7\n")
    assert main(["eval", str(prompts), "--model", "recall", "--scorers", "random", "--protocol", "paper", "--json", str(path)]) == 0
    assert "loo_rank_percentage" in capsys.readouterr().out
    payload = json.loads(path.read_text())
    assert payload["protocol"] == "paper" and payload["rows"][0]["n_candidates"] == 4  # no BOS: a=3 b=7 c=1 b=7

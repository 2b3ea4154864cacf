"""integrated_gradients: captum's rules and numbers on the bundled models' own Hugging Face weights,
completeness of the adaptive default against a brute-force quadrature, warnings, precision, batching
over α, argument errors.

References here share no code with jscopes_tl: captum's ``IntegratedGradients`` and
``InputXGradient`` on a forward function of the residual-stream input ``x`` built from the Hugging
Face ``GPT2LMHeadModel`` (``inputs_embeds = x − wpe(positions)``, so captum's path is over the same
``x`` as ours), and a plain-autograd trapezoid on the same model.
"""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
from captum.attr import InputXGradient, IntegratedGradients
from captum.attr._utils.approximation_methods import approximation_parameters

from jscopes_tl import integrated_gradients, models
from jscopes_tl.adapter import ModelAdapter, hooked_transformer_available
from jscopes_tl.errors import NonFiniteScoresError, ScopeInputError
from jscopes_tl.faithfulness import gradient_x_input_scorer, paper_gradient_x_input_scorer
from jscopes_tl.quadrature import CAPTUM_METHODS, adaptive_rule, captum_rule, first_round_size, gauss_lobatto_rule
from jscopes_tl.toy import toy_model, toy_tokenizer

from conftest import hook_fingerprint, residual_input

RECALL_PROMPT = ["<bos>", "a=3", "b=7", "c=1", "b="]  # → "7"


@pytest.fixture(scope="module")
def recall64():
    """The bundled recall model in float64: the Hugging Face model and the TransformerLens one."""
    hf, tokenizer = models.load_hf("recall")
    model = copy.deepcopy(models.load("recall")).to(torch.float64)
    tokens = torch.tensor(tokenizer.convert_tokens_to_ids(RECALL_PROMPT))
    return hf.double(), model, tokens, tokenizer.convert_tokens_to_ids("7")


class HFPath:
    """``f(x) = log p(gold)`` at the last position of a Hugging Face GPT-2 as a function of the
    residual-stream input ``x`` ``[batch, pos, d_model]``, and that ``x`` for the prompt."""

    def __init__(self, hf, tokens: torch.Tensor, gold: int):
        self.hf, self.gold = hf, gold
        with torch.no_grad():
            self.wpe = hf.transformer.wpe(torch.arange(len(tokens)))
            self.x = hf.transformer.wte(tokens) + self.wpe

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.hf(inputs_embeds=x - self.wpe.to(x.dtype)).logits[:, -1]
        return torch.log_softmax(logits, dim=-1)[:, self.gold]

    def trapezoid(self, alphas: torch.Tensor) -> torch.Tensor:
        """Integrated Gradients from a zero baseline by the trapezoid rule on the nodes ``alphas``, in batches."""
        weights = torch.zeros_like(alphas)
        weights[:-1] += (alphas[1:] - alphas[:-1]) / 2
        weights[1:] += (alphas[1:] - alphas[:-1]) / 2
        integral = torch.zeros_like(self.x)
        for start in range(0, len(alphas), 1000):
            points = (alphas[start : start + 1000, None, None] * self.x).requires_grad_(True)
            (gradients,) = torch.autograd.grad(self(points).sum(), points)
            integral += (weights[start : start + 1000, None, None] * gradients).sum(0)
        return integral * self.x


# --------------------------------------------------------------------------------- the rules
@pytest.mark.parametrize("method", CAPTUM_METHODS)
@pytest.mark.parametrize("n_steps", [2, 7, 16])
def test_nodes_and_weights_are_captums(method, n_steps):
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # captum's Riemann nodes come from torch.linspace
    try:
        step_sizes, alphas = approximation_parameters(method)
        expected_weights, expected_alphas = step_sizes(n_steps), alphas(n_steps)
    finally:
        torch.set_default_dtype(default)
    nodes, weights = captum_rule(method, n_steps)
    np.testing.assert_allclose(nodes.numpy(), expected_alphas, rtol=0, atol=1e-15)
    np.testing.assert_allclose(weights.numpy(), expected_weights, rtol=0, atol=1e-15)


def test_captums_trapezoid_weights_sum_to_n_minus_1_over_n():
    assert float(captum_rule("riemann_trapezoid", 10)[1].sum()) == pytest.approx(0.9, abs=1e-15)


def test_gauss_lobatto_rule_is_exact_to_degree_2n_minus_3():
    nodes, weights = gauss_lobatto_rule(9)
    assert nodes[0] == 0.0 and nodes[-1] == 1.0 and float(nodes[4]) == pytest.approx(0.5, abs=1e-15)
    for degree in range(16):
        assert float((weights * nodes**degree).sum()) == pytest.approx(1 / (degree + 1), abs=1e-14)
    assert abs(float((weights * nodes**16).sum()) - 1 / 17) > 1e-11  # degree 16 is not exact


# --------------------------------------------------------------------------------- against captum
@pytest.mark.parametrize("method", CAPTUM_METHODS)
def test_attributions_and_gap_equal_captums_on_the_recall_models_weights(recall64, method):
    hf, model, tokens, gold = recall64
    f = HFPath(hf, tokens, gold)
    attributions, delta = IntegratedGradients(f).attribute(
        f.x[None], baselines=torch.zeros_like(f.x)[None], n_steps=16, method=method, return_convergence_delta=True
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 16 steps do not converge on this confident model
        result = integrated_gradients(model, tokens, target=gold, n_steps=16, method=method)
    assert result.attributions.dtype == torch.float64 and result.method == method
    # captum multiplies by its weights in float32 (torch.tensor(step_sizes).float()): exact for the
    # Riemann rules' 1/16 and 1/32, a 3e-8 relative rounding of Gauss–Legendre's.
    tolerance = 1e-6 if method == "gausslegendre" else 1e-10
    error = float((result.attributions - attributions[0]).norm() / attributions.norm())
    assert error <= tolerance, error
    assert result.completeness_gap == pytest.approx(float(delta), rel=tolerance, abs=1e-9)


def test_a_non_zero_baseline_equals_captums(recall64):
    hf, model, tokens, gold = recall64
    f = HFPath(hf, tokens, gold)
    baseline = 0.3 * f.x.flip(0) + 0.01  # another input: the tokens reversed, scaled and shifted
    attributions, delta = IntegratedGradients(f).attribute(
        f.x[None], baselines=baseline[None], n_steps=32, method="riemann_middle", return_convergence_delta=True
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = integrated_gradients(
            model, tokens, target=gold, baseline=baseline, n_steps=32, method="riemann_middle"
        )
    assert float((result.attributions - attributions[0]).norm() / attributions.norm()) <= 1e-10
    assert result.completeness_gap == pytest.approx(float(delta), rel=1e-10, abs=1e-9)
    with torch.no_grad():
        assert result.baseline_value == pytest.approx(float(f(baseline[None])), rel=1e-12)


def test_gradient_x_input_multiplies_by_the_residual_input_and_the_paper_variant_by_the_token_embedding(recall64):
    """Default gradient × input is captum's InputXGradient on the residual-stream input x (token +
    position embedding); the paper's is InputXGradient on ``inputs_embeds`` (the token embedding)."""
    hf, model, tokens, _ = recall64
    # Another value than the answer: log p(7) ≈ -3e-6 has gradients the scorers' float32 log-softmax rounds.
    gold = model.tokenizer.convert_tokens_to_ids("3")
    f = HFPath(hf, tokens, gold)
    def on_token_embedding(e: torch.Tensor) -> torch.Tensor:
        return f(e + f.wpe)

    def input_x_gradient(function, inputs: torch.Tensor) -> torch.Tensor:
        return InputXGradient(function).attribute(inputs[None].clone().requires_grad_(True))[0].norm(dim=-1)

    on_residual, on_embedding = input_x_gradient(f, f.x), input_x_gradient(on_token_embedding, f.x - f.wpe)
    context = tokens  # the scorers explain the prediction at the context's last position
    for scorer, expected in ((gradient_x_input_scorer, on_residual), (paper_gradient_x_input_scorer, on_embedding)):
        torch.testing.assert_close(scorer(model, context, gold).double(), expected, rtol=1e-4, atol=1e-9)
    assert float((on_residual - on_embedding).norm() / on_embedding.norm()) > 0.1  # not the same x


# --------------------------------------------------------------------------------- the adaptive default
@pytest.mark.parametrize("name", models.BUNDLED_MODELS)
def test_adaptive_default_converges_and_matches_a_brute_force_trapezoid(name):
    """On each bundled model (float32, as loaded; the shortest of three held-out prompts): relative
    gap within the default tolerance, and the attributions within 0.3 % (relative L2) of a float64
    trapezoid on 401 nodes graded as ``(k/400)³`` towards α = 0, where log p changes fastest (that
    reference's own error on these prompts is at most 3e-4, against 4,001 such nodes; the adaptive
    rule's at most 1e-3; a uniform grid of 4,001 nodes is off by up to 2 % on induction prompts)."""
    model = models.load(name)
    hf, tokenizer = models.load_hf(name)
    prompt = min(models.get_task(name).labelled_prompts(3, seed=5), key=lambda p: len(p.tokens))
    tokens = torch.tensor(tokenizer.convert_tokens_to_ids(prompt.tokens))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = integrated_gradients(model, tokens, target=prompt.answer)
    assert result.method == "adaptive" and result.attributions.dtype == torch.float32
    assert result.relative_completeness_gap <= 0.01 and result.converged
    path = HFPath(hf.double(), tokens, tokenizer.convert_tokens_to_ids(prompt.answer))
    reference = path.trapezoid(torch.linspace(0, 1, 401, dtype=torch.float64) ** 3)
    error = float((result.attributions.double() - reference).norm() / reference.norm())
    assert error <= 3e-3, f"{name}: {error:.1e}"


def test_coarse_fixed_rule_warns_and_the_adaptive_default_does_not():
    model = models.load("recall")
    with pytest.warns(UserWarning, match=r"completeness gap of .* above tolerance=0.01\); raise n_steps"):
        old = integrated_gradients(model, "a=3 b=7 c=1 b=", target="7", n_steps=5, method="riemann_right")
    assert not old.converged and old.relative_completeness_gap > 0.99  # the 5 nodes miss α < 0.01
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert integrated_gradients(model, "a=3 b=7 c=1 b=", target="7").converged


def test_adaptive_rule_warns_when_max_steps_stops_it():
    first = first_round_size()  # 3 linear panels on [1/4, 1], a log panel below and f(0): 34
    with pytest.warns(UserWarning, match=rf"raise max_steps \(now {first}\)"):
        result = integrated_gradients(models.load("recall"), "a=3 b=7 c=1 b=", target="7", max_steps=first)
    assert first == 34 and result.n_evaluations == first and result.n_rounds == 1


def test_n_steps_alone_means_gauss_legendre_and_a_method_alone_captums_50_steps(any_model):
    tokens = torch.tensor([0, 5, 9, 3])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        by_steps = integrated_gradients(any_model, tokens, n_steps=6)
        by_method = integrated_gradients(any_model, tokens, method="riemann_middle")
    assert by_steps.method == "gausslegendre" and len(by_steps.alphas) == 6 and by_steps.n_evaluations == 8
    assert by_method.method == "riemann_middle" and len(by_method.alphas) == 50 and by_method.n_rounds == 1
    torch.testing.assert_close(by_steps.alphas, captum_rule("gausslegendre", 6)[0])


def test_a_baseline_equal_to_the_input_gives_zero_attributions_and_no_warning(any_model):
    x = residual_input(any_model, torch.tensor([0, 5, 9, 3]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = integrated_gradients(any_model, torch.tensor([0, 5, 9, 3]), baseline=x)
    assert not result.attributions.any() and result.completeness_gap == 0.0 and result.converged


def test_float64_model_gives_float64_integrated_gradients():
    family = "hooked" if hooked_transformer_available() else "bridge"
    model = toy_model("gpt2", family=family, init_scale=0.3).to(torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 8 steps need not converge; only the dtype matters here
        result = integrated_gradients(model, torch.tensor([0, 5, 9, 3]), n_steps=8)
    assert result.attributions.dtype == result.scores.dtype == torch.float64


def test_each_refinement_round_is_one_forward_pass_over_all_its_nodes():
    model = models.load("recall")
    batch_sizes: list[int] = []

    def count(activation: torch.Tensor, hook) -> None:
        batch_sizes.append(activation.shape[0])

    adapter = ModelAdapter(model)
    with adapter.hooks([(adapter.resid_pre_hook(1), count)]):
        result = integrated_gradients(model, "a=3 b=7 c=1 b=", target="7")
    # One pass reads x (and the top-1 token), then one pass per round with all its nodes as a batch.
    assert len(batch_sizes) == 1 + result.n_rounds and batch_sizes[0] == 1
    assert sum(batch_sizes[1:]) == result.n_evaluations and result.n_rounds <= 8 < 50 <= result.n_evaluations
    assert len(result.alphas) <= result.n_evaluations and float(result.weights.sum()) == pytest.approx(1.0, abs=1e-12)


def test_a_round_split_into_memory_chunks_gives_the_same_integral(recall64):
    """A budget that fits about 7 nodes per forward pass: each chunk gets its own αs and the baseline."""
    _, model, tokens, gold = recall64
    options = dict(target=gold, baseline=torch.full((len(tokens), 64), 0.01, dtype=torch.float64), n_steps=24)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = integrated_gradients(model, tokens, **options)
        chunked = integrated_gradients(model, tokens, memory_budget_mb=1.0, **options)
    torch.testing.assert_close(chunked.attributions, whole.attributions, rtol=1e-12, atol=1e-15)
    assert chunked.completeness_gap == pytest.approx(whole.completeness_gap, rel=1e-12)


# --------------------------------------------------------------------------------- arguments, hygiene
BAD_ARGUMENTS = {
    "method": (dict(method="simpson"), "method"),
    "n_steps 0": (dict(n_steps=0), "n_steps"),
    "n_steps 1 riemann": (dict(n_steps=1, method="riemann_left"), "n_steps must be an int ≥ 2"),
    "n_steps float": (dict(n_steps=5.0), "n_steps"),
    "tolerance 0": (dict(tolerance=0), "tolerance"),
    "tolerance negative": (dict(tolerance=-0.1), "tolerance"),
    "max_steps": (dict(max_steps=10), "max_steps"),
    "objective": (dict(objective="loss"), "objective"),
    "baseline shape": (dict(baseline=torch.zeros(3, 32)), r"baseline must be a float tensor .* \[4, 32\]"),
    "baseline nan": (dict(baseline=float("nan")), "baseline"),
    "target contrast": (dict(target=(3, 4)), "target"),
    "position list": (dict(position=[1, 2]), "position"),
    "memory": (dict(memory_budget_mb=0), "memory_budget_mb"),
}


@pytest.mark.parametrize("case", BAD_ARGUMENTS)
def test_bad_arguments_raise_scope_input_error_naming_the_argument(any_model, case):
    options, message = BAD_ARGUMENTS[case]
    before = hook_fingerprint(any_model)
    with pytest.raises(ScopeInputError, match=message):
        integrated_gradients(any_model, torch.tensor([0, 5, 9, 3]), **options)
    assert hook_fingerprint(any_model) == before


def test_one_prompt_only(any_model):
    with pytest.raises(ScopeInputError, match="one prompt"):
        integrated_gradients(any_model, ["a b", "c d"])
    with pytest.raises(ScopeInputError, match="one prompt"):
        integrated_gradients(any_model, torch.tensor([[0, 5], [0, 6]]))


def test_the_model_is_left_as_it_was(any_model):
    before = hook_fingerprint(any_model)
    integrated_gradients(any_model, torch.tensor([0, 5, 9, 3]), target=7)
    assert hook_fingerprint(any_model) == before


# --------------------------------------------------------------------------------- the end at the baseline
def zero_bias_gpt2(n_layers: int, init: float):
    """A freshly initialised GPT-2 (Hugging Face's own initialisation: every bias 0, LayerNorm gains
    1), d_model 64: from a zero baseline every LayerNorm sees an input of zero variance at α = 0,
    and ∇f grows like a product of 1/√eps gains as α → 0 (module docstring of path_integrals)."""
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=n_layers, n_embd=64, n_head=4, vocab_size=1000, n_positions=64, n_ctx=64, initializer_range=init,
        bos_token_id=0, eos_token_id=0,
    )
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def transformer_lens_model(hf):
    """The installed TransformerLens's model of ``hf``, with no weight processing (so that its
    residual-stream input is Hugging Face's wte + wpe)."""
    from jscopes_tl.adapter import bridge_from_hf_model, hooked_transformer_from_hf_model

    hf = copy.deepcopy(hf)
    if hooked_transformer_available():
        return hooked_transformer_from_hf_model(  # a tokenizer, or HookedTransformer looks one up on the hub
            hf, tokenizer=toy_tokenizer(), fold_ln=False, center_writing_weights=False, center_unembed=False,
            fold_value_biases=False,
        )
    return bridge_from_hf_model(hf)


def hf_objective(hf, tokens: torch.Tensor):
    """``f`` = log p(the top-1 token at the last position) of the Hugging Face model as a function of
    its residual-stream input ``points`` ``[batch, pos, d_model]``, which replaces the embeddings'
    output in a forward hook (no x − wpe + wpe cancellation at tiny α), and that input ``x``."""
    with torch.no_grad():
        x = hf.transformer.wte(tokens) + hf.transformer.wpe(torch.arange(len(tokens)))
        gold = int(hf(tokens[None]).logits[0, -1].argmax())

    def f(points: torch.Tensor) -> torch.Tensor:
        handle = hf.transformer.drop.register_forward_hook(lambda module, args, output: points)
        try:
            logits = hf(tokens.expand(len(points), -1)).logits[:, -1]
        finally:
            handle.remove()
        return torch.log_softmax(logits, dim=-1)[:, gold]

    return f, x


def log_graded_reference(hf, tokens: torch.Tensor, smallest: float = 1e-60, n_nodes: int = 3001):
    """Integrated Gradients from a zero baseline on the Hugging Face model in float64, by the
    trapezoid rule in t = ln α on [ln smallest, 0] (∫ ∇f dα = ∫ α ∇f dt) plus smallest · ∇f(smallest)
    for [0, smallest] (``hf_objective``). Returns the attributions, f(x) and f(0)."""
    f, x = hf_objective(copy.deepcopy(hf).double(), tokens)
    t = torch.linspace(math.log(smallest), 0.0, n_nodes, dtype=torch.float64)
    integrand = torch.empty(n_nodes, *x.shape, dtype=torch.float64)  # α ∇f(α x)
    for start in range(0, n_nodes, 500):
        alphas = t[start : start + 500].exp()[:, None, None]
        points = (alphas * x).requires_grad_(True)
        (gradients,) = torch.autograd.grad(f(points).sum(), points)
        integrand[start : start + 500] = alphas * gradients
    step = float(t[1] - t[0])
    integral = step * (integrand[1:-1].sum(0) + (integrand[0] + integrand[-1]) / 2) + integrand[0]
    with torch.no_grad():
        return integral * x, float(f(x[None])), float(f(torch.zeros_like(x)[None]))


CASCADE_TOKENS = torch.tensor([5, 812, 33, 407, 96, 250, 611, 18, 777, 42, 301, 9])


def test_a_zero_baseline_on_a_zero_bias_model_converges_to_a_log_graded_reference():
    """The case that used to stop with NonFiniteScoresError: ∇f at α = 0 is ~1e23, so its square (the
    engine's squared score) overflows float32. The adaptive rule never uses ∇f at α = 0, follows
    the path in ln α towards the baseline, and agrees with an independent float64 reference."""
    hf = zero_bias_gpt2(6, 0.1)
    model = transformer_lens_model(hf)
    f, x = hf_objective(hf, CASCADE_TOKENS)  # float32, as the model
    at_zero = torch.zeros_like(x[None], requires_grad=True)
    (gradient_at_zero,) = torch.autograd.grad(f(at_zero).sum(), at_zero)
    assert float(gradient_at_zero.norm()) > math.sqrt(torch.finfo(torch.float32).max)  # the premise
    torch.testing.assert_close(residual_input(model, CASCADE_TOKENS), x)  # the same x

    reference, value, baseline_value = log_graded_reference(hf, CASCADE_TOKENS)
    assert abs(float(reference.sum()) - (value - baseline_value)) < 1e-3  # the reference is complete
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = integrated_gradients(model, CASCADE_TOKENS)
    assert result.converged and torch.isfinite(result.attributions).all()
    assert 0.0 not in result.alphas.tolist() and float(result.alphas.min()) < 1e-20  # followed far down
    assert result.baseline_value == pytest.approx(baseline_value, abs=1e-5)
    error = float((result.attributions.double() - reference).norm() / reference.norm())
    assert error < 1e-3, error


def test_where_the_gradient_overflows_float32_the_warning_says_so_and_float64_converges():
    hf = zero_bias_gpt2(8, 0.2)  # ∇f overflows float32 within 1e-37 of the baseline
    model = transformer_lens_model(hf)
    with pytest.warns(UserWarning, match=r"closer to the baseline than α = .* where float32 stops \(the gradient "
                      r"overflows it.*a float64 copy of the model"):
        result = integrated_gradients(model, CASCADE_TOKENS)
    assert not result.converged and torch.isfinite(result.attributions).all()
    with pytest.raises(NonFiniteScoresError, match=r"riemann_left has a node at α = 0.*adaptive rule"):
        integrated_gradients(model, CASCADE_TOKENS, n_steps=8, method="riemann_left")
    reference, _, _ = log_graded_reference(hf, CASCADE_TOKENS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        in_float64 = integrated_gradients(copy.deepcopy(model).to(torch.float64), CASCADE_TOKENS)
    assert in_float64.converged
    assert float((in_float64.attributions - reference).norm() / reference.norm()) < 1e-3


def cascade(depth: int):
    """A one-dimensional f(α) = Σ_k atan(α·10^(2k)) / depth, k < depth: a feature every two decades
    down to 10^(2 − 2·depth), and ∇f(0) = Σ 10^(2k) / depth; x − x₀ = 1."""
    scales = [10.0 ** (2 * k) for k in range(depth)]

    def evaluate(alphas):
        gradients = {a: torch.tensor([sum(s / (1 + (a * s) ** 2) for s in scales) / depth], dtype=torch.float64)
                     for a in alphas}
        return gradients, {a: sum(math.atan(a * s) for s in scales) / depth for a in alphas}

    return evaluate


def test_the_adaptive_rule_follows_the_path_down_the_decades_it_needs():
    evaluate = cascade(40)  # features down to 1e-78
    integral = adaptive_rule(evaluate, torch.ones(1, dtype=torch.float64), 0.01, 4096, lambda values: 1.0)
    _, values = evaluate([1.0, 0.0])
    assert abs(float(integral.gradient_sum) - (values[1.0] - values[0.0])) < 1e-3  # within tolerance/10
    # as far as the deepest feature and at most 16 decades (one extension) more, in 2, 4, 8, 16, 16, ... decades a round
    assert 1e-96 <= min(integral.rule) < 1e-78 and integral.stopped_at is None
    assert integral.n_rounds <= 10


def test_an_infinite_gradient_at_the_baseline_is_never_used():
    def evaluate(alphas):
        gradients, values = cascade(3)(alphas)
        return {a: torch.tensor([math.inf]) if a == 0.0 else g for a, g in gradients.items()}, values

    integral = adaptive_rule(evaluate, torch.ones(1, dtype=torch.float64), 0.01, 1024, lambda values: 1.0)
    assert math.isfinite(float(integral.gradient_sum)) and 0.0 not in integral.rule and 0.0 in integral.values


def test_a_non_finite_gradient_away_from_the_baseline_is_an_error_naming_alpha():
    def evaluate(alphas):
        gradients, values = cascade(3)(alphas)
        return {a: torch.tensor([math.nan]) if a == 0.5 else g for a, g in gradients.items()}, values

    with pytest.raises(NonFiniteScoresError, match=r"gradient at α = 0.5 on the path"):
        adaptive_rule(evaluate, torch.ones(1, dtype=torch.float64), 0.01, 1024, lambda values: 1.0)


def test_the_end_stops_at_the_smallest_alpha_and_says_so():
    integral = adaptive_rule(
        cascade(40), torch.ones(1, dtype=torch.float64), 0.01, 4096, lambda values: 1.0, smallest=1e-20
    )
    assert integral.stopped_at == 1e-20 and integral.stopped_because == "precision"
    assert min(integral.rule) == 1e-20

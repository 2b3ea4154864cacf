"""Faithfulness of token attributions: AOPC under ablation and agreement with leave-one-out.

An attribution method is *faithful* when the tokens it ranks highest are the ones the prediction
actually depends on. Following Jacobian Scopes (arXiv 2601.16407, §faithfulness), two checks:

**AOPC** (area over the perturbation curve; DeYoung et al., 2020). Each prompt's final token is the
one predicted, so the prediction is read at the second-to-last position ``p`` and the *context*
is the tokens up to and including ``p``. Rank the context tokens by score, ablate the top
``n = max(1, ⌊n_candidates · k⌋)`` for ``k ∈ {5 %, 10 %, 20 %}`` and record

    Δ_k = log p_ablated(ŷ) - log p_orig(ŷ)

for the model's original top-1 prediction ``ŷ`` at ``p``. AOPC is the trapezoid over ``k``,
``0.025·Δ5 + 0.075·Δ10 + 0.05·Δ20`` for the default fractions: the more negative, the more the
top-ranked tokens mattered, the more faithful the ranking.

**Leave-one-out agreement.** Ablate each context token alone and measure
``KL(p_orig ‖ p_LOO)`` at ``p``: a direct (but ``n``-forward) measure of each token's influence.
Report Spearman's ρ between a scorer's scores and the LOO divergences, and the LOO percentile of
the scorer's top token (the fraction of candidates whose LOO divergence is at most that token's:
1.0 when the scorer's favourite is also LOO's).

Ablation (``ablation=``):

* ``"zero"`` (default, the paper's): the token embedding (``hook_embed``) of an ablated token is
  set to zero; the token keeps its position (positional embeddings, rotary phases), and the
  attention mask is unchanged.
* ``"pad"``: the token is replaced by the tokenizer's pad token (else EOS, else BOS), i.e. its
  embedding by the pad token's embedding.

Ablation candidates are the context tokens except a leading BOS: position 0 is excluded when it
holds the tokenizer's BOS token, because ablating the attention sink measures a disruption of the
model rather than a dependence on content. Without a tokenizer (token-id prompts on a model with
none) nothing is excluded.

Scorers are functions ``(model, context_tokens [pos], gold_token_id) -> scores [pos]`` for the
prediction at the context's last position; a scorer may instead return a :class:`ScorerOutput`,
the scores with diagnostics that become columns of its rows. Built in: the three Jacobian Scopes
(Semantic reads the logit of the gold token; Fisher at rank 1), gradient × input and Integrated
Gradients (both on ``log p(gold)``, scored as the L2 norm over ``d_model`` of the per-dimension
attribution), and random scores. Both gradient baselines take ``x``, the point the scopes perturb:
the residual stream entering block 0, i.e. token + position embedding on GPT-2 (captum's
``InputXGradient`` on a Hugging Face model's ``inputs_embeds`` multiplies by the token embedding
alone: the paper protocol's variant below). Integrated Gradients is
:func:`jscopes_tl.path_integrals.integrated_gradients` from a zero baseline with its adaptive rule
(completeness gap within 1 % of ``f(x) − f(0)``), and its rows report ``completeness_gap``,
``relative_completeness_gap`` and ``ig_evaluations`` (``DIAGNOSTIC_COLUMNS``; None for the
other scorers). All ablated forwards of one prompt (every scorer × fraction, every leave-one-out,
the original) run as one batch.

Each prompt is evaluated alone (:func:`evaluate_prompt`), and its random draws (the random
scorer, the paper's random sets) come from a generator seeded from the run's seed and the prompt's
index (:func:`prompt_seed`): a prompt's rows never depend on the prompts evaluated before it, so
:func:`jscopes_tl.runs.run_faithfulness` can write them to disk, resume and split them over ranks
and still give the rows of one uninterrupted in-memory evaluation.

**Two protocols** (``protocol=``). ``"default"`` is the above. ``"paper"`` reproduces the
authors' benchmark scripts (``paper/benchmarks/AOPC_multi_method_benchmarks.py`` and
``LAMBADA_LOO_benchmarks.py`` in their repository) choice by choice, so that numbers can be put
next to the paper's table:

* text is tokenised *without* BOS; the passage's last token is the gold token, predicted at the
  second-to-last position;
* *all* ``L`` tokens of the passage are ranked, the last one included (it cannot affect the
  prediction; it gets the score 0 that any gradient gives it), and ``max(1, int(L·k))`` are
  ablated, ties broken in reversed-argsort order (the later token first);
* ablation zeroes the token embedding (position embeddings kept), as by default;
* the random baseline draws a fresh random set for each fraction from all ``L`` tokens
  (``numpy.random.RandomState.choice`` as in the scripts, seed 42 by default); unlike the scripts,
  whose one generator for the run made each passage's sets depend on every earlier passage's
  length, each passage draws from its own generator (:func:`prompt_seed`), so that a resumed or
  data-parallel run (:func:`jscopes_tl.runs.run_faithfulness`) draws what an uninterrupted one does;
* gradient × input multiplies by the *token* embedding only, and "Integrated Gradients" adds the
  perturbation before the ``α`` scaling of the token embeddings, i.e. averages ``α·∇f(αx)`` over
  ``α ∈ {0.2, …, 1.0}`` (``f = log p(gold)``), times the token embedding ``e``. Its rows report
  the completeness gap of the path those steps sample, ``x(α) = α e + pos`` from ``α = 0`` (token
  embeddings zeroed, position embeddings kept) to 1: ``Σ attributions − (f(e + pos) − f(pos))``.
  Its weights ``α/5`` sum to 0.6 and put no node below ``α = 0.2``, so on a confident model the gap
  is most of ``f(x) − f(pos)`` (kept as the authors define it: the gap says how far it is from
  the integral);
* the leave-one-out summary is the rank percentage (0 = best) of the scorer's top token among
  the LOO-KL ranking of all ``L`` tokens (``KL`` with probabilities clamped at 1e-10), and for it
  Fisher runs at rank 4 and "Integrated Gradients" is the script's logit-based variant: the
  gradient of the gold logit at ``α·x`` for ``α ∈ {0.1, …, 1.0}``, averaged, times ``0.9·x``, a
  ten-node rule (weights 0.09) for the path from ``α = 0.1`` to 1, whose gap against
  ``logit(e + pos) − logit(0.1 e + pos)`` the rows report as ``loo_completeness_gap``,
  ``loo_relative_completeness_gap`` and ``loo_ig_evaluations``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import torch
from jaxtyping import Bool, Float, Int

from jscopes_tl.adapter import ModelAdapter
from jscopes_tl.errors import ScopeInputError
from jscopes_tl.inputs import prepare_tokens
from jscopes_tl.path_integrals import Objective, integrated_gradients, objective_values
from jscopes_tl.quadrature import completeness_scale
from jscopes_tl.scopes import fisher_scope, semantic_scope, temperature_scope
from jscopes_tl.stats import spearman


@dataclass(frozen=True)
class ScorerOutput:
    """What a scorer may return instead of bare scores: the scores ``[pos]`` and diagnostics of
    this prompt's scores (numbers or None by name, e.g. an integral's completeness gap), which
    become columns of the prompt's row (``DIAGNOSTIC_COLUMNS`` for the built-in ones).

    Example:
        >>> passages = ["a=3 b=7 c=1 b= 7"]                       # its last token, 7, is the gold
        >>> from jscopes_tl.faithfulness import ScorerOutput
        >>> def flat(model, context, gold):                       # a custom scorer with a diagnostic column
        ...     return ScorerOutput(torch.ones(len(context)), {"note": 1})
        >>> evaluate_faithfulness(model, passages, scorers={"flat": flat}, progress=False).rows[0]["note"]
        1
    """

    scores: Float[torch.Tensor, " pos"]
    diagnostics: dict[str, Union[float, int, None]] = field(default_factory=dict)


Scorer = Callable[[Any, Int[torch.Tensor, " pos"], int], Union[Float[torch.Tensor, " pos"], ScorerOutput]]
Ablation = Literal["zero", "pad"]
Protocol = Literal["default", "paper"]
Prompts = Union[str, Int[torch.Tensor, "..."], Sequence[Union[str, Int[torch.Tensor, " pos"]]]]

DEFAULT_FRACTIONS = (0.05, 0.10, 0.20)
DEFAULT_SCORERS = ("semantic", "fisher", "temperature", "gradient_x_input", "integrated_gradients", "random")
# The authors' scripts: the random seed of the AOPC run and its Integrated Gradients steps, the
# leave-one-out run's Fisher rank and its logit-based Integrated Gradients path, and the
# probability floor of its KL divergence.
PAPER_SEED = 42
PAPER_INTEGRATED_GRADIENTS_ALPHAS = (0.2, 0.4, 0.6, 0.8, 1.0)
PAPER_LOO_FISHER_RANK = 4
PAPER_LOO_INTEGRATED_GRADIENTS_ALPHAS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
PAPER_KL_FLOOR = 1e-10
# The diagnostics the built-in Integrated Gradients scorers report, a column each in every row
# (None for the other scorers): Σ attributions − (f(x) − f(x₀)), its size relative to
# |f(x) − f(x₀)| (jscopes_tl.quadrature.completeness_scale), and the gradient evaluations used.
DIAGNOSTIC_COLUMNS: dict[str, type] = {
    "completeness_gap": float, "relative_completeness_gap": float, "ig_evaluations": int,
}


# --------------------------------------------------------------------------------- scorers
def semantic_scorer(model: Any, context: Int[torch.Tensor, " pos"], gold: int) -> Float[torch.Tensor, " pos"]:
    """Semantic Scope of the gold token's logit: ``‖W_U[:, gold]^T J_t‖``."""
    return semantic_scope(model, context, target=gold).scores


def fisher_scorer(model: Any, context: Int[torch.Tensor, " pos"], gold: int) -> Float[torch.Tensor, " pos"]:
    """Fisher Scope at rank 1 (the paper's default): ``λ_1 ‖u_1^T J_t‖²``."""
    return fisher_scope(model, context, rank=1).scores


def temperature_scorer(model: Any, context: Int[torch.Tensor, " pos"], gold: int) -> Float[torch.Tensor, " pos"]:
    """Temperature Scope: ``‖ŷ^T J_t‖``."""
    return temperature_scope(model, context).scores


def _log_probability_of(model: Any, gold: int) -> Callable[[torch.Tensor], torch.Tensor]:
    adapter = ModelAdapter(model)

    def log_probability(y: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(adapter.logits(y).float(), dim=-1)[:, gold]

    return log_probability


def _input_embeddings(model: Any, context: torch.Tensor) -> Float[torch.Tensor, "pos d_model"]:
    adapter = ModelAdapter(model)
    hook = adapter.perturbation_hook(0)  # where the scopes' gradients are taken
    return adapter.capture(context[None], [hook])[hook][0].float().cpu()


def gradient_x_input_scorer(model: Any, context: Int[torch.Tensor, " pos"], gold: int) -> Float[torch.Tensor, " pos"]:
    """``‖∂log p(gold)/∂x_t ⊙ x_t‖₂`` (the loss is the gold token's cross-entropy; its sign is irrelevant).

    ``x_t`` is the input the scopes perturb: the residual stream entering block 0, i.e. token
    *plus position* embedding on GPT-2-style models (the token embedding alone on rotary ones).
    captum's ``InputXGradient`` on a Hugging Face model's ``inputs_embeds`` multiplies by the token
    embedding alone; that is :func:`paper_gradient_x_input_scorer`. The two agree when captum's
    forward function takes the residual-stream input (``inputs_embeds = x − wpe(positions)``).
    """
    gradients = semantic_scope(model, context, target=_log_probability_of(model, gold), return_gradients=True).gradients
    return (gradients * _input_embeddings(model, context)).norm(dim=-1)


def integrated_gradients_scorer(model: Any, context: Int[torch.Tensor, " pos"], gold: int) -> Float[torch.Tensor, " pos"]:
    """Integrated Gradients of ``log p(gold)`` from a zero baseline, ``‖IG_t‖₂`` over ``d_model``,
    with the adaptive rule that converges (:func:`jscopes_tl.path_integrals.integrated_gradients`:
    completeness gap within 1 % of ``f(x) − f(0)``). The evaluation's built-in scorer also reports
    the gap and the evaluations used in each row.

    Example:
        >>> from jscopes_tl.faithfulness import integrated_gradients_scorer
        >>> tokens = model.to_tokens(prompt)[0]
        >>> integrated_gradients_scorer(model, tokens, model.to_single_token("7")).shape      # [pos]
        torch.Size([5])
    """
    return _integrated_gradients_output(model, context, gold).scores


def _integrated_gradients_output(model: Any, context: Int[torch.Tensor, " pos"], gold: int) -> ScorerOutput:
    result = integrated_gradients(model, context, target=gold)
    return integral_output(
        result.scores, result.completeness_gap, result.relative_completeness_gap, result.n_evaluations
    )


def integral_output(
    scores: Float[torch.Tensor, " pos"], completeness_gap: float, relative_completeness_gap: float, n_evaluations: int
) -> ScorerOutput:
    """The scores of a path integral with its ``DIAGNOSTIC_COLUMNS``."""
    return ScorerOutput(scores, {
        "completeness_gap": completeness_gap,
        "relative_completeness_gap": relative_completeness_gap,
        "ig_evaluations": n_evaluations,
    })


def prompt_seed(seed: int, prompt_id: int) -> int:
    """The seed of one prompt's random draws, a function of the run's ``seed`` and the prompt's
    index only (``numpy.random.SeedSequence([seed, prompt_id])``): a prompt draws the same whichever
    prompts ran before it in this process, so resumed and data-parallel runs draw what one
    uninterrupted run does.

    Example:
        >>> from jscopes_tl.faithfulness import prompt_seed
        >>> prompt_seed(0, 7) == prompt_seed(0, 7), prompt_seed(0, 7) == prompt_seed(0, 8)
        (True, False)
    """
    import numpy as np

    return int(np.random.SeedSequence([seed, prompt_id]).generate_state(1)[0])


@dataclass(frozen=True)
class RandomScorer:
    """Uniform random scores, the baseline: a fresh draw per prompt, reproducible from ``seed``
    and the prompt's index (:func:`prompt_seed`; :func:`evaluate_faithfulness` passes the index).

    Example:
        >>> passages = ["a=3 b=7 c=1 b= 7"]                       # its last token, 7, is the gold
        >>> from jscopes_tl.faithfulness import random_scorer
        >>> scorer = random_scorer(seed=1)
        >>> report = evaluate_faithfulness(model, passages, scorers={"random": scorer}, progress=False)
        >>> scorer.seed, report.prompts[0].scores["random"].shape
        (1, torch.Size([5]))
    """

    seed: int = 0

    def __call__(
        self, model: Any, context: Int[torch.Tensor, " pos"], gold: int, prompt_id: int = 0
    ) -> Float[torch.Tensor, " pos"]:
        generator = torch.Generator().manual_seed(prompt_seed(self.seed, prompt_id))
        return torch.rand(len(context), generator=generator)


def random_scorer(seed: int = 0) -> RandomScorer:
    """Uniform random scores (a fresh draw per prompt, reproducible from ``seed``): the baseline.

    Example:
        >>> passages = ["a=3 b=7 c=1 b= 7"]                       # its last token, 7, is the gold
        >>> from jscopes_tl.faithfulness import random_scorer
        >>> report = evaluate_faithfulness(model, passages, scorers={"random": random_scorer(seed=1)}, progress=False)
        >>> report.rows[0]["scorer"], report.rows[0]["aopc"] > -1
        ('random', True)
    """
    return RandomScorer(seed)


# ------------------------------------------------------------------ the authors' scorer variants
def _token_embeddings(model: Any, context: torch.Tensor) -> Float[torch.Tensor, "pos d_model"]:
    adapter = ModelAdapter(model)
    hook = adapter.token_embedding_hook
    return adapter.capture(context[None], [hook])[hook][0].float().cpu()


def _gradients_at_scaled_token_embeddings(
    model: Any, context: torch.Tensor, target: Any, alpha: float
) -> Float[torch.Tensor, "pos d_model"]:
    """``∇_x target`` at the input whose *token* embeddings are scaled by ``α`` (position
    embeddings kept), as the authors' scripts scale ``inputs_embeds``."""
    adapter = ModelAdapter(model)

    def scale(activation: torch.Tensor, hook: Any) -> torch.Tensor:
        return activation * alpha

    with adapter.hooks([(adapter.token_embedding_hook, scale)] if alpha != 1.0 else []):
        return semantic_scope(model, context, target=target, return_gradients=True).gradients


def paper_gradient_x_input_scorer(
    model: Any, context: Int[torch.Tensor, " pos"], gold: int
) -> Float[torch.Tensor, " pos"]:
    """The scripts' gradient × input: ``‖∂log p(gold)/∂x_t ⊙ e_t‖₂``, ``e_t`` the token embedding alone."""
    gradients = _gradients_at_scaled_token_embeddings(model, context, _log_probability_of(model, gold), 1.0)
    return (gradients * _token_embeddings(model, context)).norm(dim=-1)


def paper_integrated_gradients_scorer(
    model: Any, context: Int[torch.Tensor, " pos"], gold: int
) -> Float[torch.Tensor, " pos"]:
    """The scripts' "Integrated Gradients": the perturbation is added to the token embedding
    before it is scaled by ``α``, so each step's gradient is ``α·∇f(α e + pos)``;
    ``‖e_t ⊙ mean_α α·∇f‖₂`` over ``α ∈ {0.2, …, 1.0}``, ``f = log p(gold)``.

    Example:
        >>> from jscopes_tl.faithfulness import paper_integrated_gradients_scorer
        >>> tokens = model.to_tokens(prompt)[0]
        >>> paper_integrated_gradients_scorer(model, tokens, model.to_single_token("7")).shape   # [pos]
        torch.Size([5])
    """
    return _paper_integrated_gradients_output(model, context, gold).scores


def _paper_integrated_gradients_output(model: Any, context: Int[torch.Tensor, " pos"], gold: int) -> ScorerOutput:
    target = _log_probability_of(model, gold)
    gradients = [
        alpha * _gradients_at_scaled_token_embeddings(model, context, target, alpha)
        for alpha in PAPER_INTEGRATED_GRADIENTS_ALPHAS
    ]
    attributions = torch.stack(gradients).mean(0) * _token_embeddings(model, context)
    # The path these steps sample runs from the token embeddings zeroed (α = 0) to the input.
    return _paper_path_output(model, context, attributions, gold, "log_probability", (0.0, 1.0), len(gradients))


def _paper_path_output(
    model: Any,
    context: Int[torch.Tensor, " pos"],
    attributions: Float[torch.Tensor, "pos d_model"],
    gold: int,
    objective: Objective,
    ends: tuple[float, float],
    n_evaluations: int,
) -> ScorerOutput:
    """The scripts' attributions ``[pos, d_model]`` as scores, with the completeness gap of the path
    they sample, ``x(α) = α e + pos`` (token embeddings scaled, position embeddings kept) from
    ``α = ends[0]`` to ``ends[1]``: ``Σ attributions − (f(x(ends[1])) − f(x(ends[0])))``."""
    start, end = (_value_at_scaled_token_embeddings(model, context, gold, objective, alpha) for alpha in ends)
    gap = float(attributions.double().sum()) - (end - start)
    relative = abs(gap) / completeness_scale(end, start, dtype=attributions.dtype)
    return integral_output(attributions.norm(dim=-1), gap, relative, n_evaluations)


def _value_at_scaled_token_embeddings(
    model: Any, context: torch.Tensor, gold: int, objective: Objective, alpha: float
) -> float:
    """``f`` (the gold token's log-probability or logit) with the token embeddings scaled by ``α``."""
    adapter = ModelAdapter(model)

    def scale(activation: torch.Tensor, hook: Any) -> torch.Tensor:
        return activation * alpha

    with adapter.eval_mode(), torch.no_grad(), adapter.hooks([(adapter.token_embedding_hook, scale)]):
        logits = adapter.forward(context[None])[:, -1]
    return float(objective_values(logits, gold, objective)[0])


def paper_loo_fisher_scorer(
    model: Any, context: Int[torch.Tensor, " pos"], gold: int
) -> Float[torch.Tensor, " pos"]:
    """Fisher Scope at rank 4, as in the leave-one-out script."""
    return fisher_scope(model, context, rank=PAPER_LOO_FISHER_RANK).scores


def paper_loo_integrated_gradients_scorer(
    model: Any, context: Int[torch.Tensor, " pos"], gold: int
) -> Float[torch.Tensor, " pos"]:
    """The leave-one-out script's path-integrated Semantic Scope: the gradient of the gold
    *logit* at token embeddings scaled by ``α ∈ {0.1, …, 1.0}`` (the script divides out the
    ``α`` its perturbation picks up), averaged, times the path's span ``(1.0 - 0.1)·e_t``."""
    return _paper_loo_integrated_gradients_output(model, context, gold).scores


def _paper_loo_integrated_gradients_output(model: Any, context: Int[torch.Tensor, " pos"], gold: int) -> ScorerOutput:
    alphas = PAPER_LOO_INTEGRATED_GRADIENTS_ALPHAS
    gradients = [_gradients_at_scaled_token_embeddings(model, context, gold, alpha) for alpha in alphas]
    attributions = torch.stack(gradients).mean(0) * ((alphas[-1] - alphas[0]) * _token_embeddings(model, context))
    # Ten nodes, weights 0.09 each: a rule for the path from α = 0.1 to 1.0, the span it multiplies by.
    return _paper_path_output(model, context, attributions, gold, "logit", (alphas[0], alphas[-1]), len(gradients))


@dataclass(frozen=True)
class _ProtocolScorer:
    """What one named scorer contributes under a protocol: the scores that rank tokens for
    ablation, those compared with leave-one-out, and whether its ablated sets are instead fresh
    random draws (the paper's random baseline)."""

    aopc: Scorer
    loo: Scorer
    random_sets: bool = False


def _protocol_scorers(
    scorers: dict[str, Scorer], protocol: Protocol, by_name: bool
) -> dict[str, _ProtocolScorer]:
    if protocol == "default" or not by_name:
        return {name: _ProtocolScorer(scorer, scorer) for name, scorer in scorers.items()}
    paper = {
        "gradient_x_input": _ProtocolScorer(paper_gradient_x_input_scorer, paper_gradient_x_input_scorer),
        "integrated_gradients": _ProtocolScorer(
            _paper_integrated_gradients_output, _paper_loo_integrated_gradients_output
        ),
        "fisher": _ProtocolScorer(fisher_scorer, paper_loo_fisher_scorer),
    }
    return {
        name: paper.get(name, _ProtocolScorer(scorer, scorer, random_sets=name == "random"))
        for name, scorer in scorers.items()
    }


def builtin_scorers(seed: int = 0) -> dict[str, Scorer]:
    """The scorers of the paper's faithfulness table, by name (Integrated Gradients returns a
    :class:`ScorerOutput`, with its completeness gap).

    Example:
        >>> from jscopes_tl.faithfulness import builtin_scorers
        >>> sorted(builtin_scorers())
        ['fisher', 'gradient_x_input', 'integrated_gradients', 'random', 'semantic', 'temperature']
    """
    return {
        "semantic": semantic_scorer,
        "fisher": fisher_scorer,
        "temperature": temperature_scorer,
        "gradient_x_input": gradient_x_input_scorer,
        "integrated_gradients": _integrated_gradients_output,
        "random": random_scorer(seed),
    }


def _resolve_scorers(scorers: Sequence[str] | Mapping[str, Scorer], seed: int) -> dict[str, Scorer]:
    if isinstance(scorers, Mapping):
        if not scorers or not all(isinstance(name, str) and callable(f) for name, f in scorers.items()):
            raise ScopeInputError("scorers must map names to callables (model, context_tokens, gold_id) -> scores [pos].")
        return dict(scorers)
    available = builtin_scorers(seed)
    if isinstance(scorers, str) or not scorers:
        raise ScopeInputError(f"scorers must be a non-empty list of names from {sorted(available)} or a dict of callables; got {scorers!r}.")
    unknown = [name for name in scorers if name not in available]
    if unknown:
        raise ScopeInputError(f"unknown scorer {unknown[0]!r}; the built-in scorers are {sorted(available)}.")
    return {name: available[name] for name in scorers}


def _checked_output(name: str, output: Any, n_tokens: int) -> tuple[Float[torch.Tensor, " pos"], dict[str, Any]]:
    """A scorer's output as float32 CPU scores and its diagnostics, or a clear error naming the scorer."""
    if not isinstance(output, ScorerOutput):
        return _checked_scores(name, output, n_tokens), {}
    diagnostics = output.diagnostics

    def is_number(value: Any) -> bool:
        return value is None or isinstance(value, (int, float)) and not isinstance(value, bool)

    if not isinstance(diagnostics, Mapping) or not all(
        isinstance(key, str) and is_number(value) for key, value in diagnostics.items()
    ):
        raise ScopeInputError(
            f"scorer {name!r} returned diagnostics {diagnostics!r}; a ScorerOutput's diagnostics map names (str) "
            "to numbers or None."
        )
    return _checked_scores(name, output.scores, n_tokens), dict(diagnostics)


def _checked_scores(name: str, scores: Any, n_tokens: int) -> Float[torch.Tensor, " pos"]:
    if not isinstance(scores, torch.Tensor) or scores.is_complex():
        raise ScopeInputError(f"scorer {name!r} returned {type(scores).__name__}; a scorer returns a real tensor [pos].")
    if tuple(scores.shape) != (n_tokens,):
        raise ScopeInputError(
            f"scorer {name!r} returned shape {tuple(scores.shape)} for a context of {n_tokens} tokens; "
            f"a scorer returns one score per context token, shape [{n_tokens}]."
        )
    scores = scores.detach().float().cpu()
    if not torch.isfinite(scores).all():
        raise ScopeInputError(f"scorer {name!r} returned NaN or infinite scores; rankings of them are arbitrary.")
    return scores


# --------------------------------------------------------------------------------- ablation
def _ablated_log_probabilities(
    adapter: ModelAdapter,
    context: Int[torch.Tensor, " pos"],
    ablated: Bool[torch.Tensor, "variant pos"],
    ablation: Ablation,
    batch_size: int,
) -> Float[torch.Tensor, "variant d_vocab"]:
    """Log-probabilities at the context's last position with each variant's tokens ablated."""
    outputs = []
    with adapter.prepared_for_scopes(), torch.no_grad():
        for start in range(0, len(ablated), batch_size):
            mask = ablated[start : start + batch_size].to(adapter.input_device)
            tokens = context.to(adapter.input_device).expand(len(mask), -1)
            if ablation == "pad":
                logits = adapter.forward(torch.where(mask, adapter.pad_token_id, tokens))
            else:

                def zero_token_embedding(activation: torch.Tensor, hook: Any, mask: torch.Tensor = mask) -> torch.Tensor:
                    return activation * (~mask)[..., None].to(activation)  # its device and dtype

                with adapter.hooks([(adapter.token_embedding_hook, zero_token_embedding)]):
                    logits = adapter.forward(tokens)
            outputs.append(torch.log_softmax(logits[:, -1].float(), dim=-1).cpu())
    return torch.cat(outputs)


def top_k_counts(n_candidates: int, fractions: Sequence[float]) -> list[int]:
    """How many tokens each fraction ablates: ``max(1, ⌊n_candidates · k⌋)``."""
    return [max(1, int(n_candidates * fraction + 1e-9)) for fraction in fractions]


def paper_top_k_counts(n_tokens: int, fractions: Sequence[float]) -> list[int]:
    """The scripts' counts, literally ``max(1, int(L * k))`` in floating point (``int(100 * 0.29)``
    is 28, where :func:`top_k_counts` gives 29)."""
    return [max(1, int(n_tokens * fraction)) for fraction in fractions]


def paper_ranking(scores: Float[torch.Tensor, " n"]) -> Int[torch.Tensor, " n"]:
    """Positions by decreasing score as the scripts order them, ``argsort()[::-1]``: equal scores
    come later position first (a stable ascending sort, reversed)."""
    return torch.argsort(scores.float(), stable=True).flip(0)


def paper_kl(
    original: Float[torch.Tensor, " d_vocab"], ablated: Float[torch.Tensor, "... d_vocab"]
) -> Float[torch.Tensor, "..."]:
    """The scripts' ``KL(p ‖ q)`` from log-probabilities: ``Σ clamp(p) · (log p - log clamp(q))``,
    both probabilities clamped at 1e-10."""
    p = original.exp().clamp_min(PAPER_KL_FLOOR)
    return (p * (original - ablated.exp().clamp_min(PAPER_KL_FLOOR).log())).sum(-1)


def aopc(deltas: Sequence[float], fractions: Sequence[float] = DEFAULT_FRACTIONS) -> float:
    """Trapezoid of ``Δ_k`` over the fractions ``k`` (``0.025·Δ5 + 0.075·Δ10 + 0.05·Δ20`` by default).

    Example:
        >>> from jscopes_tl.faithfulness import aopc
        >>> aopc([1.0, 2.0, 4.0])                     # 0.025·1 + 0.075·2 + 0.05·4
        0.375...
    """
    if len(deltas) != len(fractions) or len(fractions) < 2:
        raise ScopeInputError(f"aopc needs one Δ per fraction and at least 2 fractions; got {len(deltas)} Δ for {len(fractions)} fractions.")
    return float(torch.trapezoid(torch.tensor(deltas, dtype=torch.float64), torch.tensor(fractions, dtype=torch.float64)))


# --------------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class PromptEvaluation:
    """Everything measured on one prompt.

    Attributes:
        str_tokens: the tokens that are scored: the context (the prompt without its final,
            predicted token) by default; the whole passage under ``protocol="paper"``.
        candidates: positions that may be ablated (default: the context minus a leading BOS;
            paper: every position of the passage).
        gold_token, predicted_token: the prompt's final token and the model's top-1 at the
            prediction position (``ŷ``, whose log-probability ``Δ_k`` tracks).
        scores: each scorer's scores over ``str_tokens``, the ranking ablated for AOPC.
        loo_scores: the scores compared with leave-one-out (the same tensors as ``scores``
            except where the paper's leave-one-out script used another variant).
        ablated: for each scorer, the positions ablated at each fraction.
        leave_one_out_kl: ``KL(p_orig ‖ p_LOO)`` for each candidate, ``[n_candidates]``.

    Example:
        >>> passages = ["a=3 b=7 c=1 b= 7"]                       # its last token, 7, is the gold
        >>> evaluation = evaluate_faithfulness(model, passages, scorers=["semantic"], progress=False).prompts[0]
        >>> evaluation.str_tokens, evaluation.gold_token, evaluation.scores["semantic"].shape   # [pos]
        (['<bos>', 'a=3', 'b=7', 'c=1', 'b='], '7', torch.Size([5]))
    """

    str_tokens: list[str]
    candidates: Int[torch.Tensor, " n_candidates"]
    gold_token: str
    predicted_token: str
    scores: dict[str, Float[torch.Tensor, " pos"]]
    leave_one_out_kl: Float[torch.Tensor, " n_candidates"]
    loo_scores: dict[str, Float[torch.Tensor, " pos"]] = field(default_factory=dict)
    ablated: dict[str, list[Int[torch.Tensor, " n"]]] = field(default_factory=dict)


@dataclass(frozen=True)
class FaithfulnessReport:
    """A tidy table: one row per (prompt, scorer), plus the per-prompt measurements.

    Row fields: ``prompt`` (index), ``scorer``, ``n_candidates``, ``delta_5`` / ``delta_10`` /
    ``delta_20`` (named after the fractions in percent), ``aopc``, ``loo_spearman``,
    ``loo_percentile_of_top``, ``top_token`` (the scorer's top candidate), ``predicted_token``,
    ``gold_token``; under ``protocol="paper"`` also ``loo_rank_percentage`` (the paper's LOO
    summary: 0 when the scorer's top token is LOO's top). Diagnostic columns, None for scorers
    that report none: ``completeness_gap``, ``relative_completeness_gap`` and ``ig_evaluations``
    of the Integrated Gradients scorers (``DIAGNOSTIC_COLUMNS``; under ``protocol="paper"``
    also ``loo_completeness_gap``, ... of the leave-one-out script's variant), and whatever a
    custom scorer's :class:`ScorerOutput` reports.

    Example:
        >>> passages = ["a=3 b=7 c=1 b= 7"]                       # its last token, 7, is the gold
        >>> report = evaluate_faithfulness(model, passages, scorers=["semantic", "random"], fractions=(0.2, 0.4), progress=False)
        >>> report.fractions, report.ablation, report.protocol, len(report.prompts)
        ((0.2, 0.4), 'zero', 'default', 1)
    """

    rows: list[dict[str, Any]]
    prompts: list[PromptEvaluation]
    fractions: tuple[float, ...]
    ablation: str
    protocol: str = "default"

    def summary(self) -> list[dict[str, Any]]:
        """Per scorer, the mean of every numeric column over prompts (NaN correlations skipped).

        Example:
            >>> passages = ["a=3 b=7 c=1 b= 7"]                       # its last token, 7, is the gold
            >>> report = evaluate_faithfulness(model, passages, scorers=["semantic"], progress=False)
            >>> sorted(report.summary()[0])[:4]
            ['aopc', 'delta_10', 'delta_20', 'delta_5']
        """
        return summarise_rows(self.rows, self.fractions)

    def to_dataframe(self, summary: bool = False) -> Any:
        """The rows (or :meth:`summary`) as a pandas DataFrame.

        Example:
            >>> passages = ["a=3 b=7 c=1 b= 7"]                       # its last token, 7, is the gold
            >>> report = evaluate_faithfulness(model, passages, scorers=["semantic", "random"], progress=False)
            >>> report.to_dataframe(summary=True)[["scorer", "n_prompts"]]
                 scorer  n_prompts
            0  semantic          1
            1    random          1
        """
        try:
            import pandas as pd
        except ImportError as error:
            raise ImportError("to_dataframe needs pandas; use report.rows (a list of dicts) without it.") from error
        return pd.DataFrame(self.summary() if summary else self.rows)


def delta_column(fraction: float) -> str:
    return f"delta_{round(fraction * 100, 4):g}"


def diagnostic_columns(protocol: Protocol) -> dict[str, type]:
    """The built-in scorers' diagnostic columns of a row (``DIAGNOSTIC_COLUMNS``), and under the
    paper protocol those of its separate leave-one-out variants (``loo_completeness_gap``, ...)."""
    if protocol != "paper":
        return dict(DIAGNOSTIC_COLUMNS)
    return {**DIAGNOSTIC_COLUMNS, **{f"loo_{name}": kind for name, kind in DIAGNOSTIC_COLUMNS.items()}}


def row_columns(fractions: Sequence[float], protocol: Protocol) -> list[str]:
    """The columns of a report row, in order (:class:`FaithfulnessReport`)."""
    return [
        "prompt", "scorer", "n_candidates", *[delta_column(k) for k in fractions], "aopc", "loo_spearman",
        "loo_percentile_of_top", *(["loo_rank_percentage"] if protocol == "paper" else []),
        *diagnostic_columns(protocol), "top_token", "predicted_token", "gold_token",
    ]


_TEXT_COLUMNS = ("prompt", "scorer", "n_candidates", "top_token", "predicted_token", "gold_token")


def summarise_rows(rows: Sequence[Mapping[str, Any]], fractions: Sequence[float]) -> list[dict[str, Any]]:
    """Per scorer (in order of first appearance), the mean of every numeric column over its rows,
    NaN skipped: the faithfulness table, from a report's rows or a run's rows read back.
    Diagnostic columns (a scorer's :class:`ScorerOutput` diagnostics) appear when some scorer
    reported them: the mean over the rows that have them, None for a scorer that has none."""
    numeric = ["aopc", *[delta_column(k) for k in fractions], "loo_spearman", "loo_percentile_of_top"]
    if rows and "loo_rank_percentage" in rows[0]:
        numeric.append("loo_rank_percentage")
    reported = [
        column
        for column in dict.fromkeys(key for row in rows for key in row)
        if column not in numeric and column not in _TEXT_COLUMNS and any(row.get(column) is not None for row in rows)
    ]
    table = []
    for scorer in dict.fromkeys(row["scorer"] for row in rows):
        scorer_rows = [row for row in rows if row["scorer"] == scorer]
        means: dict[str, float | None] = {}
        for column in numeric:
            values = torch.tensor([row[column] for row in scorer_rows], dtype=torch.float64)
            means[column] = float(values.nanmean())
        for column in reported:
            present = [row[column] for row in scorer_rows if row.get(column) is not None]
            means[column] = float(torch.tensor(present, dtype=torch.float64).nanmean()) if present else None
        table.append({"scorer": scorer, "n_prompts": len(scorer_rows), **means})
    return table


def _prompt_list(
    adapter: ModelAdapter,
    prompts: Prompts,
    protocol: Protocol,
    attention_mask: torch.Tensor | None,
    labels: Sequence[str] | None = None,
) -> list[torch.Tensor]:
    if isinstance(prompts, torch.Tensor):  # padding only as attention_mask says (jscopes_tl.inputs)
        batch = prepare_tokens(adapter, prompts, attention_mask, argument="prompts")
        return [row[:length] for row, length in zip(batch.tokens, batch.lengths.tolist())]
    if attention_mask is not None:
        raise ScopeInputError("attention_mask applies to prompts given as a token tensor [batch, pos].")
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise ScopeInputError(f"prompts must be a prompt or a non-empty list of prompts (text or token ids [pos]); got {type(prompts).__name__}.")
    token_lists = []
    for index, prompt in enumerate(prompts):
        label = labels[index] if labels is not None else f"prompts[{index}]"
        if not isinstance(prompt, (str, torch.Tensor)) or (isinstance(prompt, torch.Tensor) and prompt.ndim != 1):
            raise ScopeInputError(f"{label} must be text or token ids [pos]; got {type(prompt).__name__}.")
        if protocol == "paper" and isinstance(prompt, str):
            prompt = adapter.tokenize_fragment(prompt)  # the scripts tokenise without BOS
        token_lists.append(prepare_tokens(adapter, prompt, argument=label).tokens[0])
    return token_lists


def checked_prompts(
    settings: FaithfulnessSettings,
    prompts: Prompts,
    attention_mask: torch.Tensor | None = None,
    labels: Sequence[str] | None = None,
) -> list[Int[torch.Tensor, " pos"]]:
    """Every prompt's tokens as ``settings.protocol`` reads them, each checked (at most ``n_ctx``
    tokens, a context token before the final one) before any is evaluated; errors name the prompt
    by ``labels[i]`` (default ``prompts[i]``)."""
    token_lists = _prompt_list(settings.adapter, prompts, settings.protocol, attention_mask, labels)
    for index, tokens in enumerate(token_lists):
        check_prompt_tokens(settings, tokens, labels[index] if labels is not None else f"prompts[{index}]")
    return token_lists


def _candidates(adapter: ModelAdapter, context: torch.Tensor) -> torch.Tensor:
    tokenizer = getattr(adapter.model, "tokenizer", None)
    bos = getattr(tokenizer, "bos_token_id", None)
    first = 1 if bos is not None and int(context[0]) == int(bos) else 0
    return torch.arange(first, len(context))


def _top_candidates(scores: torch.Tensor, candidates: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` highest-scoring candidates; ties go to the earlier position (stable sort)."""
    order = torch.sort(scores[candidates].float(), descending=True, stable=True).indices
    return candidates[order[:count]]


def _ablated_sets(
    scorer: _ProtocolScorer,
    scores: torch.Tensor,
    candidates: torch.Tensor,
    fractions: Sequence[float],
    protocol: Protocol,
    rng: Any,
) -> list[torch.Tensor]:
    """The positions ablated at each fraction."""
    if protocol == "default":
        counts = top_k_counts(len(candidates), fractions)
        return [_top_candidates(scores, candidates, count) for count in counts]
    n_tokens = len(candidates)
    counts = paper_top_k_counts(n_tokens, fractions)
    if scorer.random_sets:
        return [torch.from_numpy(rng.choice(n_tokens, size=count, replace=False)).long() for count in counts]
    order = paper_ranking(scores)
    return [order[:count] for count in counts]


@dataclass(frozen=True)
class FaithfulnessSettings:
    """Everything one prompt's evaluation needs besides its tokens: checked arguments, resolved scorers.

    Example:
        >>> from jscopes_tl.faithfulness import faithfulness_settings
        >>> settings = faithfulness_settings(model, ["semantic", "random"], (0.1, 0.2), "zero", "default", 8, 0)
        >>> sorted(settings.scorers), settings.fractions, settings.paper
        (['random', 'semantic'], (0.1, 0.2), False)
    """

    adapter: ModelAdapter
    scorers: dict[str, _ProtocolScorer]
    fractions: tuple[float, ...]
    ablation: Ablation
    protocol: Protocol
    batch_size: int
    seed: int

    @property
    def paper(self) -> bool:
        return self.protocol == "paper"

    def tokenize(self, text: str) -> Int[torch.Tensor, " pos"]:
        """A text prompt's tokens as this protocol reads them (the scripts tokenise without BOS)."""
        return (self.adapter.tokenize_fragment if self.paper else self.adapter.tokenize)(text)


def check_faithfulness_arguments(
    fractions: Any, ablation: Any, protocol: Any, batch_size: Any, seed: Any
) -> tuple[tuple[float, ...], int]:
    """The arguments that need no model, checked (ScopeInputError naming the argument): the
    fractions as a tuple and the seed (``None``: 42 under the paper protocol, else 0)."""
    if ablation not in ("zero", "pad"):
        raise ScopeInputError(f"ablation must be 'zero' or 'pad'; got {ablation!r}.")
    if protocol not in ("default", "paper"):
        raise ScopeInputError(f"protocol must be 'default' or 'paper'; got {protocol!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ScopeInputError(f"batch_size must be a positive int; got {batch_size!r}.")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ScopeInputError(f"seed must be a non-negative int or None; got {seed!r}.")
    fractions = tuple(float(k) for k in fractions)
    if len(fractions) < 2 or not all(0 < k <= 1 for k in fractions) or list(fractions) != sorted(set(fractions)):
        raise ScopeInputError(f"fractions must be at least 2 increasing values in (0, 1]; got {fractions}.")
    if seed is None:
        seed = PAPER_SEED if protocol == "paper" else 0
    return fractions, seed


def faithfulness_settings(
    model: Any,
    scorers: Sequence[str] | Mapping[str, Scorer],
    fractions: Sequence[float],
    ablation: Any,
    protocol: Any,
    batch_size: Any,
    seed: Any,
) -> FaithfulnessSettings:
    """:func:`evaluate_faithfulness`'s arguments, checked (ScopeInputError naming the argument)."""
    fractions, seed = check_faithfulness_arguments(fractions, ablation, protocol, batch_size, seed)
    by_name = not isinstance(scorers, Mapping)
    resolved = _protocol_scorers(_resolve_scorers(scorers, seed), protocol, by_name=by_name)
    return FaithfulnessSettings(ModelAdapter(model), resolved, fractions, ablation, protocol, batch_size, seed)


def check_prompt_tokens(settings: FaithfulnessSettings, tokens: torch.Tensor, argument: str) -> None:
    """A prompt needs a context token (besides BOS, by default) before its final, predicted one."""
    if len(tokens) < 2 or not settings.paper and len(_candidates(settings.adapter, tokens[:-1])) == 0:
        raise ScopeInputError(
            f"{argument} has {len(tokens)} token(s): it needs at least one context token "
            f"{'' if settings.paper else '(besides BOS) '}before its final, predicted token."
        )


def evaluate_prompt(
    settings: FaithfulnessSettings, tokens: Int[torch.Tensor, " pos"], prompt_id: int
) -> tuple[list[dict[str, Any]], PromptEvaluation]:
    """One prompt's report rows (one per scorer) and measurements. Its random draws depend on
    ``settings.seed`` and ``prompt_id`` only (:func:`prompt_seed`).

    Example:
        >>> from jscopes_tl.faithfulness import evaluate_prompt, faithfulness_settings
        >>> settings = faithfulness_settings(model, ["semantic"], (0.05, 0.1, 0.2), "zero", "default", 8, 0)
        >>> rows, evaluation = evaluate_prompt(settings, settings.tokenize("a=3 b=7 c=1 b= 7"), prompt_id=0)
        >>> [row["scorer"] for row in rows], evaluation.predicted_token
        (['semantic'], '7')
    """
    import numpy as np

    adapter, paper, fractions = settings.adapter, settings.paper, settings.fractions
    model = adapter.model
    context, gold = tokens[:-1], int(tokens[-1])
    # The paper ranks the whole passage; its final token, which the prediction cannot see,
    # gets the score 0 any gradient gives it.
    ranked = tokens if paper else context
    candidates = torch.arange(len(tokens)) if paper else _candidates(adapter, context)
    rng = np.random.RandomState(prompt_seed(settings.seed, prompt_id))  # as the scripts' np.random.choice

    def score(name: str, scorer: Scorer) -> tuple[torch.Tensor, dict[str, Any]]:
        if isinstance(scorer, RandomScorer):
            output = scorer(model, context, gold, prompt_id=prompt_id)
        else:
            output = scorer(model, context, gold)
        values, diagnostics = _checked_output(name, output, len(context))
        return (torch.cat([values, torch.zeros(1)]) if paper else values), diagnostics

    scores, diagnostics = {}, {}
    loo_scores, loo_diagnostics = {}, {}
    for name, scorer in settings.scorers.items():
        scores[name], diagnostics[name] = score(name, scorer.aopc)
        # A separate leave-one-out variant (the paper's) reports its diagnostics as loo_<name>.
        loo_scores[name], loo_diagnostics[name] = (
            (scores[name], {}) if scorer.loo is scorer.aopc else score(name, scorer.loo)
        )
    ablated = {
        name: _ablated_sets(scorer, scores[name], candidates, fractions, settings.protocol, rng)
        for name, scorer in settings.scorers.items()
    }

    # One batch: the original, each scorer's ablated set for every fraction, each
    # leave-one-out. Ablating the final token (paper) changes nothing at the prediction, so
    # every forward runs on the context.
    def mask_of(positions: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros(len(ranked), dtype=torch.bool)
        mask[positions] = True
        return mask[: len(context)]

    variants = [torch.zeros(len(context), dtype=torch.bool)]
    variants += [mask_of(positions) for sets in ablated.values() for positions in sets]
    variants += [mask_of(position) for position in candidates]
    log_probabilities = _ablated_log_probabilities(
        adapter, context, torch.stack(variants), settings.ablation, settings.batch_size
    )

    original = log_probabilities[0]
    predicted = int(original.argmax())
    n_ablations = len(scores) * len(fractions)
    top_k_rows = log_probabilities[1 : 1 + n_ablations].reshape(len(scores), len(fractions), -1)
    leave_one_out = log_probabilities[1 + n_ablations :]
    if paper:
        loo_kl = paper_kl(original, leave_one_out)
        loo_order = paper_ranking(loo_kl)
    else:
        loo_kl = (original.exp() * (original - leave_one_out)).sum(-1)
    str_tokens = adapter.str_tokens(tokens)
    predicted_token = adapter.str_tokens(torch.tensor([predicted]))[0]
    columns = [
        *diagnostic_columns(settings.protocol),
        *(key for reported in diagnostics.values() for key in reported),
        *(f"loo_{key}" for reported in loo_diagnostics.values() for key in reported),
    ]
    rows = []
    for scorer_index, name in enumerate(scores):
        deltas = (top_k_rows[scorer_index, :, predicted] - original[predicted]).tolist()
        candidate_scores = loo_scores[name][candidates]
        # The scorer's top candidate: the first of equal maxima (as the scripts' np.argmax).
        top_index = int(candidate_scores.argmax())
        top = int(candidates[top_index])
        row = {
            "prompt": prompt_id,
            "scorer": name,
            "n_candidates": len(candidates),
            **{delta_column(k): delta for k, delta in zip(fractions, deltas)},
            "aopc": aopc(deltas, fractions),
            "loo_spearman": spearman(candidate_scores, loo_kl) if len(candidates) > 1 else float("nan"),
            "loo_percentile_of_top": float((loo_kl <= loo_kl[top_index]).double().mean()),
        }
        if paper:
            rank = int((loo_order == top_index).nonzero()[0, 0])
            row["loo_rank_percentage"] = 100.0 * rank / len(candidates)
        row.update(dict.fromkeys(columns))  # every row has every diagnostic column, None where not reported
        row.update(diagnostics[name])
        row.update({f"loo_{key}": value for key, value in loo_diagnostics[name].items()})
        row.update(top_token=str_tokens[top], predicted_token=predicted_token, gold_token=str_tokens[-1])
        rows.append(row)
    evaluation = PromptEvaluation(
        str_tokens=str_tokens[: len(ranked)],
        candidates=candidates,
        gold_token=str_tokens[-1],
        predicted_token=predicted_token,
        scores=scores,
        leave_one_out_kl=loo_kl,
        loo_scores=loo_scores,
        ablated=ablated,
    )
    return rows, evaluation


def evaluate_faithfulness(
    model: Any,
    prompts: Prompts,
    scorers: Sequence[str] | Mapping[str, Scorer] = DEFAULT_SCORERS,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    ablation: Ablation = "zero",
    protocol: Protocol = "default",
    batch_size: int = 64,
    progress: bool = True,
    seed: int | None = None,
    attention_mask: torch.Tensor | None = None,
) -> FaithfulnessReport:
    """AOPC and leave-one-out agreement of each scorer over a list of prompts (module docstring).

    Prompts are evaluated one at a time and independently: prompt ``i``'s rows depend on its
    tokens, the arguments and ``i`` (its random draws, :func:`prompt_seed`), not on the other
    prompts, which is what lets :func:`jscopes_tl.runs.run_faithfulness` write the same rows to
    disk resumably.

    Args:
        model: a HookedTransformer or TransformerBridge.
        prompts: prompts whose *final token* is the one predicted (text, or token ids ``[pos]``
            used as given); at least one ablation candidate must precede it.
        scorers: names of built-in scorers (:data:`DEFAULT_SCORERS`) or a dict name → scorer.
        fractions: the ablated fractions ``k`` (default 5 %, 10 %, 20 %).
        ablation: ``"zero"`` (token embedding set to 0) or ``"pad"`` (pad token substituted).
        protocol: ``"default"`` or ``"paper"`` (the authors' benchmark scripts, choice by choice;
            module docstring). With ``"paper"``, built-in scorers given by name take the scripts'
            variants; scorers given as a dict are used as they are for AOPC and leave-one-out.
        batch_size: ablated forwards per batch.
        progress: show a tqdm progress bar over prompts.
        seed: seed of the random scorer (default 0), and under ``protocol="paper"`` of the
            random ablation sets (default 42, the scripts'); each prompt draws from its own
            generator seeded from ``seed`` and its index.
        attention_mask: with prompts as a padded token tensor ``[batch, pos]``, 1 for real tokens
            (see :mod:`jscopes_tl.inputs`); each prompt is its real tokens.

    Example:
        >>> prompts = ["a=3 b=7 c=1 b= 7", "d=1 e=2 d= 1"]        # each prompt's last token is the gold
        >>> report = evaluate_faithfulness(model, prompts, scorers=["semantic", "random"], progress=False)
        >>> [row["scorer"] for row in report.summary()], len(report.rows)      # rows: (prompt, scorer)
        (['semantic', 'random'], 4)
    """
    from tqdm.auto import tqdm

    settings = faithfulness_settings(model, scorers, fractions, ablation, protocol, batch_size, seed)
    token_lists = checked_prompts(settings, prompts, attention_mask)

    rows: list[dict[str, Any]] = []
    evaluations: list[PromptEvaluation] = []
    for index, tokens in enumerate(tqdm(token_lists, desc="faithfulness", disable=not progress)):
        prompt_rows, evaluation = evaluate_prompt(settings, tokens, index)
        rows.extend(prompt_rows)
        evaluations.append(evaluation)
    return FaithfulnessReport(
        rows=rows, prompts=evaluations, fractions=settings.fractions, ablation=settings.ablation,
        protocol=settings.protocol,
    )

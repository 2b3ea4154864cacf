"""Integrated Gradients on the residual-stream input: a path integral of the same engine's gradients.

Integrated Gradients (Sundararajan, Taly and Yan, *Axiomatic Attribution for Deep Networks*,
ICML 2017) attributes a scalar ``f`` of the model's prediction to each input dimension by
integrating the gradient along the straight path from a baseline ``x₀`` to the input ``x``:

    IG_i = (x − x₀)_i · ∫₀¹ ∂f/∂x_i (x₀ + α (x − x₀)) dα.

Here ``x`` is the point the scopes perturb (``ModelAdapter.perturbation_hook()`` at layer 0:
the residual stream entering block 0, i.e. token + position embedding on GPT-2; see
:mod:`jscopes_tl.scopes` for Gemma and BLOOM), ``[pos, d_model]``, and ``f`` the
log-probability (or logit, or probability) of one token at one position. The chain rule gives
*completeness*: ``Σ_i IG_i = f(x) − f(x₀)`` exactly, so the sum of the attributions measures how
well a quadrature approximates the integral. Its error, the **completeness gap**
``Σ_i IG_i − (f(x) − f(x₀))``, is what captum returns as the convergence delta
(``IntegratedGradients.attribute(..., return_convergence_delta=True)``; same sign convention).

Mechanics that keep this exact and affordable:

* Every quadrature node is one row of one engine call (``jscopes_tl.engine.run_scope``): the
  prompt's tokens replicated, each row's input moved to ``x₀ + α (x − x₀)`` in the perturbation
  hook, a readout whose direction is ``∂f/∂y`` and which records ``f`` of its row. So ``f`` at
  every node comes from the same forward pass as its gradient, and the engine's memory chunking
  bounds memory however many nodes a round needs.
* **Fixed steps** (``n_steps=N``) use captum's rules under captum's names, nodes and weights
  exactly as ``captum.attr._utils.approximation_methods`` defines them: ``"gausslegendre"``
  (captum's default), ``"riemann_left"``, ``"riemann_right"``, ``"riemann_middle"`` and
  ``"riemann_trapezoid"``. captum's trapezoid puts weights ``1/N`` (halved at both ends) on
  ``N`` equally spaced nodes from 0 to 1, so its weights sum to ``(N − 1)/N``, not 1: it is
  reproduced as captum defines it (the numbers captum users know), and its completeness gap shows
  the ``1/N`` shortfall. ``f(x)`` and ``f(x₀)`` come from two more rows where the rule has no node
  at ``α = 1`` or ``0``.
* **Adaptive** (the default, ``n_steps=None``): composite 9-node Gauss–Lobatto panels (each exact
  for polynomials of degree 15): three equal ones in ``α`` on [1/4, 1] and, below 1/4, panels in
  ``ln α`` (nodes evenly spread over the decades) down to an *end* ``[0, β]`` integrated by its
  one node ``β`` (weight ``β``: exact where ``∇f`` is constant there). A Lobatto rule has nodes at
  both ends of its panel, so the exact integral of ``df/dα`` over a panel ``[a, b]``,
  ``f(x(b)) − f(x(a))``, is known from its own nodes, and the end's from ``f(x₀)``: each one's
  quadrature error *of the sum over dimensions* is known exactly, at no extra cost. Each round cuts
  the panels whose errors exceed their share (largest first) at the two neighbouring nodes between
  which ``f`` changes most, into 2 or 3 pieces whose ends are already evaluated (7 new nodes each;
  a feature's panel shrinks 5 to 20 times per round), and replaces an end whose error is too
  large by log panels of two decades below ``β`` (1, 2, 4, then 8 a round) and a new end, until the
  errors sum to at most ``tolerance / 10`` times the scale below, or ``max_steps`` gradient
  evaluations are used.

  Why ``ln α`` towards the baseline: from a zero (or constant) baseline each normalisation layer
  sees ``α`` times its usual input, and is scale-invariant except through ``eps``, so ``f``'s
  features sit at ratios of ``α``, that is in decades. On the bundled ``recall`` model ``log p``
  climbs from −13.6 to −0.01 over ``α ∈ [1e-4, 1e-2]`` and is flat above. In a model whose
  biases are zero (a freshly initialised one; the bias-free Llama-style blocks keep attention and
  MLP outputs at zero too) every normalisation layer sees zero variance at ``α = 0``, their
  ``1/√eps`` gains compound, and ``f`` keeps changing down to ``α ≈ 1e-34`` on a 12-layer
  GPT-2-size model (on 32 random tokens ``‖∇f‖`` is 2.6e33 at ``α = 0``, 2.3e7 at ``1e-6``, 22
  at 1). So the gradient at ``α = 0`` is never used (its row gives ``f(x₀)``; its gradient can
  overflow), and the end follows the path down as far as ``f`` changes, never below the smallest
  normal number of the working precision. Where the gradient overflows the working precision on the way (float32
  within about 1e-37 of the baseline on deeper such models), the end stops above it, and the
  warning says that a float64 copy of the model reaches further.

  The margin of 10 is there because only the *sum* is checked exactly: errors of single tokens can
  cancel in it. Measured against a float64 reference (a trapezoid on 4,001 nodes graded as
  ``(k/4000)³`` towards ``α = 0``) on 20 held-out prompts per bundled model, stopping at
  ``tolerance`` itself left single prompts' attributions off by up to 3.8 % (relative L2) at a gap
  under 1 %; stopping at a tenth of it, by at most 0.05 %, for 20–30 % more evaluations (means of
  98, 165 and 91 per prompt on recall, induction and periodic, in 2–6 rounds).
* **Scale of the gap.** ``relative_completeness_gap = |gap| / S`` with ``S = |f(x) − f(x₀)|``
  (:func:`~jscopes_tl.quadrature.completeness_scale`), except in two degenerate cases. When ``f(x) ≈ f(x₀)`` although
  ``f`` moves in between, ``S`` is at least ``tolerance × V``, ``V = Σ_k |f(α_{k+1}) − f(α_k)|`` the
  variation of ``f`` over the points evaluated (``≥ |f(x) − f(x₀)|``, equal when ``f`` is monotone
  along the path): a quadrature's error is relative to how much ``f`` moves, and a net change
  near 0 is not worth chasing to 1 % of itself. When ``f`` is flat (``V`` below ``√ε`` of the
  working precision times ``max(1, |f(x)|)``), ``S`` is that floor: the gap is rounding. A
  ``UserWarning`` names the gap and the tolerance when the relative gap exceeds ``tolerance``, for
  fixed steps too.
* **Precision**: the model's own working precision (``jscopes_tl.fisher.working_dtype()``) for
  the forward and backward passes and the returned attributions (a float64 model gets float64
  Integrated Gradients); ``f`` is evaluated in float64 from the model's logits, and the
  quadrature sum and the gap are accumulated in float64 (free, and it keeps summation rounding
  out of the gap).

captum (Kokhlikyan et al., 2020, https://captum.ai) computes the same quantity given a forward
function of ``x``; ``tests/test_integrated_gradients.py`` checks agreement with its
``IntegratedGradients`` for every method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Union

import torch
from jaxtyping import Float, Int

from jscopes_tl.adapter import ModelAdapter
from jscopes_tl.engine import DEFAULT_MEMORY_BUDGET_MB, PerturbationPoint, run_scope
from jscopes_tl.errors import NonFiniteScoresError, ScopeInputError
from jscopes_tl.fisher import working_dtype
from jscopes_tl.inputs import Inputs, TokenBatch, prepare_tokens, resolve_positions, warn_at_caller
from jscopes_tl.quadrature import (
    CAPTUM_DEFAULT_STEPS,
    CAPTUM_METHODS,
    DEFAULT_TOLERANCE,
    Integral,
    adaptive_rule,
    completeness_scale,
    first_round_size,
    fixed_rule,
    path_variation,
)
from jscopes_tl.readouts import Readout, TokenLike, parse_semantic_target

Objective = Literal["log_probability", "logit", "probability"]
Method = Literal["gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"]
Baseline = Union[None, float, Float[torch.Tensor, "pos d_model"]]

OBJECTIVES = ("log_probability", "logit", "probability")
DEFAULT_MAX_STEPS = 1024


# ------------------------------------------------------------------------------------ result
@dataclass(frozen=True)
class IntegratedGradientsResult:
    """Integrated Gradients of ``f`` (``objective`` of ``target`` at ``position``) for one prompt.

    Attributes:
        attributions: ``IG_t`` per token and dimension, signed, ``[pos, d_model]`` (the width of
            the perturbation point), in the model's working precision; 0 after ``position``.
        scores: ``‖IG_t‖₂`` over ``d_model``, ``[pos]`` (the faithfulness scorer's ranking).
        value, baseline_value: ``f(x)`` and ``f(x₀)``.
        completeness_gap: ``Σ attributions − (f(x) − f(x₀))`` (captum's convergence delta).
        relative_completeness_gap: ``|completeness_gap|`` over ``|f(x) − f(x₀)|`` (or the floors
            of :func:`~jscopes_tl.quadrature.completeness_scale` when that is near 0; module docstring).
        path_variation: ``V = Σ_k |f(α_{k+1}) − f(α_k)|`` over the evaluated points, by increasing ``α``.
        converged: ``relative_completeness_gap <= tolerance``.
        method: ``"adaptive"`` or captum's method name.
        n_evaluations: gradient evaluations (rows of the engine) used, nodes dropped by the
            adaptive refinement and the end rows of a fixed rule included.
        n_rounds: engine calls (one for a fixed rule; one per refinement round).
        alphas, weights: the rule that gives ``attributions = (x − x₀) ⊙ Σ_k w_k ∇f(x(α_k))``,
            float64, by increasing ``α`` (weights of nodes shared by two panels added up).
        target: the token id whose ``objective`` is ``f``; ``target_str`` its string.
        position: the prediction position (absolute).
        input_hook: where ``x`` is (the scopes' perturbation point at layer 0).

    Example:
        >>> result = integrated_gradients(model, prompt, target="7")                # the adaptive rule
        >>> result.attributions.shape, result.method, result.n_evaluations      # [pos, d_model]
        (torch.Size([5, 64]), 'adaptive', 92)
    """

    attributions: Float[torch.Tensor, "pos d_model"]
    scores: Float[torch.Tensor, " pos"]
    value: float
    baseline_value: float
    completeness_gap: float
    relative_completeness_gap: float
    path_variation: float
    converged: bool
    tolerance: float
    method: str
    n_evaluations: int
    n_rounds: int
    alphas: Float[torch.Tensor, " n"]
    weights: Float[torch.Tensor, " n"]
    objective: str
    target: int
    target_str: str
    position: int
    tokens: Int[torch.Tensor, " pos"]
    str_tokens: list[str]
    input_hook: str


# ------------------------------------------------------------------------------------ the readout
def objective_values(
    logits: Float[torch.Tensor, "m d_vocab"], target: int, objective: Objective
) -> Float[torch.Tensor, " m"]:
    """``f`` of each row's logits, in float64: the target's log-probability, logit or probability."""
    logits = logits.to(torch.float64)
    if objective == "logit":
        return logits[:, target]
    log_probability = torch.log_softmax(logits, dim=-1)[:, target]
    return log_probability if objective == "log_probability" else log_probability.exp()


def objective_readout(
    adapter: ModelAdapter, y: Float[torch.Tensor, "m d_model"], target: int, objective: Objective
) -> Readout:
    """The direction ``∂f/∂y`` through the model's own unembedding, and ``f`` of each row
    (``per_prediction["objective"]``), so that ``f`` at a node comes from its gradient's forward pass."""
    y_leaf = y.detach().requires_grad_(True)
    with torch.enable_grad():
        values = objective_values(adapter.logits(y_leaf), target, objective)
        (direction,) = torch.autograd.grad(values.sum(), y_leaf)
    return Readout(
        direction[:, None, :], torch.ones(y.shape[0], 1), squared=False, per_prediction={"objective": values.detach()}
    )


# ------------------------------------------------------------------------------------ arguments
@dataclass(frozen=True)
class _Path:
    """One prompt's path: the engine's inputs and what the quadrature multiplies by."""

    adapter: ModelAdapter
    batch: TokenBatch
    position: int
    hook: str
    target: int
    objective: Objective
    baseline: torch.Tensor  # x₀, [pos, width], the model's dtype
    difference: torch.Tensor  # x − x₀, float64
    memory_budget_mb: float


def _check_method(n_steps: Any, method: Any) -> tuple[str, int | None]:
    """The method's name and its fixed number of steps (None: adaptive)."""
    if method is not None and method not in CAPTUM_METHODS:
        raise ScopeInputError(
            f"method must be one of captum's {list(CAPTUM_METHODS)} (a fixed rule) or None (adaptive, "
            f"or captum's gausslegendre when n_steps is given); got {method!r}."
        )
    if n_steps is None:
        return (method, CAPTUM_DEFAULT_STEPS) if method is not None else ("adaptive", None)
    method = method or "gausslegendre"
    least = 1 if method == "gausslegendre" else 2  # captum's own bounds: a Riemann rule needs 2 nodes
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < least:
        raise ScopeInputError(
            f"n_steps must be an int ≥ {least} for method={method!r}, or None (adaptive); got {n_steps!r}."
        )
    return method, n_steps


def _check_numbers(tolerance: Any, max_steps: Any, memory_budget_mb: Any) -> None:
    def is_real(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    if not is_real(tolerance) or tolerance <= 0:
        raise ScopeInputError(f"tolerance must be a number > 0 (a share of f(x) − f(x₀)); got {tolerance!r}.")
    minimum = first_round_size()
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < minimum:
        raise ScopeInputError(
            f"max_steps must be an int ≥ {minimum} (the adaptive scheme's first round); got {max_steps!r}."
        )
    if not is_real(memory_budget_mb) or memory_budget_mb <= 0:
        raise ScopeInputError(f"memory_budget_mb must be a finite number of megabytes > 0; got {memory_budget_mb!r}.")


def _target_id(adapter: ModelAdapter, target: Any, top1: int) -> int:
    parsed = parse_semantic_target(adapter, target)
    if parsed.kind == "top1":
        return top1
    if parsed.kind != "token":
        raise ScopeInputError(
            f"target must be None (the model's top-1 prediction) or one token (a string or id) for "
            f"integrated_gradients; got {type(target).__name__}."
        )
    return parsed.token_ids[0]


def _baseline_tensor(baseline: Any, x: torch.Tensor) -> torch.Tensor:
    """``x₀`` in ``x``'s shape and dtype: zeros, a constant, or the given tensor."""
    if baseline is None:
        return torch.zeros_like(x)
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool) and math.isfinite(baseline):
        return torch.full_like(x, float(baseline))
    if isinstance(baseline, torch.Tensor):
        if tuple(baseline.shape) != tuple(x.shape) or not baseline.is_floating_point():
            raise ScopeInputError(
                f"baseline must be a float tensor shaped like the input x at the perturbation point, "
                f"[pos, d_model] = {list(x.shape)}; got {baseline.dtype} {list(baseline.shape)}."
            )
        if not torch.isfinite(baseline).all():
            raise ScopeInputError("baseline has NaN or infinite entries.")
        return baseline.detach().to(device=x.device, dtype=x.dtype)
    raise ScopeInputError(
        f"baseline must be None (zeros), a finite number or a tensor [pos, d_model]; got {baseline!r}."
    )


def _input_and_prediction(
    adapter: ModelAdapter, tokens: torch.Tensor, hook: str, position: int
) -> tuple[torch.Tensor, int]:
    """``x`` at the perturbation point ``[pos, width]`` and the model's top-1 token at ``position``,
    from one forward pass without gradients."""
    captured: dict[str, torch.Tensor] = {}

    def keep(activation: torch.Tensor, hook: Any) -> None:
        captured["x"] = activation.detach()

    with torch.no_grad(), adapter.own_hooks([(hook, keep)]):
        logits = adapter.forward(tokens)
    return captured["x"][0], int(logits[0, position].argmax())


# ------------------------------------------------------------------------------------ evaluation
def _evaluate(path: _Path, alphas: list[float]) -> tuple[dict[float, torch.Tensor], dict[float, float]]:
    """``∇f`` (``[pos, width]``, the working precision) and ``f`` at each ``α``, all in one engine call."""
    n = len(alphas)
    rows = TokenBatch(path.batch.tokens.expand(n, -1), path.batch.lengths.expand(n), single=False)
    output = run_scope(
        path.adapter,
        rows,
        resolve_positions(path.position, rows),
        lambda y, logits: objective_readout(path.adapter, y, path.target, path.objective),
        points=[PerturbationPoint(path.hook)],
        input_scale=torch.tensor(alphas, dtype=torch.float64),
        input_baseline=path.baseline,
        memory_budget_mb=path.memory_budget_mb,
        return_gradients=True,
        top_k=1,
    )
    gradients = output.gradients[:, 0, 0]  # [n, pos, width], the working precision
    values = output.per_prediction["objective"][:, 0].tolist()
    # f must be finite everywhere; ∇f is checked by the rules where they use it (∇f at α = 0 can be
    # unbounded: module docstring). The engine's squared scores are not used: they overflow first.
    for alpha, value in zip(alphas, values):
        if not math.isfinite(value):
            raise NonFiniteScoresError(
                f"integrated gradients: f = {value} at α = {alpha:.6g} on the path from the baseline; check the "
                "model's weights and the baseline."
            )
    return dict(zip(alphas, gradients)), dict(zip(alphas, values))


def _gap_scale(path: _Path, values: dict[float, float], tolerance: float) -> float:
    return completeness_scale(
        values[1.0], values[0.0], variation=path_variation(values), tolerance=tolerance,
        dtype=working_dtype(path.adapter.dtype),
    )


def integrated_gradients(
    model: Any,
    inputs: Inputs,
    *,
    target: TokenLike | None = None,
    objective: Objective = "log_probability",
    position: int = -1,
    baseline: Baseline = None,
    n_steps: int | None = None,
    method: Method | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    max_steps: int = DEFAULT_MAX_STEPS,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
) -> IntegratedGradientsResult:
    """Integrated Gradients of one prediction with respect to the residual-stream input ``x``.

    ``IG = (x − x₀) ⊙ ∫₀¹ ∇f(x₀ + α (x − x₀)) dα`` for ``f`` the ``objective`` of ``target`` at
    ``position`` (module docstring). By default the integral is adaptive and converges: panels are
    refined until the completeness gap ``Σ IG − (f(x) − f(x₀))`` is at most ``tolerance`` times
    ``|f(x) − f(x₀)|`` (more precisely, the variation of ``f`` along the path).

    Args:
        model: a HookedTransformer or TransformerBridge.
        inputs: one prompt: text (the model's BOS convention) or token ids ``[pos]`` used as given.
        target: the token whose ``f`` is attributed (a string of one token, or an id); None: the
            model's own top-1 prediction at ``position`` on the input.
        objective: ``"log_probability"`` (default), ``"logit"`` or ``"probability"`` of ``target``.
        position: the prediction position (negative counts from the end).
        baseline: ``x₀``: None or 0 (zeros, the usual choice), a number (every entry), or a tensor
            ``[pos, d_model]`` at the perturbation point (e.g. another prompt's embeddings).
        n_steps: a fixed number of nodes for captum's ``method`` (default ``"gausslegendre"``);
            None: adaptive (``method`` None) or captum's default of 50 (``method`` given).
        method: captum's ``"gausslegendre"``, ``"riemann_left"``, ``"riemann_right"``,
            ``"riemann_middle"`` or ``"riemann_trapezoid"`` (the last with captum's weights,
            summing to ``(N − 1)/N``; module docstring).
        tolerance: the relative completeness gap aimed for (adaptive) and above which a
            ``UserWarning`` says the integral has not converged (every method).
        max_steps: the most gradient evaluations the adaptive scheme may use.
        memory_budget_mb: working memory of each engine call (how many nodes share a forward pass).

    Returns:
        An :class:`IntegratedGradientsResult` (attributions ``[pos, d_model]``, scores ``[pos]``,
        the gap and how it was reached).

    Example:
        >>> result = integrated_gradients(model, prompt, target="7")
        >>> result.scores.shape, result.converged, abs(result.relative_completeness_gap) < 0.01    # [pos]
        (torch.Size([5]), True, True)
    """
    adapter = ModelAdapter(model)
    if objective not in OBJECTIVES:
        raise ScopeInputError(f"objective must be one of {list(OBJECTIVES)}; got {objective!r}.")
    method, fixed_steps = _check_method(n_steps, method)
    _check_numbers(tolerance, max_steps, memory_budget_mb)
    if isinstance(position, bool) or not isinstance(position, int):
        raise ScopeInputError(f"position must be one int (one prediction per call); got {position!r}.")
    if isinstance(inputs, (list, tuple)):
        raise ScopeInputError(
            "integrated_gradients takes one prompt (text or token ids [pos]); each prompt has its own path "
            "and adaptive rule, so call it once per prompt."
        )
    batch = prepare_tokens(adapter, inputs)
    if batch.tokens.shape[0] != 1:
        raise ScopeInputError(
            f"integrated_gradients takes one prompt; got token ids for {batch.tokens.shape[0]} prompts. "
            "Call it once per prompt."
        )
    absolute = int(resolve_positions(position, batch).index[0, 0])
    hook = adapter.perturbation_hook(0)
    with adapter.prepared_for_scopes():
        x, top1 = _input_and_prediction(adapter, batch.tokens, hook, absolute)
        x0 = _baseline_tensor(baseline, x)
        path = _Path(
            adapter, batch, absolute, hook, _target_id(adapter, target, top1), objective, x0,
            x.to(torch.float64) - x0.to(torch.float64), memory_budget_mb,
        )
        def evaluate(alphas: list[float]) -> tuple[dict[float, torch.Tensor], dict[float, float]]:
            return _evaluate(path, alphas)

        if fixed_steps is None:
            integral = adaptive_rule(
                evaluate, path.difference, float(tolerance), max_steps,
                lambda values: _gap_scale(path, values, float(tolerance)),
                smallest=torch.finfo(working_dtype(adapter.dtype)).tiny,
            )
        else:
            integral = fixed_rule(evaluate, method, fixed_steps)
    return _result(path, integral, method, float(tolerance), max_steps)


def _result(
    path: _Path, integral: Integral, method: str, tolerance: float, max_steps: int
) -> IntegratedGradientsResult:
    attributions = integral.gradient_sum * path.difference  # float64
    value, baseline_value = integral.values[1.0], integral.values[0.0]
    gap = float(attributions.sum()) - (value - baseline_value)
    relative = abs(gap) / _gap_scale(path, integral.values, tolerance)
    dtype = working_dtype(path.adapter.dtype)
    if relative > tolerance:
        if integral.stopped_at is not None:
            precision = str(dtype).removeprefix("torch.")
            why = "the gradient overflows it" if integral.stopped_because == "overflow" else "it holds no smaller α"
            advice = (
                f"f still changes closer to the baseline than α = {integral.stopped_at:.3g}, where {precision} stops "
                f"({why}; every normalisation layer sees an input of almost zero variance there), and the path "
                "below is integrated by one node: a float64 copy of the model, or another baseline, reaches it"
            )
        elif method == "adaptive":
            advice = f"raise max_steps (now {max_steps}) or tolerance"
        else:
            advice = "raise n_steps, or leave n_steps and method out for the adaptive rule, which converges"
        total, change = float(attributions.sum()), value - baseline_value
        warn_at_caller(
            f"Integrated Gradients ({method}, {integral.n_evaluations} gradient evaluations) has not converged: "
            f"the attributions sum to {total:.6g} where f(x) − f(x₀) = {change:.6g}, "
            f"a completeness gap of {gap:.3g} ({relative:.1%} of it, above tolerance={tolerance:g}); {advice}."
        )
    ordered = sorted(integral.rule)
    tokens = path.batch.tokens[0]
    return IntegratedGradientsResult(
        attributions=attributions.to(dtype).cpu(),
        scores=attributions.norm(dim=-1).to(dtype).cpu(),
        value=value,
        baseline_value=baseline_value,
        completeness_gap=gap,
        relative_completeness_gap=relative,
        path_variation=path_variation(integral.values),
        converged=relative <= tolerance,
        tolerance=tolerance,
        method=method,
        n_evaluations=integral.n_evaluations,
        n_rounds=integral.n_rounds,
        alphas=torch.tensor(ordered, dtype=torch.float64),
        weights=torch.tensor([integral.rule[alpha] for alpha in ordered], dtype=torch.float64),
        objective=path.objective,
        target=path.target,
        target_str=path.adapter.id_strings([path.target])[0],
        position=path.position,
        tokens=tokens,
        str_tokens=path.adapter.str_tokens(tokens),
        input_hook=path.hook,
    )

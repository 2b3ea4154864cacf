"""Quadrature rules for path integrals of gradients: captum's fixed rules and adaptive Gauss–Lobatto panels.

The numbers behind :func:`jscopes_tl.path_integrals.integrated_gradients`, apart from any model:
a rule is given ``evaluate(alphas)``, which returns the gradient ``∇f`` (``[pos, width]``) and the
value ``f`` at each node ``α`` of the path, and returns an :class:`Integral`, the weighted gradient
sum ``Σ_k w_k ∇f(x(α_k))`` with the rule that produced it. What each rule guarantees:

* :func:`fixed_rule`: captum's nodes and weights exactly as captum defines them
  (:func:`captum_rule`), one call of ``evaluate`` with ``f`` at ``α = 0`` and ``1`` added.
* :func:`adaptive_rule`: composite ``PANEL_NODES``-node Gauss–Lobatto panels, whose
  quadrature error *of the sum over dimensions* is known exactly from the ``f`` at their ends;
  one call of ``evaluate`` per round, never more than ``max_steps`` evaluations in all, every
  sum accumulated in float64. Why the panels are cut where they are, and the margin of 10 below
  the tolerance: the module docstring of :mod:`jscopes_tl.path_integrals`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from jaxtyping import Float

CAPTUM_METHODS = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")
# captum's default number of steps, for a method given without n_steps.
CAPTUM_DEFAULT_STEPS = 50
DEFAULT_TOLERANCE = 0.01
# The adaptive scheme's panels: nodes per panel (odd, so that a panel's midpoint is a node) and how many to start with.
PANEL_NODES = 9
INITIAL_PANELS = 4
# The adaptive scheme refines until the panels' errors sum to tolerance / REFINEMENT_MARGIN: only
# the sum over dimensions is known exactly, and its error can hide larger errors of single tokens
# that cancel in it (module docstring).
REFINEMENT_MARGIN = 10

# evaluate(alphas) -> (∇f at each α, [pos, width]; f at each α)
Evaluate = Callable[[list[float]], tuple[dict[float, torch.Tensor], dict[float, float]]]


def captum_rule(method: str, n_steps: int) -> tuple[Float[torch.Tensor, " n"], Float[torch.Tensor, " n"]]:
    """The nodes ``α`` and weights of captum's rule ``method`` with ``n_steps`` nodes on [0, 1], in float64.

    Example:
        >>> from jscopes_tl.quadrature import captum_rule
        >>> nodes, weights = captum_rule("riemann_trapezoid", 3)       # on [0, 1], float64
        >>> nodes.tolist(), [round(w, 4) for w in weights.tolist()]
        ([0.0, 0.5, 1.0], [0.1667, 0.3333, 0.1667])
    """
    n = n_steps
    k = torch.arange(n, dtype=torch.float64)
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)  # on [-1, 1]
        return torch.from_numpy(0.5 * (1 + nodes)), torch.from_numpy(0.5 * weights)
    if method == "riemann_trapezoid":
        weights = torch.full((n,), 1 / n, dtype=torch.float64)
        weights[[0, -1]] /= 2
        return k / (n - 1), weights
    offset = {"riemann_left": 0.0, "riemann_middle": 0.5, "riemann_right": 1.0}[method]
    return (k + offset) / n, torch.full((n,), 1 / n, dtype=torch.float64)


def gauss_lobatto_rule(n_nodes: int) -> tuple[Float[torch.Tensor, " n"], Float[torch.Tensor, " n"]]:
    """The ``n_nodes``-point Gauss–Lobatto rule on [0, 1] (exact for polynomials of degree
    ``2·n_nodes − 3``): both ends and the roots of ``P'_{n−1}``, weights ``2 / (n (n−1) P_{n−1}(t)²)``
    on [−1, 1], halved.

    Example:
        >>> from jscopes_tl.quadrature import gauss_lobatto_rule
        >>> nodes, weights = gauss_lobatto_rule(3)                # Simpson's rule
        >>> nodes.tolist(), [round(w, 4) for w in weights.tolist()]
        ([0.0, 0.5, 1.0], [0.1667, 0.6667, 0.1667])
    """
    legendre = np.polynomial.legendre.Legendre.basis(n_nodes - 1)
    nodes = np.concatenate([[-1.0], np.sort(legendre.deriv().roots().real), [1.0]])
    weights = 2 / (n_nodes * (n_nodes - 1) * legendre(nodes) ** 2)
    return torch.from_numpy(0.5 * (1 + nodes)), torch.from_numpy(0.5 * weights)


_LOBATTO_NODES, _LOBATTO_WEIGHTS = gauss_lobatto_rule(PANEL_NODES)


@dataclass(frozen=True, eq=False)
class _Panel:
    """One panel ``[start, end]`` of the adaptive rule, once its nodes are evaluated: the weighted
    gradient sum over its nodes (float64, ``[pos, width]``) and its error, the quadrature of
    ``df/dα`` minus the exact ``f(end) − f(start)``."""

    start: float
    end: float
    gradient_sum: torch.Tensor
    error: float

    @staticmethod
    def nodes(start: float, end: float) -> list[float]:
        # The ends exactly as given: they are nodes evaluated before (the neighbours', the cut
        # panel's), found again by value; the interior from the rule.
        interior = [start + (end - start) * float(t) for t in _LOBATTO_NODES[1:-1]]
        return [start, *interior, end]


@dataclass
class Integral:
    """What a quadrature produced: the weighted gradient sum and the rule, the values seen, the cost.

    Example:
        >>> x = torch.tensor([1.0, 2.0], dtype=torch.float64)      # f(αx) = α²‖x‖², ∇f(αx) = 2αx
        >>> def evaluate(alphas):                                  # gradients and values at α·x
        ...     return {a: 2 * a * x for a in alphas}, {a: 5.0 * a * a for a in alphas}
        >>> from jscopes_tl.quadrature import fixed_rule
        >>> integral = fixed_rule(evaluate, "riemann_middle", 2)
        >>> integral.rule, integral.values, integral.n_rounds
        ({0.25: 0.5, 0.75: 0.5}, {0.0: 0.0, 0.25: 0.3125, 0.75: 2.8125, 1.0: 5.0}, 1)
    """

    gradient_sum: torch.Tensor  # Σ_k w_k ∇f(x(α_k)), float64 [pos, width]
    rule: dict[float, float]  # α → weight
    values: dict[float, float]  # α → f, every point evaluated
    n_evaluations: int
    n_rounds: int


def path_variation(values: dict[float, float]) -> float:
    ordered = [values[alpha] for alpha in sorted(values)]
    return float(sum(abs(b - a) for a, b in zip(ordered, ordered[1:])))


def completeness_scale(
    value: float, baseline_value: float, *, variation: float = 0.0, tolerance: float = DEFAULT_TOLERANCE,
    dtype: torch.dtype = torch.float32,
) -> float:
    """What a completeness gap is measured against: ``|f(x) − f(x₀)|``, but never less than
    ``tolerance × variation`` (``f(x) ≈ f(x₀)`` while ``f`` moves along the path: the quadrature's
    error is relative to how much ``f`` moves, and a net change near 0 is not worth chasing) nor
    than ``√ε`` of ``dtype`` times ``max(1, |f(x)|)`` (``f`` flat: the gap is rounding).

    Example:
        >>> from jscopes_tl.quadrature import completeness_scale
        >>> completeness_scale(2.5, 0.5), completeness_scale(1.0, 1.0) > 0      # |f(x) - f(x0)|, never 0
        (2.0, True)
    """
    floor = math.sqrt(torch.finfo(dtype).eps) * max(1.0, abs(value))
    return max(abs(value - baseline_value), tolerance * variation, floor)


def fixed_rule(evaluate: Evaluate, method: str, n_steps: int) -> Integral:
    """captum's rule ``method`` with ``n_steps`` nodes, plus ``f`` at both ends (for the gap).

    Example:
        >>> x = torch.tensor([1.0, 2.0], dtype=torch.float64)      # f(αx) = α²‖x‖², ∇f(αx) = 2αx
        >>> def evaluate(alphas):                                  # gradients and values at α·x
        ...     return {a: 2 * a * x for a in alphas}, {a: 5.0 * a * a for a in alphas}
        >>> from jscopes_tl.quadrature import fixed_rule
        >>> integral = fixed_rule(evaluate, "gausslegendre", 4)
        >>> integral.gradient_sum, integral.n_evaluations              # ∫ 2αx dα = x; 4 nodes and both ends
        (tensor([1., 2.], dtype=torch.float64), 6)
    """
    alphas, weights = captum_rule(method, n_steps)
    rule: dict[float, float] = {}
    for alpha, weight in zip(alphas.tolist(), weights.tolist()):
        rule[alpha] = rule.get(alpha, 0.0) + weight
    evaluated = sorted(set(rule) | {0.0, 1.0})  # f(x₀) and f(x), for the gap
    gradients, values = evaluate(evaluated)
    gradient_sum = sum(weight * gradients[alpha].double() for alpha, weight in rule.items())
    return Integral(gradient_sum, rule, values, len(evaluated), 1)


def _pieces(panel: _Panel, values: dict[float, float]) -> list[tuple[float, float]]:
    """A panel cut at the two neighbouring nodes between which ``f`` changes most (where ``df/dα``
    is largest, so least resolved): 2 or 3 pieces, the one holding that step 5–18 % as wide as the
    panel (the gaps between a 9-node Lobatto rule's nodes), so a steep feature's panel shrinks 5 to
    20 times per round."""
    nodes = _Panel.nodes(panel.start, panel.end)
    steps = [abs(values[b] - values[a]) for a, b in zip(nodes, nodes[1:])]
    steepest = steps.index(max(steps))
    inner = [node for node in nodes[steepest : steepest + 2] if panel.start < node < panel.end]
    cuts = [panel.start, *inner, panel.end]
    return list(zip(cuts, cuts[1:]))


def adaptive_rule(
    evaluate: Evaluate, difference: torch.Tensor, tolerance: float, max_steps: int, scale: Callable[[dict[float, float]], float]
) -> Integral:
    """Composite Gauss–Lobatto panels, cut where their exactly known errors are largest, until the
    errors sum to ``tolerance / REFINEMENT_MARGIN`` times ``scale(values)`` or ``max_steps``
    evaluations are used; ``difference`` is ``x − x₀`` (float64), what the gradients multiply.

    Example:
        >>> x = torch.tensor([1.0, 2.0], dtype=torch.float64)      # f(αx) = α²‖x‖², ∇f(αx) = 2αx
        >>> def evaluate(alphas):                                  # gradients and values at α·x
        ...     return {a: 2 * a * x for a in alphas}, {a: 5.0 * a * a for a in alphas}
        >>> from jscopes_tl.quadrature import adaptive_rule
        >>> integral = adaptive_rule(evaluate, x, tolerance=0.01, max_steps=64, scale=lambda values: 5.0)
        >>> (x * integral.gradient_sum).sum().item(), integral.n_evaluations     # = f(x) - f(0) = 5
        (5.00..., 33)
    """
    edges = [i / INITIAL_PANELS for i in range(INITIAL_PANELS + 1)]
    pending = list(zip(edges, edges[1:]))  # panels whose nodes are not evaluated yet
    panels: list[_Panel] = []
    gradients: dict[float, torch.Tensor] = {}  # at the nodes of the current panels
    values: dict[float, float] = {}  # at every point evaluated
    n_evaluations = n_rounds = 0
    while pending:
        new = sorted({alpha for start, end in pending for alpha in _Panel.nodes(start, end)} - set(values))
        new_gradients, new_values = evaluate(new)
        gradients.update(new_gradients)
        values.update(new_values)
        n_evaluations, n_rounds = n_evaluations + len(new), n_rounds + 1
        for start, end in pending:
            weights = ((end - start) * _LOBATTO_WEIGHTS).tolist()
            gradient_sum = sum(w * gradients[alpha].double() for alpha, w in zip(_Panel.nodes(start, end), weights))
            error = float((gradient_sum * difference).sum()) - (values[end] - values[start])
            panels.append(_Panel(start, end, gradient_sum, error))
        panels.sort(key=lambda panel: panel.start)
        current = {alpha for panel in panels for alpha in _Panel.nodes(panel.start, panel.end)}
        gradients = {alpha: gradient for alpha, gradient in gradients.items() if alpha in current}

        allowed = tolerance / REFINEMENT_MARGIN * scale(values)
        if sum(abs(panel.error) for panel in panels) <= allowed:
            break
        # Cut the panels whose error exceeds an equal share of what is allowed, largest first, as
        # many as max_steps leaves room for (a piece's ends are known: PANEL_NODES − 2 new nodes each).
        share = allowed / len(panels)
        pending, cut = [], set()
        for panel in sorted((p for p in panels if abs(p.error) > share), key=lambda p: -abs(p.error)):
            pieces = _pieces(panel, values)
            if n_evaluations + (len(pending) + len(pieces)) * (PANEL_NODES - 2) > max_steps:
                break
            pending += pieces
            cut.add(id(panel))
        panels = [panel for panel in panels if id(panel) not in cut]

    rule: dict[float, float] = {}
    for panel in panels:
        weights = ((panel.end - panel.start) * _LOBATTO_WEIGHTS).tolist()
        for alpha, weight in zip(_Panel.nodes(panel.start, panel.end), weights):
            rule[alpha] = rule.get(alpha, 0.0) + weight
    return Integral(sum(panel.gradient_sum for panel in panels), rule, values, n_evaluations, n_rounds)

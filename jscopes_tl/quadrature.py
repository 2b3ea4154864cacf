"""Quadrature rules for path integrals of gradients: captum's fixed rules and adaptive Gauss–Lobatto panels.

The numbers behind :func:`jscopes_tl.path_integrals.integrated_gradients`, apart from any model:
a rule is given ``evaluate(alphas)``, which returns the gradient ``∇f`` (``[pos, width]``) and the
value ``f`` at each node ``α`` of the path, and returns an :class:`Integral`, the weighted gradient
sum ``Σ_k w_k ∇f(x(α_k))`` with the rule that produced it. What each rule guarantees:

* :func:`fixed_rule`: captum's nodes and weights exactly as captum defines them
  (:func:`captum_rule`), one call of ``evaluate`` with ``f`` at ``α = 0`` and ``1`` added.
* :func:`adaptive_rule`: composite ``PANEL_NODES``-node Gauss–Lobatto panels, in ``α`` on
  [1/4, 1] and in ``ln α`` below, and an end next to the baseline integrated by one node; the
  quadrature error *of the sum over dimensions* of each is known exactly from the ``f`` at its
  ends; the gradient at ``α = 0`` is never used; one call of ``evaluate`` per round, never more
  than ``max_steps`` evaluations in all, every sum accumulated in float64. Why the panels are
  where they are, and the margin of 10 below the tolerance: the module docstring of
  :mod:`jscopes_tl.path_integrals`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch
from jaxtyping import Float

from jscopes_tl.engine import all_finite
from jscopes_tl.errors import NonFiniteScoresError

CAPTUM_METHODS = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")
# captum's default number of steps, for a method given without n_steps.
CAPTUM_DEFAULT_STEPS = 50
DEFAULT_TOLERANCE = 0.01
# The adaptive scheme's panels: nodes per panel (odd, so that a panel's midpoint is a node) and how many to start with.
PANEL_NODES = 9
INITIAL_PANELS = 4
# The decades a log panel spans when it is made (from the first panel of [0, 1], or below the end),
# and the most log panels one refinement of the end adds (1, 2, 4, ... up to this).
END_DECADES = 2
MAX_EXTENSION = 8
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
_LOBATTO_INTERIOR = _LOBATTO_NODES[1:-1].tolist()
_LOBATTO_WEIGHT_LIST = _LOBATTO_WEIGHTS.tolist()

Kind = Literal["linear", "log", "end"]


@dataclass(frozen=True)
class _Stretch:
    """A stretch ``[start, end]`` of the path and the rule that integrates ``∇f`` over it:

    * ``"linear"``: a ``PANEL_NODES``-node Gauss–Lobatto panel in ``α``;
    * ``"log"``: the same panel in ``ln α`` (nodes evenly spread over the decades, weights times
      ``dα/d ln α = α``), ``END_DECADES`` decades wide at most;
    * ``"end"``: the rest of the path next to the baseline, ``[0, end]``: the one node ``end``
      with weight ``end`` (exact where ``∇f`` is constant on it), and ``f(0)`` for its error. The
      gradient at ``α = 0`` itself is never used. ``extension`` is how many log panels replace it
      below ``end`` when it is refined (doubling each time, up to ``MAX_EXTENSION``; 0: it is not
      refined, the gradient overflows below it).
    """

    start: float
    end: float
    kind: Kind
    extension: int = 1

    def points(self) -> list[float]:
        """Every ``α`` the rule needs ``f`` at, by increasing ``α``; the ends exactly as given
        (they are points evaluated before: a neighbour's, the refined stretch's), found again by value."""
        if self.kind == "end":
            return [0.0, self.end]
        if self.kind == "linear":
            interior = [self.start + (self.end - self.start) * t for t in _LOBATTO_INTERIOR]
        else:
            low, high = math.log(self.start), math.log(self.end)
            interior = [math.exp(low + (high - low) * t) for t in _LOBATTO_INTERIOR]
        return [self.start, *interior, self.end]

    def rule(self) -> list[tuple[float, float]]:
        """The nodes (whose gradients are used) and their weights."""
        if self.kind == "end":
            return [(self.end, self.end)]
        points = self.points()
        if self.kind == "linear":
            return [(a, (self.end - self.start) * w) for a, w in zip(points, _LOBATTO_WEIGHT_LIST)]
        width = math.log(self.end) - math.log(self.start)
        return [(a, width * w * a) for a, w in zip(points, _LOBATTO_WEIGHT_LIST)]


@dataclass(frozen=True, eq=False)
class _Panel:
    """A stretch once its points are evaluated: the weighted gradient sum over its nodes (float64,
    ``[pos, width]``) and its error, the quadrature of ``df/dα`` minus the exact ``f(end) − f(start)``."""

    stretch: _Stretch
    gradient_sum: torch.Tensor
    error: float


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
    # Where the adaptive rule stopped following the path towards the baseline though the end's error
    # was above its share: the end's one node α (the path below is integrated by it), and why:
    # "overflow" (the gradient is not finite closer to the baseline) or "precision" (the working
    # precision holds no smaller α). None when it did not stop there.
    stopped_at: float | None = None
    stopped_because: str = ""


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
    nonfinite = [alpha for alpha in rule if not all_finite(gradients[alpha])]
    if nonfinite:
        at_baseline = (
            f"; {method} has a node at α = 0, the baseline, where the gradient of a model whose normalisation layers "
            "all see zero variance is unbounded: leave n_steps and method out for the adaptive rule, which does not "
            "use it (or use gausslegendre, riemann_middle or riemann_right)"
            if nonfinite == [0.0] else ""
        )
        raise NonFiniteScoresError(
            f"integrated gradients ({method}): the gradient at α = {nonfinite[0]:.6g} on the path from the baseline "
            f"is NaN or infinite{at_baseline}."
        )
    gradient_sum = sum(weight * gradients[alpha].double() for alpha, weight in rule.items())
    return Integral(gradient_sum, rule, values, len(evaluated), 1)


def _pieces(stretch: _Stretch, values: dict[float, float], smallest: float) -> list[_Stretch]:
    """What replaces a stretch whose error is too large, by increasing ``α``.

    A linear or log panel is cut at the two neighbouring points between which ``f`` changes most
    (where ``df/dα`` is largest, so least resolved): 2 or 3 pieces of its kind, the one holding that
    step 5–18 % as wide as the panel (the gaps between a 9-node Lobatto rule's nodes, in ``α`` or
    ``ln α``), so a steep feature's panel shrinks 5 to 20 times per round. The end ``[0, β]`` gives
    ``extension`` log panels of ``END_DECADES`` decades each below ``β`` (never below ``smallest``,
    the least ``α`` the working precision holds) and a new end under them, which will give twice as
    many (at most ``MAX_EXTENSION``): the path is followed towards the baseline as far as ``f`` keeps
    changing, 2, 4, 8, 16, 16, ... decades a round, overshooting by 16 decades (8 log panels) at
    most. An end at ``smallest``, or with ``extension`` 0 (the gradient below it is not finite), is
    not refined.
    """
    if stretch.kind == "end":
        edges = [stretch.end]
        while len(edges) <= stretch.extension and edges[-1] > smallest:
            edges.append(max(edges[-1] * 10.0**-END_DECADES, smallest))
        if len(edges) == 1:
            return []
        logs = [_Stretch(low, high, "log") for low, high in zip(edges[1:], edges)]
        return [_Stretch(0.0, edges[-1], "end", min(2 * stretch.extension, MAX_EXTENSION)), *reversed(logs)]
    points = stretch.points()
    steps = [abs(values[b] - values[a]) for a, b in zip(points, points[1:])]
    steepest = steps.index(max(steps))
    inner = [point for point in points[steepest : steepest + 2] if stretch.start < point < stretch.end]
    cuts = [stretch.start, *inner, stretch.end]
    return [_Stretch(a, b, stretch.kind) for a, b in zip(cuts, cuts[1:])]


def _nonfinite(gradients: dict[float, torch.Tensor], pieces: list[_Stretch]) -> float | None:
    """The largest node ``α`` of ``pieces`` whose gradient is NaN or infinite (None: there is none)."""
    return max((alpha for piece in pieces for alpha, _ in piece.rule() if not all_finite(gradients[alpha])), default=None)


def _above_overflow(end: _Stretch, pieces: list[_Stretch], nonfinite: float) -> list[_Stretch]:
    """What is kept of an end's refinement whose gradient overflows at ``nonfinite``.

    Near the baseline of a model whose normalisation layers all see an input of zero variance
    there, ``∇f`` grows without bound as ``α → 0`` and can overflow the working precision. The log
    panels above the first overflowing node are kept and a new end under them is final
    (``extension`` 0): the path below is the end's one node, and the completeness gap says how much
    that misses.
    """
    logs = [piece for piece in pieces if piece.kind == "log" and piece.start > nonfinite]
    return [_Stretch(0.0, min((log.start for log in logs), default=end.end), "end", 0), *logs]


def first_round_size() -> int:
    """Gradient evaluations of the adaptive rule's first round (the least ``max_steps`` it accepts)."""
    return len({alpha for _, pieces in _first_round(0.0) for piece in pieces for alpha in piece.points()})


def _first_round(smallest: float) -> list[tuple[_Stretch | None, list[_Stretch]]]:
    """``INITIAL_PANELS`` equal panels of [0, 1], the first refined at once as an end (a log panel
    over its top ``END_DECADES`` decades and the end below it); each with what it refines."""
    edges = [i / INITIAL_PANELS for i in range(INITIAL_PANELS + 1)]
    first = _Stretch(0.0, edges[1], "end")
    linear = [_Stretch(a, b, "linear") for a, b in zip(edges[1:], edges[2:])]
    return [(first, _pieces(first, {}, smallest)), (None, linear)]


def adaptive_rule(
    evaluate: Evaluate,
    difference: torch.Tensor,
    tolerance: float,
    max_steps: int,
    scale: Callable[[dict[float, float]], float],
    smallest: float = torch.finfo(torch.float64).tiny,
) -> Integral:
    """Composite Gauss–Lobatto panels, linear in ``α`` on [1/4, 1] and in ``ln α`` below, down to
    an end next to the baseline, refined where their exactly known errors are largest until the
    errors sum to ``tolerance / REFINEMENT_MARGIN`` times ``scale(values)`` or ``max_steps``
    evaluations are used; ``difference`` is ``x − x₀`` (float64), what the gradients multiply, and
    ``smallest`` the least ``α`` the end may reach. The gradient at ``α = 0`` is evaluated (its
    row gives ``f(x₀)``) but never used.

    Example:
        >>> x = torch.tensor([1.0, 2.0], dtype=torch.float64)      # f(αx) = α²‖x‖², ∇f(αx) = 2αx
        >>> def evaluate(alphas):                                  # gradients and values at α·x
        ...     return {a: 2 * a * x for a in alphas}, {a: 5.0 * a * a for a in alphas}
        >>> from jscopes_tl.quadrature import adaptive_rule
        >>> integral = adaptive_rule(evaluate, x, tolerance=0.01, max_steps=64, scale=lambda values: 5.0)
        >>> (x * integral.gradient_sum).sum().item(), integral.n_evaluations     # = f(x) - f(0) = 5
        (5.00..., 34)
    """
    pending = _first_round(smallest)  # (the stretch refined, its pieces), whose points are not all evaluated yet
    panels: list[_Panel] = []
    gradients: dict[float, torch.Tensor] = {}  # at the nodes of the current panels
    values: dict[float, float] = {}  # at every point evaluated
    n_evaluations = n_rounds = 0
    while pending:
        new = sorted({alpha for _, pieces in pending for piece in pieces for alpha in piece.points()} - set(values))
        new_gradients, new_values = evaluate(new)
        gradients.update(new_gradients)
        values.update(new_values)
        n_evaluations, n_rounds = n_evaluations + len(new), n_rounds + 1
        for parent, pieces in pending:
            nonfinite = _nonfinite(gradients, pieces)
            if nonfinite is not None:
                if parent is None or parent.kind != "end":  # only the end's refinement may meet it
                    raise NonFiniteScoresError(
                        f"integrated gradients: the gradient at α = {nonfinite:.6g} on the path from the "
                        "baseline is NaN or infinite; check the model's weights and the baseline."
                    )
                pieces = _above_overflow(parent, pieces, nonfinite)
            for piece in pieces:
                gradient_sum = sum(weight * gradients[alpha].double() for alpha, weight in piece.rule())
                error = float((gradient_sum * difference).sum()) - (values[piece.end] - values[piece.start])
                panels.append(_Panel(piece, gradient_sum, error))
        panels.sort(key=lambda panel: panel.stretch.start)
        current = {alpha for panel in panels for alpha, _ in panel.stretch.rule()}
        gradients = {alpha: gradient for alpha, gradient in gradients.items() if alpha in current}

        allowed = tolerance / REFINEMENT_MARGIN * scale(values)
        share = allowed / len(panels)
        converged = sum(abs(panel.error) for panel in panels) <= allowed
        if converged:
            break
        # Refine the panels whose error exceeds an equal share of what is allowed, largest first, as
        # many as max_steps leaves room for (a cut panel's ends are known: PANEL_NODES − 2 new nodes
        # per piece).
        pending, refined, planned = [], set(), set()
        for panel in sorted((p for p in panels if abs(p.error) > share), key=lambda p: -abs(p.error)):
            pieces = _pieces(panel.stretch, values, smallest)
            needed = {alpha for piece in pieces for alpha in piece.points()} - set(values) - planned
            if n_evaluations + len(planned) + len(needed) > max_steps:
                break
            if pieces:
                planned |= needed
                pending.append((panel.stretch, pieces))
                refined.add(id(panel))
        panels = [panel for panel in panels if id(panel) not in refined]

    rule: dict[float, float] = {}
    for panel in panels:
        for alpha, weight in panel.stretch.rule():
            rule[alpha] = rule.get(alpha, 0.0) + weight
    integral = Integral(sum(panel.gradient_sum for panel in panels), rule, values, n_evaluations, n_rounds)
    end = panels[0]  # by increasing α
    if not converged and abs(end.error) > share and not _pieces(end.stretch, values, smallest):
        integral.stopped_at = end.stretch.end
        integral.stopped_because = "overflow" if end.stretch.extension == 0 else "precision"
    return integral

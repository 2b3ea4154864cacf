"""ScopeResult: what a scope returns, in the shapes users index by hand.

Axis rules (one prompt vs a batch, one position vs several) are applied here, once:

* ``scores``: ``[pos]`` for one prompt and one position; ``[batch, pos]`` for a batch; with an
  extra positions axis before ``pos`` when several positions (or ``"all"``) were asked for:
  ``[n_positions, pos]`` or ``[batch, n_positions, pos]``. Padding scores are 0.
* per-prediction fields (``position``, ``target``, prediction) drop the same axes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int


@dataclass(frozen=True)
class Prediction:
    """The model's top-k next-token prediction at each scored position."""

    token_ids: Int[torch.Tensor, "... k"]
    probabilities: Float[torch.Tensor, "... k"]
    str_tokens: list[Any]


@dataclass(frozen=True)
class ScopeResult:
    """Token-level Jacobian Scope scores for one prompt or a batch.

    Attributes:
        kind: ``"semantic"``, ``"fisher"`` or ``"temperature"``.
        scores: float32 CPU tensor; see the module docstring for its shape. Semantic and
            Temperature scores are L2 norms; Fisher scores are ``tr(J_t^T F J_t)`` (squared units).
        tokens: the token ids scored, ``[pos]`` or ``[batch, pos]`` (right-padded).
        str_tokens: the tokens as strings (real tokens only, per prompt).
        lengths: number of real tokens of each prompt, ``[batch]``.
        position: absolute prediction position(s) within each prompt.
        target: target token id(s) of a Semantic Scope (a trailing axis of 2 for a contrast
            ``(a, b)``), otherwise None.
        prediction: top-k tokens and probabilities at each prediction position.
        gradient_x_input: signed variant ``(u^T J_t) · x_t`` for single-direction scopes.
        gradients: ``u^T J_t`` itself (``[..., pos, d_model]``) when requested.
        metadata: numerics (folded/centred weights, hook names), Fisher rank and error bounds.
    """

    kind: str
    scores: Float[torch.Tensor, "..."]
    tokens: Int[torch.Tensor, "..."]
    str_tokens: list[Any]
    lengths: Int[torch.Tensor, " batch"]
    position: Int[torch.Tensor, "..."]
    target: Int[torch.Tensor, "..."] | None
    prediction: Prediction
    gradient_x_input: Float[torch.Tensor, "..."] | None = None
    gradients: Float[torch.Tensor, "..."] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def top_tokens(self, k: int = 5) -> list[tuple[int, str, float]]:
        """The ``k`` highest-scoring (index, token, score) of a single-prompt, single-position result."""
        if self.scores.ndim != 1:
            raise ValueError(
                f"top_tokens needs a result for one prompt and one position; scores have shape {tuple(self.scores.shape)}."
            )
        values, indices = self.scores.topk(min(k, self.scores.shape[0]))
        return [(int(i), self.str_tokens[int(i)], float(v)) for v, i in zip(values, indices)]

    def __repr__(self) -> str:
        return (
            f"ScopeResult(kind={self.kind!r}, scores={tuple(self.scores.shape)}, "
            f"position={self.position.tolist()}, prediction={self.prediction.str_tokens!r})"
        )

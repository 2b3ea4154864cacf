"""Readout directions: which directions ``u`` of the final hidden state ``y`` a scope reads.

A Jacobian Scope reads ``u^T J_t`` for every source token ``t`` (``J_t = ∂y/∂x_t``). The three
scopes of Liu et al., *Jacobian Scopes* (arXiv 2601.16407), differ only in ``u``:

* **Semantic**: ``u = ∂(logit_a [- logit_b])/∂y``, i.e. ``W_U[:, a]`` (minus ``W_U[:, b]`` for a
  contrast). Score ``‖u^T J_t‖₂``.
* **Temperature**: ``u = ŷ = y/‖y‖`` held constant, so ``u^T J_t = ∂‖y‖/∂x_t``. Score ``‖ŷ^T J_t‖₂``.
* **Fisher**: the top eigenvectors ``u_i`` (eigenvalues ``λ_i``) of the Fisher information of the
  softmax with respect to ``y``, ``F = W_U (diag(p) - p p^T) W_U^T``.
  Score ``tr(J_t^T F J_t) = Σ_i λ_i ‖u_i^T J_t‖²`` (exact when all eigenpairs are kept).

The directions come from the model's own unembedding evaluated at ``y``: semantic directions are
autograd gradients of the model's logits, so an unembedding bias never matters and an elementwise
post-unembedding transform (Gemma's soft-cap, logit scaling) is honoured. The Fisher matrix uses
``∂z/∂y = diag(s) W_U^T`` with ``s`` the derivative of that transform (1 when there is none).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Union

import torch
from jaxtyping import Float, Int

from jscopes_tl.adapter import ModelAdapter
from jscopes_tl.errors import ScopeInputError
from jscopes_tl.fisher import Solver, fisher_eigenpairs, working_dtype

TokenLike = Union[str, int]
Target = Union[
    None, TokenLike, tuple[TokenLike, TokenLike], torch.Tensor, Callable[[torch.Tensor], torch.Tensor]
]


@dataclass(frozen=True)
class Readout:
    """Directions in ``y``-space for every selected (prompt, position) pair ``m``.

    Scores are ``Σ_r weights[m, r] · ‖directions[m, r]^T J_t‖²``, square-rooted unless ``squared``.

    Example:
        >>> from jscopes_tl.readouts import Readout
        >>> y = torch.randn(3, model.cfg.d_model)                 # m = 3 predictions
        >>> readout = Readout(directions=y[:, None, :], weights=torch.ones(3, 1), squared=False)
        >>> readout.directions.shape, readout.weights.shape         # [m, r, d_model], [m, r]
        (torch.Size([3, 1, 64]), torch.Size([3, 1]))
    """

    directions: Float[torch.Tensor, "m r d_model"]
    weights: Float[torch.Tensor, "m r"]
    squared: bool
    target: Int[torch.Tensor, "m k"] | None = None
    per_prediction: dict[str, torch.Tensor] = field(default_factory=dict)  # values with first axis m
    metadata: dict[str, Any] = field(default_factory=dict)  # values shared by every prediction


# ------------------------------------------------------------------------------------ semantic
@dataclass(frozen=True)
class SemanticTarget:
    """A parsed ``target`` argument (parsed before the forward pass, so errors come early)."""

    kind: str  # "top1" | "token" | "contrast" | "direction" | "callable"
    token_ids: tuple[int, ...] = ()
    direction: torch.Tensor | None = None
    function: Callable[[torch.Tensor], torch.Tensor] | None = None


def _token_id(adapter: ModelAdapter, token: TokenLike, argument: str) -> int:
    if isinstance(token, bool):
        raise ScopeInputError(f"{argument} must be a token string or id; got {token!r}.")
    if isinstance(token, int):
        if not 0 <= token < adapter.d_vocab:
            raise ScopeInputError(f"{argument} id {token} is not in the vocabulary [0, {adapter.d_vocab - 1}].")
        return token
    if isinstance(token, str):
        if not token:
            raise ScopeInputError(f"{argument} is an empty string; give exactly one token.")
        ids = adapter.tokenize_fragment(token)
        unknown = adapter.unk_token_id
        if unknown is not None and unknown in ids.tolist() and token != adapter.str_tokens(torch.tensor([unknown]))[0]:
            raise ScopeInputError(
                f"{argument} {token!r} is not in the tokenizer's vocabulary: it tokenises to "
                f"{adapter.str_tokens(ids)}, the unknown token, whose logit says nothing about {token!r}. "
                "Pick a token the tokenizer knows (model.to_str_tokens(text) shows how text tokenises) "
                "or pass a token id."
            )
        if len(ids) != 1:
            pieces = adapter.str_tokens(ids)
            raise ScopeInputError(
                f"{argument} {token!r} must be exactly one token, but it tokenises into {len(ids)}: "
                f"{pieces} (ids {ids.tolist()}). Pick one of those tokens or pass a token id."
            )
        return int(ids[0])
    raise ScopeInputError(f"{argument} must be a token string or id; got {type(token).__name__}.")


def parse_semantic_target(adapter: ModelAdapter, target: Target) -> SemanticTarget:
    if target is None:
        return SemanticTarget(kind="top1")
    if isinstance(target, (str, int)):
        return SemanticTarget(kind="token", token_ids=(_token_id(adapter, target, "target"),))
    if isinstance(target, tuple):
        if len(target) != 2:
            raise ScopeInputError(f"a contrast target must be a pair (a, b); got {len(target)} items.")
        a = _token_id(adapter, target[0], "target[0]")
        b = _token_id(adapter, target[1], "target[1]")
        if a == b:
            raise ScopeInputError(f"contrast target compares token {a} with itself; its direction is zero.")
        return SemanticTarget(kind="contrast", token_ids=(a, b))
    if isinstance(target, torch.Tensor):
        if target.shape != (adapter.d_model,) or not target.is_floating_point():
            raise ScopeInputError(
                f"a direction target must be a float tensor of shape [d_model] = [{adapter.d_model}]; "
                f"got {target.dtype} {tuple(target.shape)}."
            )
        if not torch.isfinite(target).all() or not target.any():
            raise ScopeInputError("a direction target must be finite and non-zero.")
        return SemanticTarget(kind="direction", direction=target.detach())
    if callable(target):
        return SemanticTarget(kind="callable", function=target)
    raise ScopeInputError(
        "target must be None, a token string or id, a pair (a, b), a [d_model] tensor or a callable; "
        f"got {type(target).__name__}."
    )


def differentiate_readout(
    function: Callable[[torch.Tensor], Any], state: Float[torch.Tensor, "m *shape"], what: str
) -> tuple[Float[torch.Tensor, " m"], Float[torch.Tensor, "m *shape"]]:
    """``(f(state), ∇f)`` for a user's readout callable ``f`` (a Semantic target, a patching metric,
    a callable at a readout hook), its value checked before autograd sees it: a float tensor, one
    finite value per row, with a gradient path to its input. Otherwise a :class:`ScopeInputError`
    naming ``what`` (autograd's own "does not require grad" says nothing about whose value it was)."""
    m = state.shape[0]
    leaf = state.detach().requires_grad_(True)
    value = function(leaf)
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        got = f"a {value.dtype} tensor" if isinstance(value, torch.Tensor) else type(value).__name__
        raise ScopeInputError(f"{what} must return a float tensor computed from its input, one value per row; got {got}.")
    if value.shape != (m,):
        raise ScopeInputError(
            f"{what} must map its input [{m}, ...] to one value per row, shape [{m}]; got {tuple(value.shape)}."
        )
    no_path = (
        f"{what} must return a value differentiable in its input; it returned a tensor with no gradient path to it "
        "(a constant, detached, computed under torch.no_grad(), or rebuilt from Python numbers)."
    )
    if not value.requires_grad:
        raise ScopeInputError(no_path)
    if not torch.isfinite(value).all():
        rows = (~torch.isfinite(value)).nonzero().flatten().tolist()
        raise ScopeInputError(f"{what} returned NaN or infinite values at rows {rows}.")
    (direction,) = torch.autograd.grad(value.sum(), leaf, allow_unused=True)
    if direction is None:
        raise ScopeInputError(no_path)
    return value.detach(), direction


def semantic_readout(
    adapter: ModelAdapter,
    y: Float[torch.Tensor, "m d_model"],
    logits: Float[torch.Tensor, "m d_vocab"],
    target: SemanticTarget,
) -> Readout:
    """``u = ∂(c · logits)/∂y`` through the model's own unembedding, ``c`` a one-hot or contrast."""
    m = y.shape[0]
    if target.kind == "direction":
        direction = target.direction.to(y)
        return Readout(direction.expand(m, 1, -1).clone(), torch.ones(m, 1), squared=False)
    if target.kind == "callable":
        _, direction = differentiate_readout(target.function, y, "a callable target (or patching metric)")
        return Readout(direction[:, None, :], torch.ones(m, 1), squared=False)
    if target.kind == "top1":
        # max's indices are argmax's (the first of equal maxima) at a third of its cost on a CPU.
        ids = logits.max(dim=-1, keepdim=True).indices
    else:
        ids = torch.tensor([target.token_ids] * m)
    # One token's logit (coefficient 1), or a contrast's two with coefficients 1 and -1.
    coefficients = torch.tensor([[1.0, -1.0]] * m) if target.kind == "contrast" else None
    if not adapter.has_logit_transform:
        # logits = y W_U + b_U, so the gradient is the W_U columns themselves: no second pass over
        # the whole vocabulary (at GPT-2 size that pass costs as much as the rest of a scope's bookkeeping).
        W_U = adapter.W_U.detach()
        columns = W_U[:, ids.to(W_U.device)].to(y)  # [d_model, m, k]
        direction = columns[..., 0] if coefficients is None else (columns * coefficients.to(y)).sum(-1)
        return Readout(direction.T[:, None, :], torch.ones(m, 1), squared=False, target=ids.cpu())
    y_leaf = y.detach().requires_grad_(True)
    model_logits = adapter.logits(y_leaf)
    model_logits = model_logits if model_logits.dtype == torch.float64 else model_logits.float()
    selected = model_logits.gather(-1, ids.to(model_logits.device))
    value = selected.sum() if coefficients is None else (selected * coefficients.to(selected)).sum()
    (direction,) = torch.autograd.grad(value, y_leaf)
    return Readout(direction[:, None, :], torch.ones(m, 1), squared=False, target=ids.cpu())


# ------------------------------------------------------------------------------------ temperature
def warn_if_norm_is_fixed(adapter: ModelAdapter, stacklevel: int) -> None:
    """Temperature reads ``‖y‖``, which a final norm without its own gain fixes at ``√d_model``."""
    if adapter.final_norm_has_no_gain() and getattr(adapter.cfg, "normalization_type", "LN") is not None:
        warnings.warn(
            "Temperature Scope on a model whose final norm has no gain (weights folded into W_U, "
            "e.g. a HookedTransformer loaded with fold_ln=True or a bridge in compatibility mode): "
            "‖y‖ is fixed by the normalisation, so every score is 0 up to rounding. Load the model "
            "without folding (HookedTransformer.from_pretrained_no_processing, or a bridge without "
            "compatibility mode) to see the confidence dynamics.",
            stacklevel=stacklevel + 1,
        )


def temperature_readout(adapter: ModelAdapter, y: Float[torch.Tensor, "m d_model"]) -> Readout:
    """``u = y/‖y‖`` (a constant), so ``u^T J_t = ∂‖y‖/∂x_t``."""
    unit = y / y.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(y.dtype).tiny)
    return Readout(unit[:, None, :], torch.ones(y.shape[0], 1), squared=False)


# ------------------------------------------------------------------------------------ fisher
def logit_transform_slope(
    adapter: ModelAdapter, y: Float[torch.Tensor, "m d_model"]
) -> Float[torch.Tensor, "m d_vocab"] | None:
    """Derivative of the model's elementwise post-unembedding transform (None when there is none)."""
    if not adapter.has_logit_transform:
        return None
    dtype = working_dtype(y.dtype)
    pre = adapter.unembed_before_transform(y).detach().to(dtype).requires_grad_(True)
    (slope,) = torch.autograd.grad(adapter.logit_transform(pre).sum(), pre)
    return slope


def fisher_readout(
    adapter: ModelAdapter,
    y: Float[torch.Tensor, "m d_model"],
    logits: Float[torch.Tensor, "m d_vocab"],
    rank: int,
    tail_tolerance: float,
    solver: Solver = "auto",
) -> Readout:
    """Fisher eigen-directions (weighted by their eigenvalues) for every selected prediction.

    The probabilities are a float64 softmax, so ``1 - p_max`` (which sets the size of ``F`` on a
    confident prediction) is resolved far below float32's 6e-8 (the engine hands a float64 model's
    readouts float64 logits).
    """
    probabilities = torch.softmax(logits.double(), dim=-1)
    slopes = logit_transform_slope(adapter, y)
    W_U = adapter.W_U.detach()
    pairs = [
        fisher_eigenpairs(
            W_U,
            probabilities[i],
            rank,
            tail_tolerance=tail_tolerance,
            slope=None if slopes is None else slopes[i],
            column_sq_norms=adapter.unembed_statistics.column_sq_norms,
            solver=solver,
        )
        for i in range(y.shape[0])
    ]
    value_dtype = working_dtype(y.dtype)
    # On y's device: the eigenpairs live on W_U's (a certain prediction's on the CPU), which on a
    # model split across devices need not be y's.
    directions = torch.stack([pair.eigenvectors.T.to(y.device) for pair in pairs]).to(y.dtype)
    weights = torch.stack([pair.eigenvalues.to(y.device) for pair in pairs])
    traces = torch.tensor([pair.trace for pair in pairs], dtype=torch.float64, device=y.device)
    if not math.isfinite(float(traces.sum())):
        raise ScopeInputError("the Fisher matrix is not finite; check the model's logits.")
    captured = torch.where(traces > 0, weights.sum(-1) / traces.clamp_min(1e-300), 1.0)  # F = 0: nothing to miss
    per_prediction = {
        "eigenvalues": weights.to(value_dtype),
        "fisher_trace": traces.to(value_dtype),
        "captured_trace_fraction": captured.to(value_dtype),
        "dropped_probability_mass": torch.tensor([pair.dropped_mass for pair in pairs]).to(value_dtype),
        "dropped_trace_bound": torch.tensor([pair.dropped_trace for pair in pairs]).to(value_dtype),
        "dropped_trace_fraction": torch.tensor([p.dropped_trace_fraction for p in pairs]).to(value_dtype),
        "kept_vocabulary_rows": torch.tensor([pair.kept_rows for pair in pairs]),
        "eigen_residual": torch.tensor([pair.residual for pair in pairs]).to(value_dtype),
    }
    metadata = {
        "rank": rank,
        "exact": rank == adapter.d_model and tail_tolerance == 0,
        "tail_tolerance": tail_tolerance,
        "eigen_solver": sorted({pair.solver for pair in pairs}),
    }
    return Readout(
        directions, weights, squared=True, per_prediction=per_prediction, metadata=metadata
    )

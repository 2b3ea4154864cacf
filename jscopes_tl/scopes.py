"""Semantic, Fisher and Temperature Scopes: thin, named specialisations of one engine.

Each function answers one question about the prediction at ``position`` (default: the next
token after the prompt), scoring every source token ``t`` through the Jacobian
``J_t = ∂y/∂x_t`` of the final hidden state ``y`` with respect to the residual-stream input
``x_t`` (Liu et al., *Jacobian Scopes*, arXiv 2601.16407):

============  ====================================================  ===========================
scope         score of token t                                      question
============  ====================================================  ===========================
Semantic      ``‖w^T J_t‖₂``, ``w = W_U[:, target]``                 how much does t move one logit
                (``W_U[:, a] - W_U[:, b]`` for a contrast)            (or a logit difference)?
Fisher        ``tr(J_t^T F J_t)``, ``F = W_U (diag p - p p^T) W_U^T``  how much does t move the whole
                                                                    predictive distribution?
Temperature   ``‖ŷ^T J_t‖₂``, ``ŷ = y/‖y‖``                           how much does t move the
                                                                    confidence ``‖y‖``?
============  ====================================================  ===========================

Arguments are checked before the model runs, each failure a :class:`ScopeInputError` naming the
argument; the engine runs the model under its lock (:meth:`ModelAdapter.prepared_for_scopes`), so
two threads scoring one model take turns. Repeated prediction positions are computed once and
copied.

Numerics: ``y`` is the state fed to the unembedding. On a HookedTransformer loaded with the
defaults (and a TransformerBridge in compatibility mode) the final LayerNorm weights are folded
into ``W_U`` and ``W_U`` is centred; Fisher and contrast scores do not change, single-logit
Semantic and Temperature scores do. ``result.metadata["numerics"]`` records which applied.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Literal, Union

import torch

from jscopes_tl.adapter import ModelAdapter
from jscopes_tl.engine import DEFAULT_MEMORY_BUDGET_MB, EngineOutput, ReadoutBuilder, run_scope
from jscopes_tl.errors import NonFiniteScoresError, ScopeInputError
from jscopes_tl.fisher import Solver
from jscopes_tl.inputs import Inputs, Position, Positions, prepare_tokens, resolve_positions
from jscopes_tl.readouts import (
    Target,
    fisher_readout,
    parse_semantic_target,
    semantic_readout,
    temperature_readout,
    warn_if_norm_is_fixed,
)
from jscopes_tl.result import Prediction, ResultAxes, ScopeResult

DEFAULT_FISHER_TAIL_MASS = 1e-6


Layer = Union[int, Sequence[int], Literal["all"]]


def resolve_layers(adapter: ModelAdapter, layer: Layer) -> tuple[list[int], bool]:
    """Perturbation layers and whether one int was given (``"all"``: 0..n_layers, the last being
    the final residual stream, i.e. the rows of TransformerLens's resid patching plus one)."""
    if isinstance(layer, str):
        if layer != "all":
            raise ScopeInputError(f"layer must be an int, a list of ints or 'all'; got {layer!r}.")
        return list(range(adapter.n_layers + 1)), False
    if isinstance(layer, int) and not isinstance(layer, bool):
        adapter.resid_pre_hook(layer)
        return [layer], True
    if isinstance(layer, Sequence) and len(layer) > 0:
        for value in layer:
            adapter.resid_pre_hook(value)
        if len(set(layer)) != len(layer):
            raise ScopeInputError(f"layer lists a layer twice: {list(layer)}.")
        return list(layer), False
    raise ScopeInputError(f"layer must be an int, a non-empty list of ints or 'all'; got {layer!r}.")


def _check_options(
    top_k: Any, input_scale: Any, memory_budget_mb: Any, return_gradients: Any, backward_batch: Any
) -> None:
    def is_real(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ScopeInputError(f"top_k must be a positive int; got {top_k!r}.")
    if not is_real(input_scale) or not 0 < input_scale <= 1:
        raise ScopeInputError(f"input_scale must be a number in (0, 1]; got {input_scale!r}.")
    if not is_real(memory_budget_mb) or memory_budget_mb <= 0:
        raise ScopeInputError(f"memory_budget_mb must be a finite number of megabytes > 0; got {memory_budget_mb!r}.")
    if not isinstance(return_gradients, bool):
        raise ScopeInputError(f"return_gradients must be True or False; got {return_gradients!r}.")
    if backward_batch is not None and (
        isinstance(backward_batch, bool) or not isinstance(backward_batch, int) or backward_batch < 1
    ):
        raise ScopeInputError(f"backward_batch must be a positive int or None (automatic); got {backward_batch!r}.")


def _expand_positions(output: EngineOutput, positions: Positions) -> EngineOutput:
    """Copy the results of repeated positions (computed once) back to every requested slot. The
    logits stay per distinct position (the caller reduces them to the top-k first: a long list of
    repeats times the vocabulary would not fit in memory)."""

    def expand(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return None if tensor is None else tensor.index_select(1, positions.expand)

    return dataclasses.replace(
        output,
        scores=expand(output.scores),
        gradient_x_input=expand(output.gradient_x_input),
        gradients=expand(output.gradients),
        target=expand(output.target),
        per_prediction={key: expand(values) for key, values in output.per_prediction.items()},
    )


def _check_finite(scores: torch.Tensor, kind: str) -> None:
    """NaN or infinite scores are never returned: they come from a readout (e.g. a target callable
    returning NaN) or gradients that are not finite, and would rank tokens arbitrarily."""
    if not torch.isfinite(scores).all():
        first = [int(i) for i in (~torch.isfinite(scores)).nonzero()[0]]
        raise NonFiniteScoresError(
            f"the {kind} scope's scores are NaN or infinite (first at index {first} of scores "
            "[batch, positions, layers, pos]); check the target (a callable's value and gradient must be "
            "finite) and the model's weights."
        )


def _nested_str_tokens(adapter: ModelAdapter, token_ids: torch.Tensor) -> list[Any]:
    """The string of every id in a tensor of any shape, as nested lists (each distinct id decoded once)."""
    distinct = token_ids.unique()
    strings = dict(zip(distinct.tolist(), adapter.str_tokens(distinct)))

    def nested(values: Any) -> Any:
        return [nested(value) for value in values] if isinstance(values, list) else strings[values]

    return nested(token_ids.tolist())


def jacobian_scope(
    model: Any,
    inputs: Inputs,
    build_readout: ReadoutBuilder,
    *,
    kind: str,
    position: Position = -1,
    layer: Layer = 0,
    top_k: int = 5,
    input_scale: float = 1.0,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    return_gradients: bool = False,
    n_directions: int = 1,
    backward_batch: int | None = None,
    attention_mask: torch.Tensor | None = None,
) -> ScopeResult:
    """The general scope: any readout builder ``(y [m, d_model], logits [m, d_vocab]) -> Readout``.

    The named scopes below are this function with their readout; use it directly for a custom one.
    ``input_scale`` evaluates the Jacobian at ``α·x`` instead of ``x`` (for path integrals such
    as Integrated Gradients); ``memory_budget_mb`` bounds the working memory (how many prompts
    share a forward pass, how many vectors a batched backward pass); ``return_gradients`` keeps
    ``u^T J_t`` itself; ``n_directions`` (how many directions the readout returns per
    prediction) sizes the batched backward passes; ``backward_batch`` fixes how many backward
    vectors share one backward pass (default: 1 on a CPU, where batching them is no faster; as
    many as ``memory_budget_mb`` holds on an accelerator). ``attention_mask`` (with a token
    tensor; 1 = real token) marks padding: each prompt's real tokens are scored as if alone, in a
    right-padded layout, and ``metadata["input_columns"]`` maps them back to the tensor's columns
    (see :mod:`jscopes_tl.inputs`).
    """
    adapter = ModelAdapter(model)
    _check_options(top_k, input_scale, memory_budget_mb, return_gradients, backward_batch)
    layers, single_layer = resolve_layers(adapter, layer)
    batch = prepare_tokens(adapter, inputs, attention_mask)
    positions = resolve_positions(position, batch)
    axes = ResultAxes(prompts=not batch.single, positions=not positions.single, layers=not single_layer)
    output: EngineOutput = run_scope(
        adapter,
        batch,
        positions,
        build_readout,
        layers=layers,
        n_directions=n_directions,
        input_scale=input_scale,
        memory_budget_mb=memory_budget_mb,
        return_gradients=return_gradients,
        backward_batch=backward_batch,
    )
    _check_finite(output.scores, kind)

    probabilities = torch.softmax(output.logits, dim=-1)
    top_probabilities, top_ids = probabilities.topk(min(top_k, probabilities.shape[-1]), dim=-1)
    position_index = positions.index
    if positions.expand is not None:
        output = _expand_positions(output, positions)
        top_probabilities, top_ids, position_index = (
            tensor.index_select(1, positions.expand) for tensor in (top_probabilities, top_ids, position_index)
        )
    top_ids = axes.squeeze_prediction(top_ids)
    target = None if output.target is None else axes.squeeze_prediction(output.target)
    hooks = output.perturbation_hooks
    metadata: dict[str, Any] = {
        "layer": layers[0] if single_layer else layers,
        "numerics": adapter.numerics(hooks[0] if single_layer else hooks).as_dict(),
        **output.metadata,
    }
    for key, values in output.per_prediction.items():
        metadata[key] = axes.squeeze_prediction(values)
    if batch.input_columns is not None:
        columns = [row[:length].tolist() for row, length in zip(batch.input_columns, batch.lengths.tolist())]
        metadata["input_columns"] = columns[0] if batch.single else columns

    real_tokens = [batch.tokens[row, :length] for row, length in enumerate(batch.lengths.tolist())]
    str_tokens = [adapter.str_tokens(tokens) for tokens in real_tokens]
    return ScopeResult(
        kind=kind,
        scores=axes.squeeze_score(output.scores),
        tokens=batch.tokens[0] if batch.single else batch.tokens,
        str_tokens=str_tokens[0] if batch.single else str_tokens,
        lengths=batch.lengths,
        position=axes.squeeze_prediction(position_index),
        target=target,
        prediction=Prediction(
            token_ids=top_ids,
            probabilities=axes.squeeze_prediction(top_probabilities),
            str_tokens=_nested_str_tokens(adapter, top_ids),
        ),
        gradient_x_input=None if output.gradient_x_input is None else axes.squeeze_score(output.gradient_x_input),
        gradients=None if output.gradients is None else axes.squeeze_score(output.gradients),
        metadata=metadata,
    )


def semantic_scope(
    model: Any,
    inputs: Inputs,
    *,
    target: Target = None,
    position: Position = -1,
    layer: Layer = 0,
    **options: Any,
) -> ScopeResult:
    """Semantic Scope: how strongly each token moves the logit of ``target`` at ``position``.

    Score of token ``t``: ``‖w^T J_t‖₂`` with ``w = ∂logit_target/∂y`` (``= W_U[:, target]``).

    Args:
        model: a HookedTransformer or TransformerBridge.
        inputs: a prompt, a list of prompts (a right-padded batch) or token ids ``[pos]`` /
            ``[batch, pos]`` used exactly as given (padding only where ``attention_mask`` says).
        target: ``None`` (the model's own top-1 prediction at each position), a token string
            (exactly one token, e.g. ``" liberal"``) or id, a pair ``(a, b)`` scoring the logit
            difference ``a - b``, a ``[d_model]`` direction tensor, or a callable mapping
            ``y [m, d_model]`` to ``[m]`` scalars.
        position: an int (negative counts from each prompt's end), a list of ints, or ``"all"``.
        layer: perturb the residual stream entering this block (0: the embeddings; ``n_layers``:
            the final residual stream); a list or ``"all"`` adds a layers axis before ``pos``
            (``[n_layers + 1, pos]`` for ``"all"``), all from one forward and one backward pass.
        **options: ``top_k``, ``input_scale``, ``memory_budget_mb``, ``return_gradients``,
            ``backward_batch``, ``attention_mask`` (see :func:`jacobian_scope`).

    Example:
        >>> result = semantic_scope(model, "Tom loves Korean food. He is a", target=(" liberal", " conservative"))
        >>> result.top_tokens(3)
    """
    adapter = ModelAdapter(model)
    parsed = parse_semantic_target(adapter, target)
    return jacobian_scope(
        model,
        inputs,
        lambda y, logits: semantic_readout(adapter, y, logits, parsed),
        kind="semantic",
        position=position,
        layer=layer,
        **options,
    )


def temperature_scope(
    model: Any, inputs: Inputs, *, position: Position = -1, layer: Layer = 0, **options: Any
) -> ScopeResult:
    """Temperature Scope: how strongly each token moves the model's confidence ``‖y‖``.

    Score of token ``t``: ``‖ŷ^T J_t‖₂ = ‖∂‖y‖/∂x_t‖₂`` with ``ŷ = y/‖y‖`` held constant. It
    depends on whether the final norm's weights were folded into ``W_U`` (see module docs).

    Example:
        >>> temperature_scope(model, "51,53,55,57,58,57,53,").scores
    """
    adapter = ModelAdapter(model)
    result = jacobian_scope(
        model, inputs, lambda y, logits: temperature_readout(adapter, y), kind="temperature", position=position, layer=layer, **options
    )
    warn_if_norm_is_fixed(adapter, stacklevel=2)  # after the inputs were accepted; at the caller's line
    return result


def fisher_scope(
    model: Any,
    inputs: Inputs,
    *,
    rank: int | None = 1,
    position: Position = -1,
    layer: Layer = 0,
    tail_mass: float = DEFAULT_FISHER_TAIL_MASS,
    eigen_solver: Solver = "auto",
    **options: Any,
) -> ScopeResult:
    """Fisher Scope: how strongly each token moves the whole predictive distribution.

    Score of token ``t``: ``tr(J_t^T F J_t) = Σ_i λ_i ‖u_i^T J_t‖²`` over the top ``rank``
    eigenpairs of ``F = W_U (diag(p) - p p^T) W_U^T``. ``rank=None`` keeps all ``d_model``
    (exact up to ``tail_mass``); the paper's default is 1. Tokens holding at most ``tail_mass``
    of the probability together are left out of ``F``; ``metadata`` reports the dropped mass,
    the bound ``tr(F - F_kept)`` on the error, and the fraction of ``tr(F)`` the rank captures.
    ``eigen_solver``: ``"dense"`` forms ``F`` and calls ``eigh``; ``"krylov"`` is matrix-free
    (block Krylov, residual tolerance 1e-5 relative to ``λ_1``, reported as ``eigen_residual``);
    ``"auto"`` picks by cost and falls back to dense when the spectrum is too flat to converge.
    See :mod:`jscopes_tl.fisher`.

    Example:
        >>> fisher_scope(model, "German: Dies ist ein Aufsatz. English: This is a", rank=8).scores
    """
    adapter = ModelAdapter(model)
    if rank is None:
        rank = adapter.d_model
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= adapter.d_model:
        raise ScopeInputError(
            f"rank must be an int in [1, d_model={adapter.d_model}] or None (exact); got {rank!r}."
        )
    if not isinstance(tail_mass, (int, float)) or not 0 <= tail_mass < 1:
        raise ScopeInputError(f"tail_mass must be a probability in [0, 1); got {tail_mass!r}.")
    if eigen_solver not in ("auto", "dense", "krylov"):
        raise ScopeInputError(f"eigen_solver must be 'auto', 'dense' or 'krylov'; got {eigen_solver!r}.")
    return jacobian_scope(
        model,
        inputs,
        lambda y, logits: fisher_readout(adapter, y, logits, rank, float(tail_mass), eigen_solver),
        kind="fisher",
        n_directions=rank,
        position=position,
        layer=layer,
        **options,
    )

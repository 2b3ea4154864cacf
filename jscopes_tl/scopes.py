"""Semantic, Fisher and Temperature Scopes: thin, named specialisations of one engine.

Each function answers one question about the prediction at ``position`` (default: the next
token after the prompt), scoring every source token ``t`` through the Jacobian
``J_t = ∂y/∂x_t`` of the final hidden state ``y`` with respect to the residual-stream input
``x_t`` (Liu et al., *Jacobian Scopes*, arXiv 2601.16407):

============  ========================================================  ===============================
scope         score of token t                                          question
============  ========================================================  ===============================
Semantic      ``‖w^T J_t‖₂``, ``w = W_U[:, target]``                    how much does t move one logit
              (``W_U[:, a] - W_U[:, b]`` for a contrast)                (or a logit difference)?
Fisher        ``tr(J_t^T F J_t)``, ``F = W_U (diag p - p p^T) W_U^T``   how much does t move the whole
                                                                        predictive distribution?
Temperature   ``‖ŷ^T J_t‖₂``, ``ŷ = y/‖y‖``                             how much does t move the
                                                                        confidence ``‖y‖``?
============  ========================================================  ===============================

Arguments are checked before the model runs, each failure a :class:`ScopeInputError` naming the
argument; the engine runs the model under its lock (:meth:`ModelAdapter.prepared_for_scopes`), so
two threads scoring one model take turns. Repeated prediction positions are computed once and
copied.

Numerics: ``y`` is the state fed to the unembedding. On a HookedTransformer loaded with the
defaults (and a TransformerBridge in compatibility mode) the final LayerNorm weights are folded
into ``W_U`` and ``W_U`` is centred; Fisher and contrast scores do not change, single-logit
Semantic and Temperature scores do. ``result.metadata["numerics"]`` records which applied.

Every scope also takes ``readout_hook=`` (read an internal activation instead of ``y``: a probe,
a callable or an SAE latent for Semantic, the activation's norm for Temperature; see
:mod:`jscopes_tl.hook_readouts`) and ``fwd_hooks=`` (TransformerLens's ``[(hook_name, fn), ...]``,
applied during the scope's forward pass: the scope of the model under that intervention).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal, Union

import torch

from jscopes_tl.adapter import ModelAdapter
from jscopes_tl.engine import (
    DEFAULT_MEMORY_BUDGET_MB,
    EngineOutput,
    FwdHooks,
    PerturbationPoint,
    ReadoutBuilder,
    ReadoutPoint,
    all_finite,
    run_scope,
)
from jscopes_tl.errors import NonFiniteScoresError, ScopeInputError
from jscopes_tl.fisher import Solver
from jscopes_tl.hook_readouts import SAELatent, hook_semantic_readout, hook_temperature_readout, parse_hook_target
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

# Default truncation of the Fisher matrix: rows dropped hold at most this fraction of tr(F).
DEFAULT_FISHER_TAIL_TOLERANCE = 1e-6
# Above this fraction of tr(F), a truncation the caller asked for is worth a warning.
FISHER_TAIL_WARNING_FRACTION = 0.01


Layer = Union[int, Sequence[int], Literal["all"]]

# Options that belong to one named scope (what they set), and what each scope reads: another
# scope given one of them says whose it is instead of a TypeError from jacobian_scope.
_OWN_OPTIONS = {
    "target": ("semantic_scope", "the token, direction, callable or SAE latent it reads"),
    "rank": ("fisher_scope", "its number of eigen-directions"),
    "tail_tolerance": ("fisher_scope", "its truncation of F"),
    "eigen_solver": ("fisher_scope", "its eigen-solver"),
    "tail_mass": ("fisher_scope", "its old truncation of F"),
}
_READS = {
    "semantic_scope": "one logit (or a direction of y)",
    "fisher_scope": "the whole predictive distribution, which no token selects",
    "temperature_scope": "the model's confidence ‖y‖, which no token selects",
}


def check_own_options(scope: str, options: dict[str, Any]) -> None:
    """Refuse an option of another named scope (``temperature_scope(target=...)``) by name."""
    for name in options:
        owner, sets = _OWN_OPTIONS.get(name, (scope, ""))
        if owner != scope:
            raise ScopeInputError(
                f"{scope} has no {name}: it reads {_READS[scope]}. {name} is {owner}'s ({sets}); call "
                f"{owner}(model, inputs, {name}=...) for that."
            )


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


def check_options(
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


def expand_positions(output: EngineOutput, positions: Positions) -> EngineOutput:
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


def check_finite(scores: torch.Tensor, kind: str) -> None:
    """NaN or infinite scores are never returned: they come from a readout (e.g. a target callable
    returning NaN) or gradients that are not finite, and would rank tokens arbitrarily."""
    if not all_finite(scores):
        first = [int(i) for i in (~torch.isfinite(scores)).nonzero()[0]]
        raise NonFiniteScoresError(
            f"the {kind} scope's scores are NaN or infinite (first at index {first} of scores "
            "[batch, positions, layers, pos]); check the target (a callable's value and gradient must be "
            "finite) and the model's weights."
        )


def _nested_str_tokens(adapter: ModelAdapter, token_ids: torch.Tensor) -> list[Any]:
    """The string of every id in a tensor of any shape, as nested lists (each distinct id decoded once)."""
    distinct = list(dict.fromkeys(token_ids.reshape(-1).tolist()))
    strings = dict(zip(distinct, adapter.id_strings(distinct)))

    def nested(values: Any) -> Any:
        return [nested(value) for value in values] if isinstance(values, list) else strings[values]

    return nested(token_ids.tolist())


def _display_metadata(
    adapter: ModelAdapter,
    real_tokens: list[torch.Tensor],
    str_tokens: list[list[str]],
    single: bool,
    target: torch.Tensor | None,
) -> dict[str, Any]:
    """What views show beside the scores: the model's name, each prompt as text, the tokenizer's
    word boundaries (:func:`jscopes_tl.words.tokenizer_word_starts`) and the target tokens as
    strings (``[batch][n_positions]``, a pair each for a contrast, whatever axes ``scores`` keeps)."""
    texts = [adapter.text(tokens) for tokens in real_tokens]
    word_starts = [adapter.word_starts(tokens, strings) for tokens, strings in zip(real_tokens, str_tokens)]
    target_str_tokens = None
    if target is not None:
        target_str_tokens = _nested_str_tokens(adapter, target)
    return {
        "model_name": adapter.model_name,
        "text": texts[0] if single else texts,
        "word_starts": word_starts[0] if single else word_starts,
        "target_str_tokens": target_str_tokens,
    }


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
    readout_hook: str | None = None,
    fwd_hooks: FwdHooks | None = None,
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
    many as ``memory_budget_mb`` holds on an accelerator). ``readout_hook`` reads the activation
    at that hook instead (the builder then gets it as ``y`` and ``None`` for the logits, and the
    result has no prediction); ``fwd_hooks`` run during the forward pass (see module docs).
    ``attention_mask`` (with a token tensor; 1 = real token) marks padding: each prompt's real
    tokens are scored as if alone, in a right-padded layout, and ``metadata["input_columns"]``
    maps them back to the tensor's columns (see :mod:`jscopes_tl.inputs`). The named scopes pass
    the call's :class:`ModelAdapter` as ``model``.

    Example:
        >>> from jscopes_tl.readouts import Readout
        >>> seven = model.W_U[:, model.to_single_token("7")]       # a direction in y-space [d_model]
        >>> def build(y, logits):                        # y [m, d_model] -> directions [m, 1, d_model]
        ...     return Readout(seven.expand(len(y), 1, -1), weights=torch.ones(len(y), 1), squared=False)
        >>> jacobian_scope(model, prompt, build, kind="unembedding of 7").top_tokens(1)
        [(2, 'b=7', 5.64...)]
    """
    adapter = model if isinstance(model, ModelAdapter) else ModelAdapter(model)
    check_options(top_k, input_scale, memory_budget_mb, return_gradients, backward_batch)
    readout_point = resolve_readout_hook(adapter, readout_hook)
    user_hooks = check_fwd_hooks(adapter, fwd_hooks)
    layers, single_layer = resolve_layers(adapter, layer)
    batch = prepare_tokens(adapter, inputs, attention_mask)
    positions = resolve_positions(position, batch)
    axes = ResultAxes(prompts=not batch.single, positions=not positions.single, layers=not single_layer)
    output: EngineOutput = run_scope(
        adapter,
        batch,
        positions,
        build_readout,
        points=[PerturbationPoint(adapter.perturbation_hook(layer)) for layer in layers],
        readout=readout_point,
        fwd_hooks=user_hooks,
        n_directions=n_directions,
        input_scale=input_scale,
        memory_budget_mb=memory_budget_mb,
        return_gradients=return_gradients,
        backward_batch=backward_batch,
        top_k=top_k,
    )
    check_finite(output.scores, kind)

    prediction = prediction_of(adapter, output, axes, positions.expand)
    position_index = positions.index
    if positions.expand is not None:
        output = expand_positions(output, positions)
        position_index = position_index.index_select(1, positions.expand)
    target = None if output.target is None else axes.squeeze_prediction(output.target)
    hooks = output.perturbation_hooks
    metadata: dict[str, Any] = {
        "layer": layers[0] if single_layer else layers,
        "numerics": adapter.numerics(hooks[0] if single_layer else hooks).as_dict(),
        **output.metadata,
    }
    for key, values in output.per_prediction.items():
        metadata[key] = axes.squeeze_prediction(values)
    record_readout_and_hooks(metadata, output, user_hooks)
    if batch.input_columns is not None:
        columns = [row[:length].tolist() for row, length in zip(batch.input_columns, batch.lengths.tolist())]
        metadata["input_columns"] = columns[0] if batch.single else columns

    real_tokens = [batch.tokens[row, :length] for row, length in enumerate(batch.lengths.tolist())]
    str_tokens = [adapter.str_tokens(tokens) for tokens in real_tokens]
    metadata.update(_display_metadata(adapter, real_tokens, str_tokens, batch.single, output.target))
    return ScopeResult(
        kind=kind,
        scores=axes.squeeze_score(output.scores),
        tokens=batch.tokens[0] if batch.single else batch.tokens,
        str_tokens=str_tokens[0] if batch.single else str_tokens,
        lengths=batch.lengths,
        position=axes.squeeze_prediction(position_index),
        target=target,
        prediction=prediction,
        gradient_x_input=None if output.gradient_x_input is None else axes.squeeze_score(output.gradient_x_input),
        gradients=None if output.gradients is None else axes.squeeze_score(output.gradients),
        metadata=metadata,
    )


def semantic_scope(
    model: Any,
    inputs: Inputs,
    *,
    target: Target | SAELatent = None,
    position: Position = -1,
    layer: Layer = 0,
    readout_hook: str | None = None,
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
        readout_hook: read the activation at this hook (e.g. ``"blocks.1.hook_resid_post"``)
            instead of the logits; ``target`` is then a probe direction shaped like the activation
            per token, a callable of the activation ``[m, ...] -> [m]``, or
            :func:`~jscopes_tl.hook_readouts.sae_latent` (which also sets the hook: the SAE's).
        **options: ``top_k``, ``input_scale``, ``memory_budget_mb``, ``return_gradients``,
            ``backward_batch``, ``fwd_hooks``, ``attention_mask`` (see :func:`jacobian_scope`).

    Example:
        >>> result = semantic_scope(model, prompt, target="7")    # the logit of "7" after "b="
        >>> result.top_tokens(2)                                  # [(index, token, score)]: b=7 first
        [(2, 'b=7', 5.64...), (4, 'b=', 0.953...)]
    """
    check_own_options("semantic_scope", options)
    adapter = ModelAdapter(model)
    build, readout_hook = semantic_builder(adapter, target, readout_hook)
    return jacobian_scope(
        adapter, inputs, build, kind="semantic", position=position, layer=layer, readout_hook=readout_hook, **options
    )


def temperature_scope(
    model: Any,
    inputs: Inputs,
    *,
    position: Position = -1,
    layer: Layer = 0,
    readout_hook: str | None = None,
    **options: Any,
) -> ScopeResult:
    """Temperature Scope: how strongly each token moves the model's confidence ``‖y‖``.

    Score of token ``t``: ``‖ŷ^T J_t‖₂ = ‖∂‖y‖/∂x_t‖₂`` with ``ŷ = y/‖y‖`` held constant. It
    depends on whether the final norm's weights were folded into ``W_U`` (see module docs).
    With ``readout_hook`` it reads the norm of the activation there instead.

    Example:
        >>> temperature_scope(model, prompt).top_tokens(1)
        [(2, 'b=7', 0.740...)]
    """
    check_own_options("temperature_scope", options)
    adapter = ModelAdapter(model)
    result = jacobian_scope(
        adapter, inputs, temperature_builder(adapter, readout_hook), kind="temperature", position=position,
        layer=layer, readout_hook=readout_hook, **options,
    )
    if readout_hook is None:
        warn_if_norm_is_fixed(adapter, stacklevel=2)  # after the inputs were accepted; at the caller's line
    return result


def fisher_scope(
    model: Any,
    inputs: Inputs,
    *,
    rank: int | None = 1,
    position: Position = -1,
    layer: Layer = 0,
    tail_tolerance: float = DEFAULT_FISHER_TAIL_TOLERANCE,
    eigen_solver: Solver = "auto",
    readout_hook: str | None = None,
    tail_mass: float | None = None,
    **options: Any,
) -> ScopeResult:
    """Fisher Scope: how strongly each token moves the whole predictive distribution.

    Score of token ``t``: ``tr(J_t^T F J_t) = Σ_i λ_i ‖u_i^T J_t‖²`` over the top ``rank``
    eigenpairs of ``F = W_U (diag(p) - p p^T) W_U^T``. ``rank=None`` keeps all ``d_model``; the
    paper's default is 1. ``F`` is built exactly at any confidence (see :mod:`jscopes_tl.fisher`):
    vocabulary rows are kept by decreasing Fisher mass until the rest, the exact error bound
    ``tr(F - F_kept)``, is at most ``tail_tolerance · tr(F)`` (default 1e-6; 0: no truncation).
    ``metadata`` reports that bound (``dropped_trace_bound``, and ``dropped_trace_fraction``
    relative to ``tr F``), the dropped probability mass, and the fraction of ``tr(F)`` the rank
    captures; a warning is raised when the bound exceeds 1 % of ``tr F``.
    ``eigen_solver``: ``"dense"`` forms ``F`` and calls ``eigh``; ``"krylov"`` is matrix-free
    (block Krylov, residual tolerance 1e-5 relative to ``λ_1``, reported as ``eigen_residual``);
    ``"auto"`` picks by cost and falls back to dense when the spectrum is too flat to converge.
    ``readout_hook`` must be None: the Fisher information belongs to the predictive distribution,
    which only the unembedding input defines. ``tail_mass`` (an absolute probability cut) was
    replaced by ``tail_tolerance``: ``0`` still means no truncation, with a DeprecationWarning;
    other values raise ``ScopeInputError``.

    Example:
        >>> result = fisher_scope(model, prompt, rank=8)
        >>> result.scores.shape, result.top_tokens(1)              # [pos]
        (torch.Size([5]), [(2, 'b=7', 0.00137...)])
    """
    check_own_options("fisher_scope", options)
    adapter = ModelAdapter(model)
    if tail_mass is not None:
        if tail_mass != 0:
            raise ScopeInputError(
                f"tail_mass={tail_mass!r} is no longer supported: an absolute probability cut removed "
                "most of F on confident predictions (1 - p_max near the cut). Use tail_tolerance, the "
                "bound on tr(F - F_kept) relative to tr(F) (default 1e-6; 0: no truncation)."
            )
        warnings.warn(
            "tail_mass is deprecated; use tail_tolerance (relative to tr F). tail_mass=0 is tail_tolerance=0.",
            DeprecationWarning,
            stacklevel=2,
        )
        tail_tolerance = 0.0
    build, rank = fisher_builder(adapter, rank, tail_tolerance, eigen_solver, readout_hook)
    result = jacobian_scope(
        adapter, inputs, build, kind="fisher", n_directions=rank, position=position, layer=layer, **options
    )
    warn_if_truncation_is_coarse(result.metadata, tail_tolerance, stacklevel=2)
    return result


# ------------------------------------------------------------------------------------ readouts of each kind
def semantic_builder(
    adapter: ModelAdapter, target: Target | SAELatent, readout_hook: str | None
) -> tuple[ReadoutBuilder, str | None]:
    """The Semantic readout builder for ``target``, and the readout hook (an SAE latent brings its own)."""
    if isinstance(target, SAELatent):
        own = target.hook_name
        if readout_hook is None and own is None:
            raise ScopeInputError(
                "this SAE names no hook (hook_name, cfg.hook_name or cfg.metadata.hook_name); pass readout_hook=."
            )
        if readout_hook is not None and own is not None and readout_hook != own:
            raise ScopeInputError(
                f"readout_hook={readout_hook!r} but the SAE was trained on {own!r}; leave readout_hook out."
            )
        readout_hook = readout_hook or own
    if readout_hook is None:
        parsed = parse_semantic_target(adapter, target)
        return (lambda y, logits: semantic_readout(adapter, y, logits, parsed)), None
    hook_target = parse_hook_target(target, readout_hook)
    return (lambda activation, logits: hook_semantic_readout(activation, hook_target)), readout_hook


def temperature_builder(adapter: ModelAdapter, readout_hook: str | None) -> ReadoutBuilder:
    """``ŷ = y/‖y‖`` at the unembedding input, or ``a/‖a‖`` at ``readout_hook``."""
    if readout_hook is None:
        return lambda y, logits: temperature_readout(adapter, y)
    return lambda activation, logits: hook_temperature_readout(activation)


def fisher_builder(
    adapter: ModelAdapter, rank: int | None, tail_tolerance: float, eigen_solver: Solver, readout_hook: str | None
) -> tuple[ReadoutBuilder, int]:
    """The Fisher readout builder after checking its arguments, and the rank (``None`` → ``d_model``)."""
    if readout_hook is not None:
        raise ScopeInputError(
            f"fisher_scope reads the predictive distribution, which only the unembedding input defines; got "
            f"readout_hook={readout_hook!r}. Use semantic_scope (a probe, callable or SAE latent) or "
            "temperature_scope there."
        )
    if rank is None:
        rank = adapter.d_model
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= adapter.d_model:
        raise ScopeInputError(
            f"rank must be an int in [1, d_model={adapter.d_model}] or None (exact); got {rank!r}."
        )
    if isinstance(tail_tolerance, bool) or not isinstance(tail_tolerance, (int, float)) or not 0 <= tail_tolerance < 1:
        raise ScopeInputError(f"tail_tolerance must be a fraction of tr(F) in [0, 1); got {tail_tolerance!r}.")
    if eigen_solver not in ("auto", "dense", "krylov"):
        raise ScopeInputError(f"eigen_solver must be 'auto', 'dense' or 'krylov'; got {eigen_solver!r}.")
    checked, tolerance = int(rank), float(tail_tolerance)
    return (lambda y, logits: fisher_readout(adapter, y, logits, checked, tolerance, eigen_solver)), checked


def warn_if_truncation_is_coarse(metadata: dict[str, Any], tail_tolerance: float, stacklevel: int) -> None:
    """Warn when the rows a user's ``tail_tolerance`` dropped hold over 1 % of ``tr F`` somewhere."""
    worst = float(torch.as_tensor(metadata["dropped_trace_fraction"]).max())
    if worst > FISHER_TAIL_WARNING_FRACTION:
        warnings.warn(
            f"tail_tolerance={tail_tolerance:g} dropped vocabulary rows holding up to {worst:.1%} of "
            "tr(F): Fisher scores may be off by that much. Lower tail_tolerance (default "
            f"{DEFAULT_FISHER_TAIL_TOLERANCE:g}) for exact scores.",
            UserWarning,
            stacklevel=stacklevel + 1,
        )


# ------------------------------------------------------------------------------------ readout hooks, user hooks
def resolve_readout_hook(adapter: ModelAdapter, readout_hook: str | None) -> ReadoutPoint | None:
    """The engine's readout point for ``readout_hook`` (None: the unembedding input)."""
    if readout_hook is None:
        return None
    if not isinstance(readout_hook, str) or readout_hook not in adapter.hook_names:
        raise ScopeInputError(
            f"readout_hook must be the name of one of the model's hook points (model.hook_dict), e.g. "
            f"{adapter.resid_pre_hook(adapter.n_layers)!r}; got {readout_hook!r}."
        )
    adapter.check_readable_hook(readout_hook, "readout_hook")
    return ReadoutPoint(readout_hook)


def check_fwd_hooks(adapter: ModelAdapter, fwd_hooks: FwdHooks | None) -> list[tuple[Any, Any]]:
    """The user's ``fwd_hooks`` as a list, each ``(hook name or name filter, function)`` checked."""
    if fwd_hooks is None:
        return []
    if isinstance(fwd_hooks, (str, bytes)) or not isinstance(fwd_hooks, Sequence):
        raise ScopeInputError(f"fwd_hooks must be a list of (hook_name, function) pairs; got {type(fwd_hooks).__name__}.")
    checked = []
    for index, entry in enumerate(fwd_hooks):
        if not isinstance(entry, (tuple, list)) or len(entry) != 2 or not callable(entry[1]):
            raise ScopeInputError(f"fwd_hooks[{index}] must be a pair (hook_name, function); got {entry!r}.")
        name = entry[0]
        if isinstance(name, str):
            if name not in adapter.hook_names:
                raise ScopeInputError(f"fwd_hooks[{index}] names {name!r}, which is not a hook point of this model.")
        elif not callable(name):
            raise ScopeInputError(f"fwd_hooks[{index}][0] must be a hook name or a name filter; got {name!r}.")
        checked.append((name, _CheckedHook(index, name, entry[1])))
    return checked


class _CheckedHook:
    """The user's hook function, what it returns checked before the forward pass goes on with it:
    a wrong type or shape would otherwise fail deep inside the model. A tensor detached from its
    input is a legitimate intervention (a head's output replaced by zeros or a cached mean) as long
    as the perturbation still reaches the readout by another path; it is noted in
    ``detached_returns``, which the engine names if the perturbation no longer reaches the readout
    (:func:`jscopes_tl.engine.unreached_readout_error`)."""

    def __init__(self, index: int, name: Any, function: Any) -> None:
        self.index, self.name, self.function = index, name, function
        self.detached_returns: list[str] = []

    def __call__(self, activation: torch.Tensor, hook: Any) -> Any:
        returned = self.function(activation, hook=hook)
        if returned is None:
            return None
        where = (
            f"fwd_hooks[{self.index}] ({self.name!r})"
            if isinstance(self.name, str)
            else f"fwd_hooks[{self.index}] at {getattr(hook, 'name', None)!r}"
        )
        if not isinstance(returned, torch.Tensor):
            raise ScopeInputError(
                f"{where} returned {type(returned).__name__}; a hook returns the activation (a tensor of shape "
                f"{tuple(activation.shape)}) or None to keep it."
            )
        if returned.shape != activation.shape:
            raise ScopeInputError(
                f"{where} returned a tensor of shape {tuple(returned.shape)} where the activation is "
                f"{tuple(activation.shape)}; a hook must return a tensor of the activation's shape (or None to keep it)."
            )
        if activation.requires_grad and not returned.requires_grad:
            self.detached_returns.append(where)
        return returned


def record_readout_and_hooks(metadata: dict[str, Any], output: EngineOutput, user_hooks: list[tuple[Any, Any]]) -> None:
    """Record where a result read (``numerics.readout_hook``) and which of the user's hooks ran."""
    metadata["numerics"]["readout_hook"] = output.readout_hook
    if user_hooks:
        metadata["fwd_hooks"] = [name if isinstance(name, str) else getattr(name, "__name__", "filter") for name, _ in user_hooks]


def prediction_of(
    adapter: ModelAdapter, output: EngineOutput, axes: ResultAxes, expand: torch.Tensor | None = None
) -> Prediction | None:
    """The model's top-k next tokens at each scored position (the engine keeps them); None for an
    internal readout. ``expand`` copies the predictions of distinct positions back to repeated ones."""
    if output.top_ids is None or output.top_probabilities is None:
        return None
    top_ids, top_probabilities = output.top_ids, output.top_probabilities
    if expand is not None:
        top_probabilities, top_ids = top_probabilities.index_select(1, expand), top_ids.index_select(1, expand)
    top_ids = axes.squeeze_prediction(top_ids)
    return Prediction(
        token_ids=top_ids,
        probabilities=axes.squeeze_prediction(top_probabilities),
        str_tokens=_nested_str_tokens(adapter, top_ids),
    )

"""Layer-resolved Jacobian Scopes next to activation patching and attribution patching.

Context. *Activation patching* (Meng et al., ROME; ``transformer_lens.patching``) localises where
a model computes something by intervening on it. Take a *clean* prompt, whose answer we care
about, and a *corrupted* prompt of the same length that differs in one key detail ("When Mary
and John went to the store, John gave a drink to" vs "... Mary gave a drink to"). Run the
corrupted prompt, replace one activation — here the residual stream entering block ``L`` at
position ``p``, ``blocks.L.hook_resid_pre[p]`` — with its value on the clean run, and measure how
far a metric (by default the logit difference between the clean and the corrupted answer) moves
back towards its clean value. Over all ``L`` and ``p`` this gives a ``[n_layers, pos]`` map of
causal effects, at the price of ``n_layers · pos`` forward passes.

*Attribution patching* (Nanda, 2023; Syed et al., 2023) estimates the same map to first order
from one forward and one backward pass on the corrupted run::

    metric(patch L, p) - metric(corrupted) ≈ (a_clean[L, p] - a_corrupt[L, p]) · ∂metric/∂a[L, p]

It is exact for linear effects and misses saturation (an effect that is already maximal has a
small gradient). TransformerLens 4.x's ``attribution_patch`` scores component writes (attention
heads, MLPs) summed over positions; the residual-stream cells here need the gradient with respect
to every ``blocks.L.hook_resid_pre[p]``, which is exactly what the scope engine computes (the
metric, as a function of the final hidden state, is its readout).

The *layer-resolved Jacobian Scope* perturbs the same hook points and reports how sensitive the
prediction is to each cell, ``‖u^T ∂y/∂resid_L[p]‖`` — no counterfactual prompt needed. All three
maps share TransformerLens's ``get_act_patch_resid_pre`` axes, so they can be laid side by side and
their rank correlations read off: where they agree, a cheap gradient map localises what the
expensive intervention does; where they disagree, the model is non-linear between the prompts
(or, for the scope, sensitive at positions where the two prompts do not differ at all).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Union

import torch
from jaxtyping import Bool, Float, Int

from jscopes_tl.adapter import ModelAdapter
from jscopes_tl.components import ComponentScopeResult, component_scope
from jscopes_tl.engine import PerturbationPoint, run_scope
from jscopes_tl.errors import ScopeInputError, UnsupportedModelError
from jscopes_tl.inputs import prepare_tokens, resolve_positions
from jscopes_tl.readouts import TokenLike, parse_semantic_target, semantic_readout
from jscopes_tl.result import ScopeResult
from jscopes_tl.scopes import fisher_scope, semantic_scope, temperature_scope
from jscopes_tl.stats import spearman

ScopeKind = Literal["semantic", "fisher", "temperature"]
PatchingBackend = Literal["auto", "transformer_lens", "hooks"]
MetricFunction = Callable[[Float[torch.Tensor, "batch d_vocab"]], Float[torch.Tensor, " batch"]]
PatchingMetric = Union[None, tuple[TokenLike, TokenLike], MetricFunction]

_SCOPES = {"semantic": semantic_scope, "fisher": fisher_scope, "temperature": temperature_scope}


# --------------------------------------------------------------------------------- layer-resolved scope
@dataclass(frozen=True)
class LayerResolvedScope:
    """A Jacobian Scope with the perturbation at every residual-stream layer of one prompt.

    Attributes:
        kind: ``"semantic"``, ``"fisher"`` or ``"temperature"``.
        scores: ``[n_layers + 1, pos]``; row ``L < n_layers`` perturbs the residual stream entering
            block ``L`` (``blocks.L.hook_resid_pre``, the rows of TransformerLens's
            ``get_act_patch_resid_pre``); the last row perturbs the final residual stream.
        layer_labels: one label per row (``"resid_pre 0"``, …, ``"resid_final"``).
        hook_names: the hook point of each row on this model.
        str_tokens: the prompt's tokens.
        position: the absolute prediction position.
        result: the underlying :class:`ScopeResult` (prediction, target, numerics).

    Example:
        >>> lrs = layer_resolved_scope(model, prompt, "fisher")
        >>> lrs.kind, lrs.hook_names[0], lrs.str_tokens[lrs.position]
        ('fisher', 'blocks.0.hook_resid_pre', 'b=')
    """

    kind: str
    scores: Float[torch.Tensor, "n_rows pos"]
    layer_labels: list[str]
    hook_names: list[str]
    str_tokens: list[str]
    position: int
    result: ScopeResult

    @property
    def resid_pre_scores(self) -> Float[torch.Tensor, "n_layers pos"]:
        """The rows aligned with ``get_act_patch_resid_pre`` (the final residual row dropped).

        Example:
            >>> layer_resolved_scope(model, prompt).resid_pre_scores.shape   # as get_act_patch_resid_pre
            torch.Size([2, 5])
        """
        return self.scores[:-1]


def _single_prompt(
    adapter: ModelAdapter, prompt: str | torch.Tensor, argument: str, attention_mask: torch.Tensor | None = None
) -> Int[torch.Tensor, " pos"]:
    if isinstance(prompt, torch.Tensor) and prompt.ndim != 1:
        raise ScopeInputError(f"{argument} must be one prompt: a string or token ids [pos]; got a tensor of shape {tuple(prompt.shape)}.")
    if not isinstance(prompt, (str, torch.Tensor)):
        raise ScopeInputError(f"{argument} must be one prompt: a string or token ids [pos]; got {type(prompt).__name__}.")
    return prepare_tokens(adapter, prompt, attention_mask, argument=argument).tokens[0]


def _absolute_position(position: int, n_tokens: int, argument: str = "position") -> int:
    if isinstance(position, bool) or not isinstance(position, int) or not -n_tokens <= position < n_tokens:
        raise ScopeInputError(f"{argument} must be an int in [{-n_tokens}, {n_tokens - 1}] for a prompt of {n_tokens} tokens; got {position!r}.")
    return position % n_tokens


def layer_resolved_scope(
    model: Any,
    prompt: str | Int[torch.Tensor, " pos"],
    kind: ScopeKind = "semantic",
    *,
    position: int = -1,
    **scope_options: Any,
) -> LayerResolvedScope:
    """The scope ``kind`` perturbed at every ``blocks.L.hook_resid_pre`` and the final residual stream.

    One forward pass and one backward pass per readout direction give ``u^T ∂y/∂resid_L[t]``
    for every layer ``L`` and token ``t`` (``layer="all"`` of the scope functions);
    ``scores[0]`` is the ordinary embedding-level scope.

    Args:
        model: a HookedTransformer or TransformerBridge.
        prompt: one prompt, as text or token ids ``[pos]``.
        kind: ``"semantic"``, ``"fisher"`` or ``"temperature"``.
        position: the prediction position (negative counts from the end).
        **scope_options: passed to the scope (``target=`` for Semantic, ``rank=`` for Fisher, …);
            ``attention_mask=`` (``[pos]``, 1 = real token) keeps only the prompt's real tokens.

    Example:
        >>> lrs = layer_resolved_scope(model, prompt)
        >>> lrs.layer_labels, lrs.scores.shape                 # [n_layers + 1, pos]
        (['resid_pre 0', 'resid_pre 1', 'resid_final'], torch.Size([3, 5]))
    """
    if kind not in _SCOPES:
        raise ScopeInputError(f"kind must be one of {sorted(_SCOPES)}; got {kind!r}.")
    if "layer" in scope_options:
        raise ScopeInputError("layer_resolved_scope perturbs every layer; do not pass layer=.")
    adapter = ModelAdapter(model)
    tokens = _single_prompt(adapter, prompt, "prompt", scope_options.pop("attention_mask", None))
    absolute = _absolute_position(position, len(tokens))
    result = _SCOPES[kind](model, tokens, position=absolute, layer="all", **scope_options)
    n_layers = adapter.n_layers
    return LayerResolvedScope(
        kind=kind,
        scores=result.scores,
        layer_labels=[f"resid_pre {layer}" for layer in range(n_layers)] + ["resid_final"],
        hook_names=list(result.metadata["numerics"]["perturbation_hook"]),
        str_tokens=list(result.str_tokens),
        position=absolute,
        result=result,
    )


# --------------------------------------------------------------------------------- prompts and metric
@dataclass(frozen=True)
class _PatchingSetup:
    clean_tokens: Int[torch.Tensor, " pos"]
    corrupted_tokens: Int[torch.Tensor, " pos"]
    position: int
    metric: MetricFunction
    metric_description: str


def _prompt_pair(adapter: ModelAdapter, clean: str | torch.Tensor, corrupted: str | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    clean_tokens = _single_prompt(adapter, clean, "clean")
    corrupted_tokens = _single_prompt(adapter, corrupted, "corrupted")
    if len(clean_tokens) != len(corrupted_tokens):
        raise ScopeInputError(
            f"the clean prompt has {len(clean_tokens)} tokens but the corrupted prompt has "
            f"{len(corrupted_tokens)}: activation patching swaps activations position by position, "
            "so both prompts must tokenise to the same length."
        )
    return clean_tokens, corrupted_tokens


def _logits_at(adapter: ModelAdapter, tokens: torch.Tensor, position: int) -> torch.Tensor:
    with adapter.prepared_for_scopes(), torch.no_grad():
        return adapter.forward(tokens[None])[0, position]


def _setup(
    adapter: ModelAdapter,
    clean: str | torch.Tensor,
    corrupted: str | torch.Tensor,
    metric: PatchingMetric,
    position: int,
) -> _PatchingSetup:
    clean_tokens, corrupted_tokens = _prompt_pair(adapter, clean, corrupted)
    absolute = _absolute_position(position, len(clean_tokens))
    if metric is None:
        clean_answer = int(_logits_at(adapter, clean_tokens, absolute).argmax())
        corrupted_answer = int(_logits_at(adapter, corrupted_tokens, absolute).argmax())
        if clean_answer == corrupted_answer:
            raise ScopeInputError(
                f"metric=None uses the logit difference of the clean and the corrupted prediction, but both "
                f"prompts predict {adapter.str_tokens(torch.tensor([clean_answer]))[0]!r} at position {absolute}; "
                "pass metric=(correct_answer, wrong_answer) or a callable on the logits."
            )
        metric = (clean_answer, corrupted_answer)
    if isinstance(metric, tuple):
        target = parse_semantic_target(adapter, metric)
        correct, wrong = target.token_ids
        names = adapter.str_tokens(torch.tensor([correct, wrong]))

        def logit_difference(logits: torch.Tensor) -> torch.Tensor:
            return logits[..., correct] - logits[..., wrong]

        return _PatchingSetup(clean_tokens, corrupted_tokens, absolute, logit_difference, f"logit({names[0]!r}) - logit({names[1]!r})")
    if callable(metric):
        return _PatchingSetup(clean_tokens, corrupted_tokens, absolute, metric, getattr(metric, "__name__", "custom metric"))
    raise ScopeInputError(
        f"metric must be None, a pair of answer tokens (correct, wrong) or a callable on logits [batch, d_vocab]; got {type(metric).__name__}."
    )


def _metric_values(setup: _PatchingSetup, logits: Float[torch.Tensor, "batch d_vocab"]) -> Float[torch.Tensor, " batch"]:
    values = setup.metric(logits)
    if values.shape != logits.shape[:1]:
        raise ScopeInputError(
            f"the metric must map logits [batch, d_vocab] to one value per row, shape [{logits.shape[0]}]; "
            f"got {tuple(values.shape)}."
        )
    return values


# --------------------------------------------------------------------------------- activation patching
@dataclass(frozen=True)
class ActivationPatching:
    """Denoising activation patching of ``blocks.L.hook_resid_pre`` over layers × positions.

    Attributes:
        patched_metric: ``[n_layers, pos]``, the metric on the corrupted run with one residual
            cell restored from the clean run (what ``get_act_patch_resid_pre`` returns).
        clean_metric, corrupted_metric: the metric on the unpatched runs.
        backend: ``"transformer_lens"`` (``transformer_lens.patching``) or ``"hooks"``.

    Example:
        >>> corrupted = "a=3 b=5 c=1 b="                 # the clean prompt predicts 7, this one 5
        >>> patching = activation_patching(model, prompt, corrupted, ("7", "5"))
        >>> round(patching.clean_metric, 1), round(patching.corrupted_metric, 1)
        (19.7, -19.4)
    """

    patched_metric: Float[torch.Tensor, "n_layers pos"]
    clean_metric: float
    corrupted_metric: float
    backend: str

    @property
    def effect(self) -> Float[torch.Tensor, "n_layers pos"]:
        """``patched_metric - corrupted_metric``: how far restoring each cell moves the metric.

        Example:
            >>> corrupted = "a=3 b=5 c=1 b="                 # the clean prompt predicts 7, this one 5
            >>> effect = activation_patching(model, prompt, corrupted, ("7", "5")).effect
            >>> effect.shape, effect[0].argmax().item()           # restoring b=7 moves it most
            (torch.Size([2, 5]), 2)
        """
        return self.patched_metric - self.corrupted_metric


def _resid_pre_activations(adapter: ModelAdapter, tokens: torch.Tensor) -> Float[torch.Tensor, "n_layers pos d_model"]:
    names = [adapter.resid_pre_hook(layer) for layer in range(adapter.n_layers)]
    captured = adapter.capture(tokens[None], names)
    return torch.stack([captured[name][0] for name in names])


def _patch_with_hooks(adapter: ModelAdapter, setup: _PatchingSetup, batch_size: int) -> Float[torch.Tensor, "n_layers pos"]:
    """Every position of one layer in one batched forward: row ``i`` patches position ``i``."""
    clean_activations = _resid_pre_activations(adapter, setup.clean_tokens)
    width = len(setup.corrupted_tokens)
    corrupted = setup.corrupted_tokens.to(adapter.input_device)
    patched = torch.zeros(adapter.n_layers, width)
    with adapter.prepared_for_scopes(), torch.no_grad():
        for layer in range(adapter.n_layers):
            for start in range(0, width, batch_size):
                # CPU index tensors index an activation on any device (a split model's layers differ).
                positions = torch.arange(start, min(start + batch_size, width))
                rows = torch.arange(len(positions))

                def restore_clean(activation: torch.Tensor, hook: Any, layer: int = layer) -> torch.Tensor:
                    activation = activation.clone()
                    activation[rows, positions] = clean_activations[layer][positions].to(activation.dtype)
                    return activation

                with adapter.hooks([(adapter.resid_pre_hook(layer), restore_clean)]):
                    logits = adapter.forward(corrupted.expand(len(positions), -1))
                patched[layer, positions.cpu()] = _metric_values(setup, logits[:, setup.position]).float().cpu()
    return patched


def _activation_patching(adapter: ModelAdapter, setup: _PatchingSetup, backend: PatchingBackend, batch_size: int) -> ActivationPatching:
    if backend not in ("auto", "transformer_lens", "hooks"):
        raise ScopeInputError(f"backend must be 'auto', 'transformer_lens' or 'hooks'; got {backend!r}.")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ScopeInputError(f"batch_size must be a positive int; got {batch_size!r}.")
    transformer_lens_patch = adapter.transformer_lens_resid_pre_patching() if backend != "hooks" else None
    if backend == "transformer_lens" and transformer_lens_patch is None:
        raise UnsupportedModelError(
            "backend='transformer_lens' needs transformer_lens.patching and blocks.L.hook_resid_pre hooks, "
            "which this TransformerLens version or model lacks; use backend='hooks' (same patching, our hooks)."
        )
    if transformer_lens_patch is not None:

        def scalar_metric(logits: torch.Tensor) -> torch.Tensor:
            return _metric_values(setup, logits[:, setup.position]).sum()

        with adapter.prepared_for_scopes(), torch.no_grad():
            patched = transformer_lens_patch(setup.clean_tokens[None], setup.corrupted_tokens[None], scalar_metric)
        used = "transformer_lens"
        patched = patched.detach().float().cpu()
    else:
        patched = _patch_with_hooks(adapter, setup, batch_size)
        used = "hooks"
    clean_metric = float(_metric_values(setup, _logits_at(adapter, setup.clean_tokens, setup.position)[None]))
    corrupted_metric = float(_metric_values(setup, _logits_at(adapter, setup.corrupted_tokens, setup.position)[None]))
    return ActivationPatching(patched, clean_metric, corrupted_metric, used)


def activation_patching(
    model: Any,
    clean: str | Int[torch.Tensor, " pos"],
    corrupted: str | Int[torch.Tensor, " pos"],
    metric: PatchingMetric = None,
    *,
    position: int = -1,
    backend: PatchingBackend = "auto",
    batch_size: int = 32,
) -> ActivationPatching:
    """Activation patching of the residual stream (``blocks.L.hook_resid_pre``) over layers × positions.

    ``backend="auto"`` uses ``transformer_lens.patching.get_act_patch_resid_pre`` where the installed
    TransformerLens has it and it applies to the model, and otherwise the same patch through the
    model's hooks (``"hooks"``, which batches all positions of a layer into one forward).

    Args:
        model: a HookedTransformer or TransformerBridge.
        clean, corrupted: two prompts of the same token length (text or token ids ``[pos]``).
        metric: ``None`` (logit difference of the clean and the corrupted run's top-1 predictions),
            a pair ``(correct, wrong)`` of answer tokens (their logit difference), or a callable
            mapping logits ``[batch, d_vocab]`` at ``position`` to ``[batch]``.
        position: where the metric reads the logits (default: the last token).

    Example:
        >>> corrupted = "a=3 b=5 c=1 b="                 # the clean prompt predicts 7, this one 5
        >>> patching = activation_patching(model, prompt, corrupted, ("7", "5"))  # logit(7) - logit(5)
        >>> patching.effect.shape, patching.backend                                # [n_layers, pos]
        (torch.Size([2, 5]), 'transformer_lens')
    """
    adapter = ModelAdapter(model)
    return _activation_patching(adapter, _setup(adapter, clean, corrupted, metric, position), backend, batch_size)


# --------------------------------------------------------------------------------- attribution patching
def _metric_as_target(adapter: ModelAdapter, setup: _PatchingSetup) -> Callable[[torch.Tensor], torch.Tensor]:
    def metric_of_final_hidden(y: torch.Tensor) -> torch.Tensor:
        return _metric_values(setup, adapter.logits(y))

    return metric_of_final_hidden


def _attribution_patching(
    adapter: ModelAdapter, setup: _PatchingSetup
) -> tuple[Float[torch.Tensor, "n_layers pos"], Bool[torch.Tensor, "n_layers pos"]]:
    """The estimate, and which cells' clean and corrupted activations differ at all."""
    gradients = semantic_scope(
        adapter.model,
        setup.corrupted_tokens,
        target=_metric_as_target(adapter, setup),
        position=setup.position,
        layer=list(range(adapter.n_layers)),
        return_gradients=True,
    ).gradients
    difference = (_resid_pre_activations(adapter, setup.clean_tokens) - _resid_pre_activations(adapter, setup.corrupted_tokens)).float().cpu()
    return (difference * gradients).sum(-1), difference.abs().amax(-1) > 0


def attribution_patching(
    model: Any,
    clean: str | Int[torch.Tensor, " pos"],
    corrupted: str | Int[torch.Tensor, " pos"],
    metric: PatchingMetric = None,
    *,
    position: int = -1,
) -> Float[torch.Tensor, "n_layers pos"]:
    """First-order estimate of :func:`activation_patching`'s effect, ``[n_layers, pos]``.

    ``(a_clean[L, p] - a_corrupt[L, p]) · ∂metric/∂a[L, p]`` at the corrupted run, for
    ``a = blocks.L.hook_resid_pre``: one forward and one backward pass (the scope engine, with the
    metric as its readout) and one cached forward per prompt. Arguments as for
    :func:`activation_patching`.

    Example:
        >>> corrupted = "a=3 b=5 c=1 b="                 # the clean prompt predicts 7, this one 5
        >>> estimate = attribution_patching(model, prompt, corrupted, ("7", "5"))
        >>> estimate.shape, estimate[0].argmax().item()         # [n_layers, pos]
        (torch.Size([2, 5]), 2)
    """
    adapter = ModelAdapter(model)
    estimate, _ = _attribution_patching(adapter, _setup(adapter, clean, corrupted, metric, position))
    return estimate


# --------------------------------------------------------------------------------- comparison
@dataclass(frozen=True)
class PatchingComparison:
    """Activation patching, attribution patching and a layer-resolved scope on the same axes.

    All maps are ``[n_layers, pos]`` with rows ``blocks.L.hook_resid_pre`` (TransformerLens's
    ``get_act_patch_resid_pre`` layout).

    Attributes:
        activation_patching: the patched metric and its clean / corrupted baselines.
        attribution_patching: the first-order estimate of ``activation_patching.effect``.
        scope: the layer-resolved scope's ``resid_pre_scores`` (non-negative sensitivities).
        scope_kind, scope_prompt: which scope, computed on the ``"clean"`` or ``"corrupted"`` prompt.
        metric_description: what the metric measures.
        layer_labels: the row labels.
        clean_str_tokens, corrupted_str_tokens: the column labels of each prompt.
        position: the absolute position whose logits the metric reads.
        differing_cells: ``[n_layers, pos]``, True where the clean and corrupted activations
            differ; elsewhere patching is a no-op (e.g. every position before the first changed
            token), while a scope still measures sensitivity.
        rank_correlations: Spearman ρ over all cells. ``"activation_vs_attribution"``,
            ``"activation_vs_scope"`` and ``"attribution_vs_scope"`` compare magnitudes
            (``|effect|``, ``|estimate|``, scope), because a scope has no sign;
            ``"activation_vs_attribution_signed"`` compares the signed maps; keys ending in
            ``"_on_differing_cells"`` repeat the magnitude comparisons on ``differing_cells`` only
            (NaN with fewer than 2 such cells).

    Example:
        >>> corrupted = "a=3 b=5 c=1 b="                 # the clean prompt predicts 7, this one 5
        >>> comparison = compare_with_patching(model, prompt, corrupted, ("7", "5"), kind="fisher")
        >>> comparison.scope_kind, comparison.scope_prompt, comparison.layer_labels
        ('fisher', 'clean', ['resid_pre 0', 'resid_pre 1'])
    """

    activation_patching: ActivationPatching
    attribution_patching: Float[torch.Tensor, "n_layers pos"]
    scope: Float[torch.Tensor, "n_layers pos"]
    scope_kind: str
    scope_prompt: str
    metric_description: str
    layer_labels: list[str]
    clean_str_tokens: list[str]
    corrupted_str_tokens: list[str]
    position: int
    differing_cells: Bool[torch.Tensor, "n_layers pos"]
    rank_correlations: dict[str, float]


def compare_with_patching(
    model: Any,
    clean: str | Int[torch.Tensor, " pos"],
    corrupted: str | Int[torch.Tensor, " pos"],
    metric: PatchingMetric = None,
    *,
    kind: ScopeKind = "semantic",
    scope_prompt: Literal["clean", "corrupted"] = "clean",
    position: int = -1,
    backend: PatchingBackend = "auto",
    batch_size: int = 32,
    **scope_options: Any,
) -> PatchingComparison:
    """Activation patching, attribution patching and a layer-resolved Jacobian Scope, side by side.

    The Semantic Scope reads the metric itself (its gradient with respect to the final hidden
    state); Fisher and Temperature read their own directions. ``scope_prompt`` chooses the prompt
    the scope is computed on: the clean one (what the model does with the information) by default,
    or the corrupted one (the point where attribution patching takes its gradient).

    Args:
        model, clean, corrupted, metric, position, backend, batch_size: as for :func:`activation_patching`.
        kind: the scope, ``"semantic"`` (default), ``"fisher"`` or ``"temperature"``.
        scope_prompt: ``"clean"`` or ``"corrupted"``.
        **scope_options: passed to the scope (e.g. ``rank=`` for Fisher).

    Example:
        >>> corrupted = "a=3 b=5 c=1 b="                 # the clean prompt predicts 7, this one 5
        >>> comparison = compare_with_patching(model, prompt, corrupted, ("7", "5"))
        >>> comparison.scope.shape, round(comparison.rank_correlations["activation_vs_attribution"], 3)
        (torch.Size([2, 5]), 1.0)
    """
    if scope_prompt not in ("clean", "corrupted"):
        raise ScopeInputError(f"scope_prompt must be 'clean' or 'corrupted'; got {scope_prompt!r}.")
    if kind not in _SCOPES:
        raise ScopeInputError(f"kind must be one of {sorted(_SCOPES)}; got {kind!r}.")
    if kind == "semantic" and "target" in scope_options:
        raise ScopeInputError("compare_with_patching's Semantic Scope reads the metric; pass metric=, not target=.")
    adapter = ModelAdapter(model)
    setup = _setup(adapter, clean, corrupted, metric, position)
    patching = _activation_patching(adapter, setup, backend, batch_size)
    estimate, differing_cells = _attribution_patching(adapter, setup)
    if kind == "semantic":
        scope_options = dict(scope_options, target=_metric_as_target(adapter, setup))
    scope_tokens = setup.clean_tokens if scope_prompt == "clean" else setup.corrupted_tokens
    scope = layer_resolved_scope(model, scope_tokens, kind, position=setup.position, **scope_options)
    magnitudes = {"activation": patching.effect.abs(), "attribution": estimate.abs(), "scope": scope.resid_pre_scores}
    pairs = [("activation", "attribution"), ("activation", "scope"), ("attribution", "scope")]
    correlations = {f"{a}_vs_{b}": spearman(magnitudes[a], magnitudes[b]) for a, b in pairs}
    correlations["activation_vs_attribution_signed"] = spearman(patching.effect, estimate)
    for a, b in pairs:
        enough = int(differing_cells.sum()) >= 2
        correlations[f"{a}_vs_{b}_on_differing_cells"] = (
            spearman(magnitudes[a][differing_cells], magnitudes[b][differing_cells]) if enough else math.nan
        )
    return PatchingComparison(
        activation_patching=patching,
        attribution_patching=estimate,
        scope=scope.resid_pre_scores,
        scope_kind=kind,
        scope_prompt=scope_prompt,
        metric_description=setup.metric_description,
        layer_labels=scope.layer_labels[:-1],
        clean_str_tokens=adapter.str_tokens(setup.clean_tokens),
        corrupted_str_tokens=adapter.str_tokens(setup.corrupted_tokens),
        position=setup.position,
        differing_cells=differing_cells,
        rank_correlations=correlations,
    )


# --------------------------------------------------------------------------------- heads and MLPs
# The same three maps one level down: per attention head (its output before the output projection,
# ``blocks.L.attn.hook_z``, TransformerLens's ``get_act_patch_attn_head_out_*``) and per MLP
# (``blocks.L.hook_mlp_out``, ``get_act_patch_mlp_out``), at every position.
@dataclass(frozen=True)
class ComponentPatching:
    """Denoising activation patching of every head's and every MLP's output.

    Attributes:
        heads: ``[n_layers, n_heads, pos]``, the metric on the corrupted run with one head's output at
            one position restored from the clean run (``get_act_patch_attn_head_out_by_pos``, whose
            ``[n_layers, pos, n_heads]`` layout is transposed to the component scope's).
        heads_all_pos: ``[n_layers, n_heads]``, one head restored at every position at once
            (``get_act_patch_attn_head_out_all_pos``).
        mlps: ``[n_layers, pos]``, one MLP output restored at one position (``get_act_patch_mlp_out``).
        clean_metric, corrupted_metric: the metric on the unpatched runs.
        backend: ``"transformer_lens"`` or ``"hooks"``.

    Example:
        >>> corrupted = "a=3 b=5 c=1 b="                 # the clean prompt predicts 7, this one 5
        >>> from jscopes_tl.patching import component_activation_patching
        >>> patching = component_activation_patching(model, prompt, corrupted, ("7", "5"))
        >>> patching.heads.shape, patching.heads_all_pos.shape, patching.mlps.shape
        (torch.Size([2, 4, 5]), torch.Size([2, 4]), torch.Size([2, 5]))
    """

    heads: Float[torch.Tensor, "n_layers n_heads pos"]
    heads_all_pos: Float[torch.Tensor, "n_layers n_heads"]
    mlps: Float[torch.Tensor, "n_layers pos"]
    clean_metric: float
    corrupted_metric: float
    backend: str

    @property
    def heads_effect(self) -> Float[torch.Tensor, "n_layers n_heads pos"]:
        return self.heads - self.corrupted_metric

    @property
    def heads_all_pos_effect(self) -> Float[torch.Tensor, "n_layers n_heads"]:
        return self.heads_all_pos - self.corrupted_metric

    @property
    def mlps_effect(self) -> Float[torch.Tensor, "n_layers pos"]:
        return self.mlps - self.corrupted_metric


def _patched_metric(
    adapter: ModelAdapter, setup: _PatchingSetup, hook_name: str, rows: int, restore: Callable[[torch.Tensor], None]
) -> torch.Tensor:
    """The metric on ``rows`` copies of the corrupted prompt, ``restore`` editing the activation at ``hook_name``."""

    def patch(activation: torch.Tensor, hook: Any) -> torch.Tensor:
        activation = activation.clone()
        restore(activation)
        return activation

    with adapter.hooks([(hook_name, patch)]):
        logits = adapter.forward(setup.corrupted_tokens.expand(rows, -1))
    return _metric_values(setup, logits[:, setup.position]).float().cpu()


def _component_patch_with_hooks(
    adapter: ModelAdapter, setup: _PatchingSetup, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Head (by position and at all positions) and MLP patching; each forward patches one cell per row."""
    n_layers, n_heads, width = adapter.n_layers, adapter.n_heads, len(setup.corrupted_tokens)
    head_hooks = [adapter.head_output_hook(layer) for layer in range(n_layers)]
    mlp_hooks = [adapter.mlp_output_hook(layer) for layer in range(n_layers)]
    clean = adapter.capture(setup.clean_tokens[None], head_hooks + mlp_hooks)
    heads = torch.zeros(n_layers, n_heads, width)
    heads_all_pos = torch.zeros(n_layers, n_heads)
    mlps = torch.zeros(n_layers, width)
    # Index tensors stay on the CPU: they index an activation on any device (a split model's layers differ).
    with adapter.prepared_for_scopes(), torch.no_grad():
        for layer in range(n_layers):
            z_clean, mlp_clean = clean[head_hooks[layer]][0], clean[mlp_hooks[layer]][0]
            every_head = torch.arange(n_heads)

            def all_positions(activation: torch.Tensor) -> None:
                activation[every_head, :, every_head] = z_clean[:, every_head].transpose(0, 1).to(activation.dtype)

            heads_all_pos[layer] = _patched_metric(adapter, setup, head_hooks[layer], n_heads, all_positions)
            for start in range(0, width, batch_size):
                positions = torch.arange(start, min(start + batch_size, width))
                rows = torch.arange(len(positions))
                for head in range(n_heads):

                    def one_head(activation: torch.Tensor, head: int = head) -> None:
                        activation[rows, positions, head] = z_clean[positions, head].to(activation.dtype)

                    heads[layer, head, positions.cpu()] = _patched_metric(adapter, setup, head_hooks[layer], len(rows), one_head)

                def one_mlp(activation: torch.Tensor) -> None:
                    activation[rows, positions] = mlp_clean[positions].to(activation.dtype)

                mlps[layer, positions.cpu()] = _patched_metric(adapter, setup, mlp_hooks[layer], len(rows), one_mlp)
    return heads, heads_all_pos, mlps


def _component_activation_patching(
    adapter: ModelAdapter, setup: _PatchingSetup, backend: PatchingBackend, batch_size: int
) -> ComponentPatching:
    if backend not in ("auto", "transformer_lens", "hooks"):
        raise ScopeInputError(f"backend must be 'auto', 'transformer_lens' or 'hooks'; got {backend!r}.")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ScopeInputError(f"batch_size must be a positive int; got {batch_size!r}.")
    functions = adapter.transformer_lens_head_patching() if backend != "hooks" else None
    if backend == "transformer_lens" and functions is None:
        raise UnsupportedModelError(
            "backend='transformer_lens' needs transformer_lens.patching and blocks.L.attn.hook_z / hook_mlp_out "
            "hooks, which this TransformerLens version or model lacks; use backend='hooks'."
        )
    if functions is not None:

        def scalar_metric(logits: torch.Tensor) -> torch.Tensor:
            return _metric_values(setup, logits[:, setup.position]).sum()

        corrupted = setup.corrupted_tokens[None].to(adapter.input_device)
        with adapter.prepared_for_scopes(), torch.no_grad():
            _, clean_cache = adapter.model.run_with_cache(setup.clean_tokens[None].to(adapter.input_device))
            by_position = functions["heads_by_pos"](adapter.model, corrupted, clean_cache, scalar_metric)
            all_positions = functions["heads_all_pos"](adapter.model, corrupted, clean_cache, scalar_metric)
            mlps = functions["mlps"](adapter.model, corrupted, clean_cache, scalar_metric)
        heads = by_position.detach().float().cpu().permute(0, 2, 1)
        heads_all_pos, mlps = all_positions.detach().float().cpu(), mlps.detach().float().cpu()
        used = "transformer_lens"
    else:
        heads, heads_all_pos, mlps = _component_patch_with_hooks(adapter, setup, batch_size)
        used = "hooks"
    clean_metric = float(_metric_values(setup, _logits_at(adapter, setup.clean_tokens, setup.position)[None]))
    corrupted_metric = float(_metric_values(setup, _logits_at(adapter, setup.corrupted_tokens, setup.position)[None]))
    return ComponentPatching(heads, heads_all_pos, mlps, clean_metric, corrupted_metric, used)


def component_activation_patching(
    model: Any,
    clean: str | Int[torch.Tensor, " pos"],
    corrupted: str | Int[torch.Tensor, " pos"],
    metric: PatchingMetric = None,
    *,
    position: int = -1,
    backend: PatchingBackend = "auto",
    batch_size: int = 32,
) -> ComponentPatching:
    """Activation patching of every head's output (by position and at all positions) and every MLP's.

    ``backend="auto"`` uses TransformerLens's ``get_act_patch_attn_head_out_by_pos``,
    ``get_act_patch_attn_head_out_all_pos`` and ``get_act_patch_mlp_out`` where they apply (both
    generations here), otherwise the same patches through the model's hooks (``"hooks"``: every
    position of one head in one batched forward). Costs ``n_layers · (n_heads + 1) · pos`` patched
    runs. Arguments as for :func:`activation_patching`.

    Example:
        >>> corrupted = "a=3 b=5 c=1 b="                 # the clean prompt predicts 7, this one 5
        >>> from jscopes_tl.patching import component_activation_patching
        >>> patching = component_activation_patching(model, prompt, corrupted, ("7", "5"))
        >>> patching.heads.shape       # [n_layers, n_heads, pos]
        torch.Size([2, 4, 5])
    """
    adapter = ModelAdapter(model)
    return _component_activation_patching(adapter, _setup(adapter, clean, corrupted, metric, position), backend, batch_size)


@dataclass(frozen=True)
class ComponentAttribution:
    """Attribution patching of heads and MLPs: ``(a_clean - a_corrupt) · ∂metric/∂a`` per cell.

    Example:
        >>> corrupted = "a=3 b=5 c=1 b="                 # the clean prompt predicts 7, this one 5
        >>> from jscopes_tl.patching import component_attribution_patching
        >>> estimate = component_attribution_patching(model, prompt, corrupted, ("7", "5"))
        >>> estimate.heads.shape, estimate.mlps.shape           # [n_layers, n_heads, pos], [n_layers, pos]
        (torch.Size([2, 4, 5]), torch.Size([2, 5]))
    """

    heads: Float[torch.Tensor, "n_layers n_heads pos"]
    mlps: Float[torch.Tensor, "n_layers pos"]

    @property
    def heads_all_pos(self) -> Float[torch.Tensor, "n_layers n_heads"]:
        """The estimate for a head patched at every position (first order: the sum over positions).

        Example:
            >>> corrupted = "a=3 b=5 c=1 b="                 # the clean prompt predicts 7, this one 5
            >>> from jscopes_tl.patching import component_attribution_patching
            >>> estimate = component_attribution_patching(model, prompt, corrupted, ("7", "5"))
            >>> torch.allclose(estimate.heads_all_pos, estimate.heads.sum(-1))  # [n_layers, n_heads]
            True
        """
        return self.heads.sum(-1)


def _component_attribution(adapter: ModelAdapter, setup: _PatchingSetup) -> ComponentAttribution:
    """Gradients of the metric on the corrupted run (the scope engine, the metric as its readout),
    one pass for the heads (``d_head`` wide) and one for the MLPs (``d_model`` wide)."""
    n_layers, n_heads = adapter.n_layers, adapter.n_heads
    target = parse_semantic_target(adapter, _metric_as_target(adapter, setup))
    batch = prepare_tokens(adapter, setup.corrupted_tokens)
    positions = resolve_positions(setup.position, batch)
    head_hooks = [adapter.head_output_hook(layer) for layer in range(n_layers)]
    mlp_hooks = [adapter.mlp_output_hook(layer) for layer in range(n_layers)]
    clean = adapter.capture(setup.clean_tokens[None], head_hooks + mlp_hooks)
    corrupted = adapter.capture(setup.corrupted_tokens[None], head_hooks + mlp_hooks)

    def gradients(points: list[PerturbationPoint]) -> torch.Tensor:
        output = run_scope(
            adapter, batch, positions, lambda y, logits: semantic_readout(adapter, y, logits, target),
            points=points, return_gradients=True,
        )
        return output.gradients[0, 0]  # [n_rows, pos, width]

    head_gradients = gradients([PerturbationPoint(hook, component_axes=1) for hook in head_hooks])
    head_difference = torch.stack([(clean[hook][0] - corrupted[hook][0]).transpose(0, 1) for hook in head_hooks])
    heads = (head_gradients.reshape(n_layers, n_heads, *head_gradients.shape[1:]) * head_difference.float().cpu()).sum(-1)
    mlp_gradients = gradients([PerturbationPoint(hook) for hook in mlp_hooks])
    mlp_difference = torch.stack([clean[hook][0] - corrupted[hook][0] for hook in mlp_hooks])
    return ComponentAttribution(heads=heads, mlps=(mlp_gradients * mlp_difference.float().cpu()).sum(-1))


def component_attribution_patching(
    model: Any,
    clean: str | Int[torch.Tensor, " pos"],
    corrupted: str | Int[torch.Tensor, " pos"],
    metric: PatchingMetric = None,
    *,
    position: int = -1,
) -> ComponentAttribution:
    """First-order estimate of :func:`component_activation_patching`'s effects, from two backward
    passes on the corrupted run. Arguments as for :func:`activation_patching`.

    Example:
        >>> corrupted = "a=3 b=5 c=1 b="                 # the clean prompt predicts 7, this one 5
        >>> from jscopes_tl.patching import component_attribution_patching
        >>> estimate = component_attribution_patching(model, prompt, corrupted, ("7", "5"))
        >>> estimate.heads.shape       # [n_layers, n_heads, pos]
        torch.Size([2, 4, 5])
    """
    adapter = ModelAdapter(model)
    return _component_attribution(adapter, _setup(adapter, clean, corrupted, metric, position))


@dataclass(frozen=True)
class ComponentPatchingComparison:
    """Head- and MLP-level activation patching, attribution patching and the component scope.

    Attributes:
        activation_patching: patched metrics (heads by position, heads at all positions, MLPs).
        attribution_patching: first-order estimates on the same cells.
        scope: the :class:`~jscopes_tl.components.ComponentScopeResult` (on the ``scope_prompt``).
        scope_prompt: ``"clean"`` or ``"corrupted"``.
        metric_description, position, clean_str_tokens, corrupted_str_tokens: as in :class:`PatchingComparison`.
        rank_correlations: Spearman ρ of magnitudes (``|effect|``, ``|estimate|``, scope), over the
            cells of ``"heads"`` (layer × head × position), ``"heads_all_pos"`` (layer × head; the
            scope's ``head_totals``) and ``"mlps"`` (layer × position), keyed e.g.
            ``"heads: activation_vs_scope"``.

    Example:
        >>> corrupted = "a=3 b=5 c=1 b="                 # the clean prompt predicts 7, this one 5
        >>> comparison = compare_components_with_patching(model, prompt, corrupted, ("7", "5"))
        >>> comparison.activation_patching.heads.shape, comparison.scope.heads.shape
        (torch.Size([2, 4, 5]), torch.Size([2, 4, 5]))
    """

    activation_patching: ComponentPatching
    attribution_patching: ComponentAttribution
    scope: ComponentScopeResult
    scope_prompt: str
    metric_description: str
    position: int
    clean_str_tokens: list[str]
    corrupted_str_tokens: list[str]
    rank_correlations: dict[str, float]


def compare_components_with_patching(
    model: Any,
    clean: str | Int[torch.Tensor, " pos"],
    corrupted: str | Int[torch.Tensor, " pos"],
    metric: PatchingMetric = None,
    *,
    kind: ScopeKind = "semantic",
    scope_prompt: Literal["clean", "corrupted"] = "clean",
    position: int = -1,
    backend: PatchingBackend = "auto",
    batch_size: int = 32,
    **scope_options: Any,
) -> ComponentPatchingComparison:
    """Head- and MLP-level activation patching, attribution patching and component scope, side by side.

    As :func:`compare_with_patching`, one level down: the Semantic Scope reads the metric itself;
    ``**scope_options`` go to :func:`~jscopes_tl.components.component_scope` (e.g. ``rank=``).

    Example:
        >>> corrupted = "a=3 b=5 c=1 b="                 # the clean prompt predicts 7, this one 5
        >>> comparison = compare_components_with_patching(model, prompt, corrupted, ("7", "5"))
        >>> sorted(comparison.rank_correlations)[:2]
        ['heads: activation_vs_attribution', 'heads: activation_vs_scope']
    """
    if scope_prompt not in ("clean", "corrupted"):
        raise ScopeInputError(f"scope_prompt must be 'clean' or 'corrupted'; got {scope_prompt!r}.")
    if kind not in _SCOPES:
        raise ScopeInputError(f"kind must be one of {sorted(_SCOPES)}; got {kind!r}.")
    if kind == "semantic" and "target" in scope_options:
        raise ScopeInputError("compare_components_with_patching's Semantic Scope reads the metric; pass metric=, not target=.")
    adapter = ModelAdapter(model)
    setup = _setup(adapter, clean, corrupted, metric, position)
    patching = _component_activation_patching(adapter, setup, backend, batch_size)
    estimate = _component_attribution(adapter, setup)
    if kind == "semantic":
        scope_options = dict(scope_options, target=_metric_as_target(adapter, setup))
    scope_tokens = setup.clean_tokens if scope_prompt == "clean" else setup.corrupted_tokens
    scope = component_scope(model, scope_tokens, kind=kind, position=setup.position, **scope_options)
    maps = {
        "heads": (patching.heads_effect, estimate.heads, scope.heads),
        "heads_all_pos": (patching.heads_all_pos_effect, estimate.heads_all_pos, scope.head_totals),
        "mlps": (patching.mlps_effect, estimate.mlps, scope.mlps),
    }
    correlations = {}
    for cells, (effect, attribution, sensitivity) in maps.items():
        magnitudes = {"activation": effect.abs(), "attribution": attribution.abs(), "scope": sensitivity}
        for a, b in (("activation", "attribution"), ("activation", "scope"), ("attribution", "scope")):
            correlations[f"{cells}: {a}_vs_{b}"] = spearman(magnitudes[a], magnitudes[b])
    return ComponentPatchingComparison(
        activation_patching=patching,
        attribution_patching=estimate,
        scope=scope,
        scope_prompt=scope_prompt,
        metric_description=setup.metric_description,
        position=setup.position,
        clean_str_tokens=adapter.str_tokens(setup.clean_tokens),
        corrupted_str_tokens=adapter.str_tokens(setup.corrupted_tokens),
        rank_correlations=correlations,
    )

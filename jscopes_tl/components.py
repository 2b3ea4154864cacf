"""Component scopes: which attention head and which MLP, at which token, a prediction is sensitive to.

A token-level scope perturbs the residual stream. A component scope perturbs each component's
own output instead, at every token, and reads the same directions ``u`` of the final hidden state
``y`` (Semantic: a logit or logit difference; Fisher: the predictive distribution's top
eigen-directions; Temperature: ``ŷ``). For head ``h`` of layer ``L`` with output
``z_{L,h,t}`` at token ``t`` (``blocks.L.attn.hook_z``: the head's value-weighted sum, ``d_head``
wide, before the output projection) and for the MLP of layer ``L`` with output ``m_{L,t}``
(``blocks.L.hook_mlp_out``, ``d_model`` wide):

    head score  ‖u^T ∂y/∂z_{L,h,t}‖₂        MLP score  ‖u^T ∂y/∂m_{L,t}‖₂

(Fisher: ``Σ_i λ_i ‖u_i^T ∂y/∂z_{L,h,t}‖²``, squared units, as for tokens). Every head and MLP
of every layer gets a zero perturbation ``δ`` shaped like its activation in the *same* forward
pass, and one backward pass per readout direction yields all of them: ``[n_layers, n_heads,
pos]`` and ``[n_layers, pos]`` cost about what a Semantic Scope costs. Activation patching
answers the same "which head, at which token" question with ``n_layers · n_heads · pos``
forward passes, and attribution patching estimates it to first order from one backward pass
(:func:`jscopes_tl.patching.compare_components_with_patching` lays the three side by side).

Causality shapes the token axis: a head's output at token ``t`` reaches the prediction at ``p``
only through later layers' attention, so in the last layer only ``t = p`` is non-zero, and in
earlier layers the scores show which tokens' component outputs later heads read.

``head_totals`` summarises a head over all tokens, ``‖u^T ∂y/∂z_{L,h,:}‖`` (the norm of the
whole gradient, ``sqrt(Σ_t score²)``; ``Σ_t score`` for Fisher): the sensitivity to the head's
output as a whole, the quantity TransformerLens's ``get_act_patch_attn_head_out_all_pos`` patches.

Where a component is downstream of an internal readout (``readout_hook=``), the readout cannot
depend on it: its scores are exactly 0 (``metadata["downstream_of_readout"]`` lists them).

The module also scores heads by their attention patterns, TransformerLens's standard way of
finding previous-token heads (attention to ``t - 1``) and induction heads (attention, on a
repeated random sequence, to the token after the current token's previous occurrence).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float, Int

from jscopes_tl.adapter import ModelAdapter
from jscopes_tl.engine import DEFAULT_MEMORY_BUDGET_MB, FwdHooks, PerturbationPoint, ReadoutBuilder, run_scope
from jscopes_tl.errors import ScopeInputError
from jscopes_tl.fisher import Solver
from jscopes_tl.hook_readouts import SAELatent
from jscopes_tl.inputs import Inputs, Position, prepare_tokens, resolve_positions
from jscopes_tl.readouts import Target, warn_if_norm_is_fixed
from jscopes_tl.result import Prediction, ResultAxes, check_count
from jscopes_tl.scopes import (
    DEFAULT_FISHER_TAIL_TOLERANCE,
    check_finite,
    check_fwd_hooks,
    check_options,
    expand_positions,
    fisher_builder,
    prediction_of,
    record_readout_and_hooks,
    resolve_readout_hook,
    semantic_builder,
    temperature_builder,
    warn_if_truncation_is_coarse,
)

ComponentKind = Literal["semantic", "fisher", "temperature"]


@dataclass(frozen=True)
class ComponentScopeResult:
    """Per-head and per-MLP, per-token Jacobian Scope scores.

    Shapes: one prompt and one position give ``heads [n_layers, n_heads, pos]`` and
    ``mlps [n_layers, pos]``; a batch adds a leading axis, several positions an axis before
    ``n_layers`` (the axis rules of :class:`~jscopes_tl.result.ScopeResult`).

    Attributes:
        kind: ``"semantic"``, ``"fisher"`` or ``"temperature"``.
        heads: head scores (see the module docstring); padding and tokens after the position are 0.
        mlps: MLP scores.
        heads_gradient_x_input, mlps_gradient_x_input: the signed ``(u^T ∂y/∂a) · a`` (single-direction
            scopes), summed within each head / MLP output.
        tokens, str_tokens, lengths, position, target, prediction: as in ``ScopeResult``
            (``prediction`` is None for an internal readout).
        metadata: numerics, hook names (``head_hooks``, ``mlp_hooks``), readout values, Fisher details.

    Example:
        >>> result = component_scope(model, prompt, kind="fisher")
        >>> result.kind, result.squared, result.heads.shape           # [n_layers, n_heads, pos]
        ('fisher', True, torch.Size([2, 4, 5]))
    """

    kind: str
    heads: Float[torch.Tensor, "... n_layers n_heads pos"]
    mlps: Float[torch.Tensor, "... n_layers pos"]
    heads_gradient_x_input: Float[torch.Tensor, "... n_layers n_heads pos"] | None
    mlps_gradient_x_input: Float[torch.Tensor, "... n_layers pos"] | None
    tokens: Int[torch.Tensor, "..."]
    str_tokens: list[Any]
    lengths: Int[torch.Tensor, " batch"]
    position: Int[torch.Tensor, "..."]
    target: Int[torch.Tensor, "..."] | None
    prediction: Prediction | None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def squared(self) -> bool:
        """Scores in squared units (Fisher), so totals add rather than add in quadrature.

        Example:
            >>> component_scope(model, prompt).squared, component_scope(model, prompt, kind="fisher").squared
            (False, True)
        """
        return self.kind == "fisher"

    def _total(self, scores: torch.Tensor) -> torch.Tensor:
        return scores.sum(-1) if self.squared else scores.pow(2).sum(-1).sqrt()

    @property
    def head_totals(self) -> Float[torch.Tensor, "... n_layers n_heads"]:
        """Each head's sensitivity over all tokens at once (see the module docstring).

        Example:
            >>> component_scope(model, prompt).head_totals.shape       # [n_layers, n_heads]
            torch.Size([2, 4])
        """
        return self._total(self.heads)

    @property
    def mlp_totals(self) -> Float[torch.Tensor, "... n_layers"]:
        return self._total(self.mlps)

    def _check_single(self, what: str) -> None:
        if self.heads.ndim != 3:
            raise ValueError(
                f"{what} needs a result for one prompt and one position; heads have shape {tuple(self.heads.shape)}."
            )

    def top_heads(self, k: int = 5) -> list[tuple[int, int, float]]:
        """The ``k`` heads with the largest totals, as (layer, head, total).

        Example:
            >>> [(layer, head) for layer, head, total in component_scope(model, prompt).top_heads(2)]
            [(0, 2), (0, 1)]
        """
        check_count(k, "top_heads")
        self._check_single("top_heads")
        totals = self.head_totals
        n_heads = totals.shape[1]
        values, flat = totals.flatten().topk(min(k, totals.numel()))
        return [(int(i) // n_heads, int(i) % n_heads, float(v)) for v, i in zip(values, flat)]

    def top_cells(self, k: int = 5) -> list[tuple[int, int, int, str, float]]:
        """The ``k`` largest (head, token) cells, as (layer, head, token index, token, score).

        Example:
            >>> [cell[:4] for cell in component_scope(model, prompt).top_cells(2)]  # layer, head, index, token
            [(0, 2, 4, 'b='), (0, 1, 4, 'b=')]
        """
        check_count(k, "top_cells")
        self._check_single("top_cells")
        n_heads, width = self.heads.shape[1:]
        values, flat = self.heads.flatten().topk(min(k, self.heads.numel()))
        cells = []
        for value, index in zip(values.tolist(), flat.tolist()):
            layer, rest = divmod(index, n_heads * width)
            head, token = divmod(rest, width)
            cells.append((layer, head, token, self.str_tokens[token], value))
        return cells

    def __repr__(self) -> str:
        return (
            f"ComponentScopeResult(kind={self.kind!r}, heads={tuple(self.heads.shape)}, "
            f"mlps={tuple(self.mlps.shape)}, position={self.position.tolist()})"
        )


def _builder(
    adapter: ModelAdapter,
    kind: str,
    target: Target | SAELatent,
    rank: int | None,
    tail_tolerance: float,
    eigen_solver: Solver,
    readout_hook: str | None,
) -> tuple[ReadoutBuilder, int, str | None]:
    """The readout builder of ``kind``, its number of directions and the readout hook."""
    if kind == "semantic":
        build, readout_hook = semantic_builder(adapter, target, readout_hook)
        return build, 1, readout_hook
    if target is not None:
        raise ScopeInputError(f"target is the Semantic readout's; kind={kind!r} takes none.")
    if kind == "fisher":
        build, checked_rank = fisher_builder(adapter, rank, tail_tolerance, eigen_solver, readout_hook)
        return build, checked_rank, None
    if kind == "temperature":
        return temperature_builder(adapter, readout_hook), 1, readout_hook
    raise ScopeInputError(f"kind must be 'semantic', 'fisher' or 'temperature'; got {kind!r}.")


def component_scope(
    model: Any,
    inputs: Inputs,
    *,
    kind: ComponentKind = "semantic",
    target: Target | SAELatent = None,
    position: Position = -1,
    rank: int | None = 1,
    tail_tolerance: float = DEFAULT_FISHER_TAIL_TOLERANCE,
    eigen_solver: Solver = "auto",
    readout_hook: str | None = None,
    fwd_hooks: FwdHooks | None = None,
    top_k: int = 5,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    backward_batch: int | None = None,
    attention_mask: torch.Tensor | None = None,
) -> ComponentScopeResult:
    """Per attention head and per MLP, per token: how sensitive the readout is to that output.

    One forward pass and one backward pass per readout direction (Fisher: ``rank``) give
    ``heads [n_layers, n_heads, pos]`` (perturbing ``blocks.L.attn.hook_z``) and ``mlps
    [n_layers, pos]`` (perturbing ``blocks.L.hook_mlp_out``) at once; see the module docstring.

    Args:
        model: a HookedTransformer or TransformerBridge.
        inputs, position: as for :func:`~jscopes_tl.semantic_scope`.
        kind: which readout, ``"semantic"`` (with ``target``), ``"fisher"`` (``rank``,
            ``tail_tolerance``, ``eigen_solver``; see :func:`~jscopes_tl.fisher_scope`) or ``"temperature"``.
        target: the Semantic target (token, contrast pair, direction, callable, SAE latent).
        readout_hook, fwd_hooks: read an internal activation; run the user's hooks (as for every scope).
        top_k, memory_budget_mb, backward_batch, attention_mask: as for :func:`~jscopes_tl.jacobian_scope`.

    Example:
        >>> result = component_scope(model, prompt)           # semantic scope of the prediction "7"
        >>> result.heads.shape, result.mlps.shape             # [n_layers, n_heads, pos], [n_layers, pos]
        (torch.Size([2, 4, 5]), torch.Size([2, 5]))
    """
    adapter = ModelAdapter(model)
    check_options(top_k, 1.0, memory_budget_mb, False, backward_batch)
    build, n_directions, readout_hook = _builder(adapter, kind, target, rank, tail_tolerance, eigen_solver, readout_hook)
    readout_point = resolve_readout_hook(adapter, readout_hook)
    user_hooks = check_fwd_hooks(adapter, fwd_hooks)
    batch = prepare_tokens(adapter, inputs, attention_mask)
    positions = resolve_positions(position, batch)
    n_layers, n_heads = adapter.n_layers, adapter.n_heads
    head_hooks = [adapter.head_output_hook(layer) for layer in range(n_layers)]
    mlp_hooks = [adapter.mlp_output_hook(layer) for layer in range(n_layers)]
    upstream = (
        set(head_hooks + mlp_hooks)
        if readout_point is None
        else adapter.hooks_run_before(batch.tokens[:1, :1], head_hooks + mlp_hooks, readout_point.hook)
    )
    points = [PerturbationPoint(hook, component_axes=1) for hook in head_hooks if hook in upstream]
    points += [PerturbationPoint(hook) for hook in mlp_hooks if hook in upstream]
    if not points:
        raise ScopeInputError(f"no attention head or MLP output runs before readout_hook={readout_hook!r}.")
    output = run_scope(
        adapter, batch, positions, build, points=points, readout=readout_point, fwd_hooks=user_hooks,
        n_directions=n_directions, memory_budget_mb=memory_budget_mb, backward_batch=backward_batch,
        top_k=top_k,
    )
    check_finite(output.scores, f"{kind} component")
    axes = ResultAxes(prompts=not batch.single, positions=not positions.single, layers=True)
    prediction = prediction_of(adapter, output, axes, positions.expand)
    position_index = positions.index
    if positions.expand is not None:
        output = expand_positions(output, positions)
        position_index = position_index.index_select(1, positions.expand)

    def split(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[batch, n_positions, n_rows, pos]`` → heads ``[..., n_layers, n_heads, pos]`` and mlps
        ``[..., n_layers, pos]``, zero for components downstream of the readout."""
        heads = rows.new_zeros(*rows.shape[:2], n_layers, n_heads, rows.shape[-1])
        mlps = rows.new_zeros(*rows.shape[:2], n_layers, rows.shape[-1])
        row = 0
        for point in points:
            if point.component_axes:
                heads[:, :, head_hooks.index(point.hook)] = rows[:, :, row : row + n_heads]
                row += n_heads
            else:
                mlps[:, :, mlp_hooks.index(point.hook)] = rows[:, :, row]
                row += 1
        return axes.squeeze_prediction(heads), axes.squeeze_prediction(mlps)

    heads, mlps = split(output.scores)
    signed = None if output.gradient_x_input is None else split(output.gradient_x_input)
    metadata: dict[str, Any] = {
        "numerics": adapter.numerics([point.hook for point in points]).as_dict(),
        "head_hooks": head_hooks,
        "mlp_hooks": mlp_hooks,
        **output.metadata,
    }
    if len(points) < 2 * n_layers:
        metadata["downstream_of_readout"] = [hook for hook in head_hooks + mlp_hooks if hook not in upstream]
    for key, values in output.per_prediction.items():
        metadata[key] = axes.squeeze_prediction(values)
    record_readout_and_hooks(metadata, output, user_hooks)
    real_tokens = [batch.tokens[row, :length] for row, length in enumerate(batch.lengths.tolist())]
    str_tokens = [adapter.str_tokens(tokens) for tokens in real_tokens]
    if kind == "temperature" and readout_hook is None:
        warn_if_norm_is_fixed(adapter, stacklevel=2)
    if kind == "fisher":
        warn_if_truncation_is_coarse(metadata, tail_tolerance, stacklevel=2)
    return ComponentScopeResult(
        kind=kind,
        heads=heads,
        mlps=mlps,
        heads_gradient_x_input=None if signed is None else signed[0],
        mlps_gradient_x_input=None if signed is None else signed[1],
        tokens=batch.tokens[0] if batch.single else batch.tokens,
        str_tokens=str_tokens[0] if batch.single else str_tokens,
        lengths=batch.lengths,
        position=axes.squeeze_prediction(position_index),
        target=None if output.target is None else axes.squeeze_prediction(output.target),
        prediction=prediction,
        metadata=metadata,
    )


# --------------------------------------------------------------------------------- heads by attention pattern
@dataclass(frozen=True)
class HeadPatternScores:
    """Attention-pattern scores of every head on repeated random sequences ``[BOS] r r``.

    Attributes:
        previous_token: ``[n_layers, n_heads]``, mean attention from each position to the one before.
        induction: ``[n_layers, n_heads]``, mean attention from each token of the second copy to the
            token after its previous occurrence (offset ``1 - seq_len`` diagonal).
        seq_len, n_sequences: the random sequences scored.

    Example:
        >>> from jscopes_tl.components import head_pattern_scores
        >>> scores = head_pattern_scores(models.load("induction"), n_sequences=4)
        >>> scores.previous_token.shape, scores.induction.shape           # [n_layers, n_heads]
        (torch.Size([2, 4]), torch.Size([2, 4]))
    """

    previous_token: Float[torch.Tensor, "n_layers n_heads"]
    induction: Float[torch.Tensor, "n_layers n_heads"]
    seq_len: int
    n_sequences: int

    @staticmethod
    def _best(scores: torch.Tensor) -> tuple[int, int]:
        index = int(scores.flatten().argmax())
        return divmod(index, scores.shape[1])

    @property
    def previous_token_head(self) -> tuple[int, int]:
        """(layer, head) with the highest previous-token score.

        Example:
            >>> from jscopes_tl.components import head_pattern_scores
            >>> head_pattern_scores(models.load("induction"), n_sequences=8).previous_token_head
            (1, 0)
        """
        return self._best(self.previous_token)

    @property
    def induction_head(self) -> tuple[int, int]:
        """(layer, head) with the highest induction score.

        Example:
            >>> from jscopes_tl.components import head_pattern_scores
            >>> head_pattern_scores(models.load("induction"), n_sequences=8).induction_head
            (0, 2)
        """
        return self._best(self.induction)


def repeated_random_tokens(
    adapter: ModelAdapter, seq_len: int, n_sequences: int, seed: int = 0
) -> Int[torch.Tensor, "n_sequences pos"]:
    """``[BOS] r r`` for random sequences ``r`` of ``seq_len`` distinct non-BOS tokens (BOS omitted
    when the tokenizer has none)."""
    bos = getattr(getattr(adapter.model, "tokenizer", None), "bos_token_id", None)
    candidates = torch.tensor([token for token in range(adapter.d_vocab) if token != bos])
    if not 1 <= seq_len <= len(candidates):
        raise ScopeInputError(f"seq_len must be in [1, {len(candidates)}]; got {seq_len!r}.")
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n_sequences):
        sequence = candidates[torch.randperm(len(candidates), generator=generator)[:seq_len]]
        prefix = [] if bos is None else [bos]
        rows.append(torch.cat([torch.tensor(prefix, dtype=torch.long), sequence, sequence]))
    return torch.stack(rows)


def head_pattern_scores(model: Any, *, seq_len: int = 10, n_sequences: int = 20, seed: int = 0) -> HeadPatternScores:
    """Previous-token and induction scores of every head (TransformerLens's standard detectors).

    Example:
        >>> from jscopes_tl.components import head_pattern_scores
        >>> scores = head_pattern_scores(models.load("induction"))
        >>> scores.previous_token_head, scores.induction_head      # (layer, head)
        ((1, 0), (0, 2))
    """
    adapter = ModelAdapter(model)
    tokens = repeated_random_tokens(adapter, seq_len, n_sequences, seed)
    previous, induction = [], []
    for row in tokens:
        patterns = adapter.attention_patterns(row)  # [n_layers, n_heads, pos, pos]
        previous.append(patterns.diagonal(-1, dim1=-2, dim2=-1).mean(-1))
        induction.append(patterns.diagonal(1 - seq_len, dim1=-2, dim2=-1)[..., -seq_len:].mean(-1))
    return HeadPatternScores(
        previous_token=torch.stack(previous).mean(0),
        induction=torch.stack(induction).mean(0),
        seq_len=seq_len,
        n_sequences=n_sequences,
    )

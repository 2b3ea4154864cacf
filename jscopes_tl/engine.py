"""The one engine behind every scope: readout directions → batched vector–Jacobian products.

A Jacobian Scope scores source token ``t`` for a prediction at position ``p`` by reading the
Jacobian ``J_t = ∂y_p/∂x_t`` along a few directions ``u`` of the final hidden state ``y_p``. Each
``u^T J_t`` is a vector–Jacobian product, and one backward pass gives it for *every* ``t`` at
once: it is the gradient of ``u · y_p`` with respect to a zero perturbation ``δ`` added to the
residual stream ``x`` (at ``blocks.L.hook_resid_pre``; ``L = 0`` is the token plus positional
embedding). So a scope costs one forward pass and one backward pass per direction. On an
accelerator the directions of all positions go through batched backward passes
(``torch.autograd.grad(..., is_grads_batched=True)``), chunked to bound memory; on a CPU one
vector per pass is as fast and lighter (see :func:`_vectors_per_backward`).

Mechanics that keep this exact and cheap:

* ``δ`` is the only tensor that requires grad; parameters are frozen for the call (and restored),
  so autograd saves nothing for weight gradients and never touches ``.grad``.
* The forward pass stops at the readout hook — the unembedding input by default: the
  full-vocabulary unembedding is evaluated only at the positions being scored, by the model's
  own unembed module. A readout at an internal hook (``blocks.L.hook_resid_post``, an SAE's
  hook, ...) reads ``u · a_p`` for the activation ``a_p`` there and computes no logits; nothing
  after that hook runs.
* Hooks go through the model's scoped ``hooks()`` context, so they are removed on every exit.
  The user's own forward hooks (``fwd_hooks``, TransformerLens's format) join the same context,
  after the perturbations and before the readout: at a shared hook point they act on the
  perturbed activation (so an ablation there also removes the perturbation's effect, as editing
  the weights would), and the readout sees what they leave. Hooks the user attached to the model
  beforehand keep running, as in any forward pass, and stay attached.
* Prompts in a batch are independent, so one grad_output can carry the directions of all prompts
  for the same (position, direction) slot; only different positions of one prompt need different
  backward vectors.
* Causality: a prediction at ``p`` depends on tokens ``≤ p`` only, so positions are processed in
  groups, each on the shortest prefix that holds them (``position="all"`` never backpropagates
  through tokens a position cannot see).
* Perturbation points are any hook whose activation is ``[batch, pos, ...]``: ``δ`` is created in
  the hook with the activation's own shape and dtype, so the residual stream, an embedding of
  another width, or per-head outputs ``[batch, pos, head, d_head]`` all go through the same code.
  Leading trailing axes can be kept as *components* (one score row per head), the rest are
  reduced by the norm.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import torch
from jaxtyping import Float

from jscopes_tl.adapter import ModelAdapter
from jscopes_tl.errors import NonFiniteLogitsError, ScopeInputError
from jscopes_tl.fisher import working_dtype
from jscopes_tl.inputs import Positions, TokenBatch
from jscopes_tl.readouts import Readout

ReadoutBuilder = Callable[[torch.Tensor, Union[torch.Tensor, None]], Readout]
"""``(state at the scored positions [m, *state_shape], logits [m, d_vocab] or None) -> Readout``;
logits are given only when the state is the unembedding input."""
HookFunction = Callable[[torch.Tensor, Any], Union[torch.Tensor, None]]
FwdHooks = Sequence[tuple[Union[str, Callable[[str], bool]], HookFunction]]

DEFAULT_MEMORY_BUDGET_MB = 512


class _StopForward(Exception):
    """Raised by the capture hook: everything after the readout hook is not needed."""


@dataclass(frozen=True)
class ReadoutPoint:
    """Where a scope reads: the activation ``a`` at ``hook``, ``[batch, pos, *rest]``, at the scored
    positions. The forward pass stops there.

    ``state`` maps ``a`` to the state the readout directions live in (a HookedTransformer's
    ``ln_final`` of the last residual stream gives the unembedding input; None: ``a`` itself). It
    must work per token: it gets the scored positions only, as ``[m, 1, *rest]``.
    ``unembedding``: the state is the unembedding input, so the model's logits at the scored
    positions are computed and handed to the readout builder.
    """

    hook: str
    state: Callable[[torch.Tensor], torch.Tensor] | None = None
    unembedding: bool = False


def unembedding_readout(adapter: ModelAdapter) -> ReadoutPoint:
    """The default readout point: the state fed to the unembedding (the paper's ``y``)."""
    return ReadoutPoint(adapter.final_hidden_hook, adapter.final_hidden, unembedding=True)


@dataclass(frozen=True)
class PerturbationPoint:
    """Where a zero perturbation ``δ`` is added, and how its gradient becomes score rows.

    The activation at ``hook`` must be ``[batch, pos, *rest]``. The first ``component_axes`` axes of
    ``rest`` are kept (e.g. 1 for per-head activations ``[batch, pos, head, d_head]``: one score row
    per head); the others are reduced by the L2 norm (squared for squared readouts).
    """

    hook: str
    component_axes: int = 0


@dataclass
class EngineOutput:
    """Results in full form: scores ``[batch, n_positions, n_rows, pos]``; per-prediction values
    ``[batch, n_positions, ...]`` (the result object squeezes the axes the user asked away).

    Score rows are the perturbation points in order, each contributing one row per component
    (``component_shapes[i]`` is point ``i``'s kept shape, ``()`` for one row)."""

    scores: Float[torch.Tensor, "batch n_positions n_rows pos"]
    gradient_x_input: Float[torch.Tensor, "batch n_positions n_rows pos"] | None
    gradients: Float[torch.Tensor, "batch n_positions n_rows pos width"] | None
    # The model's top_k next tokens at each scored position, most probable first (None: an internal readout).
    top_ids: Int[torch.Tensor, "batch n_positions k"] | None
    top_probabilities: Float[torch.Tensor, "batch n_positions k"] | None
    target: torch.Tensor | None  # [batch, n_positions, k]
    per_prediction: dict[str, torch.Tensor]  # readout values, [batch, n_positions, ...]
    metadata: dict[str, Any]
    perturbation_hooks: list[str]
    component_shapes: list[tuple[int, ...]]
    readout_hook: str


def _activation_bytes_per_token(adapter: ModelAdapter, width: int) -> int:
    """A rough size of what one token's forward pass keeps for the backward pass: per layer, the
    residual-width tensors (norms, attention in/out, projections), the MLP's hidden tensors and a
    row of attention scores and probabilities per head."""
    cfg = adapter.cfg
    d_mlp = int(getattr(cfg, "d_mlp", None) or 4 * adapter.d_model)
    n_heads = int(getattr(cfg, "n_heads", 1))
    per_layer = 12 * adapter.d_model + 4 * d_mlp + 2 * n_heads * width
    return adapter.n_layers * per_layer * max(adapter.dtype.itemsize, 4)


def _prompt_chunks(batch: TokenBatch, adapter: ModelAdapter, memory_budget_mb: float) -> list[slice]:
    """Consecutive runs of prompts whose forward activations fit ``memory_budget_mb`` (at least
    one prompt each). Bigger passes gain nothing on a CPU, where one prompt of a hundred tokens
    already fills the matrix products; past a few hundred MB of activations they get slower
    (memory traffic, page faults), and on any device they raise peak memory."""
    n_prompts, width = batch.tokens.shape
    per_prompt = width * _activation_bytes_per_token(adapter, width)
    size = max(1, int(memory_budget_mb * 2**20 // per_prompt))
    return [slice(start, min(start + size, n_prompts)) for start in range(0, n_prompts, size)]


def _merge_metadata(merged: dict[str, Any], new: dict[str, Any]) -> None:
    """Readout metadata of another group or chunk of predictions: values shared by every
    prediction are kept; lists (e.g. which eigen-solvers ran) become the sorted union."""
    for key, value in new.items():
        if isinstance(value, list) and isinstance(merged.get(key), list):
            value = sorted(set(merged[key]) | set(value))
        merged[key] = value


def _concatenate(outputs: list[EngineOutput]) -> EngineOutput:
    """Outputs of consecutive prompt chunks as one (every tensor's first axis is the prompt)."""

    def cat(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
        return None if tensors[0] is None else torch.cat(tensors)

    first = outputs[0]
    metadata: dict[str, Any] = {}
    for output in outputs:
        _merge_metadata(metadata, output.metadata)
    return EngineOutput(
        scores=torch.cat([o.scores for o in outputs]),
        gradient_x_input=cat([o.gradient_x_input for o in outputs]),
        gradients=cat([o.gradients for o in outputs]),
        top_ids=cat([o.top_ids for o in outputs]),
        top_probabilities=cat([o.top_probabilities for o in outputs]),
        target=cat([o.target for o in outputs]),
        per_prediction={key: torch.cat([o.per_prediction[key] for o in outputs]) for key in first.per_prediction},
        metadata=metadata,
        perturbation_hooks=first.perturbation_hooks,
        component_shapes=first.component_shapes,
        readout_hook=first.readout_hook,
    )


def _vectors_per_backward(
    n_prompts: int, width: int, n_points: int, adapter: ModelAdapter, memory_budget_mb: float, requested: int | None
) -> int:
    """How many backward vectors to batch in one backward pass (``is_grads_batched``): the
    user's ``backward_batch`` when given, otherwise as follows.

    On a CPU, one: a single vector's backward already keeps every core busy, and batching them
    through vmap measured no cheaper per vector up to 8 vectors and 25–35 % dearer from 16 on
    (GPT-2 size, 256 tokens, 2 cores). Elsewhere as many as ``memory_budget_mb`` holds, from a
    rough per-vector footprint of one layer's backward (activation gradients ``8·d_model`` wide
    plus attention-pattern gradients ``n_heads·pos``) for every perturbation point.

    Example:
        >>> from jscopes_tl.adapter import ModelAdapter
        >>> from jscopes_tl.engine import _vectors_per_backward
        >>> _vectors_per_backward(1, 5, 1, ModelAdapter(model), 512, None)     # on a CPU: one at a time
        1
    """
    if requested is not None:
        return requested
    if adapter.device.type == "cpu":
        return 1
    n_heads = int(getattr(adapter.cfg, "n_heads", 1))
    bytes_per_vector = n_points * n_prompts * width * (8 * adapter.d_model + n_heads * width) * 4
    return max(1, int(memory_budget_mb * 2**20 // bytes_per_vector))


# A forward pass that records the graph costs about this many times one vector's backward pass
# (measured on CPU, GPT-2 size, 128–256 tokens).
FORWARD_TO_BACKWARD_COST = 1.2


def _slots_per_group(width: int, n_directions: int, vectors_per_backward: int) -> int:
    """How many prediction positions share one forward pass.

    A group of ``g`` positions (sorted by the prefix they need) shares one forward pass on the
    longest prefix ``P`` among them, and each of its ``g · k`` backward vectors then runs on that
    prefix, on average ``g/2`` tokens more than its own position needs. Forward cost per
    position ``≈ c·P/g``, wasted backward ``≈ k·g/2``: balanced at ``g = √(2c·P/k)``. At least
    one full batch of backward vectors, so accelerators get their batching.
    """
    balanced = round(math.sqrt(2 * FORWARD_TO_BACKWARD_COST * width / n_directions))
    return max(1, balanced, vectors_per_backward // n_directions)


def _vector_jacobian_products(
    output: torch.Tensor, leaves: list[torch.Tensor], grad_outputs: torch.Tensor, retain_graph: bool
) -> tuple[torch.Tensor | None, ...]:
    """``grad_outputs[i]^T ∂output/∂leaf`` for every i and leaf (each ``[vector, *leaf.shape]``),
    in one batched backward where possible. ``retain_graph=False`` for the last backward pass on a
    graph: autograd frees the activations it saved as it goes. None for a leaf the output does not
    depend on (a user's hook cut its path; the caller says so)."""
    if grad_outputs.shape[0] == 1:
        gradients = torch.autograd.grad(output, leaves, grad_outputs[0], retain_graph=retain_graph, allow_unused=True)
        return tuple(None if gradient is None else gradient[None] for gradient in gradients)
    return torch.autograd.grad(
        output, leaves, grad_outputs, retain_graph=retain_graph, is_grads_batched=True, allow_unused=True
    )


def unreached_readout_error(hooks: list[str], readout_hook: str, fwd_hooks: FwdHooks) -> ScopeInputError:
    """The error for perturbation points the readout does not depend on: only a user's hook that
    replaced an activation on every path with a tensor detached from it can do that (the user's
    hooks note such returns in ``detached_returns``; see :func:`jscopes_tl.scopes.check_fwd_hooks`)."""
    detached = [where for _, function in fwd_hooks for where in getattr(function, "detached_returns", ())]
    if detached:
        return ScopeInputError(
            f"{detached[0]} returned a tensor detached from its input: the perturbation no longer reaches the readout "
            f"(at {readout_hook!r}; perturbed at {hooks}), so every score would be 0. Return a tensor computed from "
            "the activation (clone it and set entries, or torch.where), or perturb after this hook (a later layer=)."
        )
    return ScopeInputError(
        f"the perturbation at {hooks} does not reach the readout at {readout_hook!r}: no gradient path joins them."
    )


def _release_graph(adapter: ModelAdapter, holders: list[torch.Tensor]) -> None:
    """Free a forward pass's autograd graph once its last backward pass is done, not when the call
    ends: ``holders`` has this call's last references to it (emptied here), and
    :meth:`ModelAdapter.release_call_graph` drops the model's own (a TransformerBridge attention
    bridge caches its pattern). What is left to free is the graph's nodes (about a millisecond at
    GPT-2 size); the activations they saved went during the last backward pass."""
    holders.clear()
    adapter.release_call_graph()


def _slot_groups(positions: Positions, slots_per_group: int) -> list[list[int]]:
    """Prediction slots grouped by how long a prefix they need (causality: the tokens after the
    last position predicted from are irrelevant), so each group's pass runs on its own prefix."""
    prefix = positions.prefix
    # Slots no prompt of this batch fills (padding of position="all") are left at zero.
    order = [slot for slot in sorted(range(len(prefix)), key=prefix.__getitem__) if prefix[slot] > 0]
    return [order[i : i + slots_per_group] for i in range(0, len(order), slots_per_group)]


def run_scope(
    adapter: ModelAdapter,
    batch: TokenBatch,
    positions: Positions,
    build_readout: ReadoutBuilder,
    *,
    points: Sequence[PerturbationPoint],
    readout: ReadoutPoint | None = None,
    fwd_hooks: FwdHooks = (),
    n_directions: int = 1,
    input_scale: float | Float[torch.Tensor, " batch"] = 1.0,
    input_baseline: Float[torch.Tensor, "pos ..."] | None = None,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    return_gradients: bool = False,
    backward_batch: int | None = None,
    top_k: int = 5,
) -> EngineOutput:
    """Forward with zero perturbations, read the directions, and backpropagate them.

    ``points`` lists where the model is perturbed (e.g. the residual stream entering each listed
    layer). Each perturbation is a separate zero leaf, so one forward and one batched backward
    give ``u^T ∂y/∂a`` for every listed activation ``a`` at once. ``readout`` says where ``y`` is
    read (default: the unembedding input); every point must be upstream of it. ``fwd_hooks``
    (TransformerLens's ``[(hook_name, fn), ...]``) run during the forward pass, after the
    perturbations at a shared hook point. ``input_scale`` ``α`` (one number, or one per prompt)
    and ``input_baseline`` ``x₀`` (the activation's shape per prompt; None: 0) move the
    activation at the first point to ``x₀ + α (x − x₀)`` before it is perturbed, i.e. the
    Jacobian is taken there (the points of an Integrated Gradients path); signed scores still use ``x``.

    Prompts go through in chunks whose forward activations fit ``memory_budget_mb``; within a
    chunk, prediction positions are processed in groups, each on the shortest prefix that
    contains them, with ``backward_batch`` backward vectors per backward pass (default: one on a
    CPU, as many as ``memory_budget_mb`` allows elsewhere; ``n_directions`` per position is the
    readout's size, used for that estimate). With an unembedding readout, the model's ``top_k``
    next tokens at each scored position are kept (not the logits: a vocabulary per position).
    """
    readout = readout or unembedding_readout(adapter)
    chunks = _prompt_chunks(batch, adapter, memory_budget_mb)
    if len(chunks) > 1:
        options: dict[str, Any] = dict(
            points=points, readout=readout, fwd_hooks=fwd_hooks, n_directions=n_directions,
            input_baseline=input_baseline, memory_budget_mb=memory_budget_mb, return_gradients=return_gradients,
            backward_batch=backward_batch, top_k=top_k,
        )
        return _concatenate([
            run_scope(
                adapter, batch.rows(rows), positions.rows(rows), build_readout,
                input_scale=input_scale[rows] if isinstance(input_scale, torch.Tensor) else input_scale, **options,
            )
            for rows in chunks
        ])
    n_prompts, width = batch.tokens.shape
    n_slots = positions.n_positions
    per_backward = _vectors_per_backward(n_prompts, width, len(points), adapter, memory_budget_mb, backward_batch)
    slots_per_group = _slots_per_group(width, n_directions, per_backward)

    squared_norms: torch.Tensor | None = None
    signed: torch.Tensor | None = None
    kept_gradients: torch.Tensor | None = None
    k = min(top_k, adapter.d_vocab)
    top_ids: torch.Tensor | None = None
    top_probabilities: torch.Tensor | None = None
    target_grid: torch.Tensor | None = None
    per_prediction: dict[str, torch.Tensor] = {}
    metadata: dict[str, Any] = {}
    component_shapes: list[tuple[int, ...]] = []
    squared = False

    with adapter.prepared_for_scopes():
        groups = _slot_groups(positions, slots_per_group)
        for slots in groups:
            group = _run_group(
                adapter, batch, positions, slots, build_readout, points, readout, fwd_hooks, input_scale,
                input_baseline, memory_budget_mb, return_gradients, backward_batch, k,
            )
            at = _Cells(n_prompts, n_slots, width, slots, group, only_group=len(groups) == 1)
            squared_norms = at.put_scores(squared_norms, group.squared_norms)
            component_shapes = group.component_shapes
            squared = group.readout.squared
            if group.signed is not None:
                signed = at.put_scores(signed, group.signed)
            if group.gradients is not None:
                kept_gradients = at.put_scores(kept_gradients, group.gradients)
            if group.top_ids is not None and group.top_probabilities is not None:
                top_ids = at.put_predictions(top_ids, group.top_ids)
                top_probabilities = at.put_predictions(top_probabilities, group.top_probabilities)
            if group.readout.target is not None:
                target_grid = at.put_predictions(target_grid, group.readout.target.long())
            for key, values in group.readout.per_prediction.items():
                per_prediction[key] = at.put_predictions(per_prediction.get(key), values.cpu())
            _merge_metadata(metadata, group.readout.metadata)
    assert squared_norms is not None  # every prompt has at least one valid position

    return EngineOutput(
        scores=squared_norms if squared else squared_norms.sqrt(),
        gradient_x_input=signed,
        gradients=kept_gradients,
        top_ids=top_ids,
        top_probabilities=top_probabilities,
        target=target_grid,
        per_prediction=per_prediction,
        metadata=metadata,
        perturbation_hooks=[point.hook for point in points],
        component_shapes=component_shapes,
        readout_hook=readout.hook,
    )


@dataclass
class _GroupOutput:
    prompts: torch.Tensor  # [m] prompt of each valid (prompt, slot) pair of the group
    slots: torch.Tensor  # [m] slot of each pair
    squared_norms: torch.Tensor  # [batch, n_group_slots, n_rows, prefix]
    signed: torch.Tensor | None
    gradients: torch.Tensor | None
    top_ids: torch.Tensor | None  # [m, k]; None for an internal readout
    top_probabilities: torch.Tensor | None  # [m, k]
    readout: Readout
    component_shapes: list[tuple[int, ...]]


@dataclass
class _Cells:
    """Where one group's results go in a call's grids: scores ``[batch, n_slots, n_rows, width, ...]``
    (the group's slots, its prefix), per-prediction values ``[batch, n_slots, ...]`` (its valid
    (prompt, slot) pairs). A grid is made (zeros where nothing goes) when its first group arrives,
    unless that group is the call's only one and filled every cell: then its tensors are the grid."""

    n_prompts: int
    n_slots: int
    width: int
    slots: list[int]
    group: _GroupOutput
    only_group: bool
    whole: bool = field(init=False)  # this group's tensors are the grids

    def __post_init__(self) -> None:
        prefix = self.group.squared_norms.shape[-1]
        every_pair = len(self.group.prompts) == self.n_prompts * self.n_slots
        every_slot = self.slots == list(range(self.n_slots))
        self.whole = self.only_group and prefix == self.width and every_pair and every_slot

    def put_scores(self, grid: torch.Tensor | None, values: torch.Tensor) -> torch.Tensor:
        if grid is None and self.whole:
            return values
        if grid is None:
            grid = values.new_zeros(self.n_prompts, self.n_slots, values.shape[2], self.width, *values.shape[4:])
        grid[:, self.slots, :, : values.shape[3]] = values
        return grid

    def put_predictions(self, grid: torch.Tensor | None, values: torch.Tensor) -> torch.Tensor:
        if grid is None and self.whole:
            return values.reshape(self.n_prompts, self.n_slots, *values.shape[1:])  # pairs in row-major order
        if grid is None:
            grid = values.new_zeros(self.n_prompts, self.n_slots, *values.shape[1:])
        grid[self.group.prompts, self.group.slots] = values
        return grid


def _per_component(point: PerturbationPoint, values: torch.Tensor) -> torch.Tensor:
    """``[vector, batch, pos, *rest]`` at one point → ``[vector, batch, pos, n_components, width]``:
    the kept component axes flattened into one, the reduced axes into another."""
    n_vectors, n_prompts, prefix = values.shape[:3]
    components = values.shape[3 : 3 + point.component_axes]
    return values.reshape(n_vectors, n_prompts, prefix, math.prod(components), -1)


def _run_group(
    adapter: ModelAdapter,
    batch: TokenBatch,
    positions: Positions,
    slots: list[int],
    build_readout: ReadoutBuilder,
    points: Sequence[PerturbationPoint],
    readout_point: ReadoutPoint,
    fwd_hooks: FwdHooks,
    input_scale: float | torch.Tensor,
    input_baseline: torch.Tensor | None,
    memory_budget_mb: float,
    return_gradients: bool,
    backward_batch: int | None,
    top_k: int,
) -> _GroupOutput:
    """One forward pass on the prefix these slots need, then their batched backward passes."""
    dtype = working_dtype(adapter.dtype)
    # Consecutive slots (the usual group) as a slice: views, no copies.
    first = slots[0]
    columns: slice | torch.Tensor = (
        slice(first, first + len(slots)) if slots == list(range(first, first + len(slots))) else torch.tensor(slots)
    )
    valid, index = positions.valid[:, columns], positions.index[:, columns]
    prefix = max(positions.prefix[slot] for slot in slots)
    tokens = batch.tokens[:, :prefix]  # adapter.forward places them on the token embedding's device
    n_prompts = tokens.shape[0]
    captured: dict[str, torch.Tensor] = {}
    inputs: dict[int, torch.Tensor] = {}
    deltas: dict[int, torch.Tensor] = {}

    def perturbation(point_index: int) -> Callable[[torch.Tensor, Any], torch.Tensor]:
        def add_perturbation(activation: torch.Tensor, hook: Any) -> torch.Tensor:
            if point_index in deltas:
                raise RuntimeError(
                    f"hook {points[point_index].hook!r} ran twice in one forward pass; it cannot be a perturbation point."
                )
            inputs[point_index] = activation.detach()
            if point_index == 0:
                activation = _path_point(activation, input_scale, input_baseline)
            # δ is created here, with the activation's own shape and dtype: it is the only leaf
            # that requires grad.
            deltas[point_index] = torch.zeros_like(activation, requires_grad=True)
            return activation + deltas[point_index]

        return add_perturbation

    def capture_readout(activation: torch.Tensor, hook: Any) -> None:
        captured["readout"] = activation
        raise _StopForward

    # Hooks at one hook point run in the order added: perturbations first (the user's hooks and
    # the capture must see δ), then the user's hooks, then the capture (it reads what they leave).
    # jscopes_tl's own hooks go straight onto their hook points; the user's through the model's
    # context manager (it resolves filters and aliases).
    perturbations = [(point.hook, perturbation(i)) for i, point in enumerate(points)]
    capture = [(readout_point.hook, capture_readout)]

    def run_forward() -> None:
        try:
            adapter.forward(tokens)
        except _StopForward:
            pass

    if fwd_hooks:
        with adapter.own_hooks(perturbations), adapter.hooks(list(fwd_hooks)), adapter.own_hooks(capture):
            run_forward()
    else:
        with adapter.own_hooks(perturbations + capture):
            run_forward()
    _check_hooks_ran(points, readout_point, captured, deltas)
    leaves = [deltas[i] for i in range(len(points))]
    for point, leaf in zip(points, leaves):
        if leaf.ndim < 2 + point.component_axes or tuple(leaf.shape[:2]) != (n_prompts, prefix):
            raise RuntimeError(
                f"the activation at {point.hook!r} has shape {tuple(leaf.shape)}; a perturbation point needs "
                f"[batch={n_prompts}, pos={prefix}, ...] with {point.component_axes} component axes."
            )
    component_shapes = [tuple(leaf.shape[2 : 2 + point.component_axes]) for point, leaf in zip(points, leaves)]

    pair_prompt, pair_group_slot = valid.nonzero(as_tuple=True)
    source_position = index[pair_prompt, pair_group_slot]
    activation = captured["readout"]
    if activation.ndim < 3 or tuple(activation.shape[:2]) != (n_prompts, prefix):
        raise ScopeInputError(
            f"the activation at readout hook {readout_point.hook!r} has shape {tuple(activation.shape)}; "
            f"a readout needs [batch={n_prompts}, pos={prefix}, ...]."
        )
    # The readout state at the scored positions only (a state function such as the final norm
    # works per token; it gets them as [m, 1, ...], a batch of one-token prompts).
    selected = activation[pair_prompt.to(activation.device), source_position.to(activation.device)]
    y = selected if readout_point.state is None else readout_point.state(selected[:, None])[:, 0]  # [m, *state_shape]
    if not y.requires_grad:
        raise unreached_readout_error([point.hook for point in points], readout_point.hook, fwd_hooks)
    logits = top_ids = top_probabilities = None
    if readout_point.unembedding:
        with torch.no_grad():
            logits = adapter.logits(y).to(dtype)
        if not all_finite(logits):
            bad = int((~torch.isfinite(logits)).any(-1).nonzero()[0, 0])
            raise NonFiniteLogitsError(
                f"the model's logits are NaN or infinite for prompt {int(pair_prompt[bad])} at position "
                f"{int(source_position[bad])}; scores would be meaningless. Check the weights and inputs."
            )
        # softmax's top k, without a vocabulary-sized probability tensor: p = exp(logit − logsumexp).
        top_logits, top_ids = logits.topk(top_k, dim=-1)
        top_probabilities = (top_logits - logits.logsumexp(dim=-1, keepdim=True)).exp()
    readout = build_readout(y.detach(), logits)
    if tuple(readout.directions.shape[2:]) != tuple(y.shape[1:]):
        raise ScopeInputError(
            f"the readout's directions have shape {tuple(readout.directions.shape[2:])} per direction, but the "
            f"state at {readout_point.hook!r} has shape {tuple(y.shape[1:])}."
        )

    n_group_slots, n_directions = len(slots), readout.directions.shape[1]
    n_rows = sum(math.prod(shape) for shape in component_shapes)
    squared_norms = torch.zeros(n_prompts, n_group_slots, n_rows, prefix, dtype=dtype)
    signed = torch.zeros(n_prompts, n_group_slots, n_rows, prefix, dtype=dtype) if n_directions == 1 else None
    keep_gradients = return_gradients and n_directions == 1
    # Each score row's gradient is as wide as one component of its point (d_head for a head).
    widths = {leaf[0, 0].numel() // max(1, math.prod(shape)) for leaf, shape in zip(leaves, component_shapes)}
    if keep_gradients and len(widths) != 1:
        raise ScopeInputError(
            "return_gradients needs perturbation points whose components have one width; "
            f"got {[point.hook for point in points]} (widths {sorted(widths)})."
        )
    kept_gradients = (
        torch.zeros(n_prompts, n_group_slots, n_rows, prefix, widths.pop(), dtype=dtype) if keep_gradients else None
    )
    # The activations x at the points, for the signed scores (u^T J_t) · x_t of single-direction readouts.
    activations = [
        _per_component(point, inputs[i][None].to(dtype)) for i, point in enumerate(points)
    ] if signed is not None else []
    # One backward vector per (slot, direction); within it, every prompt's own direction.
    vectors = [(slot, r) for slot in range(n_group_slots) for r in range(n_directions)]
    chunk = _vectors_per_backward(n_prompts, prefix, len(points), adapter, memory_budget_mb, backward_batch)
    directions = readout.directions.to(device=y.device, dtype=y.dtype)
    # The usual group, one slot that every prompt has (one position per prompt): its pairs are the
    # prompts in order, so slices stand in for index tensors and the directions are the vectors.
    one_slot = n_group_slots == 1 and len(pair_prompt) == n_prompts
    if one_slot:
        rows_of_slot: list[Any] = [slice(None)]
        prompts_of_slot: list[Any] = [slice(None)]
    else:
        rows_of_slot = [(pair_group_slot == slot).nonzero(as_tuple=True)[0] for slot in range(n_group_slots)]
        prompts_of_slot = [pair_prompt[rows] for rows in rows_of_slot]
    for start in range(0, len(vectors), chunk):
        part = vectors[start : start + chunk]
        last = start + chunk >= len(vectors)
        if one_slot:
            grad_outputs = directions[:, start : start + len(part)].movedim(1, 0)  # part's r: start, start + 1, ...
        else:
            grad_outputs = torch.zeros(len(part), *y.shape, dtype=y.dtype, device=y.device)
            for i, (slot, r) in enumerate(part):
                rows = rows_of_slot[slot].to(y.device)
                grad_outputs[i, rows] = directions[rows, r]
        # Per point [vector, prompt, pos, n_components, width], reduced on the model's device.
        vjps = _vector_jacobian_products(y, leaves, grad_outputs, retain_graph=not last)
        unreached = [point.hook for point, gradient in zip(points, vjps) if gradient is None]
        if unreached:
            raise unreached_readout_error(unreached, readout_point.hook, fwd_hooks)
        gradients = [_per_component(point, gradient.to(dtype)) for point, gradient in zip(points, vjps)]
        # -> [vector, prompt, row, pos], each point's part on y's device first (on a model split
        # across devices the points of different layers live on different devices; a no-op otherwise).
        squares = _rows([torch.linalg.vecdot(g, g).transpose(2, 3).to(y.device) for g in gradients])
        products = (
            _rows([torch.linalg.vecdot(g, x).transpose(2, 3).to(y.device) for g, x in zip(gradients, activations)])
            if signed is not None
            else None
        )
        full = _rows([g.transpose(2, 3).to(y.device) for g in gradients]) if kept_gradients is not None else None
        for i, (slot, r) in enumerate(part):
            rows, prompts = rows_of_slot[slot], prompts_of_slot[slot]
            weight = readout.weights[rows, r].to(dtype).cpu()[:, None, None]
            squared_norms[prompts, slot] += weight * squares[i, prompts]
            if products is not None:
                signed[prompts, slot] = products[i, prompts]
            if full is not None:
                kept_gradients[prompts, slot] = full[i, prompts]
    graph = [captured.pop("readout"), selected, y]
    del activation, selected, y
    _release_graph(adapter, graph)

    return _GroupOutput(
        prompts=pair_prompt,
        slots=columns[pair_group_slot] if isinstance(columns, torch.Tensor) else pair_group_slot + first,
        squared_norms=squared_norms,
        signed=signed,
        gradients=kept_gradients,
        top_ids=None if top_ids is None else top_ids.cpu(),
        top_probabilities=None if top_probabilities is None else top_probabilities.cpu(),
        readout=readout,
        component_shapes=component_shapes,
    )


def _path_point(
    activation: torch.Tensor, scale: float | torch.Tensor, baseline: torch.Tensor | None
) -> torch.Tensor:
    """``x₀ + α (x − x₀)`` for each prompt's ``α`` (``scale``: one number or ``[batch]``) and the
    baseline ``x₀`` (None: 0) cut to the activation's prefix; ``x`` itself when there is no path."""
    if isinstance(scale, torch.Tensor):
        scale = scale.to(activation).reshape(-1, *[1] * (activation.ndim - 1))
    elif baseline is None and scale == 1.0:
        return activation
    if baseline is None:
        return activation * scale
    start = baseline[: activation.shape[1]].to(activation)
    return start + scale * (activation - start)


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether no entry is NaN or infinite. A finite sum is the common case (one reduction, read as a
    Python float); only an infinite or NaN sum, which finite entries can also give, looks at each entry."""
    return math.isfinite(tensor.sum()) or bool(torch.isfinite(tensor).all())


def _rows(parts: list[torch.Tensor]) -> torch.Tensor:
    """The points' ``[vector, prompt, row, pos, ...]`` parts side by side along rows, on the CPU
    (one point's part as it is: no copy)."""
    return (parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)).cpu()


def _check_hooks_ran(
    points: Sequence[PerturbationPoint],
    readout_point: ReadoutPoint,
    captured: dict[str, torch.Tensor],
    deltas: dict[int, torch.Tensor],
) -> None:
    """Every perturbation point ran before the readout hook, and the readout hook ran."""
    if "readout" not in captured:
        raise ScopeInputError(
            f"the readout hook {readout_point.hook!r} never ran during the forward pass; some hook points only "
            "fire with a model option set (e.g. attn.hook_result needs use_attn_result)."
        )
    missing = [point.hook for i, point in enumerate(points) if i not in deltas]
    if missing:
        raise ScopeInputError(
            f"the perturbation point(s) {missing} did not run before the readout hook {readout_point.hook!r}: "
            "a scope perturbs activations upstream of where it reads (choose an earlier layer or a later "
            "readout_hook), and only hooks that run in the forward pass can be perturbed."
        )

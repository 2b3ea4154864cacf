"""The one engine behind every scope: readout directions → batched vector–Jacobian products.

A Jacobian Scope scores source token ``t`` for a prediction at position ``p`` by reading the
Jacobian ``J_t = ∂y_p/∂x_t`` along a few directions ``u`` of the final hidden state ``y_p``. Each
``u^T J_t`` is a vector–Jacobian product, and one backward pass gives it for *every* ``t`` at
once: it is the gradient of ``u · y_p`` with respect to a zero perturbation ``δ`` added to the
residual stream ``x`` (at ``blocks.L.hook_resid_pre``; ``L = 0`` is the token plus positional
embedding). So a scope costs one forward pass and one backward pass per direction, and the
directions of all positions and prompts go through one batched backward
(``torch.autograd.grad(..., is_grads_batched=True)``), chunked to bound memory.

Mechanics that keep this exact and cheap:

* ``δ`` is the only tensor that requires grad; parameters are frozen for the call (and restored),
  so autograd saves nothing for weight gradients and never touches ``.grad``.
* The forward pass stops at the unembedding input: the full-vocabulary unembedding is evaluated
  only at the positions being scored, by the model's own unembed module.
* Hooks go through the model's scoped ``hooks()`` context, so they are removed on every exit.
* Prompts in a batch are independent, so one grad_output can carry the directions of all prompts
  for the same (position, direction) slot; only different positions of one prompt need different
  backward vectors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float

from jscopes_tl.adapter import ModelAdapter
from jscopes_tl.errors import NonFiniteLogitsError
from jscopes_tl.inputs import Positions, TokenBatch
from jscopes_tl.readouts import Readout

ReadoutBuilder = Callable[[torch.Tensor, torch.Tensor], Readout]

DEFAULT_MEMORY_BUDGET_MB = 512


class _StopForward(Exception):
    """Raised by the capture hook: everything after the unembedding input is not needed."""


@dataclass
class EngineOutput:
    """Scores in full form, ``[batch, n_positions, n_layers, pos]`` (the result squeezes axes)."""

    scores: Float[torch.Tensor, "batch n_positions n_layers pos"]
    gradient_x_input: Float[torch.Tensor, "batch n_positions n_layers pos"] | None
    gradients: Float[torch.Tensor, "batch n_positions n_layers pos d_model"] | None
    logits: Float[torch.Tensor, "batch n_positions d_vocab"]
    readout: Readout
    perturbation_hooks: list[str]


def _chunk_size(batch: TokenBatch, adapter: ModelAdapter, memory_budget_mb: float) -> int:
    """How many backward vectors to batch: a rough per-vector footprint of one layer's backward."""
    n_prompts, width = batch.tokens.shape
    n_heads = int(getattr(adapter.cfg, "n_heads", 1))
    bytes_per_vector = n_prompts * width * (8 * adapter.d_model + n_heads * width) * 4
    return max(1, int(memory_budget_mb * 2**20 // bytes_per_vector))


def _vector_jacobian_products(
    output: torch.Tensor, leaf: torch.Tensor, grad_outputs: torch.Tensor
) -> torch.Tensor:
    """``grad_outputs[i]^T ∂output/∂leaf`` for every i, in one batched backward where possible."""
    if grad_outputs.shape[0] == 1:
        (gradient,) = torch.autograd.grad(output, leaf, grad_outputs[0], retain_graph=True)
        return gradient[None]
    (gradients,) = torch.autograd.grad(
        output, leaf, grad_outputs, retain_graph=True, is_grads_batched=True
    )
    return gradients


def run_scope(
    adapter: ModelAdapter,
    batch: TokenBatch,
    positions: Positions,
    build_readout: ReadoutBuilder,
    *,
    layers: Sequence[int] = (0,),
    input_scale: float = 1.0,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    return_gradients: bool = False,
) -> EngineOutput:
    """Forward once with zero perturbations, read the directions, and backpropagate them.

    ``layers`` lists where the residual stream is perturbed (``n_layers`` is the final residual
    stream). Each perturbation is a separate zero leaf, so a single forward and a single batched
    backward give ``u^T ∂y/∂resid_L`` for every listed layer at once. ``input_scale`` multiplies
    the residual stream at the first listed layer before it is perturbed, i.e. the Jacobian is
    taken at ``α·x`` (the points of an Integrated Gradients path); the signed scores still use
    the unscaled ``x``.
    """
    perturbation_hooks = [adapter.resid_pre_hook(layer) for layer in layers]
    tokens = batch.tokens.to(adapter.device)
    n_prompts, width = tokens.shape
    n_layers = len(perturbation_hooks)
    captured: dict[str, torch.Tensor] = {}
    inputs: dict[int, torch.Tensor] = {}

    with adapter.prepared_for_scopes():
        delta = torch.zeros(
            n_layers, n_prompts, width, adapter.d_model, dtype=adapter.dtype, device=adapter.device, requires_grad=True
        )

        def perturbation(index: int) -> Callable[[torch.Tensor, Any], torch.Tensor]:
            def add_perturbation(activation: torch.Tensor, hook: Any) -> torch.Tensor:
                inputs[index] = activation.detach()
                if index == 0 and input_scale != 1.0:
                    activation = activation * input_scale
                return activation + delta[index].to(activation.dtype)

            return add_perturbation

        def capture_final_hidden(activation: torch.Tensor, hook: Any) -> None:
            captured["final"] = activation
            raise _StopForward

        # Perturbations first: where one shares the capture's hook point (the final residual of
        # a HookedTransformer), hooks run in the order added and the capture must see δ.
        hooks = [(name, perturbation(i)) for i, name in enumerate(perturbation_hooks)]
        with adapter.hooks(hooks + [(adapter.final_hidden_hook, capture_final_hidden)]):
            try:
                adapter.forward(tokens)
            except _StopForward:
                pass
        if "final" not in captured or len(inputs) != n_layers:
            raise RuntimeError(
                f"the forward pass never reached {perturbation_hooks} and {adapter.final_hidden_hook!r}; "
                "this model's hook layout is not supported."
            )

        valid_prompt, valid_slot = positions.valid.nonzero(as_tuple=True)
        source_position = positions.index[valid_prompt, valid_slot]
        final_hidden = adapter.final_hidden(captured["final"])
        y = final_hidden[valid_prompt.to(adapter.device), source_position.to(adapter.device)]
        with torch.no_grad():
            logits = adapter.logits(y).float()
        if not torch.isfinite(logits).all():
            bad = int((~torch.isfinite(logits)).any(-1).nonzero()[0, 0])
            raise NonFiniteLogitsError(
                f"the model's logits are NaN or infinite for prompt {int(valid_prompt[bad])} at position "
                f"{int(source_position[bad])}; scores would be meaningless. Check the weights and inputs."
            )
        readout = build_readout(y.detach(), logits)

        n_slots, n_directions = positions.n_positions, readout.directions.shape[1]
        squared_norms = torch.zeros(n_prompts, n_slots, n_layers, width)
        signed = torch.zeros(n_prompts, n_slots, n_layers, width) if n_directions == 1 else None
        kept_gradients = (
            torch.zeros(n_prompts, n_slots, n_layers, width, adapter.d_model)
            if return_gradients and n_directions == 1
            else None
        )
        residual_inputs = torch.stack([inputs[i] for i in range(n_layers)], dim=1).float().cpu()  # [b, l, p, d]
        # One backward vector per (slot, direction); within it, every prompt's own direction.
        vectors = [(slot, r) for slot in range(n_slots) for r in range(n_directions)]
        chunk = max(1, _chunk_size(batch, adapter, memory_budget_mb) // n_layers)
        directions = readout.directions.to(y.dtype)
        for start in range(0, len(vectors), chunk):
            part = vectors[start : start + chunk]
            grad_outputs = torch.zeros(len(part), *y.shape, dtype=y.dtype, device=y.device)
            for i, (slot, r) in enumerate(part):
                rows = (valid_slot == slot).nonzero(as_tuple=True)[0].to(y.device)
                grad_outputs[i, rows] = directions[rows, r]
            # [vector, layer, prompt, pos, d_model] -> [vector, prompt, layer, pos, d_model]
            gradients = _vector_jacobian_products(y, delta, grad_outputs).float().cpu().transpose(1, 2)
            for i, (slot, r) in enumerate(part):
                rows = (valid_slot == slot).nonzero(as_tuple=True)[0]
                prompts = valid_prompt[rows]
                weight = readout.weights[rows, r].float().cpu()[:, None, None]
                squared_norms[prompts, slot] += weight * gradients[i, prompts].pow(2).sum(-1)
                if signed is not None:
                    signed[prompts, slot] = (gradients[i, prompts] * residual_inputs[prompts]).sum(-1)
                if kept_gradients is not None:
                    kept_gradients[prompts, slot] = gradients[i, prompts]

    scores = squared_norms if readout.squared else squared_norms.sqrt()
    logits_out = torch.zeros(n_prompts, n_slots, logits.shape[-1])
    logits_out[valid_prompt, valid_slot] = logits.cpu()
    return EngineOutput(
        scores=scores,
        gradient_x_input=signed,
        gradients=kept_gradients,
        logits=logits_out,
        readout=readout,
        perturbation_hooks=perturbation_hooks,
    )

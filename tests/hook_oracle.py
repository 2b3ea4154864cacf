"""Brute-force Jacobians between any two hook points, sharing no code with the scope engine: the
activation at one hook is *replaced* by a free input and torch.autograd.functional.jacobian
differentiates what another hook (or the unembedding input) then holds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from jscopes_tl.adapter import ModelAdapter
from jscopes_tl.toy import toy_model

from conftest import MODEL_SPECS


def activation_at(model: Any, tokens: torch.Tensor, hook: str, fwd_hooks: Sequence = ()) -> torch.Tensor:
    """The activation at ``hook`` as the model computes it (before the user's hooks there), [pos, ...]."""
    store: dict[str, torch.Tensor] = {}

    def capture(activation: torch.Tensor, hook: Any) -> None:
        store["a"] = activation.detach().clone()

    with torch.no_grad(), model.hooks(fwd_hooks=[(hook, capture), *fwd_hooks]):
        model(tokens[None])
    return store["a"][0]


def readout_function(model: Any, tokens: torch.Tensor, perturbed: str, position: int, readout: str | None = None, fwd_hooks: Sequence = ()):
    """a [pos, ...] at ``perturbed`` -> the activation at ``readout`` (None: the unembedding input) at ``position``."""
    adapter = ModelAdapter(model)
    readout_hook = adapter.final_hidden_hook if readout is None else readout

    def function(a: torch.Tensor) -> torch.Tensor:
        store: dict[str, torch.Tensor] = {}

        def replace(activation: torch.Tensor, hook: Any) -> torch.Tensor:
            return a[None].to(activation.dtype)

        def capture(activation: torch.Tensor, hook: Any) -> None:
            store["out"] = activation

        with model.hooks(fwd_hooks=[(perturbed, replace), *fwd_hooks, (readout_hook, capture)]):
            model(tokens[None])
        out = store["out"]
        return (adapter.final_hidden(out) if readout is None else out)[0, position]

    return function


def jacobian(model: Any, tokens: torch.Tensor, perturbed: str, position: int, readout: str | None = None, fwd_hooks: Sequence = ()):
    """(J [*readout_shape, *activation_shape], readout value, activation at ``perturbed``), float64."""
    a0 = activation_at(model, tokens, perturbed, fwd_hooks)
    function = readout_function(model, tokens, perturbed, position, readout, fwd_hooks)
    with torch.enable_grad():
        J = torch.autograd.functional.jacobian(function, a0, vectorize=True)
    with torch.no_grad():
        value = function(a0)
    return J.double(), value.double(), a0.double()


def effective_unembedding(model: Any, y: torch.Tensor) -> torch.Tensor:
    """∂logits/∂y, [d_model, d_vocab]: W_U with each column scaled by the logit soft-cap's slope."""
    W_U = model.W_U.detach().double()
    cap = getattr(model.cfg, "output_logits_soft_cap", None) or 0
    if cap <= 0:
        return W_U
    pre = y @ W_U + model.b_U.detach().double()
    return W_U * (1 - torch.tanh(pre / cap) ** 2)[None, :]


def fresh_model(name: str) -> Any:
    """A second, independent instance of the conftest model ``name`` (same weights): bridges cannot be
    deep-copied once they have run."""
    spec = dict(dict(MODEL_SPECS)[name])
    folded = spec.pop("folded", False)
    model = toy_model(spec.pop("architecture"), init_scale=0.3, seed=0, **spec)
    if folded:
        model.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
    model(torch.tensor([[0, 1]]))
    return model


def zero_head_output_weights(model: Any, layer: int, head: int) -> None:
    """Edit the weights: the rows of W_O that carry ``head``'s output become 0 (the head is ablated)."""
    attention = model.blocks[layer].attn
    with torch.no_grad():
        if hasattr(attention, "W_O") and isinstance(attention.W_O, torch.nn.Parameter):  # HookedTransformer
            attention.W_O[head] = 0
            return
        columns = slice(head * model.cfg.d_head, (head + 1) * model.cfg.d_head)
        projection = attention.o.original_component  # TransformerBridge: the Hugging Face output projection
        if type(projection).__name__ == "Conv1D":  # GPT-2 c_proj: weight [n_heads·d_head, d_model]
            projection.weight[columns, :] = 0
        else:  # nn.Linear o_proj: weight [d_model, n_heads·d_head]
            projection.weight[:, columns] = 0

"""An independent float64 oracle for Jacobian Scopes, computed on the Hugging Face model itself.

It shares no code with jscopes_tl: a float64 copy of the ``transformers`` model, the full Jacobian
``J_t = ∂y_p/∂x_t`` from ``torch.autograd.functional.jacobian``, where ``y_p`` is the input of the
model's ``lm_head`` (captured by a forward pre-hook) and ``x_t`` is

* ``point="input"``: the input embedding as the model's blocks (or its embedding norm /
  projection) receive it: ``inputs_embeds`` times the constant the model multiplies it by
  inside ``forward`` (Gemma and Gemma-2 in transformers 4.x multiply by ``√d_model`` there; 5.x
  does it inside the embedding module, so ``inputs_embeds`` already carries it). The constant is
  read off ``hidden_states[0] / inputs_embeds``, never assumed.
* ``point="module:<name>"``: the output of that submodule (e.g. BLOOM's
  ``transformer.word_embeddings_layernorm``), replaced by ``x``.
* ``point=("layer", L)``: the hidden state entering decoder layer ``L`` (``L = n_layers``: leaving
  the last one).

From ``J`` and the logits (``lm_head`` and the config's final soft-cap), the scores of every scope
follow by their definitions: Semantic ``‖w^T J_t‖`` with ``w = ∂logit/∂y``; Fisher ``Σ λ_i‖u_i^T
J_t‖²`` over ``eigh`` of the centred ``F = W (diag p − p pᵀ) Wᵀ``; Temperature ``‖ŷ^T J_t‖``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch


def _decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    n_layers = model.config.num_hidden_layers
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers:
            return module
    raise AssertionError("no decoder layer list found")


def _replace_first(value: Any, x: torch.Tensor) -> Any:
    if isinstance(value, torch.Tensor):
        return x
    return (x, *value[1:])


@dataclass
class Oracle:
    """``jacobian[p, t]`` = ∂y_p/∂x_t as ``[d_model, d_x]`` for the positions asked; ``y[p]``,
    ``logits[p]`` and ``W[p]`` (= ∂logits/∂y ``[d_model, d_vocab]``, the soft-cap slope included)."""

    jacobian: dict[int, torch.Tensor]  # p -> [pos, d_model, d_x]
    y: dict[int, torch.Tensor]
    logits: dict[int, torch.Tensor]
    W: dict[int, torch.Tensor]
    x: torch.Tensor  # [pos, d_x]

    def semantic(self, p: int, target: int | tuple[int, int] | None = None) -> torch.Tensor:
        W = self.W[p]
        if target is None:
            target = int(self.logits[p].argmax())
        w = W[:, target[0]] - W[:, target[1]] if isinstance(target, tuple) else W[:, target]
        return torch.einsum("d,tde->te", w, self.jacobian[p]).norm(dim=-1)

    def fisher(self, p: int, rank: int | None) -> torch.Tensor:
        W, probabilities = self.W[p], torch.softmax(self.logits[p], -1)
        mean = W @ probabilities
        centred = (W - mean[:, None]) * probabilities.sqrt()[None, :]
        eigenvalues, eigenvectors = torch.linalg.eigh(centred @ centred.T)
        if rank is not None:
            eigenvalues, eigenvectors = eigenvalues[-rank:], eigenvectors[:, -rank:]
        projected = torch.einsum("dk,tde->tke", eigenvectors, self.jacobian[p])
        return (eigenvalues[None, :] * projected.pow(2).sum(-1)).sum(-1)

    def temperature(self, p: int) -> torch.Tensor:
        y = self.y[p]
        return torch.einsum("d,tde->te", y / y.norm(), self.jacobian[p]).norm(dim=-1)


def float64_copy(hf_model: torch.nn.Module) -> torch.nn.Module:
    model = copy.deepcopy(hf_model).double().eval()
    if hasattr(model, "set_experts_implementation"):  # transformers 5's grouped-mm experts have no float64 kernel
        model.set_experts_implementation("eager")
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def oracle(model: torch.nn.Module, ids: torch.Tensor, positions: list[int], point: Any = "input") -> Oracle:
    """The float64 oracle on ``model`` (a float64 copy from :func:`float64_copy`) for token ids
    ``[pos]`` and prediction positions ``positions`` (non-negative)."""
    ids = ids[None]
    inputs_embeds = model.get_input_embeddings()(ids).detach()
    captured: dict[str, torch.Tensor] = {}
    handles = [model.get_output_embeddings().register_forward_pre_hook(lambda m, args: captured.__setitem__("y", args[0]))]
    replacement: dict[str, torch.Tensor] = {}

    if point == "input":
        with torch.no_grad():
            first = model(inputs_embeds=inputs_embeds, output_hidden_states=True).hidden_states[0]
        scale = 1.0
        if first.shape == inputs_embeds.shape:
            ratio = first / inputs_embeds
            constant = bool(torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio), rtol=1e-9, atol=0))
            scale = float(ratio.flatten()[0]) if constant else 1.0
        x0 = inputs_embeds[0] * scale

        def run(x: torch.Tensor) -> None:
            model(inputs_embeds=(x / scale)[None])

    else:
        if isinstance(point, tuple):
            layers = _decoder_layers(model)
            layer = point[1]
            if layer < len(layers):
                def pre_hook(module, args, kwargs):
                    if "x" in replacement:
                        if args:
                            args = (replacement["x"][None], *args[1:])
                        else:
                            kwargs = dict(kwargs, hidden_states=replacement["x"][None])
                    else:
                        captured["x"] = (args[0] if args else kwargs["hidden_states"])[0].detach()
                    return args, kwargs

                handles.append(layers[layer].register_forward_pre_hook(pre_hook, with_kwargs=True))
            else:
                def post_hook(module, args, output):
                    if "x" in replacement:
                        return _replace_first(output, replacement["x"][None])
                    captured["x"] = (output if isinstance(output, torch.Tensor) else output[0])[0].detach()
                    return None

                handles.append(layers[-1].register_forward_hook(post_hook))
        else:
            module = model.get_submodule(point.removeprefix("module:"))

            def module_hook(module, args, output):
                if "x" in replacement:
                    return replacement["x"][None]
                captured["x"] = output[0].detach()
                return None

            handles.append(module.register_forward_hook(module_hook))
        with torch.no_grad():
            model(ids)
        x0 = captured["x"]

        def run(x: torch.Tensor) -> None:
            replacement["x"] = x
            model(ids)

    def y_of(x: torch.Tensor) -> torch.Tensor:
        run(x)
        return captured["y"][0]

    try:
        with torch.enable_grad():
            y_all = y_of(x0).detach()
            jacobians = {}
            for p in positions:
                jacobians[p] = torch.autograd.functional.jacobian(lambda x: y_of(x)[p], x0).permute(1, 0, 2)
    finally:
        for handle in handles:
            handle.remove()
    head = model.get_output_embeddings()
    cap = getattr(model.config, "final_logit_softcapping", None)
    ys, logits, Ws = {}, {}, {}
    for p in positions:
        y = y_all[p]
        z = head(y)
        W = head.weight.T.clone()
        if cap:
            slope = 1 - torch.tanh(z / cap) ** 2
            z = cap * torch.tanh(z / cap)
            W = W * slope[None, :]
        ys[p], logits[p], Ws[p] = y, z, W
    return Oracle(jacobians, ys, logits, Ws, x0)

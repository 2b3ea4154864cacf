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

The folded basis (``folded=True``): a model whose final norm ``y = g ⊙ n + b`` was folded into the
unembedding (HookedTransformer's default processing, the bridge's compatibility mode) reads ``n``
instead of ``y`` and has ``W_U' = diag(g) W_U`` (centring its columns adds one constant to every
logit and changes no ``F``). There ``F' = diag(g) F diag(g)`` and ``J'_t = diag(1/g) J_t``: exact
Fisher is unchanged, rank-k Fisher reads the top eigenvectors of ``F'``. A LayerNorm's ``n`` has
mean 0, so folding also centres ``W_U'`` over d_model (TransformerLens does, for every weight reading
a LayerNorm's output): ``F' = P diag(g) F diag(g) P`` with ``P = I − 11ᵀ/d`` (``P J'_t = J'_t``).
The gain ``g``, and whether the norm subtracts the mean, are read off the Hugging Face model's final
norm by probing the module (``1 + w`` or ``w``; ``n(h)`` summing to 0), never assumed.
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
    final_gain: torch.Tensor | None = None  # [d_model], g of the final norm y = g ⊙ n + b (None: no final norm)
    final_norm_centres: bool = False  # the final norm subtracts the mean (LayerNorm): n has mean 0

    def semantic(self, p: int, target: int | tuple[int, int] | None = None) -> torch.Tensor:
        W = self.W[p]
        if target is None:
            target = int(self.logits[p].argmax())
        w = W[:, target[0]] - W[:, target[1]] if isinstance(target, tuple) else W[:, target]
        return torch.einsum("d,tde->te", w, self.jacobian[p]).norm(dim=-1)

    def fisher_matrix(self, p: int, folded: bool = False) -> torch.Tensor:
        """``F`` w.r.t. ``y`` [d_model, d_model], or (folded) ``F'`` w.r.t. ``n``: ``diag(g) F diag(g)``,
        and ``P diag(g) F diag(g) P`` after a LayerNorm."""
        W, probabilities = self.W[p], torch.softmax(self.logits[p], -1)
        if folded:
            W = self.gain()[:, None] * W
            if self.final_norm_centres:  # n has mean 0: the folded W_U is centred over d_model
                W = W - W.mean(0, keepdim=True)
        centred = (W - (W @ probabilities)[:, None]) * probabilities.sqrt()[None, :]
        return centred @ centred.T

    def fisher(self, p: int, rank: int | None, folded: bool = False) -> torch.Tensor:
        eigenvalues, eigenvectors = torch.linalg.eigh(self.fisher_matrix(p, folded))
        if rank is not None:
            eigenvalues, eigenvectors = eigenvalues[-rank:], eigenvectors[:, -rank:]
        jacobian = self.jacobian[p] / self.gain()[None, :, None] if folded else self.jacobian[p]  # J' = ∂n/∂x
        projected = torch.einsum("dk,tde->tke", eigenvectors, jacobian)
        return (eigenvalues[None, :] * projected.pow(2).sum(-1)).sum(-1)

    def gain(self) -> torch.Tensor:
        if self.final_gain is None:
            raise AssertionError("the model has no final norm: there is no folded basis")
        return self.final_gain

    def temperature(self, p: int) -> torch.Tensor:
        y = self.y[p]
        return torch.einsum("d,tde->te", y / y.norm(), self.jacobian[p]).norm(dim=-1)


def _final_norm(model: torch.nn.Module, ids: torch.Tensor) -> torch.nn.Module | None:
    """The norm whose output is the ``lm_head`` input (a module with a 1-D ``weight`` of d_model
    entries whose output equals it); None when something else feeds ``lm_head`` (OPT-350m's
    ``project_out``)."""
    outputs: list[tuple[torch.nn.Module, torch.Tensor]] = []
    head = model.get_output_embeddings()
    captured: dict[str, torch.Tensor] = {}
    handles = [
        module.register_forward_hook(lambda m, args, output: outputs.append((m, output)))
        for module in model.modules()
        if isinstance(getattr(module, "weight", None), torch.Tensor) and module.weight.dim() == 1 and module is not head
    ]
    handles.append(head.register_forward_pre_hook(lambda m, args: captured.__setitem__("y", args[0])))
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for handle in handles:
            handle.remove()
    y = captured["y"]
    producers = [
        module for module, output in outputs
        if isinstance(output, torch.Tensor) and module.weight.shape == (y.shape[-1],) and torch.equal(output[:, -y.shape[1]:], y)
    ]
    return producers[-1] if producers else None


def _gain_of(norm: torch.nn.Module, d_model: int) -> tuple[torch.Tensor, bool]:
    """``g`` of ``norm(h) = g ⊙ n(h) + b``, probed: with ``weight`` zeroed a norm applying ``w``
    gives ``b`` (no gain), one applying ``1 + w`` gives ``n(h) + b``. Checked on random inputs.
    Also whether ``n`` has mean 0 (LayerNorm) or not (RMSNorm)."""
    h = torch.randn(3, d_model, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def with_weight(value: float) -> torch.Tensor:
        probe = copy.deepcopy(norm)
        with torch.no_grad():
            probe.weight.fill_(value)
            if getattr(probe, "bias", None) is not None:
                probe.bias.zero_()
            return probe(h)

    offset = 0.0 if bool(torch.all(with_weight(0.0) == 0)) else 1.0
    gain = norm.weight.detach() + offset
    normalised = with_weight(1.0 - offset)  # gain 1, no bias: n(h)
    bias = norm.bias.detach() if getattr(norm, "bias", None) is not None else torch.zeros_like(gain)
    with torch.no_grad():  # Gemma's norms compute in float32 even in a float64 model
        torch.testing.assert_close(norm(h), gain * normalised + bias, rtol=1e-6, atol=1e-6)
    centres = bool(normalised.sum(-1).abs().max() < 1e-5 * normalised.abs().sum(-1).max())
    return gain, centres


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
    norm = _final_norm(model, ids)
    final_gain, centres = (None, False) if norm is None else _gain_of(norm, y_all.shape[-1])
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
    return Oracle(jacobians, ys, logits, Ws, x0, final_gain, centres)
